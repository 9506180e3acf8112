//! Test components: a memory source, a memory sink, and sinks and enrichers that fail on cue.
//! Used by the runtime's own tests and by component crates (feature `testkit`).

#[cfg(all(feature = "lambda", feature = "testkit"))]
pub mod lambda_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::component::{Acknowledge, Enricher, Sink, Source, SourceBatch, Verdict};
use crate::error::{EnrichError, SinkError, SourceError};
use crate::outcome::BatchReport;
use crate::record::{Encoding, Meta, RawRecord, Record, SequenceNumber};
use crate::settings::BatchSettings;

/// A KPL aggregated record's data, made by an encoder written from the protobuf wire format,
/// independent of sluice's decoder: `keys` is the partition key table, `users` the user records
/// as (partition key index, data).
pub fn kpl_aggregate(keys: &[&str], users: &[(u64, &[u8])]) -> Vec<u8> {
    use md5::{Digest, Md5};
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn field(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(tag << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }
    let mut message = Vec::new();
    for key in keys {
        field(1, key.as_bytes(), &mut message);
    }
    for (index, data) in users {
        let mut record = Vec::new();
        varint(1 << 3, &mut record);
        varint(*index, &mut record);
        field(3, data, &mut record);
        field(3, &record, &mut message);
    }
    let mut out = crate::kpl::MAGIC.to_vec();
    out.extend_from_slice(&message);
    out.extend_from_slice(&Md5::digest(&message));
    out
}

/// A raw JSON record at `shard`/`seq` of stream `test`.
pub fn raw(shard: &str, seq: u64, payload: &str) -> RawRecord {
    RawRecord {
        data: Bytes::copy_from_slice(payload.as_bytes()),
        encoding: Encoding::Raw,
        meta: Meta {
            source: "memory".into(),
            stream: "test".into(),
            shard_id: shard.into(),
            sequence_number: SequenceNumber::from(seq),
            ..Meta::default()
        },
    }
}

/// A decoded record at `shard`/`seq`.
pub fn record(shard: &str, seq: u64, value: serde_json::Value) -> Record {
    let r = raw(shard, seq, &value.to_string());
    Record {
        data: r.data,
        value,
        meta: r.meta,
    }
}

/// A source that yields the batches it was given and keeps the reports it is acknowledged with.
pub struct MemorySource {
    batches: Vec<(String, Vec<RawRecord>)>,
    acks: Arc<Mutex<Vec<BatchReport>>>,
}

impl MemorySource {
    /// A source of these batches (each split further by `max_records`).
    pub fn new(batches: Vec<(String, Vec<RawRecord>)>) -> Self {
        Self {
            batches,
            acks: Arc::default(),
        }
    }

    /// The reports acknowledged so far, in order of acknowledgement.
    pub fn acks(&self) -> Arc<Mutex<Vec<BatchReport>>> {
        self.acks.clone()
    }

    /// An acknowledgement that logs its report into `acks`.
    pub fn ack_into(acks: Arc<Mutex<Vec<BatchReport>>>) -> Box<dyn Acknowledge> {
        Box::new(MemoryAck(acks))
    }
}

struct MemoryAck(Arc<Mutex<Vec<BatchReport>>>);

#[async_trait]
impl Acknowledge for MemoryAck {
    async fn acknowledge(self: Box<Self>, report: &BatchReport) -> Result<(), SourceError> {
        self.0.lock().expect("ack log lock").push(report.clone());
        Ok(())
    }
}

impl Source for MemorySource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let acks = self.acks;
        let batches: Vec<_> = self
            .batches
            .into_iter()
            .flat_map(|(shard, records)| {
                // Moved into their batches, not copied: a bench times the runtime, not this.
                crate::settings::owned_chunks(records, settings.max_records)
                    .map(move |batch| (shard.clone(), batch))
            })
            .map(move |(shard_id, records)| {
                Ok(SourceBatch {
                    shard_id,
                    records,
                    ack: Some(Box::new(MemoryAck(acks.clone())) as Box<dyn Acknowledge>),
                })
            })
            .collect();
        stream::iter(batches).boxed()
    }
}

/// A sink that keeps what it is given, in order, and the size of each write.
#[derive(Clone, Default)]
pub struct MemorySink {
    records: Arc<Mutex<Vec<Record>>>,
    writes: Arc<Mutex<Vec<usize>>>,
    max_write: Option<std::num::NonZeroUsize>,
}

impl MemorySink {
    /// The records stored so far, in order of storing.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("sink lock").clone()
    }

    /// The values stored so far.
    pub fn values(&self) -> Vec<serde_json::Value> {
        self.records().into_iter().map(|r| r.value).collect()
    }

    /// How many times `write` was called.
    pub fn calls(&self) -> usize {
        self.writes().len()
    }

    /// How many records each `write` was given, in order.
    pub fn writes(&self) -> Vec<usize> {
        self.writes.lock().expect("sink lock").clone()
    }

    /// A sink that takes runs of at most `n` records ([`Sink::max_write`]).
    pub fn with_max_write(mut self, n: usize) -> Self {
        self.max_write = std::num::NonZeroUsize::new(n);
        self
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        self.writes.lock().expect("sink lock").push(batch.len());
        self.records
            .lock()
            .expect("sink lock")
            .extend(batch.iter().cloned());
        vec![Ok(()); batch.len()]
    }

    fn max_write(&self) -> Option<std::num::NonZeroUsize> {
        self.max_write
    }
}

