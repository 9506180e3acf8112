//! `type = "sqs"`: sends records (dead-letter envelopes, as the error sink) to an SQS queue with
//! SendMessageBatch, ten at a time within the queue's size limit. Nothing is ever truncated: a
//! message over the limit goes whole to the overflow bucket when there is one (the queue gets a
//! pointer to it), and is refused with a clear error when there is none.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

mod overflow;
use overflow::Overflow;

/// SendMessageBatch's limit on entries per call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// The size limit when the queue does not tell its own (SQS's long-standing default, 256 KiB).
const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// SendMessageBatch calls in flight at once.
const CONCURRENT_CALLS: usize = 4;

/// Sends records' JSON to an SQS queue.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsSinkConfig {
    /// The queue's URL.
    pub queue_url: String,
    /// The region (see [`sluice_core::aws`], connection settings).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint, such as an emulator (see [`sluice_core::aws`]).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// An S3 bucket for messages over the queue's size limit: each is written there whole and
    /// the queue gets it without its payload, plus `payload_s3 = "s3://bucket/key"`.
    #[serde(default)]
    pub overflow_s3_bucket: Option<String>,
    /// The key prefix in the overflow bucket (keys go on
    /// `PIPELINE/STREAM/SHARD/SEQUENCE-DIGEST.json`).
    #[serde(default)]
    pub overflow_s3_prefix: Option<String>,
    /// S3's endpoint, when not AWS's (an emulator, a VPC endpoint); `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL` otherwise. The queue's `endpoint_url` is not used for S3.
    #[serde(default)]
    pub overflow_s3_endpoint_url: Option<String>,
}

sluice_core::register_schema!(sink "sqs" => SqsSinkConfig);

#[typetag::serde(name = "sqs")]
#[async_trait]
impl SinkConfig for SqsSinkConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if !self.queue_url.starts_with("http://") && !self.queue_url.starts_with("https://") {
            return Err(BuildError::invalid(
                "queue_url",
                format!(
                    "`{}` is not a queue URL; give one like https://sqs.us-east-1.amazonaws.com/123456789012/my-dlq",
                    self.queue_url
                ),
            ));
        }
        match (&self.overflow_s3_bucket, &self.overflow_s3_prefix) {
            (Some(bucket), _) if bucket.is_empty() || bucket.contains('/') => {
                Err(BuildError::invalid(
                    "overflow_s3_bucket",
                    format!("`{bucket}` is not a bucket name; give the name alone, without s3:// or a path (the path goes in `overflow_s3_prefix`)"),
                ))
            }
            (None, Some(_)) => Err(BuildError::invalid(
                "overflow_s3_prefix",
                "is set without `overflow_s3_bucket`; name the bucket too, or remove it",
            )),
            (None, None) if self.overflow_s3_endpoint_url.is_some() => Err(BuildError::invalid(
                "overflow_s3_endpoint_url",
                "is set without `overflow_s3_bucket`; name the bucket too, or remove it",
            )),
            _ => Ok(()),
        }
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        let connection = Connection {
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            retries: Retries::Runtime,
        };
        let client: aws_sdk_sqs::Client = aws::client(ctx, connection).await?;
        // Proves the queue exists and reads its size limit; start-up calls get the SDK's retries.
        let starting: aws_sdk_sqs::Client = aws::client(ctx, connection.retried_by_sdk()).await?;
        let attributes = starting
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .map_err(|e| BuildError::Unavailable {
                transient: aws::is_transient(&e),
                what: format!("SQS queue {}", self.queue_url),
                message: format!(
                    "GetQueueAttributes failed: {} (check the queue URL, region and endpoint)",
                    aws::describe_error(&e)
                ),
            })?;
        let max_message_bytes = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let overflow = match &self.overflow_s3_bucket {
            Some(bucket) => {
                let prefix = self.overflow_s3_prefix.as_deref().unwrap_or_default();
                let s3 = Connection {
                    endpoint_url: self.overflow_s3_endpoint_url.as_deref(),
                    ..connection
                };
                Some(Overflow::connect(ctx, s3, bucket, prefix).await?)
            }
            None => None,
        };
        Ok(Arc::new(SqsSink {
            client,
            queue_url: self.queue_url.clone(),
            max_message_bytes,
            overflow,
        }))
    }

    fn describe(&self) -> String {
        match &self.overflow_s3_bucket {
            Some(bucket) => format!("sqs queue {} (overflow to s3://{bucket})", self.queue_url),
            None => format!("sqs queue {}", self.queue_url),
        }
    }
}

struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    max_message_bytes: usize,
    overflow: Option<Overflow>,
}

/// One message ready to send, with its size as SQS counts it (body plus attributes).
struct Message {
    index: usize,
    entry: SendMessageBatchRequestEntry,
    size: usize,
}

/// Each record's answer, by its index in the batch.
type Answers = Vec<(usize, Result<(), SinkError>)>;

/// A message the queue cannot take: its body and its size as SQS counts it.
struct TooBig {
    body: String,
    size: usize,
}

