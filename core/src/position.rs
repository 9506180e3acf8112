//! Positions in a shard and how far a shard is done: sequence numbers, sub-sequence numbers of
//! aggregated records, and checkpoints.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A position within a shard: a decimal string of up to 128 digits (Kinesis), compared as a number.
///
/// Kinesis sequence numbers do not fit in a `u128` (39 digits), and comparing them as plain strings
/// puts "10" before "9"; so the order is by significant length, then lexically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// Wraps a decimal string; non-digit text still orders deterministically (by length, then bytes).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The sequence number as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn significant(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        if trimmed.is_empty() && !self.0.is_empty() {
            "0"
        } else {
            trimmed
        }
    }
}

impl From<&str> for SequenceNumber {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<u64> for SequenceNumber {
    fn from(n: u64) -> Self {
        Self(n.to_string())
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len()
            .cmp(&b.len())
            .then_with(|| a.cmp(b))
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A record's place in its shard: the sequence number, and within an aggregated Kinesis record
/// (KPL) the index of the user record (`0` for a record that is not aggregated, as KCL stores it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The sequence number.
    pub sequence: SequenceNumber,
    /// The sub-sequence number (KCL's `checkpointSubSequenceNumber`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sub_sequence: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Position {
    /// The position of a record that is not aggregated.
    pub fn new(sequence: SequenceNumber) -> Self {
        Self {
            sequence,
            sub_sequence: 0,
        }
    }
}

impl From<u64> for Position {
    fn from(n: u64) -> Self {
        Self::new(n.into())
    }
}

impl From<SequenceNumber> for Position {
    fn from(sequence: SequenceNumber) -> Self {
        Self::new(sequence)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sub_sequence {
            0 => write!(f, "{}", self.sequence),
            sub => write!(f, "{}.{sub}", self.sequence),
        }
    }
}

/// How far a shard is done: every record up to a position, or all of a closed shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Every record up to and including this position is stored, skipped or dead-lettered.
    At(Position),
    /// The shard is closed and every record of it is done: its children may be read.
    ShardEnd,
}

impl Checkpoint {
    /// How KCL lease tables write a finished shard's checkpoint.
    pub const SHARD_END: &'static str = "SHARD_END";

    /// The checkpoint after the record at `position`.
    pub fn at(position: impl Into<Position>) -> Self {
        Checkpoint::At(position.into())
    }

    /// The position, unless the shard is finished.
    pub fn position(&self) -> Option<&Position> {
        match self {
            Checkpoint::At(p) => Some(p),
            Checkpoint::ShardEnd => None,
        }
    }

    /// Reads a stored checkpoint: `SHARD_END`, or a sequence number with its sub-sequence number.
    pub fn parse(checkpoint: &str, sub_sequence: u64) -> Self {
        if checkpoint == Self::SHARD_END {
            Checkpoint::ShardEnd
        } else {
            Checkpoint::At(Position {
                sequence: SequenceNumber::new(checkpoint),
                sub_sequence,
            })
        }
    }

    /// The checkpoint as stored: the sequence number, or `SHARD_END`.
    pub fn as_stored(&self) -> &str {
        match self {
            Checkpoint::At(p) => p.sequence.as_str(),
            Checkpoint::ShardEnd => Self::SHARD_END,
        }
    }

    /// The sub-sequence number stored beside it (`0` at `SHARD_END`).
    pub fn sub_sequence(&self) -> u64 {
        self.position().map_or(0, |p| p.sub_sequence)
    }
}

impl From<u64> for Checkpoint {
    fn from(n: u64) -> Self {
        Checkpoint::at(n)
    }
}

impl Serialize for Checkpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::At(p) => p.fmt(f),
            Checkpoint::ShardEnd => f.write_str(Self::SHARD_END),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::new(s)
    }

    #[test]
    fn sequence_numbers_compare_as_numbers_not_strings() {
        assert!(seq("9") < seq("10"));
        assert!(seq("2") < seq("11"));
        assert!(seq("007") < seq("10"));
        assert_eq!(seq("5").cmp(&seq("5")), Ordering::Equal);
    }

    #[test]
    fn sequence_numbers_beyond_u128_compare_correctly() {
        // 56 digits, like real Kinesis sequence numbers; u128 holds only 39.
        let a = seq("49590338271490256608559692538361571095921575989136588898");
        let b = seq("49590338271490256608559692538361571095921575989136588899");
        let c = seq("149590338271490256608559692538361571095921575989136588898");
        assert!(a < b);
        assert!(b < c);
        let mut v = vec![c.clone(), a.clone(), b.clone()];
        v.sort();
        assert_eq!(v, vec![a, b, c]);
    }

    #[test]
    fn positions_order_by_sequence_then_sub_sequence() {
        let p = |seq: &str, sub| Position {
            sequence: seq.into(),
            sub_sequence: sub,
        };
        assert!(p("9", 5) < p("10", 0));
        assert!(p("10", 0) < p("10", 1));
        assert_eq!(p("10", 1).to_string(), "10.1");
        assert_eq!(p("10", 0).to_string(), "10");
    }

    #[test]
    fn checkpoints_read_back_as_written() {
        for cp in [
            Checkpoint::ShardEnd,
            Checkpoint::at(42),
            Checkpoint::At(Position {
                sequence: "7".into(),
                sub_sequence: 3,
            }),
        ] {
            assert_eq!(Checkpoint::parse(cp.as_stored(), cp.sub_sequence()), cp);
        }
    }
}
