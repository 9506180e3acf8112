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
    pub fn write_to(&self, name: &str, out: &mut impl std::fmt::Write) -> bool {
        match MetaName::known(name) {
            Some(known) => self.write_field(&known, out),
            None => self.write_extra(name, out),
        }
    }

    /// Appends the entry `name` of `extra`; false when there is none.
    fn write_extra(&self, name: &str, out: &mut impl std::fmt::Write) -> bool {
        self.extra
            .get(name)
            .is_some_and(|s| out.write_str(s).is_ok())
    }

    /// [`Meta::write_to`] for a name resolved once, as a template holds it.
    pub(crate) fn write_field(&self, name: &MetaName, out: &mut impl std::fmt::Write) -> bool {
        let text = |out: &mut _, s: &str| std::fmt::Write::write_str(out, s).is_ok();
        match name {
            MetaName::Source => text(out, &self.source),
            MetaName::Stream => text(out, &self.stream),
            MetaName::ShardId => text(out, &self.shard_id),
            MetaName::SequenceNumber => text(out, self.sequence_number.as_str()),
            MetaName::SubSequence => self
                .sub_sequence
                .is_some_and(|s| write!(out, "{s}").is_ok()),
            // The sequence number, and `.N` for user record N of a KPL aggregate: unique per
            // record, and for a record that is not aggregated its sequence number alone.
            MetaName::Position => {
                text(out, self.sequence_number.as_str())
                    && self
                        .sub_sequence
                        .is_none_or(|sub| write!(out, ".{sub}").is_ok())
            }
            MetaName::PartitionKey => self.partition_key.as_deref().is_some_and(|s| text(out, s)),
            MetaName::RecordPath => self.record_path.as_deref().is_some_and(|s| text(out, s)),
            MetaName::RecordIndex => self
                .record_index
                .is_some_and(|i| write!(out, "{i}").is_ok()),
            MetaName::ArrivalTime => self
                .arrival_time
                .is_some_and(|t| text(out, &t.to_rfc3339())),
            MetaName::Extra(name) => self.write_extra(name, out),
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

/// A meta field's name ([`Meta::FIELDS`], or an entry of `extra`), resolved once: templates
/// resolve theirs when parsed, so rendering one compares no names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaName {
    Source,
    Stream,
    ShardId,
    SequenceNumber,
    SubSequence,
    Position,
    PartitionKey,
    RecordPath,
    RecordIndex,
    ArrivalTime,
    Extra(String),
}

impl MetaName {
    pub(crate) fn parse(name: &str) -> Self {
        Self::known(name).unwrap_or_else(|| Self::Extra(name.to_owned()))
    }

    /// One of [`Meta::FIELDS`], or `None` for a name of `extra`.
    fn known(name: &str) -> Option<Self> {
        Some(match name {
            "source" => Self::Source,
            "stream" => Self::Stream,
            "shard_id" => Self::ShardId,
            "sequence_number" => Self::SequenceNumber,
            "sub_sequence" => Self::SubSequence,
            "position" => Self::Position,
            "partition_key" => Self::PartitionKey,
            "record_path" => Self::RecordPath,
            "record_index" => Self::RecordIndex,
            "arrival_time" => Self::ArrivalTime,
            _ => return None,
        })
    }

    /// The name as a template writes it after `$meta.`.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Source => "source",
            Self::Stream => "stream",
            Self::ShardId => "shard_id",
            Self::SequenceNumber => "sequence_number",
            Self::SubSequence => "sub_sequence",
            Self::Position => "position",
            Self::PartitionKey => "partition_key",
            Self::RecordPath => "record_path",
            Self::RecordIndex => "record_index",
            Self::ArrivalTime => "arrival_time",
            Self::Extra(name) => name,
        }
    }
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
