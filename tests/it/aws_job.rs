//! The Waze persist job on AWS (`pipelines/waze-persist.toml`), end to end against the emulator:
//! Kinesis → SSM batch id → DynamoDB, malformed records → SQS.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use base64::Engine;
use serde_json::{json, Value};
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, moto_endpoint, unique};
use sluice_core::{Loader, Progress};

use crate::{root, run, sluice};

pub const BATCH_ID: &str = "batch-2026-11-24-0007";

/// A stream, table, parameter and queue of the emulator's, made for one test.
pub struct World {
    pub endpoint: String,
    pub kinesis: aws_sdk_kinesis::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub stream: String,
    pub table: String,
    pub parameter: String,
    pub queue_url: String,
    pub checkpoints: String,
}

/// What PutRecords answered for one record.
#[derive(Debug, Clone)]
pub struct Put {
    pub payload: Vec<u8>,
    pub shard_id: String,
    pub sequence_number: String,
}

impl World {
    pub async fn create(endpoint: &str, shards: i32) -> Self {
        let kinesis = testing::client(endpoint).await;
        let dynamodb = testing::client(endpoint).await;
        let sqs = testing::client(endpoint).await;
        let ssm = testing::client(endpoint).await;
        let stream = unique("waze");
        testing::create_stream(&kinesis, &stream, shards).await;
        let table = unique("curated-records");
        testing::create_table(
            &dynamodb,
            &table,
            &[("CurationRecordId", ScalarAttributeType::S)],
        )
        .await;
        let parameter = format!("/sdc/{}", unique("latest-batch-id"));
        testing::put_parameter(&ssm, &parameter, BATCH_ID).await;
        let queue_url = testing::create_queue(&sqs, &unique("waze-dlq"), &[]).await;
        Self {
            endpoint: endpoint.to_owned(),
            kinesis,
            dynamodb,
            sqs,
            stream,
            table,
            parameter,
            queue_url,
            checkpoints: unique("checkpoints"),
        }
    }

    /// The seed's variables (the table as an ARN, as the seed passes it) and the emulator's.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KINESIS_STREAM", self.stream.clone()),
            ("LATEST_BATCH_ID", self.parameter.clone()),
            (
                "DDB_CURATED_RECORDS_TABLE_ARN",
                format!(
                    "arn:aws:dynamodb:us-east-1:123456789012:table/{}",
                    self.table
                ),
            ),
            ("DLQ_QUEUE_URL", self.queue_url.clone()),
            ("AWS_REGION", testing::REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("SLUICE__SOURCE__CHECKPOINT_TABLE", self.checkpoints.clone()),
        ]
    }

    /// `sluice run pipelines/waze-persist.toml --until-caught-up --summary FORMAT`.
    pub fn run_command(&self, summary: &str) -> Command {
        let mut cmd = sluice();
        cmd.args([
            "run",
            "pipelines/waze-persist.toml",
            "--until-caught-up",
            "--summary",
            summary,
            "--no-progress",
        ]);
        for (name, value) in self.variables() {
            cmd.env(name, value);
        }
        cmd
    }

    /// Runs the job and returns its summary, failing the test if the run did not exit 0.
    pub fn run_job(&self) -> Value {
        let (out, stdout, stderr) = run(&mut self.run_command("json"));
        assert!(out.status.success(), "sluice failed: {stderr}\n{stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    pub async fn put(&self, payloads: &[Vec<u8>]) -> Vec<Put> {
        let mut puts = Vec::new();
        for chunk in payloads.chunks(500) {
            let entries = chunk
                .iter()
                .map(|p| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(p.clone()))
                        .partition_key(format!("pk-{}", fastrand::u64(..)))
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .kinesis
                .put_records()
                .stream_name(&self.stream)
                .set_records(Some(entries))
                .send()
                .await
                .expect("put records");
            assert_eq!(out.failed_record_count(), Some(0));
            for (p, r) in chunk.iter().zip(out.records()) {
                puts.push(Put {
                    payload: p.clone(),
                    shard_id: r.shard_id().unwrap().to_owned(),
                    sequence_number: r.sequence_number().unwrap().to_owned(),
                });
            }
        }
        puts
    }

    pub async fn items(&self) -> Vec<HashMap<String, AttributeValue>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamodb
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return items,
            }
        }
    }

    /// Every message in the DLQ (received, then deleted).
    pub async fn dead_letters(&self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive");
            if received.messages().is_empty() {
                return out;
            }
            for m in received.messages() {
                out.push(serde_json::from_str(m.body().unwrap()).expect("a JSON envelope"));
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }
}

