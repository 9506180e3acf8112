//! The Kinesis source against the emulator (moto): shards, checkpoints, leases, start positions
//! and throttling.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde_json::json;
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, moto_endpoint, unique};
use sluice_core::testkit::{sink_pipeline, MemorySink};
use sluice_core::{BuildError, Progress, RunSummary, SequenceNumber, SourceConfig};

use super::KinesisSourceConfig;

struct Stream {
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    name: String,
    checkpoints: String,
    endpoint: String,
}

impl Stream {
    async fn create(endpoint: &str, shards: i32) -> Self {
        let sdk = testing::sdk_config(endpoint).await;
        let kinesis = aws_sdk_kinesis::Client::new(&sdk);
        let name = unique("stream");
        kinesis
            .create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .expect("create the stream");
        Self {
            kinesis,
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            name,
            checkpoints: unique("checkpoints"),
            endpoint: endpoint.to_owned(),
        }
    }

    /// Puts records `from..to` as `{"n": i}`; answers each one's shard.
    async fn put(&self, from: usize, to: usize) -> Vec<String> {
        let entries = (from..to)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(json!({ "n": i }).to_string()))
                    .partition_key(format!("key-{i}"))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = self
            .kinesis
            .put_records()
            .stream_name(&self.name)
            .set_records(Some(entries))
            .send()
            .await
            .expect("put records");
        out.records()
            .iter()
            .map(|r| r.shard_id().unwrap().to_owned())
            .collect()
    }

    fn config(&self, extra: &str) -> KinesisSourceConfig {
        use figment::providers::{Format, Toml};
        let text = format!(
            "stream = \"{}\"\ncheckpoint_table = \"{}\"\nendpoint_url = \"{}\"\n{extra}",
            self.name, self.checkpoints, self.endpoint
        );
        figment::Figment::from(Toml::string(&text))
            .extract()
            .expect("a valid config")
    }

    /// Reads the stream to its tip into a memory sink.
    async fn read(&self, extra: &str, plan: &FaultPlan) -> (RunSummary, MemorySink) {
        let mut ctx = testing::context("test", plan);
        ctx.until_caught_up = true;
        let source = self
            .config(extra)
            .build(&ctx)
            .await
            .expect("the source builds");
        let sink = MemorySink::default();
        let (pipeline, _) = sink_pipeline(Arc::new(sink.clone()));
        let summary = pipeline.run(source, Arc::new(Progress::default())).await;
        (summary, sink)
    }

    async fn leases(&self) -> HashMap<String, HashMap<String, AttributeValue>> {
        let out = self
            .dynamodb
            .scan()
            .table_name(&self.checkpoints)
            .send()
            .await
            .expect("scan the lease table");
        out.items()
            .iter()
            .map(|i| (i["leaseKey"].as_s().unwrap().clone(), i.clone()))
            .collect()
    }
}

fn numbers(sink: &MemorySink) -> Vec<u64> {
    let mut n: Vec<u64> = sink
        .values()
        .iter()
        .map(|v| v["n"].as_u64().unwrap())
        .collect();
    n.sort_unstable();
    n
}

#[tokio::test]
async fn every_shard_is_read_in_order_and_a_rerun_resumes_from_the_checkpoints() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 3).await;
    stream.put(0, 60).await;
    let (summary, sink) = stream.read("", &FaultPlan::new()).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..60).collect::<Vec<_>>());
    // Within each shard, records arrive in sequence-number order.
    let mut by_shard: BTreeMap<String, Vec<SequenceNumber>> = BTreeMap::new();
    for r in sink.records() {
        assert_eq!(r.meta.source, "kinesis");
        assert_eq!(r.meta.stream, stream.name);
        assert!(r
            .meta
            .partition_key
            .as_deref()
            .is_some_and(|k| k.starts_with("key-")));
        by_shard
            .entry(r.meta.shard_id.clone())
            .or_default()
            .push(r.meta.sequence_number);
    }
    for seqs in by_shard.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    // Checkpoints stored for each shard, leases released.
    let leases = stream.leases().await;
    for (shard, seqs) in &by_shard {
        let lease = &leases[shard];
        assert_eq!(
            lease["checkpoint"].as_s().unwrap(),
            seqs.last().unwrap().as_str()
        );
        assert!(!lease.contains_key("leaseOwner"), "released: {lease:?}");
        assert!(
            lease["leaseCounter"]
                .as_n()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 2
        );
    }

    let (summary, sink) = stream.read("", &FaultPlan::new()).await;
    assert_eq!(summary.counts.records, 0, "nothing new: {summary:?}");
    assert!(sink.records().is_empty());
    stream.put(60, 65).await;
    let (_, sink) = stream.read("", &FaultPlan::new()).await;
    assert_eq!(numbers(&sink), (60..65).collect::<Vec<_>>());
}

