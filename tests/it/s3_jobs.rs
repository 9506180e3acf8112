//! The S3 pipelines on the emulator: the raw Waze feed from S3 objects into one DynamoDB table
//! per array, and a Kinesis stream archived to S3.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType};
use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;
use sluice_core::aws::testing::{self, moto_endpoint, unique};

use crate::daemon::{wait_until, Daemon};
use crate::feed_job::{Feed, ARRAYS};
use crate::{root, run, sluice};

fn credentials(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_REGION", testing::REGION.to_owned()),
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// The sample feed's snapshots, in name order: (file name, bytes).
fn snapshots() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("pipelines/samples/waze-feed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// BatchWriteItem calls the feed job makes for one snapshot: its elements in batches of 500,
/// each written 25 items per call whatever their tables.
fn calls_for(snapshot: &[u8]) -> u64 {
    let doc: Value = serde_json::from_slice(snapshot).unwrap();
    let n: usize = ARRAYS
        .iter()
        .map(|a| doc[*a].as_array().map_or(0, Vec::len))
        .sum();
    let mut calls = 0;
    let mut left = n;
    while left > 0 {
        let batch = left.min(500);
        calls += batch.div_ceil(25) as u64;
        left -= batch;
    }
    calls
}

struct FeedWorld {
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    overflow: String,
    bucket: String,
    tables: String,
    variables: Vec<(&'static str, String)>,
}

impl FeedWorld {
    async fn create(endpoint: &str) -> Self {
        let s3: aws_sdk_s3::Client = testing::client(endpoint).await;
        let dynamodb: aws_sdk_dynamodb::Client = testing::client(endpoint).await;
        let sqs: aws_sdk_sqs::Client = testing::client(endpoint).await;
        let bucket = testing::create_bucket(&s3).await;
        let tables = format!("{}_", unique("feed"));
        for array in ARRAYS {
            testing::create_table(
                &dynamodb,
                &format!("{tables}{array}"),
                &[("uuid", ScalarAttributeType::S)],
            )
            .await;
        }
        let queue_url = testing::create_queue(&sqs, &unique("feed-dlq"), &[]).await;
        let overflow = testing::create_bucket(&s3).await;
        let mut variables = credentials(endpoint);
        variables.extend([
            ("WAZE_FEED_BUCKET", bucket.clone()),
            ("WAZE_FEED_PREFIX", "feed/".to_owned()),
            ("WAZE_TABLE_PREFIX", tables.clone()),
            ("DLQ_QUEUE_URL", queue_url.clone()),
            ("DLQ_OVERFLOW_BUCKET", overflow.clone()),
            (
                "SLUICE__SOURCE__CHECKPOINT_TABLE",
                unique("feed-checkpoints"),
            ),
        ]);
        Self {
            s3,
            dynamodb,
            sqs,
            queue_url,
            overflow,
            bucket,
            tables,
            variables,
        }
    }

    /// Puts snapshot `n` of the sample under `feed/`, the last one gzipped.
    async fn upload(&self, n: usize) {
        let all = snapshots();
        let (name, bytes) = &all[n];
        let (key, body) = if n == all.len() - 1 {
            (format!("feed/{name}.gz"), gzip(bytes))
        } else {
            (format!("feed/{name}"), bytes.clone())
        };
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .expect("put");
    }

    fn run(&self) -> Value {
        let mut cmd = sluice();
        cmd.args([
            "run",
            "pipelines/waze-feed.toml",
            "--until-caught-up",
            "--summary",
            "json",
            "--no-progress",
        ]);
        for (k, v) in &self.variables {
            cmd.env(k, v);
        }
        let (out, stdout, stderr) = run(&mut cmd);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    async fn items(&self, array: &str) -> Vec<std::collections::HashMap<String, AttributeValue>> {
        testing::scan_all(&self.dynamodb, &format!("{}{array}", self.tables)).await
    }

    async fn counts(&self) -> Vec<usize> {
        let mut counts = Vec::new();
        for array in ARRAYS {
            counts.push(self.items(array).await.len());
        }
        counts
    }
}

fn calls(summary: &Value, name: &str) -> u64 {
    summary["api_calls"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_feed_job_stores_each_item_once_typed_and_a_second_run_writes_nothing() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = FeedWorld::create(&endpoint).await;
    for n in 0..snapshots().len() {
        world.upload(n).await;
    }
    // A broken snapshot bigger than a queue message (1 MiB, base64 in the envelope): one dead
    // letter, through the overflow bucket.
    let broken_key = "feed/waze-feed-2019-03-22T21-38-30Z.json";
    let mut broken = b"{\"startTimeMillis\": 1553290710000, \"alerts\": [".to_vec();
    while broken.len() < 900 * 1024 {
        broken.extend_from_slice(b"{\"uuid\": \"x\", \"type\": \"JAM\"}, ");
    }
    world
        .s3
        .put_object()
        .bucket(&world.bucket)
        .key(broken_key)
        .body(ByteStream::from(broken.clone()))
        .send()
        .await
        .expect("put");
    let mut validate = sluice();
    validate.args(["validate", "pipelines/waze-feed.toml"]);
    for (k, v) in &world.variables {
        validate.env(k, v);
    }
    let (out, stdout, stderr) = run(&mut validate);
    assert!(out.status.success(), "{stdout}{stderr}");

    let summary = world.run();
    let elements: u64 = snapshots()
        .iter()
        .map(|(_, b)| {
            let doc: Value = serde_json::from_slice(b).unwrap();
            ARRAYS
                .iter()
                .map(|a| doc[*a].as_array().map_or(0, Vec::len) as u64)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(summary["counts"]["stored"], elements, "{summary}");
    assert_eq!(summary["counts"]["dead_lettered"], 1, "{summary}");
    let letters = testing::receive_all(&world.sqs, &world.queue_url).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value =
        serde_json::from_str(letters[0].body().expect("a body")).expect("an envelope");
    assert_eq!(letter["stage"], "decode");
    let reason = letter["error"]["message"].as_str().unwrap();
    assert!(
        reason.contains(broken_key) && reason.contains("not a JSON document"),
        "{reason}"
    );
    let pointer = letter["payload_s3"]
        .as_str()
        .expect("the envelope is in the overflow bucket");
    let key = pointer
        .strip_prefix(&format!("s3://{}/", world.overflow))
        .unwrap_or_else(|| panic!("{pointer}"));
    let whole = testing::get_object(&world.s3, &world.overflow, key).await;
    let whole: Value = serde_json::from_slice(&whole).unwrap();
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        whole["payload_base64"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(payload, broken, "the snapshot is kept whole");
    let expected_calls: u64 = snapshots().iter().map(|(_, b)| calls_for(b)).sum();
    assert_eq!(
        calls(&summary, "DynamoDB.BatchWriteItem"),
        expected_calls,
        "writes go 25 items per call across tables: {summary}"
    );

    let feed = Feed::read(&root().join("pipelines/samples/waze-feed"));
    let expected: Vec<usize> = ARRAYS.iter().map(|a| feed.count(a)).collect();
    assert_eq!(world.counts().await, expected);
    let alerts = world.items("alerts").await;
    for item in &alerts {
        let uuid = item["uuid"].as_s().expect("uuid is S");
        let (latest, start, _) = &feed.latest["alerts"][uuid];
        assert_eq!(
            item["reliability"],
            AttributeValue::N(latest["reliability"].to_string()),
            "the latest snapshot's value, as a number"
        );
        let AttributeValue::M(location) = &item["location"] else {
            panic!("location is a map: {item:?}")
        };
        assert_eq!(
            location["x"],
            AttributeValue::N(latest["location"]["x"].to_string())
        );
        assert_eq!(
            item["feed_start_millis"],
            AttributeValue::N(start.to_string())
        );
    }
    let jams = world.items("jams").await;
    assert!(jams
        .iter()
        .all(|j| matches!(j["line"], AttributeValue::L(_))));
    assert!(jams
        .iter()
        .all(|j| feed.latest["jams"].contains_key(j["uuid"].as_s().expect("a jam's uuid as S"))));

    let again = world.run();
    assert_eq!(
        again["counts"]["records"], 0,
        "the checkpoint is past every object: {again}"
    );
    assert_eq!(calls(&again, "DynamoDB.BatchWriteItem"), 0, "{again}");
    assert_eq!(calls(&again, "S3.GetObject"), 0, "{again}");
    assert_eq!(world.counts().await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_feed_daemon_picks_up_a_new_object() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = FeedWorld::create(&endpoint).await;
    let all = snapshots();
    for n in 0..all.len() - 1 {
        world.upload(n).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::try_start_with(
        &root().join("pipelines/waze-feed.toml"),
        "feed-daemon",
        &[("SLUICE__SOURCE__POLL_INTERVAL", "300ms")],
        &world.variables,
        dir.path(),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|logs| panic!("never ready: {logs}"));

    // What the first snapshots hold, read from them alone.
    let first = tempfile::tempdir().unwrap();
    for (name, bytes) in &all[..all.len() - 1] {
        std::fs::write(first.path().join(name), bytes).unwrap();
    }
    let before = Feed::read(first.path());
    let before: Vec<usize> = ARRAYS.iter().map(|a| before.count(a)).collect();
    let rt = tokio::runtime::Handle::current();
    let counts = || tokio::task::block_in_place(|| rt.block_on(world.counts()));
    assert!(
        wait_until(Duration::from_secs(30), || counts() == before),
        "the objects there at the start: {:?} != {before:?}\n{}",
        counts(),
        daemon.logs()
    );

    world.upload(all.len() - 1).await;
    let feed = Feed::read(&root().join("pipelines/samples/waze-feed"));
    let after: Vec<usize> = ARRAYS.iter().map(|a| feed.count(a)).collect();
    assert!(
        wait_until(Duration::from_secs(30), || counts() == after),
        "the object put later: {:?} != {after:?}\n{}",
        counts(),
        daemon.logs()
    );
    let (status, summary) = daemon.stop();
    assert!(status.success(), "{summary}");
    assert_eq!(summary["counts"]["dead_lettered"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_job_writes_every_record_of_a_two_shard_stream_once_under_the_template() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let kinesis: aws_sdk_kinesis::Client = testing::client(&endpoint).await;
    let s3: aws_sdk_s3::Client = testing::client(&endpoint).await;
    let sqs: aws_sdk_sqs::Client = testing::client(&endpoint).await;
    let stream = unique("archive");
    testing::create_stream(&kinesis, &stream, 2).await;
    testing::wait_until_stream_active(&kinesis, &stream).await;
    let bucket = testing::create_bucket(&s3).await;
    let queue_url = testing::create_queue(&sqs, &unique("archive-dlq"), &[]).await;
    let payloads: Vec<Vec<u8>> = (0..300)
        .map(|i| serde_json::to_vec(&crate::aws_job::waze_payload(i)).unwrap())
        .collect();
    let records = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), format!("pk-{i}")))
        .collect();
    let puts = testing::put_records(&kinesis, &stream, records).await;
    let shards: std::collections::BTreeSet<&str> = puts.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(shards.len(), 2, "records on both shards");

    let archive_env = |cmd: &mut std::process::Command| {
        for (k, v) in credentials(&endpoint) {
            cmd.env(k, v);
        }
        cmd.env("KINESIS_STREAM", &stream)
            .env("ARCHIVE_BUCKET", &bucket)
            .env("DLQ_QUEUE_URL", &queue_url);
    };
    let mut validate = sluice();
    validate.args(["validate", "pipelines/kinesis-archive.toml"]);
    archive_env(&mut validate);
    let (out, stdout, stderr) = run(&mut validate);
    assert!(out.status.success(), "{stdout}{stderr}");

    let mut cmd = sluice();
    cmd.args([
        "run",
        "pipelines/kinesis-archive.toml",
        "--until-caught-up",
        "--summary",
        "json",
        "--no-progress",
    ]);
    archive_env(&mut cmd);
    cmd.env(
        "SLUICE__SOURCE__CHECKPOINT_TABLE",
        unique("archive-checkpoints"),
    );
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    let key_shape = |key: &str| -> Option<String> {
        // archive/STREAM/YYYY/MM/DD/HH/SHARD/POSITION-MD5.jsonl.gz
        let rest = key.strip_prefix(&format!("archive/{stream}/"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [y, m, d, h, shard, name] = parts[..] else {
            return None;
        };
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let (position, tail) = name.split_once('-')?;
        let ok = digits(y, 4)
            && digits(m, 2)
            && digits(d, 2)
            && digits(h, 2)
            && shard.starts_with("shardId-")
            && position.bytes().all(|b| b.is_ascii_digit())
            && tail.len() == 32 + ".jsonl.gz".len()
            && tail.ends_with(".jsonl.gz");
        ok.then(|| shard.to_owned())
    };
    let mut archived: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for object in listed.contents() {
        let key = object.key().unwrap();
        let shard = key_shape(key).unwrap_or_else(|| panic!("`{key}` follows the template"));
        let body = testing::get_object(&s3, &bucket, key).await;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .expect("gzip");
        for line in text.lines() {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            let bytes = serde_json::to_vec(&value).unwrap();
            let at = payloads
                .iter()
                .position(|p| serde_json::from_slice::<Value>(p).unwrap() == value);
            let at = at.unwrap_or_else(|| panic!("{line} was put"));
            assert_eq!(
                puts[at].0, shard,
                "a record is archived under its own shard"
            );
            *archived.entry(bytes).or_default() += 1;
        }
    }
    assert_eq!(archived.len(), payloads.len(), "every record archived");
    assert!(archived.values().all(|&n| n == 1), "each exactly once");
}
