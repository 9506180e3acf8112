//! The reading loop of an `s3` source: list after the checkpoint, hand out each object's
//! records, wait until every batch is reported, checkpoint, and on failure read the rest again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sluice_core::aws;
use sluice_core::health::Health;
use sluice_core::{
    Acknowledge, Backoff, BatchReport, BatchSettings, Checkpoint, Encoding, Meta, Position,
    Shutdown, SourceBatch, SourceError,
};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::CheckpointStore;
use crate::document::{self, Documents};

/// Objects listed per ListObjectsV2 call (S3's most).
const PAGE: i32 = 1000;

/// The wait after a failed call or object, doubling up to three minutes.
const RETRY: Backoff = Backoff {
    initial: Duration::from_secs(2),
    max: Duration::from_secs(180),
};

/// What reading an object gave.
enum Read {
    /// The body, and its ETag (which content it is).
    Bytes(Bytes, Option<String>),
    Gone,
    /// It exists but can never be read (archived): dead-lettered, naming it.
    Unreadable(String),
}

/// An object as listed.
struct Listed {
    key: String,
    modified: Option<DateTime<Utc>>,
}

/// What became of an object's records.
enum Done {
    /// Every record is done; `stored` says whether a checkpoint may pass them (not in a dry run).
    Complete { stored: bool },
    /// A record failed, or a batch came back unprocessed, or a stop came before its end;
    /// `reached` is the last position done with every one before it, if any, in the content
    /// whose ETag is `etag`.
    Incomplete {
        reached: Option<Position>,
        etag: Option<String>,
    },
    /// Deleted since it was listed.
    Gone,
    /// The runtime stopped taking batches.
    Closed,
}

/// What one batch's acknowledgement says.
struct Acked {
    complete: bool,
    /// How far the object's records are done without a gap (`None` in a dry run).
    reached: Option<Position>,
}

/// Tells the reader what became of one batch; dropped unacknowledged, it says "not done".
struct ObjectAck {
    holding: u64,
    tx: oneshot::Sender<Acked>,
}

#[async_trait]
impl Acknowledge for ObjectAck {
    /// Each object is a holding of its own: its positions start again at 1.
    fn holding(&self) -> u64 {
        self.holding
    }

    async fn acknowledge(self: Box<Self>, report: &BatchReport) -> Result<(), SourceError> {
        let _ = self.tx.send(Acked {
            complete: report.is_complete(),
            reached: report.checkpoint().and_then(Checkpoint::position).cloned(),
        });
        Ok(())
    }
}

pub(super) struct Reader {
    pub(super) s3: aws_sdk_s3::Client,
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) documents: Option<Documents>,
    pub(super) store: CheckpointStore,
    pub(super) location: String,
    pub(super) poll_interval: Duration,
    pub(super) until_caught_up: bool,
    pub(super) shutdown: Shutdown,
    pub(super) health: Arc<Health>,
}

type Batches = mpsc::Sender<Result<SourceBatch, SourceError>>;

