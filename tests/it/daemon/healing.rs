//! A sink outage longer than the retry budget: the daemon's shard stops, is read again from its
//! checkpoint until the table is back, and every record is stored without a restart; `/health`
//! says 503 while the shard is stuck past its bound and 200 after; `/metrics` counts it all.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::ScalarAttributeType;
use sluice_core::aws::testing::{self, moto_endpoint};

use super::*;
use crate::aws_job::{bytes, expected_id, waze_payload, Put};

async fn stored_ids(world: &World) -> BTreeSet<String> {
    world
        .items()
        .await
        .iter()
        .filter_map(|i| i.get("CurationRecordId")?.as_s().ok().cloned())
        .collect()
}

fn ids(world: &World, puts: &[Put]) -> BTreeSet<String> {
    puts.iter().map(|p| expected_id(&world.stream, p)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_past_the_retry_budget_heals_without_a_restart_and_health_tells() {
    let Some(moto) = moto_endpoint() else { return };
    let world = World::create(&moto, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = world.variables();
    // Records fail within a second; the shard counts as stuck after two.
    for (k, v) in [
        ("SLUICE__RETRY__ATTEMPTS", "2"),
        ("SLUICE__RETRY__INITIAL_BACKOFF", "100ms"),
        ("SLUICE__RETRY__MAX_ELAPSED", "1s"),
        ("SLUICE_UNHEALTHY_AFTER", "2s"),
    ] {
        env.push((k, v.to_owned()));
    }
    let daemon = Daemon::start(&waze_pipeline(), "worker-a", &env, dir.path());
    assert_eq!(daemon.get("/ready").0, 200);
    assert_eq!(daemon.get("/health").0, 200);
    // The container's health check: `sluice probe` exits 0 on 200, not otherwise.
    let probe = |path: &str| {
        let url = format!("http://{}{path}", daemon.metrics);
        sluice()
            .args(["probe", &url])
            .status()
            .expect("probe runs")
            .success()
    };
    assert!(probe("/health"));

    let payloads =
        |r: std::ops::Range<usize>| r.map(|i| bytes(&waze_payload(i))).collect::<Vec<_>>();
    let mut puts = world.put(&payloads(0..10)).await;
    assert!(
        eventually(Duration::from_secs(20), async || stored_ids(&world).await
            == ids(&world, &puts))
        .await
    );

    // The table goes away: writes fail, past the retry budget.
    world
        .dynamodb
        .delete_table()
        .table_name(&world.table)
        .send()
        .await
        .expect("delete the table");
    puts.extend(world.put(&payloads(10..20)).await);
    let unhealthy = eventually(Duration::from_secs(20), async || {
        daemon.get("/health").0 == 503
    })
    .await;
    let (_, body) = daemon.get("/health");
    assert!(unhealthy && body.contains("stuck"), "{body}");
    assert!(
        body.contains("ResourceNotFoundException"),
        "says why it is stuck: {body}"
    );
    assert_eq!(
        daemon.get("/ready").0,
        200,
        "stuck is unhealthy, not unready"
    );
    assert!(!probe("/health"), "the health check fails while stuck");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = daemon.metrics();
    assert!(metric(&m, &["sluice_shard_rewinds_total"]) >= 1.0, "{m:?}");
    assert!(
        metric(&m, &["sluice_records_total", "outcome=\"failed\""]) >= 10.0,
        "{m:?}"
    );

    // Back (empty: the first ten went with the old table): every record of the outage is
    // stored, the checkpoint reaches the tip, health is back to 200.
    testing::create_table(
        &world.dynamodb,
        &world.table,
        &[("CurationRecordId", ScalarAttributeType::S)],
    )
    .await;
    let outage = ids(&world, &puts[10..]);
    let healed = eventually(Duration::from_secs(60), async || {
        stored_ids(&world).await == outage
    })
    .await;
    assert!(
        healed,
        "{} of the outage's 10 stored: {}",
        stored_ids(&world).await.len(),
        daemon.logs()
    );
    let tip = puts.last().unwrap().sequence_number.clone();
    let at_tip = eventually(Duration::from_secs(10), async || {
        leases(&world)
            .await
            .values()
            .any(|l| l.checkpoint.as_deref() == Some(tip.as_str()))
    })
    .await;
    assert!(at_tip, "{:?}", leases(&world).await);
    assert!(
        eventually(Duration::from_secs(10), async || daemon.get("/health").0
            == 200)
        .await
    );
    let m = daemon.metrics();
    assert_eq!(
        metric(&m, &["sluice_records_total", "outcome=\"stored\""]),
        20.0,
        "{m:?}"
    );
    assert!(metric(&m, &["sluice_sink_write_duration_seconds_count"]) >= 2.0);
    let logs = daemon.logs();
    assert_eq!(
        logs.matches("reads again from its checkpoint until it is stored")
            .count(),
        1,
        "one error line for the episode: {logs}"
    );
    let (status, summary) = daemon.stop();
    assert!(
        status.success(),
        "failed records delivered since: exit 0; {summary}"
    );
    assert!(summary["counts"]["failed"].as_u64().unwrap() >= 10);
}
