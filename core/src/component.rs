//! The component traits: sources, enrichers and sinks, and the typetag'd configs that build them.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::calls::ApiCalls;
use crate::error::{BuildError, EnrichError, SinkError, SourceError};
use crate::health::Health;
use crate::outcome::BatchReport;
use crate::preview::{Encoder, JsonEncoder};
use crate::record::{RawRecord, Record};
use crate::settings::BatchSettings;

/// What a component may need to know about the pipeline it is built into.
#[derive(Clone)]
pub struct BuildContext {
    /// The pipeline's `name`.
    pub pipeline: String,
    /// Whether the caller only validates: components check their settings but open nothing
    /// that would change the outside world (no files created, no tables made).
    pub validate_only: bool,
    /// Where components count their calls to outside services; the run summary reports them.
    pub api_calls: Arc<ApiCalls>,
    /// The fields records can have when they reach the component, when the enrichers before it
    /// tell (`None`: unknown); a sink checks its key against them before any record is read.
    pub record_fields: Option<BTreeSet<String>>,
    /// Endless sources (Kinesis) stop once every shard is read to its current tip and
    /// checkpointed, instead of waiting for new records: for one-shot runs, tests and benchmarks.
    pub until_caught_up: bool,
    /// Tells sources to stop reading (Ctrl-C, SIGTERM): they finish what they handed out, store
    /// their checkpoints and release what they hold.
    pub shutdown: Shutdown,
    /// This process's id among the workers that share a stream: written as the lease owner.
    pub worker_id: String,
    /// Where sources report readiness and health (`/ready`, `/health`).
    pub health: Arc<Health>,
    extensions: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("pipeline", &self.pipeline)
            .field("validate_only", &self.validate_only)
            .field("extensions", &self.extensions.len())
            .finish()
    }
}

impl BuildContext {
    /// The context for building pipeline `pipeline`'s components.
    pub fn new(pipeline: impl Into<String>, validate_only: bool) -> Self {
        Self {
            pipeline: pipeline.into(),
            validate_only,
            api_calls: Arc::default(),
            record_fields: None,
            until_caught_up: false,
            shutdown: Shutdown::default(),
            worker_id: default_worker_id(),
            health: Arc::default(),
            extensions: HashMap::new(),
        }
    }

    /// Hands components a value of a type they know (an embedding program's shared client,
    /// a test's fault-injecting HTTP client); one value per type.
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.extensions.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// The value of type `T` handed in with [`BuildContext::with`], if any.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }
}

/// A worker id unique to this process: the host name and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into());
    format!("{host}-{:08x}", fastrand::u32(..))
}

/// A signal to stop reading, shared by whoever triggers it and the sources that obey it.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Shutdown {
    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until a stop is asked for.
    pub async fn triggered(&self) {
        let mut rx = self.0.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Configuration of a source: one `[source]` table, chosen by its `type`.
#[typetag::serde(tag = "type")]
#[async_trait]
pub trait SourceConfig: Debug + Send + Sync {
    /// Checks the settings without any I/O (names, ranges, settings that go together). A
    /// pipeline checks every component before it builds any; a component's `build` checks
    /// itself again, for programs that build one directly.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
    /// Builds the source, after [`SourceConfig::validate`]; what it needs from outside (a
    /// stream, a file) is checked here, before any record is read.
    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError>;
    /// One line saying what this source reads, for `sluice validate` and the run summary.
    fn describe(&self) -> String;
}

/// Configuration of an enricher: one `[[enrichers]]` table, chosen by its `type`.
#[typetag::serde(tag = "type")]
#[async_trait]
pub trait EnricherConfig: Debug + Send + Sync {
    /// Checks the settings without any I/O; runs before any component is built.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
    /// Builds the enricher, after [`EnricherConfig::validate`].
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Enricher>, BuildError>;
    /// One line saying what this enricher does.
    fn describe(&self) -> String;
    /// The fields a record can have after this enricher, given those it could have before
    /// (`None`: unknown). The default says unknown; an enricher that fixes the shape says so,
    /// which lets a sink find a missing key before any record is read.
    fn fields_after(&self, before: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
        let _ = before;
        None
    }
}

/// Configuration of a sink: the `[sink]` or `[error_sink]` table, chosen by its `type`.
#[typetag::serde(tag = "type")]
#[async_trait]
pub trait SinkConfig: Debug + Send + Sync {
    /// Checks the settings without any I/O; runs before any component is built.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
    /// Builds the sink, after [`SinkConfig::validate`], checking that its destination exists
    /// and can take the records.
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError>;
    /// One line saying where this sink writes.
    fn describe(&self) -> String;
    /// Whether the sink writes at all (`false`: records are counted as skipped, as a disabled
    /// sink's are); `sluice test` shows what a run would do.
    fn enabled(&self) -> bool {
        true
    }
    /// What this sink would send for each record, worked out with no I/O (`sluice test`). The
    /// default: each record's JSON, to where [`SinkConfig::describe`] says.
    fn encoder(&self, ctx: &BuildContext) -> Result<Box<dyn Encoder>, BuildError> {
        let _ = ctx;
        Ok(Box::new(JsonEncoder {
            target: self.describe(),
        }))
    }
}

/// A batch of records from one shard, in order of sequence number.
pub struct SourceBatch {
    /// The shard all records belong to.
    pub shard_id: String,
    /// The records, in order.
    pub records: Vec<RawRecord>,
    /// Told the outcome of the batch, so the source can checkpoint; `None` when nothing is kept.
    pub ack: Option<Box<dyn Acknowledge>>,
}

impl Debug for SourceBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceBatch")
            .field("shard_id", &self.shard_id)
            .field("records", &self.records.len())
            .field("ack", &self.ack.is_some())
            .finish()
    }
}

