//! sluice sinks without AWS: `sqlite` (the embedded default store), `file` (JSON lines) and `stdout`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod file;
mod sqlite;
mod stdout;

pub use file::FileSinkConfig;
pub use sqlite::SqliteSinkConfig;
pub use stdout::StdoutSinkConfig;
