//! The Waze persist job on AWS (`pipelines/waze-persist.toml`), end to end against the emulator:
//! Kinesis → SSM batch id → DynamoDB, malformed records → SQS.

mod aggregated;
mod world;

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use serde_json::{json, Value};
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, kinesis_local_endpoint, moto_endpoint};
use sluice_core::{Loader, Progress};
use tokio::sync::OnceCell;

pub use world::{
    bytes, expected_id, expected_sub_id, kpl_aggregate, waze_payload, Put, World, BATCH_ID,
};

use crate::{pipeline_file, root, run, sluice};

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

/// One run of the job over a 2-shard stream of 200 valid `waze/` records, 30 outside `waze/`
/// and 6 malformed ones, shuffled; what it left behind, shared by the tests that read it.
struct MixedRun {
    stream: String,
    puts: Vec<Put>,
    malformed: Vec<(Vec<u8>, &'static str)>,
    summary: Value,
    items: Vec<HashMap<String, AttributeValue>>,
    dead: Vec<Value>,
}

/// The mixed run, made once per test binary; `None` without the emulator.
async fn mixed_run() -> Option<&'static MixedRun> {
    static RUN: OnceCell<MixedRun> = OnceCell::const_new();
    let endpoint = moto_endpoint()?;
    Some(RUN.get_or_init(|| make_mixed_run(endpoint)).await)
}

