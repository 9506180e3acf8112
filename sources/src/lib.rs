//! sluice sources without AWS: `file` (JSON lines, or a Lambda Kinesis event file) and `stdin`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod file;
mod lines;
mod stdin;

pub use file::{FileFormat, FileSourceConfig};
pub use stdin::StdinSourceConfig;
