//! sluice: declarative stream-to-store pipelines.
//!
//! This facade links every component crate, so each component `type` is registered, and re-exports
//! them for programs that embed the runtime (a custom Lambda or daemon with its own sinks).

pub use sluice_core;
pub use sluice_enrichers;
pub use sluice_sinks;
pub use sluice_sources;

pub use sluice_core::{Pipeline, PipelineConfig, RunSummary};

pub mod memory;