async fn make_mixed_run(endpoint: String) -> MixedRun {
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
    let summary = world.run_job();
    MixedRun {
        items: world.items().await,
        dead: world.dead_letters().await,
        stream: world.stream,
        puts,
        malformed,
        summary,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_ends_stored_skipped_or_dead_lettered() {
    let Some(run) = mixed_run().await else { return };
    assert_eq!(
        run.puts
            .iter()
            .map(|p| &p.shard_id)
            .collect::<BTreeSet<_>>()
            .len(),
        2,
        "records landed on both shards"
    );
    let summary = &run.summary;
    assert_eq!(count(summary, "records"), 236, "{summary}");
    assert_eq!(count(summary, "stored"), 200);
    assert_eq!(count(summary, "skipped"), 30);
    assert_eq!(count(summary, "dead_lettered"), 6);
    assert_eq!(count(summary, "failed"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_holds_exactly_the_valid_waze_records_with_the_seeds_attributes() {
    let Some(run) = mixed_run().await else { return };
    let by_id: HashMap<String, &HashMap<String, AttributeValue>> = run
        .items
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
    for put in &run.puts {
        let Ok(payload) = serde_json::from_slice::<Value>(&put.payload) else {
            continue;
        };
        let valid = payload["s3-key"]
            .as_str()
            .is_some_and(|k| k.starts_with("waze/"))
            && payload.get("bucket-name").is_some();
        let id = expected_id(&run.stream, put);
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
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dlq_holds_exactly_the_malformed_records_with_reason_position_and_payload() {
    let Some(run) = mixed_run().await else { return };
    let dead = &run.dead;
    assert_eq!(dead.len(), run.malformed.len(), "{dead:#?}");
    for (payload, stage) in &run.malformed {
        let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
        let envelope = dead
            .iter()
            .find(|d| d["payload_base64"] == encoded)
            .unwrap_or_else(|| panic!("{:?} dead-lettered", String::from_utf8_lossy(payload)));
        assert_eq!(envelope["stage"], *stage, "{envelope}");
        assert_eq!(envelope["pipeline"], "waze-persist");
        assert!(!envelope["error"]["message"].as_str().unwrap().is_empty());
        let put = run.puts.iter().find(|p| &p.payload == payload).unwrap();
        assert_eq!(envelope["source"]["stream"], run.stream.as_str());
        assert_eq!(envelope["source"]["shard_id"], put.shard_id.as_str());
        assert_eq!(
            envelope["source"]["sequence_number"],
            put.sequence_number.as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_reads_only_new_records_at_a_bounded_request_cost_on_one_thread_too() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 2).await;
    let first: Vec<Vec<u8>> = (0..200).map(|i| bytes(&waze_payload(i))).collect();
    world.put(&first).await;
    assert_eq!(count(&world.run_job(), "stored"), 200);

    // 1000 more valid records, twice: the request counts the seed would need 1000 of each for.
    // The second thousand goes on one thread (`SLUICE_THREADS=1`, no worker threads).
    for (round, threads) in [(1, "0"), (2, "1")] {
        let more: Vec<Vec<u8>> = (1000 * round..1000 * (round + 1))
            .map(|i| bytes(&waze_payload(i)))
            .collect();
        world.put(&more).await;
        let summary = World::summary_of(world.run_command("json").env("SLUICE_THREADS", threads));
        assert_eq!(
            count(&summary, "records"),
            1000,
            "only the new records: {summary}"
        );
        assert_eq!(count(&summary, "stored"), 1000);
        eprintln!(
            "calls for 1000 records ({threads} threads): {}",
            summary["api_calls"]
        );
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
        assert_eq!(world.items().await.len(), 200 + 1000 * round);
    }

    // Running again reads nothing new, stores nothing new and sends nothing new.
    let summary = world.run_job();
    assert_eq!(count(&summary, "records"), 0, "{summary}");
    assert_eq!(world.items().await.len(), 2200);
    assert!(world.dead_letters().await.is_empty());
}

/// Kinesis on kinesis-local, everything else on moto, and `AWS_ENDPOINT_URL` pointing at
/// kinesis-local: the endpoints the pipeline file names must win over the environment's.
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_in_the_pipeline_file_win_over_aws_endpoint_url() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let world = World::create_on(&kinesis_local, &moto, 1).await;
    let puts = world
        .put(&(0..5).map(|i| bytes(&waze_payload(i))).collect::<Vec<_>>())
        .await;
    let shipped = std::fs::read_to_string(root().join("pipelines/waze-persist.toml")).unwrap();
    let moto_line = format!("endpoint_url = \"{moto}\"\n");
    let text = shipped
        .replace(
            "stream = \"${KINESIS_STREAM}\"\n",
            &format!("stream = \"${{KINESIS_STREAM}}\"\ncheckpoint_endpoint_url = \"{moto}\"\n"),
        )
        .replace(
            "into = \"BatchId\"\n",
            &format!("into = \"BatchId\"\n{moto_line}"),
        )
        .replace(
            "all_strings = true\n",
            &format!("all_strings = true\n{moto_line}"),
        )
        .replace(
            "queue_url = \"${DLQ_QUEUE_URL}\"\n",
            &format!("queue_url = \"${{DLQ_QUEUE_URL}}\"\n{moto_line}"),
        );
    assert_eq!(text.matches(&moto).count(), 4, "four endpoints set: {text}");
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(dir.path(), "two-emulators.toml", &text);

    let mut cmd = sluice();
    cmd.arg("run")
        .arg(&file)
        .args(["--until-caught-up", "--summary", "json", "--no-progress"]);
    for (name, value) in world.variables() {
        cmd.env(name, value);
    }
    cmd.env("AWS_ENDPOINT_URL", &kinesis_local);
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(count(&summary, "stored"), 5, "{summary}");
    let ids: BTreeSet<String> = world
        .items()
        .await
        .iter()
        .map(|i| s(i, "CurationRecordId"))
        .collect();
    let expected: BTreeSet<String> = puts.iter().map(|p| expected_id(&world.stream, p)).collect();
    assert_eq!(ids, expected, "stored on moto, where the file points");
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
    assert!(stdout.contains("no checkpoint was stored"), "{stdout}");
    assert!(stdout.contains("sink disabled 20"), "{stdout}");
    assert!(world.items().await.is_empty());
    // Found by review: the dry run moved the checkpoints past the records it did not write, so
    // a real run after it never wrote them.
    let summary = world.run_job();
    assert_eq!(count(&summary, "stored"), 20, "{summary}");
    assert_eq!(world.items().await.len(), 20);
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
    // The S3 pipelines validate in their own worlds (`s3_jobs`).
    for name in ["waze-persist.toml"] {
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

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_value_or_credential_reaches_the_logs_or_the_dead_letters() {
    let Some(moto) = moto_endpoint() else { return };
    const SECRET: &str = "batch-SECRET-5f1e9c";
    const SECRET_KEY: &str = "sluiceTestSecretAccessKey0c7d";
    let world = World::create(&moto, 2).await;
    // The oversize record's envelope (base64 adds a third) needs SQS's largest messages.
    world
        .sqs
        .set_queue_attributes()
        .queue_url(&world.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            "1048576",
        )
        .send()
        .await
        .expect("a 1 MiB queue");
    let ssm: aws_sdk_ssm::Client = testing::client(&moto).await;
    ssm.put_parameter()
        .name(&world.parameter)
        .value(SECRET)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("a SecureString batch id");
    let shipped = std::fs::read_to_string(root().join("pipelines/waze-persist.toml")).unwrap();
    let text = shipped.replace(
        "into = \"BatchId\"\n",
        "into = \"BatchId\"\nwith_decryption = true\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(dir.path(), "secure.toml", &text);
    // Every way out of the pipeline: stored, skipped, dead-lettered at decode, at an enricher
    // (a field the template needs is missing) and at the sink (an item over DynamoDB's 400 KB).
    let mut missing = waze_payload(2);
    missing.as_object_mut().unwrap().remove("bucket-name");
    let mut skipped = waze_payload(3);
    skipped["s3-key"] = json!("other/file.csv");
    let mut oversize = waze_payload(4);
    oversize["state"] = json!("M".repeat(420 * 1024));
    let payloads = vec![
        bytes(&waze_payload(1)),
        b"{not json".to_vec(),
        bytes(&missing),
        bytes(&skipped),
        bytes(&oversize),
    ];
    world.put(&payloads).await;

    let mut cmd = sluice();
    cmd.args(["--log-format", "json", "run"]).arg(&file).args([
        "--until-caught-up",
        "--summary",
        "json",
        "--no-progress",
    ]);
    for (name, value) in world.variables() {
        cmd.env(name, value);
    }
    cmd.env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("SLUICE_LOG", "debug");
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(count(&summary, "stored"), 1, "{summary}");
    assert_eq!(count(&summary, "dead_lettered"), 3, "{summary}");
    // The secret was read and used (so its absence below means something).
    let items = world.items().await;
    assert_eq!(s(&items[0], "BatchId"), SECRET);
    let letters = world.dead_letters().await;
    assert_eq!(letters.len(), 3);
    for (what, text) in [
        ("the logs", stderr.clone()),
        ("the summary", stdout.clone()),
        ("the dead letters", Value::from(letters).to_string()),
    ] {
        assert!(!text.contains(SECRET), "the parameter's value is in {what}");
        assert!(!text.contains(SECRET_KEY), "the secret key is in {what}");
    }
}
