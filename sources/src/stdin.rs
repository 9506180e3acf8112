//! `type = "stdin"`: JSON lines from standard input, batched by count or age.

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sluice_core::{
    BatchSettings, BuildContext, BuildError, Shutdown, Source, SourceBatch, SourceConfig,
    SourceError,
};

use crate::lines::{json_lines, Origin};

/// Reads JSON lines from standard input until it closes.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// The stream name records carry (templates read it as `{$meta.stream}`).
    #[serde(default = "default_stream")]
    pub stream: String,
}

fn default_stream() -> String {
    "stdin".to_owned()
}

sluice_core::register_schema!(source "stdin" => StdinSourceConfig);

#[typetag::serde(name = "stdin")]
#[async_trait]
impl SourceConfig for StdinSourceConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(StdinSource {
            stream: self.stream.clone(),
            shutdown: ctx.shutdown.clone(),
        }))
    }

    fn describe(&self) -> String {
        format!("standard input, JSON lines (stream `{}`)", self.stream)
    }
}

struct StdinSource {
    stream: String,
    shutdown: Shutdown,
}

impl Source for StdinSource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let origin = Origin {
            source: "stdin",
            stream: self.stream,
            shard_id: "stdin".into(),
        };
        json_lines(
            tokio::io::BufReader::new(tokio::io::stdin()),
            origin,
            settings,
            self.shutdown,
        )
    }
}
