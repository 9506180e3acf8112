//! `sluice test`: every shipped pipeline's unit tests pass with no network, a wrong expectation
//! fails with a readable diff, and the items it prints are those a real run writes.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use serde_json::{json, Value};
use sluice_core::aws::testing::moto_endpoint;

use crate::aws_job::{waze_payload, World, BATCH_ID};
use crate::{root, run, sluice};

/// Points every AWS endpoint at a closed port: any call would fail.
fn no_network(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"] {
        cmd.env_remove(name);
    }
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

#[test]
fn every_shipped_pipeline_has_unit_tests_that_pass_without_network() {
    let mut checked = 0;
    for (name, path) in crate::shipped_pipelines() {
        let tests = path.with_file_name(name.replace(".toml", ".tests.toml"));
        assert!(tests.is_file(), "{name} has unit tests beside it");
        let mut cmd = sluice();
        cmd.arg("test").arg(&path);
        let (out, stdout, stderr) = run(no_network(&mut cmd));
        assert!(out.status.success(), "{name}: {stdout}{stderr}");
        assert!(stdout.contains(" 0 failed"), "{stdout}");
        assert!(!stdout.contains("FAIL"), "{stdout}");
        checked += 1;
    }
    assert!(checked >= 5, "{checked} pipeline files");
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    let text =
        std::fs::read_to_string(root().join("pipelines/waze-persist.local.tests.toml")).unwrap();
    let wrong = text.replacen("BatchId = \"local-batch-0001\"", "BatchId = \"batch-9\"", 1);
    assert_ne!(text, wrong);
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("wrong.tests.toml");
    std::fs::write(&tests, wrong).unwrap();
    let (out, stdout, _) = run(sluice()
        .args(["test", "pipelines/waze-persist.local.toml", "--tests"])
        .arg(&tests));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  a curated Waze file"), "{stdout}");
    assert!(
        stdout.contains("item.BatchId: expected \"batch-9\", got \"local-batch-0001\""),
        "{stdout}"
    );
    assert!(stdout.contains("4 cases, 3 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_parameter_not_given_is_named_with_the_fix() {
    let mut cmd = sluice();
    cmd.args([
        "test",
        "pipelines/waze-persist.toml",
        "--input",
        "tests/fixtures/kinesis-event-mixed.json",
    ]);
    let (out, _, stderr) = run(no_network(&mut cmd));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--parameter LATEST_BATCH_ID=VALUE"),
        "{stderr}"
    );
}

/// An item as DynamoDB's JSON wire format writes it, from what a scan read back.
fn wire(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(b) => json!({ "NULL": b }),
        AttributeValue::L(items) => json!({ "L": items.iter().map(wire).collect::<Vec<_>>() }),
        AttributeValue::M(map) => json!({ "M": item(map) }),
        other => panic!("not written by sluice: {other:?}"),
    }
}

