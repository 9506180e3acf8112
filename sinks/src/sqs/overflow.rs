//! The overflow store, as the SQS extended client keeps one: a message over the queue's size
//! limit is written whole to S3, and the queue gets it without its payload plus `payload_s3`.

use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;
use sluice_core::aws::{self, Connection};
use sluice_core::{BuildContext, BuildError, Record, SinkError};

/// The field of an envelope that holds the original payload, left out of the queue's copy.
const PAYLOAD_FIELD: &str = "payload_base64";
/// The field that says where the whole message is.
pub(super) const POINTER_FIELD: &str = "payload_s3";

/// An S3 bucket (and key prefix) for messages the queue cannot take.
pub(super) struct Overflow {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl Overflow {
    /// Connects, and proves the bucket is there (HeadBucket).
    pub(super) async fn connect(
        ctx: &BuildContext,
        connection: Connection<'_>,
        bucket: &str,
        prefix: &str,
    ) -> Result<Self, BuildError> {
        let client: aws_sdk_s3::Client = aws::client(ctx, connection).await?;
        let starting: aws_sdk_s3::Client = aws::client(ctx, connection.retried_by_sdk()).await?;
        starting
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| BuildError::Unavailable {
                transient: aws::is_retryable(&e),
                what: format!("S3 bucket {bucket} (`overflow_s3_bucket`)"),
                message: format!(
                    "HeadBucket failed: {} (check the bucket name, region, endpoint and permissions)",
                    aws::describe_error(&e)
                ),
            })?;
        Ok(Self {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// Where `record` goes: named by its source position, so a record delivered again
    /// overwrites its own object instead of adding one.
    fn key(&self, record: &Record) -> String {
        let meta = &record.meta;
        let stream = meta.stream.trim_start_matches('/');
        let sub = meta
            .sub_sequence
            .map(|s| format!("-{s}"))
            .unwrap_or_default();
        format!(
            "{}{stream}/{}/{}{sub}.json",
            self.prefix, meta.shard_id, meta.sequence_number
        )
    }

    /// Writes `body` (the whole message) to S3 and answers what the queue gets instead: the
    /// record without its payload, and where the whole of it is.
    pub(super) async fn offload(&self, record: &Record, body: String) -> Result<Value, SinkError> {
        let key = self.key(record);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| {
                SinkError::Retryable(format!(
                    "PutObject to s3://{}/{key} failed: {}",
                    self.bucket,
                    aws::describe_error(&e)
                ))
            })?;
        // An envelope keeps its reason and position (consumers filter on them); any other
        // record is all payload.
        let mut pointer = match &record.value {
            Value::Object(fields) if fields.contains_key(PAYLOAD_FIELD) => {
                let mut fields = fields.clone();
                fields.remove(PAYLOAD_FIELD);
                fields
            }
            _ => serde_json::Map::new(),
        };
        pointer.insert(
            POINTER_FIELD.into(),
            Value::String(format!("s3://{}/{key}", self.bucket)),
        );
        Ok(Value::Object(pointer))
    }
}
