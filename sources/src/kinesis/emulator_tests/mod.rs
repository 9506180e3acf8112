//! The Kinesis source against the emulators (moto; kinesis-local where shards must close):
//! reading (`reading`) and sharing a stream through the lease table (`leases`). The helpers here
//! make streams, run the source in the background and play another worker.

mod aggregated;
mod leases;
mod reading;

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

    /// The same stream, read by another pipeline: its own lease table.
    fn with_own_checkpoints(&self) -> Self {
        Self {
            kinesis: self.kinesis.clone(),
            dynamodb: self.dynamodb.clone(),
            name: self.name.clone(),
            checkpoints: unique("checkpoints"),
            endpoint: self.endpoint.clone(),
            checkpoint_endpoint: self.checkpoint_endpoint.clone(),
        }
    }

    /// The stream's ARN.
    async fn arn(&self) -> String {
        self.kinesis
            .describe_stream_summary()
            .stream_name(&self.name)
            .send()
            .await
            .expect("describe the stream")
            .stream_description_summary()
            .expect("a summary")
            .stream_arn()
            .to_owned()
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
        self.daemon_with(extra, pipeline, sink, &FaultPlan::new())
            .await
    }

    /// A daemon running `pipeline`, whose records end in `sink`.
    async fn daemon_with(
        &self,
        extra: &str,
        pipeline: Pipeline,
        sink: MemorySink,
        plan: &FaultPlan,
    ) -> Daemon {
        let ctx = testing::context("test", plan);
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

    /// The shards `parent` gave way to, in order of id.
    async fn children_of(&self, parent: &str) -> Vec<String> {
        self.shards()
            .await
            .into_iter()
            .filter(|(_, (parents, _))| parents.iter().any(|p| p == parent))
            .map(|(id, _)| id)
            .collect()
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
        // The summary counts the source's calls, as a pipeline built from a file does.
        let (pipeline, _) = sink_pipeline(sink);
        let pipeline = pipeline.with_api_calls(ctx.api_calls.clone());
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

/// Another worker of the stream, following the KCL protocol as `../shared/KCL.md` has it: it
/// holds its leases by bumping `leaseCounter` every `every` (on condition it still owns them),
/// until stopped; nothing of it reads `leaseExpiresAt`.
struct FakeWorker {
    owner: String,
    running: tokio::task::JoinHandle<()>,
    stop: Shutdown,
}

impl FakeWorker {
    /// Takes `shards`' leases (creating them when missing) as `owner` and renews them.
    async fn hold(stream: &Stream, owner: &str, shards: &[String], every: Duration) -> Self {
        for shard in shards {
            stream
                .dynamodb
                .update_item()
                .table_name(&stream.checkpoints)
                .key("leaseKey", AttributeValue::S(shard.clone()))
                .update_expression(
                    "SET leaseOwner = :me, leaseCounter = if_not_exists(leaseCounter, :zero) + :one",
                )
                .expression_attribute_values(":me", AttributeValue::S(owner.into()))
                .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .send()
                .await
                .expect("take a lease as the other worker");
        }
        let (client, table, me, shards) = (
            stream.dynamodb.clone(),
            stream.checkpoints.clone(),
            owner.to_owned(),
            shards.to_vec(),
        );
        let stop = Shutdown::default();
        let stopped = stop.clone();
        let running = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.triggered() => return,
                }
                for shard in &shards {
                    // A refused renewal means the lease was taken: a real worker lets it go.
                    let _ = client
                        .update_item()
                        .table_name(&table)
                        .key("leaseKey", AttributeValue::S(shard.clone()))
                        .update_expression("SET leaseCounter = leaseCounter + :one")
                        .condition_expression("leaseOwner = :me")
                        .expression_attribute_values(":me", AttributeValue::S(me.clone()))
                        .expression_attribute_values(":one", AttributeValue::N("1".into()))
                        .send()
                        .await;
                }
            }
        });
        Self {
            owner: owner.to_owned(),
            running,
            stop,
        }
    }

    /// Stops renewing (a crash: the leases stay owned until others see them expire).
    async fn stop(self) {
        self.stop.trigger();
        self.running.await.expect("the fake worker stops");
    }
}

/// A lease item as the Java KCL (2.x, with 3.x's extra attributes) writes it.
async fn put_kcl_lease(stream: &Stream, shard: &str, owner: Option<&str>, checkpoint: &str) {
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());
    let mut put = stream
        .dynamodb
        .put_item()
        .table_name(&stream.checkpoints)
        .item("leaseKey", s(shard))
        .item("leaseCounter", n("7"))
        .item("checkpoint", s(checkpoint))
        .item("checkpointSubSequenceNumber", n("0"))
        .item("ownerSwitchesSinceCheckpoint", n("0"))
        .item("entityType", s("LEASE"))
        .item("throughputKBps", n("0.002952"))
        .item("startingHashKey", s("0"))
        .item(
            "endingHashKey",
            s("340282366920938463463374607431768211455"),
        );
    if let Some(owner) = owner {
        put = put.item("leaseOwner", s(owner));
    }
    put.send().await.expect("put a KCL lease");
}
