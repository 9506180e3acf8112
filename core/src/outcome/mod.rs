//! Where each record ended, what one batch of one shard reached, and the checkpoint rule: a
//! shard's checkpoint moves only over a contiguous prefix of records that are done, never past a
//! failed one, and reaches `SHARD_END` only when every record of a closed shard is done.
//!
//! The runtime and every source apply the rule through [`ShardTracker`]; nothing else decides
//! how far a checkpoint may move.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod counts;
mod tracker;

pub use counts::Counts;
pub use tracker::{Failure, ShardTracker};

use crate::position::{Checkpoint, Position};

/// Where a record ended. Every record that enters ends in exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The sink acknowledged the record.
    Stored,
    /// Deliberately not written: an enricher dropped it, or the sink is disabled.
    Skipped {
        /// Who dropped it.
        by: SkippedBy,
    },
    /// A permanent failure, written to the error sink with its reason.
    DeadLettered {
        /// Where it failed.
        stage: Stage,
    },
    /// Neither stored nor dead-lettered: it must be delivered again.
    Failed {
        /// Why.
        error: String,
    },
}

impl Outcome {
    /// Stored, skipped and dead-lettered records are done; a checkpoint may pass them.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

/// Who skipped a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkippedBy {
    /// An enricher (`filter`), by its name in the pipeline.
    Enricher(String),
    /// The sink is switched off (`enabled = false`): the record was read and enriched only.
    DisabledSink,
}

impl fmt::Display for SkippedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkippedBy::Enricher(name) => f.write_str(name),
            SkippedBy::DisabledSink => f.write_str("sink disabled"),
        }
    }
}

impl Serialize for SkippedBy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The stage at which a record was given up on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The payload is not a JSON object (empty, bad base64, not UTF-8, not JSON, not an object).
    Decode,
    /// The record arrived longer ago than the pipeline's `max_record_age` when it was processed.
    Age,
    /// An enricher rejected the record; holds the enricher's name (`filter`, `fields#2`).
    Enrich(String),
    /// The sink rejected the record.
    Sink,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Decode => f.write_str("decode"),
            Stage::Age => f.write_str("age"),
            Stage::Enrich(name) => write!(f, "enrich:{name}"),
            Stage::Sink => f.write_str("sink"),
        }
    }
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "decode" => Ok(Stage::Decode),
            "age" => Ok(Stage::Age),
            "sink" => Ok(Stage::Sink),
            _ => match s.strip_prefix("enrich:") {
                Some(name) if !name.is_empty() => Ok(Stage::Enrich(name.to_owned())),
                _ => Err(format!(
                    "unknown stage `{s}`: expected `decode`, `age`, `enrich:<name>` or `sink`"
                )),
            },
        }
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What kind of failure gave a record up, as dead-letter envelopes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The payload is not a JSON object.
    Decode,
    /// The record lacks a field an enricher reads.
    MissingField,
    /// The record cannot be enriched or stored; trying again cannot help.
    Permanent,
    /// A failure that might pass, reported as it was.
    Retryable,
    /// A failure that might have passed, still failing when the retry policy ran out.
    RetriesExhausted,
    /// Older than the pipeline's `max_record_age`: stale data is not written over fresh.
    Expired,
}

impl ErrorKind {
    const ALL: [ErrorKind; 6] = [
        ErrorKind::Decode,
        ErrorKind::MissingField,
        ErrorKind::Permanent,
        ErrorKind::Retryable,
        ErrorKind::RetriesExhausted,
        ErrorKind::Expired,
    ];

    /// The name in envelopes (`missing_field`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Retryable => "retryable",
            ErrorKind::RetriesExhausted => "retries_exhausted",
            ErrorKind::Expired => "expired",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error kind `{name}`")))
    }
}

/// The outcome of one batch of one shard.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// The shard.
    pub shard_id: String,
    /// Each record's position and outcome, in the batch's order.
    pub outcomes: Vec<(Position, Outcome)>,
    checkpoint: Option<Checkpoint>,
}

impl BatchReport {
    /// A report of the batch's outcomes, in the batch's order.
    pub fn new(shard_id: String, outcomes: Vec<(Position, Outcome)>) -> Self {
        let checkpoint = outcomes
            .iter()
            .take_while(|(_, o)| o.is_terminal())
            .last()
            .map(|(position, _)| Checkpoint::At(position.clone()));
        Self {
            shard_id,
            outcomes,
            checkpoint,
        }
    }

    /// How far this batch moves its shard's checkpoint: the end of its prefix of terminal
    /// outcomes (`None` when its first record failed). Once a [`ShardTracker`] has taken the
    /// report ([`BatchReport::tracked`]), `None` also when an earlier failure holds the shard.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// The report with no checkpoint at all: a dry run (the sink disabled) must not move a
    /// source past records it did not store.
    pub fn without_checkpoint(mut self) -> Self {
        self.checkpoint = None;
        self
    }

    /// The report after the shard's tracker took it: its checkpoint is where the shard's
    /// checkpoint moved, or `None` when it did not move.
    pub fn tracked(mut self, shard: &mut ShardTracker) -> Self {
        if !shard.apply(&self) {
            self.checkpoint = None;
        }
        self
    }

    /// Whether every record of the batch is done.
    pub fn is_complete(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| o.is_terminal())
    }

    /// The first record that must be delivered again (Lambda's `batchItemFailures` entry).
    pub fn first_failure(&self) -> Option<&Position> {
        self.outcomes
            .iter()
            .find(|(_, o)| !o.is_terminal())
            .map(|(position, _)| position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn failed() -> Outcome {
        Outcome::Failed { error: "x".into() }
    }

    pub(super) fn report(outcomes: Vec<(u64, Outcome)>) -> BatchReport {
        BatchReport::new(
            "s".into(),
            outcomes.into_iter().map(|(p, o)| (p.into(), o)).collect(),
        )
    }

    #[test]
    fn checkpoint_is_the_end_of_the_terminal_prefix() {
        let r = report(vec![
            (1, Outcome::Stored),
            (
                2,
                Outcome::Skipped {
                    by: SkippedBy::Enricher("filter".into()),
                },
            ),
            (3, failed()),
            (4, Outcome::Stored),
        ]);
        assert_eq!(r.checkpoint(), Some(&Checkpoint::at(2)));
        assert_eq!(r.first_failure(), Some(&3.into()));
        assert!(!r.is_complete());

        let r = report(vec![(9, failed())]);
        assert_eq!(r.checkpoint(), None);
    }

    #[test]
    fn stages_and_kinds_read_and_write_the_envelope_strings() {
        for (stage, text) in [
            (Stage::Decode, "decode"),
            (Stage::Enrich("fields#2".into()), "enrich:fields#2"),
            (Stage::Sink, "sink"),
        ] {
            assert_eq!(stage.to_string(), text);
            assert_eq!(text.parse::<Stage>(), Ok(stage));
        }
        assert!("enrich:".parse::<Stage>().is_err());
        assert_eq!(
            serde_json::to_value(ErrorKind::RetriesExhausted).unwrap(),
            "retries_exhausted"
        );
        for kind in ErrorKind::ALL {
            let text = serde_json::to_value(kind).unwrap();
            assert_eq!(text, kind.as_str());
            assert_eq!(serde_json::from_value::<ErrorKind>(text).unwrap(), kind);
        }
        assert_eq!(SkippedBy::DisabledSink.to_string(), "sink disabled");
    }
}
