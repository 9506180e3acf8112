//! The Kinesis source against the emulator (moto): shards, checkpoints, leases, start positions
//! and throttling.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, kinesis_local_endpoint, moto_endpoint, unique};
use sluice_core::testkit::{sink_pipeline, MemorySink, OutageSink};
use sluice_core::{
    async_trait, BatchSettings, BuildError, OnExhausted, Pipeline, Progress, Record, RetryPolicy,
    RunSummary, SequenceNumber, Shutdown, Sink, SinkError, SourceConfig,
};

/// Writes into a memory sink, slowly for one shard: were a child read before its parent ended,
/// its records would overtake the parent's.
struct SlowForShard {
    inner: MemorySink,
    shard: String,
}

#[async_trait]
impl Sink for SlowForShard {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        if batch.iter().any(|r| r.meta.shard_id == self.shard) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.inner.write(batch).await
    }
}

use super::KinesisSourceConfig;

/// A pipeline reading a stream in the background until stopped.
struct Daemon {
    sink: MemorySink,
    shutdown: Shutdown,
    running: tokio::task::JoinHandle<RunSummary>,
}

impl Daemon {
    /// Asks it to stop, and answers its summary and what it stored.
    async fn stop(self) -> (RunSummary, MemorySink) {
        self.shutdown.trigger();
        let summary = tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("stops when asked")
            .expect("runs");
        (summary, self.sink)
    }
}

struct Stream {
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    name: String,
    checkpoints: String,
    endpoint: String,
    checkpoint_endpoint: String,
}

impl Stream {
    async fn create(endpoint: &str, shards: i32) -> Self {
        Self::create_on(endpoint, endpoint, shards).await
    }

    /// A stream on the `kinesis` emulator, its lease table on `dynamodb`'s.
    async fn create_on(kinesis: &str, dynamodb: &str, shards: i32) -> Self {
        let client = testing::client(kinesis).await;
        let name = unique("stream");
        testing::create_stream(&client, &name, shards).await;
        Self {
            kinesis: client,
            dynamodb: testing::client(dynamodb).await,
            name,
            checkpoints: unique("checkpoints"),
            endpoint: kinesis.to_owned(),
            checkpoint_endpoint: dynamodb.to_owned(),
        }
    }

    /// Splits `shard` at `hash_key` and waits until the stream is active again.
    async fn split(&self, shard: &str, hash_key: &str) {
        self.kinesis
            .split_shard()
            .stream_name(&self.name)
            .shard_to_split(shard)
            .new_starting_hash_key(hash_key)
            .send()
            .await
            .expect("split");
        testing::wait_until_stream_active(&self.kinesis, &self.name).await;
    }

    /// Reads the stream as a daemon does (not until caught up), in the background.
    async fn daemon(&self, extra: &str) -> Daemon {
        let sink = MemorySink::default();
        let (pipeline, _) = sink_pipeline(Arc::new(sink.clone()));
        self.daemon_with(extra, pipeline, sink).await
    }

    /// A daemon running `pipeline`, whose records end in `sink`.
    async fn daemon_with(&self, extra: &str, pipeline: Pipeline, sink: MemorySink) -> Daemon {
        let ctx = testing::context("test", &FaultPlan::new());
        let source = self
            .config(extra)
            .build(&ctx)
            .await
            .expect("the source builds");
        let running =
            tokio::spawn(async move { pipeline.run(source, Arc::new(Progress::default())).await });
        Daemon {
            sink,
            shutdown: ctx.shutdown.clone(),
            running,
        }
    }

    /// The shards, open or closed, by id: (parents, whether closed).
    async fn shards(&self) -> BTreeMap<String, (Vec<String>, bool)> {
        let out = self
            .kinesis
            .list_shards()
            .stream_name(&self.name)
            .send()
            .await
            .expect("list shards");
        out.shards()
            .iter()
            .map(|s| {
                let parents = s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(str::to_owned)
                    .collect();
                let closed = s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                (s.shard_id().to_owned(), (parents, closed))
            })
            .collect()
    }

    /// Puts records `from..to` as `{"n": i}`; answers each one's shard.
    async fn put(&self, from: usize, to: usize) -> Vec<String> {
        let placed = self.put_placed(from, to).await;
        placed.into_iter().map(|(shard, _)| shard).collect()
    }

    /// Puts records `from..to`; answers each one's shard and sequence number.
    async fn put_placed(&self, from: usize, to: usize) -> Vec<(String, String)> {
        let records = (from..to)
            .map(|i| {
                let key = format!("key-{i}");
                (json!({ "n": i, "key": key }).to_string().into_bytes(), key)
            })
            .collect();
        testing::put_records(&self.kinesis, &self.name, records).await
    }

    /// Puts records `from..to` as `{"n": i, "key": key(i)}` with partition key `key(i)`.
    async fn put_keyed(
        &self,
        from: usize,
        to: usize,
        key: impl Fn(usize) -> String,
    ) -> Vec<String> {
        let records = (from..to)
            .map(|i| {
                (
                    json!({ "n": i, "key": key(i) }).to_string().into_bytes(),
                    key(i),
                )
            })
            .collect();
        testing::put_records(&self.kinesis, &self.name, records)
            .await
            .into_iter()
            .map(|(shard, _)| shard)
            .collect()
    }

