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
        aws::s3::check_bucket(&starting, bucket, "`overflow_s3_bucket`").await?;
        Ok(Self {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// Where `record` goes: under its pipeline and source position, and a digest of what it
    /// carries (the envelope's payload, or the record), so a record delivered again overwrites
    /// its own object, and another record at the same position (a new input file, another
    /// pipeline) never overwrites it.
    fn key(&self, pipeline: &str, record: &Record) -> String {
        let meta = &record.meta;
        let stream = meta.stream.trim_start_matches('/');
        let sub = meta
            .sub_sequence
            .map(|s| format!("-{s}"))
            .unwrap_or_default();
        let carried = match record.value.get(PAYLOAD_FIELD) {
            Some(Value::String(payload)) => payload.clone(),
            _ => record.value.to_string(),
        };
        let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, carried.as_bytes()).simple();
        format!(
            "{}{pipeline}/{stream}/{}/{}{sub}-{digest}.json",
            self.prefix, meta.shard_id, meta.sequence_number
        )
    }

    /// What the queue gets instead of `record`: the record without its payload, and where the
    /// whole of it is (written by [`Overflow::put`]).
    pub(super) fn pointer(&self, record: &Record) -> (Value, String) {
        let pipeline = record
            .value
            .get("pipeline")
            .and_then(Value::as_str)
            .unwrap_or("records");
        let key = self.key(pipeline, record);
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
        (Value::Object(pointer), key)
    }

    /// Writes `body` (the whole message) at `key`.
    pub(super) async fn put(&self, key: &str, body: String) -> Result<(), SinkError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                SinkError::Retryable(format!(
                    "PutObject to s3://{}/{key} failed: {}",
                    self.bucket,
                    aws::describe_error(&e)
                ))
            })
    }
}
