//! Dead letters to redrive: envelopes read from an SQS queue or a dead-letter file, each turned
//! back into the record it held (payload and source position), and marked done or kept.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;
use sluice::sluice_core::dead_letter::REDRIVEN;
use sluice::sluice_core::{Encoding, Meta, RawRecord};

/// How long a received message stays invisible to others while it is redriven: after a hard
/// kill it comes back within this.
pub const VISIBILITY: Duration = Duration::from_secs(60);

/// A dead letter being redriven.
pub struct Letter {
    /// How to mark it done: the message's receipt handle, or the file line's index.
    pub handle: Handle,
    /// The record it held, with its position and its previous envelope in `REDRIVEN`.
    pub record: RawRecord,
    /// The pipeline whose envelope it is.
    pub pipeline: String,
    /// The queue's id of the message, and when it was sent (epoch milliseconds).
    pub message: Option<(String, u64)>,
}

/// Where a letter is, to remove it once its record is done.
#[derive(Debug, Clone)]
pub enum Handle {
    Message(String),
    Line(usize),
}

/// Where the dead letters come from.
pub enum Letters {
    Queue {
        sqs: aws_sdk_sqs::Client,
        s3: aws_sdk_s3::Client,
        url: String,
    },
    File {
        path: PathBuf,
        /// The file's lines as first read, and its length then.
        lines: Vec<String>,
        length: u64,
    },
}

/// The pipeline an envelope names.
fn pipeline_of(envelope: &Value) -> String {
    envelope["pipeline"].as_str().unwrap_or_default().to_owned()
}

/// The record an envelope holds: its original payload and source position, its previous
/// envelope (without the payload) kept in its meta for a new envelope to count on.
pub fn record_of(envelope: &Value, payload: Vec<u8>) -> anyhow::Result<RawRecord> {
    let mut meta: Meta = serde_json::from_value(envelope["source"].clone())
        .context("the envelope's `source` is not a record position")?;
    let mut previous = envelope.clone();
    if let Value::Object(map) = &mut previous {
        map.remove("payload_base64");
        map.remove("payload_s3");
        map.remove("source");
    }
    meta.extra.insert(REDRIVEN.into(), previous.to_string());
    Ok(RawRecord {
        data: Bytes::from(payload),
        encoding: Encoding::Raw,
        meta,
    })
}

/// The payload of an envelope that holds it (`payload_base64`).
pub fn inline_payload(envelope: &Value) -> anyhow::Result<Vec<u8>> {
    let text = envelope["payload_base64"]
        .as_str()
        .context("the envelope has no `payload_base64` (is it a sluice dead letter?)")?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("`payload_base64` is not base64")
}

