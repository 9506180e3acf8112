//! The lease table: one DynamoDB item per shard, keyed like the Kinesis Client Library's
//! (`leaseKey` = shard id, `checkpoint` = sequence number or `SHARD_END` with
//! `checkpointSubSequenceNumber`, `leaseOwner`, `leaseCounter`, `parentShardIds`), plus sluice's
//! `leaseExpiresAt` (epoch milliseconds).
//!
//! A worker takes every free lease in one transaction, renews them together with its
//! checkpoints, and releases them when it stops, so the next run can take them at once.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType, TransactWriteItem, Update};
use sluice_core::aws;
use sluice_core::{Checkpoint, SourceError};
/// TransactWriteItems' limit on items per call.
const MAX_TRANSACT_ITEMS: usize = 100;

/// One shard's lease as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lease {
    /// The last checkpoint stored.
    pub checkpoint: Option<Checkpoint>,
    /// Who holds it, if anyone.
    pub owner: Option<String>,
    /// Bumped on every take and renewal.
    pub counter: i64,
    /// When the holder's claim lapses, in epoch milliseconds.
    pub expires_at: i64,
    /// The stream the shard belongs to (sluice's `streamName`; KCL tables lack it).
    pub stream: Option<String>,
}

/// A shard to take, with its parents (stored in `parentShardIds`).
#[derive(Debug, Clone)]
pub struct Wanted {
    pub shard_id: String,
    pub parents: Vec<String>,
}

/// A write to a lease this worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseUpdate {
    /// Keep holding it.
    Renew,
    /// Keep holding it and store how far the shard is done.
    Checkpoint(Checkpoint),
    /// Let it go (storing a last checkpoint, if it moved), so another worker can take it at once.
    Release(Option<Checkpoint>),
}

