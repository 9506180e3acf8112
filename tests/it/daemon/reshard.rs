//! A merge whose two parents are held by different daemons: the child is read after both
//! parents, by exactly one daemon.

use std::time::Duration;

use serde_json::json;
use sluice_core::aws::testing::{self, kinesis_local_endpoint, moto_endpoint};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_merge_of_parents_held_by_two_daemons_is_read_by_exactly_one() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let world = World::create_on(&kinesis_local, &moto, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = file_pipeline(dir.path());
    let mut env = world.variables();
    env.push(("AWS_ENDPOINT_URL_KINESIS", kinesis_local.clone()));
    let env_for = |out: &str| {
        let mut env = env.clone();
        env.push(("OUT", dir.path().join(out).display().to_string()));
        env
    };
    let outs = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    let watch = CheckpointWatch::start(&world);
    let a = Daemon::start(&file, "worker-a", &env_for("a.jsonl"), dir.path());
    let b = Daemon::start(&file, "worker-b", &env_for("b.jsonl"), dir.path());
    let split = eventually(LEASE * 6, async || {
        let owners = owners(&leases(&world).await);
        owners.get("worker-a") == Some(&1) && owners.get("worker-b") == Some(&1)
    })
    .await;
    assert!(split, "one parent each: {:?}", leases(&world).await);
    // Settled: the worker stolen from has seen its loss, the thief reads (a steal is read a
    // lease duration later). Records read by the one stolen from before it noticed would be
    // written again by the thief (at least once, as designed).
    tokio::time::sleep(LEASE + TAKE_INTERVAL).await;

    let payloads = |range: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        range
            .map(|i| json!({ "n": i }).to_string().into_bytes())
            .collect()
    };
    let before = world.put(&payloads(0..40)).await;
    let parents: Vec<String> = {
        let mut p: Vec<String> = before.iter().map(|p| p.shard_id.clone()).collect();
        p.sort();
        p.dedup();
        p
    };
    assert_eq!(parents.len(), 2);
    world
        .kinesis
        .merge_shards()
        .stream_name(&world.stream)
        .shard_to_merge(&parents[0])
        .adjacent_shard_to_merge(&parents[1])
        .send()
        .await
        .expect("merge");
    testing::wait_until_stream_active(&world.kinesis, &world.stream).await;
    let after = world.put(&payloads(40..80)).await;
    let child = after[0].shard_id.clone();
    assert!(after.iter().all(|p| p.shard_id == child) && !parents.contains(&child));

    let all = eventually(Duration::from_secs(40), async || {
        outs.iter().map(|o| written(o).len()).sum::<usize>() >= 80
    })
    .await;
    assert!(
        all,
        "{:?}",
        outs.iter().map(|o| written(o).len()).collect::<Vec<_>>()
    );
    let child_readers: Vec<usize> = outs
        .iter()
        .map(|o| {
            written(o)
                .iter()
                .filter(|l| l["shard"] == child.as_str())
                .count()
        })
        .collect();
    assert!(
        child_readers.contains(&40) && child_readers.contains(&0),
        "the child read by exactly one daemon: {child_readers:?}"
    );
    // Each record once.
    let mut seen: Vec<u64> = outs
        .iter()
        .flat_map(|o| written(o))
        .map(|l| l["n"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..80).collect::<Vec<_>>(), "each record once");
    // The child's first checkpoint of its own came after both parents were finished.
    let numeric = |cp: &str| cp.bytes().all(|b| b.is_ascii_digit());
    let checkpointed = eventually(Duration::from_secs(10), async || {
        watch.first(&child, numeric).is_some()
    })
    .await;
    assert!(
        checkpointed,
        "the child's checkpoint is stored: {:?}",
        leases(&world).await
    );
    let child_started = watch.first(&child, numeric).expect("checked above");
    for parent in &parents {
        let ended = watch
            .first(parent, |cp| cp == "SHARD_END")
            .expect("the parent finished");
        assert!(
            ended <= child_started,
            "{parent} ended at scan {ended}, the child began at {child_started}"
        );
    }
    let leases = leases(&world).await;
    for parent in &parents {
        assert!(
            leases
                .get(parent)
                .is_none_or(|l| l.checkpoint.as_deref() == Some("SHARD_END")),
            "{parent}: {leases:?}"
        );
    }
    for daemon in [a, b] {
        let (status, summary) = daemon.stop();
        assert!(status.success(), "{summary}");
    }
    watch.assert_monotonic();
}
