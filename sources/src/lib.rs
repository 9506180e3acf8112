//! sluice sources: `kinesis` (a consumer with a lease table, polling or by enhanced fan-out),
//! `s3` (objects under a prefix, in key order), `file` (JSON lines, a Lambda Kinesis event file,
//! or JSON documents with arrays of records) and `stdin`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod document;
mod file;
mod kinesis;
mod lines;
mod s3;
mod stdin;

pub use document::{FileFormat, REFUSED_WHOLE};
pub use file::FileSourceConfig;
pub use kinesis::{KinesisSourceConfig, Start};
pub use s3::S3SourceConfig;
pub use stdin::StdinSourceConfig;
