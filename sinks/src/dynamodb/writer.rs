//! The DynamoDB sink's write path: each record's table from the routes, its put request
//! encoded once into one buffer for the whole write, items merged by table and key, chunks of 25
//! (from any tables: BatchWriteItem takes several in one call) written concurrently, unprocessed
//! items handed back for retry, and a rejected chunk split to find the bad item.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::WriteRequest;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sluice_core::aws;
use sluice_core::{Record, Sink, SinkError};
use tokio::sync::RwLock;

use super::encode::{batch_write_body, write_put_request};
use super::key::{handed_back_key, ItemKey, KeyAttribute};
use super::DynamoDbSinkConfig;
use crate::route::Routes;

/// BatchWriteItem's limit on requests per call.
pub const MAX_BATCH_ITEMS: usize = 25;

/// Calls' worth of items per write ([`Sink::max_write`]), for each call in flight: a run is
/// encoded while its records are in cache; the next run starts when the slowest call of this
/// one is answered, so a run is several rounds of calls.
const CALLS_PER_RUN: usize = 8;

/// One record's item, ready to send.
struct Pending<'a> {
    index: usize,
    table: Arc<str>,
    /// Borrowed from the record's value.
    key: ItemKey<'a>,
    /// Its put request in the wire format, within the write's encoded requests.
    request: Range<usize>,
}

/// Each record's answer, by its index in the batch.
type Answers = Vec<(usize, Result<(), SinkError>)>;

/// Each table's key attributes, by table name.
pub type Keys = HashMap<String, Arc<Vec<KeyAttribute>>>;

/// Writes batches of records to their tables.
pub struct BatchWriter {
    client: aws_sdk_dynamodb::Client,
    config: DynamoDbSinkConfig,
    routes: Routes,
    /// Tables described so far: those known at start-up, then each a template named.
    keys: RwLock<Keys>,
    /// Tables a template named that cannot take records, and since when (asked again later).
    refused: RwLock<HashMap<String, (Instant, SinkError)>>,
}

/// How long a table found unable to take records is not described again.
const REFUSAL_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