fn item(map: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(map.iter().map(|(k, v)| (k.clone(), wire(v))).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_items_sluice_test_prints_are_those_a_real_run_writes() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 2).await;
    let mut payloads: Vec<Vec<u8>> = (0..40)
        .map(|i| serde_json::to_vec(&waze_payload(i)).unwrap())
        .collect();
    payloads.push(b"not json".to_vec());
    let puts = world.put(&payloads).await;
    let summary = world.run_job();
    assert_eq!(summary["counts"]["dead_lettered"], 1, "{summary}");

    // The same records as a Lambda event, through `sluice test` with no network.
    let records: Vec<Value> = puts
        .iter()
        .map(|p| {
            json!({
                "eventSourceARN": format!("arn:aws:kinesis:us-east-1:123456789012:stream/{}", world.stream),
                "eventID": format!("{}:{}", p.shard_id, p.sequence_number),
                "kinesis": {
                    "data": base64::engine::general_purpose::STANDARD.encode(&p.payload),
                    "sequenceNumber": p.sequence_number,
                    "partitionKey": "pk",
                    "approximateArrivalTimestamp": 1764000000.5
                }
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("event.json");
    std::fs::write(&input, json!({ "Records": records }).to_string()).unwrap();
    let mut cmd = sluice();
    cmd.args([
        "test",
        "pipelines/waze-persist.toml",
        "--format",
        "json",
        "--input",
    ])
    .arg(&input)
    .arg("--parameter")
    .arg(format!("{}={BATCH_ID}", world.parameter));
    for (k, v) in world.variables() {
        cmd.env(k, v);
    }
    let (out, stdout, stderr) = run(no_network(&mut cmd));
    assert!(out.status.success(), "{stdout}{stderr}");
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per record"))
        .collect();
    assert_eq!(results.len(), puts.len());

    let written: HashMap<String, Value> = world
        .items()
        .await
        .iter()
        .map(|i| (i["CurationRecordId"].as_s().unwrap().clone(), item(i)))
        .collect();
    let stored: Vec<&Value> = results
        .iter()
        .filter(|r| r["outcome"] == "stored")
        .collect();
    assert_eq!(stored.len(), written.len(), "the same records stored");
    for result in stored {
        let request = &result["request"];
        assert_eq!(request["target"], world.table.as_str());
        let body = &request["body"];
        let id = body["CurationRecordId"]["S"].as_str().unwrap();
        assert_eq!(&written[id], body, "attribute for attribute");
    }
    let dead: Vec<&Value> = results
        .iter()
        .filter(|r| r["outcome"] == "dead_lettered")
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["stage"], "decode");
}

#[test]
fn a_disabled_sink_skips_every_record_in_a_test_as_in_a_run() {
    // Found by review: the test's sink wrote whatever the file's `enabled` said.
    let mut cmd = sluice();
    cmd.args([
        "test",
        "pipelines/waze-persist.toml",
        "--format",
        "json",
        "--input",
        "tests/fixtures/kinesis-event-mixed.json",
        "--parameter",
        "LATEST_BATCH_ID=b-7",
    ])
    .env("PERSIST_RECORDS", "0");
    let (out, stdout, stderr) = run(no_network(&mut cmd));
    assert!(out.status.success(), "{stderr}");
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!results.is_empty());
    assert!(results.iter().all(|r| r["outcome"] != "stored"), "{stdout}");
    assert!(
        results.iter().any(|r| r["by"] == "sink disabled"),
        "{stdout}"
    );
}

#[test]
fn the_rows_sluice_test_prints_are_those_the_local_job_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, dlq) = (dir.path().join("w.db"), dir.path().join("dlq.jsonl"));
    let mut cmd = sluice();
    cmd.args(["run", "pipelines/waze-persist.local.toml"])
        .env("WAZE_DB", &db)
        .env("WAZE_DLQ", &dlq);
    assert!(run(&mut cmd).0.status.success());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT * FROM curated_records").unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
    let written: HashMap<String, Value> = stmt
        .query_map([], |r| {
            let mut row = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                let cell = match r.get::<_, rusqlite::types::Value>(i)? {
                    rusqlite::types::Value::Text(t) => Value::String(t),
                    rusqlite::types::Value::Integer(n) => json!(n),
                    rusqlite::types::Value::Real(f) => json!(f),
                    rusqlite::types::Value::Null => Value::Null,
                    rusqlite::types::Value::Blob(_) => panic!("no blobs"),
                };
                row.insert(name.clone(), cell);
            }
            Ok((
                row["CurationRecordId"].as_str().unwrap().to_owned(),
                Value::Object(row),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();

    let mut cmd = sluice();
    cmd.args([
        "test",
        "pipelines/waze-persist.local.toml",
        "--input",
        "pipelines/samples/waze-curated.jsonl",
        "--format",
        "json",
    ]);
    let (out, stdout, stderr) = run(no_network(&mut cmd));
    assert!(out.status.success(), "{stderr}");
    let stored: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["outcome"] == "stored")
        .collect();
    assert_eq!(stored.len(), written.len());
    for result in stored {
        let body = &result["request"]["body"];
        assert_eq!(result["request"]["target"], "curated_records");
        let id = body["CurationRecordId"].as_str().unwrap();
        assert_eq!(&written[id], body, "column for column");
    }
}

#[test]
fn the_items_and_dead_letters_are_those_of_the_golden_fixtures() {
    // Written by the code of issue 14 (tests/fixtures/golden/README.md): what is stored and
    // dead-lettered must not change by a byte when the hot path is optimised.
    let cases: [(&str, &[&str], &str); 3] = [
        (
            "pipelines/waze-persist.toml",
            &[
                "--input",
                "tests/fixtures/kinesis-event-mixed.json",
                "--parameter",
                "LATEST_BATCH_ID=batch-7",
            ],
            "waze-persist-event.jsonl",
        ),
        (
            "pipelines/waze-persist.toml",
            &[
                "--input",
                "pipelines/samples/waze-curated.jsonl",
                "--parameter",
                "LATEST_BATCH_ID=batch-7",
            ],
            "waze-persist-sample.jsonl",
        ),
        (
            "pipelines/waze-persist.local.toml",
            &["--input", "pipelines/samples/waze-curated.jsonl"],
            "waze-persist-local.jsonl",
        ),
    ];
    // The version that wrote an envelope is not what it holds.
    let comparable = |line: &str| -> Value {
        let mut v: Value = serde_json::from_str(line).expect("a JSON line");
        if let Some(Value::Object(letter)) = v.get_mut("dead_letter") {
            letter.remove("sluice_version");
        }
        v
    };
    for (file, args, golden) in cases {
        let mut cmd = sluice();
        cmd.args(["test", file, "--format", "json"]).args(args);
        let (out, stdout, stderr) = run(no_network(&mut cmd));
        assert!(out.status.success(), "{stderr}");
        let expected = std::fs::read_to_string(root().join("tests/fixtures/golden").join(golden))
            .expect("the golden fixture");
        let got: Vec<Value> = stdout.lines().map(comparable).collect();
        let want: Vec<Value> = expected.lines().map(comparable).collect();
        assert_eq!(got.len(), want.len(), "{golden}: records");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w,
                "{golden}, record {}: see tests/fixtures/golden/README.md",
                i + 1
            );
        }
    }
}
