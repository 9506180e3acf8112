//! A lease table shared with a real KCL worker (kcl-rs, an independent implementation of the
//! protocol): sluice leaves the live worker's lease alone, takes it once the worker stops, and
//! resumes exactly after the worker's last checkpoint.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType};
use serde_json::json;
use sluice_core::aws::testing::{self, moto_endpoint};

use super::*;

/// The Python with kcl-rs that `scripts/test` installs; missing is a failure under CI.
fn kcl_python() -> Option<PathBuf> {
    match std::env::var("SLUICE_TEST_KCL_PYTHON") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("SLUICE_TEST_KCL_PYTHON is not set but CI=true: run `bash scripts/test`")
        }
        _ => {
            eprintln!("note: SLUICE_TEST_KCL_PYTHON is not set; the KCL test did nothing");
            None
        }
    }
}

struct KclWorker(Child);

impl Drop for KclWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KclWorker {
    fn start(python: &Path, endpoint: &str, world: &World, out: &Path, log: &Path) -> Self {
        let child = Command::new(python)
            .arg(root().join("tests/fixtures/kcl_worker.py"))
            .args([endpoint, &world.stream, &world.checkpoints, "kcl-worker"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("the KCL worker starts");
        Self(child)
    }

    /// SIGTERM: it stops without releasing its leases (as a crashed worker, or kcl-rs's own
    /// shutdown, leaves them).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The `n` of each line, sorted; the KCL worker's lines hold the record's JSON as `data`.
fn numbers(lines: &[Value]) -> Vec<u64> {
    let mut n: Vec<u64> = lines
        .iter()
        .map(|l| match l["data"].as_str() {
            Some(data) => serde_json::from_str::<Value>(data).unwrap()["n"]
                .as_u64()
                .unwrap(),
            None => l["n"].as_u64().unwrap(),
        })
        .collect();
    n.sort_unstable();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kcl_workers_table_is_continued_after_its_checkpoint_once_the_worker_stops() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(python) = kcl_python() else { return };
    let world = World::create(&moto, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (kcl_out, ours) = (
        dir.path().join("kcl.jsonl"),
        dir.path().join("sluice.jsonl"),
    );
    // The lease as a KCL shard sync leaves it (so the worker need not wait out its start-up
    // delay on an empty table).
    let key = [("leaseKey", ScalarAttributeType::S)];
    testing::create_table(&world.dynamodb, &world.checkpoints, &key).await;
    let shard = {
        let placed = world.put(&[json!({"n": 0}).to_string().into_bytes()]).await;
        placed[0].shard_id.clone()
    };
    let n = |v: &str| AttributeValue::N(v.into());
    world
        .dynamodb
        .put_item()
        .table_name(&world.checkpoints)
        .item("leaseKey", AttributeValue::S(shard.clone()))
        .item("checkpoint", AttributeValue::S("TRIM_HORIZON".into()))
        .item("checkpointSubSequenceNumber", n("0"))
        .item("leaseCounter", n("0"))
        .item("ownerSwitchesSinceCheckpoint", n("0"))
        .send()
        .await
        .expect("seed the lease");
    let put = |r: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        r.map(|i| json!({ "n": i }).to_string().into_bytes())
            .collect()
    };
    let mut last = world.put(&put(1..20)).await;

    let kcl = KclWorker::start(
        &python,
        &moto,
        &world,
        &kcl_out,
        &dir.path().join("kcl.log"),
    );
    let checkpointed = |seq: String| {
        let world = &world;
        let shard = shard.clone();
        async move {
            leases(world).await.get(&shard).is_some_and(|l| {
                l.owner.as_deref() == Some("kcl-worker") && l.checkpoint.as_deref() == Some(&seq)
            })
        }
    };
    let tip = last.pop().unwrap().sequence_number;
    assert!(
        eventually(Duration::from_secs(60), async || checkpointed(tip.clone())
            .await)
        .await,
        "the KCL worker read and checkpointed: {:?} {}",
        leases(&world).await,
        std::fs::read_to_string(dir.path().join("kcl.log")).unwrap_or_default()
    );

    // sluice starts beside the live worker: with one shard, that worker holds no more than its
    // share, so its lease is left alone. Leases last 10 s here, the KCL's default failover.
    let mut env = world.variables();
    env.push(("OUT", ours.display().to_string()));
    env.push(("SLUICE__SOURCE__LEASE_DURATION", "10s".into()));
    env.push((
        "SLUICE__SOURCE__CHECKPOINT_TABLE",
        world.checkpoints.clone(),
    ));
    let file = file_pipeline(dir.path());
    let daemon = Daemon::start(&file, "worker-a", &env, dir.path());
    let tip = world.put(&put(20..40)).await.pop().unwrap().sequence_number;
    assert!(
        eventually(Duration::from_secs(30), async || checkpointed(tip.clone())
            .await)
        .await
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        written(&ours).is_empty(),
        "a live KCL worker's lease is left to it"
    );
    assert_eq!(numbers(&written(&kcl_out)), (0..40).collect::<Vec<_>>());

    // The KCL worker stops (its lease stays owned): sluice takes the shard once the lease's
    // counter has stood still for a lease duration, and reads exactly what came after.
    kcl.stop();
    world.put(&put(40..60)).await;
    let taken = eventually(Duration::from_secs(60), async || written(&ours).len() >= 20).await;
    assert!(taken, "{:?} {}", leases(&world).await, daemon.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        numbers(&written(&ours)),
        (40..60).collect::<Vec<_>>(),
        "resumed after the KCL checkpoint: nothing before it, nothing twice"
    );
    let (status, summary) = daemon.stop();
    assert!(status.success(), "{summary}");
}
