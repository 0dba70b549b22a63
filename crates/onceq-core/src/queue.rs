//! Queues: what makes a name valid, configuration, delivery modes and statistics.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flow::{KeyBy, RateLimit};
use crate::limits::*;
use crate::ordering::Ordering;
use crate::retry::{Backoff, BackoffPatch};
use crate::{Error, QueueName, Result};

impl QueueName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid("queue name is empty; use 1-128 characters of [A-Za-z0-9._-]"));
        }
        if name.len() > QUEUE_NAME_LEN_MAX {
            return Err(Error::invalid(format!(
                "queue name is {} bytes long; the limit is {QUEUE_NAME_LEN_MAX}",
                name.len()
            )));
        }
        if name.chars().all(|c| c == '.') {
            // "." and ".." cannot travel in a URL path: every HTTP stack resolves them.
            return Err(Error::invalid(format!("queue name {name:?} is only dots; add a letter or digit")));
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(Error::invalid(format!(
                "queue name {name:?} contains {bad:?}; only [A-Za-z0-9._-] is allowed"
            )));
        }
        Ok(QueueName(name))
    }
}

impl FromStr for QueueName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        QueueName::new(s)
    }
}

impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        QueueName::new(raw).map_err(|e| serde::de::Error::custom(e.detail()))
    }
}

/// What a queue promises about delivery (docs/design.md, the service-tier matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryMode {
    /// Leasing removes the job: never delivered twice, lost if the consumer crashes.
    AtMostOnce,
    /// Leases and redelivery: never lost, possibly delivered more than once.
    #[default]
    AtLeastOnce,
    /// At-least-once delivery plus mandatory producer dedup ids; consumers guard their effects
    /// with the idempotency store.
    EffectivelyOnce,
}

impl DeliveryMode {
    /// The wire name (`at_most_once`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::AtMostOnce => "at_most_once",
            DeliveryMode::AtLeastOnce => "at_least_once",
            DeliveryMode::EffectivelyOnce => "effectively_once",
        }
    }
}

impl FromStr for DeliveryMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "at_most_once" => Ok(DeliveryMode::AtMostOnce),
            "at_least_once" => Ok(DeliveryMode::AtLeastOnce),
            "effectively_once" => Ok(DeliveryMode::EffectivelyOnce),
            other => Err(Error::invalid(format!(
                "unknown delivery mode {other:?}; use at_most_once, at_least_once or effectively_once"
            ))),
        }
    }
}

/// How hard a commit is pushed to disk before its reply leaves (docs/design.md, the service-tier
/// matrix): the embedded store's setting ([`QueueConfig::durability`] overrides it per queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Durability {
    /// A reply waits until its commit is on disk (fsync'd): it survives power loss.
    #[default]
    Fsync,
    /// A reply leaves once its commit is in the operating system's hands: it survives a crash
    /// of the process (`kill -9`); the last commits before a power loss or kernel crash may be
    /// lost.
    Relaxed,
}

impl Durability {
    /// The wire name (`fsync`, `relaxed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Relaxed => "relaxed",
        }
    }
}