    fn config(&self, extra: &str) -> KinesisSourceConfig {
        use figment::providers::{Format, Toml};
        let text = format!(
            "stream = \"{}\"\ncheckpoint_table = \"{}\"\nendpoint_url = \"{}\"\ncheckpoint_endpoint_url = \"{}\"\n{extra}",
            self.name, self.checkpoints, self.endpoint, self.checkpoint_endpoint
        );
        figment::Figment::from(Toml::string(&text))
            .extract()
            .expect("a valid config")
    }

    /// Reads the stream to its tip into a memory sink.
    async fn read(&self, extra: &str, plan: &FaultPlan) -> (RunSummary, MemorySink) {
        let sink = MemorySink::default();
        let summary = self.read_into(extra, plan, Arc::new(sink.clone())).await;
        (summary, sink)
    }

    async fn read_into(&self, extra: &str, plan: &FaultPlan, sink: Arc<dyn Sink>) -> RunSummary {
        let mut ctx = testing::context("test", plan);
        ctx.until_caught_up = true;
        let source = self
            .config(extra)
            .build(&ctx)
            .await
            .expect("the source builds");
        let (pipeline, _) = sink_pipeline(sink);
        pipeline.run(source, Arc::new(Progress::default())).await
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

/// On kinesis-local, which ends closed shards as Kinesis does (moto never does).
#[tokio::test]
async fn after_a_split_and_a_merge_every_record_is_stored_parents_before_children() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let stream = Stream::create_on(&kinesis_local, &moto, 1).await;
    let key = |i: usize| format!("key-{}", i % 16);
    stream.put_keyed(0, 64, key).await;

    // Split the only shard at the middle of the hash key range.
    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "170141183460469231731687303715884105728")
        .await;
    stream.put_keyed(64, 128, key).await;

    // Merge the two children back into one.
    let children: Vec<String> = stream
        .shards()
        .await
        .into_iter()
        .filter(|(_, (parents, closed))| parents.contains(&parent) && !closed)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(children.len(), 2, "{:?}", stream.shards().await);
    stream
        .kinesis
        .merge_shards()
        .stream_name(&stream.name)
        .shard_to_merge(&children[0])
        .adjacent_shard_to_merge(&children[1])
        .send()
        .await
        .expect("merge");
    testing::wait_until_stream_active(&stream.kinesis, &stream.name).await;
    stream.put_keyed(128, 192, key).await;
    let shards = stream.shards().await;
    assert_eq!(shards.len(), 4, "{shards:?}");

    let sink = MemorySink::default();
    let slow = SlowForShard {
        inner: sink.clone(),
        shard: parent.clone(),
    };
    let summary = stream
        .read_into("", &FaultPlan::new(), Arc::new(slow))
        .await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(
        numbers(&sink),
        (0..192).collect::<Vec<_>>(),
        "every record, once"
    );
    // For each key, records were written in the order they were put: the parent's (before the
    // split) first, then the children's, then the merged shard's.
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in sink.values() {
        by_key
            .entry(v["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["n"].as_u64().unwrap());
    }
    for (k, ns) in &by_key {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{k}: {ns:?}");
    }
    // Closed shards are checkpointed as finished, with their parents recorded.
    let leases = stream.leases().await;
    assert_eq!(leases[&parent]["checkpoint"].as_s().unwrap(), "SHARD_END");
    for child in &children {
        assert_eq!(leases[child]["checkpoint"].as_s().unwrap(), "SHARD_END");
        assert_eq!(
            leases[child]["parentShardIds"].as_ss().unwrap(),
            &vec![parent.clone()]
        );
    }
    let merged = shards
        .keys()
        .find(|id| **id != parent && !children.contains(id))
        .unwrap();
    assert_ne!(leases[merged]["checkpoint"].as_s().unwrap(), "SHARD_END");

    let (summary, _) = stream.read("", &FaultPlan::new()).await;
    assert_eq!(
        summary.counts.records, 0,
        "a rerun reads nothing again: {summary:?}"
    );
}

#[tokio::test]
async fn a_lease_table_holding_another_streams_checkpoints_is_refused() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let first = Stream::create(&endpoint, 1).await;
    first.put(0, 3).await;
    first.read("", &FaultPlan::new()).await;
    // Same shard ids, another stream: reusing the checkpoints would skip its records.
    let mut second = Stream::create(&endpoint, 1).await;
    second.checkpoints = first.checkpoints.clone();
    second.put(0, 5).await;
    let (summary, sink) = second.read("", &FaultPlan::new()).await;
    assert!(sink.records().is_empty());
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.contains(&format!("holds the checkpoints of stream `{}`", first.name))),
        "{summary:?}"
    );
}