#[tokio::test]
async fn throttled_and_failing_get_records_back_off_and_lose_nothing() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 20).await;
    let plan = FaultPlan::new();
    plan.fail("GetRecords", Fault::Throttle, 3)
        .fail("GetRecords", Fault::ServerError, 1);
    let (summary, sink) = stream.read("limit = 5", &plan).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..20).collect::<Vec<_>>());
    assert!(plan.injected() >= 4);
}

#[tokio::test]
async fn a_shard_leased_by_a_live_worker_is_left_alone_and_a_lapsed_lease_is_taken() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 2).await;
    let shards = stream.put(0, 40).await;
    // Create the lease table with a first run, then hand one shard to another worker.
    stream.read("", &FaultPlan::new()).await;
    stream.put(40, 80).await;
    let held = shards[0].clone();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let lease = |expires: i64| {
        stream
            .dynamodb
            .update_item()
            .table_name(&stream.checkpoints)
            .key("leaseKey", AttributeValue::S(held.clone()))
            .update_expression("SET leaseOwner = :o, leaseExpiresAt = :e")
            .expression_attribute_values(":o", AttributeValue::S("other-worker".into()))
            .expression_attribute_values(":e", AttributeValue::N(expires.to_string()))
            .send()
    };
    lease(now_ms + 60_000)
        .await
        .expect("lease the shard to another worker");
    let (_, sink) = stream.read("", &FaultPlan::new()).await;
    assert!(!sink.records().is_empty());
    assert!(
        sink.records().iter().all(|r| r.meta.shard_id != held),
        "the held shard is not read"
    );
    assert_eq!(
        stream.leases().await[&held]["leaseOwner"].as_s().unwrap(),
        "other-worker"
    );

    // The other worker stopped renewing: its lease lapses and this worker takes the shard.
    lease(now_ms - 1).await.expect("let the lease lapse");
    let (_, sink) = stream.read("", &FaultPlan::new()).await;
    assert!(!sink.records().is_empty());
    assert!(sink.records().iter().all(|r| r.meta.shard_id == held));
    assert!(!stream.leases().await[&held].contains_key("leaseOwner"));
}

#[tokio::test]
async fn at_timestamp_starts_at_the_given_time() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stream.put(5, 10).await;
    let start = format!(
        "start = \"at_timestamp\"\ntimestamp = \"{}\"",
        from.to_rfc3339()
    );
    let (_, sink) = stream.read(&start, &FaultPlan::new()).await;
    assert_eq!(numbers(&sink), (5..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_missing_stream_is_a_clear_error_at_start_up() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    let mut config = stream.config("");
    config.stream = "arn:aws:kinesis:us-east-1:123456789012:stream/no-such-stream".into();
    let e = config
        .build(&testing::context("test", &FaultPlan::new()))
        .await
        .err()
        .expect("the build fails");
    let BuildError::Unavailable { what, message } = e else {
        panic!("{e:?}")
    };
    assert_eq!(what, "Kinesis stream `no-such-stream`");
    assert!(message.contains("ResourceNotFoundException"), "{message}");
}

#[tokio::test]
async fn settings_out_of_range_are_named() {
    let config = |extra: &str| {
        use figment::providers::{Format, Toml};
        let text = format!("stream = \"s\"\n{extra}");
        figment::Figment::from(Toml::string(&text))
            .extract::<KinesisSourceConfig>()
            .expect("parses")
    };
    let ctx = sluice_core::BuildContext::new("test", true);
    for (extra, key, says) in [
        ("limit = 20000", "limit", "between 1 and 10000"),
        ("start = \"at_timestamp\"", "timestamp", "needs `timestamp`"),
        (
            "timestamp = \"2026-01-01T00:00:00Z\"",
            "timestamp",
            "only read with",
        ),
        (
            "checkpoint_interval = \"20s\"",
            "lease_duration",
            "three `checkpoint_interval`s",
        ),
    ] {
        let e = config(extra).build(&ctx).await.err().expect("refused");
        let BuildError::Invalid { key: k, message } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(k, key, "{extra}");
        assert!(message.contains(says), "{extra}: {message}");
    }
}