impl Letters {
    /// Up to `max` letters not yet seen; none when there are no more. Lines or messages that
    /// are not sluice envelopes are reported in `unreadable` and left where they are.
    pub async fn next(
        &mut self,
        max: usize,
        cursor: &mut usize,
        unreadable: &mut Vec<String>,
    ) -> anyhow::Result<(Vec<Letter>, usize)> {
        match self {
            Letters::File { lines, .. } => {
                let mut out = Vec::new();
                let from = *cursor;
                while out.len() < max && *cursor < lines.len() {
                    let index = *cursor;
                    *cursor += 1;
                    let line = lines[index].trim();
                    if line.is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_str::<Value>(line)
                        .map_err(anyhow::Error::from)
                        .and_then(|envelope| {
                            let record = record_of(&envelope, inline_payload(&envelope)?)?;
                            Ok((pipeline_of(&envelope), record))
                        });
                    match parsed {
                        Ok((pipeline, record)) => out.push(Letter {
                            handle: Handle::Line(index),
                            record,
                            pipeline,
                            message: None,
                        }),
                        Err(e) => unreadable.push(format!("line {}: {e:#}", index + 1)),
                    }
                }
                // Lines gone through, letters or not: none left means the end of the file.
                Ok((out, *cursor - from))
            }
            Letters::Queue { sqs, s3, url } => {
                let received = sqs
                    .receive_message()
                    .queue_url(url.as_str())
                    .max_number_of_messages(max.clamp(1, 10) as i32)
                    .visibility_timeout(VISIBILITY.as_secs() as i32)
                    .wait_time_seconds(1)
                    .message_system_attribute_names(
                        aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
                    )
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "ReceiveMessage: {}",
                            sluice::sluice_core::aws::describe_error(&e)
                        )
                    })?;
                let mut out = Vec::new();
                for message in received.messages() {
                    let (Some(body), Some(handle)) = (message.body(), message.receipt_handle())
                    else {
                        continue;
                    };
                    let id = message.message_id().unwrap_or("?").to_owned();
                    let sent = message
                        .attributes()
                        .and_then(|a| {
                            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
                        })
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0);
                    match Self::from_message(s3, body).await {
                        Ok((pipeline, record)) => out.push(Letter {
                            handle: Handle::Message(handle.to_owned()),
                            record,
                            pipeline,
                            message: Some((id, sent)),
                        }),
                        Err(e) => unreadable.push(format!("message {id}: {e:#}")),
                    }
                }
                Ok((out, received.messages().len()))
            }
        }
    }

    /// The record of a queue message: its envelope, or the whole envelope in S3 when the
    /// message holds a pointer to it (`payload_s3`, the overflow of big messages).
    async fn from_message(
        s3: &aws_sdk_s3::Client,
        body: &str,
    ) -> anyhow::Result<(String, RawRecord)> {
        let envelope: Value = serde_json::from_str(body).context("the body is not JSON")?;
        if let Some(pointer) = envelope["payload_s3"].as_str() {
            let (bucket, key) = pointer
                .strip_prefix("s3://")
                .and_then(|p| p.split_once('/'))
                .with_context(|| format!("`payload_s3` is not an s3:// URL: {pointer}"))?;
            let object = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "reading {pointer}: {}",
                        sluice::sluice_core::aws::describe_error(&e)
                    )
                })?;
            let whole = object.body.collect().await?.into_bytes();
            let whole: Value = serde_json::from_slice(&whole)
                .with_context(|| format!("{pointer} is not an envelope"))?;
            return Ok((
                pipeline_of(&whole),
                record_of(&whole, inline_payload(&whole)?)?,
            ));
        }
        Ok((
            pipeline_of(&envelope),
            record_of(&envelope, inline_payload(&envelope)?)?,
        ))
    }

    /// Removes the letters whose records are done (queue: deleted; file: left out when the file
    /// is rewritten, see [`Letters::finish`]). A letter that could not be deleted stays, to be
    /// redriven again (its record lands on the same item); the error says how many.
    pub async fn done(&mut self, handles: &[Handle]) -> anyhow::Result<()> {
        match self {
            Letters::File { .. } => Ok(()),
            Letters::Queue { sqs, url, .. } => {
                for chunk in handles.chunks(10) {
                    let mut delete = sqs.delete_message_batch().queue_url(url.as_str());
                    for (i, handle) in chunk.iter().enumerate() {
                        if let Handle::Message(receipt) = handle {
                            delete = delete.entries(
                                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                                    .id(i.to_string())
                                    .receipt_handle(receipt)
                                    .build()?,
                            );
                        }
                    }
                    let out = delete.send().await.map_err(|e| {
                        anyhow::anyhow!(
                            "DeleteMessageBatch: {}",
                            sluice::sluice_core::aws::describe_error(&e)
                        )
                    })?;
                    if let Some(failed) = out.failed().first() {
                        bail!("a message could not be deleted: {:?}", failed.message());
                    }
                }
                Ok(())
            }
        }
    }

    /// Makes letters visible again at once (queue), for whoever redrives next.
    pub async fn release(&mut self, handles: &[Handle]) {
        if let Letters::Queue { sqs, url, .. } = self {
            for handle in handles {
                if let Handle::Message(receipt) = handle {
                    let _ = sqs
                        .change_message_visibility()
                        .queue_url(url.as_str())
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .send()
                        .await;
                }
            }
        }
    }

    /// A file: rewritten with only the lines to keep (not done, or not envelopes) plus whatever
    /// was appended since it was read (new dead letters, when the error sink is this file).
    pub fn finish(&self, done_lines: &[usize]) -> anyhow::Result<()> {
        let Letters::File {
            path,
            lines,
            length,
        } = self
        else {
            return Ok(());
        };
        let now = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let appended = now.get(*length as usize..).unwrap_or_default();
        let mut out = Vec::with_capacity(now.len());
        let done: std::collections::HashSet<usize> = done_lines.iter().copied().collect();
        for (i, line) in lines.iter().enumerate() {
            if !done.contains(&i) && !line.trim().is_empty() {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out.extend_from_slice(appended);
        let temporary = path.with_extension("redrive.tmp");
        std::fs::write(&temporary, &out)
            .with_context(|| format!("writing {}", temporary.display()))?;
        if let Ok(metadata) = std::fs::metadata(path) {
            let _ = std::fs::set_permissions(&temporary, metadata.permissions());
        }
        std::fs::rename(&temporary, path)
            .with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }
}
