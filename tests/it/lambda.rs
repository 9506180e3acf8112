//! The Lambda runner: handler tests with a JSON event fixture, and the real binary served by a
//! local stand-in for the Lambda Runtime API. Against the emulator.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, moto_endpoint};
use sluice_core::kinesis_event::KinesisEvent;
use sluice_core::{lambda, Loader};

use crate::aws_job::{World, BATCH_ID};
use crate::root;

const FIXTURE: &[u8] = include_bytes!("../fixtures/kinesis-event-mixed.json");

fn fixture() -> KinesisEvent {
    serde_json::from_slice(FIXTURE).expect("the fixture is a Kinesis event")
}

fn sequence(i: usize) -> String {
    let fixture: Value = serde_json::from_slice(FIXTURE).unwrap();
    fixture["Records"][i]["kinesis"]["sequenceNumber"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn pipeline(world: &World, plan: &FaultPlan) -> sluice_core::Pipeline {
    let variables: HashMap<&str, String> = world.variables().into_iter().collect();
    let mut config = Loader::new()
        .variables(move |k| variables.get(k).cloned())
        .without_source()
        .load(root().join("pipelines/waze-persist.toml"))
        .expect("loads without KINESIS_STREAM: the event is the source");
    // The file's retries, cut short so a write that keeps failing gives up (then Failed) well
    // within these tests' 6 s deadline; the file itself allows up to 30 s.
    config.retry.max_elapsed = Duration::from_secs(3);
    config
        .build(&testing::context("waze-persist", plan))
        .await
        .expect("builds")
        .pipeline
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_event_reports_exactly_the_first_failed_record_of_each_failing_shard() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 1).await;
    let plan = FaultPlan::new();
    // The write carrying record 5 (`retry-me`) keeps failing with 500s: it is retried until the
    // retry policy gives up (3 s, see `pipeline`), then Failed. Its shard's calls carry records 5
    // to 7. (The deadline's own cut is tested in `core/src/lambda`, with a stuck sink.)
    plan.fail_when("BatchWriteItem", "retry-me", Fault::ServerError);
    let pipeline = pipeline(&world, &plan).await;
    // Long enough for the healthy shard's calls on a loaded machine: at 2 s they were cut,
    // once, in CI, and all of its records were reported for delivery again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let (response, summary) = lambda::handle(&pipeline, fixture(), deadline).await;

    let failures: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect();
    assert_eq!(failures, vec![sequence(5)], "{summary:?}");
    let c = &summary.counts;
    assert_eq!(
        (c.records, c.stored, c.skipped, c.dead_lettered, c.failed),
        (8, 2, 1, 2, 3),
        "{summary:?}"
    );

    // Shard 0's valid records are stored with the ids the daemon would give them.
    let items = world.items().await;
    assert_eq!(items.len(), 2);
    for item in &items {
        assert_eq!(item["BatchId"].as_s().unwrap(), BATCH_ID);
    }
    // The malformed records are in the DLQ with their positions and reasons.
    let dead = world.dead_letters().await;
    let positions: Vec<&str> = dead
        .iter()
        .map(|d| d["source"]["sequence_number"].as_str().unwrap())
        .collect();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert!(positions.contains(&sequence(2).as_str()) && positions.contains(&sequence(4).as_str()));
    for d in &dead {
        assert_eq!(d["source"]["source"], "lambda");
        assert_eq!(d["source"]["stream"], "waze-curated");
        assert_eq!(d["stage"], "decode");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_record_gets_the_same_id_from_lambda_and_from_the_daemon() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 1).await;
    let pipeline = pipeline(&world, &FaultPlan::new()).await;
    let event: KinesisEvent = serde_json::from_value(json!({"Records": [{
        "eventID": "shardId-000000000000:42",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/waze-curated",
        "kinesis": {"data": base64_json(&crate::aws_job::waze_payload(1)), "sequenceNumber": "42"}
    }]}))
    .unwrap();
    let (response, _) = lambda::handle(
        &pipeline,
        event,
        tokio::time::Instant::now() + Duration::from_secs(5),
    )
    .await;
    assert!(response.batch_item_failures.is_empty());
    let put = crate::aws_job::Put {
        payload: Vec::new(),
        shard_id: "shardId-000000000000".into(),
        sequence_number: "42".into(),
    };
    // What the Kinesis source gives a record of stream `waze-curated`, shard 0, sequence 42.
    let id = crate::aws_job::expected_id("waze-curated", &put);
    assert_eq!(
        world.items().await[0]["CurationRecordId"].as_s().unwrap(),
        &id
    );
}

fn base64_json(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}
