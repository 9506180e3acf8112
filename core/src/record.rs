//! The record model: what a source hands the runtime and what enrichers and sinks see.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::position::Position;
pub use crate::position::SequenceNumber;

/// A record as a source delivered it, before decoding.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The payload bytes as received (for `Encoding::Base64`, the base64 text).
    pub data: Bytes,
    /// How `data` is encoded on the wire.
    pub encoding: Encoding,
    /// Where the record came from.
    pub meta: Meta,
}

/// How a source's payload is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// The bytes are the JSON document itself.
    Raw,
    /// The bytes are base64 text of the JSON document (Lambda Kinesis events).
    Base64,
    /// The source could not make a record of these bytes, for this reason (a feed document that
    /// is not JSON or has none of the arrays named): they are dead-lettered whole at decoding.
    Refused(std::sync::Arc<str>),
}

/// A decoded record flowing through enrichers into a sink.
#[derive(Debug, Clone)]
pub struct Record {
    /// The payload as it arrived (after transport decoding), kept for the dead-letter envelope.
    pub data: Bytes,
    /// The decoded JSON object; enrichers read and write it.
    pub value: serde_json::Value,
    /// Where the record came from, plus facts enrichers attach (`meta.extra`).
    pub meta: Meta,
}

/// The source position of a record and facts attached on its way through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The source component's type (`file`, `stdin`, `kinesis`, `lambda`).
    pub source: String,
    /// The stream the record belongs to: a Kinesis stream name, a file path as configured.
    pub stream: String,
    /// The shard within the stream (`file` and `stdin` have one each).
    pub shard_id: String,
    /// The record's position within its shard.
    pub sequence_number: SequenceNumber,
    /// The position within an aggregated Kinesis record, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_sequence: Option<u64>,
    /// The array of a JSON document the record is an element of (`file`/`s3` sources with
    /// `records`), as named there; `None` for other records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_path: Option<String>,
    /// The record's index within that array (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_index: Option<u64>,
    /// The Kinesis partition key, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// When the source received the record, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_time: Option<DateTime<Utc>>,
    /// Facts enrichers attach (`ssm_parameter` adds `ssm:<name>` = the version it used); carried
    /// into the dead-letter envelope.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Meta {
    /// Reads a meta field by the name templates use (`{$meta.NAME}`); `None` when it is unset.
    pub fn get(&self, name: &str) -> Option<String> {
        let mut out = String::new();
        self.write_to(name, &mut out).then_some(out)
    }

    /// Appends the meta field `name` to `out`, as [`Meta::get`] reads it, without a copy of its
    /// own; false (and `out` unchanged) when it is unset.
    pub fn write_to(&self, name: &str, out: &mut String) -> bool {
        use std::fmt::Write;
        // Writing into a String cannot fail.
        let text = |out: &mut String, s: &str| {
            out.push_str(s);
            true
        };
        match name {
            "source" => text(out, &self.source),
            "stream" => text(out, &self.stream),
            "shard_id" => text(out, &self.shard_id),
            "sequence_number" => text(out, self.sequence_number.as_str()),
            "sub_sequence" => self
                .sub_sequence
                .is_some_and(|s| write!(out, "{s}").is_ok()),
            // The sequence number, and `.N` for user record N of a KPL aggregate: unique per
            // record, and for a record that is not aggregated its sequence number alone.
            "position" => {
                out.push_str(self.sequence_number.as_str());
                if let Some(sub) = self.sub_sequence {
                    let _ = write!(out, ".{sub}");
                }
                true
            }
            "partition_key" => self.partition_key.as_deref().is_some_and(|s| text(out, s)),
            "record_path" => self.record_path.as_deref().is_some_and(|s| text(out, s)),
            "record_index" => self
                .record_index
                .is_some_and(|i| write!(out, "{i}").is_ok()),
            "arrival_time" => self
                .arrival_time
                .is_some_and(|t| text(out, &t.to_rfc3339())),
            other => self.extra.get(other).is_some_and(|s| text(out, s)),
        }
    }

    /// The record's position in its shard.
    pub fn position(&self) -> Position {
        Position {
            sequence: self.sequence_number.clone(),
            sub_sequence: self.sub_sequence.unwrap_or(0),
        }
    }

    /// The meta names every record has, whatever its source.
    pub const FIELDS: &'static [&'static str] = &[
        "source",
        "stream",
        "shard_id",
        "sequence_number",
        "sub_sequence",
        "position",
        "partition_key",
        "arrival_time",
        "record_path",
        "record_index",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_reads_named_fields_and_extras() {
        let mut m = Meta {
            source: "file".into(),
            stream: "in.jsonl".into(),
            shard_id: "file".into(),
            sequence_number: 12.into(),
            ..Meta::default()
        };
        m.extra.insert("ssm_parameter_version".into(), "3".into());
        assert_eq!(m.get("sequence_number").as_deref(), Some("12"));
        assert_eq!(m.get("stream").as_deref(), Some("in.jsonl"));
        assert_eq!(m.get("partition_key"), None);
        assert_eq!(m.get("ssm_parameter_version").as_deref(), Some("3"));
        assert_eq!(m.get("position").as_deref(), Some("12"));
        m.sub_sequence = Some(4);
        assert_eq!(m.get("position").as_deref(), Some("12.4"));
        assert_eq!(m.get("sub_sequence").as_deref(), Some("4"));

        let mut out = String::from("a/");
        assert!(m.write_to("stream", &mut out));
        assert!(!m.write_to("record_index", &mut out), "unset");
        assert!(!m.write_to("no_such_extra", &mut out), "unset");
        assert_eq!(out, "a/in.jsonl", "what is unset leaves the text as it was");
    }
}
