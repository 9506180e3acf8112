//! The hot path per record against its limit: base64 → JSON → the Waze enrichers → the DynamoDB
//! put request in BatchWriteItem's wire format (the bytes the sink sends), beside plain
//! serde_json parse + re-serialise of the same bytes.

mod common;

// As in the sluice binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aws_sdk_dynamodb::types::ScalarAttributeType;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::sluice_core::decode::decode;
use sluice::sluice_core::{enrich, Verdict};
use sluice::sluice_sinks::dynamodb_encode::{write_put_request, KeyAttribute};

const RECORDS: usize = 1000;

fn per_record(c: &mut Criterion) {
    sluice::memory::tune();
    let enrichers = common::waze_enrichers();
    let key = vec![KeyAttribute {
        name: "CurationRecordId".into(),
        kind: ScalarAttributeType::S,
    }];
    let encoded = common::base64_records(RECORDS);
    let json: Vec<Vec<u8>> = (0..RECORDS).map(common::payload).collect();

    let mut group = c.benchmark_group("per_record");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("sluice_hot_path", |b| {
        b.iter_batched(
            || encoded.clone(),
            |raws| {
                futures::executor::block_on(async {
                    // One buffer for the run's requests, as the sink encodes them.
                    let mut requests = Vec::with_capacity(raws.len() * 512);
                    let mut written = 0;
                    'records: for raw in raws {
                        let Ok(mut record) = decode(raw) else {
                            continue;
                        };
                        for (_, e) in &enrichers {
                            if enrich(&**e, &mut record).await.expect("enriched") == Verdict::Skip {
                                continue 'records;
                            }
                        }
                        write_put_request(&record.value, true, &key, &mut requests)
                            .expect("an item");
                        written += 1;
                    }
                    // Dropped inside the timing, as the references drop theirs: the sink drops
                    // its requests once sent.
                    (written, requests.len())
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("serde_json_parse_and_serialise", |b| {
        b.iter(|| {
            json.iter()
                .map(|bytes| {
                    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    serde_json::to_vec(&v).unwrap()
                })
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("serde_json_with_base64", |b| {
        b.iter(|| {
            encoded
                .iter()
                .map(|raw| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&raw.data)
                        .unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    serde_json::to_vec(&v).unwrap()
                })
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(benches, per_record);
criterion_main!(benches);
