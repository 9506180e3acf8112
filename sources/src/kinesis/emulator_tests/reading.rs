//! Reading: order, resuming, throttling, start positions, resharding, healing.

use super::*;

#[tokio::test]
async fn every_shard_is_read_in_order_and_a_rerun_resumes_from_the_checkpoints() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 3).await;
    stream.put(0, 60).await;
    let (summary, sink) = stream.read("", &FaultPlan::new()).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..60).collect::<Vec<_>>());
    // Within each shard, records arrive in sequence-number order.
    let mut by_shard: BTreeMap<String, Vec<SequenceNumber>> = BTreeMap::new();
    for r in sink.records() {
        assert_eq!(r.meta.source, "kinesis");
        assert_eq!(r.meta.stream, stream.name);
        assert!(r
            .meta
            .partition_key
            .as_deref()
            .is_some_and(|k| k.starts_with("key-")));
        by_shard
            .entry(r.meta.shard_id.clone())
            .or_default()
            .push(r.meta.sequence_number);
    }
    for seqs in by_shard.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    // Checkpoints stored for each shard, leases released.
    let leases = stream.leases().await;
    for (shard, seqs) in &by_shard {
        let lease = &leases[shard];
        assert_eq!(
            lease["checkpoint"].as_s().unwrap(),
            seqs.last().unwrap().as_str()
        );
        assert!(!lease.contains_key("leaseOwner"), "released: {lease:?}");
        assert!(
            lease["leaseCounter"]
                .as_n()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 2
        );
    }

    let (summary, sink) = stream.read("", &FaultPlan::new()).await;
    assert_eq!(summary.counts.records, 0, "nothing new: {summary:?}");
    assert!(sink.records().is_empty());
    stream.put(60, 65).await;
    let (_, sink) = stream.read("", &FaultPlan::new()).await;
    assert_eq!(numbers(&sink), (60..65).collect::<Vec<_>>());
}

#[tokio::test]
async fn throttled_and_failing_get_records_back_off_and_lose_nothing() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 20).await;
    let plan = FaultPlan::new();
    plan.fail("GetRecords", Fault::Throttle, 3)
        .fail("GetRecords", Fault::ServerError, 1);
    let (summary, sink) = stream.read("limit = 5", &plan).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..20).collect::<Vec<_>>());
    assert!(plan.injected() >= 4);
}

/// Found by the chaos test: a throttled GetShardIterator ended a `--until-caught-up` run with the
/// shard unread; it now backs off and tries again, as GetRecords does.
#[tokio::test]
async fn a_throttled_or_failing_get_shard_iterator_backs_off_and_reads_the_shard() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 10).await;
    let plan = FaultPlan::new();
    // Past the SDK's own three attempts, twice over.
    plan.fail("GetShardIterator", Fault::Throttle, 4).fail(
        "GetShardIterator",
        Fault::ServerError,
        3,
    );
    let (summary, sink) = stream.read("", &plan).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..10).collect::<Vec<_>>());
    assert_eq!(plan.injected(), 7);
}

/// Found by an audit after the chaos test: when creating a new shard's lease failed past the
/// SDK's retries, a one-pass run saw no lease left to take and ended as caught up, with nothing
/// read and success reported. It now waits for the next round's creation.
#[tokio::test]
async fn a_failed_lease_creation_is_tried_again_before_a_run_is_caught_up() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 10).await;
    let plan = FaultPlan::new();
    plan.fail("PutItem", Fault::ServerError, 6);
    let (summary, sink) = stream.read("", &plan).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..10).collect::<Vec<_>>());
    assert_eq!(plan.injected(), 6);
}

/// Leases that turn over in seconds, so a run's rounds of trying pass quickly.
const SHORT_LEASE: &str = "lease_duration = \"3s\"\ncheckpoint_interval = \"1s\"";

