//! The ledger of one batch: where each record stands while the batch goes through decoding, the
//! enrichers, the sink and the error sink, until every record has exactly one outcome.

use crate::dead_letter::{DeadLetter, Reason};
use crate::outcome::{BatchReport, ErrorKind, Outcome, SkippedBy, Stage};
use crate::position::Position;
use crate::record::{Meta, Record};
use crate::settings::OnExhausted;

/// The outcomes of one batch's records so far, and the dead letters waiting for the error sink.
pub(super) struct Ledger<'p> {
    pipeline: &'p str,
    on_exhausted: OnExhausted,
    outcomes: Vec<Option<Outcome>>,
    /// Records given up on, by index, each with its envelope; their outcome comes from the
    /// error sink.
    doomed: Vec<(usize, DeadLetter)>,
}

impl<'p> Ledger<'p> {
    /// A ledger for a batch of `len` records of pipeline `pipeline`.
    pub(super) fn new(pipeline: &'p str, on_exhausted: OnExhausted, len: usize) -> Self {
        Self {
            pipeline,
            on_exhausted,
            outcomes: vec![None; len],
            doomed: Vec::new(),
        }
    }

    pub(super) fn stored(&mut self, index: usize) {
        self.outcomes[index] = Some(Outcome::Stored);
    }

    pub(super) fn skipped(&mut self, index: usize, by: SkippedBy) {
        self.outcomes[index] = Some(Outcome::Skipped { by });
    }

    /// Gives the record up: its envelope waits for the error sink.
    pub(super) fn dead_letter(&mut self, index: usize, reason: Reason, data: &[u8], meta: &Meta) {
        let envelope = DeadLetter::new(self.pipeline, reason, data, meta);
        self.doomed.push((index, envelope));
    }

    /// A record still failing when the retry policy ran out: failed (delivered again) or
    /// dead-lettered, as the policy's `on_exhausted` says.
    pub(super) fn exhausted(
        &mut self,
        index: usize,
        record: &Record,
        stage: Stage,
        error: String,
        attempts: u32,
    ) {
        match self.on_exhausted {
            OnExhausted::Fail => self.failed(
                index,
                format!("{stage}: retries exhausted after {attempts} attempts: {error}"),
            ),
            OnExhausted::DeadLetter => {
                let reason = Reason {
                    stage,
                    kind: ErrorKind::RetriesExhausted,
                    message: error,
                    attempts,
                };
                self.dead_letter(index, reason, &record.data, &record.meta)
            }
        }
    }

    pub(super) fn failed(&mut self, index: usize, error: String) {
        self.outcomes[index] = Some(Outcome::Failed { error });
    }

    /// The dead letters waiting, in the batch's order, so the error sink sees them as the sink
    /// sees records.
    pub(super) fn take_dead_letters(&mut self) -> Vec<(usize, DeadLetter)> {
        let mut doomed = std::mem::take(&mut self.doomed);
        doomed.sort_unstable_by_key(|(index, _)| *index);
        doomed
    }

    /// The dead letter of record `index` is written (`Ok`), or could not be (`Err`: failed).
    pub(super) fn dead_lettered(
        &mut self,
        index: usize,
        stage: Stage,
        written: Result<(), String>,
    ) {
        self.outcomes[index] = Some(match written {
            Ok(()) => Outcome::DeadLettered { stage },
            Err(error) => {
                tracing::error!(stage = %stage, error = %error, "dead letter could not be written");
                Outcome::Failed {
                    error: format!("{stage} failure, and the error sink failed too: {error}"),
                }
            }
        });
    }

    /// The batch's report; a record the stages somehow left without an outcome counts as failed.
    pub(super) fn into_report(self, shard_id: String, positions: Vec<Position>) -> BatchReport {
        debug_assert!(self.doomed.is_empty(), "dead letters are written first");
        let outcomes = positions
            .into_iter()
            .zip(self.outcomes)
            .map(|(position, o)| {
                let o = o.unwrap_or_else(|| Outcome::Failed {
                    error: "internal: the record was given no outcome".into(),
                });
                (position, o)
            })
            .collect();
        BatchReport::new(shard_id, outcomes)
    }
}
