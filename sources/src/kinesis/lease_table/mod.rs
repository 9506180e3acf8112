//! The lease table, in the Kinesis Client Library's format (2.x, read by 3.x): one item per
//! shard keyed by `leaseKey` (the shard id), with `leaseOwner`, `leaseCounter` (the fencing
//! token), `checkpoint` (a sequence number, `SHARD_END`, or a starting placeholder such as
//! `TRIM_HORIZON`) with `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint`,
//! `parentShardId` and `childShardIds`; sluice adds `streamName` and, for people reading the
//! table, `leaseExpiresAt` (nothing depends on it).
//!
//! Every write is conditional on the `leaseCounter` the writer last saw and bumps it, so a worker
//! that lost a lease can never write it again. Writes of one round go in one transaction;
//! when some conditions fail, the cancellation reasons say which, and the rest go again.

mod item;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ScalarAttributeType, TransactWriteItem,
};
use sluice_core::aws;
use sluice_core::{Checkpoint, SourceError};

use item::read_lease;
pub use item::{Initial, Lease, LeaseWrite, WriteKind};

/// TransactWriteItems' limit on items per call.
const MAX_TRANSACT_ITEMS: usize = 100;

/// The lease table of one stream's consumer, as one worker sees it.
pub struct LeaseTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
    stream: String,
    owner: String,
    duration: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn failed(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Checkpoint(format!("{what}: {e}"))
}