impl Reader {
    pub(super) async fn run(self, tx: Batches, settings: BatchSettings) {
        let mut after = match self.store.load().await {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        self.health.set_ready();
        tracing::info!(location = %self.location, after = ?after, "reading objects");
        let mut holding = 0u64;
        let mut failures = 0u32;
        // The object that failed, how far it is done, and since when it holds the reader.
        // (key, ETag, last position done): what of a failed object needs no second try.
        let mut resume: Option<(String, Option<String>, Position)> = None;
        let mut stuck_since: Option<Instant> = None;
        'listing: while !self.shutdown.is_triggered() {
            let page = match self.list(after.as_deref()).await {
                Ok(page) => page,
                Err(e) => {
                    if !self.retry_after(e, &tx, &mut failures).await {
                        return;
                    }
                    continue;
                }
            };
            if page.is_empty() {
                if self.until_caught_up {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.poll_interval) => continue,
                    _ = self.shutdown.triggered() => return,
                }
            }
            for object in page {
                if self.shutdown.is_triggered() {
                    return;
                }
                if object.key.ends_with('/') {
                    // A folder marker, not data.
                    after = Some(object.key);
                    continue;
                }
                holding += 1;
                let done_through = resume
                    .as_ref()
                    .filter(|(key, _, _)| *key == object.key)
                    .map(|(_, etag, p)| (etag.clone(), p.clone()));
                let done = self
                    .object(&object, holding, done_through, &tx, settings)
                    .await;
                match done {
                    Ok(Done::Complete { stored }) => {
                        failures = 0;
                        resume = None;
                        if stuck_since.take().is_some() {
                            self.health.shard_stuck(&self.location, None);
                        }
                        if stored {
                            if let Err(e) = self.store.save(&object.key).await {
                                if self.until_caught_up {
                                    // The run says so; the next one reads this object again.
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                                // The next object's checkpoint carries this one.
                                tracing::warn!(error = %e, object = %object.key, "checkpoint not stored");
                            }
                        }
                        after = Some(object.key);
                    }
                    Ok(Done::Incomplete { reached, etag }) => {
                        if self.until_caught_up || self.shutdown.is_triggered() {
                            // The run reports the failed records; the next run begins here.
                            return;
                        }
                        if let Some(reached) = reached {
                            resume = Some((object.key.clone(), etag, reached));
                        }
                        let since = *stuck_since.get_or_insert_with(Instant::now);
                        let reason = format!("object {} has records not done", object.key);
                        self.health
                            .shard_stuck(&self.location, Some((since, reason.as_str())));
                        failures += 1;
                        let wait = RETRY.delay(failures);
                        tracing::warn!(object = %object.key, retry_in = ?wait, "not every record of the object is done; reading the rest again");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => continue 'listing,
                            _ = self.shutdown.triggered() => return,
                        }
                    }
                    Ok(Done::Gone) => {
                        tracing::warn!(object = %object.key, "the object was deleted after it was listed; nothing to read");
                        resume = None;
                        if stuck_since.take().is_some() {
                            self.health.shard_stuck(&self.location, None);
                        }
                        after = Some(object.key);
                    }
                    Ok(Done::Closed) => return,
                    Err(e) => {
                        // An object that cannot be read (denied, a KMS key) holds the reader.
                        let since = *stuck_since.get_or_insert_with(Instant::now);
                        let reason = e.to_string();
                        self.health
                            .shard_stuck(&self.location, Some((since, reason.as_str())));
                        if !self.retry_after(e, &tx, &mut failures).await {
                            return;
                        }
                        continue 'listing;
                    }
                }
            }
        }
    }

    /// After a failed call: one pass ends with the error; a daemon waits and goes on (true).
    async fn retry_after(&self, e: SourceError, tx: &Batches, failures: &mut u32) -> bool {
        if self.until_caught_up {
            let _ = tx.send(Err(e)).await;
            return false;
        }
        *failures += 1;
        let wait = RETRY.delay(*failures);
        tracing::warn!(location = %self.location, error = %e, retry_in = ?wait, "S3 call failed; trying again");
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.triggered() => false,
        }
    }

    /// The next objects after `after`, in key order.
    async fn list(&self, after: Option<&str>) -> Result<Vec<Listed>, SourceError> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_start_after(after.map(str::to_owned))
            .max_keys(PAGE)
            .send()
            .await
            .map_err(|e| {
                SourceError::Format(format!(
                    "listing {}: {}",
                    self.location,
                    aws::describe_error(&e)
                ))
            })?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_owned(),
                    modified: o
                        .last_modified()
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                })
            })
            .collect())
    }

    /// The object's bytes and ETag; `Read::Gone` when it was deleted, `Read::Unreadable` when
    /// it never can be read.
    async fn read(&self, key: &str) -> Result<Read, SourceError> {
        let failed =
            |e: String| SourceError::Format(format!("reading s3://{}/{key}: {e}", self.bucket));
        let out = match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return match aws::error_code(&e) {
                    Some("NoSuchKey") => Ok(Read::Gone),
                    // Archived (Glacier): not readable until restored; no retry helps.
                    Some("InvalidObjectState") => Ok(Read::Unreadable(format!(
                        "s3://{}/{key} cannot be read: {}",
                        self.bucket,
                        aws::describe_error(&e)
                    ))),
                    _ => Err(failed(aws::describe_error(&e))),
                };
            }
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Read::Bytes(body.into_bytes(), out.e_tag))
    }

    /// Hands out the object's records batch by batch (after `done_through`'s position, when a
    /// first try got that far in content of the same ETag) and waits until each batch is
    /// reported.
    async fn object(
        &self,
        object: &Listed,
        holding: u64,
        done_through: Option<(Option<String>, Position)>,
        tx: &Batches,
        settings: BatchSettings,
    ) -> Result<Done, SourceError> {
        let base = Meta {
            source: "s3".into(),
            stream: self.bucket.clone(),
            shard_id: object.key.clone(),
            arrival_time: object.modified,
            ..Meta::default()
        };
        let (mut records, etag) = match self.read(&object.key).await? {
            Read::Gone => return Ok(Done::Gone),
            Read::Unreadable(reason) => {
                (vec![document::refused(Bytes::new(), reason, &base)], None)
            }
            Read::Bytes(body, etag) => match document::unpacked(&object.key, body.clone()) {
                Ok(data) => match &self.documents {
                    Some(documents) => (documents.split(data, &object.key, &base), etag),
                    None => (document::lines(&data, &base), etag),
                },
                Err(reason) => (vec![document::refused(body, reason, &base)], etag),
            },
        };
        // Only the same content goes on where it stopped: an object replaced in between is
        // read whole, and a record refused whole is never passed over.
        let done_through = done_through
            .filter(|(done_etag, _)| done_etag.is_some() && *done_etag == etag)
            .map(|(_, position)| position);
        if let Some(done) = &done_through {
            records.retain(|r| {
                matches!(r.encoding, Encoding::Refused(_)) || r.meta.position() > *done
            });
        }
        tracing::debug!(object = %object.key, records = records.len(), "object read");
        let mut acks = Vec::new();
        let mut handed_out_all = true;
        let mut chunks = sluice_core::owned_chunks(records, settings.max_records).peekable();
        while let Some(chunk) = chunks.next() {
            let (ack, acked) = oneshot::channel();
            let batch = SourceBatch {
                shard_id: self.location.clone(),
                records: chunk,
                ack: Some(Box::new(ObjectAck { holding, tx: ack })),
            };
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(Done::Closed);
            }
            acks.push(acked);
            if self.shutdown.is_triggered() && chunks.peek().is_some() {
                handed_out_all = false;
                break;
            }
        }
        let (mut complete, mut stored) = (handed_out_all, true);
        let mut reached = done_through;
        let mut gap = false;
        for acked in acks {
            match acked.await {
                Ok(a) => {
                    complete &= a.complete;
                    stored &= a.reached.is_some();
                    // The runtime moves an object's checkpoint only over records done without
                    // a gap, and not at all after a failure: the last one given is how far.
                    if a.reached.is_some() && !gap {
                        reached = a.reached;
                    }
                }
                Err(_) => {
                    // Never reported: nothing after it may count as done.
                    complete = false;
                    gap = true;
                }
            }
        }
        Ok(if complete {
            Done::Complete { stored }
        } else {
            Done::Incomplete { reached, etag }
        })
    }
}
