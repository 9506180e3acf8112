//! The DynamoDB sink's write path: items merged by key, chunks of 25 written concurrently,
//! unprocessed items handed back for retry, and a rejected chunk split to find the bad item.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::WriteRequest;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sluice_core::aws;
use sluice_core::{Record, Sink, SinkError};

use super::encode::write_request;
use super::key::{item_key, ItemKey, KeyAttribute};
use super::DynamoDbSinkConfig;

/// BatchWriteItem's limit on requests per call.
pub const MAX_BATCH_ITEMS: usize = 25;

/// One record's item, ready to send.
struct Pending {
    index: usize,
    key: ItemKey,
    request: WriteRequest,
}

/// Each record's answer, by its index in the batch.
type Answers = Vec<(usize, Result<(), SinkError>)>;

/// Writes batches of records to one table.
pub struct BatchWriter {
    client: aws_sdk_dynamodb::Client,
    config: DynamoDbSinkConfig,
    table: String,
    key: Vec<KeyAttribute>,
}

impl BatchWriter {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        config: DynamoDbSinkConfig,
        key: Vec<KeyAttribute>,
    ) -> Self {
        Self {
            table: config.table_name().to_owned(),
            client,
            config,
            key,
        }
    }

    /// The record's item and key, or why it can never be written.
    fn prepare(&self, record: &Record) -> Result<(ItemKey, WriteRequest), String> {
        write_request(&record.value, self.config.all_strings, &self.key)
    }

    /// Writes one chunk of at most 25 items; a chunk DynamoDB rejects as invalid is split in
    /// halves until the invalid items are alone, so their neighbours are still written.
    fn write_chunk(&self, chunk: Vec<Pending>) -> BoxFuture<'_, Answers> {
        async move {
            let requests = chunk.iter().map(|p| p.request.clone()).collect();
            let call = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await;
            match call {
                Ok(out) => {
                    let unprocessed: HashSet<ItemKey> = out
                        .unprocessed_items()
                        .and_then(|m| m.get(&self.table))
                        .into_iter()
                        .flatten()
                        .filter_map(|w| w.put_request())
                        .filter_map(|p| item_key(p.item(), &self.key).ok())
                        .collect();
                    chunk
                        .into_iter()
                        .map(|p| {
                            let answer = if unprocessed.contains(&p.key) {
                                Err(SinkError::Retryable(
                                    "DynamoDB returned the item unprocessed (throughput exceeded)"
                                        .into(),
                                ))
                            } else {
                                Ok(())
                            };
                            (p.index, answer)
                        })
                        .collect()
                }
                Err(e) if aws::error_code(&e) == Some("ValidationException") => {
                    let message = aws::describe_error(&e);
                    if chunk.len() == 1 {
                        let index = chunk[0].index;
                        return vec![(
                            index,
                            Err(SinkError::Permanent(format!(
                                "DynamoDB rejected the item: {message}"
                            ))),
                        )];
                    }
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    let (a, b) = futures::join!(self.write_chunk(first), self.write_chunk(second));
                    a.into_iter().chain(b).collect()
                }
                Err(e) => {
                    // Throttling, 5xx and timeouts, but also a missing table or denied access:
                    // none is the record's fault, so none may dead-letter it; retried, then Failed.
                    let message = format!("BatchWriteItem failed: {}", aws::describe_error(&e));
                    chunk
                        .into_iter()
                        .map(|p| (p.index, Err(SinkError::Retryable(message.clone()))))
                        .collect()
                }
            }
        }
        .boxed()
    }
}

#[async_trait]
impl Sink for BatchWriter {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut answers: Vec<Option<Result<(), SinkError>>> = vec![None; batch.len()];
        let mut prepared = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match self.prepare(record) {
                Ok((key, request)) => prepared.push(Pending {
                    index,
                    key,
                    request,
                }),
                Err(e) => answers[index] = Some(Err(SinkError::Permanent(e))),
            }
        }
        // DynamoDB rejects a call that names a key twice: the last record with a key wins, and
        // the ones it replaces share its answer.
        let winner: HashMap<ItemKey, usize> =
            prepared.iter().map(|p| (p.key.clone(), p.index)).collect();
        let (unique, replaced): (Vec<_>, Vec<_>) = prepared
            .into_iter()
            .partition(|p| winner[&p.key] == p.index);
        let mut chunks = Vec::with_capacity(unique.len().div_ceil(MAX_BATCH_ITEMS));
        let mut rest = unique.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(MAX_BATCH_ITEMS).collect::<Vec<_>>());
        }
        let written: Vec<Answers> = futures::stream::iter(chunks)
            .map(|chunk| self.write_chunk(chunk))
            .buffer_unordered(self.config.max_concurrency)
            .collect()
            .await;
        for (index, answer) in written.into_iter().flatten() {
            answers[index] = Some(answer);
        }
        for p in replaced {
            answers[p.index] = answers[winner[&p.key]].clone();
        }
        answers
            .into_iter()
            .map(|a| a.expect("every record is answered: invalid, written or replaced"))
            .collect()
    }

    fn enabled(&self) -> bool {
        self.config.enabled
    }
}