impl LeaseTable {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: String,
        stream: String,
        owner: String,
        duration: Duration,
    ) -> Self {
        Self {
            client,
            table,
            stream,
            owner,
            duration,
        }
    }

    /// This worker's id, as written in `leaseOwner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Fails when the table holds another stream's leases: shard ids repeat across streams, so
    /// their checkpoints would skip or repeat this stream's records.
    pub fn check_stream(&self, leases: &[Lease]) -> Result<(), SourceError> {
        match leases
            .iter()
            .filter_map(|l| l.stream.as_deref())
            .find(|s| *s != self.stream)
        {
            None => Ok(()),
            Some(other) => Err(SourceError::Checkpoint(format!(
                "lease table `{}` holds the checkpoints of stream `{other}`, not `{}`; \
                 give this stream its own table with `checkpoint_table`",
                self.table, self.stream
            ))),
        }
    }

    /// Every lease (items of other kinds, such as KCL 3.x's worker metrics, are passed over);
    /// creates the table, and answers none, when it is missing.
    pub async fn scan(&self) -> Result<Vec<Lease>, SourceError> {
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) if aws::error_code(&e) == Some("ResourceNotFoundException") => {
                    self.create_table().await?;
                    return Ok(Vec::new());
                }
                Err(e) => {
                    return Err(failed(
                        &format!("reading lease table `{}`", self.table),
                        aws::describe_error(&e),
                    ))
                }
            };
            leases.extend(page.items().iter().filter_map(read_lease));
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    async fn create_table(&self) -> Result<(), SourceError> {
        tracing::info!(table = %self.table, "creating the lease table");
        aws::dynamodb::create_table(
            &self.client,
            &self.table,
            &[("leaseKey", ScalarAttributeType::S)],
        )
        .await
        .map_err(SourceError::Checkpoint)
    }

    /// Creates the lease of a shard nobody has a lease for yet, unowned, with counter 0 and its
    /// starting placeholder; answers false when it exists already.
    pub async fn create(
        &self,
        shard: &str,
        parents: &[String],
        initial: Initial,
    ) -> Result<bool, SourceError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("leaseKey", s(shard))
            .item("leaseCounter", n(0))
            .item("checkpoint", s(initial.as_stored()))
            .item("checkpointSubSequenceNumber", n(0))
            .item("ownerSwitchesSinceCheckpoint", n(0))
            .item("streamName", s(&self.stream))
            .condition_expression("attribute_not_exists(leaseKey)");
        if let Initial::AtTimestamp(Some(at)) = initial {
            put = put.item(item::START_AT, n(at));
        }
        if !parents.is_empty() {
            put = put.item("parentShardId", AttributeValue::Ss(parents.to_vec()));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if aws::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(failed(
                &format!("creating the lease of shard {shard}"),
                aws::describe_error(&e),
            )),
        }
    }

    /// Deletes a finished shard's lease (its children have checkpoints of their own).
    pub async fn delete_finished(&self, shard: &str) -> Result<(), SourceError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("leaseKey", s(shard))
            .condition_expression("checkpoint = :end")
            .expression_attribute_values(":end", s(Checkpoint::SHARD_END))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if aws::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(failed(
                &format!("deleting the finished lease of shard {shard}"),
                aws::describe_error(&e),
            )),
        }
    }

    /// Applies `writes`, each on its own condition; answers, in order, the new counter of each
    /// write that took effect and `None` for each whose lease changed hands (or counter) since.
    pub async fn write(&self, writes: &[LeaseWrite]) -> Result<Vec<Option<i64>>, SourceError> {
        let expires = now_ms() + self.duration.as_millis() as i64;
        let mut answers = vec![None; writes.len()];
        for (chunk_index, chunk) in writes.chunks(MAX_TRANSACT_ITEMS).enumerate() {
            let offset = chunk_index * MAX_TRANSACT_ITEMS;
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            // Each round either applies every pending write or drops at least one refused one.
            while !pending.is_empty() {
                let items = pending
                    .iter()
                    .map(|&i| {
                        let update = item::update(&self.table, &self.owner, &chunk[i], expires);
                        TransactWriteItem::builder().update(update).build()
                    })
                    .collect();
                let call = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .send()
                    .await;
                match call {
                    Ok(_) => {
                        for &i in &pending {
                            answers[offset + i] = Some(chunk[i].counter + 1);
                        }
                        break;
                    }
                    Err(e) if aws::error_code(&e) == Some("TransactionCanceledException") => {
                        let reasons = match e.as_service_error() {
                            Some(TransactWriteItemsError::TransactionCanceledException(t)) => {
                                t.cancellation_reasons().to_vec()
                            }
                            _ => Vec::new(),
                        };
                        let refused = refused(&reasons, pending.len());
                        if refused.is_empty() {
                            return Err(failed(
                                "writing leases",
                                format!("transaction cancelled: {}", aws::describe_error(&e)),
                            ));
                        }
                        pending = pending
                            .into_iter()
                            .enumerate()
                            .filter(|(slot, _)| !refused.contains(slot))
                            .map(|(_, i)| i)
                            .collect();
                    }
                    Err(e) => return Err(failed("writing leases", aws::describe_error(&e))),
                }
            }
        }
        // A write refused now may have been applied by an earlier attempt whose answer was
        // lost (a timeout): the item then shows it, as KCL checks after a failed renewal.
        for (write, answer) in writes.iter().zip(answers.iter_mut()) {
            if answer.is_none() && self.applied(write).await? {
                *answer = Some(write.counter + 1);
            }
        }
        Ok(answers)
    }

    /// Whether the item shows `write` in effect: its counter one past the one seen, and this
    /// worker its owner (or, for a write that lets the lease go, nobody).
    async fn applied(&self, write: &LeaseWrite) -> Result<bool, SourceError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("leaseKey", s(&write.shard))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed("reading a lease back", aws::describe_error(&e)))?;
        let Some(lease) = out.item().and_then(read_lease) else {
            return Ok(false);
        };
        let owner_after = match write.kind {
            WriteKind::Finish(_) | WriteKind::Release(_) => None,
            _ => Some(self.owner.as_str()),
        };
        Ok(lease.counter == write.counter + 1 && lease.owner.as_deref() == owner_after)
    }
}

/// The slots of a cancelled transaction whose own condition failed. DynamoDB gives one reason
/// per item, in order (`None` for the items that would have passed).
fn refused(reasons: &[CancellationReason], items: usize) -> Vec<usize> {
    if reasons.len() != items {
        return Vec::new();
    }
    reasons
        .iter()
        .enumerate()
        .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
        .map(|(slot, _)| slot)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failed_conditions_are_refused() {
        let reason = |code: Option<&str>| {
            let mut b = CancellationReason::builder();
            if let Some(code) = code {
                b = b.code(code);
            }
            b.build()
        };
        let reasons = [
            reason(Some("None")),
            reason(Some("ConditionalCheckFailed")),
            reason(None),
        ];
        assert_eq!(refused(&reasons, 3), [1]);
        // Reasons that do not match the items say nothing certain.
        assert!(refused(&reasons, 2).is_empty());
    }
}
