//! The Waze job's AWS world for one test: stream, table, parameter and queue, made by
//! `scripts/waze-on-moto.py` (the one definition the scripts use too), with clients to fill and
//! inspect them.

use std::collections::HashMap;
use std::process::Command;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use sluice_core::aws::testing::{self, unique};

use crate::{root, run, sluice};

pub const BATCH_ID: &str = "batch-2026-11-24-0007";

/// A stream, table, parameter and queue of the emulator's, made for one test.
pub struct World {
    /// moto's endpoint (every service but, in [`World::create_on`], Kinesis).
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
    /// A world on moto with a stream of `shards` shards.
    pub async fn create(endpoint: &str, shards: i32) -> Self {
        Self::create_on(endpoint, endpoint, shards).await
    }

    /// A world whose stream is on `kinesis` (kinesis-local), the rest on `moto`.
    pub async fn create_on(kinesis: &str, moto: &str, shards: i32) -> Self {
        let python = root().join(".venv/bin/python");
        let out = Command::new(&python)
            .current_dir(root())
            .args(["scripts/waze-on-moto.py", moto, "--shards"])
            .arg(shards.to_string())
            .args(["--kinesis-endpoint", kinesis, "--batch-id", BATCH_ID])
            .output()
            .unwrap_or_else(|e| {
                panic!("{} runs (scripts/test installs it): {e}", python.display())
            });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "waze-on-moto.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exports: HashMap<&str, String> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(name, value)| (name, serde_json::from_str(value).expect("a JSON string")))
            .collect();
        let table_arn = &exports["DDB_CURATED_RECORDS_TABLE_ARN"];
        Self {
            endpoint: moto.to_owned(),
            kinesis: testing::client(kinesis).await,
            dynamodb: testing::client(moto).await,
            sqs: testing::client(moto).await,
            stream: exports["KINESIS_STREAM"].clone(),
            table: table_arn
                .rsplit('/')
                .next()
                .expect("a table ARN")
                .to_owned(),
            parameter: exports["LATEST_BATCH_ID"].clone(),
            queue_url: exports["DLQ_QUEUE_URL"].clone(),
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
        Self::summary_of(&mut self.run_command("json"))
    }

    /// Runs `cmd` (a [`World::run_command`] with `json` summaries) and returns its summary,
    /// failing the test if the run did not exit 0.
    pub fn summary_of(cmd: &mut Command) -> Value {
        let (out, stdout, stderr) = run(cmd);
        assert!(out.status.success(), "sluice failed: {stderr}\n{stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    pub async fn put(&self, payloads: &[Vec<u8>]) -> Vec<Put> {
        let records = payloads
            .iter()
            .map(|p| (p.clone(), format!("pk-{}", fastrand::u64(..))))
            .collect();
        let placed = testing::put_records(&self.kinesis, &self.stream, records).await;
        payloads
            .iter()
            .zip(placed)
            .map(|(payload, (shard_id, sequence_number))| Put {
                payload: payload.clone(),
                shard_id,
                sequence_number,
            })
            .collect()
    }

    pub async fn items(&self) -> Vec<HashMap<String, AttributeValue>> {
        testing::scan_all(&self.dynamodb, &self.table).await
    }

    /// Every message in the DLQ (received, then deleted).
    pub async fn dead_letters(&self) -> Vec<Value> {
        testing::receive_all(&self.sqs, &self.queue_url)
            .await
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).expect("a JSON envelope"))
            .collect()
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

pub fn bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// A KPL aggregated record's data holding `users` (partition key, data), made by AWS's own
/// aggregation library for Python (`aws-kinesis-agg`, installed by `scripts/test`): an encoder
/// independent of sluice's decoder.
pub fn kpl_aggregate(users: &[(String, Vec<u8>)]) -> Vec<u8> {
    use base64::Engine;
    use std::io::Write;
    let b64 = base64::engine::general_purpose::STANDARD;
    let python = match std::env::var("SLUICE_TEST_KPL_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!("SLUICE_TEST_KPL_PYTHON is not set; run the tests with `bash scripts/test`"),
    };
    let input: Vec<Value> = users
        .iter()
        .map(|(key, data)| json!([key, b64.encode(data)]))
        .collect();
    let script = r#"
import base64, json, sys
import aws_kinesis_agg.aggregator as agg
a = agg.RecordAggregator()
for key, data in json.load(sys.stdin):
    assert a.add_user_record(key, base64.b64decode(data)) is None, "more than one record's worth"
print(base64.b64encode(a.clear_and_get().get_contents()[2]).decode())
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} runs: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(Value::from(input).to_string().as_bytes())
        .expect("written");
    let out = child.wait_with_output().expect("aggregated");
    assert!(out.status.success(), "aws-kinesis-agg failed");
    b64.decode(String::from_utf8_lossy(&out.stdout).trim())
        .expect("base64 from the aggregator")
}

/// The item id sluice must give user record `sub` of a KPL aggregate at `put`'s position.
pub fn expected_sub_id(stream: &str, put: &Put, sub: usize) -> String {
    let namespace = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:sluice:record");
    let name = format!("{stream}/{}/{}.{sub}", put.shard_id, put.sequence_number);
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}