/// A daemon (no `--until-caught-up`) follows a split that happens while it runs.
#[tokio::test]
async fn a_running_daemon_follows_a_split_to_the_children() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let stream = Stream::create_on(&kinesis_local, &moto, 1).await;
    let key = |i: usize| format!("key-{}", i % 8);
    stream.put_keyed(0, 20, key).await;
    let daemon = stream
        .daemon("poll_interval = \"100ms\"\ncheckpoint_interval = \"1s\"")
        .await;
    let sink = daemon.sink.clone();
    let until_stored = |n: usize| {
        let sink = sink.clone();
        async move {
            for _ in 0..300 {
                if sink.records().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{} of {n} records stored after 30 s", sink.records().len());
        }
    };
    until_stored(20).await;

    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "170141183460469231731687303715884105728")
        .await;
    stream.put_keyed(20, 40, key).await;
    until_stored(40).await;

    let (summary, sink) = daemon.stop().await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..40).collect::<Vec<_>>());
    let leases = stream.leases().await;
    assert_eq!(leases[&parent]["checkpoint"].as_s().unwrap(), "SHARD_END");
    assert_eq!(
        leases.len(),
        3,
        "the parent and its two children: {leases:?}"
    );
    assert!(
        leases.values().all(|l| !l.contains_key("leaseOwner")),
        "released on stop"
    );
}

/// Children whose parent another worker holds are not kept (they could not be read here).
#[tokio::test]
async fn children_of_a_parent_held_elsewhere_are_let_go() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    // Two shards: the first is split while another worker holds it; the second keeps this
    // daemon running.
    let stream = Stream::create_on(&kinesis_local, &moto, 2).await;
    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "85070591730234615865843651857942052864")
        .await;
    // The lease table exists, and a live worker holds the parent.
    let key = [("leaseKey", aws_sdk_dynamodb::types::ScalarAttributeType::S)];
    testing::create_table(&stream.dynamodb, &stream.checkpoints, &key).await;
    let expires = chrono::Utc::now().timestamp_millis() + 60_000;
    stream
        .dynamodb
        .put_item()
        .table_name(&stream.checkpoints)
        .item("leaseKey", AttributeValue::S(parent.clone()))
        .item("leaseOwner", AttributeValue::S("other-worker".into()))
        .item("leaseCounter", AttributeValue::N("1".into()))
        .item("leaseExpiresAt", AttributeValue::N(expires.to_string()))
        .send()
        .await
        .expect("lease the parent elsewhere");

    // A daemon: what it holds while running is what matters (a one-shot run releases all).
    let daemon = stream.daemon("").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leases = stream.leases().await;
    assert_eq!(
        leases[&parent]["leaseOwner"].as_s().unwrap(),
        "other-worker"
    );
    let children: Vec<String> = stream
        .shards()
        .await
        .into_iter()
        .filter(|(_, (parents, _))| parents.contains(&parent))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(children.len(), 2);
    for child in &children {
        assert!(
            !leases[child].contains_key("leaseOwner"),
            "{child} let go: {:?}",
            leases[child]
        );
    }
    let (summary, sink) = daemon.stop().await;
    assert!(summary.is_success(), "{summary:?}");
    assert!(
        sink.records().is_empty(),
        "neither the parent nor its children are read here"
    );
}

/// Waits (up to `within`) until `done` holds, checking every 100 ms.
async fn eventually(within: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_reads_failed_records_again_until_the_sink_is_back_and_loses_none() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    let sink = OutageSink::down();
    // Records fail fast: two attempts within 100 ms, then Failed.
    let retry = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        max_elapsed: Duration::from_millis(100),
        on_exhausted: OnExhausted::Fail,
    };
    let pipeline = Pipeline::new(
        "test",
        Vec::new(),
        Arc::new(sink.clone()),
        Arc::new(MemorySink::default()),
        BatchSettings::default(),
        retry,
    );
    let daemon = stream
        .daemon_with(
            "checkpoint_interval = \"500ms\"\nlease_duration = \"3s\"\npoll_interval = \"200ms\"",
            pipeline,
            sink.inner.clone(),
        )
        .await;
    let placed = stream.put_placed(0, 30).await;
    let last = placed.last().cloned().unwrap().1;
    // The records fail, more than once: the shard is read again after each failure.
    assert!(
        eventually(Duration::from_secs(20), async || sink.refused() >= 60).await,
        "refused {}",
        sink.refused()
    );
    assert!(sink.inner.records().is_empty());
    sink.set_down(false);
    let all_stored = eventually(Duration::from_secs(30), async || {
        numbers(&sink.inner)
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 30
    })
    .await;
    assert!(all_stored, "stored {:?}", numbers(&sink.inner));
    // The checkpoint reaches the last record, without a restart.
    let reached = eventually(Duration::from_secs(10), async || {
        let leases = stream.leases().await;
        leases
            .values()
            .next()
            .and_then(|l| l.get("checkpoint"))
            .and_then(|c| c.as_s().ok())
            .is_some_and(|c| *c == last)
    })
    .await;
    assert!(reached, "{:?}", stream.leases().await);
    let (summary, _) = daemon.stop().await;
    assert!(summary.counts.failed > 0, "{summary:?}");
}
