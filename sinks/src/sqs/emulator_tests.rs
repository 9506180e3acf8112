//! The SQS sink against the emulator (moto), with faults injected into its HTTP client.

use std::collections::HashMap;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, moto_endpoint, unique};
use sluice_core::testkit::{raw, record, sink_pipeline};
use sluice_core::{Outcome, SinkConfig, SinkError};

use super::SqsSinkConfig;

struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    endpoint: String,
}

impl Queue {
    async fn create(endpoint: &str, attributes: &[(QueueAttributeName, &str)]) -> Self {
        let client = testing::client(endpoint).await;
        let url = testing::create_queue(&client, &unique("dlq"), attributes).await;
        Self {
            client,
            url,
            endpoint: endpoint.to_owned(),
        }
    }

    fn config(&self) -> SqsSinkConfig {
        SqsSinkConfig {
            queue_url: self.url.clone(),
            region: None,
            endpoint_url: Some(self.endpoint.clone()),
        }
    }

    /// Every message in the queue: body and string attributes.
    async fn drain(&self) -> Vec<(Value, HashMap<String, String>)> {
        testing::receive_all(&self.client, &self.url)
            .await
            .iter()
            .map(|m| {
                let attributes = m
                    .message_attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                    .collect();
                (serde_json::from_str(m.body().unwrap()).unwrap(), attributes)
            })
            .collect()
    }
}

fn envelope(i: usize) -> Value {
    json!({
        "pipeline": "waze-persist",
        "stage": "decode",
        "error": {"kind": "invalid_json", "message": format!("bad record {i}")},
        "payload_base64": "e30K",
    })
}

#[tokio::test]
async fn envelopes_go_out_ten_at_a_time_with_their_attributes() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let queue = Queue::create(&endpoint, &[]).await;
    let ctx = testing::context("test", &FaultPlan::new());
    let sink = queue.config().build(&ctx).await.expect("the sink builds");
    let batch: Vec<_> = (0..25)
        .map(|i| record("s", i, envelope(i as usize)))
        .collect();
    let answers = sink.write(&batch).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(ctx.api_calls.snapshot()["SQS.SendMessageBatch"], 3);
    let messages = queue.drain().await;
    assert_eq!(messages.len(), 25);
    let (body, attributes) = messages
        .iter()
        .find(|(b, _)| b["error"]["message"] == "bad record 7")
        .expect("record 7 arrived");
    assert_eq!(body, &envelope(7));
    assert_eq!(attributes["pipeline"], "waze-persist");
    assert_eq!(attributes["stage"], "decode");
    assert_eq!(attributes["error_kind"], "invalid_json");
}

#[tokio::test]
async fn a_message_over_the_queues_limit_is_refused_whole_never_truncated() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let queue = Queue::create(
        &endpoint,
        &[(QueueAttributeName::MaximumMessageSize, "1024")],
    )
    .await;
    let ctx = testing::context("test", &FaultPlan::new());
    let sink = queue.config().build(&ctx).await.expect("the sink builds");
    let mut big = envelope(1);
    big["payload_base64"] = Value::String("A".repeat(2000));
    let answers = sink
        .write(&[record("s", 1, envelope(0)), record("s", 2, big)])
        .await;
    assert_eq!(answers[0], Ok(()));
    let Err(SinkError::Permanent(message)) = &answers[1] else {
        panic!("{answers:?}")
    };
    assert!(
        message.contains("over the queue's limit of 1024 bytes"),
        "{message}"
    );
    let messages = queue.drain().await;
    assert_eq!(messages.len(), 1, "only the small one was sent");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_and_each_message_arrives_once() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let queue = Queue::create(&endpoint, &[]).await;
    let plan = FaultPlan::new();
    let ctx = testing::context("test", &plan);
    let sink = queue.config().build(&ctx).await.expect("the sink builds");
    plan.fail("SendMessageBatch", Fault::Throttle, 1).fail(
        "SendMessageBatch",
        Fault::ServerError,
        1,
    );
    let (pipeline, dead) = sink_pipeline(sink);
    let raws: Vec<_> = (0..12)
        .map(|i| raw("s", i + 1, &envelope(i as usize).to_string()))
        .collect();
    let report = pipeline.process_batch("s".into(), raws).await;
    assert!(
        report.outcomes.iter().all(|(_, o)| *o == Outcome::Stored),
        "{report:?}"
    );
    assert!(dead.records().is_empty());
    assert_eq!(plan.injected(), 2);
    assert_eq!(queue.drain().await.len(), 12);
}

#[tokio::test]
async fn a_deleted_queue_is_retried_then_failed_not_lost() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let queue = Queue::create(&endpoint, &[]).await;
    let ctx = testing::context("test", &FaultPlan::new());
    let sink = queue.config().build(&ctx).await.expect("the sink builds");
    queue
        .client
        .delete_queue()
        .queue_url(&queue.url)
        .send()
        .await
        .expect("delete");
    let answers = sink.write(&[record("s", 1, envelope(0))]).await;
    let Err(SinkError::Retryable(message)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(message.contains("SendMessageBatch failed"), "{message}");
}

#[tokio::test]
async fn a_missing_queue_is_a_clear_error_at_start_up() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let mut config = Queue::create(&endpoint, &[]).await.config();
    config.queue_url = format!("{endpoint}/123456789012/no-such-queue");
    let ctx = testing::context("test", &FaultPlan::new());
    let e = config
        .build(&ctx)
        .await
        .err()
        .expect("the build fails")
        .to_string();
    assert!(
        e.contains("no-such-queue") && e.contains("GetQueueAttributes failed"),
        "{e}"
    );
}
