//! The chaos suite: the real `sluice` binary runs the Waze pipeline against the emulator through
//! a fault-injecting proxy, and is killed with `kill -9` at random moments and restarted, while
//! the input arrives in waves. Then the accounting: every valid record stored exactly once per
//! key, every malformed record in the DLQ, and a last pass over the whole stream whose summary
//! adds up to the input with nothing failed. The faults and the kill moments come from one seed
//! (`SLUICE_CHAOS_SEED` replays another); the figures are printed at the end.

mod proxy;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_core::aws::testing::moto_endpoint;

use crate::aws_job::{bytes, expected_id, waze_payload, Put, World};
use crate::daemon::{waze_pipeline, Daemon};
use proxy::Chaos;

/// Records in all, put in as many waves as there are kills before the last run.
const RECORDS: usize = 20_000;
const WAVES: usize = 4;
/// `kill -9`s before the run that is let finish.
const KILLS: usize = 6;
/// Each killed run lives this long (ms), drawn from the seed.
const LIFETIME_MS: std::ops::Range<u64> = 2_000..9_000;

/// What record `i` is: most are valid Waze records, one in twenty is skipped by the pipeline's
/// filter (not under `waze/`), one in twenty is not JSON at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    Filtered,
    Malformed,
}

fn kind(i: usize) -> Kind {
    match i % 20 {
        0 => Kind::Malformed,
        1 => Kind::Filtered,
        _ => Kind::Valid,
    }
}

fn payload(i: usize) -> Vec<u8> {
    match kind(i) {
        Kind::Valid => bytes(&waze_payload(i)),
        Kind::Filtered => {
            let mut p = waze_payload(i);
            p["s3-key"] = Value::String(format!("other/file_{i:05}.csv.gz"));
            bytes(&p)
        }
        Kind::Malformed => format!("{{not json {i}").into_bytes(),
    }
}

/// The run's environment: the Waze job's variables with every AWS call sent through the proxy,
/// and retries sized for fault rates far above real AWS's (a fifth of some calls fail here).
fn environment(world: &World, proxy: std::net::SocketAddr) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = world
        .variables()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ENDPOINT_URL")
        .collect();
    env.push(("AWS_ENDPOINT_URL", format!("http://{proxy}")));
    env.push(("SLUICE__RETRY__ATTEMPTS", "10".into()));
    env.push(("SLUICE__RETRY__MAX_ELAPSED", "60s".into()));
    env
}

/// The DLQ as read so far: distinct source positions, and messages in all.
#[derive(Default)]
struct DeadLetters {
    positions: BTreeSet<(String, String)>,
    messages: usize,
}

