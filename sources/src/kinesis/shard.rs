//! Reading one shard: GetShardIterator, then GetRecords in a loop within Kinesis's per-shard
//! limits, handing records out in batches and learning from acknowledgements how far the
//! checkpoint may move.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use sluice_core::aws;
use sluice_core::{
    Acknowledge, BatchReport, Encoding, Meta, RawRecord, SequenceNumber, Shutdown, SourceBatch,
    SourceError,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::leases::SHARD_END;
use super::StartPosition;

/// Kinesis allows five GetRecords calls per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// The longest backoff after throttling.
const MAX_THROTTLE_BACKOFF: Duration = Duration::from_secs(5);
/// Consecutive failed calls (after the SDK's own retries) before a shard reader gives up.
const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// What one shard has reached: its checkpoint, and whether it is finished or blocked.
#[derive(Debug, Default)]
pub struct ShardProgress {
    state: Mutex<ProgressState>,
    outstanding: AtomicUsize,
    acked: Notify,
}

#[derive(Debug, Default, Clone)]
struct ProgressState {
    checkpoint: Option<String>,
    dirty: bool,
    failed: bool,
}

impl ShardProgress {
    pub fn new(checkpoint: Option<String>) -> Self {
        Self {
            state: Mutex::new(ProgressState {
                checkpoint,
                ..ProgressState::default()
            }),
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state
            .lock()
            .expect("no panic while holding shard progress")
    }

    /// The checkpoint as stored or last acknowledged.
    pub fn checkpoint(&self) -> Option<String> {
        self.lock().checkpoint.clone()
    }

    /// The checkpoint if it moved since the last call (it is then considered stored).
    pub fn take_changed(&self) -> Option<String> {
        let mut state = self.lock();
        if !state.dirty {
            return None;
        }
        state.dirty = false;
        state.checkpoint.clone()
    }

    /// Puts back a checkpoint that could not be stored, so the next store tries again.
    pub fn mark_unstored(&self) {
        self.lock().dirty = true;
    }

    fn acknowledge(&self, report: &BatchReport) {
        let mut state = self.lock();
        // Never past a batch that failed or was abandoned earlier in this run.
        if let (false, Some(cp)) = (state.failed, &report.checkpoint) {
            state.checkpoint = Some(cp.as_str().to_owned());
            state.dirty = true;
        }
        state.failed |= !report.is_complete();
        drop(state);
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.acked.notify_waiters();
    }

    /// A batch that will never be acknowledged: the shard cannot finish in this run.
    fn abandon(&self) {
        self.lock().failed = true;
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.acked.notify_waiters();
    }

    /// Waits until every batch handed out has been acknowledged.
    pub async fn settled(&self) {
        loop {
            let acked = self.acked.notified();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            acked.await;
        }
    }

    /// After the last record of a closed shard: finished when every record up to `last` is done.
    fn finish(&self, last: Option<&SequenceNumber>) -> bool {
        let mut state = self.lock();
        let all_done = !state.failed
            && match last {
                None => true,
                Some(last) => state.checkpoint.as_deref() == Some(last.as_str()),
            };
        if all_done {
            state.checkpoint = Some(SHARD_END.to_owned());
            state.dirty = true;
        }
        all_done
    }
}

/// Tells a shard's progress how a batch ended. Dropped unacknowledged (its worker panicked, the
/// runtime stopped), it counts the batch as failed, so nothing waits for it and no checkpoint
/// passes it.
struct ShardAck(Option<Arc<ShardProgress>>);

#[async_trait]
impl Acknowledge for ShardAck {
    async fn acknowledge(mut self: Box<Self>, report: &BatchReport) -> Result<(), SourceError> {
        if let Some(progress) = self.0.take() {
            progress.acknowledge(report);
        }
        Ok(())
    }
}

impl Drop for ShardAck {
    fn drop(&mut self) {
        if let Some(progress) = self.0.take() {
            progress.abandon();
        }
    }
}

/// How a shard reader ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// Closed (split or merged) and every record done: its children may be read.
    Finished,
    /// Closed, but some record failed: children wait for a later run.
    Unfinished,
    /// Read to its current tip (`--until-caught-up`).
    CaughtUp,
    /// Shutdown asked for.
    Stopped,
}

/// Everything a shard reader needs.
pub struct ShardReader {
    pub client: aws_sdk_kinesis::Client,
    pub stream_name: String,
    pub stream_arn: Option<String>,
    pub shard_id: String,
    pub has_parents: bool,
    pub ending_sequence_number: Option<SequenceNumber>,
    pub start: StartPosition,
    pub limit: i32,
    pub poll_interval: Duration,
    pub max_records: usize,
    pub until_caught_up: bool,
    pub progress: Arc<ShardProgress>,
    pub shutdown: Shutdown,
    pub batches: mpsc::Sender<Result<SourceBatch, SourceError>>,
}

impl ShardReader {
    async fn iterator(&self, after: Option<&str>) -> Result<String, SourceError> {
        let mut call = self.client.get_shard_iterator().shard_id(&self.shard_id);
        call = match &self.stream_arn {
            Some(arn) => call.stream_arn(arn),
            None => call.stream_name(&self.stream_name),
        };
        call = match (after, self.has_parents, &self.start) {
            (Some(seq), _, _) => call
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            // A child of a finished parent starts at its beginning, whatever `start` says.
            (None, true, _) | (None, false, StartPosition::TrimHorizon) => {
                call.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            (None, false, StartPosition::Latest) => {
                call.shard_iterator_type(ShardIteratorType::Latest)
            }
            (None, false, StartPosition::AtTimestamp(t)) => call
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_smithy_types::DateTime::from_millis(
                    t.timestamp_millis(),
                )),
        };
        let out = call.send().await.map_err(|e| {
            SourceError::Service(format!(
                "GetShardIterator for shard {} failed: {}",
                self.shard_id,
                aws::describe_error(&e)
            ))
        })?;
        out.shard_iterator().map(str::to_owned).ok_or_else(|| {
            SourceError::Service(format!("no shard iterator for shard {}", self.shard_id))
        })
    }

    /// Reads the shard until it ends, is caught up (when asked), or shutdown.
    pub async fn run(self) -> Result<ReadEnd, SourceError> {
        let checkpoint = self.progress.checkpoint();
        let mut last_read: Option<SequenceNumber> = None;
        let mut iterator = Some(self.iterator(checkpoint.as_deref()).await?);
        let mut last_call: Option<Instant> = None;
        let mut throttled = 0u32;
        let mut failures = 0u32;
        while let Some(it) = iterator.take() {
            if self.shutdown.is_triggered() {
                self.progress.settled().await;
                return Ok(ReadEnd::Stopped);
            }
            if let Some(at) = last_call {
                tokio::time::sleep_until(at + MIN_CALL_SPACING).await;
            }
            last_call = Some(Instant::now());
            let out = match self
                .client
                .get_records()
                .shard_iterator(&it)
                .limit(self.limit)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let code = aws::error_code(&e).map(str::to_owned);
                    if code.as_deref() == Some("ExpiredIteratorException") {
                        let after = last_read
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .or(checkpoint.clone());
                        iterator = Some(self.iterator(after.as_deref()).await?);
                        continue;
                    }
                    if aws::is_retryable(&e) {
                        failures += 1;
                        if failures > MAX_CONSECUTIVE_FAILURES {
                            return Err(SourceError::Service(format!(
                                "GetRecords on shard {} kept failing: {}",
                                self.shard_id,
                                aws::describe_error(&e)
                            )));
                        }
                        throttled += 1;
                        let ceiling = (MIN_CALL_SPACING * 2u32.saturating_pow(throttled))
                            .min(MAX_THROTTLE_BACKOFF);
                        let wait = ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0);
                        tracing::debug!(shard = %self.shard_id, ?wait, error = %aws::describe_error(&e), "GetRecords backing off");
                        tokio::time::sleep(wait).await;
                        iterator = Some(it);
                        continue;
                    }
                    return Err(SourceError::Service(format!(
                        "GetRecords on shard {} failed: {}",
                        self.shard_id,
                        aws::describe_error(&e)
                    )));
                }
            };
            throttled = 0;
            failures = 0;
            let records: Vec<RawRecord> = out
                .records()
                .iter()
                .map(|r| RawRecord {
                    data: Bytes::copy_from_slice(r.data().as_ref()),
                    encoding: Encoding::Raw,
                    meta: Meta {
                        source: "kinesis".into(),
                        stream: self.stream_name.clone(),
                        shard_id: self.shard_id.clone(),
                        sequence_number: SequenceNumber::new(r.sequence_number()),
                        partition_key: r.partition_key().map(str::to_owned),
                        arrival_time: r
                            .approximate_arrival_timestamp()
                            .and_then(|t| t.to_millis().ok())
                            .and_then(chrono::DateTime::from_timestamp_millis),
                        ..Meta::default()
                    },
                })
                .collect();
            let empty = records.is_empty();
            if let Some(r) = records.last() {
                last_read = Some(r.meta.sequence_number.clone());
            }
            self.hand_out(records).await?;
            iterator = out.next_shard_iterator().map(str::to_owned);
            let past_end = matches!((&self.ending_sequence_number, &last_read), (Some(end), Some(read)) if read >= end);
            if iterator.is_none() || (empty && past_end) {
                // Closed: everything it will ever hold has been read.
                self.progress.settled().await;
                let last = last_read.clone().or_else(|| checkpoint_seq(&checkpoint));
                let done = self.progress.finish(last.as_ref());
                return Ok(if done {
                    ReadEnd::Finished
                } else {
                    ReadEnd::Unfinished
                });
            }
            // An endpoint that does not report how far behind it is counts as caught up when empty.
            if empty && matches!(out.millis_behind_latest(), Some(0) | None) {
                if self.until_caught_up {
                    self.progress.settled().await;
                    return Ok(ReadEnd::CaughtUp);
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    _ = self.shutdown.triggered() => {}
                }
            }
        }
        unreachable!("the loop only ends by returning")
    }

    async fn hand_out(&self, records: Vec<RawRecord>) -> Result<(), SourceError> {
        let mut rest = records;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.max_records));
            let batch = std::mem::replace(&mut rest, tail);
            self.progress.outstanding.fetch_add(1, Ordering::AcqRel);
            let batch = SourceBatch {
                shard_id: self.shard_id.clone(),
                records: batch,
                ack: Some(Box::new(ShardAck(Some(self.progress.clone())))),
            };
            if self.batches.send(Ok(batch)).await.is_err() {
                // The runtime stopped taking batches (the unsent batch's ack, dropped with it,
                // has counted it as failed).
                return Err(SourceError::Service("the pipeline stopped reading".into()));
            }
        }
        Ok(())
    }
}

