//! `type = "kinesis"`: a polling consumer of a Kinesis data stream. One task per shard, parents
//! before children, checkpoints in a DynamoDB lease table written only for records the runtime
//! reports done.

mod leases;
mod shard;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use sluice_core::aws::{self, Connection, CountCalls, Retries};
use sluice_core::{
    BatchSettings, BuildContext, BuildError, SequenceNumber, Shutdown, Source, SourceBatch,
    SourceConfig, SourceError,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use leases::{LeaseTable, Wanted, SHARD_END};
use shard::{ReadEnd, ShardProgress, ShardReader};

/// Where a shard with no checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The oldest record kept (the default: a persist job must not miss what is in the stream).
    #[default]
    TrimHorizon,
    /// Only records put after the start.
    Latest,
    /// Records from `timestamp` on.
    AtTimestamp,
}

/// `start` resolved with its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtTimestamp(DateTime<Utc>),
}

fn default_limit() -> i32 {
    10_000
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(30)
}

/// Reads a Kinesis data stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// The stream's name or ARN.
    pub stream: String,
    /// Where a shard with no checkpoint starts: `trim_horizon` (default), `latest`, `at_timestamp`.
    #[serde(default)]
    pub start: Start,
    /// With `start = "at_timestamp"`: an RFC 3339 time.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    /// Records per GetRecords call, at most 10,000 (the default).
    #[serde(default = "default_limit")]
    pub limit: i32,
    /// How long a shard that is caught up waits before asking again (default 1s).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The DynamoDB lease and checkpoint table; default `<pipeline name>-checkpoints`, created
    /// when missing.
    #[serde(default)]
    pub checkpoint_table: Option<String>,
    /// How often checkpoints are stored and leases renewed (default 5s); also on stopping.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How long a lease lasts without renewal before another worker may take it (default 30s).
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// The region; default: the stream ARN's region, else the standard chain (`AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint (an emulator) for Kinesis; default: `AWS_ENDPOINT_URL`, else AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Another endpoint for the lease table's DynamoDB; default: as `endpoint_url`.
    #[serde(default)]
    pub checkpoint_endpoint_url: Option<String>,
}

impl KinesisSourceConfig {
    fn stream_name(&self) -> &str {
        aws::name_from_arn(&self.stream, "stream")
    }

    /// The stream's ARN, when it was given as one (API calls then name it by ARN).
    fn stream_arn(&self) -> Option<&str> {
        self.stream
            .starts_with("arn:")
            .then_some(self.stream.as_str())
    }

    fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or_else(|| aws::region_from_arn(&self.stream))
    }

    fn start_position(&self) -> Result<StartPosition, BuildError> {
        match (self.start, self.timestamp) {
            (Start::TrimHorizon, None) => Ok(StartPosition::TrimHorizon),
            (Start::Latest, None) => Ok(StartPosition::Latest),
            (Start::AtTimestamp, Some(t)) => Ok(StartPosition::AtTimestamp(t)),
            (Start::AtTimestamp, None) => Err(BuildError::invalid(
                "timestamp",
                "`start = \"at_timestamp\"` needs `timestamp`, e.g. timestamp = \"2026-11-24T00:00:00Z\"",
            )),
            (_, Some(_)) => Err(BuildError::invalid(
                "timestamp",
                "is only read with `start = \"at_timestamp\"`",
            )),
        }
    }
}

