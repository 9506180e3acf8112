//! The example's own sink inside sluice's Lambda handler, on the repository's event fixture.

use sluice::sluice_core::kinesis_event::KinesisEvent;
use sluice::sluice_core::{lambda, Loader};

#[tokio::test]
async fn the_custom_sink_takes_the_events_records() {
    let config = Loader::new()
        .without_source()
        .load("pipeline.toml")
        .expect("the example's pipeline");
    assert_eq!(config.describe()[2], "sink        audit log of `s3-key`");
    let pipeline = config
        .build(&config.context(false))
        .await
        .expect("builds")
        .pipeline;
    let fixture = include_bytes!("../../../tests/fixtures/kinesis-event-mixed.json");
    let event: KinesisEvent = serde_json::from_slice(fixture).expect("a Kinesis event");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let (response, summary) = lambda::handle(&pipeline, event, deadline).await;
    assert!(response.batch_item_failures.is_empty(), "{summary:?}");
    let c = &summary.counts;
    // 5 waze/ records audited, 1 outside waze/ skipped, 2 malformed dead-lettered to stdout.
    assert_eq!(
        (c.stored, c.skipped, c.dead_lettered),
        (5, 1, 2),
        "{summary:?}"
    );
}
