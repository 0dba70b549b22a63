//! `onceq config check FILE`: the settings `onceq serve --config FILE` would run with, checked as
//! serve checks them, without opening a store or a socket.

use std::path::PathBuf;

use clap::Parser as _;

use crate::error::CliError;
use crate::serve::{ServeArgs, Settings};

/// The environment variables `onceq serve` reads, each over the config file's key of the same
/// meaning.
const SERVE_VARIABLES: [(&str, &str); 12] = [
    ("ONCEQ_STORE", "store"),
    ("ONCEQ_PG_SCHEMA", "pg_schema"),
    ("ONCEQ_PG_POOL_SIZE", "pg_pool_size"),
    ("ONCEQ_PG_CONNECT_TIMEOUT_MS", "pg_connect_timeout_ms"),
    ("ONCEQ_DATA_DIR", "data_dir"),
    ("ONCEQ_LISTEN", "listen"),
    ("ONCEQ_CONFIG", "the file named here"),
    ("ONCEQ_PAGE_CACHE_MIB", "page_cache_mib"),
    ("ONCEQ_BODY_MEMORY_MIB", "body_memory_mib"),
    ("ONCEQ_DURABILITY", "durability"),
    ("ONCEQ_VERIFY_ON_START", "verify_on_start"),
    ("ONCEQ_INSECURE_NO_AUTH", "insecure_no_auth"),
];

/// `onceq serve`'s options alone, to parse them as serve would.
#[derive(Debug, clap::Parser)]
struct ServeOnly {
    #[command(flatten)]
    serve: ServeArgs,
}

/// `onceq config`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a config file: print the settings `onceq serve --config FILE` would run with (the
    /// ONCEQ_* environment variables over the file, then the defaults), tokens by name only.
    /// Exits 2 on a file serve would refuse.
    Check {
        /// The TOML config file.
        file: PathBuf,
    },
}

/// Runs `onceq config ...`.
pub fn run(command: &ConfigCommand) -> Result<(), CliError> {
    match command {
        ConfigCommand::Check { file } => check(file),
    }
}

fn check(file: &std::path::Path) -> Result<(), CliError> {
    // Through the command line parser, so that the environment applies exactly as it does to
    // `onceq serve --config FILE`.
    let args = [std::ffi::OsStr::new("serve"), std::ffi::OsStr::new("--config"), file.as_os_str()];
    let serve = ServeOnly::try_parse_from(args).map_err(|e| CliError::Usage(e.to_string()))?.serve;
    // Whatever serve would refuse is a bad file here: exit 2.
    let settings = Settings::resolve(&serve).map_err(|e| match e {
        CliError::Failed(message) | CliError::Unavailable(message) => CliError::Usage(message),
        usage => usage,
    })?;
    outln!("config file {}: ok, `onceq serve --config {}` would run with:", file.display(), file.display());
    for (key, value) in shown(&settings) {
        outln!("  {key:<17}{value}");
    }
    let overriding: Vec<String> = SERVE_VARIABLES
        .iter()
        .filter(|(variable, _)| std::env::var_os(variable).is_some())
        .map(|(variable, key)| format!("{variable} (over {key})"))
        .collect();
    if !overriding.is_empty() {
        outln!("from the environment: {}", overriding.join(", "));
    }
    Ok(())
}

/// Each setting as printed, tokens by name and permissions only.
fn shown(settings: &Settings) -> Vec<(&'static str, String)> {
    let postgres = settings.store != "embedded";
    let mut rows = vec![("store", settings.store_shown())];
    if postgres {
        rows.push(("pg_schema", settings.pg_schema.clone()));
        rows.push(("pg_pool_size", settings.pg_pool_size.to_string()));
        rows.push(("pg_connect_timeout_ms", settings.pg_connect_timeout.as_millis().to_string()));
    } else {
        rows.push(("data_dir", settings.data_dir.display().to_string()));
        rows.push(("durability", format!("{:?}", settings.durability).to_lowercase()));
        rows.push(("page_cache_mib", (settings.page_cache_bytes >> 20).to_string()));
        rows.push(("verify_on_start", settings.verify_on_start.to_string()));
    }
    rows.push(("listen", settings.listen.to_string()));
    rows.push(("body_memory_mib", (settings.body_memory_bytes >> 20).to_string()));
    rows.push(("insecure_no_auth", settings.insecure_no_auth.to_string()));
    if settings.tokens.is_empty() {
        rows.push(("tokens", "none: auth is off (only a loopback address is allowed without it)".into()));
    }
    let list = |patterns: &[String]| if patterns.is_empty() { "-".to_owned() } else { patterns.join(",") };
    for token in &settings.tokens {
        rows.push((
            "token",
            format!(
                "{} (produce {}; consume {}; admin {})",
                token.name,
                list(&token.produce),
                list(&token.consume),
                list(&token.admin)
            ),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    /// Keys of the config file, and some it does not have.
    const KEYS: &[&str] = &[
        "listen",
        "store",
        "pg_schema",
        "pg_pool_size",
        "pg_connect_timeout_ms",
        "data_dir",
        "durability",
        "page_cache_mib",
        "body_memory_mib",
        "verify_on_start",
        "insecure_no_auth",
        "unknown",
        "tokens",
    ];
    const TOKEN_KEYS: &[&str] = &["name", "sha256", "produce", "consume", "admin", "extra"];

    fn toml_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            prop_oneof![Just(0i64), Just(1), Just(16), Just(65_536), Just(600_000), Just(600_001), Just(-1)]
                .prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            ".{0,24}".prop_map(|s| format!("{s:?}")),
            prop_oneof![
                Just("\"127.0.0.1:0\"".to_owned()),
                Just("\"0.0.0.0:7700\"".to_owned()),
                Just("\"[::1]:0\"".to_owned()),
                Just("\"embedded\"".to_owned()),
                Just("\"postgres://u:p@h:1/d\"".to_owned()),
                Just("\"fsync\"".to_owned()),
                Just("\"relaxed\"".to_owned()),
                Just("\"*\"".to_owned()),
                "\"[0-9a-f]{64}\"",
            ],
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(|items| format!("[{}]", items.join(", ")))
        })
    }

    fn config_text() -> impl Strategy<Value = String> {
        let line = (prop::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}"));
        let token = prop::collection::vec((prop::sample::select(TOKEN_KEYS), toml_value()), 0..6).prop_map(|fields| {
            let mut text = "[[tokens]]\n".to_owned();
            for (k, v) in fields {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text
        });
        prop_oneof![
            4 => (prop::collection::vec(line, 0..8), prop::collection::vec(token, 0..3))
                .prop_map(|(lines, tokens)| format!("{}\n{}", lines.join("\n"), tokens.join("\n"))),
            1 => ".{0,200}",
        ]
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000),
            failure_persistence: None,
            ..Default::default()
        })]

        /// Fuzzing (issue 25): any config file, well-formed or not, is read and resolved as
        /// `onceq serve` and `onceq config check` do it, without a panic: it resolves, or it is
        /// refused with a message.
        #[test]
        fn any_config_file_resolves_or_is_refused_without_a_panic(text in config_text()) {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("onceq.toml");
            std::fs::write(&file, &text).unwrap();
            let args = [std::ffi::OsStr::new("serve"), std::ffi::OsStr::new("--config"), file.as_os_str()];
            let serve = ServeOnly::try_parse_from(args).unwrap().serve;
            match Settings::resolve(&serve) {
                Ok(settings) => {
                    let _ = shown(&settings);
                }
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
        }
    }
}
