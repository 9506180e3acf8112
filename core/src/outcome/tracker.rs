//! The checkpoint rule for one shard, fed its batches' reports in order.

use std::time::Instant;

use super::{BatchReport, Outcome};
use crate::position::{Checkpoint, Position};

/// Why a shard's checkpoint is held: the first record that failed in this episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The first record not done.
    pub position: Position,
    /// Its error (or why its batch never came back).
    pub reason: String,
    /// When the episode began.
    pub since: Instant,
}

/// One shard's checkpoint under the rule. The checkpoint moves over a contiguous prefix of
/// terminal outcomes; a failed record (or a batch that never came back) freezes it, so later
/// batches of the shard do not move it; a batch that starts again at or before the failed
/// record (the shard re-read from its checkpoint) ends the freeze; `SHARD_END` comes only when
/// every record of a closed shard is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardTracker {
    checkpoint: Option<Checkpoint>,
    /// Set while the checkpoint is frozen.
    failure: Option<Failure>,
    /// Episodes of failure so far (a freeze after a re-read that failed again is a new one).
    freezes: u64,
}

impl ShardTracker {
    /// A tracker starting from a stored checkpoint (`None`: the shard is new).
    pub fn new(checkpoint: Option<Checkpoint>) -> Self {
        Self {
            checkpoint,
            ..Self::default()
        }
    }

    /// How far the shard is done.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// Whether a failure holds the checkpoint where it is.
    pub fn is_frozen(&self) -> bool {
        self.failure.is_some()
    }

    /// What holds the checkpoint, while it is frozen.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// How many times the checkpoint froze so far; a reader that re-reads the shard after each
    /// freeze compares it with the count it last re-read for.
    pub fn freezes(&self) -> u64 {
        self.freezes
    }

    /// Takes the next batch's report: the checkpoint moves to the end of its terminal prefix,
    /// unless an earlier batch failed; a batch with a failure freezes it for the batches after.
    /// Answers whether the checkpoint moved.
    pub fn apply(&mut self, report: &BatchReport) -> bool {
        let first = report.outcomes.first().map(|(p, _)| p);
        if let (Some(failure), Some(first)) = (&self.failure, first) {
            if *first <= failure.position {
                // Re-read from the checkpoint: this batch carries the failed record again.
                self.failure = None;
            }
        }
        let moved = match (self.is_frozen(), report.checkpoint()) {
            (false, Some(reached)) => {
                self.checkpoint = Some(reached.clone());
                true
            }
            _ => false,
        };
        let failed = report.outcomes.iter().find_map(|(p, o)| match o {
            Outcome::Failed { error } => Some((p, error)),
            _ => None,
        });
        if let Some((position, error)) = failed {
            self.freeze(position.clone(), error.clone());
        }
        moved
    }

    /// A batch that will never be reported (its worker stopped), starting at `first`: nothing
    /// from there on may be passed.
    pub fn abandon(&mut self, first: Position) {
        self.freeze(first, "its batch was never processed".into());
    }

    fn freeze(&mut self, position: Position, reason: String) {
        match &mut self.failure {
            Some(held) if held.position <= position => {}
            Some(held) => {
                held.position = position;
                held.reason = reason;
            }
            None => {
                self.freezes += 1;
                self.failure = Some(Failure {
                    position,
                    reason,
                    since: Instant::now(),
                });
            }
        }
    }

    /// After the last record of a closed shard was handed out and every batch reported: the
    /// checkpoint becomes `SHARD_END` when every record up to `last` (the last record read;
    /// `None` when there was none to read) is done. Answers whether it did.
    pub fn finish(&mut self, last: Option<&Position>) -> bool {
        let all_done = !self.is_frozen()
            && match last {
                None => true,
                Some(last) => self.checkpoint.as_ref().and_then(Checkpoint::position) == Some(last),
            };
        if all_done {
            self.checkpoint = Some(Checkpoint::ShardEnd);
        }
        all_done
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{failed, report};
    use super::*;

    fn stored(seqs: std::ops::RangeInclusive<u64>) -> BatchReport {
        report(seqs.map(|s| (s, Outcome::Stored)).collect())
    }

    #[test]
    fn a_failure_freezes_the_shards_checkpoint_for_later_batches() {
        let mut shard = ShardTracker::new(Some(Checkpoint::at(0)));
        assert!(shard.apply(&stored(1..=3)));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(3)));

        // 5 fails: the checkpoint reaches 4, the record before it, and no further.
        assert!(shard.apply(&report(vec![(4, Outcome::Stored), (5, failed())])));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(4)));
        assert!(shard.is_frozen());
        assert_eq!(shard.failure().unwrap().position, 5.into());

        // A later batch that is wholly stored does not move it past the failed record.
        assert!(!shard.apply(&stored(6..=9)));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(4)));
        assert!(
            !shard.finish(Some(&9.into())),
            "a failed record holds SHARD_END back"
        );
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(4)));
    }

    #[test]
    fn a_re_read_from_the_checkpoint_ends_the_freeze() {
        let mut shard = ShardTracker::new(Some(Checkpoint::at(4)));
        shard.apply(&report(vec![(5, failed()), (6, Outcome::Stored)]));
        shard.apply(&stored(7..=8));
        assert_eq!(
            (shard.checkpoint(), shard.freezes()),
            (Some(&Checkpoint::at(4)), 1)
        );

        // Read again from after the checkpoint, failing again: a new episode, still at 4.
        assert!(!shard.apply(&report(vec![(5, failed())])));
        assert_eq!(shard.freezes(), 2);
        assert_eq!(shard.failure().unwrap().position, 5.into());

        // Read again, and this time it is stored: the checkpoint moves on.
        assert!(shard.apply(&stored(5..=8)));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(8)));
        assert!(!shard.is_frozen());
    }

    #[test]
    fn an_abandoned_batch_freezes_the_checkpoint() {
        let mut shard = ShardTracker::default();
        shard.abandon(1.into());
        assert!(!shard.apply(&stored(3..=4)));
        assert_eq!(shard.checkpoint(), None);
        // Read again from the start: the abandoned records come back and are done.
        assert!(shard.apply(&stored(1..=4)));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(4)));
    }

    #[test]
    fn shard_end_only_after_every_record_of_a_closed_shard_is_done() {
        let mut shard = ShardTracker::default();
        shard.apply(&stored(1..=5));
        // A record read but not yet reported (6) keeps the shard open.
        assert!(!shard.finish(Some(&6.into())));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::at(5)));
        assert!(shard.finish(Some(&5.into())));
        assert_eq!(shard.checkpoint(), Some(&Checkpoint::ShardEnd));

        // A closed shard with nothing left to read after its stored checkpoint.
        let mut empty = ShardTracker::new(Some(Checkpoint::at(9)));
        assert!(empty.finish(None));
        assert_eq!(empty.checkpoint(), Some(&Checkpoint::ShardEnd));
    }
}