/// A one-pass run of a one-shard stream of three records under `plan`, with short leases; it
/// must end. `None` without the emulator.
async fn read_three_under(plan: &FaultPlan) -> Option<(Stream, RunSummary, MemorySink)> {
    let endpoint = moto_endpoint()?;
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 3).await;
    let (summary, sink) =
        tokio::time::timeout(Duration::from_secs(240), stream.read(SHORT_LEASE, plan))
            .await
            .expect("the run ends");
    Some((stream, summary, sink))
}

/// Whether one of the run's errors contains `reason`.
fn ended_with(summary: &RunSummary, reason: &str) -> bool {
    summary.errors.iter().any(|e| e.contains(reason))
}

/// A lease that cannot be created at all ends a one-pass run with the reason, after its rounds
/// of trying, instead of waiting forever or reporting the shard read.
#[tokio::test]
async fn a_lease_that_cannot_be_created_ends_a_run_with_the_reason() {
    let plan = FaultPlan::new();
    plan.fail("PutItem", Fault::ServerError, u32::MAX);
    let Some((_, summary, sink)) = read_three_under(&plan).await else {
        return;
    };
    assert!(sink.records().is_empty());
    assert!(
        ended_with(&summary, "creating the lease of shard"),
        "{summary:?}"
    );
}

/// Found by an audit: the scan that follows a lease's creation failing ended a run with a
/// generic error of its own instead of the scan's reason.
#[tokio::test]
async fn a_lease_table_that_cannot_be_read_again_ends_a_run_with_the_scans_reason() {
    let plan = FaultPlan::new();
    // The start's scan passes; every one after it fails.
    plan.fail_after("Scan", 1, Fault::ServerError, u32::MAX);
    let Some((stream, summary, _)) = read_three_under(&plan).await else {
        return;
    };
    let reason = format!("reading lease table `{}`", stream.checkpoints);
    assert!(ended_with(&summary, &reason), "{summary:?}");
}

/// A one-pass run of a one-shard stream (records 0..20) whose shard is split after the run has
/// listed the shards and made its lease, before the reader has an iterator; records 20..40 go
/// to the children. `meanwhile` changes the plan just before the reader goes on. With the
/// parent's id, its children's, and the lease table after the run; `None` without the emulators.
async fn read_across_a_split(meanwhile: impl FnOnce(&FaultPlan)) -> Option<AcrossASplit> {
    let moto = moto_endpoint()?;
    let kinesis_local = kinesis_local_endpoint()?;
    let stream = Stream::create_on(&kinesis_local, &moto, 1).await;
    let key = |i: usize| format!("key-{}", i % 16);
    stream.put_keyed(0, 20, key).await;
    let parent = stream.shards().await.into_keys().next().unwrap();
    let plan = FaultPlan::new();
    plan.fail_always("GetShardIterator", Fault::Throttle);
    let run = stream.read(SHORT_LEASE, &plan);
    let reshard = async {
        assert!(
            eventually(Duration::from_secs(30), async || plan.injected() > 0).await,
            "the reader asked for an iterator"
        );
        stream
            .split(&parent, "170141183460469231731687303715884105728")
            .await;
        stream.put_keyed(20, 40, key).await;
        meanwhile(&plan);
        plan.heal("GetShardIterator");
    };
    let (read, ()) = tokio::time::timeout(Duration::from_secs(150), async {
        futures::join!(run, reshard)
    })
    .await
    .expect("the run ends");
    let children = stream.children_of(&parent).await;
    Some(AcrossASplit {
        summary: read.0,
        sink: read.1,
        leases: stream.leases().await,
        parent,
        children,
    })
}

struct AcrossASplit {
    summary: RunSummary,
    sink: MemorySink,
    leases: HashMap<String, HashMap<String, AttributeValue>>,
    parent: String,
    children: Vec<String>,
}

