//! Reading one shard: GetShardIterator, then GetRecords in a loop within Kinesis's per-shard
//! limits, handing records out in batches and learning from acknowledgements how far the
//! checkpoint may move.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use sluice_core::metrics::metrics;
use sluice_core::{
    owned_chunks, Encoding, Meta, Position, RawRecord, SequenceNumber, Shutdown, SourceBatch,
    SourceError,
};
use tokio::sync::mpsc;

mod feed;
mod pacing;

use super::budget::{Budget, Reserved, Window};
use super::config::StartPosition;
use super::lease_table::Initial;
use super::progress::ShardProgress;
use feed::{Fetch, Starting};
use pacing::{Healing, Pacer};

/// How a shard reader ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// Closed (split or merged) and every record done: its children may be read. With the
    /// children Kinesis named at its end (none where it names none, as moto).
    Finished(Vec<String>),
    /// Closed, but some record failed: children wait for a later run.
    Unfinished,
    /// Read to its current tip (`--until-caught-up`).
    CaughtUp,
    /// Shutdown asked for.
    Stopped,
    /// The lease went to another worker: nothing more is read here.
    Lost,
}

/// Where a reader asks for its shard iterator (or subscription).
#[derive(Debug, Clone)]
enum Resume {
    /// The shard's start position (no checkpoint, nothing read yet).
    Start,
    /// After the last record read (all of it handed out).
    After(SequenceNumber),
    /// At a record: the first one read when there is no checkpoint to resume after.
    At(SequenceNumber),
    /// Past the checkpoint: at its record, whose user records up to the checkpoint's
    /// sub-sequence are done (as KCL resumes: the checkpoint's record is read again, and what
    /// the checkpoint covers is dropped, so a run stopped inside a KPL aggregate goes on there).
    Past(Position),
}

impl Resume {
    /// What a reader resuming here has done already: records up to this position are dropped.
    fn done_through(&self) -> Option<Position> {
        match self {
            Resume::Past(done) => Some(done.clone()),
            _ => None,
        }
    }
}

/// What every shard reader of one consumer shares.
pub struct ReaderContext {
    /// The pipeline's name, for metrics.
    pub pipeline: String,
    pub client: aws_sdk_kinesis::Client,
    pub stream_name: String,
    pub stream_arn: Option<String>,
    pub start: StartPosition,
    pub limit: i32,
    /// Records read but not yet done, shared by every shard reader of the consumer.
    pub budget: Arc<Budget>,
    pub poll_interval: Duration,
    pub max_records: usize,
    pub until_caught_up: bool,
    /// With enhanced fan-out: the registered consumer records are pushed to.
    pub consumer_arn: Option<String>,
    pub shutdown: Shutdown,
    /// Where batches go; set when the source starts.
    pub batches: Option<mpsc::Sender<Result<SourceBatch, SourceError>>>,
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    pub id: String,
    pub parents: Vec<String>,
    /// The last sequence number of a closed shard.
    pub ending: Option<SequenceNumber>,
}

/// Reads one shard.
pub struct ShardReader {
    pub context: Arc<ReaderContext>,
    pub shard: ShardInfo,
    /// Where its lease says it starts while it has no checkpoint (KCL's placeholders).
    pub initial: Option<Initial>,
    pub progress: Arc<ShardProgress>,
}

impl ShardReader {
    /// Where `from` starts, as GetShardIterator and SubscribeToShard both take it.
    fn starting(&self, from: &Resume) -> Starting {
        let cx = &*self.context;
        // A child of a finished parent starts at its beginning, unless its lease says where.
        let has_parents = !self.shard.parents.is_empty() && self.initial.is_none();
        let start = match self.initial {
            None => cx.start,
            Some(Initial::TrimHorizon) => StartPosition::TrimHorizon,
            Some(Initial::Latest) => StartPosition::Latest,
            Some(Initial::AtTimestamp(Some(ms))) => {
                match chrono::DateTime::from_timestamp_millis(ms) {
                    Some(t) => StartPosition::AtTimestamp(t),
                    None => StartPosition::TrimHorizon,
                }
            }
            // KCL keeps the timestamp in its configuration, not in the table: ours, if given.
            Some(Initial::AtTimestamp(None)) => match cx.start {
                StartPosition::AtTimestamp(t) => StartPosition::AtTimestamp(t),
                _ => StartPosition::TrimHorizon,
            },
        };
        let at = |kind, seq: &SequenceNumber| Starting {
            kind,
            sequence: Some(seq.as_str().to_owned()),
            timestamp: None,
        };
        let plain = |kind| Starting {
            kind,
            sequence: None,
            timestamp: None,
        };
        match (from, has_parents, &start) {
            (Resume::After(seq), _, _) => at(ShardIteratorType::AfterSequenceNumber, seq),
            (Resume::At(seq), _, _) => at(ShardIteratorType::AtSequenceNumber, seq),
            (Resume::Past(done), _, _) => at(ShardIteratorType::AtSequenceNumber, &done.sequence),
            (Resume::Start, true, _) | (Resume::Start, false, StartPosition::TrimHorizon) => {
                plain(ShardIteratorType::TrimHorizon)
            }
            (Resume::Start, false, StartPosition::Latest) => plain(ShardIteratorType::Latest),
            (Resume::Start, false, StartPosition::AtTimestamp(t)) => Starting {
                kind: ShardIteratorType::AtTimestamp,
                sequence: None,
                timestamp: Some(aws_smithy_types::DateTime::from_millis(
                    t.timestamp_millis(),
                )),
            },
        }
    }

