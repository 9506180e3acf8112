//! `type = "s3"`: records as JSON lines (gzip by default) in objects under a key template, the
//! classic archive of a stream. Each batch's records go to one object per prefix they render,
//! named by the first record's position and the MD5 of its content:
//! `PREFIX POSITION-MD5.jsonl.gz`. The same records delivered again write the same key, so they
//! overwrite their own object rather than adding one, and different records never share a key; a
//! batch cut differently (after a restart) may repeat records in a second object: the archive is
//! at least once.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::preview::{Encoder, Request};
use sluice_core::template::Template;
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

fn default_true() -> bool {
    true
}

fn default_concurrency() -> usize {
    4
}

/// Writes records as JSON lines into S3 objects.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// The bucket.
    pub bucket: String,
    /// The key prefix of each record's object, a template: `archive/{$meta.stream}/
    /// {$meta.arrival_time:%Y/%m/%d/%H}/{$meta.shard_id}/`; `{$pipeline}` is the pipeline's
    /// name. A record without an arrival time (files, stdin) takes the time it is written.
    pub prefix: String,
    /// Gzip each object (`.jsonl.gz`); default true.
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// PutObject calls in flight at once per batch (default 4).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// The region (see [`sluice_core::aws`], connection settings).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint, such as an emulator.
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl S3SinkConfig {
    fn template(&self, pipeline: &str) -> Result<Template, BuildError> {
        let escaped = pipeline.replace('{', "{{").replace('}', "}}");
        Template::parse(&self.prefix.replace("{$pipeline}", &escaped))
            .map_err(|e| BuildError::invalid("prefix", e.to_string()))
    }
}

sluice_core::register_schema!(sink "s3" => S3SinkConfig);

#[typetag::serde(name = "s3")]
#[async_trait]
impl SinkConfig for S3SinkConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.bucket.is_empty() {
            return Err(BuildError::invalid("bucket", "must name a bucket"));
        }
        if !(1..=64).contains(&self.max_concurrency) {
            return Err(BuildError::invalid(
                "max_concurrency",
                format!("must be between 1 and 64, not {}", self.max_concurrency),
            ));
        }
        self.template("pipeline").map(drop)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        let connection = Connection {
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            retries: Retries::Runtime,
        };
        let client: aws_sdk_s3::Client = aws::client(ctx, connection).await?;
        let starting: aws_sdk_s3::Client = aws::client(ctx, connection.retried_by_sdk()).await?;
        aws::s3::check_bucket(&starting, &self.bucket, "`bucket`").await?;
        Ok(Arc::new(S3Sink {
            client,
            prefix: self.template(&ctx.pipeline)?,
            config: self.clone(),
        }))
    }

    fn encoder(&self, ctx: &BuildContext) -> Result<Box<dyn Encoder>, BuildError> {
        self.validate()?;
        Ok(Box::new(LineEncoder {
            bucket: self.bucket.clone(),
            prefix: self.template(&ctx.pipeline)?,
        }))
    }

    fn describe(&self) -> String {
        let gzip = if self.gzip { ", gzip" } else { "" };
        format!("s3 s3://{}/{} (JSON lines{gzip})", self.bucket, self.prefix)
    }
}

/// The line a record becomes and the prefix of its object (`sluice test`; the object's name
/// comes from its whole batch).
struct LineEncoder {
    bucket: String,
    prefix: Template,
}

impl Encoder for LineEncoder {
    fn encode(&self, record: &Record) -> Result<Request, SinkError> {
        let prefix = prefix_of(&self.prefix, record, Utc::now())?;
        Ok(Request {
            target: format!("s3://{}/{prefix}", self.bucket),
            body: record.value.clone(),
        })
    }
}

