//! The RabbitMQ fixture of every crate's tests (feature `rabbitmq`): the broker to use, a virtual
//! host per test (deleted with everything in it when the test ends, also when it fails), and a
//! failure that says how to start RabbitMQ when it is not there (tests never skip silently).
//!
//! AMQP cannot create a virtual host, so the fixture runs `rabbitmqctl` (`ONCEQ_TEST_RABBITMQCTL`,
//! default `rabbitmqctl`) on this machine: the broker must be local, as `scripts/test` runs it.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The broker the tests use unless `ONCEQ_TEST_AMQP_URL` names another.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The test broker: `ONCEQ_TEST_AMQP_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("ONCEQ_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// How to get a RabbitMQ for the tests, for failures that come from not having one.
pub fn how_to_get_rabbitmq() -> String {
    format!(
        "these tests need a RabbitMQ at {} (set ONCEQ_TEST_AMQP_URL to use another), and `rabbitmqctl` on this \
         machine to give each test a virtual host (set ONCEQ_TEST_RABBITMQCTL to its path). Run the tests with \
         `scripts/test`, which starts the local broker, or start it with `rabbitmq-server -detached`; without \
         one, install it (Debian: `apt-get install rabbitmq-server`; user guest/guest)",
        url()
    )
}

/// Runs `rabbitmqctl args`, failing the test with [`how_to_get_rabbitmq`] when it does not succeed.
fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let program = std::env::var("ONCEQ_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let output = Command::new(&program).args(args).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// A virtual host of the test's own on the test broker, in which the test's user may do
/// everything; deleted, with every queue and exchange in it, when dropped.
pub struct Vhost {
    /// The virtual host's name: `[a-z0-9_]` only, so it needs no escaping in a URL.
    pub name: String,
}

impl Vhost {
    /// Creates the virtual host and grants the test URL's user every permission on it.
    pub fn create() -> Vhost {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "onceq_test_{}_{}_{:06x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>() >> 8
        );
        if let Err(e) = rabbitmqctl(&["add_vhost", &name]) {
            panic!("cannot create the test virtual host: {e}\n{}", how_to_get_rabbitmq());
        }
        // From here on, dropping it deletes the virtual host.
        let vhost = Vhost { name };
        if let Err(e) = rabbitmqctl(&["set_permissions", "-p", &vhost.name, &user_of(&url()), ".*", ".*", ".*"]) {
            panic!("cannot grant the test user the virtual host: {e}\n{}", how_to_get_rabbitmq());
        }
        vhost
    }

    /// The test broker's URL, with this virtual host.
    pub fn url(&self) -> String {
        with_vhost(&url(), &self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("could not delete the test virtual host {}: {e}", self.name);
        }
    }
}

/// The user of an `amqp://user:password@host:port/vhost` URL (`guest` when it names none).
fn user_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match after_scheme.split_once('@') {
        Some((credentials, _)) => credentials.split(':').next().unwrap_or("guest").to_owned(),
        None => "guest".to_owned(),
    }
}

/// `url` with its virtual host (the path) replaced by `vhost`; any query is kept.
fn with_vhost(url: &str, vhost: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let query = rest.find('?').map_or("", |at| &rest[at..]);
    format!("{scheme}://{authority}/{vhost}{query}")
}

#[cfg(test)]
mod tests {
    use super::{user_of, with_vhost};

    #[test]
    fn the_url_takes_the_virtual_host_and_keeps_the_rest() {
        assert_eq!(with_vhost("amqp://guest:guest@127.0.0.1:5672/%2f", "v1"), "amqp://guest:guest@127.0.0.1:5672/v1");
        assert_eq!(with_vhost("amqp://u:p@h:1", "v"), "amqp://u:p@h:1/v");
        assert_eq!(with_vhost("amqps://u:p@h:1/x?heartbeat=5", "v"), "amqps://u:p@h:1/v?heartbeat=5");
        assert_eq!(user_of("amqp://alice:secret@h:1/%2f"), "alice");
        assert_eq!(user_of("amqp://h:1/%2f"), "guest");
    }
}
