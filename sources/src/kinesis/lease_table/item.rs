//! A lease item in the Kinesis Client Library's format: reading one, and the conditional update
//! of one write.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Update};
use sluice_core::Checkpoint;

use super::{n, s};

/// Where a shard with no checkpoint yet starts, as KCL writes it in `checkpoint`. KCL keeps an
/// `AT_TIMESTAMP` start's time in its configuration; sluice also writes it beside the
/// placeholder (`sluiceStartAt`, epoch milliseconds), so a start survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    TrimHorizon,
    Latest,
    AtTimestamp(Option<i64>),
}

/// The attribute beside `AT_TIMESTAMP` holding its time.
pub(super) const START_AT: &str = "sluiceStartAt";

impl Initial {
    pub(super) fn as_stored(self) -> &'static str {
        match self {
            Initial::TrimHorizon => "TRIM_HORIZON",
            Initial::Latest => "LATEST",
            Initial::AtTimestamp(_) => "AT_TIMESTAMP",
        }
    }

    fn parse(s: &str, at: Option<i64>) -> Option<Self> {
        match s {
            "TRIM_HORIZON" => Some(Initial::TrimHorizon),
            "LATEST" => Some(Initial::Latest),
            "AT_TIMESTAMP" => Some(Initial::AtTimestamp(at)),
            _ => None,
        }
    }
}

/// One shard's lease as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lease {
    /// The shard id.
    pub key: String,
    /// Who holds it, if anyone.
    pub owner: Option<String>,
    /// Bumped by every write: renewals, takes, checkpoints.
    pub counter: i64,
    /// How far the shard is done.
    pub checkpoint: Option<Checkpoint>,
    /// Where it starts while it has no checkpoint (`None`: not said; the source's `start`).
    pub initial: Option<Initial>,
    /// The shards this one came from (KCL's `parentShardId`).
    pub parents: Vec<String>,
    /// The stream, when sluice wrote the lease (KCL tables lack it).
    pub stream: Option<String>,
}

impl Lease {
    /// Whether the shard is read to its end and every record of it is done.
    pub fn is_finished(&self) -> bool {
        self.checkpoint == Some(Checkpoint::ShardEnd)
    }
}

/// A write to a lease, on condition its counter is still `counter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub shard: String,
    pub counter: i64,
    pub kind: WriteKind,
}

/// What a [`LeaseWrite`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    /// Take it for this worker (free, expired, or stolen); `switch` when another owned it.
    Take { switch: bool },
    /// Keep holding it (only while this worker owns it).
    Renew,
    /// Keep holding it and store how far the shard is done.
    Checkpoint(Checkpoint),
    /// The shard is finished: store `SHARD_END` and its children, and let the lease go.
    Finish(Vec<String>),
    /// Let it go, storing a last checkpoint if it moved, so another worker can take it at once.
    Release(Option<Checkpoint>),
}

/// A lease from a scanned item; `None` for items that are not leases (KCL 3.x keeps worker
/// metrics and a leader lock beside them, marked by `entityType`).
pub(super) fn read_lease(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as i64)
    };
    let set = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default()
    };
    if text("entityType").is_some_and(|t| t != "LEASE") {
        return None;
    }
    let key = text("leaseKey")?;
    let stored = text("checkpoint");
    let start_at = item
        .get(START_AT)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok());
    let initial = stored.as_deref().and_then(|s| Initial::parse(s, start_at));
    let checkpoint = match (&stored, initial) {
        (Some(cp), None) => Some(Checkpoint::parse(
            cp,
            number("checkpointSubSequenceNumber").max(0) as u64,
        )),
        _ => None,
    };
    // `parentShardIds`: how sluice before 0.2 wrote the parents.
    let mut parents = set("parentShardId");
    if parents.is_empty() {
        parents = set("parentShardIds");
    }
    Some(Lease {
        key,
        owner: text("leaseOwner"),
        counter: number("leaseCounter"),
        checkpoint,
        initial,
        parents,
        stream: text("streamName"),
    })
}