    /// Where to read again from: after the checkpoint; with none yet, at the first record this
    /// reader handed out (never the starting position again: `LATEST` would skip records).
    fn resume(&self, first_read: Option<&SequenceNumber>) -> Resume {
        let checkpoint = self.progress.checkpoint();
        match (checkpoint.as_ref().and_then(|c| c.position()), first_read) {
            (Some(p), _) => Resume::Past(p.clone()),
            (None, Some(first)) => Resume::At(first.clone()),
            (None, None) => Resume::Start,
        }
    }

    /// Reads the shard until it ends, is caught up (when asked), or shutdown. In a daemon, a
    /// record that fails makes the shard stop reading ahead, wait, and read again from its
    /// checkpoint, until the record is stored or dead-lettered.
    pub async fn run(self) -> Result<ReadEnd, SourceError> {
        let cx = &*self.context;
        let mut healing = Healing::new(self.progress.freezes());
        // The position of the last (user) record read, whether handed out or already done.
        let mut last_read: Option<Position> = None;
        let mut first_read: Option<SequenceNumber> = None;
        let from = self.resume(None);
        let mut done_through = from.done_through();
        let mut pacer = Pacer::default();
        let mut feed = self.open(&from, &mut pacer).await?;
        let mut window = Window::new(usize::try_from(cx.limit).unwrap_or(1));
        loop {
            if cx.shutdown.is_triggered() {
                self.progress.settled().await;
                return Ok(ReadEnd::Stopped);
            }
            if self.progress.is_lost() {
                self.progress.settled().await;
                return Ok(ReadEnd::Lost);
            }
            if !cx.until_caught_up && self.progress.freezes() > healing.rewound_for {
                self.progress.settled().await;
                metrics().rewind(&cx.pipeline, &self.shard.id);
                if healing
                    .wait(&self.shard.id, &self.progress, &cx.shutdown)
                    .await
                {
                    last_read = None;
                    let from = self.resume(first_read.as_ref());
                    done_through = from.done_through();
                    feed = self.open(&from, &mut pacer).await?;
                }
                continue;
            }
            healing.note_recovery(&self.shard.id, &self.progress);
            let fetched = match self.fetch(&mut feed, window.size(), &mut pacer).await? {
                Fetch::Got(fetched) => fetched,
                Fetch::Again => continue,
                Fetch::Expired => {
                    let from = match &last_read {
                        Some(read) => Resume::After(read.sequence.clone()),
                        None => self.resume(first_read.as_ref()),
                    };
                    done_through = from.done_through();
                    feed = self.open(&from, &mut pacer).await?;
                    continue;
                }
            };
            let millis_behind = fetched.millis_behind;
            let (closed, children, mut reserved) =
                (fetched.closed, fetched.children, fetched.reserved);
            let fetched = fetched.records;
            // The response's buffers become the records' own (no copy).
            let records: Vec<RawRecord> = fetched
                .into_iter()
                .map(|r| RawRecord {
                    meta: Meta {
                        source: "kinesis".into(),
                        stream: cx.stream_name.clone(),
                        shard_id: self.shard.id.clone(),
                        sequence_number: SequenceNumber::new(r.sequence_number),
                        partition_key: r.partition_key,
                        arrival_time: r
                            .approximate_arrival_timestamp
                            .and_then(|t| t.to_millis().ok())
                            .and_then(chrono::DateTime::from_timestamp_millis),
                        ..Meta::default()
                    },
                    data: Bytes::from(r.data.into_inner()),
                    encoding: Encoding::Raw,
                })
                .collect();
            window.observe(records.len(), reserved.len());
            reserved.keep(records.len());
            metrics().records_in_flight(&cx.pipeline, cx.budget.in_flight());
            let empty = records.is_empty();
            if let Some(r) = records.first() {
                first_read.get_or_insert_with(|| r.meta.sequence_number.clone());
            }
            if let Some(behind) = millis_behind {
                metrics().millis_behind(&cx.pipeline, &self.shard.id, behind);
            }
            // KPL aggregates become their user records; what the checkpoint covers is dropped.
            let records: Vec<RawRecord> = records
                .into_iter()
                .flat_map(RawRecord::deaggregated)
                .collect();
            if let Some(r) = records.last() {
                last_read = Some(r.meta.position());
            }
            let records: Vec<RawRecord> = records
                .into_iter()
                .filter(|r| done_through.as_ref().is_none_or(|d| r.meta.position() > *d))
                .collect();
            if !self.hand_out(records, reserved).await? {
                self.progress.settled().await;
                return Ok(ReadEnd::Lost);
            }
            // The shard's end, as the listing it was taken from shows it, or a later listing (a
            // subscription may not name a closed shard's children: kinesis-local's do not).
            let ending = self.shard.ending.clone().or_else(|| self.progress.ending());
            let past_end =
                matches!((&ending, &last_read), (Some(end), Some(read)) if read.sequence >= *end);
            let caught_up = empty && matches!(millis_behind, Some(0) | None);
            if closed || (empty && past_end) {
                // Closed: everything it will ever hold has been read.
                self.progress.settled().await;
                if !cx.until_caught_up && self.progress.freezes() > healing.rewound_for {
                    continue;
                }
                let last = last_read.clone().or_else(|| {
                    let checkpoint = self.progress.checkpoint();
                    checkpoint.as_ref().and_then(|c| c.position()).cloned()
                });
                return Ok(if self.progress.finish(last.as_ref()) {
                    ReadEnd::Finished(children)
                } else {
                    ReadEnd::Unfinished
                });
            }
            // An endpoint that does not report how far behind it is counts as caught up when empty.
            if caught_up {
                if cx.until_caught_up {
                    self.progress.settled().await;
                    return Ok(ReadEnd::CaughtUp);
                }
                // A subscription waits for Kinesis's next push by itself.
                if feed.is_polling() {
                    tokio::select! {
                        _ = tokio::time::sleep(cx.poll_interval) => {}
                        _ = cx.shutdown.triggered() => {}
                        _ = self.progress.lost() => {}
                    }
                }
            }
        }
    }