#[typetag::serde(name = "kinesis")]
#[async_trait]
impl SourceConfig for KinesisSourceConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        if self.stream_name().is_empty() {
            return Err(BuildError::invalid(
                "stream",
                "must name a stream or give its ARN",
            ));
        }
        if !(1..=10_000).contains(&self.limit) {
            return Err(BuildError::invalid(
                "limit",
                format!(
                    "must be between 1 and 10000 (Kinesis's limit), not {}",
                    self.limit
                ),
            ));
        }
        if self.lease_duration < self.checkpoint_interval * 3 {
            return Err(BuildError::invalid(
                "lease_duration",
                "must be at least three `checkpoint_interval`s, or leases lapse between renewals",
            ));
        }
        let start = self.start_position()?;
        let kinesis_sdk = aws::sdk_config(
            ctx,
            Connection {
                region: self.region(),
                endpoint_url: self.endpoint_url.as_deref(),
                retries: Retries::Sdk,
            },
        )
        .await?;
        let dynamodb_sdk = aws::sdk_config(
            ctx,
            Connection {
                region: self.region(),
                endpoint_url: self
                    .checkpoint_endpoint_url
                    .as_deref()
                    .or(self.endpoint_url.as_deref()),
                retries: Retries::Sdk,
            },
        )
        .await?;
        let kinesis = aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(&kinesis_sdk)
                .interceptor(CountCalls::new(ctx))
                .build(),
        );
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&dynamodb_sdk)
                .interceptor(CountCalls::new(ctx))
                .build(),
        );
        // Proves the stream exists and is reachable before anything runs.
        let mut describe = kinesis.describe_stream_summary();
        describe = match self.stream_arn() {
            Some(arn) => describe.stream_arn(arn),
            None => describe.stream_name(self.stream_name()),
        };
        describe.send().await.map_err(|e| {
            let hint = match aws::error_code(&e) {
                Some("ResourceNotFoundException") => {
                    " (create it, or check the stream name, region and endpoint)"
                }
                _ => "",
            };
            BuildError::Unavailable {
                what: format!("Kinesis stream `{}`", self.stream_name()),
                message: format!(
                    "DescribeStreamSummary failed: {}{hint}",
                    aws::describe_error(&e)
                ),
            }
        })?;
        let table = self
            .checkpoint_table
            .clone()
            .unwrap_or_else(|| format!("{}-checkpoints", ctx.pipeline));
        let owner = format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        );
        Ok(Box::new(KinesisSource {
            config: self.clone(),
            start,
            kinesis,
            leases: Arc::new(LeaseTable::new(
                dynamodb,
                table,
                self.stream_name().to_owned(),
                owner,
                self.lease_duration,
            )),
            until_caught_up: ctx.until_caught_up,
            shutdown: ctx.shutdown.clone(),
        }))
    }

    fn describe(&self) -> String {
        format!(
            "kinesis stream {} (checkpoints in {})",
            self.stream_name(),
            self.checkpoint_table
                .as_deref()
                .unwrap_or("<pipeline name>-checkpoints")
        )
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

struct KinesisSource {
    config: KinesisSourceConfig,
    start: StartPosition,
    kinesis: aws_sdk_kinesis::Client,
    leases: Arc<LeaseTable>,
    until_caught_up: bool,
    shutdown: Shutdown,
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone)]
struct ShardInfo {
    id: String,
    parents: Vec<String>,
    ending: Option<SequenceNumber>,
}

impl Source for KinesisSource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(e) = self.consume(settings, tx.clone()).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        ReceiverStream::new(rx).boxed()
    }
}

type Batches = mpsc::Sender<Result<SourceBatch, SourceError>>;

/// How long a daemon waits before starting a failed shard reader again.
const RESTART_DELAY: Duration = Duration::from_secs(5);

/// The shards this worker knows, which are finished, and the progress of those it holds.
#[derive(Default)]
struct Held {
    shards: Vec<ShardInfo>,
    finished: HashSet<String>,
    progress: HashMap<String, Arc<ShardProgress>>,
}

impl Held {
    /// A shard may be read once its parents are finished, or gone past the stream's retention.
    fn ready(&self, shard: &ShardInfo) -> bool {
        shard
            .parents
            .iter()
            .all(|p| self.finished.contains(p) || !self.shards.iter().any(|s| &s.id == p))
    }
}

