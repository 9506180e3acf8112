use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proptest::strategy::Strategy as _;

use super::*;
use crate::component::{Source, Verdict};
use crate::outcome::Outcome;
use crate::settings::OnExhausted;
use crate::testkit::{raw, FailingSink, Failure, FlakyEnricher, MemorySink, MemorySource};

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        max_elapsed: Duration::from_secs(10),
        on_exhausted: OnExhausted::Fail,
    }
}

fn pipeline(
    enrichers: Vec<NamedEnricher>,
    sink: Arc<dyn Sink>,
    error_sink: Arc<dyn Sink>,
    retry: RetryPolicy,
) -> Pipeline {
    Pipeline::new(
        "test",
        enrichers,
        sink,
        error_sink,
        BatchSettings {
            max_records: 10,
            max_age: Duration::from_secs(1),
        },
        retry,
    )
}

fn records(shard: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<RawRecord> {
    seqs.map(|i| raw(shard, i, &format!(r#"{{"n":{i},"shard":"{shard}"}}"#)))
        .collect()
}

fn outcome(report: &BatchReport, seq: u64) -> &Outcome {
    &report
        .outcomes
        .iter()
        .find(|(s, _)| *s == seq.into())
        .expect("position reported")
        .1
}

/// Skips records whose `n` is odd.
struct SkipOdd;

#[async_trait]
impl Enricher for SkipOdd {
    async fn enrich(&self, r: &mut Record) -> Result<Verdict, crate::error::EnrichError> {
        match r.value["n"].as_u64() {
            Some(n) if n % 2 == 1 => Ok(Verdict::Skip),
            Some(_) => Ok(Verdict::Keep),
            None => Err(crate::error::EnrichError::MissingField {
                field: "n".into(),
                context: "skip-odd".into(),
            }),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_and_then_stored() {
    let sink = FailingSink::default().failing(3, Failure::RetryableTimes(2));
    let dlq = MemorySink::default();
    let p = pipeline(
        vec![],
        Arc::new(sink.clone()),
        Arc::new(dlq.clone()),
        policy(),
    );
    let report = p.process_batch("s".into(), records("s", 1..=5)).await;
    assert!(
        report.outcomes.iter().all(|(_, o)| *o == Outcome::Stored),
        "{report:?}"
    );
    assert_eq!(sink.offered(3), 3, "two failures, then success");
    assert_eq!(sink.offered(2), 1, "neighbours are not written twice");
    assert_eq!(sink.inner.values().len(), 5);
    assert!(dlq.values().is_empty());
    assert_eq!(report.checkpoint().cloned(), Some(5.into()));
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_dead_lettered_with_their_reason_and_payload() {
    let sink = FailingSink::default().failing(2, Failure::Permanent);
    let dlq = MemorySink::default();
    let p = pipeline(
        vec![],
        Arc::new(sink.clone()),
        Arc::new(dlq.clone()),
        policy(),
    );
    let report = p.process_batch("s".into(), records("s", 1..=3)).await;
    assert_eq!(
        outcome(&report, 2),
        &Outcome::DeadLettered { stage: Stage::Sink }
    );
    assert_eq!(sink.offered(2), 1, "a permanent failure is not retried");
    let letters = dlq.values();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["stage"], "sink");
    assert_eq!(letters[0]["error"]["kind"], "permanent");
    assert_eq!(letters[0]["error"]["message"], "injected permanent failure");
    assert_eq!(letters[0]["source"]["sequence_number"], "2");
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(letters[0]["payload_base64"].as_str().expect("payload"))
        .expect("base64");
    assert_eq!(payload, br#"{"n":2,"shard":"s"}"#);
    assert_eq!(
        report.checkpoint().cloned(),
        Some(3.into()),
        "dead-lettered records are done"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_error_sink_makes_the_record_failed_and_stops_the_checkpoint() {
    let sink = FailingSink::default().failing(3, Failure::Permanent);
    let dlq = FailingSink::failing_all(Failure::AlwaysRetryable);
    let p = pipeline(
        vec![],
        Arc::new(sink.clone()),
        Arc::new(dlq.clone()),
        policy(),
    );
    let report = p.process_batch("s".into(), records("s", 1..=5)).await;
    assert!(
        matches!(outcome(&report, 3), Outcome::Failed { error } if error.contains("error sink failed"))
    );
    assert_eq!(
        dlq.offered(3),
        policy().attempts as usize,
        "the error sink is retried too"
    );
    assert_eq!(outcome(&report, 4), &Outcome::Stored);
    assert_eq!(report.checkpoint().cloned(), Some(2.into()));
    assert_eq!(report.first_failure(), Some(&3.into()));
}

#[tokio::test(start_paused = true)]
async fn after_a_failure_later_batches_of_that_shard_do_not_move_its_checkpoint() {
    let sink = FailingSink::default().failing(13, Failure::Permanent);
    let dlq = FailingSink::failing_all(Failure::Permanent);
    let p = pipeline(vec![], Arc::new(sink), Arc::new(dlq), policy());
    // Batches of 10: shard a fails at 13 (second batch); shard b is unaffected.
    let source = MemorySource::new(vec![
        ("a".into(), records("a", 1..=30)),
        ("b".into(), records("b", 101..=130)),
    ]);
    let acks = source.acks();
    let summary = p.run(Box::new(source), Arc::default()).await;
    assert_eq!(summary.counts.failed, 1);
    assert_eq!(summary.counts.stored, 59);
    assert!(!summary.is_success());
    assert_eq!(summary.checkpoints.get("a"), Some(&12.into()));
    assert_eq!(summary.checkpoints.get("b"), Some(&130.into()));
    let acks = acks.lock().expect("acks");
    let a: Vec<_> = acks
        .iter()
        .filter(|r| r.shard_id == "a")
        .map(|r| r.checkpoint().cloned())
        .collect();
    assert_eq!(a, vec![Some(10.into()), Some(12.into()), None]);
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_fail_or_dead_letter_as_configured() {
    for (on_exhausted, expect_failed) in
        [(OnExhausted::Fail, true), (OnExhausted::DeadLetter, false)]
    {
        let sink = FailingSink::default().failing(2, Failure::AlwaysRetryable);
        let dlq = MemorySink::default();
        let retry = RetryPolicy {
            on_exhausted,
            ..policy()
        };
        let p = pipeline(vec![], Arc::new(sink.clone()), Arc::new(dlq.clone()), retry);
        let report = p.process_batch("s".into(), records("s", 1..=3)).await;
        assert_eq!(sink.offered(2), 4, "attempts are bounded");
        if expect_failed {
            assert!(matches!(outcome(&report, 2), Outcome::Failed { .. }));
            assert!(dlq.values().is_empty());
        } else {
            assert_eq!(
                outcome(&report, 2),
                &Outcome::DeadLettered { stage: Stage::Sink }
            );
            assert_eq!(dlq.values()[0]["error"]["kind"], "retries_exhausted");
            assert_eq!(dlq.values()[0]["attempts"], 4);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_time_budget() {
    let sink = FailingSink::failing_all(Failure::AlwaysRetryable);
    let retry = RetryPolicy {
        attempts: 1000,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(5),
        on_exhausted: OnExhausted::Fail,
    };
    let p = pipeline(
        vec![],
        Arc::new(sink.clone()),
        Arc::new(MemorySink::default()),
        retry,
    );
    let started = tokio::time::Instant::now();
    let report = p.process_batch("s".into(), records("s", 1..=1)).await;
    assert!(matches!(outcome(&report, 1), Outcome::Failed { .. }));
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "no retry starts past the budget"
    );
    assert!(
        sink.offered(1) >= 5 && sink.offered(1) <= 11,
        "offered {}",
        sink.offered(1)
    );
}

#[tokio::test(start_paused = true)]
async fn enrichers_run_in_order_and_retry_retryable_errors() {
    let sink = MemorySink::default();
    let dlq = MemorySink::default();
    let enrichers = vec![
        NamedEnricher {
            name: "flaky".into(),
            enricher: Arc::new(FlakyEnricher::new(2)),
        },
        NamedEnricher {
            name: "skip-odd".into(),
            enricher: Arc::new(SkipOdd),
        },
    ];
    let p = pipeline(
        enrichers,
        Arc::new(sink.clone()),
        Arc::new(dlq.clone()),
        policy(),
    );
    let mut batch = records("s", 1..=4);
    batch.push(raw("s", 5, r#"{"no_n":true}"#));
    batch.push(raw("s", 6, r#"{"n":"#));
    let report = p.process_batch("s".into(), batch).await;
    assert_eq!(
        outcome(&report, 1),
        &Outcome::Skipped {
            by: SkippedBy::Enricher("skip-odd".into())
        }
    );
    assert_eq!(outcome(&report, 2), &Outcome::Stored);
    assert_eq!(
        outcome(&report, 5),
        &Outcome::DeadLettered {
            stage: Stage::Enrich("skip-odd".into())
        }
    );
    assert_eq!(
        outcome(&report, 6),
        &Outcome::DeadLettered {
            stage: Stage::Decode
        }
    );
    let stored: Vec<_> = sink.values().iter().map(|v| v["n"].clone()).collect();
    assert_eq!(stored, vec![2, 4], "kept records reach the sink in order");
    let letters = dlq.values();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["error"]["kind"], "missing_field");
    assert_eq!(letters[1]["stage"], "decode");
    assert_eq!(letters[1]["error"]["kind"], "decode");
}

/// Fails the record whose `n` is `self.0` retryably on its first attempt only.
struct FailsOnceAt(u64, std::sync::atomic::AtomicBool);

#[async_trait]
impl Enricher for FailsOnceAt {
    async fn enrich(&self, r: &mut Record) -> Result<Verdict, crate::error::EnrichError> {
        if r.value["n"].as_u64() == Some(self.0)
            && !self.1.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return Err(crate::error::EnrichError::Retryable("throttled".into()));
        }
        Ok(Verdict::Keep)
    }
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_takes_runs_gets_them_in_order_and_none_passes_a_waiting_record() {
    // Nothing waits: runs of two as the records are enriched, the last one short.
    let sink = MemorySink::default().with_max_write(2);
    let dlq = Arc::new(MemorySink::default());
    let p = pipeline(vec![], Arc::new(sink.clone()), dlq.clone(), policy());
    let report = p.process_batch("s".into(), records("s", 1..=7)).await;
    assert_eq!(sink.writes(), vec![2, 2, 2, 1]);
    assert!((1..=7).all(|seq| outcome(&report, seq) == &Outcome::Stored));

    // Record 3 waits for a retry: the run before it is written, then nothing until it is kept,
    // and it goes out in its place, with everything after it.
    let sink = MemorySink::default().with_max_write(2);
    let enrichers = vec![NamedEnricher {
        name: "fails-once".into(),
        enricher: Arc::new(FailsOnceAt(3, Default::default())),
    }];
    let p = pipeline(enrichers, Arc::new(sink.clone()), dlq.clone(), policy());
    let report = p.process_batch("s".into(), records("s", 1..=8)).await;
    assert_eq!(sink.writes(), vec![2, 6]);
    let stored: Vec<_> = sink.values().iter().map(|v| v["n"].clone()).collect();
    assert_eq!(stored, (1..=8).collect::<Vec<u64>>());
    assert!((1..=8).all(|seq| outcome(&report, seq) == &Outcome::Stored));
    assert_eq!(p.records_retried(), 1);

    // The first run needs a retry (record 2 is throttled once): the rest of the batch goes in one
    // write, with one retry budget, instead of a budget per run.
    let stored = MemorySink::default().with_max_write(2);
    let mut sink = FailingSink::default().failing(2, Failure::RetryableTimes(1));
    sink.inner = stored.clone();
    let p = pipeline(vec![], Arc::new(sink), dlq.clone(), policy());
    let report = p.process_batch("s".into(), records("s", 1..=7)).await;
    assert_eq!(
        stored.writes(),
        vec![1, 1, 5],
        "1 and 2 (retried), then 3..=7 at once"
    );
    assert!((1..=7).all(|seq| outcome(&report, seq) == &Outcome::Stored));
    assert!(dlq.records().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_enricher_that_never_recovers_fails_its_records() {
    let sink = MemorySink::default();
    let enrichers = vec![NamedEnricher {
        name: "ssm".into(),
        enricher: Arc::new(FlakyEnricher::new(usize::MAX)),
    }];
    let p = pipeline(
        enrichers,
        Arc::new(sink.clone()),
        Arc::new(MemorySink::default()),
        policy(),
    );
    let report = p.process_batch("s".into(), records("s", 1..=3)).await;
    assert!(report
        .outcomes
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Failed { .. })));
    assert!(
        sink.values().is_empty(),
        "never stored without the enrichment"
    );
    assert_eq!(report.checkpoint().cloned(), None);
}

/// A sink that can be switched off, like the DynamoDB sink with `PERSIST_RECORDS=0`.
struct Disabled(MemorySink);

#[async_trait]
impl Sink for Disabled {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        self.0.write(batch).await
    }
    fn enabled(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_disabled_sink_is_not_called_and_its_records_are_skipped() {
    let sink = MemorySink::default();
    let p = pipeline(
        vec![],
        Arc::new(Disabled(sink.clone())),
        Arc::new(MemorySink::default()),
        policy(),
    );
    let report = p.process_batch("s".into(), records("s", 1..=3)).await;
    assert!(report.outcomes.iter().all(|(_, o)| *o
        == Outcome::Skipped {
            by: SkippedBy::DisabledSink
        }));
    assert_eq!(sink.calls(), 0);
}

/// A sink that yields between records, so shard workers interleave.
#[derive(Clone, Default)]
struct SlowSink(MemorySink);

#[async_trait]
impl Sink for SlowSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5))).await;
        self.0.write(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_is_written_in_order_while_shards_interleave() {
    let sink = SlowSink::default();
    let p = pipeline(
        vec![],
        Arc::new(sink.clone()),
        Arc::new(MemorySink::default()),
        policy(),
    );
    let shards: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|s| (s.to_string(), records(s, 1..=200)))
        .collect();
    let summary = p
        .run(Box::new(MemorySource::new(shards)), Arc::default())
        .await;
    assert_eq!(summary.counts.stored, 600);
    let stored = sink.0.records();
    for shard in ["a", "b", "c"] {
        let seqs: Vec<_> = stored
            .iter()
            .filter(|r| r.meta.shard_id == shard)
            .map(|r| r.meta.sequence_number.clone())
            .collect();
        assert_eq!(seqs.len(), 200);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "shard {shard} out of order"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn outcomes_always_add_up_to_the_input() {
    fastrand::seed(7);
    for round in 0..40 {
        let mut sink = FailingSink::default();
        let mut batch = Vec::new();
        let n = fastrand::u64(1..60);
        for seq in 1..=n {
            let payload = match fastrand::u8(0..10) {
                0 => String::new(),
                1 => "[1,2]".to_owned(),
                2 => r#"{"no_n":1}"#.to_owned(),
                _ => format!(r#"{{"n":{seq}}}"#),
            };
            batch.push(raw("s", seq, &payload));
            sink = match fastrand::u8(0..6) {
                0 => sink.failing(seq, Failure::Permanent),
                1 => sink.failing(seq, Failure::RetryableTimes(fastrand::usize(1..6))),
                2 => sink.failing(seq, Failure::AlwaysRetryable),
                _ => sink,
            };
        }
        let dlq: Arc<dyn Sink> = if round % 3 == 0 {
            Arc::new(FailingSink::failing_all(Failure::Permanent))
        } else {
            Arc::new(MemorySink::default())
        };
        let enrichers = vec![NamedEnricher {
            name: "skip-odd".into(),
            enricher: Arc::new(SkipOdd),
        }];
        // Half the rounds write in runs (Sink::max_write), the others a batch at a time.
        let stored = MemorySink::default().with_max_write(fastrand::usize(0..8) * (round % 2));
        sink.inner = stored.clone();
        let p = pipeline(enrichers, Arc::new(sink), dlq, policy());
        let source = MemorySource::new(vec![("s".into(), batch)]);
        let summary = p
            .run(Box::new(source) as Box<dyn Source>, Arc::default())
            .await;
        assert_eq!(summary.counts.records, n, "round {round}");
        assert_eq!(
            summary.counts.stored,
            stored.records().len() as u64,
            "round {round}: counted as stored is what the sink took"
        );
        assert!(
            summary.counts.adds_up(),
            "round {round}: {:?}",
            summary.counts
        );
    }
}

/// Batches of shard `s`, each acknowledged with its holding number; the reports are kept.
struct Holdings {
    batches: Vec<(u64, Vec<RawRecord>)>,
    reports: Arc<std::sync::Mutex<Vec<BatchReport>>>,
}

struct HoldingAck(u64, Arc<std::sync::Mutex<Vec<BatchReport>>>);

#[async_trait]
impl crate::component::Acknowledge for HoldingAck {
    fn holding(&self) -> u64 {
        self.0
    }

    async fn acknowledge(
        self: Box<Self>,
        report: &BatchReport,
    ) -> Result<(), crate::error::SourceError> {
        self.1.lock().unwrap().push(report.clone());
        Ok(())
    }
}

impl Source for Holdings {
    fn batches(
        self: Box<Self>,
        _: BatchSettings,
    ) -> futures::stream::BoxStream<
        'static,
        Result<crate::component::SourceBatch, crate::error::SourceError>,
    > {
        use futures::StreamExt;
        let reports = self.reports;
        let batches: Vec<_> = self
            .batches
            .into_iter()
            .map(|(holding, records)| {
                Ok(crate::component::SourceBatch {
                    shard_id: "s".into(),
                    records,
                    ack: Some(Box::new(HoldingAck(holding, reports.clone())) as Box<_>),
                })
            })
            .collect();
        futures::stream::iter(batches).boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_holding_of_a_shard_starts_the_checkpoint_rule_afresh() {
    // Found by review: a failure in an earlier holding of the shard (before its lease went to
    // another worker and came back) froze the runtime's checkpoint for good.
    let sink = FailingSink::default().failing(2, Failure::AlwaysRetryable);
    let dlq = MemorySink::default();
    let p = pipeline(vec![], Arc::new(sink), Arc::new(dlq), policy());
    let reports = Arc::default();
    let source = Holdings {
        batches: vec![
            (1, records("s", 1..=3)),
            (1, records("s", 4..=5)),
            // Held again later, from another worker's checkpoint past the failed record.
            (2, records("s", 10..=12)),
        ],
        reports: Arc::clone(&reports),
    };
    let summary = p.run(Box::new(source), Arc::default()).await;
    let reports = reports.lock().unwrap();
    let reached: Vec<_> = reports.iter().map(|r| r.checkpoint().cloned()).collect();
    assert_eq!(reached, vec![Some(1.into()), None, Some(12.into())]);
    assert!(
        summary.is_success(),
        "the shard ends with nothing failed in its holding: {summary:?}"
    );
}

/// Batches of one record each, for ever, until asked to stop.
struct Endless {
    stop: crate::component::Shutdown,
    acks: Arc<std::sync::Mutex<Vec<BatchReport>>>,
}

impl Source for Endless {
    fn batches(
        self: Box<Self>,
        _: BatchSettings,
    ) -> futures::stream::BoxStream<
        'static,
        Result<crate::component::SourceBatch, crate::error::SourceError>,
    > {
        use futures::StreamExt;
        let Self { stop, acks } = *self;
        futures::stream::iter(1u64..)
            .take_while(move |_| std::future::ready(!stop.is_triggered()))
            .then(move |n| {
                let ack = crate::testkit::MemorySource::ack_into(acks.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(crate::component::SourceBatch {
                        shard_id: "s".into(),
                        records: records("s", n..=n),
                        ack: Some(ack),
                    })
                }
            })
            .boxed()
    }
}

/// A sink with a bug: it panics on record 3.
struct PanicsOnThree;

#[async_trait]
impl Sink for PanicsOnThree {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        assert!(batch.iter().all(|r| r.value["n"] != 3), "a bug in a sink");
        vec![Ok(()); batch.len()]
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_fails_the_run_and_stops_the_source() {
    // Found by review: a panic ended its task silently and the rest of the run went on.
    let stop = crate::component::Shutdown::default();
    let p = pipeline(
        vec![],
        Arc::new(PanicsOnThree),
        Arc::new(MemorySink::default()),
        policy(),
    )
    .with_stop(stop.clone());
    let acks = Arc::default();
    let source = Endless {
        stop: stop.clone(),
        acks: Arc::clone(&acks),
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(600),
        p.run(Box::new(source), Arc::default()),
    )
    .await
    .expect("the run stops");
    assert!(stop.is_triggered(), "the source is told to stop");
    assert!(!summary.is_success());
    assert!(
        summary.errors.iter().any(|e| e.contains("panicked")),
        "{:?}",
        summary.errors
    );
    let acked: Vec<_> = acks
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.checkpoint().cloned())
        .collect();
    assert_eq!(
        acked,
        vec![Some(1.into()), Some(2.into())],
        "nothing at or after the panic is acknowledged"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the payloads, every record gets one outcome: stored, or dead-lettered with its
    /// reason and the payload exactly as received; the counts add up.
    #[test]
    fn every_payload_is_stored_or_dead_lettered_whole(
        payloads in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                crate::decode::tests::any_json().prop_map(|v| v.to_string().into_bytes()),
            ],
            1..40,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let (report, stored, dead) = runtime.block_on(async {
            let sink = MemorySink::default();
            let dlq = MemorySink::default();
            let p = pipeline(vec![], Arc::new(sink.clone()), Arc::new(dlq.clone()), policy());
            let raws: Vec<RawRecord> = payloads
                .iter()
                .enumerate()
                .map(|(i, data)| RawRecord {
                    data: bytes::Bytes::copy_from_slice(data),
                    ..raw("s", i as u64 + 1, "")
                })
                .collect();
            let report = p.process_batch("s".into(), raws).await;
            (report, sink.records(), dlq.records())
        });
        proptest::prop_assert_eq!(report.outcomes.len(), payloads.len());
        let mut letters = dead.iter();
        for ((_, outcome), data) in report.outcomes.iter().zip(&payloads) {
            match outcome {
                Outcome::Stored => {}
                Outcome::DeadLettered { .. } => {
                    let letter = &letters.next().expect("a dead letter per such record").value;
                    proptest::prop_assert!(!letter["error"]["message"].as_str().unwrap_or_default().is_empty());
                    let kept = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        letter["payload_base64"].as_str().unwrap_or_default(),
                    ).expect("base64");
                    proptest::prop_assert_eq!(&kept[..], &data[..]);
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
        proptest::prop_assert!(letters.next().is_none());
        proptest::prop_assert_eq!(stored.len() + dead.len(), payloads.len());
    }
}

#[tokio::test]
async fn records_older_than_max_record_age_are_dead_lettered_as_expired() {
    let sink = MemorySink::default();
    let dlq = MemorySink::default();
    let p = pipeline(
        vec![],
        Arc::new(sink.clone()),
        Arc::new(dlq.clone()),
        policy(),
    )
    .with_max_record_age(Some(Duration::from_secs(3600)));
    let arrived = |minutes_ago: i64, seq: u64| {
        let mut r = raw("s", seq, &format!(r#"{{"n":{seq}}}"#));
        r.meta.arrival_time = Some(chrono::Utc::now() - chrono::Duration::minutes(minutes_ago));
        r
    };
    let no_time = raw("s", 4, r#"{"n":4}"#);
    let report = p
        .process_batch(
            "s".into(),
            vec![arrived(1, 1), arrived(61, 2), arrived(59, 3), no_time],
        )
        .await;
    assert_eq!(*outcome(&report, 1), Outcome::Stored);
    assert_eq!(
        *outcome(&report, 2),
        Outcome::DeadLettered { stage: Stage::Age }
    );
    assert_eq!(*outcome(&report, 3), Outcome::Stored);
    assert_eq!(
        *outcome(&report, 4),
        Outcome::Stored,
        "no arrival time: never expires"
    );
    let letter = &dlq.values()[0];
    assert_eq!(letter["error"]["kind"], "expired");
    assert!(
        letter["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than max_record_age (1h)"),
        "{letter}"
    );
    assert_eq!(
        report.checkpoint(),
        Some(&4.into()),
        "an expired record is done"
    );
    let exported = crate::metrics::metrics().encode();
    assert!(
        exported.contains("sluice_records_expired_total{pipeline=\"test\"}"),
        "{exported}"
    );
}
