//! sluice-core: the record model, the component traits, pipeline files and the runtime.
//!
//! A pipeline chains one source, enrichers in order, one sink and one error sink. Components are
//! registered with typetag: a crate that implements [`SinkConfig`] with
//! `#[typetag::serde(name = "x")]` adds `type = "x"` to pipeline files once it is linked.

pub mod arn;
#[cfg(feature = "aws")]
pub mod aws;
pub mod calls;
pub mod component;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod error;
pub mod health;
pub mod kinesis_event;
pub mod kpl;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod metrics;
#[cfg(feature = "ops")]
pub mod ops;
pub mod outcome;
pub mod position;
pub mod preview;
pub mod record;
pub mod runtime;
pub mod schema;
pub mod settings;
pub mod template;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use async_trait::async_trait;
pub use calls::ApiCalls;
pub use component::{
    default_worker_id, enrich, Acknowledge, BuildContext, Enricher, EnricherConfig, Shutdown, Sink,
    SinkConfig, Source, SourceBatch, SourceConfig, Verdict,
};
pub use config::{Built, Loader, PipelineConfig};
pub use error::{BuildError, ConfigError, EnrichError, SinkError, SourceError};
pub use outcome::{BatchReport, ErrorKind, Failure, Outcome, ShardTracker, SkippedBy, Stage};
pub use position::{Checkpoint, Position, SequenceNumber};
pub use record::{Encoding, Meta, RawRecord, Record};
pub use runtime::{Pipeline, Progress, RunSummary};
pub use settings::{owned_chunks, Backoff, BatchSettings, OnExhausted, RetryPolicy};
pub use typetag;

/// The sluice version, written into dead-letter envelopes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
