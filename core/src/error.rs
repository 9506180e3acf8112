//! Errors components report, each with a variant a caller can act on.

use std::path::PathBuf;

use crate::outcome::ErrorKind;

/// A sink's answer for one record it could not store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again: throttling, a 5xx, a timeout, a busy database.
    #[error("{0}")]
    Retryable(String),
    /// Trying again cannot help: the record is invalid or too large for the store.
    #[error("{0}")]
    Permanent(String),
}

impl SinkError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_))
    }
}

/// An enricher's answer for one record it could not enrich.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichError {
    /// The record lacks a field the enricher reads.
    #[error("the record has no field `{field}` ({context})")]
    MissingField {
        /// The absent field's name.
        field: String,
        /// What needed it, e.g. "filter keep_if".
        context: String,
    },
    /// The record cannot be enriched as configured; retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// A dependency is unavailable (a parameter store, say); retrying may help.
    #[error("{0}")]
    Retryable(String),
}

impl EnrichError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EnrichError::Retryable(_))
    }

    /// The error kind written into a dead-letter envelope.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EnrichError::MissingField { .. } => ErrorKind::MissingField,
            EnrichError::Permanent(_) => ErrorKind::Permanent,
            EnrichError::Retryable(_) => ErrorKind::Retryable,
        }
    }
}

/// A source failure that stops reading (the records not yet read stay where they are).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the underlying input failed.
    #[error("reading {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not in the expected format as a whole (one bad record is a decode error instead).
    #[error("{0}")]
    Format(String),
    /// Storing a checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The service the source reads failed past its retries (Kinesis unreachable, say).
    #[error("{0}")]
    Service(String),
}

/// A component could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting has a value the component cannot use; names the key and the fix.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The key within the component's table, e.g. `keep_if.starts_with`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A resource the component needs could not be opened.
    #[error("{what}: {message}")]
    Unavailable {
        /// The resource, e.g. a database path.
        what: String,
        /// Why it could not be opened.
        message: String,
        /// The service was there but failed (throttling, a 5xx, a timeout, an outage): the
        /// same start a little later may succeed. False when the resource is missing or refused.
        transient: bool,
    },
}

impl BuildError {
    /// A bad setting at `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A pipeline file could not be loaded or built.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}", file = .file.display())]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// The key path within the file, when the error is about one key.
    pub key: Option<String>,
    /// What is wrong, naming the key, what was expected and the fix.
    pub message: String,
    /// A resource the file names could not be reached (a missing queue, throttling at start-up):
    /// trying again may help, unlike for a wrong setting.
    pub unavailable: bool,
    /// It could not be reached for a passing reason (throttling, a 5xx, an outage), not because
    /// it is missing: a daemon waits and starts again instead of exiting.
    pub transient: bool,
}
