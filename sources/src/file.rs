//! `type = "file"`: JSON lines (one record per line) or a Lambda Kinesis event file.

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use sluice_core::kinesis_event::KinesisEvent;
use sluice_core::{
    BatchSettings, BuildContext, BuildError, Shutdown, Source, SourceBatch, SourceConfig,
    SourceError,
};

use crate::lines::{json_lines, Origin};

/// How the file is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON record per line; blank lines are ignored. Positions: shard `file`, line numbers.
    #[default]
    Jsonl,
    /// A Lambda Kinesis event, `{"Records": [...]}`, with base64 `data`; positions from the event.
    KinesisEvent,
}

/// Reads records from a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file's path; as written here, it is also the records' stream name.
    pub path: String,
    /// `jsonl` (the default) or `kinesis_event`.
    #[serde(default)]
    pub format: FileFormat,
}

#[typetag::serde(name = "file")]
#[async_trait]
impl SourceConfig for FileSourceConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.path.is_empty() {
            return Err(BuildError::invalid("path", "must not be empty"));
        }
        Ok(())
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        match tokio::fs::metadata(&self.path).await {
            Ok(m) if m.is_file() => Ok(Box::new(FileSource {
                config: self.clone(),
                shutdown: ctx.shutdown.clone(),
            })),
            Ok(_) => Err(BuildError::invalid(
                "path",
                format!("`{}` is not a file", self.path),
            )),
            Err(e) => Err(BuildError::invalid(
                "path",
                format!("cannot read `{}`: {e}", self.path),
            )),
        }
    }

    fn describe(&self) -> String {
        let format = match self.format {
            FileFormat::Jsonl => "JSON lines",
            FileFormat::KinesisEvent => "Lambda Kinesis event",
        };
        format!("file {} ({format})", self.path)
    }
}

struct FileSource {
    config: FileSourceConfig,
    shutdown: Shutdown,
}

impl Source for FileSource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let path = self.config.path;
        let shutdown = self.shutdown;
        match self.config.format {
            // Lines stop at a stop by themselves, handing out what they read.
            FileFormat::Jsonl => stream::once(async move {
                let file =
                    tokio::fs::File::open(&path)
                        .await
                        .map_err(|source| SourceError::Io {
                            what: path.clone(),
                            source,
                        })?;
                let origin = Origin {
                    source: "file",
                    stream: path,
                    shard_id: "file".into(),
                };
                Ok(json_lines(
                    tokio::io::BufReader::with_capacity(256 * 1024, file),
                    origin,
                    settings,
                    shutdown,
                ))
            })
            .flat_map(|opened: Result<_, SourceError>| match opened {
                Ok(batches) => batches,
                Err(e) => stream::once(async { Err(e) }).boxed(),
            })
            .boxed(),
            // Whole batches of an event file: a stop ends them between batches.
            FileFormat::KinesisEvent => {
                stream::once(async move { read_event(&path, settings).await })
                    .flat_map(|read| match read {
                        Ok(batches) => stream::iter(batches.into_iter().map(Ok)).boxed(),
                        Err(e) => stream::once(async { Err(e) }).boxed(),
                    })
                    .take_until(async move { shutdown.triggered().await })
                    .boxed()
            }
        }
    }
}

async fn read_event(path: &str, settings: BatchSettings) -> Result<Vec<SourceBatch>, SourceError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| SourceError::Io {
            what: path.to_owned(),
            source,
        })?;
    let event: KinesisEvent = serde_json::from_slice(&bytes).map_err(|e| {
        SourceError::Format(format!(
            "{path} is not a Lambda Kinesis event ({{\"Records\": [...]}}): {e}"
        ))
    })?;
    let mut batches = Vec::new();
    for (shard_id, records) in event.into_shard_batches("file") {
        for chunk in records.chunks(settings.max_records) {
            batches.push(SourceBatch {
                shard_id: shard_id.clone(),
                records: chunk.to_vec(),
                ack: None,
            });
        }
    }
    Ok(batches)
}
