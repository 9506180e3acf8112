//! `sluice redrive`: dead letters back through the fixed pipeline, from a dead-letter file and
//! from the SQS queue, stored with the ids a direct run gives, removed only once done.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use sluice_core::aws::testing::{self, moto_endpoint};

use crate::aws_job::{bytes, expected_id, waze_payload, World};
use crate::{pipeline_file, root, run, sluice};

/// The Waze file with a bug: the S3 key template reads `bucket`, which records do not have.
fn buggy(file: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let broken = text.replacen("s3://{bucket-name}/{s3-key}", "s3://{bucket}/{s3-key}", 1);
    assert_ne!(text, broken);
    pipeline_file(dir, "buggy.toml", &broken)
}

/// Runs the buggy AWS job over `world`'s stream: every Waze record is dead-lettered.
fn run_the_bug(world: &World, dir: &std::path::Path) {
    let mut cmd = sluice();
    cmd.arg("run")
        .arg(buggy("pipelines/waze-persist.toml", dir))
        .args(["--until-caught-up", "--no-progress"]);
    for (k, v) in world.variables() {
        cmd.env(k, v);
    }
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stdout}{stderr}");
}

/// `sluice redrive` of the fixed AWS job from `world`'s queue, a JSON summary.
fn redrive_queue(world: &World, rate: Option<&str>) -> std::process::Command {
    let mut cmd = sluice();
    cmd.args([
        "redrive",
        "pipelines/waze-persist.toml",
        "--from",
        &world.queue_url,
    ])
    .args(["--summary", "json", "--no-progress"]);
    if let Some(rate) = rate {
        cmd.args(["--rate", rate]);
    }
    for (k, v) in world.variables() {
        cmd.env(k, v);
    }
    cmd
}