/// The lease table of one stream's consumer.
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

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
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

    /// Fails when the table holds another stream's leases: shard ids repeat across streams, so
    /// their checkpoints would skip or repeat this stream's records.
    pub fn check_stream(&self, leases: &HashMap<String, Lease>) -> Result<(), SourceError> {
        match leases
            .values()
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

    /// Every stored lease, by shard id; creates the table (and answers none) when it is missing.
    pub async fn scan(&self) -> Result<HashMap<String, Lease>, SourceError> {
        let mut leases = HashMap::new();
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
                    self.create().await?;
                    return Ok(HashMap::new());
                }
                Err(e) => {
                    return Err(failed(
                        &format!("reading lease table `{}`", self.table),
                        aws::describe_error(&e),
                    ))
                }
            };
            for item in page.items() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                let number = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                if let Some(shard) = text("leaseKey") {
                    let sub_sequence = number("checkpointSubSequenceNumber").max(0) as u64;
                    leases.insert(
                        shard,
                        Lease {
                            checkpoint: text("checkpoint")
                                .map(|cp| Checkpoint::parse(&cp, sub_sequence)),
                            owner: text("leaseOwner"),
                            counter: number("leaseCounter"),
                            expires_at: number("leaseExpiresAt"),
                            stream: text("streamName"),
                        },
                    );
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    async fn create(&self) -> Result<(), SourceError> {
        tracing::info!(table = %self.table, "creating the lease table");
        aws::dynamodb::create_table(
            &self.client,
            &self.table,
            &[("leaseKey", ScalarAttributeType::S)],
        )
        .await
        .map_err(SourceError::Checkpoint)
    }

    /// Takes the free (or lapsed, or own) leases among `wanted`; answers the shards taken.
    /// All in one transaction when possible, else one by one (some are held by others).
    pub async fn acquire(
        &self,
        wanted: &[Wanted],
        known: &HashMap<String, Lease>,
    ) -> Result<Vec<String>, SourceError> {
        let now = now_ms();
        let takeable: Vec<(&Wanted, Update)> = wanted
            .iter()
            .filter(|w| match known.get(&w.shard_id) {
                Some(l) => {
                    l.owner.is_none()
                        || l.owner.as_deref() == Some(&self.owner)
                        || l.expires_at < now
                }
                None => true,
            })
            .map(|w| (w, self.take(w, known.get(&w.shard_id), now)))
            .collect();
        let updates: Vec<(&String, Update)> = takeable
            .into_iter()
            .map(|(w, u)| (&w.shard_id, u))
            .collect();
        let refused = self.transact(&updates, "taking leases").await?;
        let taken: Vec<String> = updates
            .iter()
            .map(|(shard, _)| (*shard).clone())
            .filter(|shard| !refused.contains(shard))
            .collect();
        let skipped = wanted.len() - taken.len();
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "some shards are leased by other workers; they are not read here"
            );
        }
        Ok(taken)
    }

    /// The update that takes one lease, on condition nobody took it since it was read.
    fn take(&self, wanted: &Wanted, seen: Option<&Lease>, now: i64) -> Update {
        let mut expression =
            "SET leaseOwner = :me, leaseCounter = if_not_exists(leaseCounter, :zero) + :one, leaseExpiresAt = :expires, streamName = :stream".to_owned();
        let mut values = HashMap::from([
            (":me".to_owned(), s(&self.owner)),
            (":stream".to_owned(), s(&self.stream)),
            (":zero".to_owned(), n(0)),
            (":one".to_owned(), n(1)),
            (
                ":expires".to_owned(),
                n(now + self.duration.as_millis() as i64),
            ),
        ]);
        if !wanted.parents.is_empty() {
            expression.push_str(", parentShardIds = :parents");
            values.insert(
                ":parents".into(),
                AttributeValue::Ss(wanted.parents.clone()),
            );
        }
        let condition = match seen {
            None => "attribute_not_exists(leaseKey)".to_owned(),
            Some(lease) => {
                values.insert(":seen".into(), n(lease.counter));
                "leaseCounter = :seen".to_owned()
            }
        };
        Update::builder()
            .table_name(&self.table)
            .key("leaseKey", s(&wanted.shard_id))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("table, key and expression are set")
    }

    /// Writes leases this worker holds, each on condition it still holds it. Answers the shards
    /// whose lease was lost (taken by another worker after it lapsed).
    pub async fn update(
        &self,
        updates: &[(String, LeaseUpdate)],
    ) -> Result<Vec<String>, SourceError> {
        let expires = now_ms() + self.duration.as_millis() as i64;
        let updates: Vec<(&String, Update)> = updates
            .iter()
            .map(|(shard, update)| (shard, self.write(shard, update, expires)))
            .collect();
        self.transact(&updates, "storing checkpoints").await
    }

    /// The conditional write of one update.
    fn write(&self, shard: &str, update: &LeaseUpdate, expires: i64) -> Update {
        let mut set = vec!["leaseCounter = leaseCounter + :one"];
        let mut values = HashMap::from([
            (":me".to_owned(), s(&self.owner)),
            (":one".to_owned(), n(1)),
        ]);
        let (checkpoint, release) = match update {
            LeaseUpdate::Renew => (None, false),
            LeaseUpdate::Checkpoint(cp) => (Some(cp), false),
            LeaseUpdate::Release(cp) => (cp.as_ref(), true),
        };
        if let Some(cp) = checkpoint {
            set.push("checkpoint = :cp");
            set.push("checkpointSubSequenceNumber = :sub");
            values.insert(":cp".into(), s(cp.as_stored()));
            values.insert(":sub".into(), n(cp.sub_sequence() as i64));
        }
        let expression = if release {
            format!("SET {} REMOVE leaseOwner, leaseExpiresAt", set.join(", "))
        } else {
            set.push("leaseExpiresAt = :expires");
            values.insert(":expires".into(), n(expires));
            format!("SET {}", set.join(", "))
        };
        Update::builder()
            .table_name(&self.table)
            .key("leaseKey", s(shard))
            .update_expression(expression)
            .condition_expression("leaseOwner = :me")
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("table, key and expression are set")
    }

    /// Applies conditional updates, up to 100 per transaction; when a transaction is cancelled
    /// (some condition failed), one by one. Answers the shards whose condition failed.
    async fn transact(
        &self,
        updates: &[(&String, Update)],
        what: &str,
    ) -> Result<Vec<String>, SourceError> {
        let mut refused = Vec::new();
        for chunk in updates.chunks(MAX_TRANSACT_ITEMS) {
            let items = chunk
                .iter()
                .map(|(_, u)| TransactWriteItem::builder().update(u.clone()).build())
                .collect();
            let call = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            match call {
                Ok(_) => {}
                Err(e) if aws::error_code(&e) == Some("TransactionCanceledException") => {
                    for (shard, update) in chunk {
                        if !self.update_one(update.clone()).await? {
                            refused.push((*shard).clone());
                        }
                    }
                }
                Err(e) => return Err(failed(what, aws::describe_error(&e))),
            }
        }
        Ok(refused)
    }

    /// One conditional update; `false` when its condition failed.
    async fn update_one(&self, update: Update) -> Result<bool, SourceError> {
        let mut call = self
            .client
            .update_item()
            .table_name(update.table_name())
            .set_key(Some(update.key().clone()))
            .update_expression(update.update_expression())
            .set_expression_attribute_values(update.expression_attribute_values().cloned());
        if let Some(condition) = update.condition_expression() {
            call = call.condition_expression(condition);
        }
        match call.send().await {
            Ok(_) => Ok(true),
            Err(e) if aws::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(failed("updating a lease", aws::describe_error(&e))),
        }
    }
}
