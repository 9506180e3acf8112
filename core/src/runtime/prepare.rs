//! Decoding, expiry and the enrichers, record by record: each record goes through every stage
//! while its bytes are in cache, instead of each stage walking the whole batch (a batch of 10,000
//! records does not fit in a core's cache, so stage by stage read every record from memory once
//! per stage). A sink that takes runs of records gets each run while it is still in cache. A
//! record an enricher fails retryably waits at that enricher; when the pass is over, each
//! enricher's waiting records are tried again in rounds, as a group, and those that pass go on
//! through the enrichers after it.

use std::num::NonZeroUsize;

use tokio::time::Instant;

use super::ledger::Ledger;
use super::retry::RetryRounds;
use super::{NamedEnricher, Pipeline};
use crate::component::Verdict;
use crate::dead_letter::Reason;
use crate::decode::decode;
use crate::metrics::metrics;
use crate::outcome::{ErrorKind, SkippedBy, Stage};
use crate::record::{RawRecord, Record};

/// Records that failed an enricher retryably, each with its error.
type Waiting = Vec<((usize, Record), String)>;

impl Pipeline {
    /// Decodes, checks and enriches the batch's records, and stores those every enricher kept,
    /// in the batch's order; every other record's outcome (or dead letter) is in `ledger`.
    /// A sink with a [`Sink::max_write`](crate::Sink::max_write) gets each run of that many
    /// records as soon as they are enriched, while no record waits for a retry (one that waits
    /// rejoins the batch's order later, so nothing after it is written before it) and every run
    /// so far was stored whole on its first attempt.
    pub(super) async fn prepare_and_store(
        &self,
        raw: Vec<RawRecord>,
        deadline: Instant,
        ledger: &mut Ledger<'_>,
    ) {
        let mut run = self.sink.max_write().map_or(usize::MAX, NonZeroUsize::get);
        let now = self.max_record_age.map(|_| chrono::Utc::now());
        let mut waiting: Vec<Waiting> = self.enrichers.iter().map(|_| Vec::new()).collect();
        let total = raw.len();
        let mut kept = Kept::with_capacity(total.min(run));
        let mut expired = 0;
        for (index, raw) in raw.into_iter().enumerate() {
            let mut record = match decode(raw) {
                Ok(record) => record,
                Err(undecodable) => {
                    let (error, raw) = *undecodable;
                    let reason = Reason {
                        stage: Stage::Decode,
                        kind: ErrorKind::Decode,
                        message: error.to_string(),
                        attempts: 1,
                    };
                    ledger.dead_letter(index, reason, &raw.data, &raw.meta);
                    continue;
                }
            };
            if let Some(reason) = now.and_then(|now| self.expiry(&record, now)) {
                ledger.dead_letter(index, reason, &record.data, &record.meta);
                expired += 1;
                continue;
            }
            self.enrich_from(0, index, &mut record, ledger).await.place(
                index,
                record,
                &mut kept,
                &mut waiting,
            );
            if kept.len() >= run && waiting.iter().all(Vec::is_empty) {
                let rest = total - index - 1;
                let full = std::mem::replace(&mut kept, Kept::with_capacity(rest.min(run)));
                if !self.store(full, deadline, ledger).await {
                    // A run the sink did not take whole at once (throttling, an outage, a
                    // rejected record): the rest goes in one write, with one retry budget, as
                    // a sink without runs gets it.
                    run = usize::MAX;
                }
            }
        }
        if expired > 0 {
            metrics().expired(&self.name, expired);
        }
        for at in 0..self.enrichers.len() {
            let failing = std::mem::take(&mut waiting[at]);
            if failing.is_empty() {
                continue;
            }
            for (index, mut record) in self.retry_enricher(at, failing, deadline, ledger).await {
                self.enrich_from(at + 1, index, &mut record, ledger)
                    .await
                    .place(index, record, &mut kept, &mut waiting);
            }
        }
        // Records kept after a retry rejoin in their original order.
        self.store(kept.in_order(), deadline, ledger).await;
    }

    /// Why a record that arrived longer ago than `max_record_age` is dead-lettered (a record
    /// with no arrival time never expires): after a long outage, stale data must not be
    /// written over fresh. The payload goes to the error sink, unlike with a Lambda mapping's
    /// own limit.
    fn expiry(&self, record: &Record, now: chrono::DateTime<chrono::Utc>) -> Option<Reason> {
        let max = self.max_record_age?;
        let age = (now - record.meta.arrival_time?).to_std().ok()?;
        if age <= max {
            return None;
        }
        let show = |d: std::time::Duration| {
            humantime_serde::re::humantime::format_duration(std::time::Duration::from_secs(
                d.as_secs(),
            ))
            .to_string()
        };
        Some(Reason {
            stage: Stage::Age,
            kind: ErrorKind::Expired,
            message: format!(
                "the record arrived {} ago, longer than max_record_age ({})",
                show(age),
                show(max)
            ),
            attempts: 1,
        })
    }

