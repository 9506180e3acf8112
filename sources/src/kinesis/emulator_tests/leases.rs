//! Sharing a stream: leases held by live and dead workers, other streams' tables, resharding
//! across workers, and tables written by the Java KCL.

use super::*;

/// Expiry by observation: a lease whose counter keeps moving is left alone; once it stops moving
/// for `lease_duration` on this worker's clock, it is taken (`leaseExpiresAt` plays no part).
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_leased_by_a_live_worker_is_left_alone_and_a_lapsed_lease_is_taken() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 2).await;
    let shards = stream.put(0, 40).await;
    // Create the lease table with a first run, then hand one shard to another worker.
    stream.read("", &FaultPlan::new()).await;
    stream.put(40, 80).await;
    let held = shards[0].clone();
    let other = FakeWorker::hold(
        &stream,
        "other-worker",
        std::slice::from_ref(&held),
        Duration::from_millis(300),
    )
    .await;
    let quick = "lease_duration = \"3s\"\ncheckpoint_interval = \"1s\"";
    let (_, sink) = stream.read(quick, &FaultPlan::new()).await;
    assert!(!sink.records().is_empty());
    assert!(
        sink.records().iter().all(|r| r.meta.shard_id != held),
        "the held shard is not read"
    );
    assert_eq!(
        stream.leases().await[&held]["leaseOwner"].as_s().unwrap(),
        "other-worker"
    );

    // The other worker stopped renewing: its lease lapses and this worker takes the shard.
    other.stop().await;
    let (summary, sink) = stream.read(quick, &FaultPlan::new()).await;
    assert!(
        !sink.records().is_empty(),
        "{summary:?} {:?}",
        stream.leases().await
    );
    assert!(sink.records().iter().all(|r| r.meta.shard_id == held));
    assert!(!stream.leases().await[&held].contains_key("leaseOwner"));
}

#[tokio::test]
async fn a_lease_table_holding_another_streams_checkpoints_is_refused() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let first = Stream::create(&endpoint, 1).await;
    first.put(0, 3).await;
    first.read("", &FaultPlan::new()).await;
    // Same shard ids, another stream: reusing the checkpoints would skip its records.
    let mut second = Stream::create(&endpoint, 1).await;
    second.checkpoints = first.checkpoints.clone();
    second.put(0, 5).await;
    let (summary, sink) = second.read("", &FaultPlan::new()).await;
    assert!(sink.records().is_empty());
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.contains(&format!("holds the checkpoints of stream `{}`", first.name))),
        "{summary:?}"
    );
}

/// A child is read only once every parent is finished, whoever held the parents: while another
/// worker holds the split parent, neither it nor its children are read here; once that worker
/// finishes it, this one reads the children.
#[tokio::test(flavor = "multi_thread")]
async fn children_are_read_here_once_a_parent_held_elsewhere_is_finished() {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    // Two shards: the first is split while another worker holds it.
    let stream = Stream::create_on(&kinesis_local, &moto, 2).await;
    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "85070591730234615865843651857942052864")
        .await;
    let key = [("leaseKey", aws_sdk_dynamodb::types::ScalarAttributeType::S)];
    testing::create_table(&stream.dynamodb, &stream.checkpoints, &key).await;
    let other = FakeWorker::hold(
        &stream,
        "other-worker",
        std::slice::from_ref(&parent),
        Duration::from_millis(300),
    )
    .await;
    let children = stream.children_of(&parent).await;
    assert_eq!(children.len(), 2);
    // Records after the split land in the children (and the other open shard).
    stream.put(0, 30).await;

    let daemon = stream
        .daemon("lease_duration = \"3s\"\ncheckpoint_interval = \"1s\"")
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let leases = stream.leases().await;
    assert_eq!(
        leases[&parent]["leaseOwner"].as_s().unwrap(),
        "other-worker",
        "a live worker's lease within its share is not taken"
    );
    let early: Vec<String> = daemon
        .sink
        .records()
        .iter()
        .map(|r| r.meta.shard_id.clone())
        .collect();
    assert!(
        early.iter().all(|s| *s != parent && !children.contains(s)),
        "neither the parent nor its children are read here: {early:?}"
    );
    for child in &children {
        assert_eq!(
            leases[child]["parentShardId"].as_ss().unwrap(),
            &vec![parent.clone()],
            "KCL's name for the parents"
        );
    }

    // The other worker finishes the parent: SHARD_END, lease let go.
    other.stop().await;
    stream
        .dynamodb
        .update_item()
        .table_name(&stream.checkpoints)
        .key("leaseKey", AttributeValue::S(parent.clone()))
        .update_expression(
            "SET checkpoint = :end, leaseCounter = leaseCounter + :one REMOVE leaseOwner",
        )
        .expression_attribute_values(":end", AttributeValue::S("SHARD_END".into()))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .expect("finish the parent as the other worker");
    let read_all = eventually(Duration::from_secs(20), async || {
        daemon.sink.records().len() >= 30
    })
    .await;
    assert!(read_all, "{} of 30 read", daemon.sink.records().len());
    let (summary, sink) = daemon.stop().await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(
        numbers(&sink),
        (0..30).collect::<Vec<_>>(),
        "each record once"
    );
}