/// The item id sluice must give a record: uuid v5 of stream name, shard and sequence number.
pub fn expected_id(stream: &str, put: &Put) -> String {
    let namespace = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:sluice:record");
    let name = format!("{stream}/{}/{}", put.shard_id, put.sequence_number);
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

pub fn waze_payload(i: usize) -> Value {
    let state = ["MI", "IN", "WI", "OH"][i % 4];
    let table = ["alert", "jam", "irregularity"][i % 3];
    json!({
        "state": state,
        "table-name": table,
        "num-records": (1000 + i * 7).to_string(),
        "is-historical": if i.is_multiple_of(5) { "true" } else { "false" },
        "year": "2026",
        "month": format!("{:02}", 1 + i % 12),
        "bucket-name": "dev-dot-sdc-curated-911061262852-us-east-1",
        "s3-key": format!("waze/content/state=MI/table=alert/year=2026/file_{i:05}.csv.gz"),
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn s(item: &HashMap<String, AttributeValue>, k: &str) -> String {
    item[k]
        .as_s()
        .unwrap_or_else(|_| panic!("`{k}` is a string: {:?}", item[k]))
        .clone()
}

fn count(summary: &Value, key: &str) -> u64 {
    summary["counts"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("counts.{key}: {summary}"))
}

fn calls(summary: &Value, service: &str) -> u64 {
    summary["api_calls"]
        .as_object()
        .expect("api_calls")
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{service}.")))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_waze_job_stores_valid_records_dead_letters_malformed_ones_and_resumes_from_checkpoints(
) {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 2).await;

    let mut payloads: Vec<Vec<u8>> = (0..200).map(|i| bytes(&waze_payload(i))).collect();
    for i in 0..30 {
        let mut other = waze_payload(i);
        other["s3-key"] = json!(format!("other/content/file_{i}.csv.gz"));
        payloads.push(bytes(&other));
    }
    let mut missing_bucket = waze_payload(999);
    missing_bucket
        .as_object_mut()
        .unwrap()
        .remove("bucket-name");
    let malformed: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "decode"),
        (b"[1, 2, 3]".to_vec(), "decode"),
        (vec![0xff, 0xfe, 0x7b], "decode"),
        (b"   ".to_vec(), "decode"),
        (b"{\"state\": \"MI\"}".to_vec(), "enrich:filter"),
        (bytes(&missing_bucket), "enrich:fields"),
    ];
    payloads.extend(malformed.iter().map(|(p, _)| p.clone()));
    fastrand::shuffle(&mut payloads);
    let puts = world.put(&payloads).await;
    assert_eq!(
        puts.iter()
            .map(|p| &p.shard_id)
            .collect::<BTreeSet<_>>()
            .len(),
        2,
        "records landed on both shards"
    );

    let summary = world.run_job();
    assert_eq!(count(&summary, "records"), 236, "{summary}");
    assert_eq!(count(&summary, "stored"), 200);
    assert_eq!(count(&summary, "skipped"), 30);
    assert_eq!(count(&summary, "dead_lettered"), 6);
    assert_eq!(count(&summary, "failed"), 0);

    // The table holds exactly the valid waze/ records, with the seed's attributes, all strings.
    let items = world.items().await;
    let by_id: HashMap<String, &HashMap<String, AttributeValue>> = items
        .iter()
        .map(|i| (s(i, "CurationRecordId"), i))
        .collect();
    assert_eq!(by_id.len(), 200);
    let seed_attributes: BTreeSet<&str> = [
        "CurationRecordId",
        "BatchId",
        "DataTableName",
        "S3Key",
        "State",
        "TotalNumCuratedRecords",
        "IsHistorical",
        "Year",
        "Month",
    ]
    .into();
    for put in &puts {
        let Ok(payload) = serde_json::from_slice::<Value>(&put.payload) else {
            continue;
        };
        let valid = payload["s3-key"]
            .as_str()
            .is_some_and(|k| k.starts_with("waze/"))
            && payload.get("bucket-name").is_some();
        let id = expected_id(&world.stream, put);
        if !valid {
            assert!(!by_id.contains_key(&id), "{payload} must not be stored");
            continue;
        }
        let item = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{payload} stored as {id}"));
        assert_eq!(
            item.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            seed_attributes
        );
        assert_eq!(s(item, "BatchId"), BATCH_ID);
        assert_eq!(
            s(item, "DataTableName"),
            payload["table-name"].as_str().unwrap()
        );
        assert_eq!(
            s(item, "S3Key"),
            format!(
                "s3://{}/{}",
                payload["bucket-name"].as_str().unwrap(),
                payload["s3-key"].as_str().unwrap()
            )
        );
        assert_eq!(s(item, "State"), payload["state"].as_str().unwrap());
        assert_eq!(
            s(item, "TotalNumCuratedRecords"),
            payload["num-records"].as_str().unwrap()
        );
        assert_eq!(
            s(item, "IsHistorical"),
            payload["is-historical"].as_str().unwrap()
        );
        assert_eq!(s(item, "Year"), "2026");
        assert_eq!(s(item, "Month"), payload["month"].as_str().unwrap());
    }

    // The DLQ holds exactly the malformed records, each with its reason and original payload.
    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), malformed.len(), "{dead:#?}");
    for (payload, stage) in &malformed {
        let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
        let envelope = dead
            .iter()
            .find(|d| d["payload_base64"] == encoded)
            .unwrap_or_else(|| panic!("{:?} dead-lettered", String::from_utf8_lossy(payload)));
        assert_eq!(envelope["stage"], *stage, "{envelope}");
        assert_eq!(envelope["pipeline"], "waze-persist");
        assert!(!envelope["error"]["message"].as_str().unwrap().is_empty());
        let put = puts.iter().find(|p| &p.payload == payload).unwrap();
        assert_eq!(envelope["source"]["stream"], world.stream.as_str());
        assert_eq!(envelope["source"]["shard_id"], put.shard_id.as_str());
        assert_eq!(
            envelope["source"]["sequence_number"],
            put.sequence_number.as_str()
        );
    }

    // 1000 more valid records: the request counts the seed would need 1000 of each for.
    let more: Vec<Vec<u8>> = (1000..2000).map(|i| bytes(&waze_payload(i))).collect();
    world.put(&more).await;
    let summary = world.run_job();
    assert_eq!(
        count(&summary, "records"),
        1000,
        "only the new records: {summary}"
    );
    assert_eq!(count(&summary, "stored"), 1000);
    eprintln!("calls for 1000 records: {}", summary["api_calls"]);
    let dynamodb = calls(&summary, "DynamoDB");
    assert!(
        dynamodb <= 45,
        "{dynamodb} DynamoDB calls for 1000 records: {}",
        summary["api_calls"]
    );
    let refresh_intervals = 1 + (summary["elapsed"].as_f64().unwrap() / 5.0) as u64;
    assert!(
        calls(&summary, "SSM") <= refresh_intervals,
        "{}",
        summary["api_calls"]
    );
    assert_eq!(world.items().await.len(), 1200);

    // Running again reads nothing new, stores nothing new and sends nothing new.
    let summary = world.run_job();
    assert_eq!(count(&summary, "records"), 0, "{summary}");
    assert_eq!(world.items().await.len(), 1200);
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn persist_records_0_reads_and_counts_but_writes_nothing_and_says_so() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 1).await;
    world
        .put(&(0..20).map(|i| bytes(&waze_payload(i))).collect::<Vec<_>>())
        .await;
    let mut cmd = world.run_command("text");
    cmd.env("PERSIST_RECORDS", "0");
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("the sink is disabled"), "{stdout}");
    assert!(stdout.contains("sink disabled 20"), "{stdout}");
    assert!(world.items().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sqs_outage_leaves_records_failed_behind_the_checkpoint_and_a_rerun_delivers_them() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 1).await;
    let mut payloads: Vec<Vec<u8>> = (0..10).map(|i| bytes(&waze_payload(i))).collect();
    payloads.insert(4, b"not json".to_vec());
    let puts = world.put(&payloads).await;
    let variables: HashMap<&str, String> = world.variables().into_iter().collect();
    let load = || {
        let vars = variables.clone();
        let mut config = Loader::new()
            .variables(move |k| vars.get(k).cloned())
            .load(root().join("pipelines/waze-persist.toml"))
            .expect("the pipeline file loads");
        // `SLUICE__` overrides come from the environment, which this process does not set.
        config.source = serde_json::from_value(json!({
            "type": "kinesis", "stream": world.stream, "checkpoint_table": world.checkpoints,
            "endpoint_url": world.endpoint,
        }))
        .unwrap();
        config
    };
    let plan = FaultPlan::new();
    plan.fail_always("SendMessageBatch", Fault::ServerError);
    let run_once = |plan: FaultPlan| {
        let config = load();
        async move {
            let mut ctx = testing::context("waze-persist", &plan);
            ctx.until_caught_up = true;
            let built = config.build(&ctx).await.expect("builds");
            let source = built.source.expect("a source");
            built
                .pipeline
                .run(source, std::sync::Arc::new(Progress::default()))
                .await
        }
    };

    let summary = run_once(plan.clone()).await;
    assert_eq!(summary.counts.failed, 1, "{summary:?}");
    let shard = &puts[0].shard_id;
    // The checkpoint stops just before the record that could not be dead-lettered.
    assert_eq!(
        summary.checkpoints.get(shard).map(|s| s.to_string()),
        Some(puts[3].sequence_number.clone()),
        "{summary:?}"
    );
    assert!(world.dead_letters().await.is_empty());

    plan.heal("SendMessageBatch");
    let summary = run_once(plan).await;
    assert_eq!(summary.counts.failed, 0, "{summary:?}");
    assert_eq!(summary.counts.dead_lettered, 1);
    // Redelivered from the checkpoint: the failed record and the ones after it.
    assert_eq!(summary.counts.records, 7);
    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]["source"]["sequence_number"],
        puts[4].sequence_number.as_str()
    );
    assert_eq!(
        world.items().await.len(),
        10,
        "redelivered records overwrite, never duplicate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_pipeline_files_validate_against_the_emulator_and_name_what_is_missing() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 1).await;
    for name in crate::validate::AWS_PIPELINES {
        let mut cmd = sluice();
        cmd.arg("validate").arg(format!("pipelines/{name}"));
        for (k, v) in world.variables() {
            cmd.env(k, v);
        }
        let (out, stdout, stderr) = run(&mut cmd);
        assert!(out.status.success(), "{name}: {stdout}{stderr}");
        assert!(stdout.contains("valid"), "{stdout}");
    }
    // Validation reads the resources it names, so a wrong name is caught before any run.
    let mut cmd = sluice();
    cmd.args(["validate", "pipelines/waze-persist.toml"]);
    for (k, v) in world.variables() {
        cmd.env(k, v);
    }
    cmd.env("KINESIS_STREAM", "no-such-stream");
    let (out, _, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Kinesis stream `no-such-stream`")
            && stderr.contains("ResourceNotFoundException"),
        "{stderr}"
    );
    // A mapping that drops the table's key is caught at start-up, before any record is read.
    let text = std::fs::read_to_string(root().join("pipelines/waze-persist.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = crate::pipeline_file(
        dir.path(),
        "no-key.toml",
        &text.replacen("keep_only = [\"CurationRecordId\", ", "keep_only = [", 1),
    );
    let mut cmd = sluice();
    cmd.arg("validate").arg(&broken);
    for (k, v) in world.variables() {
        cmd.env(k, v);
    }
    let (out, _, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`sink.table`") && stderr.contains("keyed by `CurationRecordId`"),
        "{stderr}"
    );
    // Without the seed's variables the error says which one is unset.
    let (out, _, stderr) = run(sluice().args(["validate", "pipelines/waze-persist.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("environment variable `")
            && stderr.contains("is not set and has no default"),
        "{stderr}"
    );
}
