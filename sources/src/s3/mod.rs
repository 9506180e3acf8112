//! `type = "s3"`: the objects under a bucket's prefix, in key order, each read whole (gzip when
//! the key ends `.gz`) as JSON lines or as a JSON document with arrays of records. The last
//! object fully processed is the checkpoint; a daemon lists for new objects every
//! `poll_interval`, a run with `--until-caught-up` stops when none is left.
//!
//! Objects go one at a time: every batch of an object is acknowledged before the next object is
//! read, so the checkpoint names an object only when all its records are done. A record that
//! failed leaves the checkpoint before its object, and a daemon reads that object again (after
//! a backoff); one pass stops there, and the next run begins with it.

mod checkpoint;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::health::Health;
use sluice_core::{
    Acknowledge, Backoff, BatchReport, BatchSettings, BuildContext, BuildError, Checkpoint, Meta,
    Position, Shutdown, Source, SourceBatch, SourceConfig, SourceError,
};
use tokio::sync::{mpsc, oneshot};

use crate::document::{self, Documents, FileFormat};
use checkpoint::CheckpointStore;

fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}

/// Objects listed per ListObjectsV2 call (S3's most).
const PAGE: i32 = 1000;

/// The wait after a failed call or object, doubling up to three minutes.
const RETRY: Backoff = Backoff {
    initial: Duration::from_secs(2),
    max: Duration::from_secs(180),
};

/// Reads the objects under an S3 prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SourceConfig {
    /// The bucket.
    pub bucket: String,
    /// Only keys starting with this (default: every key); `feed/` for a folder.
    #[serde(default)]
    pub prefix: String,
    /// `jsonl` (the default: one record per line) or `json` (one document per object, with
    /// `records`).
    #[serde(default)]
    pub format: FileFormat,
    /// With `format = "json"`: the arrays whose elements are the records (as for `file`).
    #[serde(default)]
    pub records: Vec<String>,
    /// With `format = "json"`: top-level fields of the document each record carries.
    #[serde(default)]
    pub document_fields: BTreeMap<String, String>,
    /// How long a daemon waits, once every object is read, before listing again (default 10s).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The DynamoDB table of the checkpoint; default `<pipeline name>-checkpoints`, created when
    /// missing.
    #[serde(default)]
    pub checkpoint_table: Option<String>,
    /// The region (see [`sluice_core::aws`], connection settings).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint for S3, such as an emulator.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Another endpoint for the checkpoint table's DynamoDB; default: as `endpoint_url`.
    #[serde(default)]
    pub checkpoint_endpoint_url: Option<String>,
}

impl S3SourceConfig {
    fn documents(&self) -> Result<Option<Documents>, BuildError> {
        Documents::from_settings(self.format, &self.records, &self.document_fields)
    }

