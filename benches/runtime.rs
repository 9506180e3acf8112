//! Runtime overhead: a memory source → the Waze enrichers → a sink that drops everything, on one
//! core (a current-thread runtime), at batch sizes 100, 500 and 10,000. The sink takes runs of
//! 800 records, as the DynamoDB sink does (`DROP_SINK_MAX_WRITE=0`: whole batches).

mod common;

// As in the sluice binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sluice::sluice_core::runtime::NamedEnricher;
use sluice::sluice_core::testkit::{MemorySink, MemorySource};
use sluice::sluice_core::{
    async_trait, BatchSettings, Pipeline, Progress, Record, RetryPolicy, Sink, SinkError,
};

const RECORDS: usize = 100_000;

/// Answers every record stored and keeps nothing.
struct DropSink;

#[async_trait]
impl Sink for DropSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        vec![Ok(()); batch.len()]
    }
    /// Runs of 800 records, as the DynamoDB sink takes at its default concurrency; with
    /// `DROP_SINK_MAX_WRITE=0`, one write per batch (a sink that needs its batch whole).
    fn max_write(&self) -> Option<std::num::NonZeroUsize> {
        std::num::NonZeroUsize::new(*MAX_WRITE.get_or_init(|| {
            std::env::var("DROP_SINK_MAX_WRITE").map_or(800, |n| n.parse().expect("a number"))
        }))
    }
}

static MAX_WRITE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn runtime(c: &mut Criterion) {
    sluice::memory::tune();
    let enrichers: Vec<NamedEnricher> = common::waze_enrichers()
        .into_iter()
        .map(|(name, enricher)| NamedEnricher { name, enricher })
        .collect();
    let records = common::raw_records(RECORDS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("runtime_drop_sink");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    for batch in [100, 500, 10_000] {
        let pipeline = Pipeline::new(
            "bench",
            enrichers.clone(),
            Arc::new(DropSink),
            Arc::new(MemorySink::default()),
            BatchSettings {
                max_records: batch,
                max_age: Duration::from_secs(1),
            },
            RetryPolicy::default(),
        );
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter_batched(
                || {
                    Box::new(MemorySource::new(vec![(
                        "shard-0".to_owned(),
                        records.clone(),
                    )]))
                },
                |source| {
                    let summary = rt.block_on(pipeline.run(source, Arc::new(Progress::default())));
                    assert_eq!(summary.counts.records, RECORDS as u64);
                    summary
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, runtime);
criterion_main!(benches);