/// The conditional update of one write by `owner` to `table`.
pub(super) fn update(table: &str, owner: &str, write: &LeaseWrite, expires: i64) -> Update {
    let mut set = vec!["leaseCounter = :next".to_owned()];
    let mut remove = Vec::new();
    let mut values = HashMap::from([
        (":seen".to_owned(), n(write.counter)),
        (":next".to_owned(), n(write.counter + 1)),
        (":me".to_owned(), s(owner)),
    ]);
    let mut condition = "leaseCounter = :seen AND leaseOwner = :me".to_owned();
    let mut store = |set: &mut Vec<String>, cp: &Checkpoint| {
        set.push("checkpoint = :cp".into());
        set.push("checkpointSubSequenceNumber = :sub".into());
        set.push("ownerSwitchesSinceCheckpoint = :zero".into());
        values.insert(":cp".into(), s(cp.as_stored()));
        values.insert(":sub".into(), n(cp.sub_sequence() as i64));
        values.insert(":zero".into(), n(0));
    };
    match &write.kind {
        WriteKind::Take { switch } => {
            condition = "leaseCounter = :seen".into();
            set.push("leaseOwner = :me".into());
            set.push("leaseExpiresAt = :expires".into());
            if *switch {
                set.push(
                    "ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :one"
                        .into(),
                );
                values.insert(":zero".into(), n(0));
                values.insert(":one".into(), n(1));
            }
        }
        WriteKind::Renew => set.push("leaseExpiresAt = :expires".into()),
        WriteKind::Checkpoint(cp) => {
            store(&mut set, cp);
            set.push("leaseExpiresAt = :expires".into());
        }
        WriteKind::Finish(children) => {
            store(&mut set, &Checkpoint::ShardEnd);
            if !children.is_empty() {
                set.push("childShardIds = :children".into());
                values.insert(":children".into(), AttributeValue::Ss(children.clone()));
            }
            remove.push("leaseOwner");
            remove.push("leaseExpiresAt");
        }
        WriteKind::Release(cp) => {
            if let Some(cp) = cp {
                store(&mut set, cp);
            }
            remove.push("leaseOwner");
            remove.push("leaseExpiresAt");
        }
    }
    if set.iter().any(|e| e.contains(":expires")) {
        values.insert(":expires".into(), n(expires));
    }
    let mut expression = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    Update::builder()
        .table_name(table)
        .key("leaseKey", s(&write.shard))
        .update_expression(expression)
        .condition_expression(condition)
        .set_expression_attribute_values(Some(values))
        .build()
        .expect("table, key and expression are set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn kcl_items_read_as_leases_placeholders_as_starting_points() {
        let lease = read_lease(&item(&[
            ("leaseKey", s("shardId-000000000001")),
            ("leaseOwner", s("java-worker-1")),
            ("leaseCounter", n(42)),
            ("checkpoint", s("TRIM_HORIZON")),
            ("checkpointSubSequenceNumber", n(0)),
            (
                "parentShardId",
                AttributeValue::Ss(vec!["shardId-000000000000".into()]),
            ),
            ("throughputKBps", AttributeValue::N("0.002952".into())),
            ("entityType", s("LEASE")),
        ]))
        .expect("a lease");
        assert_eq!(lease.checkpoint, None);
        assert_eq!(lease.initial, Some(Initial::TrimHorizon));
        assert_eq!(lease.parents, ["shardId-000000000000"]);
        assert_eq!(
            (lease.owner.as_deref(), lease.counter),
            (Some("java-worker-1"), 42)
        );

        let lease = read_lease(&item(&[
            ("leaseKey", s("shardId-000000000002")),
            (
                "checkpoint",
                s("49590338271490256608559692538361571095921575989136588898"),
            ),
            ("checkpointSubSequenceNumber", n(3)),
        ]))
        .unwrap();
        assert_eq!(
            lease.checkpoint.as_ref().map(Checkpoint::sub_sequence),
            Some(3)
        );
        assert_eq!(lease.owner, None);

        let finished = read_lease(&item(&[
            ("leaseKey", s("a")),
            ("checkpoint", s("SHARD_END")),
        ]));
        assert!(finished.unwrap().is_finished());

        // KCL 3.x keeps other kinds of items in the same table.
        assert!(read_lease(&item(&[
            ("leaseKey", s("w1")),
            ("entityType", s("WORKER_METRICS"))
        ]))
        .is_none());
    }
}
