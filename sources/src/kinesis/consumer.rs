//! The consumer: takes the leases, starts one reader per held shard (parents before children),
//! stores checkpoints and renews leases every `checkpoint_interval`, follows splits and merges to
//! the shards they create, and releases the leases when it stops.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use sluice_core::aws;
use sluice_core::{
    BatchSettings, Checkpoint, SequenceNumber, Shutdown, Source, SourceBatch, SourceError,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::config::{KinesisSourceConfig, StartPosition};
use super::lease_table::{LeaseTable, LeaseUpdate, Wanted};
use super::progress::ShardProgress;
use super::reader::{ReadEnd, ReaderContext, ShardInfo, ShardReader};

/// A built Kinesis source: its clients and settings, nothing read yet.
pub struct KinesisSource {
    pub config: KinesisSourceConfig,
    pub start: StartPosition,
    pub kinesis: aws_sdk_kinesis::Client,
    pub leases: Arc<LeaseTable>,
    pub until_caught_up: bool,
    pub shutdown: Shutdown,
}

impl Source for KinesisSource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let (tx, rx) = mpsc::channel(4);
        let consumer = Consumer {
            readers: Arc::new(ReaderContext {
                client: self.kinesis,
                stream_name: self.config.stream_name().to_owned(),
                stream_arn: self.config.stream_arn().map(str::to_owned),
                start: self.start,
                limit: self.config.limit,
                poll_interval: self.config.poll_interval,
                max_records: settings.max_records,
                until_caught_up: self.until_caught_up,
                shutdown: self.shutdown,
                batches: tx.clone(),
            }),
            checkpoint_interval: self.config.checkpoint_interval,
            leases: self.leases,
        };
        tokio::spawn(async move {
            if let Err(e) = consumer.consume().await {
                let _ = tx.send(Err(e)).await;
            }
        });
        ReceiverStream::new(rx).boxed()
    }
}

/// The loop that owns this worker's shards.
struct Consumer {
    readers: Arc<ReaderContext>,
    checkpoint_interval: Duration,
    leases: Arc<LeaseTable>,
}

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

impl Consumer {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        let cx = &*self.readers;
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut call = cx.client.list_shards();
            call = match &token {
                Some(t) => call.next_token(t),
                None => match &cx.stream_arn {
                    Some(arn) => call.stream_arn(arn),
                    None => call.stream_name(&cx.stream_name),
                },
            };
            let out = call.send().await.map_err(|e| {
                SourceError::Service(format!(
                    "ListShards for stream `{}` failed: {}",
                    cx.stream_name,
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

    fn reader(&self, shard: &ShardInfo, progress: Arc<ShardProgress>) -> ShardReader {
        ShardReader {
            context: self.readers.clone(),
            shard: shard.clone(),
            progress,
        }
    }

    /// Takes the leases of `new` shards (those not finished before) into `held`.
    async fn take(&self, new: Vec<ShardInfo>, held: &mut Held) -> Result<(), SourceError> {
        let stored = self.leases.scan().await?;
        self.leases.check_stream(&stored)?;
        let checkpoint = |id: &str| stored.get(id).and_then(|l| l.checkpoint.clone());
        let mut wanted = Vec::new();
        for shard in &new {
            if checkpoint(&shard.id) == Some(Checkpoint::ShardEnd) {
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
        let orphans: Vec<(String, LeaseUpdate)> = acquired
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
            .map(|id| (id.clone(), LeaseUpdate::Release(None)))
            .collect();
        if !orphans.is_empty() {
            for (id, _) in &orphans {
                held.progress.remove(id);
            }
            tracing::info!(
                shards = orphans.len(),
                "releasing child shards whose parents another worker holds"
            );
            self.leases.update(&orphans).await?;
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
    async fn consume(&self) -> Result<(), SourceError> {
        let cx = &*self.readers;
        let mut held = Held::default();
        self.take(self.list_shards().await?, &mut held).await?;
        let mut readers = JoinSet::new();
        let mut started: HashSet<String> = HashSet::new();
        let mut errors = Vec::new();
        let mut ticker = tokio::time::interval(self.checkpoint_interval);
        ticker.reset();
        loop {
            for shard in &held.shards {
                if held.progress.contains_key(&shard.id)
                    && !started.contains(&shard.id)
                    && held.ready(shard)
                {
                    started.insert(shard.id.clone());
                    let reader = self.reader(shard, held.progress[&shard.id].clone());
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
                        Ok((id, Err(e))) if !cx.until_caught_up && !cx.shutdown.is_triggered() => {
                            // A daemon keeps every shard it holds read: start the reader again,
                            // from the checkpoint, once its batches in flight are done.
                            tracing::warn!(shard = %id, error = %e, "shard reader failed; restarting it in {RESTART_DELAY:?}");
                            let shard = held.shards.iter().find(|s| s.id == id).expect("a held shard").clone();
                            let progress = held.progress[&id].clone();
                            let reader = self.reader(&shard, progress.clone());
                            let shutdown = cx.shutdown.clone();
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
        let updates: Vec<(String, LeaseUpdate)> = progress
            .iter()
            .map(|(id, p)| {
                let moved = p.take_changed();
                let update = match (release, moved) {
                    (true, moved) => LeaseUpdate::Release(moved),
                    (false, Some(cp)) => LeaseUpdate::Checkpoint(cp),
                    (false, None) => LeaseUpdate::Renew,
                };
                (id.clone(), update)
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        match self.leases.update(&updates).await {
            Ok(lost) => {
                for shard in lost {
                    tracing::warn!(%shard, "lease lost to another worker; its checkpoint was not stored");
                }
                Ok(())
            }
            Err(e) => {
                for (id, update) in &updates {
                    if matches!(
                        update,
                        LeaseUpdate::Checkpoint(_) | LeaseUpdate::Release(Some(_))
                    ) {
                        progress[id].mark_unstored();
                    }
                }
                Err(e)
            }
        }
    }
}