impl DeadLetters {
    async fn drain(&mut self, world: &World) {
        for letter in world.dead_letters().await {
            self.messages += 1;
            let source = &letter["source"];
            self.positions.insert((
                source["shard_id"].as_str().unwrap_or_default().to_owned(),
                source["sequence_number"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
}

/// The ids in the table (each item once: a scan cannot show duplicates of a key, so an extra
/// item means an id that should not exist).
async fn stored_ids(world: &World) -> Vec<String> {
    world
        .items()
        .await
        .iter()
        .filter_map(|item| item.get("CurationRecordId")?.as_s().ok().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn under_faults_and_kill_9_every_record_is_stored_once_or_dead_lettered() {
    let Some(moto) = moto_endpoint() else {
        return;
    };
    let seed: u64 = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_126);
    let began = Instant::now();
    let world = World::create(&moto, 4).await;
    let chaos = Chaos::new(seed);
    let proxy = proxy::start(&moto, chaos.clone()).await;
    let outages = chaos.schedule_sqs_outages();
    let env = environment(&world, proxy);
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = waze_pipeline();
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut puts: Vec<(usize, Put)> = Vec::new();
    let per_wave = RECORDS / WAVES;
    // A start during an SQS outage or a throttling burst waits it out; it never fails.
    let start = |name: &str| {
        Daemon::try_start(&pipeline, name, &env, dir.path(), Duration::from_secs(60))
            .unwrap_or_else(|logs| panic!("a start under faults failed: {logs}"))
    };

    // The chaos phase: input in waves, each run killed at a random moment.
    for round in 0..KILLS {
        if round < WAVES {
            let from = round * per_wave;
            let payloads: Vec<_> = (from..from + per_wave).map(payload).collect();
            let placed = world.put(&payloads).await;
            puts.extend((from..).zip(placed));
        }
        // A new worker each time, as a restarted container is: it takes the killed one's
        // leases once they lapse.
        let daemon = start(&format!("chaos-{round}"));
        tokio::time::sleep(Duration::from_millis(rng.u64(LIFETIME_MS))).await;
        daemon.kill();
    }

    // The last run is let finish: it must reach every record, however the killed ones left
    // the checkpoints; then it is stopped (SIGTERM) and must end with nothing unresolved.
    let valid: HashSet<String> = puts
        .iter()
        .filter(|(i, _)| kind(*i) == Kind::Valid)
        .map(|(_, put)| expected_id(&world.stream, put))
        .collect();
    let malformed: BTreeSet<(String, String)> = puts
        .iter()
        .filter(|(i, _)| kind(*i) == Kind::Malformed)
        .map(|(_, p)| (p.shard_id.clone(), p.sequence_number.clone()))
        .collect();
    let mut letters = DeadLetters::default();
    let last = start("chaos-last");
    let finish_by = Instant::now() + Duration::from_secs(300);
    loop {
        letters.drain(&world).await;
        let ids = stored_ids(&world).await;
        let complete = ids.len() >= valid.len() && letters.positions.len() >= malformed.len();
        assert!(
            complete || Instant::now() < finish_by,
            "not every record arrived: {} of {} stored, {} of {} dead-lettered; {}",
            ids.len(),
            valid.len(),
            letters.positions.len(),
            malformed.len(),
            last.logs()
        );
        if complete {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (status, summary) = last.stop();
    assert!(
        status.success(),
        "the last run ends with nothing unresolved: {summary}"
    );

    // Exactly one item per key (a redelivery overwrites its own): no missing id, no extra one.
    let stored: HashSet<String> = stored_ids(&world).await.into_iter().collect();
    let missing = valid.difference(&stored).count();
    let extra = stored.difference(&valid).count();
    assert_eq!((missing, extra), (0, 0), "stored ids differ from the input");
    letters.drain(&world).await;
    assert_eq!(
        letters.positions, malformed,
        "the DLQ holds every malformed record"
    );
    let chaos_phase = began.elapsed();

    // A last pass over the whole stream (its checkpoints removed), faults still on but no SQS
    // outage: its summary accounts for every record put, and nothing fails.
    outages.abort();
    chaos.end_outage();
    world
        .dynamodb
        .delete_table()
        .table_name(&world.checkpoints)
        .send()
        .await
        .expect("remove the checkpoints");
    let mut pass = world.run_command("json");
    for (k, v) in &env {
        pass.env(k, v);
    }
    let (out, stdout, stderr) = crate::run(&mut pass);
    assert!(
        out.status.success(),
        "the last pass failed: {stderr}\n{stdout}"
    );
    let pass: Value = serde_json::from_str(&stdout).expect("a JSON summary");
    let counts = &pass["counts"];
    let count = |k: &str| counts[k].as_u64().unwrap_or(u64::MAX) as usize;
    let filtered = puts
        .iter()
        .filter(|(i, _)| kind(*i) == Kind::Filtered)
        .count();
    assert_eq!(
        (
            count("records"),
            count("stored"),
            count("skipped"),
            count("dead_lettered"),
            count("failed")
        ),
        (RECORDS, valid.len(), filtered, malformed.len(), 0),
        "{pass}"
    );
    assert_eq!(
        stored_ids(&world).await.len(),
        valid.len(),
        "delivered again, nothing doubles"
    );

    let tally = chaos.tally();
    let faults: u64 = tally.values().sum();
    println!(
        "chaos (seed {seed}): {RECORDS} records ({} valid, {filtered} filtered, {} malformed) \
         in {WAVES} waves; {KILLS} kill -9s; \
         {faults} faults injected; {} dead letters for {} malformed records; \
         chaos phase {:.0} s, whole test {:.0} s",
        valid.len(),
        malformed.len(),
        letters.messages,
        malformed.len(),
        chaos_phase.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    for (what, n) in &tally {
        println!("  {what}: {n}");
    }
}
