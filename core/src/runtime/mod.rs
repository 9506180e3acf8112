//! The runtime: a batch flows through decoding, the enrichers in order and the sink; what cannot be
//! stored goes to the error sink; every record ends with exactly one [`Outcome`].

mod report;
mod retry;
mod run;

use std::sync::Arc;

use tokio::time::Instant;

pub use report::{BatchReport, Counts, Outcome, Progress, RunSummary};

use crate::calls::ApiCalls;
use crate::component::{Enricher, Sink, Verdict};
use crate::dead_letter::{DeadLetter, Stage};
use crate::decode::decode;
use crate::error::SinkError;
use crate::record::{RawRecord, Record};
use crate::settings::{BatchSettings, OnExhausted, RetryPolicy};
use retry::Retrier;

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
}

/// A record given up on, waiting to be written to the error sink.
struct Doomed {
    index: usize,
    envelope: DeadLetter,
}

/// A stage's final answer for one record after retries.
enum Settled {
    Done,
    Rejected { error: String, attempts: u32 },
    Exhausted { error: String, attempts: u32 },
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
        }
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
        let positions: Vec<_> = raw.iter().map(|r| r.meta.sequence_number.clone()).collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; raw.len()];
        let mut doomed = Vec::new();
        let mut live = Vec::with_capacity(raw.len());

        for (index, raw) in raw.into_iter().enumerate() {
            match decode(raw) {
                Ok(record) => live.push((index, record)),
                Err(undecodable) => {
                    let (error, raw) = *undecodable;
                    doomed.push(Doomed {
                        index,
                        envelope: DeadLetter::new(
                            &self.name,
                            &Stage::Decode,
                            "decode",
                            error.to_string(),
                            1,
                            &raw.data,
                            &raw.meta,
                        ),
                    })
                }
            }
        }
        for enricher in &self.enrichers {
            live = self
                .enrich(enricher, live, deadline, &mut outcomes, &mut doomed)
                .await;
        }
        self.store(live, deadline, &mut outcomes, &mut doomed).await;
        self.dead_letter(doomed, deadline, &mut outcomes).await;

        let outcomes = positions
            .into_iter()
            .zip(outcomes)
            .map(|(seq, o)| {
                let o = o.unwrap_or_else(|| Outcome::Failed {
                    error: "internal: the record was given no outcome".into(),
                });
                (seq, o)
            })
            .collect();
        BatchReport::new(shard_id, outcomes)
    }

    async fn enrich(
        &self,
        named: &NamedEnricher,
        mut pending: Vec<(usize, Record)>,
        deadline: Instant,
        outcomes: &mut [Option<Outcome>],
        doomed: &mut Vec<Doomed>,
    ) -> Vec<(usize, Record)> {
        let stage = Stage::Enrich(named.name.clone());
        let mut kept = Vec::with_capacity(pending.len());
        let mut retrier = Retrier::new(self.retry, deadline);
        loop {
            let mut again = Vec::new();
            for (index, mut record) in pending {
                match named.enricher.enrich(&mut record).await {
                    Ok(Verdict::Keep) => kept.push((index, record)),
                    Ok(Verdict::Skip) => {
                        outcomes[index] = Some(Outcome::Skipped {
                            by: named.name.clone(),
                        })
                    }
                    Err(e) if e.is_retryable() => again.push((index, record, e)),
                    Err(e) => doomed.push(Doomed {
                        index,
                        envelope: DeadLetter::new(
                            &self.name,
                            &stage,
                            e.kind(),
                            e.to_string(),
                            retrier.attempts(),
                            &record.data,
                            &record.meta,
                        ),
                    }),
                }
            }
            if again.is_empty() {
                break;
            }
            if !retrier.wait_for_retry().await {
                for (index, record, e) in again {
                    self.exhausted(
                        index,
                        &record,
                        &stage,
                        e.to_string(),
                        retrier.attempts(),
                        outcomes,
                        doomed,
                    );
                }
                break;
            }
            tracing::debug!(enricher = %named.name, records = again.len(), attempt = retrier.attempts(), "retrying enrichment");
            pending = again.into_iter().map(|(i, r, _)| (i, r)).collect();
        }
        // Retried records rejoin in their original order.
        kept.sort_unstable_by_key(|(i, _)| *i);
        kept
    }

    async fn store(
        &self,
        live: Vec<(usize, Record)>,
        deadline: Instant,
        outcomes: &mut [Option<Outcome>],
        doomed: &mut Vec<Doomed>,
    ) {
        if live.is_empty() {
            return;
        }
        if !self.sink.enabled() {
            for (index, _) in live {
                outcomes[index] = Some(Outcome::Skipped {
                    by: "sink disabled".into(),
                });
            }
            return;
        }
        let (indices, records): (Vec<usize>, Vec<Record>) = live.into_iter().unzip();
        let settled = write_with_retries(&*self.sink, &records, self.retry, deadline, "sink").await;
        for ((index, record), settled) in indices.into_iter().zip(records).zip(settled) {
            match settled {
                Settled::Done => outcomes[index] = Some(Outcome::Stored),
                Settled::Rejected { error, attempts } => doomed.push(Doomed {
                    index,
                    envelope: DeadLetter::new(
                        &self.name,
                        &Stage::Sink,
                        "permanent",
                        error,
                        attempts,
                        &record.data,
                        &record.meta,
                    ),
                }),
                Settled::Exhausted { error, attempts } => self.exhausted(
                    index,
                    &record,
                    &Stage::Sink,
                    error,
                    attempts,
                    outcomes,
                    doomed,
                ),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn exhausted(
        &self,
        index: usize,
        record: &Record,
        stage: &Stage,
        error: String,
        attempts: u32,
        outcomes: &mut [Option<Outcome>],
        doomed: &mut Vec<Doomed>,
    ) {
        match self.retry.on_exhausted {
            OnExhausted::Fail => {
                outcomes[index] = Some(Outcome::Failed {
                    error: format!("{stage}: retries exhausted after {attempts} attempts: {error}"),
                })
            }
            OnExhausted::DeadLetter => doomed.push(Doomed {
                index,
                envelope: DeadLetter::new(
                    &self.name,
                    stage,
                    "retries_exhausted",
                    error,
                    attempts,
                    &record.data,
                    &record.meta,
                ),
            }),
        }
    }

    async fn dead_letter(
        &self,
        mut doomed: Vec<Doomed>,
        deadline: Instant,
        outcomes: &mut [Option<Outcome>],
    ) {
        if doomed.is_empty() {
            return;
        }
        // The error sink sees dead letters in source order, like the sink sees records.
        doomed.sort_unstable_by_key(|d| d.index);
        let stages: Vec<(usize, String)> = doomed
            .iter()
            .map(|d| (d.index, d.envelope.stage.clone()))
            .collect();
        let letters: Vec<Record> = doomed
            .into_iter()
            .map(|d| d.envelope.into_record())
            .collect();
        let settled = write_with_retries(
            &*self.error_sink,
            &letters,
            self.retry,
            deadline,
            "error sink",
        )
        .await;
        for ((index, stage), settled) in stages.into_iter().zip(settled) {
            outcomes[index] = Some(match settled {
                Settled::Done => Outcome::DeadLettered { stage },
                Settled::Rejected { error, .. } | Settled::Exhausted { error, .. } => {
                    tracing::error!(stage = %stage, error = %error, "dead letter could not be written");
                    Outcome::Failed {
                        error: format!("{stage} failure, and the error sink failed too: {error}"),
                    }
                }
            });
        }
    }
}

/// Writes `records` to `sink`, retrying the retryable failures; one answer per record, in order.
async fn write_with_retries(
    sink: &dyn Sink,
    records: &[Record],
    policy: RetryPolicy,
    deadline: Instant,
    what: &str,
) -> Vec<Settled> {
    let mut settled: Vec<Option<Settled>> = (0..records.len()).map(|_| None).collect();
    let mut retrier = Retrier::new(policy, deadline);
    let mut pending: Vec<usize> = (0..records.len()).collect();
    // The first attempt writes the caller's slice; only retries copy the records they resend.
    let mut resend: Option<Vec<Record>> = None;
    loop {
        let batch = resend.as_deref().unwrap_or(records);
        let results = sink.write(batch).await;
        let mut again = Vec::new();
        for (slot, &index) in pending.iter().enumerate() {
            let result = results.get(slot).cloned().unwrap_or_else(|| {
                Err(SinkError::Retryable(format!(
                    "the {what} answered for {} of {} records",
                    results.len(),
                    batch.len()
                )))
            });
            match result {
                Ok(()) => settled[index] = Some(Settled::Done),
                Err(SinkError::Permanent(error)) => {
                    settled[index] = Some(Settled::Rejected {
                        error,
                        attempts: retrier.attempts(),
                    })
                }
                Err(SinkError::Retryable(error)) => again.push((index, error)),
            }
        }
        if again.is_empty() {
            break;
        }
        tracing::warn!(what, records = again.len(), attempt = retrier.attempts(), error = %again[0].1, "retryable write failure");
        if !retrier.wait_for_retry().await {
            for (index, error) in again {
                settled[index] = Some(Settled::Exhausted {
                    error,
                    attempts: retrier.attempts(),
                });
            }
            break;
        }
        pending = again.iter().map(|(i, _)| *i).collect();
        resend = Some(pending.iter().map(|&i| records[i].clone()).collect());
    }
    settled
        .into_iter()
        .map(|s| s.expect("every record is settled before the loop ends"))
        .collect()
}

#[cfg(test)]
mod tests;