fn rows(db: &std::path::Path) -> BTreeMap<String, String> {
    let conn = rusqlite::Connection::open(db).expect("db");
    let mut stmt = conn
        .prepare(
            "SELECT CurationRecordId, S3Key || '|' || BatchId || '|' || State FROM curated_records",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn letters(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an envelope"))
        .collect()
}

#[test]
fn a_dead_letter_file_is_redriven_into_the_rows_a_direct_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, dlq, direct) = (
        dir.path().join("w.db"),
        dir.path().join("dlq.jsonl"),
        dir.path().join("direct.db"),
    );
    let job = |file: &std::path::Path, db: &std::path::Path| {
        let mut cmd = sluice();
        cmd.arg("run")
            .arg(file)
            .env("WAZE_DB", db)
            .env("WAZE_DLQ", &dlq);
        run(&mut cmd)
    };
    let (out, stdout, stderr) = job(&buggy("pipelines/waze-persist.local.toml", dir.path()), &db);
    assert!(out.status.success(), "{stdout}{stderr}");
    let first = letters(&dlq);

    // What a run of the fixed file from the start writes.
    let other_dlq = dir.path().join("other.jsonl");
    let mut cmd = sluice();
    cmd.args(["run", "pipelines/waze-persist.local.toml"])
        .env("WAZE_DB", &direct)
        .env("WAZE_DLQ", &other_dlq);
    assert!(run(&mut cmd).0.status.success());
    let by_bug = rows(&direct).len();
    assert!(
        by_bug > 100,
        "the bug dead-lettered the Waze records: {by_bug}"
    );
    let malformed = letters(&other_dlq).len();
    assert_eq!(first.len(), by_bug + malformed);

    // A dry run shows what each letter would become and changes nothing.
    let before = std::fs::read(&dlq).unwrap();
    let mut cmd = sluice();
    cmd.args([
        "redrive",
        "pipelines/waze-persist.local.toml",
        "--dry-run",
        "--from",
    ])
    .arg(&dlq)
    .args(["--no-progress", "--summary", "json"])
    .env("WAZE_DB", &db)
    .env("WAZE_DLQ", &dlq);
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stdout}{stderr}");
    let shown: Vec<Value> = stdout
        .lines()
        .filter(|l| l.contains("\"outcome\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let would_store: Vec<&Value> = shown.iter().filter(|r| r["outcome"] == "stored").collect();
    assert_eq!(would_store.len(), by_bug, "{stdout}");
    assert!(would_store
        .iter()
        .all(|r| r["request"]["target"] == "curated_records"));
    assert_eq!(
        std::fs::read(&dlq).unwrap(),
        before,
        "the file is untouched"
    );
    let tables: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'curated_records'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "nothing written");

    // The fixed file, the same dead-letter file as its own error sink.
    let mut cmd = sluice();
    cmd.args(["redrive", "pipelines/waze-persist.local.toml", "--from"])
        .arg(&dlq)
        .args(["--summary", "json", "--no-progress"])
        .env("WAZE_DB", &db)
        .env("WAZE_DLQ", &dlq);
    let (out, stdout, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["counts"]["stored"], by_bug as u64, "{summary}");
    assert_eq!(
        summary["counts"]["dead_lettered"], malformed as u64,
        "{summary}"
    );

    assert_eq!(
        rows(&db),
        rows(&direct),
        "the ids and values of a direct run"
    );

    // Left: the malformed records, dead-lettered again, attempts counted on, reason kept.
    let left = letters(&dlq);
    assert_eq!(
        left.len(),
        malformed,
        "redriven letters are gone, new ones kept"
    );
    for letter in &left {
        assert_eq!(letter["attempts"], 2, "{letter}");
        assert!(
            letter["previous"]["error"]["message"].is_string(),
            "{letter}"
        );
        assert!(letter["source"]["extra"].get("sluice:redriven").is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_redriven_twice_after_an_interruption_stores_each_record_once() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..30).map(|i| bytes(&waze_payload(i))).collect();
    let puts = world.put(&payloads).await;
    run_the_bug(&world, dir.path());
    assert!(world.items().await.is_empty(), "the bug stored nothing");

    // Slowly, stopped part way: what was not started is visible again at once.
    let mut slow = redrive_queue(&world, Some("2/s"));
    slow.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let child = slow.spawn().expect("starts");
    // Stopped once it has begun (a slow machine takes a while to start), well before its end.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while world.items().await.is_empty() {
        assert!(std::time::Instant::now() < until, "the redrive began");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().expect("stops");
    let first: Value = serde_json::from_slice(&out.stdout).expect("a summary");
    let stored_first = first["counts"]["stored"].as_u64().unwrap();
    assert!(
        (1..30).contains(&stored_first),
        "interrupted part way: {first}"
    );

    let (out, stdout, stderr) = run(&mut redrive_queue(&world, None));
    assert!(out.status.success(), "{stdout}{stderr}");
    let second: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        stored_first + second["counts"]["stored"].as_u64().unwrap(),
        30,
        "each record once across both: {first} {second}"
    );
    let items = world.items().await;
    let ids: std::collections::BTreeSet<String> = items
        .iter()
        .map(|i| i["CurationRecordId"].as_s().unwrap().clone())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        puts.iter().map(|p| expected_id(&world.stream, p)).collect();
    assert_eq!(ids, expected, "the ids a direct run gives");
    assert!(
        testing::receive_all(&world.sqs, &world.queue_url)
            .await
            .is_empty(),
        "the queue ends empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_dead_lettered_again_into_the_same_queue_end_the_run_with_their_history() {
    // Found by review: the new envelope of a letter that failed again went to the queue being
    // redriven, was received again at once, and so on, nesting `previous` without end.
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut payloads: Vec<Vec<u8>> = (0..2).map(|i| bytes(&waze_payload(i))).collect();
    payloads.extend([b"not json".to_vec(), b"[1]".to_vec(), b"{\"oops\"".to_vec()]);
    world.put(&payloads).await;
    run_the_bug(&world, dir.path());

    let mut cmd = redrive_queue(&world, None);
    let started = std::time::Instant::now();
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "it ends");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["counts"]["stored"], 2, "{summary}");
    assert_eq!(summary["counts"]["dead_lettered"], 3, "{summary}");
    assert_eq!(world.items().await.len(), 2);
    // Each malformed record once more, its history kept; the first letters are gone.
    let left = world.dead_letters().await;
    assert_eq!(left.len(), 3, "{left:?}");
    for letter in &left {
        assert_eq!(letter["attempts"], 2, "{letter}");
        assert_eq!(letter["previous"]["stage"], "decode", "{letter}");
        assert!(letter["previous"].get("previous").is_none());
    }
}
