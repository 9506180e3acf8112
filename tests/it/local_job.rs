//! The README's first command: the Waze job on SQLite, no AWS.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::Value;

use crate::{root, run, sluice};

const SEED_ATTRIBUTES: [&str; 9] = [
    "BatchId",
    "CurationRecordId",
    "DataTableName",
    "IsHistorical",
    "Month",
    "S3Key",
    "State",
    "TotalNumCuratedRecords",
    "Year",
];
const PAYLOAD_FIELDS: [&str; 8] = [
    "state",
    "table-name",
    "num-records",
    "is-historical",
    "year",
    "month",
    "bucket-name",
    "s3-key",
];

/// What the sample should produce, worked out from the file itself, independently of sluice.
struct Expected {
    stored: Vec<Value>,
    skipped: usize,
    malformed: Vec<String>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(root().join("pipelines/samples/waze-curated.jsonl"))
        .expect("sample present");
    let mut e = Expected {
        stored: vec![],
        skipped: 0,
        malformed: vec![],
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => match v.get("s3-key").and_then(Value::as_str) {
                None => e.malformed.push(line.to_owned()),
                Some(k) if !k.starts_with("waze/") => e.skipped += 1,
                Some(_) if PAYLOAD_FIELDS.iter().all(|f| v.get(f).is_some()) => e.stored.push(v),
                Some(_) => e.malformed.push(line.to_owned()),
            },
            _ => e.malformed.push(line.to_owned()),
        }
    }
    e
}