impl SqsSink {
    /// The message for `value`, unless it is over the queue's limit.
    fn message(&self, index: usize, value: &Value) -> Result<Message, TooBig> {
        let body = serde_json::to_string(value).expect("a JSON value always serialises");
        // Dead-letter envelopes carry these; a consumer can filter on them without parsing.
        let attributes: Vec<(&str, String)> = [
            ("pipeline", value.get("pipeline")),
            ("stage", value.get("stage")),
            ("error_kind", value.pointer("/error/kind")),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.and_then(Value::as_str).map(|s| (name, s.to_owned())))
        .collect();
        let size = body.len()
            + attributes
                .iter()
                .map(|(name, value)| name.len() + "String".len() + value.len())
                .sum::<usize>();
        if size > self.max_message_bytes {
            return Err(TooBig { body, size });
        }
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(body);
        for (name, value) in attributes {
            entry = entry.message_attributes(
                name,
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .expect("data type is set"),
            );
        }
        Ok(Message {
            index,
            entry: entry.build().expect("id and body are set"),
            size,
        })
    }

    fn refusal(&self, size: usize) -> SinkError {
        let fix = if self.overflow.is_some() {
            "even without its payload"
        } else {
            "set `overflow_s3_bucket` to keep such messages in S3"
        };
        SinkError::Permanent(format!(
            "the message is {size} bytes, over the queue's limit of {} bytes; it was not sent \
             (nothing is truncated; {fix})",
            self.max_message_bytes
        ))
    }

    /// The messages of `batch` the queue can take, the others (over its limit) written to the
    /// overflow bucket first when there is one; refusals go in `answers`.
    async fn messages(
        &self,
        batch: &[Record],
        answers: &mut [Option<Result<(), SinkError>>],
    ) -> Vec<Message> {
        let mut messages = Vec::with_capacity(batch.len());
        let mut oversize = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            match self.message(index, &record.value) {
                Ok(m) => messages.push(m),
                Err(big) => match &self.overflow {
                    Some(_) => oversize.push((index, big.body)),
                    None => answers[index] = Some(Err(self.refusal(big.size))),
                },
            }
        }
        let Some(overflow) = &self.overflow else {
            return messages;
        };
        // The pointer must fit before anything is written, or the object would be orphaned.
        let mut puts = Vec::new();
        for (index, body) in oversize {
            let (pointer, key) = overflow.pointer(&batch[index]);
            match self.message(index, &pointer) {
                Ok(m) => puts.push((m, key, body)),
                Err(big) => answers[index] = Some(Err(self.refusal(big.size))),
            }
        }
        let put: Vec<(Message, Result<(), SinkError>)> = futures::stream::iter(puts)
            .map(|(m, key, body)| async move {
                let written = overflow.put(&key, body).await;
                (m, written)
            })
            .buffer_unordered(CONCURRENT_CALLS)
            .collect()
            .await;
        for (message, written) in put {
            match written {
                Ok(()) => messages.push(message),
                Err(e) => answers[message.index] = Some(Err(e)),
            }
        }
        messages
    }

    async fn send(&self, group: Vec<Message>) -> Answers {
        let entries = group.iter().map(|m| m.entry.clone()).collect();
        let call = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match call {
            Ok(out) => group
                .iter()
                .map(|m| {
                    let id = m.index.to_string();
                    let answer = match out.failed().iter().find(|f| f.id() == id) {
                        None => Ok(()),
                        Some(f) => {
                            let message = format!(
                                "SQS refused the message: {}: {}",
                                f.code(),
                                f.message().unwrap_or("no message")
                            );
                            if f.sender_fault() {
                                Err(SinkError::Permanent(message))
                            } else {
                                Err(SinkError::Retryable(message))
                            }
                        }
                    };
                    (m.index, answer)
                })
                .collect(),
            Err(e) => {
                // Whatever the cause (throttling, an outage, a deleted queue), it is not the
                // message's fault: retried, then Failed, so the record is delivered again.
                let message = format!("SendMessageBatch failed: {}", aws::describe_error(&e));
                group
                    .iter()
                    .map(|m| (m.index, Err(SinkError::Retryable(message.clone()))))
                    .collect()
            }
        }
    }
}

#[async_trait]
impl Sink for SqsSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut answers: Vec<Option<Result<(), SinkError>>> = vec![None; batch.len()];
        // Groups of at most ten whose sizes together stay within the request limit.
        let mut groups: Vec<Vec<Message>> = Vec::new();
        let mut group_size = 0;
        for message in self.messages(batch, &mut answers).await {
            let full = groups.last().is_none_or(|g| {
                g.len() == MAX_BATCH_ENTRIES || group_size + message.size > self.max_message_bytes
            });
            if full {
                groups.push(Vec::new());
                group_size = 0;
            }
            group_size += message.size;
            groups
                .last_mut()
                .expect("a group was just pushed")
                .push(message);
        }
        let sent: Vec<Answers> = futures::stream::iter(groups)
            .map(|g| self.send(g))
            .buffer_unordered(CONCURRENT_CALLS)
            .collect()
            .await;
        for (index, answer) in sent.into_iter().flatten() {
            answers[index] = Some(answer);
        }
        answers
            .into_iter()
            .map(|a| a.expect("every record is answered: refused or sent"))
            .collect()
    }
}

#[cfg(test)]
mod emulator_tests;