/// The prefix a record's object goes under; a record without an arrival time takes `now`.
fn prefix_of(
    template: &Template,
    record: &Record,
    now: chrono::DateTime<Utc>,
) -> Result<String, SinkError> {
    let rendered = if record.meta.arrival_time.is_some() {
        template.render(record)
    } else {
        let mut stamped = record.clone();
        stamped.meta.arrival_time = Some(now);
        template.render(&stamped)
    };
    rendered.map_err(|missing| {
        SinkError::Permanent(format!(
            "the key template needs `{}`, which the record does not have",
            missing.0
        ))
    })
}

struct S3Sink {
    client: aws_sdk_s3::Client,
    prefix: Template,
    config: S3SinkConfig,
}

/// One object of a batch: its key and the batch indices of its records, in order.
struct Object {
    key: String,
    members: Vec<usize>,
}

impl S3Sink {
    /// The batch's records grouped by the prefix each renders: (prefix, batch indices in order).
    fn objects(
        &self,
        batch: &[Record],
        answers: &mut [Result<(), SinkError>],
    ) -> Vec<(String, Vec<usize>)> {
        let now = Utc::now();
        let mut objects: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            match prefix_of(&self.prefix, record, now) {
                Ok(prefix) => match objects.iter_mut().find(|(p, _)| *p == prefix) {
                    Some((_, members)) => members.push(i),
                    None => objects.push((prefix, vec![i])),
                },
                Err(e) => answers[i] = Err(e),
            }
        }
        objects
    }

    /// Writes one object of JSON lines; answers with its members.
    fn put(
        &self,
        object: Object,
        lines: Vec<u8>,
    ) -> BoxFuture<'_, (Vec<usize>, Result<(), SinkError>)> {
        async move {
            let result = self.put_lines(&object.key, lines).await;
            (object.members, result)
        }
        .boxed()
    }

    async fn put_lines(&self, key: &str, lines: Vec<u8>) -> Result<(), SinkError> {
        let (body, content_type) = if self.config.gzip {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(lines.len() / 4),
                flate2::Compression::default(),
            );
            gz.write_all(&lines)
                .and_then(|()| gz.finish())
                .map(|b| (b, "application/gzip"))
                .map_err(|e| SinkError::Retryable(format!("gzip: {e}")))?
        } else {
            (lines, "application/x-ndjson")
        };
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(drop)
            // A missing bucket or denied access is not the records' fault: retried, then failed.
            .map_err(|e| {
                SinkError::Retryable(format!(
                    "PutObject s3://{}/{} failed: {}",
                    self.config.bucket,
                    key,
                    aws::describe_error(&e)
                ))
            })
    }
}

#[async_trait]
impl Sink for S3Sink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut answers: Vec<Result<(), SinkError>> = vec![Ok(()); batch.len()];
        let objects = self.objects(batch, &mut answers);
        let extension = if self.config.gzip {
            "jsonl.gz"
        } else {
            "jsonl"
        };
        let puts: Vec<_> = objects
            .into_iter()
            .map(|(prefix, members)| {
                let mut lines = Vec::with_capacity(members.len() * 512);
                for &i in &members {
                    serde_json::to_writer(&mut lines, &batch[i].value)
                        .expect("a JSON value always serialises");
                    lines.push(b'\n');
                }
                // Named by the first position (for reading in order) and a digest of the
                // shard and the content: the same batch again overwrites itself with the same
                // bytes, and different records (or another shard's) never share an object.
                let meta = &batch[members[0]].meta;
                let first = meta.get("position").unwrap_or_default();
                let mut md5 = Md5::new();
                md5.update(meta.stream.as_bytes());
                md5.update(b"\n");
                md5.update(meta.shard_id.as_bytes());
                md5.update(b"\n");
                md5.update(&lines);
                let digest: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
                let key = format!("{prefix}{first}-{digest}.{extension}");
                self.put(Object { key, members }, lines)
            })
            .collect();
        let written: Vec<_> = futures::stream::iter(puts)
            .buffer_unordered(self.config.max_concurrency)
            .collect()
            .await;
        for (members, result) in written {
            if let Err(e) = result {
                for i in members {
                    answers[i] = Err(e.clone());
                }
            }
        }
        answers
    }
}

#[cfg(test)]
mod emulator_tests;
