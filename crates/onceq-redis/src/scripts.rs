//! The Lua scripts that decide `begin` (past the plain acquire path), `complete` and `release`
//! atomically inside Redis.
//!
//! Each script reads and writes the one key it is given (`KEYS[1]`), so it runs on Redis
//! Cluster. Each takes "now" as its last argument: the store's test clock when one is set,
//! or the empty string for Redis's own `TIME` (Invariant 7: one clock judges). Redis 5 or
//! later is needed (scripts that write after `TIME` replicate their effects).

use redis::Script;

use crate::record::IN_PROGRESS_GRACE_MS;

/// Decoding, encoding and the clock, shared by every script.
const RECORD: &str = include_str!("lua/record.lua");

/// The three scripts, loaded once per store (`EVALSHA`, falling back to `EVAL` on `NOSCRIPT`).
pub(crate) struct Scripts {
    /// See `lua/begin.lua`.
    pub(crate) begin: Script,
    /// See `lua/complete.lua`.
    pub(crate) complete: Script,
    /// See `lua/release.lua`.
    pub(crate) release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            begin: script(include_str!("lua/begin.lua")),
            complete: script(include_str!("lua/complete.lua")),
            release: script(include_str!("lua/release.lua")),
        }
    }
}

fn script(body: &str) -> Script {
    Script::new(&source(body))
}

fn source(body: &str) -> String {
    format!("local GRACE_MS = {IN_PROGRESS_GRACE_MS}\n{RECORD}\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_starts_with_the_grace_and_the_record_functions() {
        let begin = source(include_str!("lua/begin.lua"));
        assert!(begin.starts_with(&format!("local GRACE_MS = {IN_PROGRESS_GRACE_MS}\n")), "{begin}");
        assert!(begin.contains("local function decode(key, value, now)"), "{begin}");
        assert_eq!(IN_PROGRESS_GRACE_MS, 86_400_000);
    }
}
