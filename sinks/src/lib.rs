//! sluice sinks: `dynamodb`, `sqs` (the dead-letter queue), `s3` (JSON lines archives), `sqlite`
//! (the embedded default store), `file` (JSON lines) and `stdout`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod dynamodb;
mod file;
mod route;
mod s3;
mod sqlite;
mod sqs;
mod stdout;

pub use dynamodb::{encode as dynamodb_encode, DynamoDbSinkConfig};
pub use file::FileSinkConfig;
pub use s3::S3SinkConfig;
pub use sqlite::SqliteSinkConfig;
pub use sqs::SqsSinkConfig;
pub use stdout::StdoutSinkConfig;

/// Records' values as JSON lines, one per record.
fn json_lines(batch: &[sluice_core::Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.len() * 512);
    for record in batch {
        serde_json::to_writer(&mut buf, &record.value).expect("a JSON value always serialises");
        buf.push(b'\n');
    }
    buf
}
