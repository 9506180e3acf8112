//! Three daemons of the Waze job on one six-shard stream: each gets its share, every record is
//! stored once per key, checkpoints only move forward, and a killed daemon's shards move on.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sluice_core::aws::testing::moto_endpoint;

use super::*;
use crate::aws_job::{bytes, expected_id, waze_payload, Put};

async fn put_waze(world: &World, range: std::ops::Range<usize>) -> Vec<Put> {
    let payloads: Vec<Vec<u8>> = range.map(|i| bytes(&waze_payload(i))).collect();
    world.put(&payloads).await
}

/// Every put record's item is in the table, once (items are keyed by their source position).
async fn all_stored(world: &World, puts: &[Put]) -> bool {
    let ids: BTreeSet<String> = world
        .items()
        .await
        .iter()
        .filter_map(|i| i.get("CurationRecordId")?.as_s().ok().cloned())
        .collect();
    let expected: BTreeSet<String> = puts.iter().map(|p| expected_id(&world.stream, p)).collect();
    ids == expected
}

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_share_a_stream_and_a_killed_ones_shards_move_on() {
    let Some(moto) = moto_endpoint() else { return };
    let world = World::create(&moto, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let watch = CheckpointWatch::start(&world);
    let env = world.variables();
    let file = waze_pipeline();

    let a = Daemon::start(&file, "worker-a", &env, dir.path());
    let mut puts = put_waze(&world, 0..60).await;
    let b = Daemon::start(&file, "worker-b", &env, dir.path());
    puts.extend(put_waze(&world, 60..120).await);
    let c_started = Instant::now();
    let c = Daemon::start(&file, "worker-c", &env, dir.path());
    puts.extend(put_waze(&world, 120..180).await);

    // Within a few lease periods each holds two.
    let share: HashMap<String, usize> = ["worker-a", "worker-b", "worker-c"]
        .iter()
        .map(|w| ((*w).to_owned(), 2))
        .collect();
    let balanced = eventually(LEASE * 6, async || owners(&leases(&world).await) == share).await;
    assert!(balanced, "{:?}", leases(&world).await);
    eprintln!(
        "rebalanced {:?} after the third daemon started",
        c_started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(30), async || all_stored(&world, &puts)
            .await)
        .await
    );
    for daemon in [&a, &b, &c] {
        // Each learns of a lease stolen from it at its next renewal.
        let held_two = eventually(LEASE, async || {
            metric(&daemon.metrics(), &["sluice_leases_held"]) == 2.0
        })
        .await;
        let m = daemon.metrics();
        assert!(held_two, "{}: {m:?}", daemon.name);
        let gained = metric(&m, &["sluice_lease_transitions_total", "event=\"taken\""])
            + metric(&m, &["sluice_lease_transitions_total", "event=\"stolen\""]);
        assert!(gained >= 2.0, "{}: {m:?}", daemon.name);
        assert!(metric(&m, &["sluice_aws_calls_total", "service=\"DynamoDB\""]) >= 1.0);
    }
    // kill -9: its shards go to the others within a lease duration and a take round or two.
    let held_by_c: Vec<String> = leases(&world)
        .await
        .into_iter()
        .filter(|(_, l)| l.owner.as_deref() == Some("worker-c"))
        .map(|(k, _)| k)
        .collect();
    let killed = Instant::now();
    c.kill();
    let moved = eventually(LEASE * 4, async || {
        let now = leases(&world).await;
        held_by_c
            .iter()
            .all(|s| matches!(now[s].owner.as_deref(), Some("worker-a") | Some("worker-b")))
    })
    .await;
    let failover = killed.elapsed();
    assert!(moved, "{:?}", leases(&world).await);
    eprintln!("failover after kill -9: {failover:?}");
    assert!(
        failover <= LEASE + TAKE_INTERVAL * 2 + Duration::from_secs(2),
        "failover took {failover:?}"
    );
    puts.extend(put_waze(&world, 180..240).await);
    assert!(
        eventually(Duration::from_secs(30), async || all_stored(&world, &puts)
            .await)
        .await
    );

    // SIGTERM: records read finish, checkpoints stored, leases released, exit 0.
    for daemon in [a, b] {
        let name = daemon.name.clone();
        let (status, summary) = daemon.stop();
        assert!(status.success(), "{name}: {summary}");
    }
    assert!(
        leases(&world).await.values().all(|l| l.owner.is_none()),
        "released on stop: {:?} {}",
        leases(&world).await,
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
    watch.assert_monotonic();
}