impl FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "relaxed" => Ok(Durability::Relaxed),
            other => Err(Error::invalid(format!("unknown durability {other:?}; use fsync or relaxed"))),
        }
    }
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads a string, and names the setting when given something else.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Durability;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a durability: \"fsync\" or \"relaxed\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Durability, E> {
                text.parse().map_err(|e: Error| E::custom(e.detail()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A queue's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueConfig {
    /// Delivery mode.
    pub delivery: DeliveryMode,
    /// Lease length when a lease call does not name one.
    pub visibility_timeout_ms: u64,
    /// Leases a job may have before it is dead-lettered, unless the job sets its own.
    pub max_attempts: u32,
    /// Delay before a nacked job runs again, when the nack names none.
    pub backoff: Backoff,
    /// How long a dedup id is remembered after its first enqueue.
    pub dedup_window_ms: u64,
    /// `per_key`: the jobs of one ordering key run one at a time, in enqueue order.
    #[serde(default)]
    pub ordering: Ordering,
    /// Partitions of a `per_key` queue, 1 to [`PARTITIONS_MAX`]: the unit consumer groups share.
    #[serde(default = "partitions_default")]
    pub partitions: u32,
    /// In a `per_key` queue, a dead job keeps its key blocked until it is redriven or purged
    /// (for work where a gap is worse than a stall). Otherwise the key's next job goes on.
    #[serde(default)]
    pub dead_blocks_key: bool,
    /// Leases per second with a burst, summed over every worker and server (Invariant 15);
    /// `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// With a `rate_limit`: one bucket of that limit per key value (`"ordering_key"` or
    /// `"header:<name>"`) instead of one for the queue; the jobs without that key share one
    /// bucket. `None`: the queue has one bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub rate_limit_by: Option<KeyBy>,
    /// Most live leases of one key value at any moment, 1 to [`IN_FLIGHT_MAX`]: keyed by
    /// `rate_limit_by` if set, else by the ordering key; jobs without that key are not limited
    /// per key. `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_key: Option<u32>,
    /// Most live leases of the queue at any moment, summed over every worker and server, 1 to
    /// [`IN_FLIGHT_MAX`] (Invariant 15); `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Most jobs the queue holds ready, scheduled, leased or blocked (dead ones do not count),
    /// 1 to [`QUEUE_DEPTH_MAX`]: an enqueue or commit that would pass it is refused whole with
    /// [`Error::RateLimited`]. `None`: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u64>,
    /// How hard the queue's writes are pushed to disk before their replies leave; `None` (the
    /// default): as the store's own setting says (`onceq serve --durability` on the embedded
    /// store; PostgreSQL's `synchronous_commit`). An operation that touches several queues
    /// waits as the strictest of them says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
}

fn partitions_default() -> u32 {
    PARTITIONS_DEFAULT
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            delivery: DeliveryMode::AtLeastOnce,
            visibility_timeout_ms: 30_000,
            max_attempts: 5,
            backoff: Backoff::default(),
            dedup_window_ms: 300_000,
            ordering: Ordering::None,
            partitions: PARTITIONS_DEFAULT,
            dead_blocks_key: false,
            rate_limit: None,
            rate_limit_by: None,
            max_in_flight_per_key: None,
            max_in_flight: None,
            max_depth: None,
            durability: None,
        }
    }
}