impl BatchWriter {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        config: DynamoDbSinkConfig,
        routes: Routes,
        keys: Keys,
    ) -> Self {
        Self {
            client,
            config,
            routes,
            keys: RwLock::new(keys),
            refused: RwLock::default(),
        }
    }

    /// The table's key attributes, described on first use.
    async fn key_of(&self, table: &str) -> Result<Arc<Vec<KeyAttribute>>, SinkError> {
        if let Some(key) = self.keys.read().await.get(table) {
            return Ok(key.clone());
        }
        if let Some((since, e)) = self.refused.read().await.get(table) {
            if since.elapsed() < REFUSAL_KEPT {
                return Err(e.clone());
            }
        }
        // A table a record's own data named, not listed in `tables`: when it is missing, has an
        // invalid name or a key no record can carry, the record named a table that cannot take
        // it (dead-lettered; list the tables to have them checked at start-up instead); any
        // other failure is retried.
        let described = match super::describe_key(&self.client, table).await {
            Ok(key) => super::check_key_types(&key, self.config.all_strings)
                .map(|()| key)
                .map_err(|e| (true, e)),
            // Missing, or a name DynamoDB refuses: the record named a table that cannot be.
            Err(e) => {
                let permanent = matches!(
                    e.code.as_deref(),
                    Some("ResourceNotFoundException" | "ValidationException")
                );
                Err((permanent, e.error))
            }
        };
        match described {
            Ok(key) => {
                let key = Arc::new(key);
                self.keys
                    .write()
                    .await
                    .insert(table.to_owned(), key.clone());
                Ok(key)
            }
            // Throttling, an outage, denied access or credentials: not the record's fault.
            Err((false, e)) => Err(SinkError::Retryable(e.to_string())),
            Err((true, e)) => {
                let e = SinkError::Permanent(format!("the record's table cannot take it: {e}"));
                let mut refused = self.refused.write().await;
                refused.retain(|_, (since, _)| since.elapsed() < REFUSAL_KEPT);
                refused.insert(table.to_owned(), (Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Each record's item, its put request appended to `encoded`, or its answer when it has none.
    async fn prepare<'b>(
        &self,
        batch: &'b [Record],
        answers: &mut [Result<(), SinkError>],
        encoded: &mut Vec<u8>,
    ) -> Vec<Pending<'b>> {
        let mut prepared = Vec::with_capacity(batch.len());
        for (table, members) in self.routes.group(batch, answers) {
            let table: Arc<str> = table.into();
            let key = match self.key_of(&table).await {
                Ok(key) => key,
                Err(e) => {
                    for i in members {
                        answers[i] = Err(e.clone());
                    }
                    continue;
                }
            };
            for index in members {
                let start = encoded.len();
                match write_put_request(&batch[index].value, self.config.all_strings, &key, encoded)
                {
                    Ok(key) => prepared.push(Pending {
                        index,
                        table: table.clone(),
                        key,
                        request: start..encoded.len(),
                    }),
                    Err(e) => answers[index] = Err(SinkError::Permanent(e)),
                }
            }
        }
        // The batch's order, so chunks hold records in the order they came.
        prepared.sort_by_key(|p| p.index);
        prepared
    }

    /// Writes one chunk of at most 25 items; a chunk DynamoDB rejects as invalid is split in
    /// halves until the invalid items are alone, so their neighbours are still written.
    fn write_chunk<'a>(
        &'a self,
        encoded: &'a [u8],
        chunk: Vec<Pending<'a>>,
    ) -> BoxFuture<'a, Answers> {
        async move {
            let requests = chunk
                .iter()
                .map(|p| (&*p.table, &encoded[p.request.clone()]));
            let body = Bytes::from(batch_write_body(requests));
            // The SDK is given the tables alone (its endpoint rules read their names) and the
            // request body is put in place before the call is signed; each attempt of the SDK's
            // retries starts from the serialised call again, so each sends this body.
            let mut tables: HashMap<String, Vec<WriteRequest>> = HashMap::new();
            for p in &chunk {
                if !tables.contains_key(&*p.table) {
                    tables.insert(p.table.to_string(), Vec::new());
                }
            }
            let call = self
                .client
                .batch_write_item()
                .set_request_items(Some(tables))
                .customize()
                .mutate_request(move |request| {
                    let length = body.len().to_string();
                    *request.body_mut() = SdkBody::from(body.clone());
                    request.headers_mut().insert("content-length", length);
                })
                .send()
                .await;
            match call {
                Ok(out) => {
                    let keys = self.keys.read().await;
                    let mut unprocessed: HashMap<&str, HashSet<ItemKey>> = HashMap::new();
                    let mut unmatched = false;
                    for (table, writes) in out.unprocessed_items().into_iter().flatten() {
                        for put in writes.iter().filter_map(|w| w.put_request()) {
                            match keys.get(table).map(|key| handed_back_key(put.item(), key)) {
                                Some(Ok(k)) => {
                                    unprocessed.entry(table.as_str()).or_default().insert(k);
                                }
                                _ => unmatched = true,
                            }
                        }
                    }
                    if unmatched {
                        // An item handed back that matches none sent: which were written is
                        // unknown, so none counts as written.
                        let e = SinkError::Retryable(
                            "DynamoDB returned unprocessed items this batch cannot match".into(),
                        );
                        return chunk.iter().map(|p| (p.index, Err(e.clone()))).collect();
                    }
                    chunk
                        .iter()
                        .map(|p| {
                            let handed_back = unprocessed
                                .get(&*p.table)
                                .is_some_and(|keys| keys.contains(&p.key));
                            let answer = if handed_back {
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
                    if let [p] = &chunk[..] {
                        return vec![(
                            p.index,
                            Err(SinkError::Permanent(format!(
                                "DynamoDB rejected the item: {message}"
                            ))),
                        )];
                    }
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    let (a, b) = futures::join!(
                        self.write_chunk(encoded, first),
                        self.write_chunk(encoded, second)
                    );
                    a.into_iter().chain(b).collect()
                }
                Err(e) => {
                    // Throttling, 5xx and timeouts, but also a missing table or denied access:
                    // none is the record's fault, so none may dead-letter it; retried, then Failed.
                    let message = format!("BatchWriteItem failed: {}", aws::describe_error(&e));
                    chunk
                        .iter()
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
        let mut answers: Vec<Result<(), SinkError>> = vec![Ok(()); batch.len()];
        // About an encoded Waze record each; it grows for larger ones.
        let mut encoded = Vec::with_capacity(batch.len() * 512);
        let prepared = self.prepare(batch, &mut answers, &mut encoded).await;
        // DynamoDB rejects a call that names an item twice: the last record with a key wins, and
        // the ones it replaces share its answer.
        let replaced_by: Vec<Option<usize>> = {
            let mut last: HashMap<(&str, &ItemKey), usize> = HashMap::with_capacity(prepared.len());
            for p in &prepared {
                last.insert((&p.table, &p.key), p.index);
            }
            prepared
                .iter()
                .map(|p| Some(last[&(&*p.table, &p.key)]).filter(|&w| w != p.index))
                .collect()
        };
        let mut unique = Vec::with_capacity(prepared.len());
        let mut replaced = Vec::new();
        for (p, by) in prepared.into_iter().zip(replaced_by) {
            match by {
                Some(winner) => replaced.push((p.index, winner)),
                None => unique.push(p),
            }
        }
        let chunks = sluice_core::owned_chunks(unique, MAX_BATCH_ITEMS);
        // The calls are made before they are streamed (a future does nothing until polled): a
        // closure mapping chunks that borrow the batch is more than `async_trait`'s `Send` check
        // can prove.
        let calls: Vec<_> = chunks
            .into_iter()
            .map(|chunk| self.write_chunk(&encoded, chunk))
            .collect();
        let written: Vec<Answers> = futures::stream::iter(calls)
            .buffer_unordered(self.config.max_concurrency)
            .collect()
            .await;
        for (index, answer) in written.into_iter().flatten() {
            answers[index] = answer;
        }
        for (index, winner) in replaced {
            answers[index] = answers[winner].clone();
        }
        answers
    }

    fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn max_write(&self) -> Option<std::num::NonZeroUsize> {
        std::num::NonZeroUsize::new(MAX_BATCH_ITEMS * CALLS_PER_RUN * self.config.max_concurrency)
    }
}