/// Found by an audit: when a shard was read to its end and listing the shards then failed, a
/// one-pass run ended as caught up before a later listing showed the shard's children, and
/// reported success with them unread. It now waits for a listing and the children's leases.
#[tokio::test]
async fn a_shard_that_ends_while_the_shards_cannot_be_listed_still_has_its_children_read() {
    // The SDK's three attempts of the listing when the shard ends, and of the next one.
    let Some(AcrossASplit { summary, sink, .. }) = read_across_a_split(|plan| {
        plan.fail("ListShards", Fault::ServerError, 6);
    })
    .await
    else {
        return;
    };
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(
        numbers(&sink),
        (0..40).collect::<Vec<_>>(),
        "the children too"
    );
}

/// Found by review of the fix above: a one-pass run waiting for the children's leases waited
/// forever when they could not be created, or the table not read; it gives up after its rounds.
#[tokio::test]
async fn children_whose_leases_cannot_be_made_end_a_run_with_the_reason() {
    for (operation, reason) in [
        ("PutItem", "creating the lease of shard"),
        ("Scan", "reading lease table"),
    ] {
        let Some(AcrossASplit { summary, sink, .. }) = read_across_a_split(|plan| {
            plan.fail_always(operation, Fault::ServerError);
        })
        .await
        else {
            return;
        };
        assert_eq!(
            numbers(&sink),
            (0..20).collect::<Vec<_>>(),
            "{operation}: the parent"
        );
        assert!(ended_with(&summary, reason), "{operation}: {summary:?}");
    }
}

/// A shard read to its end names its children in its lease (`childShardIds`, which a KCL worker
/// sharing the table reads) as Kinesis names them at the end (GetRecords' `ChildShards`): they
/// used to come from a listing only, so a finished lease had none when the listings failed.
#[tokio::test]
async fn a_finished_shard_names_its_children_though_the_shards_cannot_be_listed() {
    let Some(split) = read_across_a_split(|plan| {
        plan.fail_always("ListShards", Fault::ServerError);
    })
    .await
    else {
        return;
    };
    assert_eq!(numbers(&split.sink), (0..20).collect::<Vec<_>>());
    assert!(
        ended_with(&split.summary, "ListShards"),
        "the children were never listed: {:?}",
        split.summary
    );
    assert_eq!(split.children.len(), 2);
    let parent = &split.leases[&split.parent];
    assert_eq!(parent["checkpoint"].as_s().unwrap(), "SHARD_END");
    let mut named = parent
        .get("childShardIds")
        .and_then(|c| c.as_ss().ok())
        .cloned()
        .unwrap_or_default();
    named.sort();
    assert_eq!(named, split.children);
}

/// Found by review: a one-pass run whose lease takes kept failing (denied access, a lasting
/// outage of the table's writes) saw the free lease at every round and never ended.
#[tokio::test]
async fn a_lease_that_cannot_be_taken_ends_a_run_with_the_reason() {
    let plan = FaultPlan::new();
    plan.fail_always("TransactWriteItems", Fault::ServerError);
    let Some((_, summary, sink)) = read_three_under(&plan).await else {
        return;
    };
    assert!(sink.records().is_empty());
    assert!(!summary.is_success(), "{summary:?}");
    assert!(ended_with(&summary, "InternalServerError"), "{summary:?}");
}

/// Found by the chaos test: the last lease writes of a stopping run were made once, so a run
/// that had stored every record ended with an error when they failed past the SDK's retries.
#[tokio::test]
async fn the_last_lease_writes_are_tried_again_when_they_fail() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 5).await;
    let plan = FaultPlan::new();
    plan.fail_when(
        "TransactWriteItems",
        "REMOVE leaseOwner, leaseExpiresAt",
        Fault::ServerError,
    );
    // Healed once the first release has failed through the SDK's three attempts.
    let healer = {
        let plan = plan.clone();
        tokio::spawn(async move {
            while plan.injected() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            plan.heal("TransactWriteItems");
        })
    };
    let (summary, sink) = stream.read("", &plan).await;
    healer.abort();
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..5).collect::<Vec<_>>());
    let lease = &stream.leases().await["shardId-000000000000"];
    assert!(!lease.contains_key("leaseOwner"), "released: {lease:?}");
}

