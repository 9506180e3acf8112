//! `type = "stdout"`: prints each record as one JSON line.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

/// Prints records to standard output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

sluice_core::register_schema!(sink "stdout" => StdoutSinkConfig);

#[typetag::serde(name = "stdout")]
#[async_trait]
impl SinkConfig for StdoutSinkConfig {
    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        Ok(Arc::new(StdoutSink))
    }

    fn describe(&self) -> String {
        "standard output (JSON lines)".into()
    }
}

struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let buf = crate::json_lines(batch);
        let mut out = std::io::stdout().lock();
        let result = out
            .write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Retryable(format!("writing to standard output: {e}")));
        vec![result; batch.len()]
    }
}
