//! The command line: help, stdin, Lambda event files, and the exit codes.

use std::io::Write;
use std::process::Stdio;

use base64::Engine;
use serde_json::Value;

use crate::{pipeline_file, run, sluice};

#[test]
fn help_explains_each_command_with_an_example() {
    let (out, stdout, _) = run(sluice().arg("--help"));
    assert!(out.status.success());
    for needle in [
        "run",
        "validate",
        "Examples:",
        "pipelines/waze-persist.local.toml",
        "--log-format",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
    let (_, stdout, _) = run(sluice().args(["run", "--help"]));
    assert!(
        stdout.contains("dead-lettered") && stdout.contains("Example"),
        "{stdout}"
    );
}

#[test]
fn stdin_json_lines_flow_to_a_file_sink_and_the_summary_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.jsonl");
    let dlq_path = dir.path().join("dlq.jsonl");
    let file = pipeline_file(
        dir.path(),
        "p.toml",
        &format!(
            r#"name = "stdin-test"
[source]
type = "stdin"
[[enrichers]]
type = "filter"
skip_if = {{ field = "kind", equals = "noise" }}
[sink]
type = "file"
path = "{}"
[error_sink]
type = "file"
path = "{}"
"#,
            out_path.display(),
            dlq_path.display()
        ),
    );
    let mut child = sluice()
        .args(["run", "--summary", "json", "--log-format", "json"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{\"kind\":\"a\"}\n{\"kind\":\"noise\"}\n\nnope\n{\"kind\":\"b\"}\n")
        .expect("written");
    let out = child.wait_with_output().expect("finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let summary: Value = serde_json::from_str(&stdout).expect("json summary");
    assert_eq!(summary["counts"]["records"], 4);
    assert_eq!(summary["counts"]["stored"], 2);
    assert_eq!(summary["skipped_by"]["filter"], 1);
    assert_eq!(summary["dead_lettered_by"]["decode"], 1);
    let stored = std::fs::read_to_string(&out_path).expect("out");
    assert_eq!(stored, "{\"kind\":\"a\"}\n{\"kind\":\"b\"}\n");
    let letter: Value =
        serde_json::from_str(std::fs::read_to_string(&dlq_path).unwrap().trim()).unwrap();
    assert_eq!(
        letter["source"]["sequence_number"], "4",
        "line numbers count blank lines"
    );
    // Logs are JSON lines on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{stderr}"
    );
}

#[test]
fn a_lambda_kinesis_event_file_decodes_per_record_and_keeps_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let record = |shard: &str, seq: &str, data: String| {
        serde_json::json!({
            "eventID": format!("{shard}:{seq}"),
            "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/waze-stream",
            "kinesis": {"data": data, "sequenceNumber": seq, "partitionKey": "pk", "approximateArrivalTimestamp": 1700000000.5}
        })
    };
    let long = "49590338271490256608559692538361571095921575989136588898";
    let event = serde_json::json!({"Records": [
        record("shardId-000000000000", long, b64(r#"{"id":"a"}"#)),
        record("shardId-000000000001", "7", "***not base64***".into()),
        record("shardId-000000000001", "8", b64(r#"{"id":"b"}"#)),
    ]});
    let event_path = dir.path().join("event.json");
    std::fs::write(&event_path, event.to_string()).unwrap();
    let out_path = dir.path().join("out.jsonl");
    let dlq_path = dir.path().join("dlq.jsonl");
    let file = pipeline_file(
        dir.path(),
        "p.toml",
        &format!(
            r#"name = "event-test"
[source]
type = "file"
path = "{}"
format = "kinesis_event"
[[enrichers]]
type = "fields"
set = {{ at = "{{$meta.stream}}/{{$meta.shard_id}}/{{$meta.sequence_number}}/{{$meta.partition_key}}" }}
[sink]
type = "file"
path = "{}"
[error_sink]
type = "file"
path = "{}"
"#,
            event_path.display(),
            out_path.display(),
            dlq_path.display()
        ),
    );
    let (out, stdout, stderr) = run(sluice().arg("run").arg(&file));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let stored: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored.len(), 2);
    // Shards run concurrently, so the file's order across shards is not fixed.
    let mut positions: Vec<&str> = stored.iter().map(|v| v["at"].as_str().unwrap()).collect();
    positions.sort_unstable();
    let first = format!("waze-stream/shardId-000000000000/{long}/pk");
    assert_eq!(
        positions,
        [first.as_str(), "waze-stream/shardId-000000000001/8/pk"]
    );
    let letter: Value =
        serde_json::from_str(std::fs::read_to_string(&dlq_path).unwrap().trim()).unwrap();
    assert_eq!(letter["stage"], "decode");
    assert!(letter["error"]["message"]
        .as_str()
        .unwrap()
        .contains("base64"));
    assert_eq!(letter["source"]["shard_id"], "shardId-000000000001");
    assert!(
        stdout.contains(&format!("shardId-000000000000 @ {long}")),
        "{stdout}"
    );
    assert!(stdout.contains("shardId-000000000001 @ 8"), "{stdout}");
}

#[test]
fn a_missing_pipeline_file_is_a_clear_error() {
    let (out, _, stderr) = run(sluice().args(["run", "pipelines/nope.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("pipelines/nope.toml") && stderr.contains("no such file"),
        "{stderr}"
    );
}

#[test]
fn a_thread_count_that_is_not_one_is_a_clear_error() {
    for bad in ["many", "-1", "100000"] {
        let (out, _, stderr) = run(sluice().args([
            "run",
            "pipelines/waze-persist.local.toml",
            &format!("--threads={bad}"),
        ]));
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--threads") && stderr.contains("from 0 (one per core) to 1024"),
            "{bad}: {stderr}"
        );
    }
}

/// A first SIGTERM lets the records already read finish (here: a sink that keeps failing, with
/// minutes of retries left); a second one exits at once.
#[test]
fn a_second_stop_signal_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline_file(
        dir.path(),
        "p.toml",
        r#"name = "stop-twice"
[source]
type = "stdin"
[sink]
type = "file"
path = "/dev/full"
[error_sink]
type = "stdout"
[retry]
attempts = 100000
initial_backoff = "50ms"
max_backoff = "200ms"
max_elapsed = "10m"
"#,
    );
    let log = dir.path().join("log");
    let mut child = sluice()
        .args(["--log-format", "json", "run"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("spawns");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"{\"n\":1}\n").expect("written");
    let term = |child: &std::process::Child| {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    // Once the record is read and failing, ask politely.
    wait_for(&log, "retryable failure");
    term(&child);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().expect("polls").is_none(),
        "the first signal lets the record in flight finish its retries"
    );
    term(&child);
    let status = exit_within(&mut child, 20, "the second signal did not end the run");
    drop(stdin);
    assert_eq!(status.code(), Some(130));
    let logs = std::fs::read_to_string(&log).expect("the log");
    assert!(logs.contains("a second stop signal"), "{logs}");
}

/// Its exit status once it exits, within `secs` seconds (else it is killed and `why` fails the
/// test).
fn exit_within(child: &mut std::process::Child, secs: u64, why: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("polls") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{why}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits (up to 30 s) until `log` holds `needle`.
fn wait_for(log: &std::path::Path, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(log).is_ok_and(|l| l.contains(needle)) {
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {needle}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn one_stop_signal_ends_a_run_waiting_on_an_idle_stdin() {
    // Found by review: the summary was printed, then the process waited for a line that never
    // came (a blocking read of stdin cannot be cancelled), deaf to further signals.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let file = pipeline_file(
        dir.path(),
        "p.toml",
        &format!(
            "name = \"idle\"\n[source]\ntype = \"stdin\"\n[sink]\ntype = \"file\"\npath = \"{}\"\n[error_sink]\ntype = \"stdout\"\n",
            out.display()
        ),
    );
    let log = dir.path().join("log");
    let mut child = sluice()
        .args(["--log-format", "json", "run"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("spawns");
    let _stdin = child.stdin.take().expect("stdin, held open and idle");
    wait_for(&log, "running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = exit_within(&mut child, 20, "the run did not end after its summary");
    assert!(status.success(), "{status:?}");
}
