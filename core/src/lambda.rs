//! Serving an AWS Lambda Kinesis event source mapping: the invocation's event is the source, each
//! shard's records are processed within the invocation's deadline, and the first record of each
//! shard that must be delivered again is reported in `batchItemFailures` (Lambda resumes the shard
//! from it). Stored, skipped and dead-lettered records are done.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use tokio::time::Instant;

pub use lambda_runtime::Error;

use crate::component::BuildContext;
use crate::config::Loader;
use crate::kinesis_event::KinesisEvent;
use crate::runtime::{Pipeline, RunSummary};

/// Whether AWS Lambda started this process (it sets `AWS_LAMBDA_RUNTIME_API`).
pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// The pipeline file a Lambda function runs: `SLUICE_PIPELINE`, else `default`. A relative path
/// is looked up in the working directory, then in `LAMBDA_TASK_ROOT` (where the deployment
/// package is unpacked).
pub fn pipeline_path(default: &str) -> PathBuf {
    let name = std::env::var("SLUICE_PIPELINE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let path = PathBuf::from(&name);
    if path.is_absolute() || path.exists() {
        return path;
    }
    match std::env::var_os("LAMBDA_TASK_ROOT") {
        Some(root) if PathBuf::from(&root).join(&name).exists() => PathBuf::from(root).join(name),
        _ => path,
    }
}

/// The whole Lambda function: loads and builds the pipeline named by [`pipeline_path`] (the
/// event is the source, so the file's `[source]` table is ignored), then serves invocations
/// until the runtime ends. A pipeline that cannot be built answers every invocation with the
/// reason (`PipelineCannotRun`, naming the file) instead of exiting, which would crash-loop the
/// function without one.
pub async fn run(default_pipeline: &str) -> Result<(), lambda_runtime::Error> {
    let path = pipeline_path(default_pipeline);
    let built = async {
        let config = Loader::new().without_source().load(&path)?;
        let ctx = BuildContext::new(config.name.clone(), false);
        config.build(&ctx).await
    };
    match built.await {
        Ok(built) => {
            tracing::info!(pipeline = %built.pipeline.name(), file = %path.display(), "serving Lambda invocations");
            serve(built.pipeline).await
        }
        Err(e) => {
            let message = format!("pipeline {} cannot run: {e}", path.display());
            serve_error(message).await
        }
    }
}

/// The least time kept back from the invocation's deadline to answer Lambda.
const MIN_MARGIN: Duration = Duration::from_millis(200);
/// The most time kept back.
const MAX_MARGIN: Duration = Duration::from_secs(2);

/// The instant by which processing must end: the deadline (epoch milliseconds, as Lambda gives
/// it) less a tenth of the time left, kept between 200 ms and 2 s, for answering.
pub fn processing_deadline(deadline_epoch_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
    let margin = (left / 10).clamp(MIN_MARGIN, MAX_MARGIN);
    Instant::now() + left.saturating_sub(margin)
}

/// Processes one event: shards concurrently, each shard's records in order, no retry starting
/// after `deadline` (nor after the pipeline's own `max_elapsed`). Answers the response for Lambda
/// and what happened.
pub async fn handle(
    pipeline: &Pipeline,
    event: KinesisEvent,
    deadline: Instant,
) -> (KinesisEventResponse, RunSummary) {
    let started = Instant::now();
    let deadline = deadline.min(started + pipeline.retry_policy().max_elapsed);
    let shards = event.into_shard_batches("lambda");
    let reports = futures::future::join_all(
        shards
            .into_iter()
            .map(|(shard, records)| pipeline.process_batch_until(shard, records, deadline)),
    )
    .await;
    let mut summary = RunSummary {
        pipeline: pipeline.name().to_owned(),
        ..RunSummary::default()
    };
    let mut response = KinesisEventResponse::default();
    for report in &reports {
        summary.add(report);
        if let Some(seq) = report.first_failure() {
            let mut failure = KinesisBatchItemFailure::default();
            failure.item_identifier = Some(seq.sequence.as_str().to_owned());
            response.batch_item_failures.push(failure);
        }
    }
    summary.elapsed = started.elapsed();
    (response, summary)
}

/// Serves invocations until the Lambda runtime ends: one summary log line per invocation.
/// The pipeline (SDK clients, the SSM cache, connections) is built once, before this.
pub async fn serve(pipeline: Pipeline) -> Result<(), lambda_runtime::Error> {
    let pipeline = &pipeline;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KinesisEvent>| async move {
        let request_id = event.context.request_id.clone();
        let deadline = processing_deadline(event.context.deadline);
        let (response, summary) = handle(pipeline, event.payload, deadline).await;
        let c = &summary.counts;
        tracing::info!(
            request_id = %request_id,
            records = c.records,
            stored = c.stored,
            skipped = c.skipped,
            dead_lettered = c.dead_lettered,
            failed = c.failed,
            batch_item_failures = response.batch_item_failures.len(),
            duration_ms = summary.elapsed.as_millis() as u64,
            "invocation"
        );
        for failure in &summary.failures {
            tracing::warn!(request_id = %request_id, failure = %failure, "record to be delivered again");
        }
        Ok::<_, lambda_runtime::Error>(response)
    }))
    .await
}

/// Serves invocations with an error: for a pipeline that cannot run at all (a bad pipeline file,
/// a missing table), so each invocation fails with the reason instead of the function
/// crash-looping without one.
pub async fn serve_error(message: String) -> Result<(), lambda_runtime::Error> {
    let message = &message;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<serde_json::Value>| async move {
            tracing::error!(error = %message, "the pipeline cannot run");
            Err::<(), _>(Diagnostic {
                error_type: "PipelineCannotRun".to_owned(),
                error_message: message.clone(),
            })
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_ms_in(d: Duration) -> u64 {
        (SystemTime::now() + d)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_time_left_within_bounds() {
        let cases = [
            (Duration::from_secs(60), Duration::from_secs(58)), // 2 s at most
            (Duration::from_secs(10), Duration::from_secs(9)),  // a tenth
            (Duration::from_secs(1), Duration::from_millis(800)), // 200 ms at least
        ];
        for (left, usable) in cases {
            let until = processing_deadline(epoch_ms_in(left)) - Instant::now();
            let error = until.abs_diff(usable);
            assert!(
                error < Duration::from_millis(50),
                "{left:?}: {until:?} vs {usable:?}"
            );
        }
        // A deadline already past leaves no time at all.
        assert!(processing_deadline(0) <= Instant::now());
    }
}