/// How a [`FailingSink`] treats a record it picks.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Fails retryably this many times, then stores.
    RetryableTimes(usize),
    /// Always fails retryably.
    AlwaysRetryable,
    /// Always fails permanently.
    Permanent,
}

/// A memory sink that fails records picked by sequence number, or fails every record.
#[derive(Clone, Default)]
pub struct FailingSink {
    /// Where the records it lets through go.
    pub inner: MemorySink,
    rules: Arc<Mutex<HashMap<String, Failure>>>,
    everything: Option<Failure>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl FailingSink {
    /// A sink that fails the record at sequence number `seq` (of any shard) as `failure` says.
    pub fn failing(self, seq: u64, failure: Failure) -> Self {
        self.rules
            .lock()
            .expect("rules lock")
            .insert(seq.to_string(), failure);
        self
    }

    /// A sink that fails every record as `failure` says.
    pub fn failing_all(failure: Failure) -> Self {
        Self {
            everything: Some(failure),
            ..Self::default()
        }
    }

    /// How many times the record at `seq` was offered.
    pub fn offered(&self, seq: u64) -> usize {
        self.seen
            .lock()
            .expect("seen lock")
            .get(&seq.to_string())
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Sink for FailingSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut passed = Vec::new();
        for record in batch {
            let seq = record.meta.sequence_number.to_string();
            let seen = {
                let mut seen = self.seen.lock().expect("seen lock");
                let n = seen.entry(seq.clone()).or_default();
                *n += 1;
                *n
            };
            let rule = self
                .everything
                .clone()
                .or_else(|| self.rules.lock().expect("rules lock").get(&seq).cloned());
            let result = match rule {
                Some(Failure::RetryableTimes(n)) if seen <= n => Err(SinkError::Retryable(
                    format!("injected retryable failure {seen}/{n}"),
                )),
                Some(Failure::AlwaysRetryable) => {
                    Err(SinkError::Retryable("injected outage".into()))
                }
                Some(Failure::Permanent) => {
                    Err(SinkError::Permanent("injected permanent failure".into()))
                }
                _ => Ok(()),
            };
            if result.is_ok() {
                passed.push(record.clone());
            }
            results.push(result);
        }
        if !passed.is_empty() {
            self.inner.write(&passed).await;
        }
        results
    }

    fn max_write(&self) -> Option<std::num::NonZeroUsize> {
        self.inner.max_write()
    }
}

/// An enricher that fails retryably for its first `n` calls per record, then keeps the record.
#[derive(Default)]
pub struct FlakyEnricher {
    /// Retryable failures per record before success (`usize::MAX`: never succeeds).
    pub failures: usize,
    seen: Mutex<HashMap<String, usize>>,
}

impl FlakyEnricher {
    /// An enricher that fails each record `failures` times before keeping it.
    pub fn new(failures: usize) -> Self {
        Self {
            failures,
            seen: Mutex::default(),
        }
    }
}

#[async_trait]
impl Enricher for FlakyEnricher {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        let key = format!("{}/{}", record.meta.shard_id, record.meta.sequence_number);
        let mut seen = self.seen.lock().expect("seen lock");
        let n = seen.entry(key).or_default();
        *n += 1;
        if *n <= self.failures {
            Err(EnrichError::Retryable("parameter store unavailable".into()))
        } else {
            Ok(Verdict::Keep)
        }
    }
}

/// A memory sink that is down (every write fails retryably) until told it is back.
#[derive(Clone, Default)]
pub struct OutageSink {
    /// Where records go while it is up.
    pub inner: MemorySink,
    down: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl OutageSink {
    /// A sink that starts down.
    pub fn down() -> Self {
        let sink = Self::default();
        sink.set_down(true);
        sink
    }

    /// Takes it down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records refused so far (each attempt counts).
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl Sink for OutageSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            self.refused
                .fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
            return vec![Err(SinkError::Retryable("the store is down".into())); batch.len()];
        }
        self.inner.write(batch).await
    }
}

/// A retry policy for tests: six attempts, 10 ms first backoff, 10 s in all.
pub fn quick_retry() -> crate::settings::RetryPolicy {
    crate::settings::RetryPolicy {
        attempts: 6,
        initial_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(100),
        max_elapsed: std::time::Duration::from_secs(10),
        on_exhausted: crate::settings::OnExhausted::Fail,
    }
}

/// A pipeline with no enrichers that writes to `sink`, dead-letters into the returned memory
/// sink, and retries quickly: for testing a sink through the runtime.
pub fn sink_pipeline(sink: Arc<dyn Sink>) -> (crate::runtime::Pipeline, MemorySink) {
    let dead = MemorySink::default();
    let pipeline = crate::runtime::Pipeline::new(
        "test",
        Vec::new(),
        sink,
        Arc::new(dead.clone()),
        crate::settings::BatchSettings::default(),
        quick_retry(),
    );
    (pipeline, dead)
}