    /// The prefix as one name: the checkpoint's key, and the shard its batches belong to.
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

#[typetag::serde(name = "s3")]
#[async_trait]
impl SourceConfig for S3SourceConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.bucket.is_empty() {
            return Err(BuildError::invalid("bucket", "must name a bucket"));
        }
        if self.format == FileFormat::KinesisEvent {
            return Err(BuildError::invalid(
                "format",
                "an `s3` source reads `jsonl` or `json` objects",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(BuildError::invalid(
                "poll_interval",
                "must be more than zero, such as \"10s\"",
            ));
        }
        self.documents().map(drop)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        let connection = Connection {
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            retries: Retries::Sdk,
        };
        let s3: aws_sdk_s3::Client = aws::client(ctx, connection).await?;
        let dynamodb = aws::client(
            ctx,
            Connection {
                endpoint_url: self
                    .checkpoint_endpoint_url
                    .as_deref()
                    .or(self.endpoint_url.as_deref()),
                ..connection
            },
        )
        .await?;
        // Proves the bucket is there and readable before anything runs.
        aws::s3::check_bucket(&s3, &self.bucket, "`bucket`").await?;
        Ok(Box::new(S3Source {
            reader: Reader {
                s3,
                bucket: self.bucket.clone(),
                prefix: self.prefix.clone(),
                documents: self.documents()?,
                store: CheckpointStore {
                    client: dynamodb,
                    table: self
                        .checkpoint_table
                        .clone()
                        .unwrap_or_else(|| format!("{}-checkpoints", ctx.pipeline)),
                    // The pipeline too: two pipelines may share a table and read one prefix.
                    key: format!("{}:{}", ctx.pipeline, self.location()),
                },
                location: self.location(),
                poll_interval: self.poll_interval,
                until_caught_up: ctx.until_caught_up,
                shutdown: ctx.shutdown.clone(),
                health: ctx.health.clone(),
            },
        }))
    }

    fn describe(&self) -> String {
        let format = match self.format {
            FileFormat::Json => format!("JSON documents, records in {}", self.records.join(", ")),
            _ => "JSON lines".to_owned(),
        };
        format!(
            "s3 {} ({format}; checkpoint in {})",
            self.location(),
            self.checkpoint_table
                .as_deref()
                .unwrap_or("<pipeline name>-checkpoints")
        )
    }
}

struct S3Source {
    reader: Reader,
}

impl Source for S3Source {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        // A small queue: the runtime works through an object's batches as they come.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(self.reader.run(tx, settings));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// What reading an object gave.
enum Read {
    Bytes(Bytes),
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
    /// `reached` is the last position done with every one before it, if any.
    Incomplete { reached: Option<Position> },
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

struct Reader {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    documents: Option<Documents>,
    store: CheckpointStore,
    location: String,
    poll_interval: Duration,
    until_caught_up: bool,
    shutdown: Shutdown,
    health: Arc<Health>,
}

type Batches = mpsc::Sender<Result<SourceBatch, SourceError>>;

impl Reader {
    async fn run(self, tx: Batches, settings: BatchSettings) {
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
        let mut resume: Option<(String, Position)> = None;
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
                    .filter(|(key, _)| *key == object.key)
                    .map(|(_, p)| p.clone());
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
                    Ok(Done::Incomplete { reached }) => {
                        if self.until_caught_up || self.shutdown.is_triggered() {
                            // The run reports the failed records; the next run begins here.
                            return;
                        }
                        if let Some(reached) = reached {
                            resume = Some((object.key.clone(), reached));
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
                    }
                    Ok(Done::Closed) => return,
                    Err(e) => {
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

    /// The object's bytes; `Ok(None)` when it is gone, `Read::Unreadable` when it never can be.
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
        Ok(Read::Bytes(body.into_bytes()))
    }

    /// Hands out the object's records batch by batch (after `done_through`, when a first try
    /// got that far) and waits until each batch is reported.
    async fn object(
        &self,
        object: &Listed,
        holding: u64,
        done_through: Option<Position>,
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
        let mut records = match self.read(&object.key).await? {
            Read::Gone => return Ok(Done::Gone),
            Read::Unreadable(reason) => vec![document::refused(Bytes::new(), reason, &base)],
            Read::Bytes(body) => match document::unpacked(&object.key, body.clone()) {
                Ok(data) => match &self.documents {
                    Some(documents) => documents.split(data, &object.key, &base),
                    None => document::lines(&data, &base),
                },
                Err(reason) => vec![document::refused(body, reason, &base)],
            },
        };
        if let Some(done) = &done_through {
            records.retain(|r| r.meta.position() > *done);
        }
        tracing::debug!(object = %object.key, records = records.len(), "object read");
        let mut acks = Vec::new();
        let mut handed_out_all = true;
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<_> = records.by_ref().take(settings.max_records).collect();
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
            if self.shutdown.is_triggered() && records.peek().is_some() {
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
            Done::Incomplete { reached }
        })
    }
}

#[cfg(test)]
mod emulator_tests;
