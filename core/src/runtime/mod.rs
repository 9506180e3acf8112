//! The runtime: a batch flows through decoding, the enrichers in order and the sink; what cannot be
//! stored goes to the error sink; every record ends with exactly one [`Outcome`].

mod ledger;
mod prepare;
mod retry;
mod run;
mod summary;

use std::sync::Arc;

use tokio::time::Instant;

pub use crate::outcome::Counts;
pub use summary::{Progress, RunSummary};

use crate::calls::ApiCalls;
use crate::component::{Enricher, Shutdown, Sink};
use crate::dead_letter::Reason;
use crate::error::SinkError;
use crate::metrics::metrics;
use crate::outcome::{BatchReport, ErrorKind, SkippedBy, Stage};
use crate::record::{RawRecord, Record};
use crate::settings::{BatchSettings, RetryPolicy};
use ledger::Ledger;
use prepare::Kept;
use retry::RetryRounds;

/// An enricher with the name it has in stages and summaries (`filter`, or `filter#2` for a second).
#[derive(Clone)]
pub struct NamedEnricher {
    /// The name.
    pub name: String,
    /// The enricher.
    pub enricher: Arc<dyn Enricher>,
}

/// A built pipeline: everything but the source, so a Lambda can hand it batches from its events.
#[derive(Clone)]
pub struct Pipeline {
    name: String,
    enrichers: Vec<NamedEnricher>,
    sink: Arc<dyn Sink>,
    error_sink: Arc<dyn Sink>,
    batch: BatchSettings,
    retry: RetryPolicy,
    api_calls: Arc<ApiCalls>,
    /// Triggered when a shard worker panics, so the source stops reading and lets go.
    stop: Shutdown,
    /// Records that arrived longer ago than this are dead-lettered as expired.
    max_record_age: Option<std::time::Duration>,
    /// Records tried again after a retryable failure, each retry counting (any stage).
    retried: Arc<std::sync::atomic::AtomicU64>,
}

