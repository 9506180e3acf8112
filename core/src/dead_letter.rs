//! The dead-letter envelope: what the error sink receives for a record that cannot be stored.

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::outcome::{ErrorKind, Stage};
use crate::record::{Meta, Record};

/// The error part of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeError {
    /// `decode`, `missing_field`, `permanent` or `retries_exhausted`.
    pub kind: ErrorKind,
    /// The message, naming the field or the reason.
    pub message: String,
}

/// A dead-letter envelope, serialised as the error sink's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The pipeline's name.
    pub pipeline: String,
    /// `decode`, `enrich:<name>` or `sink`.
    pub stage: Stage,
    /// Why the record was given up on.
    pub error: EnvelopeError,
    /// Attempts made at the failing stage.
    pub attempts: u32,
    /// Where the record came from (stream, shard, sequence number, partition key, arrival time)
    /// and what enrichers attached (such as the SSM parameter version).
    pub source: Meta,
    /// The original payload, base64 (standard alphabet, padded).
    pub payload_base64: String,
    /// When the record was given up on.
    pub failed_at: DateTime<Utc>,
    /// The sluice version that wrote the envelope.
    pub sluice_version: String,
    /// For a record dead-lettered again after a redrive: its previous envelope, without the
    /// payload (and with its own `previous`), so every reason is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<serde_json::Value>>,
}

/// The meta entry a redriven record carries: its previous envelope, without the payload, as
/// JSON text. A new envelope for it adds its attempts to the previous ones and keeps it as
/// `previous`.
pub const REDRIVEN: &str = "sluice:redriven";

/// Why a record is given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Where it failed.
    pub stage: Stage,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The message, naming the field or the reason.
    pub message: String,
    /// Attempts made at the failing stage.
    pub attempts: u32,
}

impl DeadLetter {
    /// An envelope for a record's payload and position.
    pub fn new(pipeline: &str, reason: Reason, data: &[u8], meta: &Meta) -> Self {
        let mut source = meta.clone();
        let previous = source
            .extra
            .remove(REDRIVEN)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let before = previous
            .as_ref()
            .and_then(|p| p["attempts"].as_u64())
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
        Self {
            pipeline: pipeline.to_owned(),
            stage: reason.stage,
            error: EnvelopeError {
                kind: reason.kind,
                message: reason.message,
            },
            attempts: reason.attempts.saturating_add(before),
            source,
            payload_base64: base64::engine::general_purpose::STANDARD.encode(data),
            failed_at: Utc::now(),
            sluice_version: crate::VERSION.to_owned(),
            previous: previous.map(Box::new),
        }
    }

    /// The envelope as a record for the error sink, at the failed record's position.
    pub fn into_record(self) -> Record {
        let value = serde_json::to_value(&self).expect("an envelope always serialises");
        let data = Bytes::from(value.to_string());
        Record {
            data,
            value,
            meta: self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redriven_record_dead_lettered_again_keeps_its_previous_reason_and_counts_on() {
        let first = serde_json::json!({
            "stage": "enrich:fields", "attempts": 1,
            "error": {"kind": "missing_field", "message": "no `bucket`"},
        });
        let mut meta = Meta {
            stream: "s".into(),
            ..Meta::default()
        };
        meta.extra.insert(REDRIVEN.into(), first.to_string());
        let reason = Reason {
            stage: Stage::Sink,
            kind: ErrorKind::Permanent,
            message: "too big".into(),
            attempts: 1,
        };
        let again = DeadLetter::new("p", reason, b"{}", &meta);
        assert_eq!(again.attempts, 2);
        assert_eq!(again.previous.as_deref(), Some(&first));
        assert!(
            !again.source.extra.contains_key(REDRIVEN),
            "not nested in the source"
        );
        assert_eq!(again.source.stream, "s");
    }

    #[test]
    fn envelope_carries_position_reason_and_original_payload() {
        let meta = Meta {
            source: "file".into(),
            stream: "in.jsonl".into(),
            shard_id: "file".into(),
            sequence_number: 7.into(),
            ..Meta::default()
        };
        let reason = Reason {
            stage: Stage::Enrich("fields".into()),
            kind: ErrorKind::MissingField,
            message: "no `s3-key`".into(),
            attempts: 1,
        };
        let env = DeadLetter::new("p", reason, b"{\"a\":1}", &meta);
        let rec = env.into_record();
        assert_eq!(rec.value["stage"], "enrich:fields");
        assert_eq!(rec.value["error"]["kind"], "missing_field");
        assert_eq!(rec.value["source"]["sequence_number"], "7");
        assert_eq!(rec.value["payload_base64"], "eyJhIjoxfQ==");
        let back: DeadLetter = serde_json::from_slice(&rec.data).expect("round trip");
        assert_eq!(back.source, meta);
    }
}