impl QueueConfig {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        check_visibility_timeout(self.visibility_timeout_ms)?;
        check_max_attempts(self.max_attempts)?;
        self.backoff.validate()?;
        if self.dedup_window_ms > DEDUP_WINDOW_MS_MAX {
            return Err(Error::invalid(format!(
                "dedup_window_ms is {}; the limit is {DEDUP_WINDOW_MS_MAX}",
                self.dedup_window_ms
            )));
        }
        if self.delivery == DeliveryMode::EffectivelyOnce && self.dedup_window_ms == 0 {
            return Err(Error::invalid(
                "an effectively_once queue needs a dedup window: with dedup_window_ms 0 a producer's retry of an \
                 enqueue makes a second job, and its effect runs twice; set one (the default is 300000)",
            ));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return Err(Error::invalid(format!(
                "partitions is {}; it must be between 1 and {PARTITIONS_MAX}",
                self.partitions
            )));
        }
        if let Some(rate) = &self.rate_limit {
            rate.validate()?;
        }
        if let Some(max) = self.max_in_flight {
            if !(1..=IN_FLIGHT_MAX).contains(&max) {
                return Err(Error::invalid(format!(
                    "max_in_flight is {max}; it must be between 1 and {IN_FLIGHT_MAX}"
                )));
            }
        }
        if self.rate_limit_by.is_some() && self.rate_limit.is_none() {
            return Err(Error::invalid(
                "rate_limit_by needs a rate_limit: set one beside it, or clear rate_limit_by with null",
            ));
        }
        if let Some(max) = self.max_in_flight_per_key {
            if !(1..=IN_FLIGHT_MAX).contains(&max) {
                return Err(Error::invalid(format!(
                    "max_in_flight_per_key is {max}; it must be between 1 and {IN_FLIGHT_MAX}"
                )));
            }
        }
        if let Some(max) = self.max_depth {
            if !(1..=QUEUE_DEPTH_MAX).contains(&max) {
                return Err(Error::invalid(format!("max_depth is {max}; it must be between 1 and {QUEUE_DEPTH_MAX}")));
            }
        }
        Ok(())
    }

    /// Whether a lease of this queue must consult its limits (a rate or in-flight limit). An
    /// unlimited queue's lease pays only this check.
    pub fn lease_limited(&self) -> bool {
        self.rate_limit.is_some() || self.max_in_flight.is_some() || self.max_in_flight_per_key.is_some()
    }

    /// Whether a lease of this queue applies per-key limits (`rate_limit_by`,
    /// `max_in_flight_per_key`): it reads up to [`crate::flow::key_scan_rows`] candidates and
    /// picks with [`crate::flow::pick_by_key`].
    pub fn keyed_limits(&self) -> bool {
        (self.rate_limit_by.is_some() && self.rate_limit.is_some()) || self.max_in_flight_per_key.is_some()
    }

    /// The rate limit of the queue's one bucket: `None` when it has none or one per key.
    pub fn queue_rate(&self) -> Option<&RateLimit> {
        self.rate_limit.as_ref().filter(|_| self.rate_limit_by.is_none())
    }

    /// The rate limit of each key's bucket, when `rate_limit_by` is set.
    pub fn key_rate(&self) -> Option<&RateLimit> {
        self.rate_limit.as_ref().filter(|_| self.rate_limit_by.is_some())
    }

    /// What `max_in_flight_per_key` keys by: `rate_limit_by`, else the ordering key.
    pub fn in_flight_key_by(&self) -> KeyBy {
        self.rate_limit_by.clone().unwrap_or(KeyBy::OrderingKey)
    }

    /// Whether going from this config to `next` changes where jobs wait (ordering or partition
    /// count): refused while the queue holds jobs, whose keys' order and partitions would break.
    pub fn reorders(&self, next: &QueueConfig) -> bool {
        self.ordering != next.ordering || self.partitions != next.partitions
    }

    /// This config with `patch` applied and validated.
    pub fn patched(&self, patch: &QueueConfigPatch) -> Result<Self> {
        let mut next = self.clone();
        if let Some(delivery) = patch.delivery {
            next.delivery = delivery;
        }
        if let Some(v) = patch.visibility_timeout_ms {
            next.visibility_timeout_ms = v;
        }
        if let Some(v) = patch.max_attempts {
            next.max_attempts = v;
        }
        if let Some(v) = &patch.backoff {
            next.backoff = v.applied_to(&self.backoff);
        }
        if let Some(v) = patch.dedup_window_ms {
            next.dedup_window_ms = v;
        }
        if let Some(v) = patch.ordering {
            next.ordering = v;
        }
        if let Some(v) = patch.partitions {
            next.partitions = v;
        }
        if let Some(v) = patch.dead_blocks_key {
            next.dead_blocks_key = v;
        }
        if let Some(v) = patch.rate_limit {
            next.rate_limit = v;
        }
        if let Some(v) = patch.max_in_flight {
            next.max_in_flight = v;
        }
        if let Some(v) = &patch.rate_limit_by {
            next.rate_limit_by = v.clone();
        }
        if let Some(v) = patch.max_in_flight_per_key {
            next.max_in_flight_per_key = v;
        }
        if let Some(v) = patch.max_depth {
            next.max_depth = v;
        }
        if let Some(v) = patch.durability {
            next.durability = v;
        }
        next.validate()?;
        Ok(next)
    }
}

