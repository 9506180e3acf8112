//! KPL-aggregated records: split into their user records, checkpointed by sub-sequence number,
//! resumed inside an aggregate.

use super::*;

/// Refuses (as retryable, for good) every record whose `n` is at least `from`; stores the rest.
struct RefuseFrom {
    inner: MemorySink,
    from: u64,
}

#[async_trait]
impl Sink for RefuseFrom {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut answers = Vec::with_capacity(batch.len());
        for record in batch {
            answers.push(if record.value["n"].as_u64() >= Some(self.from) {
                Err(SinkError::Retryable("refused by the test".into()))
            } else {
                self.inner
                    .write(std::slice::from_ref(record))
                    .await
                    .remove(0)
            });
        }
        answers
    }
}

/// Puts one aggregate of user records `{"n": from..to}` (partition keys `user-N`).
async fn put_aggregate(stream: &Stream, from: usize, to: usize) -> String {
    let keys: Vec<String> = (from..to).map(|i| format!("user-{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let payloads: Vec<Vec<u8>> = (from..to)
        .map(|i| json!({ "n": i }).to_string().into_bytes())
        .collect();
    let users: Vec<(u64, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p.as_slice()))
        .collect();
    let data = sluice_core::testkit::kpl_aggregate(&key_refs, &users);
    let placed =
        testing::put_records(&stream.kinesis, &stream.name, vec![(data, "agg".into())]).await;
    placed[0].1.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_inside_an_aggregate_goes_on_there_and_stores_nothing_twice() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let stream = Stream::create(&endpoint, 1).await;
    stream.put(0, 10).await;
    let aggregate = put_aggregate(&stream, 10, 510).await;
    stream.put(510, 520).await;

    // The first run stores up to user record 189 of the aggregate (n = 199), then the sink
    // refuses: its checkpoint stops inside the aggregate.
    let first = MemorySink::default();
    let refusing = RefuseFrom {
        inner: first.clone(),
        from: 200,
    };
    let summary = stream
        .read_into("", &FaultPlan::new(), Arc::new(refusing))
        .await;
    assert!(!summary.is_success(), "records were refused: {summary:?}");
    assert_eq!(numbers(&first), (0..200).collect::<Vec<_>>());
    let lease = stream.leases().await.into_values().next().expect("a lease");
    assert_eq!(lease["checkpoint"].as_s().unwrap(), &aggregate);
    assert_eq!(
        lease["checkpointSubSequenceNumber"].as_n().unwrap(),
        "189",
        "the checkpoint names the last user record done"
    );

    // The second run goes on inside the aggregate: each record stored once in all.
    let (summary, second) = stream.read("", &FaultPlan::new()).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&second), (200..520).collect::<Vec<_>>());
    let users: Vec<_> = second
        .records()
        .into_iter()
        .filter(|r| r.meta.sequence_number.as_str() == aggregate)
        .collect();
    assert_eq!(users.len(), 310);
    assert!(users
        .iter()
        .all(|r| r.meta.partition_key == Some(format!("user-{}", r.value["n"]))));
    assert_eq!(users[0].meta.sub_sequence, Some(190));
}

/// A shard closed by a split whose last record is an aggregate: read to its end (SHARD_END),
/// then its children, by a one-pass run with settings `extra`.
async fn closes_on_an_aggregate(extra: &str) {
    let Some(moto) = moto_endpoint() else { return };
    let Some(kinesis_local) = kinesis_local_endpoint() else {
        return;
    };
    // Found by review: the reader's end was the aggregate's first user record, not its last, so
    // the shard never finished and its children were never read.
    let stream = Stream::create_on(&kinesis_local, &moto, 1).await;
    stream.put(0, 5).await;
    put_aggregate(&stream, 5, 10).await;
    let parent = stream.shards().await.into_keys().next().unwrap();
    stream
        .split(&parent, "170141183460469231731687303715884105728")
        .await;
    stream.put(10, 20).await;
    let (summary, sink) = stream.read(extra, &FaultPlan::new()).await;
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(numbers(&sink), (0..20).collect::<Vec<_>>());
    let leases = stream.leases().await;
    assert_eq!(
        leases[&parent]["checkpoint"].as_s().unwrap(),
        "SHARD_END",
        "{leases:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_closed_on_an_aggregate_is_finished_and_its_children_read() {
    closes_on_an_aggregate("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_closed_on_an_aggregate_is_finished_by_enhanced_fan_out_too() {
    closes_on_an_aggregate("mode = \"enhanced_fan_out\"\nconsumer_name = \"closing\"").await;
}
