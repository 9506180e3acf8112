//! Lambda's Kinesis event (`{"Records": [...]}`), read with `data` kept as text so that one
//! record's bad base64 dead-letters that record instead of failing the whole event.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::record::{Encoding, Meta, RawRecord, SequenceNumber};

/// A Kinesis event as Lambda delivers it.
#[derive(Debug, Clone, Deserialize)]
pub struct KinesisEvent {
    /// The records, in order per shard.
    #[serde(rename = "Records")]
    pub records: Vec<KinesisEventRecord>,
}

/// One record of a Kinesis event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KinesisEventRecord {
    /// `shardId-000000000000:<sequence number>`.
    #[serde(rename = "eventID")]
    pub event_id: String,
    /// `arn:aws:kinesis:<region>:<account>:stream/<name>`.
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: String,
    /// The Kinesis part.
    pub kinesis: KinesisPayload,
}

/// The `kinesis` object of an event record.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KinesisPayload {
    /// The payload, base64; kept as text and decoded per record.
    #[serde(default)]
    pub data: String,
    /// The record's sequence number.
    pub sequence_number: String,
    /// The partition key.
    #[serde(default)]
    pub partition_key: Option<String>,
    /// Seconds since the epoch, fractional.
    #[serde(default)]
    pub approximate_arrival_timestamp: Option<f64>,
}

/// The stream name in a Kinesis stream ARN (the text itself when it is not an ARN).
pub fn stream_name(arn_or_name: &str) -> &str {
    crate::arn::name_from_arn(arn_or_name, "stream")
}

impl KinesisEventRecord {
    /// The shard id part of the event id.
    pub fn shard_id(&self) -> &str {
        self.event_id
            .split_once(':')
            .map_or(self.event_id.as_str(), |(shard, _)| shard)
    }

    /// The record as the runtime takes it, its data still base64.
    pub fn into_raw(self, source: &str) -> RawRecord {
        let arrival_time = self.kinesis.approximate_arrival_timestamp.and_then(|secs| {
            DateTime::<Utc>::from_timestamp_millis((secs * 1000.0).round() as i64)
        });
        RawRecord {
            meta: Meta {
                source: source.to_owned(),
                stream: stream_name(&self.event_source_arn).to_owned(),
                shard_id: self.shard_id().to_owned(),
                sequence_number: SequenceNumber::new(self.kinesis.sequence_number),
                sub_sequence: None,
                partition_key: self.kinesis.partition_key,
                arrival_time,
                ..Meta::default()
            },
            data: Bytes::from(self.kinesis.data),
            encoding: Encoding::Base64,
        }
    }
}

impl KinesisEvent {
    /// When the event's oldest record arrived in its stream, in epoch milliseconds.
    pub fn oldest_arrival_ms(&self) -> Option<u64> {
        self.records
            .iter()
            .filter_map(|r| r.kinesis.approximate_arrival_timestamp)
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .map(|secs| (secs * 1000.0).round() as u64)
            .min()
    }

    /// The event's records grouped by shard, shards in order of first appearance, records in
    /// order; a KPL aggregate (Lambda passes them through whole) split into its user records.
    pub fn into_shard_batches(self, source: &str) -> Vec<(String, Vec<RawRecord>)> {
        let mut shards: Vec<(String, Vec<RawRecord>)> = Vec::new();
        for record in self.records {
            let raw = record.into_raw(source);
            let shard = raw.meta.shard_id.clone();
            let users = raw.deaggregated();
            match shards.iter_mut().find(|(id, _)| *id == shard) {
                Some((_, records)) => records.extend(users),
                None => shards.push((shard, users)),
            }
        }
        shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_positions_and_groups_by_shard() {
        let event: KinesisEvent = serde_json::from_str(
            r#"{"Records":[
              {"eventID":"shardId-000000000001:49590338271490256608559692538361571095921575989136588898",
               "eventSourceARN":"arn:aws:kinesis:us-east-1:123456789012:stream/waze",
               "kinesis":{"data":"eyJhIjoxfQ==","sequenceNumber":"49590338271490256608559692538361571095921575989136588898",
                          "partitionKey":"pk","approximateArrivalTimestamp":1545084650.987}},
              {"eventID":"shardId-000000000002:7","eventSourceARN":"arn:aws:kinesis:us-east-1:123456789012:stream/waze",
               "kinesis":{"data":"!!","sequenceNumber":"7"}},
              {"eventID":"shardId-000000000001:49590338271490256608559692538361571095921575989136588899",
               "eventSourceARN":"arn:aws:kinesis:us-east-1:123456789012:stream/waze",
               "kinesis":{"data":"e30=","sequenceNumber":"49590338271490256608559692538361571095921575989136588899"}}
            ]}"#,
        )
        .expect("event parses");
        let shards = event.into_shard_batches("lambda");
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].0, "shardId-000000000001");
        assert_eq!(shards[0].1.len(), 2);
        let first = &shards[0].1[0].meta;
        assert_eq!(first.stream, "waze");
        assert_eq!(first.partition_key.as_deref(), Some("pk"));
        assert_eq!(
            first.arrival_time.map(|t| t.timestamp_millis()),
            Some(1_545_084_650_987)
        );
        assert_eq!(&shards[1].1[0].data[..], b"!!");
        assert_eq!(stream_name("plain"), "plain");
    }
}
