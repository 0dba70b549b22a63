//! `onceq token`: make a bearer token and the line that configures it.

use rand::RngCore;

use crate::error::CliError;

/// Token commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and a config-file entry holding only its hash.
    New {
        /// Name of the token's holder, for logs.
        #[arg(long, default_value = "my-service")]
        name: String,
    },
    /// Print the SHA-256 of a token read from stdin (for an existing secret).
    Hash,
}

/// Runs a token command.
pub fn run(command: &TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::New { name } => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            outln!("token (give it to the client; it is not stored): {token}");
            outln!();
            outln!("[[tokens]]");
            outln!("name = {name:?}");
            outln!("sha256 = \"{}\"", onceq_server::hash_token(&token));
            outln!("produce = [\"*\"]   # queue-name patterns; * matches any characters");
            outln!("consume = [\"*\"]");
            outln!("admin = []");
            Ok(())
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| CliError::Failed(format!("reading stdin: {e}")))?;
            let token = line.trim();
            if token.is_empty() {
                return Err(CliError::Usage("give the token on stdin".into()));
            }
            outln!("{}", onceq_server::hash_token(token));
            Ok(())
        }
    }
}