/// A partial update of a [`QueueConfig`]: each `Some` field replaces the current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueConfigPatch {
    /// New delivery mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryMode>,
    /// New default visibility timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout_ms: Option<u64>,
    /// New default max attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// New backoff: the fields given replace the current ones, the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffPatch>,
    /// New dedup window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window_ms: Option<u64>,
    /// New ordering (refused while the queue holds jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// New partition count (refused while the queue holds jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// New dead-blocks-key flag (applies to jobs that die from now on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_blocks_key: Option<bool>,
    /// New rate limit; `null` removes it.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<RateLimit>))]
    pub rate_limit: Option<Option<RateLimit>>,
    /// New in-flight limit; `null` removes it.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>))]
    pub max_in_flight: Option<Option<u32>>,
    /// New keying of the rate limit (`"ordering_key"` or `"header:<name>"`); `null` goes back to
    /// one bucket for the queue.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub rate_limit_by: Option<Option<KeyBy>>,
    /// New per-key in-flight limit; `null` removes it.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>))]
    pub max_in_flight_per_key: Option<Option<u32>>,
    /// New depth limit; `null` removes it.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub max_depth: Option<Option<u64>>,
    /// New durability (`"fsync"` or `"relaxed"`); `null` goes back to the store's setting.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Durability>))]
    pub durability: Option<Option<Durability>>,
}

/// A patch field that may be cleared: absent is `None` (through `default`), `null` is
/// `Some(None)` (clear it), a value is `Some(Some(v))`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// How many jobs a queue holds in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStats {
    /// Jobs that can be leased now.
    pub ready: u64,
    /// Jobs waiting for their `run_at` (delayed, or retrying after backoff).
    pub scheduled: u64,
    /// Jobs under a live lease.
    pub leased: u64,
    /// Dead-lettered jobs.
    pub dead: u64,
    /// Jobs of a `per_key` queue waiting behind an earlier job of their key.
    #[serde(default)]
    pub blocked: u64,
    /// Cancelled jobs, kept for inspection until the queue is deleted.
    #[serde(default)]
    pub cancelled: u64,
    /// How long the oldest ready job has been ready; `None` when none is.
    pub oldest_ready_age_ms: Option<u64>,
}

/// A queue's name, configuration, pause flag and statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueInfo {
    /// The queue's name.
    pub name: QueueName,
    /// Its configuration.
    pub config: QueueConfig,
    /// Whether leasing is paused.
    pub paused: bool,
    /// Job counts by state.
    pub stats: QueueStats,
}

pub(crate) fn check_visibility_timeout(ms: u64) -> Result<()> {
    if !(VISIBILITY_TIMEOUT_MS_MIN..=VISIBILITY_TIMEOUT_MS_MAX).contains(&ms) {
        return Err(Error::invalid(format!(
            "visibility_timeout_ms is {ms}; it must be between {VISIBILITY_TIMEOUT_MS_MIN} and {VISIBILITY_TIMEOUT_MS_MAX}"
        )));
    }
    Ok(())
}