/// A table written by the Java KCL is read and continued: sluice resumes after each KCL
/// checkpoint (a placeholder too), leaves a lease a live KCL worker keeps renewing within its
/// share, takes a dead one's after the lease duration, and the rest once renewals stop.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_written_by_the_java_kcl_is_continued_from_its_checkpoints() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 3).await;
    let placed = stream.put_placed(0, 60).await;
    let mut ids: Vec<String> = placed.iter().map(|(s, _)| s.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "records on every shard");
    let on = |shard: &str| -> Vec<(usize, String)> {
        placed
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s == shard)
            .map(|(i, (_, seq))| (i, seq.clone()))
            .collect()
    };
    let key = [("leaseKey", aws_sdk_dynamodb::types::ScalarAttributeType::S)];
    testing::create_table(&stream.dynamodb, &stream.checkpoints, &key).await;
    // Shard 0: a dead KCL worker's, checkpointed at its 5th record. Shard 1: a live KCL
    // worker's, not started (TRIM_HORIZON). Shard 2: unowned, checkpointed at its 3rd record.
    let (s0, s1, s2) = (&ids[0], &ids[1], &ids[2]);
    put_kcl_lease(&stream, s0, Some("kcl-worker-1"), &on(s0)[4].1).await;
    put_kcl_lease(&stream, s1, Some("kcl-worker-2"), "TRIM_HORIZON").await;
    put_kcl_lease(&stream, s2, None, &on(s2)[2].1).await;
    let live = FakeWorker::hold(
        &stream,
        "kcl-worker-2",
        std::slice::from_ref(s1),
        Duration::from_millis(300),
    )
    .await;

    let daemon = stream
        .daemon("lease_duration = \"3s\"\ncheckpoint_interval = \"1s\"")
        .await;
    let expected = |shards: &[&String]| -> Vec<u64> {
        let mut n: Vec<u64> = shards
            .iter()
            .flat_map(|s| {
                let skip = if *s == s0 {
                    5
                } else if *s == s2 {
                    3
                } else {
                    0
                };
                on(s).into_iter().skip(skip).map(|(i, _)| i as u64)
            })
            .collect();
        n.sort_unstable();
        n
    };
    let first = expected(&[s0, s2]);
    let taken = eventually(Duration::from_secs(15), async || {
        numbers(&daemon.sink) == first
    })
    .await;
    assert!(taken, "{:?} vs {first:?}", numbers(&daemon.sink));
    let leases = stream.leases().await;
    assert_eq!(
        *leases[s1]["leaseOwner"].as_s().unwrap(),
        live.owner,
        "left to the live worker"
    );

    live.stop().await;
    let all = expected(&[s0, s1, s2]);
    let rest = eventually(Duration::from_secs(15), async || {
        numbers(&daemon.sink) == all
    })
    .await;
    assert!(rest, "{:?} vs {all:?}", numbers(&daemon.sink));
    let (summary, _) = daemon.stop().await;
    assert!(summary.is_success(), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_write_whose_answer_is_lost_is_settled_by_reading_it_back() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    // Found by review: the taking transaction took effect, its answer was lost, the retry failed
    // its own counter condition, and the run ended having read nothing, holding the leases.
    let stream = Stream::create(&endpoint, 2).await;
    stream.put(0, 20).await;
    let plan = FaultPlan::new();
    plan.fail("TransactWriteItems", Fault::LostAnswer, 1);
    let (summary, sink) = stream.read("", &plan).await;
    assert_eq!(plan.injected(), 1);
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..20).collect::<Vec<_>>());
    // Settled in the round that took them: read back, no second round of scanning.
    let calls = &summary.api_calls;
    assert!(
        calls.get("DynamoDB.GetItem").is_some_and(|n| *n >= 1),
        "{calls:?}"
    );
    assert_eq!(
        calls.get("DynamoDB.Scan"),
        Some(&2),
        "the start and the rescan: {calls:?}"
    );
    assert!(
        stream
            .leases()
            .await
            .values()
            .all(|l| !l.contains_key("leaseOwner")),
        "released at the end"
    );
}
