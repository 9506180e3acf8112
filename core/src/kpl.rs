//! Records aggregated by the Kinesis Producer Library (and the aggregation libraries for other
//! languages): one Kinesis record holding many user records. Its data is the magic bytes
//! `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the MD5 digest of the protobuf bytes.
//! Kinesis sources split such a record into its user records, each at the parent's sequence
//! number with its index as the sub-sequence number and its own partition key; one that does not
//! check out is left whole, and decoding dead-letters it with the reason.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use crate::record::{Encoding, RawRecord};

/// The bytes an aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// KPL's `AggregatedRecord` (proto2).
#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<UserRecord>,
}

/// KPL's `Record`: one user record.
#[derive(Clone, PartialEq, Message)]
struct UserRecord {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    data: Bytes,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

/// KPL's `Tag` (read past, unused).
#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// Why an aggregated record cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// The digest does not match the protobuf bytes (corrupted, or cut short).
    #[error("a KPL aggregated record whose MD5 digest does not match its contents")]
    Digest,
    /// The protobuf does not parse.
    #[error("a KPL aggregated record whose protobuf does not parse: {0}")]
    Protobuf(String),
    /// It holds no user records (nothing to store, nothing to skip silently).
    #[error("a KPL aggregated record that holds no user records")]
    Empty,
    /// A user record names a partition key the table does not have.
    #[error(
        "a KPL aggregated record whose user record {record} names partition key {index} of {keys}"
    )]
    PartitionKey {
        /// The user record's index.
        record: usize,
        /// The index it names.
        index: u64,
        /// The table's length.
        keys: usize,
    },
}

/// Whether `data` is framed as an aggregated record (magic bytes, room for a digest).
pub fn is_aggregated(data: &[u8]) -> bool {
    data.len() > MAGIC.len() + DIGEST_LEN && data.starts_with(&MAGIC)
}

/// The user records (partition key, data) of an aggregated record's `data`; `None` when it is
/// not framed as one.
pub fn split(data: &[u8]) -> Option<Result<Vec<(String, Bytes)>, AggregateError>> {
    if !is_aggregated(data) {
        return None;
    }
    let (message, digest) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - DIGEST_LEN);
    if Md5::digest(message).as_slice() != digest {
        return Some(Err(AggregateError::Digest));
    }
    let aggregated = match AggregatedRecord::decode(message) {
        Ok(a) => a,
        Err(e) => return Some(Err(AggregateError::Protobuf(e.to_string()))),
    };
    if aggregated.records.is_empty() {
        return Some(Err(AggregateError::Empty));
    }
    let keys = &aggregated.partition_key_table;
    let users = aggregated
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = usize::try_from(r.partition_key_index)
                .ok()
                .and_then(|k| keys.get(k))
                .ok_or(AggregateError::PartitionKey {
                    record: i,
                    index: r.partition_key_index,
                    keys: keys.len(),
                })?;
            Ok((key.clone(), r.data))
        })
        .collect();
    Some(users)
}

impl RawRecord {
    /// This Kinesis record's user records when it is a KPL aggregate that checks out, each at
    /// the parent's sequence number with its index as sub-sequence number and its own partition
    /// key; otherwise the record itself, unchanged (decoding dead-letters a broken aggregate).
    pub fn deaggregated(self) -> Vec<RawRecord> {
        let data = match self.encoding {
            Encoding::Raw => self.data.clone(),
            Encoding::Refused(_) => return vec![self],
            Encoding::Base64 => match crate::decode::base64_payload(&self.data) {
                Some(bytes) if is_aggregated(&bytes) => bytes,
                _ => return vec![self],
            },
        };
        let Some(Ok(users)) = split(&data) else {
            return vec![self];
        };
        users
            .into_iter()
            .enumerate()
            .map(|(i, (partition_key, data))| {
                let mut meta = self.meta.clone();
                meta.sub_sequence = Some(i as u64);
                meta.partition_key = Some(partition_key);
                RawRecord {
                    data,
                    encoding: Encoding::Raw,
                    meta,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Meta;
    use crate::testkit::kpl_aggregate as aggregate;

    fn raw(data: Vec<u8>) -> RawRecord {
        RawRecord {
            data: Bytes::from(data),
            encoding: Encoding::Raw,
            meta: Meta {
                sequence_number: "42".into(),
                partition_key: Some("outer".into()),
                ..Meta::default()
            },
        }
    }

    #[test]
    fn an_aggregate_splits_into_its_user_records_at_sub_sequences() {
        let data = aggregate(
            &["a", "b"],
            &[(0, b"{\"n\":0}"), (1, b"{\"n\":1}"), (0, b"x")],
        );
        let users = raw(data).deaggregated();
        let seen: Vec<_> = users
            .iter()
            .map(|r| {
                (
                    r.meta.position().to_string(),
                    r.meta.partition_key.clone().unwrap(),
                    r.data.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("42".into(), "a".into(), Bytes::from_static(b"{\"n\":0}")),
                ("42.1".into(), "b".into(), Bytes::from_static(b"{\"n\":1}")),
                ("42.2".into(), "a".into(), Bytes::from_static(b"x")),
            ]
        );
        assert!(users.iter().all(|u| u.meta.sub_sequence.is_some()));
    }

    #[test]
    fn a_plain_record_or_a_broken_aggregate_stays_whole() {
        let plain = raw(b"{\"n\":1}".to_vec()).deaggregated();
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].meta.sub_sequence, None);
        let mut corrupt = aggregate(&["a"], &[(0, b"{}")]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(split(&corrupt), Some(Err(AggregateError::Digest)));
        assert_eq!(raw(corrupt.clone()).deaggregated()[0].data, corrupt);
        let bad_key = aggregate(&["a"], &[(3, b"{}")]);
        assert!(matches!(
            split(&bad_key),
            Some(Err(AggregateError::PartitionKey { index: 3, .. }))
        ));
        assert_eq!(
            split(&aggregate(&["a"], &[])),
            Some(Err(AggregateError::Empty))
        );
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[0xff; 8]);
        garbage.extend_from_slice(&Md5::digest([0xff; 8]));
        assert!(matches!(
            split(&garbage),
            Some(Err(AggregateError::Protobuf(_)))
        ));
    }
}
