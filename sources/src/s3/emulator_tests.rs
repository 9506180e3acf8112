//! The S3 source against the emulator (moto): objects in key order, gzip, folder markers, and
//! a failed object read again without the checkpoint ever passing it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use sluice_core::aws::faults::FaultPlan;
use sluice_core::aws::testing::{self, moto_endpoint, unique};
use sluice_core::testkit::{quick_retry, MemorySink, OutageSink};
use sluice_core::{BatchSettings, Pipeline, Progress, SourceConfig};

use super::S3SourceConfig;

struct Bucket {
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    name: String,
    checkpoints: String,
    endpoint: String,
}

impl Bucket {
    async fn create(endpoint: &str) -> Self {
        let s3: aws_sdk_s3::Client = testing::client(endpoint).await;
        let name = testing::create_bucket(&s3).await;
        Self {
            s3,
            dynamodb: testing::client(endpoint).await,
            name,
            checkpoints: unique("checkpoints"),
            endpoint: endpoint.to_owned(),
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .expect("put");
    }

    fn config(&self) -> S3SourceConfig {
        use figment::providers::{Format, Toml};
        let text = format!(
            "bucket = \"{}\"\nprefix = \"in/\"\npoll_interval = \"100ms\"\n\
             checkpoint_table = \"{}\"\nendpoint_url = \"{}\"",
            self.name, self.checkpoints, self.endpoint
        );
        figment::Figment::from(Toml::string(&text))
            .extract()
            .expect("a valid source config")
    }

    async fn checkpoint(&self) -> Option<String> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.checkpoints)
            .key(
                "leaseKey",
                AttributeValue::S(format!("test:s3://{}/in/", self.name)),
            )
            .consistent_read(true)
            .send()
            .await
            .ok()?;
        out.item()?.get("checkpoint")?.as_s().ok().cloned()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn pipeline(sink: OutageSink) -> Pipeline {
    Pipeline::new(
        "test",
        Vec::new(),
        Arc::new(sink),
        Arc::new(MemorySink::default()),
        BatchSettings {
            max_records: 2,
            max_age: Duration::from_millis(50),
        },
        quick_retry(),
    )
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(tokio::time::Instant::now() < until, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_object_is_read_again_and_the_checkpoint_never_passes_it() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let bucket = Bucket::create(&endpoint).await;
    bucket.put("in/", Vec::new()).await;
    bucket
        .put(
            "in/a.jsonl",
            b"{\"k\":\"a1\"}\n{\"k\":\"a2\"}\n\n{\"k\":\"a4\"}\n".to_vec(),
        )
        .await;
    bucket
        .put("in/b.jsonl.gz", gzip(b"{\"k\":\"b1\"}\n{\"k\":\"b2\"}\n"))
        .await;
    bucket
        .put(
            "other/x.jsonl",
            b"{\"k\":\"not under the prefix\"}\n".to_vec(),
        )
        .await;

    let plan = FaultPlan::new();
    let ctx = testing::context("test", &plan);
    let source = bucket.config().build(&ctx).await.expect("builds");
    let sink = OutageSink::down();
    let progress = Arc::new(Progress::default());
    let running = {
        let (pipeline, progress) = (pipeline(sink.clone()), progress.clone());
        tokio::spawn(async move { pipeline.run(source, progress).await })
    };
    // The store is down: a's records fail past their retries, and a is read again, and fails
    // again; the checkpoint stays before a.
    eventually("a failed twice", async || progress.snapshot().failed >= 6).await;
    assert_eq!(bucket.checkpoint().await, None);
    assert!(sink.inner.records().is_empty());

    // Back up: a is read again, then b; a later object is picked up.
    sink.set_down(false);
    bucket.put("in/c.jsonl", b"{\"k\":\"c1\"}\n".to_vec()).await;
    eventually("every record stored", async || {
        sink.inner.records().len() >= 6
    })
    .await;
    eventually("the checkpoint at the last object", async || {
        bucket.checkpoint().await.as_deref() == Some("in/c.jsonl")
    })
    .await;
    ctx.shutdown.trigger();
    let summary = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("stops")
        .expect("runs");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.counts.stored, 6, "{summary:?}");
    let stored: Vec<(String, String, String)> = sink
        .inner
        .records()
        .iter()
        .map(|r| {
            (
                r.meta.shard_id.clone(),
                r.meta.sequence_number.to_string(),
                r.value["k"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let row = |o: &str, s: &str, k: &str| (o.to_owned(), s.to_owned(), k.to_owned());
    assert_eq!(
        stored,
        [
            row("in/a.jsonl", "1", "a1"),
            row("in/a.jsonl", "2", "a2"),
            row("in/a.jsonl", "4", "a4"),
            row("in/b.jsonl.gz", "1", "b1"),
            row("in/b.jsonl.gz", "2", "b2"),
            row("in/c.jsonl", "1", "c1"),
        ],
        "each record once, in key order, with its object and line"
    );
    assert!(sink.inner.records().iter().all(|r| r.meta.source == "s3"
        && r.meta.stream == bucket.name
        && r.meta.arrival_time.is_some()));

    // A pass from the checkpoint finds nothing new.
    let mut again = testing::context("test", &plan);
    again.until_caught_up = true;
    let source = bucket.config().build(&again).await.expect("builds");
    let sink = OutageSink::default();
    let summary = pipeline(sink.clone())
        .run(source, Arc::new(Progress::default()))
        .await;
    assert_eq!(summary.counts.records, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_pass_stops_at_a_failed_object_and_the_next_begins_there() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let bucket = Bucket::create(&endpoint).await;
    bucket.put("in/a.jsonl", b"{\"k\":\"a1\"}\n".to_vec()).await;
    bucket.put("in/b.jsonl", b"{\"k\":\"b1\"}\n".to_vec()).await;
    let plan = FaultPlan::new();
    let mut ctx = testing::context("test", &plan);
    ctx.until_caught_up = true;

    // a is stored; b fails: the pass ends with b unresolved and the checkpoint at a.
    let sink = OutageSink::default();
    struct DownAfter(OutageSink, usize);
    #[sluice_core::async_trait]
    impl sluice_core::Sink for DownAfter {
        async fn write(
            &self,
            batch: &[sluice_core::Record],
        ) -> Vec<Result<(), sluice_core::SinkError>> {
            if self.0.inner.records().len() >= self.1 {
                self.0.set_down(true);
            }
            self.0.write(batch).await
        }
    }
    let failing = Pipeline::new(
        "test",
        Vec::new(),
        Arc::new(DownAfter(sink.clone(), 1)),
        Arc::new(MemorySink::default()),
        BatchSettings::default(),
        quick_retry(),
    );
    let source = bucket.config().build(&ctx).await.expect("builds");
    let summary = failing.run(source, Arc::new(Progress::default())).await;
    assert_eq!(summary.counts.stored, 1, "{summary:?}");
    assert_eq!(summary.counts.failed, 1, "{summary:?}");
    assert_eq!(bucket.checkpoint().await.as_deref(), Some("in/a.jsonl"));

    let sink = OutageSink::default();
    let source = bucket.config().build(&ctx).await.expect("builds");
    let summary = pipeline(sink.clone())
        .run(source, Arc::new(Progress::default()))
        .await;
    assert_eq!(summary.counts.stored, 1, "{summary:?}");
    assert_eq!(
        sink.inner.values()[0]["k"],
        "b1",
        "only b, the object not done"
    );
    assert_eq!(bucket.checkpoint().await.as_deref(), Some("in/b.jsonl"));
}

/// Fails the record whose `k` is `bad` while told to, and stores the rest.
#[derive(Clone)]
struct FailsOne {
    inner: MemorySink,
    bad: &'static str,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

#[sluice_core::async_trait]
impl sluice_core::Sink for FailsOne {
    async fn write(
        &self,
        batch: &[sluice_core::Record],
    ) -> Vec<Result<(), sluice_core::SinkError>> {
        let failing = self.failing.load(std::sync::atomic::Ordering::SeqCst);
        let (bad, good): (Vec<_>, Vec<_>) = batch
            .iter()
            .enumerate()
            .partition(|(_, r)| failing && r.value["k"] == self.bad);
        let good: Vec<_> = good.into_iter().map(|(_, r)| r.clone()).collect();
        self.inner.write(&good).await;
        let mut answers = vec![Ok(()); batch.len()];
        for (i, _) in bad {
            answers[i] = Err(sluice_core::SinkError::Retryable(
                "down for this one".into(),
            ));
        }
        answers
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_read_again_goes_on_after_the_records_already_done() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let bucket = Bucket::create(&endpoint).await;
    let lines: String = (1..=5).map(|i| format!("{{\"k\":\"a{i}\"}}\n")).collect();
    bucket.put("in/a.jsonl", lines.into_bytes()).await;
    let plan = FaultPlan::new();
    let ctx = testing::context("test", &plan);
    let source = bucket.config().build(&ctx).await.expect("builds");
    let sink = FailsOne {
        inner: MemorySink::default(),
        bad: "a4",
        failing: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    let progress = Arc::new(Progress::default());
    let running = {
        let pipeline = Pipeline::new(
            "test",
            Vec::new(),
            Arc::new(sink.clone()),
            Arc::new(MemorySink::default()),
            BatchSettings {
                max_records: 2,
                max_age: Duration::from_millis(50),
            },
            quick_retry(),
        );
        let progress = progress.clone();
        tokio::spawn(async move { pipeline.run(source, progress).await })
    };
    // a1..a3 are done; a4 fails, is read again (from a4, not from a1) and fails again.
    eventually("a4 failed twice", async || progress.snapshot().failed >= 2).await;
    sink.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the checkpoint past a", async || {
        bucket.checkpoint().await.as_deref() == Some("in/a.jsonl")
    })
    .await;
    ctx.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("stops")
        .expect("runs");
    let stored: Vec<String> = sink
        .inner
        .values()
        .iter()
        .map(|v| v["k"].as_str().unwrap().to_owned())
        .collect();
    // a5 shared a4's batch, so it is written on every try; a1..a3 only once.
    let times = |k: &str| stored.iter().filter(|s| *s == k).count();
    assert_eq!(
        (times("a1"), times("a2"), times("a3"), times("a4")),
        (1, 1, 1, 1),
        "{stored:?}"
    );
    assert!(times("a5") >= 1, "{stored:?}");
}