    /// Waits for `n` records of the process's budget (none for `n = 0`); `None` when stopping or
    /// the lease is lost meanwhile (the loop then ends the reader).
    async fn reserve(&self, n: usize) -> Option<Reserved> {
        if n == 0 {
            return Some(Reserved::default());
        }
        let cx = &*self.context;
        tokio::select! {
            reserved = cx.budget.reserve(n) => Some(reserved),
            _ = cx.shutdown.triggered() => None,
            _ = self.progress.lost() => None,
        }
    }

    /// Hands records out in batches, each holding its records' share of `reserved` until it is
    /// done; answers false (nothing handed out) once the lease is lost.
    async fn hand_out(
        &self,
        records: Vec<RawRecord>,
        mut reserved: Reserved,
    ) -> Result<bool, SourceError> {
        let batches = self
            .context
            .batches
            .as_ref()
            .expect("set when the source starts");
        let mut left = records.len();
        for batch in owned_chunks(records, self.context.max_records) {
            // A lease past its time waits for its renewal; a lost one ends the shard here.
            tokio::select! {
                current = self.progress.lease_current() => if !current {
                    return Ok(false);
                },
                // Stopping: what is not handed out is read again by the next holder.
                _ = self.context.shutdown.triggered() => return Ok(true),
            }
            let share = reserved.share(batch.len(), left);
            left -= batch.len();
            let batch = SourceBatch {
                shard_id: self.shard.id.clone(),
                ack: Some(self.progress.handed_out(batch[0].meta.position(), share)),
                records: batch,
            };
            if batches.send(Ok(batch)).await.is_err() {
                // The runtime stopped taking batches (the unsent batch's ack, dropped with it,
                // has counted it as failed).
                return Err(SourceError::Service("the pipeline stopped reading".into()));
            }
        }
        Ok(true)
    }
}
