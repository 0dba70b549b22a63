//! `onceq producer get ID` and `onceq producer register ID`: a producer's epoch and checkpoint
//! (docs/api.md, "Commits"). Registering again fences every running instance of the producer:
//! their commits are refused (409 `fenced`) from then on, which is how an operator stops a
//! zombie instance for good.

use clap::{Args, Subcommand};
use onceq_core::commit::{ProducerId, Registration};
use onceq_core::Store;

use super::{block_on, Connection, Output};
use crate::error::CliError;

/// `onceq producer ...`.
#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: ProducerCommand,
}

/// The producer commands.
#[derive(Debug, Clone, Subcommand)]
pub enum ProducerCommand {
    /// Show a producer's current epoch (0: it never registered) and the checkpoint of its last
    /// commit; commits carrying an older epoch are refused as fenced.
    Get {
        /// The producer id.
        id: ProducerId,
    },
    /// Register the producer again: a new epoch, which fences every instance running with an
    /// older one. Prints the new epoch and the checkpoint a new instance resumes from.
    Register {
        /// The producer id.
        id: ProducerId,
    },
}

/// Runs a producer command.
pub fn run(args: &ProducerArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        let registration = match &args.command {
            ProducerCommand::Get { id } => session.client.producer_get(id).await,
            ProducerCommand::Register { id } => session.client.producer_register(id).await,
        }
        .map_err(|e| session.failure(e))?;
        match session.output {
            Output::Json => session.print_json(&registration),
            Output::Table => {
                outln!("{}", describe(&registration));
                Ok(())
            }
        }
    })
}

/// A registration for people.
fn describe(registration: &Registration) -> String {
    let checkpoint = match &registration.checkpoint {
        Some(value) => value.to_string(),
        None => "none".to_owned(),
    };
    if registration.epoch == 0 {
        format!("producer {}: never registered", registration.producer)
    } else {
        format!(
            "producer {}\nepoch       {}   (commits with an older epoch are refused as fenced)\ncheckpoint  {checkpoint}",
            registration.producer, registration.epoch
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn registrations_read_plainly() {
        let id = ProducerId::new("ingest").unwrap();
        let never = Registration { producer: id.clone(), epoch: 0, checkpoint: None };
        assert_eq!(describe(&never), "producer ingest: never registered");
        let live = Registration { producer: id, epoch: 3, checkpoint: Some(serde_json::json!({"offset": 7})) };
        let text = describe(&live);
        assert!(text.contains("epoch       3") && text.contains(r#"{"offset":7}"#), "{text}");
    }
}
