//! A Lambda function with a sink of its own: sluice runs the pipeline, you add the component.
//! Build it like sluice (`scripts/package-lambda` shows how) and deploy it with `pipeline.toml`.

use std::sync::Arc;

use sluice::sluice_core::{async_trait, lambda};
use sluice::sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

/// `type = "audit_log"` in a pipeline file: logs one field of every record.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogConfig {
    /// The field to log; a record without it is dead-lettered.
    pub field: String,
}

#[typetag::serde(name = "audit_log")]
#[async_trait]
impl SinkConfig for AuditLogConfig {
    async fn build(&self, _: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        Ok(Arc::new(AuditLog(self.field.clone())))
    }
    fn describe(&self) -> String {
        format!("audit log of `{}`", self.field)
    }
}

struct AuditLog(String);

#[async_trait]
impl Sink for AuditLog {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let audit = |r: &Record| {
            let value = r.value.get(&self.0).ok_or_else(|| {
                SinkError::Permanent(format!("no field `{}`", self.0)) // dead-lettered
            })?;
            tracing::info!(field = %self.0, %value, "audited");
            Ok(())
        };
        batch.iter().map(audit).collect() // one answer per record, in order
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda::Error> {
    tracing_subscriber::fmt().json().init();
    // `SLUICE_PIPELINE`, else `pipeline.toml`; a file that cannot run answers with the reason.
    lambda::run("pipeline.toml").await
}

#[cfg(test)]
mod tests;
