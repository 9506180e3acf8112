//! A daemon paused past its lease (SIGSTOP) and resumed: another worker has its shard by then,
//! and the paused one writes neither another batch of it nor its checkpoint.

use std::time::Duration;

use serde_json::json;
use sluice_core::aws::testing::moto_endpoint;

use super::*;
use crate::aws_job::bytes;

async fn put_numbered(world: &World, range: std::ops::Range<usize>) {
    let payloads: Vec<Vec<u8>> = range.map(|i| bytes(&json!({ "n": i }))).collect();
    world.put(&payloads).await;
}

fn numbers(lines: &[Value]) -> Vec<u64> {
    let mut n: Vec<u64> = lines.iter().map(|l| l["n"].as_u64().unwrap()).collect();
    n.sort_unstable();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_daemon_loses_its_lease_and_writes_nothing_more_of_that_shard() {
    let Some(moto) = moto_endpoint() else { return };
    // One shard: the second daemon holds nothing (its share is one, as is the first's), so
    // whatever it writes it took from the paused one.
    let world = World::create(&moto, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = file_pipeline(dir.path());
    let watch = CheckpointWatch::start(&world);
    let env = |out: &str| {
        let mut env = world.variables();
        env.push(("OUT", dir.path().join(out).display().to_string()));
        env
    };
    let (out_a, out_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));

    let a = Daemon::start(&file, "worker-a", &env("a.jsonl"), dir.path());
    put_numbered(&world, 0..20).await;
    assert!(
        eventually(Duration::from_secs(20), async || written(&out_a).len()
            == 20)
        .await
    );
    let b = Daemon::start(&file, "worker-b", &env("b.jsonl"), dir.path());
    tokio::time::sleep(TAKE_INTERVAL * 2).await;
    assert!(
        written(&out_b).is_empty(),
        "a live worker within its share is left alone"
    );

    a.signal("STOP");
    put_numbered(&world, 20..40).await;
    let taken = eventually(LEASE * 4, async || {
        numbers(&written(&out_b)) == (20..40).collect::<Vec<_>>()
    })
    .await;
    assert!(taken, "b took the shard: {:?}", numbers(&written(&out_b)));
    put_numbered(&world, 40..60).await;
    a.signal("CONT");
    // Resumed, `a` finds its lease gone at its next renewal; records of the shard it may
    // have read meanwhile are never written.
    tokio::time::sleep(LEASE).await;
    put_numbered(&world, 60..80).await;
    assert!(
        eventually(Duration::from_secs(20), async || written(&out_b).len()
            == 60)
        .await,
        "{:?}",
        numbers(&written(&out_b))
    );
    assert_eq!(
        numbers(&written(&out_a)),
        (0..20).collect::<Vec<_>>(),
        "nothing written by the paused daemon after it lost its lease"
    );
    let logs = a.logs();
    assert!(logs.contains("lease lost to another worker"), "{logs}");
    let (status, summary) = a.stop();
    assert!(status.success(), "{summary}");
    let (status, _) = b.stop();
    assert!(status.success());
    watch.assert_monotonic();
}
