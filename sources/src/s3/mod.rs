//! `type = "s3"`: the objects under a bucket's prefix, in key order, each read whole (gzip when
//! the key ends `.gz`) as JSON lines or as a JSON document with arrays of records. The last
//! object fully processed is the checkpoint; a daemon lists for new objects every
//! `poll_interval`, a run with `--until-caught-up` stops when none is left.
//!
//! Objects go one at a time: every batch of an object is acknowledged before the next object is
//! read, so the checkpoint names an object only when all its records are done. A record that
//! failed leaves the checkpoint before its object, and a daemon reads that object again (after
//! a backoff); one pass stops there, and the next run begins with it.

mod checkpoint;
mod reader;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::{
    BatchSettings, BuildContext, BuildError, Source, SourceBatch, SourceConfig, SourceError,
};
use tokio::sync::mpsc;

use crate::document::{Documents, FileFormat};
use checkpoint::CheckpointStore;
use reader::Reader;

fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}

/// Reads the objects under an S3 prefix.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3SourceConfig {
    /// The bucket.
    pub bucket: String,
    /// Only keys starting with this (default: every key); `feed/` for a folder.
    #[serde(default)]
    pub prefix: String,
    /// `jsonl` (the default: one record per line) or `json` (one document per object, with
    /// `records`).
    #[serde(default)]
    pub format: FileFormat,
    /// With `format = "json"`: the arrays whose elements are the records (as for `file`).
    #[serde(default)]
    pub records: Vec<String>,
    /// With `format = "json"`: top-level fields of the document each record carries.
    #[serde(default)]
    pub document_fields: BTreeMap<String, String>,
    /// How long a daemon waits, once every object is read, before listing again (default 10s).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// The DynamoDB table of the checkpoint; default `<pipeline name>-checkpoints`, created when
    /// missing.
    #[serde(default)]
    pub checkpoint_table: Option<String>,
    /// The region (see [`sluice_core::aws`], connection settings).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint for S3, such as an emulator.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Another endpoint for the checkpoint table's DynamoDB; default: as `endpoint_url`.
    #[serde(default)]
    pub checkpoint_endpoint_url: Option<String>,
}

impl S3SourceConfig {
    fn documents(&self) -> Result<Option<Documents>, BuildError> {
        Documents::from_settings(self.format, &self.records, &self.document_fields)
    }

    /// The prefix as one name: the checkpoint's key, and the shard its batches belong to.
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

sluice_core::register_schema!(source "s3" => S3SourceConfig);

#[typetag::serde(name = "s3")]
#[async_trait]
impl SourceConfig for S3SourceConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.bucket.is_empty() {
            return Err(BuildError::invalid("bucket", "must name a bucket"));
        }
        if self.format == FileFormat::KinesisEvent {
            return Err(BuildError::invalid(
                "format",
                "an `s3` source reads `jsonl` or `json` objects",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(BuildError::invalid(
                "poll_interval",
                "must be more than zero, such as \"10s\"",
            ));
        }
        self.documents().map(drop)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        let connection = Connection {
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            retries: Retries::Sdk,
        };
        let s3: aws_sdk_s3::Client = aws::client(ctx, connection).await?;
        let dynamodb = aws::client(
            ctx,
            Connection {
                endpoint_url: self
                    .checkpoint_endpoint_url
                    .as_deref()
                    .or(self.endpoint_url.as_deref()),
                ..connection
            },
        )
        .await?;
        // Proves the bucket is there and readable before anything runs.
        aws::s3::check_bucket(&s3, &self.bucket, "`bucket`").await?;
        Ok(Box::new(S3Source {
            reader: Reader {
                s3,
                bucket: self.bucket.clone(),
                prefix: self.prefix.clone(),
                documents: self.documents()?,
                store: CheckpointStore {
                    client: dynamodb,
                    table: self
                        .checkpoint_table
                        .clone()
                        .unwrap_or_else(|| format!("{}-checkpoints", ctx.pipeline)),
                    // The pipeline too: two pipelines may share a table and read one prefix.
                    key: format!("{}:{}", ctx.pipeline, self.location()),
                },
                location: self.location(),
                poll_interval: self.poll_interval,
                until_caught_up: ctx.until_caught_up,
                shutdown: ctx.shutdown.clone(),
                health: ctx.health.clone(),
            },
        }))
    }

    fn describe(&self) -> String {
        let format = match self.format {
            FileFormat::Json => format!("JSON documents, records in {}", self.records.join(", ")),
            _ => "JSON lines".to_owned(),
        };
        format!(
            "s3 {} ({format}; checkpoint in {})",
            self.location(),
            self.checkpoint_table
                .as_deref()
                .unwrap_or("<pipeline name>-checkpoints")
        )
    }
}

struct S3Source {
    reader: Reader,
}

impl Source for S3Source {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        // A small queue: the runtime works through an object's batches as they come.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(self.reader.run(tx, settings));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

#[cfg(test)]
mod emulator_tests;
