//! Counts of records by outcome.

use serde::Serialize;

use super::Outcome;

/// Records by outcome: a batch's, a run's, or the live counters' snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Records that entered.
    pub records: u64,
    /// Stored.
    pub stored: u64,
    /// Skipped.
    pub skipped: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Failed.
    pub failed: u64,
}

impl Counts {
    /// Whether every record that entered has exactly one outcome.
    pub fn adds_up(&self) -> bool {
        self.stored + self.skipped + self.dead_lettered + self.failed == self.records
    }
}

impl Counts {
    /// Counts one more record with outcome `o`.
    pub fn count(&mut self, o: &Outcome) {
        self.records += 1;
        match o {
            Outcome::Stored => self.stored += 1,
            Outcome::Skipped { .. } => self.skipped += 1,
            Outcome::DeadLettered { .. } => self.dead_lettered += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}