fn rows(db: &std::path::Path) -> Vec<serde_json::Map<String, Value>> {
    let conn = rusqlite::Connection::open(db).expect("database");
    let mut stmt = conn
        .prepare("SELECT * FROM curated_records")
        .expect("table exists");
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    stmt.query_map([], |row| {
        let mut m = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let v: rusqlite::types::Value = row.get(i)?;
            let v = match v {
                rusqlite::types::Value::Text(s) => Value::String(s),
                other => Value::String(format!("non-text {other:?}")),
            };
            m.insert(n.clone(), v);
        }
        Ok(m)
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[test]
fn the_local_waze_job_stores_valid_records_dead_letters_malformed_ones_and_reruns_idempotently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dlq) = (dir.path().join("w.db"), dir.path().join("dlq.jsonl"));
    let job = || {
        let mut cmd = sluice();
        cmd.args(["run", "pipelines/waze-persist.local.toml"])
            .env("WAZE_DB", &db)
            .env("WAZE_DLQ", &dlq);
        run(&mut cmd)
    };
    let want = expected();
    assert!(
        want.stored.len() >= 180 && want.malformed.len() >= 4,
        "the sample has the promised mix"
    );

    let (out, stdout, stderr) = job();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("stored         {}", want.stored.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("dead-lettered  {}", want.malformed.len())),
        "{stdout}"
    );
    assert!(stdout.contains("records/s"), "{stdout}");

    let first = rows(&db);
    assert_eq!(first.len(), want.stored.len());
    for row in &first {
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(
            keys.iter().copied().collect::<BTreeSet<_>>(),
            SEED_ATTRIBUTES.into_iter().collect()
        );
        assert_eq!(row["BatchId"], "local-batch-0001");
        assert!(row["S3Key"]
            .as_str()
            .is_some_and(|k| k.starts_with("s3://") && k.contains("/waze/")));
    }
    // Every valid record is there with its values carried over under the seed's names.
    for v in &want.stored {
        let s3 = format!(
            "s3://{}/{}",
            v["bucket-name"].as_str().unwrap(),
            v["s3-key"].as_str().unwrap()
        );
        let row = first
            .iter()
            .find(|r| r["S3Key"] == s3.as_str())
            .expect("record stored");
        assert_eq!(row["DataTableName"], v["table-name"]);
        assert_eq!(row["TotalNumCuratedRecords"], v["num-records"]);
        assert_eq!(row["State"], v["state"]);
        assert_eq!(row["IsHistorical"], v["is-historical"]);
        assert_eq!((&row["Year"], &row["Month"]), (&v["year"], &v["month"]));
    }

    let letters: Vec<Value> = std::fs::read_to_string(&dlq)
        .expect("dlq written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("envelope is JSON"))
        .collect();
    assert_eq!(letters.len(), want.malformed.len());
    for (letter, original) in letters.iter().zip(&want.malformed) {
        assert!(letter["stage"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(letter["error"]["message"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        let payload = base64::engine::general_purpose::STANDARD
            .decode(letter["payload_base64"].as_str().expect("payload"))
            .expect("base64");
        assert_eq!(String::from_utf8_lossy(&payload), original.as_str());
        assert_eq!(letter["pipeline"], "waze-persist-local");
    }
    let missing_key = letters
        .iter()
        .find(|l| l["stage"] == "enrich:filter")
        .expect("the record without s3-key is dead-lettered by the filter");
    assert!(missing_key["error"]["message"]
        .as_str()
        .unwrap()
        .contains("s3-key"));

    let (out, stdout, stderr) = job();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let second = rows(&db);
    assert_eq!(second.len(), first.len(), "a rerun adds no rows");
    let ids = |rows: &[serde_json::Map<String, Value>]| -> BTreeSet<String> {
        rows.iter()
            .map(|r| r["CurationRecordId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&first), ids(&second), "ids are deterministic");
}

/// `--threads 1` (everything on the main thread, SQLite's writes on the blocking pool) stores
/// the same rows and dead letters as the default runtime.
#[test]
fn one_thread_stores_the_same_rows_and_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = |name: &str, threads: &str| {
        let (db, dlq) = (
            dir.path().join(format!("{name}.db")),
            dir.path().join(format!("{name}.jsonl")),
        );
        let (out, stdout, stderr) = run(sluice()
            .args([
                "run",
                "pipelines/waze-persist.local.toml",
                "--threads",
                threads,
            ])
            .env("SLUICE_LOG", "sluice::runtime=debug")
            .env("WAZE_DB", &db)
            .env("WAZE_DLQ", &dlq));
        assert!(
            out.status.success(),
            "--threads {threads}: {stdout}\n{stderr}"
        );
        let flavor = if threads == "1" {
            "CurrentThread"
        } else {
            "MultiThread"
        };
        assert!(
            stderr.contains(&format!("flavor={flavor}")),
            "--threads {threads}: {stderr}"
        );
        let mut stored = rows(&db);
        stored.sort_by_key(|r| r["CurationRecordId"].as_str().unwrap().to_owned());
        let mut letters: Vec<Value> = std::fs::read_to_string(&dlq)
            .expect("dlq written")
            .lines()
            .map(|l| serde_json::from_str(l).expect("envelope is JSON"))
            .collect();
        for letter in &mut letters {
            letter.as_object_mut().unwrap().remove("failed_at");
        }
        (stored, letters)
    };
    let (stored, letters) = job("default", "0");
    assert_eq!(stored.len(), expected().stored.len());
    assert_eq!(job("one", "1"), (stored, letters));
}

#[test]
fn records_the_error_sink_cannot_take_fail_the_run_and_hold_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = sluice();
    cmd.args([
        "run",
        "pipelines/waze-persist.local.toml",
        "--summary",
        "json",
    ])
    .env("WAZE_DB", dir.path().join("w.db"))
    .env("WAZE_DLQ", "/dev/full")
    .env("SLUICE__RETRY__ATTEMPTS", "2")
    .env("SLUICE__RETRY__INITIAL_BACKOFF", "5ms");
    let (out, stdout, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("json summary");
    let want = expected();
    assert_eq!(summary["counts"]["failed"], want.malformed.len());
    assert_eq!(summary["counts"]["stored"], want.stored.len());
    let text =
        std::fs::read_to_string(root().join("pipelines/samples/waze-curated.jsonl")).unwrap();
    let first_bad = text
        .lines()
        .position(|l| l == want.malformed[0])
        .expect("found")
        + 1;
    assert_eq!(
        summary["checkpoints"]["file"],
        (first_bad - 1).to_string(),
        "checkpoint stops before the first failure"
    );
    assert!(
        summary["failures"][0]
            .as_str()
            .unwrap()
            .contains("error sink failed"),
        "{summary}"
    );
}