    /// Runs record number `index` through the enrichers from number `first` on, on their first
    /// attempt: kept when every one kept it; settled when one skipped or dead-lettered it (in
    /// `ledger`); waiting at the one that failed it retryably.
    async fn enrich_from(
        &self,
        first: usize,
        index: usize,
        record: &mut Record,
        ledger: &mut Ledger<'_>,
    ) -> Through {
        for (at, named) in self.enrichers.iter().enumerate().skip(first) {
            match tried(named, index, record, 1, ledger).await {
                Tried::Kept => {}
                Tried::Failing(error) => return Through::Waits(at, error),
                Tried::Settled => return Through::Settled,
            }
        }
        Through::Kept
    }

    /// Tries the records that enricher number `at` failed retryably again, in rounds within the
    /// retry policy and `deadline`: answers those it kept; the others are skipped,
    /// dead-lettered or, still failing when the rounds end, exhausted (in `ledger`).
    async fn retry_enricher(
        &self,
        at: usize,
        failing: Waiting,
        deadline: Instant,
        ledger: &mut Ledger<'_>,
    ) -> Vec<(usize, Record)> {
        let named: &NamedEnricher = &self.enrichers[at];
        // The first attempt was the pass's.
        let mut rounds = RetryRounds::new(self.retry, deadline, &named.name, &self.retried);
        let mut kept = Vec::new();
        let mut failing = failing;
        let exhausted = loop {
            let pending = match rounds.retry(failing).await {
                Ok(again) => again,
                Err(exhausted) => break exhausted,
            };
            failing = Vec::new();
            for (index, mut record) in pending {
                match tried(named, index, &mut record, rounds.attempt(), ledger).await {
                    Tried::Kept => kept.push((index, record)),
                    Tried::Failing(error) => failing.push(((index, record), error)),
                    Tried::Settled => {}
                }
            }
        };
        let attempts = rounds.attempt();
        let stage = Stage::Enrich(named.name.clone());
        for ((index, record), error) in exhausted {
            ledger.exhausted(index, &record, stage.clone(), error, attempts);
        }
        kept
    }
}

/// Where a record stands after the enrichers' first attempts.
enum Through {
    /// Every enricher kept it: on to the sink.
    Kept,
    /// The enricher at this number failed it retryably, with the error: it waits there.
    Waits(usize, String),
    /// Skipped or dead-lettered (in the ledger): done here.
    Settled,
}

impl Through {
    /// Moves record number `index` to where it stands: the kept records, an enricher's waiting
    /// ones, or nowhere. Records are moved once here rather than through each stage's future.
    fn place(self, index: usize, record: Record, kept: &mut Kept, waiting: &mut [Waiting]) {
        match self {
            Through::Kept => kept.push(index, record),
            Through::Waits(at, error) => waiting[at].push(((index, record), error)),
            Through::Settled => {}
        }
    }
}

/// The records on their way to the sink, with their numbers in the batch: two vectors, so the
/// sink's slice of records is there as it is (unzipping pairs copied every record once more).
pub(super) struct Kept {
    pub(super) indices: Vec<usize>,
    pub(super) records: Vec<Record>,
}

impl Kept {
    fn with_capacity(n: usize) -> Self {
        Self {
            indices: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, index: usize, record: Record) {
        self.indices.push(index);
        self.records.push(record);
    }

    fn len(&self) -> usize {
        self.indices.len()
    }

    /// In the batch's order: records kept after a retry come after the pass's.
    fn in_order(self) -> Self {
        if self.indices.is_sorted() {
            return self;
        }
        let mut pairs: Vec<_> = self.indices.into_iter().zip(self.records).collect();
        pairs.sort_unstable_by_key(|(i, _)| *i);
        let (indices, records) = pairs.into_iter().unzip();
        Self { indices, records }
    }
}

/// A record after one attempt of an enricher.
enum Tried {
    /// Kept: on to the next stage.
    Kept,
    /// Failed retryably, with the error: to be tried again.
    Failing(String),
    /// Skipped or dead-lettered (in the ledger): done here.
    Settled,
}

/// Attempt number `attempt` of `named` on record `index`; a skip or a permanent failure is
/// entered in `ledger`. The record is borrowed, not moved: a record is a few hundred bytes, and
/// moving it into and out of each attempt's future was a tenth of the runtime's time.
async fn tried(
    named: &NamedEnricher,
    index: usize,
    record: &mut Record,
    attempt: u32,
    ledger: &mut Ledger<'_>,
) -> Tried {
    match crate::component::enrich(&*named.enricher, record).await {
        Ok(Verdict::Keep) => Tried::Kept,
        Ok(Verdict::Skip) => {
            ledger.skipped(index, SkippedBy::Enricher(named.name.clone()));
            Tried::Settled
        }
        Err(e) if e.is_retryable() => Tried::Failing(e.to_string()),
        Err(e) => {
            let reason = Reason {
                stage: Stage::Enrich(named.name.clone()),
                kind: e.kind(),
                message: e.to_string(),
                attempts: attempt,
            };
            ledger.dead_letter(index, reason, &record.data, &record.meta);
            Tried::Settled
        }
    }
}
