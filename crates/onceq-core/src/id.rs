//! The names of jobs and queues, as the seam's error type carries them (`Error::JobNotFound`,
//! `Error::QueueNotFound`). What makes a name valid, and reading one from text or JSON, live
//! with the job (`job`) and the queue (`queue`): those fail with an `Error`, and the error type
//! must not import the modules that import it.

use std::fmt;

use serde::Serialize;

/// A job's stable id, unique within a store for its whole life (ids are never reused).
/// On the wire it is a string of decimal digits, so clients in any language keep it exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(u64);

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JobId {
    /// The id with this number.
    pub const fn new(n: u64) -> Self {
        JobId(n)
    }

    /// The id's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A validated queue name: 1 to [`QUEUE_NAME_LEN_MAX`](crate::limits::QUEUE_NAME_LEN_MAX) characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct QueueName(pub(crate) String);

impl QueueName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A paced redrive's id, unique within a store. On the wire a string of decimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RedriveId(u64);

impl RedriveId {
    /// The id with this number.
    pub const fn new(n: u64) -> Self {
        RedriveId(n)
    }

    /// The id's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RedriveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for RedriveId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
