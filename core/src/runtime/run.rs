//! Running a pipeline over a source: one worker per shard keeps that shard's batches in order
//! while different shards proceed concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Pipeline, Progress, RunSummary};
use crate::component::{Source, SourceBatch};
use crate::metrics::metrics;
use crate::outcome::ShardTracker;

/// Batches queued per shard ahead of its worker; small, so a slow sink holds the source back.
const QUEUED_PER_SHARD: usize = 2;

impl Pipeline {
    /// Reads `source` to its end (or until it fails) and returns what happened; `progress` is
    /// updated after each batch for a live display.
    pub async fn run(&self, source: Box<dyn Source>, progress: Arc<Progress>) -> RunSummary {
        let started = tokio::time::Instant::now();
        let mut batches = source.batches(self.batch_settings());
        let mut shards: HashMap<String, mpsc::Sender<SourceBatch>> = HashMap::new();
        let mut workers = JoinSet::new();
        let mut source_errors = Vec::new();

        loop {
            let next = tokio::select! {
                next = batches.next() => next,
                Some(joined) = workers.join_next(), if !workers.is_empty() => {
                    // Workers end only when their queue closes, after the source: this one panicked.
                    if let Err(e) = joined {
                        self.worker_failed(&e, &mut source_errors);
                    }
                    continue;
                }
            };
            let Some(next) = next else { break };
            let batch = match next {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "the source failed; records not yet read stay unread");
                    source_errors.push(format!("source: {e}"));
                    break;
                }
            };
            let queue = shards.entry(batch.shard_id.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUED_PER_SHARD);
                workers.spawn(shard_worker(self.clone(), rx, progress.clone()));
                tx
            });
            if let Err(returned) = queue.send(batch).await {
                // Its worker panicked; the batch is not acknowledged, so it is read again later.
                source_errors.push(format!(
                    "shard {}: its worker stopped; {} records not processed",
                    returned.0.shard_id,
                    returned.0.records.len()
                ));
            }
        }
        drop(shards);

        let mut summary = RunSummary {
            pipeline: self.name().to_owned(),
            errors: source_errors,
            ..RunSummary::default()
        };
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(shard_summary) => summary.merge(shard_summary),
                Err(e) => self.worker_failed(&e, &mut summary.errors),
            }
        }
        summary.api_calls = self.api_calls().snapshot();
        summary.elapsed = started.elapsed();
        summary
    }

    /// A shard worker panicked (a component's bug): the run fails, and the source is asked to
    /// stop so it lets go of what it holds; its batch is not acknowledged, so it is read again.
    fn worker_failed(&self, e: &tokio::task::JoinError, errors: &mut Vec<String>) {
        tracing::error!(error = %e, "a shard worker panicked; stopping the run");
        errors.push(format!("a shard worker panicked: {e}"));
        self.stop.trigger();
    }
}

async fn shard_worker(
    pipeline: Pipeline,
    mut queue: mpsc::Receiver<SourceBatch>,
    progress: Arc<Progress>,
) -> RunSummary {
    let mut summary = RunSummary::default();
    let mut shard = ShardTracker::default();
    let mut holding = 0;
    let mut id = None;
    while let Some(batch) = queue.recv().await {
        let SourceBatch {
            shard_id,
            records,
            ack,
        } = batch;
        id.get_or_insert_with(|| shard_id.clone());
        if let Some(ack) = &ack {
            if ack.holding() != holding {
                holding = ack.holding();
                shard = ShardTracker::default();
            }
        }
        if let (Some(ack), Some(first)) = (&ack, records.first()) {
            if !ack.is_current() {
                // The source may have lost the shard to another worker: not a record is written;
                // the batch goes back (its dropped ack tells the source) to whoever holds it.
                tracing::info!(shard = %shard_id, records = records.len(), "the shard's lease is not held now; batch handed back unprocessed");
                shard.abandon(first.meta.position());
                summary.handed_back += records.len() as u64;
                continue;
            }
        }
        let report = pipeline
            .process_batch(shard_id, records)
            .await
            .tracked(&mut shard);
        // A disabled sink (a dry run) stores nothing, so no checkpoint may pass a record.
        let report = if pipeline.sink_enabled() {
            report
        } else {
            report.without_checkpoint()
        };
        if let Some(ack) = ack {
            if let Err(e) = ack.acknowledge(&report).await {
                tracing::error!(shard = %report.shard_id, error = %e, "checkpoint not stored; the batch will be delivered again");
                summary
                    .errors
                    .push(format!("shard {}: {e}", report.shard_id));
            }
        }
        let counts = progress.add(&report);
        metrics().record_outcomes(pipeline.name(), &counts);
        summary.add(&report);
    }
    // A daemon reads failed records again until they are done; what still fails at the end
    // (or, in one pass, at all) is left for the next run.
    if let (true, Some(id)) = (shard.is_frozen(), id) {
        summary.unresolved.push(id);
    }
    summary
}