#[tokio::test]
async fn at_timestamp_starts_at_the_given_time() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stream.put(5, 10).await;
    let start = format!(
        "start = \"at_timestamp\"\ntimestamp = \"{}\"",
        from.to_rfc3339()
    );
    let (_, sink) = stream.read(&start, &FaultPlan::new()).await;
    assert_eq!(numbers(&sink), (5..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn latest_starts_where_reading_first_began_also_after_a_stop() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    // Found by review: an empty shard stored no checkpoint, so a run started again at LATEST
    // and skipped what was written while none ran.
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (first, sink) = stream.read("start = \"latest\"", &FaultPlan::new()).await;
    assert!(first.is_success() && sink.records().is_empty(), "{first:?}");
    // Written while nothing runs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stream.put(5, 10).await;
    let (_, sink) = stream.read("start = \"latest\"", &FaultPlan::new()).await;
    assert_eq!(numbers(&sink), (5..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_missing_stream_is_a_clear_error_at_start_up() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    let mut config = stream.config("");
    config.stream = "arn:aws:kinesis:us-east-1:123456789012:stream/no-such-stream".into();
    let e = config
        .build(&testing::context("test", &FaultPlan::new()))
        .await
        .err()
        .expect("the build fails");
    let BuildError::Unavailable {
        what,
        message,
        transient: false,
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(what, "Kinesis stream `no-such-stream`");
    assert!(message.contains("ResourceNotFoundException"), "{message}");
}

#[tokio::test]
async fn after_a_split_and_a_merge_every_record_is_stored_parents_before_children() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let stream = Stream::create_on(&kinesis_local, &moto, 1).await;
    let key = |i: usize| format!("key-{}", i % 16);
    stream.put_keyed(0, 64, key).await;

    // Split the only shard at the middle of the hash key range.
    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "170141183460469231731687303715884105728")
        .await;
    stream.put_keyed(64, 128, key).await;

    // Merge the two children back into one.
    let children: Vec<String> = stream
        .shards()
        .await
        .into_iter()
        .filter(|(_, (parents, closed))| parents.contains(&parent) && !closed)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(children.len(), 2, "{:?}", stream.shards().await);
    stream
        .kinesis
        .merge_shards()
        .stream_name(&stream.name)
        .shard_to_merge(&children[0])
        .adjacent_shard_to_merge(&children[1])
        .send()
        .await
        .expect("merge");
    testing::wait_until_stream_active(&stream.kinesis, &stream.name).await;
    stream.put_keyed(128, 192, key).await;
    let shards = stream.shards().await;
    assert_eq!(shards.len(), 4, "{shards:?}");

    let sink = MemorySink::default();
    let slow = SlowForShard {
        inner: sink.clone(),
        shard: parent.clone(),
    };
    let summary = stream
        .read_into("", &FaultPlan::new(), Arc::new(slow))
        .await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(
        numbers(&sink),
        (0..192).collect::<Vec<_>>(),
        "every record, once"
    );
    // For each key, records were written in the order they were put: the parent's (before the
    // split) first, then the children's, then the merged shard's.
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in sink.values() {
        by_key
            .entry(v["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["n"].as_u64().unwrap());
    }
    for (k, ns) in &by_key {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{k}: {ns:?}");
    }
    // Closed shards are checkpointed as finished, with their parents recorded (KCL's
    // `parentShardId`); a finished lease whose children all have checkpoints of their own may
    // already be cleaned up.
    let leases = stream.leases().await;
    let finished_or_gone = |id: &str| {
        leases
            .get(id)
            .is_none_or(|l| l["checkpoint"].as_s().unwrap() == "SHARD_END")
    };
    assert!(finished_or_gone(&parent), "{leases:?}");
    for child in &children {
        assert!(finished_or_gone(child), "{leases:?}");
        if let Some(lease) = leases.get(child) {
            assert_eq!(
                lease["parentShardId"].as_ss().unwrap(),
                &vec![parent.clone()]
            );
        }
    }
    let merged = shards
        .keys()
        .find(|id| **id != parent && !children.contains(id))
        .unwrap();
    assert_ne!(leases[merged]["checkpoint"].as_s().unwrap(), "SHARD_END");
    let mut merged_parents = leases[merged]["parentShardId"].as_ss().unwrap().clone();
    merged_parents.sort();
    let mut both = children.clone();
    both.sort();
    assert_eq!(merged_parents, both, "a merge child names both parents");

    let (summary, _) = stream.read("", &FaultPlan::new()).await;
    assert_eq!(
        summary.counts.records, 0,
        "a rerun reads nothing again: {summary:?}"
    );
}

#[tokio::test]
async fn a_running_daemon_follows_a_split_to_the_children() {
    follows_a_split("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_on_enhanced_fan_out_follows_a_split_to_the_children() {
    // kinesis-local's subscriptions do not name a closed shard's children: the consumer's
    // listing (every few take rounds: short leases here) tells the reader.
    follows_a_split(
        "mode = \"enhanced_fan_out\"\nconsumer_name = \"split-follower\"\nlease_duration = \"3s\"",
    )
    .await;
}

/// A daemon (with settings `extra`) reads a shard split while it runs: every record, parents
/// finished before children, leases released.
async fn follows_a_split(extra: &str) {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let stream = Stream::create_on(&kinesis_local, &moto, 1).await;
    let key = |i: usize| format!("key-{}", i % 8);
    stream.put_keyed(0, 20, key).await;
    let daemon = stream
        .daemon(&format!(
            "poll_interval = \"100ms\"\ncheckpoint_interval = \"1s\"\n{extra}"
        ))
        .await;
    let sink = daemon.sink.clone();
    let until_stored = |n: usize| {
        let sink = sink.clone();
        async move {
            for _ in 0..300 {
                if sink.records().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{} of {n} records stored after 30 s", sink.records().len());
        }
    };
    until_stored(20).await;

    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "170141183460469231731687303715884105728")
        .await;
    stream.put_keyed(20, 40, key).await;
    until_stored(40).await;

    let (summary, sink) = daemon.stop().await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..40).collect::<Vec<_>>());
    let leases = stream.leases().await;
    let parent_done = leases
        .get(&parent)
        .is_none_or(|l| l["checkpoint"].as_s().unwrap() == "SHARD_END");
    assert!(
        parent_done,
        "finished, or cleaned up after its children: {leases:?}"
    );
    assert_eq!(
        leases.len(),
        2 + usize::from(leases.contains_key(&parent)),
        "the two children, and the parent until cleaned up: {leases:?}"
    );
    assert!(
        leases.values().all(|l| !l.contains_key("leaseOwner")),
        "released on stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_reads_failed_records_again_until_the_sink_is_back_and_loses_none() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    let sink = OutageSink::down();
    // Records fail fast: two attempts within 100 ms, then Failed.
    let retry = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        max_elapsed: Duration::from_millis(100),
        on_exhausted: OnExhausted::Fail,
    };
    let pipeline = Pipeline::new(
        "test",
        Vec::new(),
        Arc::new(sink.clone()),
        Arc::new(MemorySink::default()),
        BatchSettings::default(),
        retry,
    );
    let daemon = stream
        .daemon_with(
            "checkpoint_interval = \"500ms\"\nlease_duration = \"3s\"\npoll_interval = \"200ms\"",
            pipeline,
            sink.inner.clone(),
            &FaultPlan::new(),
        )
        .await;
    let placed = stream.put_placed(0, 30).await;
    let last = placed.last().cloned().unwrap().1;
    // The records fail, more than once: the shard is read again after each failure.
    assert!(
        eventually(Duration::from_secs(20), async || sink.refused() >= 60).await,
        "refused {}",
        sink.refused()
    );
    assert!(sink.inner.records().is_empty());
    sink.set_down(false);
    let all_stored = eventually(Duration::from_secs(30), async || {
        numbers(&sink.inner)
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 30
    })
    .await;
    assert!(all_stored, "stored {:?}", numbers(&sink.inner));
    // The checkpoint reaches the last record, without a restart.
    let reached = eventually(Duration::from_secs(10), async || {
        let leases = stream.leases().await;
        leases
            .values()
            .next()
            .and_then(|l| l.get("checkpoint"))
            .and_then(|c| c.as_s().ok())
            .is_some_and(|c| *c == last)
    })
    .await;
    assert!(reached, "{:?}", stream.leases().await);
    let (summary, _) = daemon.stop().await;
    assert!(summary.counts.failed > 0, "{summary:?}");
}

/// A daemon on `stream` whose calls go through `plan`, and its sink.
async fn daemon_under(stream: &Stream, plan: &FaultPlan) -> (Daemon, MemorySink) {
    let sink = MemorySink::default();
    let (pipeline, _) = sink_pipeline(Arc::new(sink.clone()));
    let daemon = stream
        .daemon_with(
            "checkpoint_interval = \"200ms\"",
            pipeline,
            sink.clone(),
            plan,
        )
        .await;
    (daemon, sink)
}

/// The daemon ends by itself after a panic: the run fails saying so, and no lease stays held.
async fn assert_the_panic_ends_the_run_and_releases_the_leases(stream: &Stream, daemon: Daemon) {
    let summary = tokio::time::timeout(Duration::from_secs(30), daemon.running)
        .await
        .expect("the run stops by itself")
        .expect("runs");
    assert!(!summary.is_success());
    assert!(
        summary.errors.iter().any(|e| e.contains("panicked")),
        "{:?}",
        summary.errors
    );
    let leases = stream.leases().await;
    assert!(!leases.is_empty());
    assert!(
        leases.values().all(|l| !l.contains_key("leaseOwner")),
        "{leases:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_reader_fails_the_run_and_its_leases_are_released() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    // Found by review: a panic ended its task silently, the run exited 0 and the leases stayed
    // held (renewed, unread) while the daemon ran.
    let stream = Stream::create(&endpoint, 2).await;
    stream.put(0, 10).await;
    let plan = FaultPlan::new();
    plan.fail("GetRecords", Fault::Panic, 1);
    let (daemon, _) = daemon_under(&stream, &plan).await;
    assert_the_panic_ends_the_run_and_releases_the_leases(&stream, daemon).await;
    assert_eq!(plan.injected(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_consumer_fails_the_run_and_its_leases_are_released() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 2).await;
    stream.put(0, 10).await;
    let plan = FaultPlan::new();
    let (daemon, sink) = daemon_under(&stream, &plan).await;
    assert!(eventually(Duration::from_secs(20), async || sink.records().len() == 10).await);
    // The next renewal panics inside the consumer's own task.
    plan.fail("TransactWriteItems", Fault::Panic, 1);
    assert_the_panic_ends_the_run_and_releases_the_leases(&stream, daemon).await;
    assert_eq!(plan.injected(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_failing_at_the_start_is_waited_out() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    // Found by review: a throttling burst at the first ListShards (past the SDK's three
    // attempts) ended the run with nothing read.
    let stream = Stream::create(&endpoint, 2).await;
    stream.put(0, 20).await;
    let plan = FaultPlan::new();
    plan.fail("ListShards", Fault::Throttle, 4)
        .fail("Scan", Fault::ServerError, 4);
    let (summary, sink) = stream.read("", &plan).await;
    assert_eq!(plan.injected(), 8);
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_read_a_stream_at_once_by_enhanced_fan_out() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let stream = Stream::create_on(&kinesis_local, &moto, 2).await;
    stream.put(0, 200).await;
    // Two pipelines, each its own consumer and lease table, read at the same time.
    let other = stream.with_own_checkpoints();
    let efo = |name: &str| format!("mode = \"enhanced_fan_out\"\nconsumer_name = \"{name}\"");
    let (a, b) = (efo("consumer-a"), efo("consumer-b"));
    let plan = FaultPlan::new();
    let (first, second) = tokio::join!(stream.read(&a, &plan), other.read(&b, &plan));
    for (summary, sink) in [&first, &second] {
        assert!(summary.is_success(), "{summary:?}");
        assert_eq!(numbers(sink), (0..200).collect::<Vec<_>>());
        assert!(
            summary
                .api_calls
                .get("Kinesis.SubscribeToShard")
                .is_some_and(|n| *n >= 2),
            "{:?}",
            summary.api_calls
        );
        assert_eq!(summary.api_calls.get("Kinesis.GetRecords"), None);
    }
    let consumers = stream
        .kinesis
        .list_stream_consumers()
        .stream_arn(stream.arn().await)
        .send()
        .await
        .expect("consumers");
    let mut names: Vec<&str> = consumers
        .consumers()
        .iter()
        .map(|c| c.consumer_name())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["consumer-a", "consumer-b"], "registered once each");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_dropped_mid_run_resumes_without_loss() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    let stream = Stream::create_on(&kinesis_local, &moto, 2).await;
    // The first four subscriptions drop a few frames in, while records keep arriving: a
    // resubscription anywhere but right after what was delivered loses or repeats some.
    let plan = FaultPlan::new();
    plan.fail("SubscribeToShard", Fault::CutStream { frames: 3 }, 4);
    let sink = MemorySink::default();
    let (pipeline, _) = sink_pipeline(Arc::new(sink.clone()));
    let daemon = stream
        .daemon_with(
            "mode = \"enhanced_fan_out\"\nconsumer_name = \"dropped\"\ncheckpoint_interval = \"1s\"",
            pipeline,
            sink.clone(),
            &plan,
        )
        .await;
    for wave in 0..20 {
        stream.put(wave * 10, wave * 10 + 10).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        eventually(Duration::from_secs(30), async || sink.records().len()
            >= 200)
        .await
    );
    let (summary, sink) = daemon.stop().await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(plan.injected(), 4);
    assert_eq!(
        numbers(&sink),
        (0..200).collect::<Vec<_>>(),
        "every record once"
    );
}

#[tokio::test]
async fn a_process_holds_no_more_records_than_its_budget_whatever_its_shards() {
    use futures::StreamExt;
    use sluice_core::{BatchReport, Outcome, SourceBatch};
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 4).await;
    stream.put(0, 200).await;
    let mut ctx = testing::context("test", &FaultPlan::new());
    ctx.until_caught_up = true;
    let source = stream
        .config("max_records_in_flight = 30")
        .build(&ctx)
        .await
        .expect("the source builds");
    let mut batches = source.batches(BatchSettings {
        max_records: 10,
        max_age: Duration::from_secs(1),
    });
    let done = |batch: SourceBatch| async move {
        let outcomes = batch
            .records
            .iter()
            .map(|r| (r.meta.position(), Outcome::Stored))
            .collect();
        let report = BatchReport::new(batch.shard_id.clone(), outcomes);
        let numbers: Vec<u64> = batch
            .records
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.data).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        batch
            .ack
            .expect("an ack")
            .acknowledge(&report)
            .await
            .expect("acknowledged");
        numbers
    };

    // Batches held, not done: the four readers stop once 30 records are out, though each
    // shard holds 50 and GetRecords could give them all.
    let first = tokio::time::timeout(Duration::from_secs(30), batches.next()).await;
    let mut held = vec![first.expect("a first batch").expect("one").expect("read")];
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(3), batches.next()).await {
        held.push(next.expect("more to come").expect("read"));
    }
    let out: usize = held.iter().map(|b| b.records.len()).sum();
    assert!(out <= 30, "{out} records handed out with a budget of 30");

    // Each batch done gives its records back, and the rest of the stream is read.
    let mut seen = Vec::new();
    for batch in held {
        seen.extend(done(batch).await);
    }
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(60), batches.next())
        .await
        .expect("the stream goes on")
    {
        seen.extend(done(batch.expect("read")).await);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
}