pub(crate) fn check_max_attempts(n: u32) -> Result<()> {
    if !(1..=ATTEMPTS_MAX).contains(&n) {
        return Err(Error::invalid(format!("max_attempts is {n}; it must be between 1 and {ATTEMPTS_MAX}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn queue_names_are_validated() {
        assert_eq!(QueueName::new("emails.v2_high-prio").map(|q| q.to_string()), Ok("emails.v2_high-prio".into()));
        assert!(matches!(QueueName::new(""), Err(Error::InvalidRequest(_))));
        assert!(matches!(QueueName::new("a b"), Err(Error::InvalidRequest(_))));
        assert!(matches!(QueueName::new("é"), Err(Error::InvalidRequest(_))));
        assert!(matches!(QueueName::new(".."), Err(Error::InvalidRequest(_))));
        assert!(QueueName::new(".hidden").is_ok());
        assert!(QueueName::new("x".repeat(QUEUE_NAME_LEN_MAX)).is_ok());
        assert!(matches!(QueueName::new("x".repeat(QUEUE_NAME_LEN_MAX + 1)), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn patches_are_validated() {
        let base = QueueConfig::default();
        let zero = QueueConfigPatch { visibility_timeout_ms: Some(0), ..Default::default() };
        assert!(matches!(base.patched(&zero), Err(Error::InvalidRequest(_))));
        let ok = QueueConfigPatch { max_attempts: Some(9), ..Default::default() };
        assert_eq!(base.patched(&ok).map(|c| c.max_attempts), Ok(9));
        for bad in [0, PARTITIONS_MAX + 1] {
            let patch = QueueConfigPatch { partitions: Some(bad), ..Default::default() };
            assert!(matches!(base.patched(&patch), Err(Error::InvalidRequest(_))));
        }
        let ordered = QueueConfigPatch { ordering: Some(Ordering::PerKey), ..Default::default() };
        let next = base.patched(&ordered).unwrap();
        assert!(base.reorders(&next));
        assert!(!next
            .reorders(&next.patched(&QueueConfigPatch { dead_blocks_key: Some(true), ..Default::default() }).unwrap()));
    }

    #[test]
    fn a_config_stored_before_ordering_existed_reads_as_unordered() {
        let old = r#"{"delivery":"at_least_once","visibility_timeout_ms":30000,"max_attempts":5,
            "backoff":{"initial_ms":1000,"max_ms":300000,"multiplier":2.0,"jitter":"full"},"dedup_window_ms":300000}"#;
        let config: QueueConfig = serde_json::from_str(old).unwrap();
        assert_eq!(
            (config.ordering, config.partitions, config.dead_blocks_key),
            (Ordering::None, PARTITIONS_DEFAULT, false)
        );
        assert_eq!((config.rate_limit, config.max_in_flight, config.max_depth), (None, None, None));
    }

    #[test]
    fn durability_is_set_shown_and_cleared_by_null() {
        let base = QueueConfig::default();
        assert_eq!(base.durability, None);
        assert!(!serde_json::to_string(&base).unwrap().contains("durability"), "the default shows no durability");
        let patch: QueueConfigPatch = serde_json::from_str(r#"{"durability":"relaxed"}"#).unwrap();
        let relaxed = base.patched(&patch).unwrap();
        assert_eq!(relaxed.durability, Some(Durability::Relaxed));
        assert!(serde_json::to_string(&relaxed).unwrap().contains(r#""durability":"relaxed""#));
        let back: QueueConfig = serde_json::from_str(&serde_json::to_string(&relaxed).unwrap()).unwrap();
        assert_eq!(back, relaxed);
        let fsync: QueueConfigPatch = serde_json::from_str(r#"{"durability":"fsync"}"#).unwrap();
        assert_eq!(relaxed.patched(&fsync).unwrap().durability, Some(Durability::Fsync));
        let clear: QueueConfigPatch = serde_json::from_str(r#"{"durability":null}"#).unwrap();
        assert_eq!(relaxed.patched(&clear).unwrap(), base);
        let error = serde_json::from_str::<QueueConfigPatch>(r#"{"durability":"sometimes"}"#).unwrap_err();
        assert!(error.to_string().contains(r#"unknown durability "sometimes"; use fsync or relaxed"#), "{error}");
        let error = serde_json::from_str::<QueueConfigPatch>(r#"{"durability":1}"#).unwrap_err();
        assert!(error.to_string().contains(r#"expected a durability: "fsync" or "relaxed""#), "{error}");
        assert_eq!("relaxed".parse::<Durability>(), Ok(Durability::Relaxed));
        assert_eq!(Durability::Fsync.as_str(), "fsync");
    }

    #[test]
    fn flow_limits_are_validated_and_a_null_clears_them() {
        let base = QueueConfig::default();
        let patch: QueueConfigPatch =
            serde_json::from_str(r#"{"rate_limit":{"per_second":50,"burst":10},"max_in_flight":5,"max_depth":100}"#)
                .unwrap();
        let limited = base.patched(&patch).unwrap();
        assert_eq!(limited.rate_limit, Some(RateLimit { per_second: 50.0, burst: 10 }));
        assert_eq!((limited.max_in_flight, limited.max_depth), (Some(5), Some(100)));
        assert!(limited.lease_limited() && !base.lease_limited());
        let untouched = limited.patched(&QueueConfigPatch::default()).unwrap();
        assert_eq!(untouched, limited);
        let clear: QueueConfigPatch =
            serde_json::from_str(r#"{"rate_limit":null,"max_in_flight":null,"max_depth":null}"#).unwrap();
        assert_eq!(limited.patched(&clear).unwrap(), base);
        for (json, field) in [
            (r#"{"max_in_flight":0}"#, "max_in_flight"),
            (r#"{"max_depth":0}"#, "max_depth"),
            (r#"{"rate_limit":{"per_second":0,"burst":1}}"#, "per_second"),
            (r#"{"rate_limit":{"per_second":1,"burst":0}}"#, "burst"),
        ] {
            let patch: QueueConfigPatch = serde_json::from_str(json).unwrap();
            assert!(matches!(base.patched(&patch), Err(Error::InvalidRequest(m)) if m.contains(field)), "{json}");
        }
        let over = format!(r#"{{"max_in_flight":{}}}"#, u64::from(IN_FLIGHT_MAX) + 1);
        let patch: QueueConfigPatch = serde_json::from_str(&over).unwrap();
        assert!(base.patched(&patch).is_err());
        assert!(serde_json::from_str::<QueueConfigPatch>(r#"{"rate_limit":{"per_second":1}}"#).is_err());
    }

    #[test]
    fn per_key_limits_are_validated_and_a_null_clears_them() {
        let base = QueueConfig::default();
        let patch: QueueConfigPatch = serde_json::from_str(
            r#"{"rate_limit":{"per_second":5,"burst":2},"rate_limit_by":"header:account","max_in_flight_per_key":2}"#,
        )
        .unwrap();
        let keyed = base.patched(&patch).unwrap();
        assert_eq!(keyed.rate_limit_by, Some(KeyBy::Header("account".into())));
        assert_eq!(keyed.max_in_flight_per_key, Some(2));
        assert!(keyed.lease_limited() && keyed.keyed_limits() && keyed.queue_rate().is_none());
        assert_eq!(keyed.in_flight_key_by(), KeyBy::Header("account".into()));
        let json = serde_json::to_value(&keyed).unwrap();
        assert_eq!(
            (json["rate_limit_by"].as_str(), json["max_in_flight_per_key"].as_u64()),
            (Some("header:account"), Some(2))
        );
        let clear: QueueConfigPatch =
            serde_json::from_str(r#"{"rate_limit":null,"rate_limit_by":null,"max_in_flight_per_key":null}"#).unwrap();
        assert_eq!(keyed.patched(&clear).unwrap(), base);
        let only_cap: QueueConfigPatch = serde_json::from_str(r#"{"max_in_flight_per_key":1}"#).unwrap();
        assert_eq!(base.patched(&only_cap).unwrap().in_flight_key_by(), KeyBy::OrderingKey);
        for (json, field) in [
            (r#"{"rate_limit_by":"ordering_key"}"#, "rate_limit_by needs a rate_limit"),
            (r#"{"max_in_flight_per_key":0}"#, "max_in_flight_per_key"),
        ] {
            let patch: QueueConfigPatch = serde_json::from_str(json).unwrap();
            assert!(matches!(base.patched(&patch), Err(Error::InvalidRequest(m)) if m.contains(field)), "{json}");
        }
        let dropping_the_rate: QueueConfigPatch = serde_json::from_str(r#"{"rate_limit":null}"#).unwrap();
        assert!(keyed.patched(&dropping_the_rate).is_err(), "rate_limit_by would be left without a rate");
        for bad in [r#"{"rate_limit_by":"customer"}"#, r#"{"rate_limit_by":"header:"}"#] {
            let e = serde_json::from_str::<QueueConfigPatch>(bad).unwrap_err().to_string();
            assert!(e.contains("rate_limit_by"), "{bad}: {e}");
        }
    }
}