impl Pipeline {
    /// Assembles a pipeline from built components.
    pub fn new(
        name: impl Into<String>,
        enrichers: Vec<NamedEnricher>,
        sink: Arc<dyn Sink>,
        error_sink: Arc<dyn Sink>,
        batch: BatchSettings,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            name: name.into(),
            enrichers,
            sink,
            error_sink,
            batch,
            retry,
            api_calls: Arc::default(),
            stop: Shutdown::default(),
            max_record_age: None,
            retried: Arc::default(),
        }
    }

    /// Records tried again after a retryable failure so far, each retry counting.
    pub fn records_retried(&self) -> u64 {
        self.retried.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Dead-letters (as `expired`) records that arrived longer ago than `age` when processed.
    pub fn with_max_record_age(mut self, age: Option<std::time::Duration>) -> Self {
        self.max_record_age = age;
        self
    }

    /// Stops the source through `stop` (the build context's) if a shard worker panics.
    pub fn with_stop(mut self, stop: Shutdown) -> Self {
        self.stop = stop;
        self
    }

    /// Counts calls into `calls` (the build context's counter, so components' calls show up).
    pub fn with_api_calls(mut self, calls: Arc<ApiCalls>) -> Self {
        self.api_calls = calls;
        self
    }

    /// The calls to outside services made so far by the pipeline's components.
    pub fn api_calls(&self) -> &Arc<ApiCalls> {
        &self.api_calls
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The batch settings sources are given.
    pub fn batch_settings(&self) -> BatchSettings {
        self.batch
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether the sink writes (it does not when switched off, e.g. `PERSIST_RECORDS=0`).
    pub fn sink_enabled(&self) -> bool {
        self.sink.enabled()
    }

    /// Processes one batch of one shard, retrying within the policy's time budget.
    pub async fn process_batch(&self, shard_id: String, raw: Vec<RawRecord>) -> BatchReport {
        let deadline = Instant::now() + self.retry.max_elapsed;
        self.process_batch_until(shard_id, raw, deadline).await
    }

    /// Processes one batch of one shard; no retry starts after `deadline` (a Lambda's budget).
    pub async fn process_batch_until(
        &self,
        shard_id: String,
        raw: Vec<RawRecord>,
        deadline: Instant,
    ) -> BatchReport {
        let positions = raw.iter().map(|r| r.meta.position()).collect();
        let mut ledger = Ledger::new(&self.name, self.retry.on_exhausted, raw.len());
        self.prepare_and_store(raw, deadline, &mut ledger).await;
        self.write_dead_letters(deadline, &mut ledger).await;
        ledger.into_report(shard_id, positions)
    }

    /// Writes `live` to the sink with retries and enters each record's outcome in `ledger`:
    /// `true` when the sink stored every record on its first attempt (or was switched off).
    async fn store(&self, live: Kept, deadline: Instant, ledger: &mut Ledger<'_>) -> bool {
        if live.records.is_empty() {
            return true;
        }
        if !self.sink.enabled() {
            for index in live.indices {
                ledger.skipped(index, SkippedBy::DisabledSink);
            }
            return true;
        }
        let Kept { indices, records } = live;
        debug_assert_eq!(
            indices.len(),
            records.len(),
            "each kept record has its number"
        );
        let (written, attempts) = self
            .write_with_retries(&*self.sink, &records, deadline, "sink")
            .await;
        let mut whole = attempts == 1;
        for ((index, record), written) in indices.into_iter().zip(&records).zip(written) {
            whole &= matches!(written, Written::Done);
            match written {
                Written::Done => ledger.stored(index),
                Written::Rejected { error, attempts } => {
                    let reason = Reason {
                        stage: Stage::Sink,
                        kind: ErrorKind::Permanent,
                        message: error,
                        attempts,
                    };
                    ledger.dead_letter(index, reason, &record.data, &record.meta)
                }
                Written::Exhausted { error, attempts } => {
                    ledger.exhausted(index, record, Stage::Sink, error, attempts)
                }
            }
        }
        whole
    }

    async fn write_dead_letters(&self, deadline: Instant, ledger: &mut Ledger<'_>) {
        let doomed = ledger.take_dead_letters();
        if doomed.is_empty() {
            return;
        }
        let (stages, letters): (Vec<(usize, Stage)>, Vec<Record>) = doomed
            .into_iter()
            .map(|(index, d)| ((index, d.stage.clone()), d.into_record()))
            .unzip();
        let (written, _) = self
            .write_with_retries(&*self.error_sink, &letters, deadline, "error sink")
            .await;
        for ((index, stage), written) in stages.into_iter().zip(written) {
            let result = match written {
                Written::Done => Ok(()),
                Written::Rejected { error, .. } | Written::Exhausted { error, .. } => Err(error),
            };
            ledger.dead_lettered(index, stage, result);
        }
    }
}

/// A sink's final answer for one record after retries.
enum Written {
    Done,
    Rejected { error: String, attempts: u32 },
    Exhausted { error: String, attempts: u32 },
}

impl Pipeline {
    /// Writes `records` to `sink`, retrying the retryable failures: one answer per record, in
    /// order, and the number of attempts made.
    async fn write_with_retries(
        &self,
        sink: &dyn Sink,
        records: &[Record],
        deadline: Instant,
        what: &'static str,
    ) -> (Vec<Written>, u32) {
        let policy = self.retry;
        let label = if what == "sink" { "sink" } else { "error_sink" };
        let mut written: Vec<Option<Written>> = (0..records.len()).map(|_| None).collect();
        let mut rounds = RetryRounds::new(policy, deadline, what, &self.retried);
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let exhausted = loop {
            // The first attempt writes the caller's slice; only retries copy what they resend.
            let started = std::time::Instant::now();
            let results = if pending.len() == records.len() {
                sink.write(records).await
            } else {
                let resend: Vec<Record> = pending.iter().map(|&i| records[i].clone()).collect();
                sink.write(&resend).await
            };
            metrics().sink_write(&self.name, label, started.elapsed());
            let mut failing = Vec::new();
            for (slot, &index) in pending.iter().enumerate() {
                let result = results.get(slot).cloned().unwrap_or_else(|| {
                    Err(SinkError::Retryable(format!(
                        "the {what} answered for {} of {} records",
                        results.len(),
                        pending.len()
                    )))
                });
                match result {
                    Ok(()) => written[index] = Some(Written::Done),
                    Err(SinkError::Permanent(error)) => {
                        written[index] = Some(Written::Rejected {
                            error,
                            attempts: rounds.attempt(),
                        })
                    }
                    Err(SinkError::Retryable(error)) => failing.push((index, error)),
                }
            }
            match rounds.retry(failing).await {
                Ok(again) => pending = again,
                Err(exhausted) => break exhausted,
            }
        };
        let attempts = rounds.attempt();
        for (index, error) in exhausted {
            written[index] = Some(Written::Exhausted { error, attempts });
        }
        let written = written
            .into_iter()
            .map(|w| w.expect("every record is answered before the retries end"))
            .collect();
        (written, attempts)
    }
}

#[cfg(test)]
mod tests;