impl KinesisSource {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut call = self.kinesis.list_shards();
            call = match &token {
                Some(t) => call.next_token(t),
                None => match self.config.stream_arn() {
                    Some(arn) => call.stream_arn(arn),
                    None => call.stream_name(self.config.stream_name()),
                },
            };
            let out = call.send().await.map_err(|e| {
                SourceError::Service(format!(
                    "ListShards for stream `{}` failed: {}",
                    self.config.stream_name(),
                    aws::describe_error(&e)
                ))
            })?;
            shards.extend(out.shards().iter().map(|s| {
                ShardInfo {
                    id: s.shard_id().to_owned(),
                    parents: s
                        .parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                    ending: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(SequenceNumber::new),
                }
            }));
            match out.next_token() {
                Some(t) => token = Some(t.to_owned()),
                None => return Ok(shards),
            }
        }
    }

    fn reader(
        &self,
        shard: &ShardInfo,
        progress: Arc<ShardProgress>,
        settings: BatchSettings,
        tx: &Batches,
    ) -> ShardReader {
        ShardReader {
            client: self.kinesis.clone(),
            stream_name: self.config.stream_name().to_owned(),
            stream_arn: self.config.stream_arn().map(str::to_owned),
            shard_id: shard.id.clone(),
            has_parents: !shard.parents.is_empty(),
            ending_sequence_number: shard.ending.clone(),
            start: self.start,
            limit: self.config.limit,
            poll_interval: self.config.poll_interval,
            max_records: settings.max_records,
            until_caught_up: self.until_caught_up,
            progress,
            shutdown: self.shutdown.clone(),
            batches: tx.clone(),
        }
    }

    /// Takes the leases of `new` shards (those not finished before) into `held`.
    async fn take(&self, new: Vec<ShardInfo>, held: &mut Held) -> Result<(), SourceError> {
        let stored = self.leases.scan().await?;
        self.leases.check_stream(&stored)?;
        let checkpoint = |id: &str| stored.get(id).and_then(|l| l.checkpoint.clone());
        let mut wanted = Vec::new();
        for shard in &new {
            if checkpoint(&shard.id).as_deref() == Some(SHARD_END) {
                held.finished.insert(shard.id.clone());
            } else {
                wanted.push(Wanted {
                    shard_id: shard.id.clone(),
                    parents: shard.parents.clone(),
                });
            }
        }
        let acquired = self.leases.acquire(&wanted, &stored).await?;
        for id in &acquired {
            let progress = Arc::new(ShardProgress::new(checkpoint(id)));
            held.progress.insert(id.clone(), progress);
        }
        held.shards.extend(new);
        // A child whose unfinished parent another worker holds could never be read here: let it
        // go, so the worker that finishes the parent can take it.
        let orphans: Vec<(String, Option<String>)> = acquired
            .iter()
            .filter(|id| {
                let shard = held.shards.iter().find(|s| &s.id == *id);
                shard.is_some_and(|s| {
                    s.parents.iter().any(|p| {
                        !held.finished.contains(p)
                            && !held.progress.contains_key(p)
                            && held.shards.iter().any(|known| &known.id == p)
                    })
                })
            })
            .map(|id| (id.clone(), None))
            .collect();
        if !orphans.is_empty() {
            for (id, _) in &orphans {
                held.progress.remove(id);
            }
            tracing::info!(
                shards = orphans.len(),
                "releasing child shards whose parents another worker holds"
            );
            self.leases.store(&orphans, true).await?;
        }
        Ok(())
    }

    /// After a shard ends (a split or a merge during the run), takes the shards it gave way to.
    async fn take_children(&self, held: &mut Held) -> Result<(), SourceError> {
        let listed = self.list_shards().await?;
        let new: Vec<ShardInfo> = listed
            .into_iter()
            .filter(|s| !held.shards.iter().any(|known| known.id == s.id))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.take(new, held).await
    }

    /// Takes the leases, reads the shards (parents first), stores checkpoints as they move and
    /// releases the leases at the end.
    async fn consume(&self, settings: BatchSettings, tx: Batches) -> Result<(), SourceError> {
        let mut held = Held::default();
        self.take(self.list_shards().await?, &mut held).await?;
        let mut readers = JoinSet::new();
        let mut started: HashSet<String> = HashSet::new();
        let mut errors = Vec::new();
        let mut ticker = tokio::time::interval(self.config.checkpoint_interval);
        ticker.reset();
        loop {
            for shard in &held.shards {
                if held.progress.contains_key(&shard.id)
                    && !started.contains(&shard.id)
                    && held.ready(shard)
                {
                    started.insert(shard.id.clone());
                    let reader =
                        self.reader(shard, held.progress[&shard.id].clone(), settings, &tx);
                    let id = shard.id.clone();
                    readers.spawn(async move { (id, reader.run().await) });
                }
            }
            if readers.is_empty() {
                break;
            }
            tokio::select! {
                joined = readers.join_next() => {
                    match joined.expect("the set is not empty") {
                        Ok((id, Ok(ReadEnd::Finished))) => {
                            tracing::info!(shard = %id, "shard read to its end");
                            held.finished.insert(id);
                            if let Err(e) = self.take_children(&mut held).await {
                                tracing::warn!(error = %e, "the shards after a split or merge could not be taken; a later run will");
                            }
                        }
                        Ok((id, Ok(end))) => tracing::debug!(shard = %id, ?end, "shard reader ended"),
                        Ok((id, Err(e))) if !self.until_caught_up && !self.shutdown.is_triggered() => {
                            // A daemon keeps every shard it holds read: start the reader again,
                            // from the checkpoint, once its batches in flight are done.
                            tracing::warn!(shard = %id, error = %e, "shard reader failed; restarting it in {RESTART_DELAY:?}");
                            let shard = held.shards.iter().find(|s| s.id == id).expect("a held shard").clone();
                            let progress = held.progress[&id].clone();
                            let reader = self.reader(&shard, progress.clone(), settings, &tx);
                            let shutdown = self.shutdown.clone();
                            readers.spawn(async move {
                                progress.settled().await;
                                tokio::select! {
                                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                                    _ = shutdown.triggered() => {}
                                }
                                (id, reader.run().await)
                            });
                        }
                        Ok((id, Err(e))) => {
                            tracing::error!(shard = %id, error = %e, "shard reader failed");
                            errors.push(e);
                        }
                        Err(e) => errors.push(SourceError::Service(format!("a shard reader failed: {e}"))),
                    }
                }
                _ = ticker.tick() => {
                    // Unstored checkpoints are kept and tried again at the next tick; the leases
                    // last three ticks, so one failed renewal loses nothing.
                    if let Err(e) = self.store(&held.progress, false).await {
                        tracing::warn!(error = %e, "checkpoints not stored; trying again at the next tick");
                    }
                }
            }
        }
        let waiting = held.progress.len() - started.len();
        if waiting > 0 {
            tracing::warn!(shards = waiting, "child shards not read: their parents are not finished (a failed record, or leased elsewhere)");
        }
        self.store(&held.progress, true).await?;
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stores moved checkpoints and renews the leases, or releases them (`release`).
    async fn store(
        &self,
        progress: &HashMap<String, Arc<ShardProgress>>,
        release: bool,
    ) -> Result<(), SourceError> {
        let changes: Vec<(String, Option<String>)> = progress
            .iter()
            .map(|(id, p)| (id.clone(), p.take_changed()))
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        match self.leases.store(&changes, release).await {
            Ok(lost) => {
                for shard in lost {
                    tracing::warn!(%shard, "lease lost to another worker; its checkpoint was not stored");
                }
                Ok(())
            }
            Err(e) => {
                for (id, cp) in &changes {
                    if cp.is_some() {
                        progress[id].mark_unstored();
                    }
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod emulator_tests;
