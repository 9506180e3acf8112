//! sluice sources: `kinesis` (a polling consumer with a lease table), `file` (JSON lines, or a
//! Lambda Kinesis event file) and `stdin`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod file;
mod kinesis;
mod lines;
mod stdin;

pub use file::{FileFormat, FileSourceConfig};
pub use kinesis::{KinesisSourceConfig, Start};
pub use stdin::StdinSourceConfig;
