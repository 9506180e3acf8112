//! A pipeline run with no I/O, for `sluice test`: each sink says what it would send for a
//! record (an [`Encoder`]: the DynamoDB item in its wire format and its table, the SQLite row,
//! the JSON line) instead of sending it, dead letters are kept in memory, and components that
//! would read a service take their values from [`Offline`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use crate::component::Sink;
use crate::error::SinkError;
use crate::record::{Meta, Record};

/// What a sink would send for one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// Where: a table, a file, a queue, an object key prefix.
    pub target: String,
    /// What, exactly as it would be sent: a DynamoDB item in DynamoDB's JSON wire format
    /// (`{"Id": {"S": "..."}}`), an SQLite row (column → value), or the record's JSON.
    pub body: serde_json::Value,
}

/// Works out a sink's request for a record, with no I/O; an error is what the real sink would
/// answer (a record it refuses is dead-lettered).
pub trait Encoder: Send + Sync {
    /// The request for `record`.
    fn encode(&self, record: &Record) -> Result<Request, SinkError>;
}

/// The default encoder: the record's JSON, sent to `target`.
pub struct JsonEncoder {
    /// Where the sink writes (its description).
    pub target: String,
}

impl Encoder for JsonEncoder {
    fn encode(&self, record: &Record) -> Result<Request, SinkError> {
        Ok(Request {
            target: self.target.clone(),
            body: record.value.clone(),
        })
    }
}

/// Values for components that would call a service, handed in with
/// [`crate::BuildContext::with`]: with it present, nothing may be called.
#[derive(Debug, Clone, Default)]
pub struct Offline {
    /// SSM parameter values by name (`--parameter NAME=VALUE`).
    pub parameters: BTreeMap<String, String>,
}

/// Where a record was read: stream, shard and position, as text.
pub type RecordKey = (String, String, String);

/// The key of a record's meta.
pub fn record_key(meta: &Meta) -> RecordKey {
    (
        meta.stream.clone(),
        meta.shard_id.clone(),
        meta.position().to_string(),
    )
}

/// A sink that keeps each record's request instead of sending it.
pub struct EncodingSink {
    encoder: Box<dyn Encoder>,
    enabled: bool,
    requests: Mutex<HashMap<RecordKey, Request>>,
}

impl EncodingSink {
    /// A sink encoding with `encoder`; a disabled one skips every record, as the real one does.
    pub fn new(encoder: Box<dyn Encoder>, enabled: bool) -> Self {
        Self {
            encoder,
            enabled,
            requests: Mutex::default(),
        }
    }

    /// Forgets the requests so far (before a batch whose positions may repeat earlier ones).
    pub fn clear(&self) {
        self.requests
            .lock()
            .expect("no panic while holding the requests")
            .clear();
    }

    /// The request last made for the record at `key`.
    pub fn request(&self, key: &RecordKey) -> Option<Request> {
        self.requests
            .lock()
            .expect("no panic while holding the requests")
            .get(key)
            .cloned()
    }
}

#[async_trait]
impl Sink for EncodingSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut requests = self
            .requests
            .lock()
            .expect("no panic while holding the requests");
        batch
            .iter()
            .map(|record| {
                let request = self.encoder.encode(record)?;
                requests.insert(record_key(&record.meta), request);
                Ok(())
            })
            .collect()
    }

    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// An error sink that keeps the dead-letter envelopes, by the record they hold.
#[derive(Default)]
pub struct KeptDeadLetters {
    letters: Mutex<HashMap<RecordKey, serde_json::Value>>,
}

impl KeptDeadLetters {
    /// Forgets the dead letters so far.
    pub fn clear(&self) {
        self.letters
            .lock()
            .expect("no panic while holding the letters")
            .clear();
    }

    /// The envelope of the record at `key`, if it was dead-lettered.
    pub fn letter(&self, key: &RecordKey) -> Option<serde_json::Value> {
        self.letters
            .lock()
            .expect("no panic while holding the letters")
            .get(key)
            .cloned()
    }
}

#[async_trait]
impl Sink for KeptDeadLetters {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut letters = self
            .letters
            .lock()
            .expect("no panic while holding the letters");
        for envelope in batch {
            // The envelope holds the record's own position; its meta is the same.
            letters.insert(record_key(&envelope.meta), envelope.value.clone());
        }
        vec![Ok(()); batch.len()]
    }
}

/// A pipeline built for a run without I/O, with where to find what it did.
pub struct OfflinePipeline {
    /// The pipeline: the file's enrichers, an [`EncodingSink`], [`KeptDeadLetters`].
    pub pipeline: crate::runtime::Pipeline,
    /// The requests the sink would have sent.
    pub requests: Arc<EncodingSink>,
    /// The dead letters.
    pub dead_letters: Arc<KeptDeadLetters>,
}
