//! Live counts of a run and its summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::outcome::{BatchReport, Counts, Outcome};
use crate::position::Checkpoint;

/// Live counters a progress display reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    records: AtomicU64,
    stored: AtomicU64,
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    /// Adds a batch's outcomes; answers them counted.
    pub fn add(&self, report: &BatchReport) -> Counts {
        let mut c = Counts::default();
        for (_, o) in &report.outcomes {
            c.count(o);
        }
        self.records.fetch_add(c.records, Ordering::Relaxed);
        self.stored.fetch_add(c.stored, Ordering::Relaxed);
        self.skipped.fetch_add(c.skipped, Ordering::Relaxed);
        self.dead_lettered
            .fetch_add(c.dead_lettered, Ordering::Relaxed);
        self.failed.fetch_add(c.failed, Ordering::Relaxed);
        c
    }

    /// The counters now.
    pub fn snapshot(&self) -> Counts {
        Counts {
            records: self.records.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What a whole run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// The pipeline's name.
    pub pipeline: String,
    /// Outcome counts.
    pub counts: Counts,
    /// Skipped records by who skipped them.
    pub skipped_by: BTreeMap<String, u64>,
    /// Dead-lettered records by stage.
    pub dead_lettered_by: BTreeMap<String, u64>,
    /// The first few failures' errors, with their positions.
    pub failures: Vec<String>,
    /// The checkpoint each shard reached (absent for a shard whose first record failed).
    pub checkpoints: BTreeMap<String, Checkpoint>,
    /// Shards that ended with a failed record not delivered since (their checkpoint stays
    /// before it; the next run reads it again).
    pub unresolved: Vec<String>,
    /// Records read but handed back unprocessed because the source no longer held their shard
    /// (another worker took its lease); that worker reads them.
    pub handed_back: u64,
    /// Errors that stopped the source or its checkpoints; records not yet read remain unread.
    pub errors: Vec<String>,
    /// Calls made to outside services, per `Service.Operation` (each attempt counts).
    pub api_calls: BTreeMap<String, u64>,
    /// Wall-clock time of the run.
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

/// How many failures a summary lists by name.
const FAILURES_LISTED: usize = 10;

impl RunSummary {
    /// Adds a batch's outcomes (for a program that drives batches itself, as `sluice redrive`).
    pub fn add(&mut self, report: &BatchReport) {
        for (seq, o) in &report.outcomes {
            self.counts.count(o);
            match o {
                Outcome::Skipped { by } => *self.skipped_by.entry(by.to_string()).or_default() += 1,
                Outcome::DeadLettered { stage } => {
                    *self.dead_lettered_by.entry(stage.to_string()).or_default() += 1
                }
                Outcome::Failed { error } if self.failures.len() < FAILURES_LISTED => self
                    .failures
                    .push(format!("{}/{}: {error}", report.shard_id, seq)),
                _ => {}
            }
        }
        if let Some(cp) = report.checkpoint() {
            self.checkpoints.insert(report.shard_id.clone(), cp.clone());
        }
    }

    pub(crate) fn merge(&mut self, other: RunSummary) {
        let c = other.counts;
        self.counts.records += c.records;
        self.counts.stored += c.stored;
        self.counts.skipped += c.skipped;
        self.counts.dead_lettered += c.dead_lettered;
        self.counts.failed += c.failed;
        for (k, v) in other.skipped_by {
            *self.skipped_by.entry(k).or_default() += v;
        }
        for (k, v) in other.dead_lettered_by {
            *self.dead_lettered_by.entry(k).or_default() += v;
        }
        let room = FAILURES_LISTED.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        self.checkpoints.extend(other.checkpoints);
        self.handed_back += other.handed_back;
        self.unresolved.extend(other.unresolved);
        self.errors.extend(other.errors);
    }

    /// A run succeeded when nothing stopped it and no shard ended on a failed record: in one
    /// pass, when no record failed; in a daemon, failed records read again and done count too.
    pub fn is_success(&self) -> bool {
        self.unresolved.is_empty() && self.errors.is_empty()
    }

    /// Records per second over the whole run.
    pub fn records_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.counts.records as f64 / secs
        } else {
            0.0
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