/// Receives a processed batch's report; a source stores its checkpoint here.
#[async_trait]
pub trait Acknowledge: Send {
    /// Whether the batch may still be processed. A source that shares its shards with other
    /// workers answers false once it may have lost the shard (its lease taken or past its
    /// time): the runtime then hands the batch back unprocessed, and whoever holds the shard
    /// reads those records.
    fn is_current(&self) -> bool {
        true
    }

    /// Which holding of its shard the batch belongs to. A source that gives a shard up and may
    /// take it back later (another worker having moved its checkpoint meanwhile) answers a new
    /// number for each holding; the runtime then applies the checkpoint rule afresh, so a
    /// failure seen in an earlier holding holds nothing back.
    fn holding(&self) -> u64 {
        0
    }
    /// Called once per batch, in order per shard, after every record has an outcome.
    async fn acknowledge(self: Box<Self>, report: &BatchReport) -> Result<(), SourceError>;
}

/// A source of records: a stream of per-shard batches that ends when a finite source is exhausted.
pub trait Source: Send {
    /// Starts reading. Batches of one shard come in order; different shards may interleave.
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>>;
}

/// What an enricher decided for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the record on.
    Keep,
    /// Drop the record deliberately; it counts as `Skipped`.
    Skip,
}

/// Reads and rewrites records one at a time.
#[async_trait]
pub trait Enricher: Send + Sync {
    /// Enriches one record in place.
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError>;

    /// Enriches one record in place when that needs no waiting, as [`Enricher::enrich`] would;
    /// `None` (the default) has the runtime call `enrich`. An enricher whose work is in memory
    /// (or in a fresh cache) answers here too: each call of `enrich` boxes a future.
    fn enrich_now(&self, record: &mut Record) -> Option<Result<Verdict, EnrichError>> {
        let _ = record;
        None
    }
}

/// One record through one enricher, as the runtime does it: without waiting when the enricher
/// can ([`Enricher::enrich_now`]), else through [`Enricher::enrich`].
pub async fn enrich(enricher: &dyn Enricher, record: &mut Record) -> Result<Verdict, EnrichError> {
    match enricher.enrich_now(record) {
        Some(done) => done,
        None => enricher.enrich(record).await,
    }
}

/// Stores records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Writes a batch in order and answers for each record, in the same order.
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>>;
    /// Whether the sink writes at all (a sink may be switched off to dry-run a pipeline).
    fn enabled(&self) -> bool {
        true
    }
    /// The most records this sink takes in one [`Sink::write`], when it does not need a batch
    /// whole (`None`, the default: one write per batch, as a sink that makes one object of
    /// each batch needs). The runtime then writes a larger batch in runs of this size, in the
    /// batch's order, each run as soon as its records are enriched and while they are in
    /// cache; the batch is checkpointed only after every run.
    fn max_write(&self) -> Option<std::num::NonZeroUsize> {
        None
    }
}
