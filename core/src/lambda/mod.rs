//! Serving an AWS Lambda Kinesis event source mapping: the invocation's event is the source, each
//! shard's records are processed within the invocation's deadline, and the first record of each
//! shard that must be delivered again is reported in `batchItemFailures` (Lambda resumes the shard
//! from it). Stored, skipped and dead-lettered records are done.

mod bootstrap;
mod emf;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use lambda_runtime::{service_fn, LambdaEvent};
use tokio::time::Instant;

pub use bootstrap::{is_lambda, pipeline_path, run, serve_error};
pub use emf::{Emf, Invocation};
pub use lambda_runtime::Error;

use crate::kinesis_event::KinesisEvent;
use crate::outcome::{BatchReport, Outcome};
use crate::position::Position;
use crate::runtime::{Pipeline, RunSummary};

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
    let retries_until = deadline.min(started + pipeline.retry_policy().max_elapsed);
    let shards = event.into_shard_batches("lambda");
    // Every call of the invocation is bounded by the deadline, not only new retries: what a
    // shard has not finished by then is reported from its first such record, and Lambda
    // delivers it again.
    let reports = futures::future::join_all(shards.into_iter().map(|(shard, records)| async move {
        let positions: Vec<Position> = records.iter().map(|r| r.meta.position()).collect();
        let mut done = Vec::with_capacity(positions.len());
        let processed = process_shard(pipeline, &shard, records, retries_until, &mut done);
        let finished = tokio::time::timeout_at(deadline, processed).await.is_ok();
        let error = if finished {
            "not processed: an earlier record of its shard is to be delivered again"
        } else {
            tracing::warn!(%shard, records = positions.len() - done.len(), "not finished by the invocation's deadline; reported for delivery again");
            "not finished before the invocation's deadline"
        };
        let unfinished = Outcome::Failed {
            error: error.into(),
        };
        let rest = positions.into_iter().skip(done.len());
        done.extend(rest.map(|p| (p, unfinished.clone())));
        BatchReport::new(shard, done)
    }))
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

/// Processes a shard's records in batches of the pipeline's `max_records`, in order, adding each
/// record's outcome to `done`: the invocation holds one batch's decoded records and requests at a
/// time, not the whole event's. After a batch with a record to be delivered again, the rest wait
/// for that delivery: Lambda resumes the shard from that record, and processing them now would
/// only spend the invocation's time on records written again then.
async fn process_shard(
    pipeline: &Pipeline,
    shard: &str,
    records: Vec<crate::record::RawRecord>,
    retries_until: Instant,
    done: &mut Vec<(Position, Outcome)>,
) {
    let size = pipeline.batch_settings().max_records;
    for batch in crate::settings::owned_chunks(records, size) {
        let report = pipeline
            .process_batch_until(shard.to_owned(), batch, retries_until)
            .await;
        let failed = report.first_failure().is_some();
        done.extend(report.outcomes);
        if failed {
            return;
        }
    }
}

/// Serves invocations until the Lambda runtime ends: one summary log line per invocation.
/// The pipeline (SDK clients, the SSM cache, connections) is built once, before this.
pub async fn serve(pipeline: Pipeline) -> Result<(), lambda_runtime::Error> {
    let pipeline = &pipeline;
    let emf = &Emf::from_env(pipeline.name());
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<KinesisEvent>| async move {
            let deadline = processing_deadline(event.context.deadline);
            Ok::<_, lambda_runtime::Error>(invoke(pipeline, emf.as_ref(), event, deadline).await)
        },
    ))
    .await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One invocation: handled, and logged in one summary line (and a line per record to come
/// again).
async fn invoke(
    pipeline: &Pipeline,
    emf: Option<&Emf>,
    event: LambdaEvent<KinesisEvent>,
    deadline: Instant,
) -> KinesisEventResponse {
    let request_id = event.context.request_id.clone();
    let started_ms = now_ms();
    let batch_size = event.payload.records.len() as u64;
    let oldest = event.payload.oldest_arrival_ms();
    let retried_before = pipeline.records_retried();
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
    if let Some(emf) = emf {
        let run = Invocation {
            batch_size,
            duration_ms: summary.elapsed.as_millis() as u64,
            oldest_record_age_ms: oldest.map(|t| started_ms.saturating_sub(t)),
            retries: pipeline.records_retried().saturating_sub(retried_before),
            request_id,
        };
        let line = format!("{}\n", emf.document(&summary, &run, now_ms()));
        // One write of the whole line, so CloudWatch reads one document.
        use std::io::Write;
        if let Err(e) = std::io::stdout().lock().write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "the invocation's metrics could not be written");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes a minute per write.
    struct Stuck;

    #[async_trait::async_trait]
    impl crate::component::Sink for Stuck {
        async fn write(
            &self,
            batch: &[crate::record::Record],
        ) -> Vec<Result<(), crate::error::SinkError>> {
            tokio::time::sleep(Duration::from_secs(60)).await;
            vec![Ok(()); batch.len()]
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_invocation_answers_by_its_deadline_whatever_a_call_in_flight_does() {
        // Found by review: only new retries stopped at the deadline; a write in flight ran past
        // it, the invocation timed out and the whole batch was retried.
        let (pipeline, _) = crate::testkit::sink_pipeline(std::sync::Arc::new(Stuck));
        let data = "eyJhIjogMX0="; // {"a": 1}
        let event: KinesisEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s", "eventID": "shardId-0:7",
             "kinesis": {"data": data, "sequenceNumber": "7", "partitionKey": "k"}},
            {"eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s", "eventID": "shardId-0:8",
             "kinesis": {"data": data, "sequenceNumber": "8", "partitionKey": "k"}},
        ]}))
        .expect("an event");
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3);
        let (response, summary) = handle(&pipeline, event, deadline).await;
        assert!(Instant::now() <= deadline, "answered by the deadline");
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone().unwrap())
            .collect();
        assert_eq!(failed, ["7"], "the shard comes back from its first record");
        assert_eq!(summary.counts.failed, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_is_processed_a_batch_at_a_time_up_to_the_batch_with_a_record_to_come_again() {
        use crate::testkit::{quick_retry, FailingSink, Failure, MemorySink};
        let sink = FailingSink::default().failing(3, Failure::AlwaysRetryable);
        let pipeline = Pipeline::new(
            "test",
            Vec::new(),
            std::sync::Arc::new(sink.clone()),
            std::sync::Arc::new(MemorySink::default()),
            crate::settings::BatchSettings {
                max_records: 2,
                max_age: Duration::from_secs(1),
            },
            quick_retry(),
        );
        let records: Vec<_> = (1..=6)
            .map(|n| {
                serde_json::json!({"eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s",
                    "eventID": format!("shardId-0:{n}"),
                    "kinesis": {"data": "eyJhIjogMX0=", "sequenceNumber": n.to_string()}})
            })
            .collect();
        let event: KinesisEvent =
            serde_json::from_value(serde_json::json!({ "Records": records })).expect("an event");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (response, summary) = handle(&pipeline, event, deadline).await;
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone().unwrap())
            .collect();
        assert_eq!(failed, ["3"]);
        let c = &summary.counts;
        assert_eq!(
            (c.stored, c.failed),
            (3, 3),
            "1, 2 and 4 stored; 3 failed, 5 and 6 wait for the next delivery"
        );
        assert_eq!(
            (sink.offered(4), sink.offered(5), sink.offered(6)),
            (1, 0, 0),
            "the batch after the failure is not written"
        );
        assert!(
            summary
                .failures
                .iter()
                .any(|f| f.contains("an earlier record")),
            "{:?}",
            summary.failures
        );
    }

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