fn checkpoint_seq(checkpoint: &Option<String>) -> Option<SequenceNumber> {
    checkpoint
        .as_deref()
        .filter(|c| *c != SHARD_END)
        .map(SequenceNumber::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Outcome;

    fn report(seqs: &[(u64, bool)]) -> BatchReport {
        let outcomes = seqs
            .iter()
            .map(|(seq, ok)| {
                let outcome = if *ok {
                    Outcome::Stored
                } else {
                    Outcome::Failed { error: "x".into() }
                };
                (SequenceNumber::from(*seq), outcome)
            })
            .collect();
        BatchReport::new("s".into(), outcomes)
    }

    #[tokio::test]
    async fn a_dropped_ack_counts_as_failed_so_nothing_waits_and_no_checkpoint_passes_it() {
        let progress = Arc::new(ShardProgress::new(Some("1".into())));
        progress.outstanding.store(2, Ordering::Release);
        drop(ShardAck(Some(progress.clone())));
        Box::new(ShardAck(Some(progress.clone())))
            .acknowledge(&report(&[(5, true), (6, true)]))
            .await
            .unwrap();
        // Both batches are accounted for: settling does not hang.
        tokio::time::timeout(std::time::Duration::from_secs(1), progress.settled())
            .await
            .expect("settled");
        assert_eq!(
            progress.checkpoint().as_deref(),
            Some("1"),
            "not past the lost batch"
        );
        assert!(
            !progress.finish(Some(&SequenceNumber::from(6))),
            "the shard is not finished"
        );
    }

    #[tokio::test]
    async fn the_checkpoint_follows_acks_and_the_shard_finishes_when_all_is_done() {
        let progress = Arc::new(ShardProgress::new(None));
        progress.outstanding.store(1, Ordering::Release);
        Box::new(ShardAck(Some(progress.clone())))
            .acknowledge(&report(&[(1, true), (2, true)]))
            .await
            .unwrap();
        assert_eq!(progress.take_changed().as_deref(), Some("2"));
        assert_eq!(progress.take_changed(), None, "unchanged since");
        assert!(progress.finish(Some(&SequenceNumber::from(2))));
        assert_eq!(progress.checkpoint().as_deref(), Some(SHARD_END));
    }
}
