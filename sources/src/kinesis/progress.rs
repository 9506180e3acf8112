//! How far one shard is done, shared by its reader (which hands out batches), their
//! acknowledgements (which report outcomes) and the consumer (which stores checkpoints). The rule
//! itself is the core's [`ShardTracker`]; this adds what is in flight, what is not yet stored,
//! and whether this worker still holds the shard's lease (no batch is handed out or written
//! once it may not).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_core::{
    Acknowledge, BatchReport, Checkpoint, Failure, Position, SequenceNumber, ShardTracker,
    SourceError,
};
use tokio::sync::{watch, Notify};

use super::budget::Reserved;
use tokio::time::Instant;

/// One shard's checkpoint, whether it moved since last stored, and the batches in flight.
#[derive(Debug, Default)]
pub struct ShardProgress {
    /// Which holding of the shard this is (one per lease taken).
    holding: u64,
    state: Mutex<State>,
    outstanding: AtomicUsize,
    acked: Notify,
    lease: watch::Sender<Lease>,
    /// A listing shows the shard closed (a split or merge) at this sequence number.
    ending: Mutex<Option<SequenceNumber>>,
}

/// This worker's hold on the shard's lease.
#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    /// Until when no other worker can have taken it, on this clock: the last successful write
    /// was sent before then less a lease duration (`None`: no lease, as in tests).
    valid_until: Option<Instant>,
    /// Another worker took it.
    lost: bool,
}

impl Lease {
    fn is_current(&self) -> bool {
        !self.lost && self.valid_until.is_none_or(|until| Instant::now() < until)
    }
}

#[derive(Debug, Default)]
struct State {
    tracker: ShardTracker,
    /// The checkpoint moved since it was last taken for storing.
    dirty: bool,
}

impl ShardProgress {
    /// Progress from a stored checkpoint (`None`: the shard is new).
    pub fn new(checkpoint: Option<Checkpoint>) -> Self {
        static HOLDINGS: AtomicU64 = AtomicU64::new(1);
        Self {
            holding: HOLDINGS.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State {
                tracker: ShardTracker::new(checkpoint),
                dirty: false,
            }),
            ..Self::default()
        }
    }

    /// A write to the lease that was sent at `sent` took effect: it is this worker's until
    /// `sent` plus the lease duration.
    pub fn lease_written(&self, sent: Instant, duration: std::time::Duration) {
        self.lease
            .send_modify(|l| l.valid_until = Some(sent + duration));
    }

    /// Another worker took the lease: nothing more is handed out or written for this shard.
    pub fn lease_lost(&self) {
        self.lease.send_modify(|l| l.lost = true);
    }

    /// A listing shows the shard closed, ending at `ending`.
    pub fn mark_closed(&self, ending: SequenceNumber) {
        *self
            .ending
            .lock()
            .expect("no panic while holding the ending") = Some(ending);
    }

    /// Where a listing showed the shard to end, if one did.
    pub fn ending(&self) -> Option<SequenceNumber> {
        self.ending
            .lock()
            .expect("no panic while holding the ending")
            .clone()
    }

    /// Whether another worker took the lease.
    pub fn is_lost(&self) -> bool {
        self.lease.borrow().lost
    }

    /// Waits until another worker takes the lease.
    pub async fn lost(&self) {
        let mut changes = self.lease.subscribe();
        // The sender lives as long as `self`.
        let _ = changes.wait_for(|l| l.lost).await;
    }

    /// Whether batches of this shard may be handed out and written now.
    pub fn holds_lease(&self) -> bool {
        self.lease.borrow().is_current()
    }

    /// Waits until the lease is current (answers true) or lost (false); a lease past its time
    /// is current again once a renewal gets through.
    pub async fn lease_current(&self) -> bool {
        let mut changes = self.lease.subscribe();
        loop {
            let lease = *changes.borrow_and_update();
            if lease.lost {
                return false;
            }
            if lease.is_current() {
                return true;
            }
            // The sender lives as long as `self`.
            let _ = changes.changed().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no panic while holding shard progress")
    }

    /// The checkpoint as stored or last acknowledged.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.lock().tracker.checkpoint().cloned()
    }

    /// The checkpoint if it moved since the last call (it is then considered stored).
    pub fn take_changed(&self) -> Option<Checkpoint> {
        let mut state = self.lock();
        if !std::mem::take(&mut state.dirty) {
            return None;
        }
        state.tracker.checkpoint().cloned()
    }

    /// Puts back a checkpoint that could not be stored, so the next store tries again.
    pub fn mark_unstored(&self) {
        self.lock().dirty = true;
    }

    /// What holds the checkpoint, while a failure does.
    pub fn failure(&self) -> Option<Failure> {
        self.lock().tracker.failure().cloned()
    }

    /// Whether a failure holds the checkpoint.
    pub fn is_frozen(&self) -> bool {
        self.lock().tracker.is_frozen()
    }

    /// How many times the checkpoint froze so far.
    pub fn freezes(&self) -> u64 {
        self.lock().tracker.freezes()
    }

    /// A batch starting at `first` is handed out; an acknowledgement (or its drop) will account
    /// for it.
    pub fn handed_out(
        self: &Arc<Self>,
        first: Position,
        records: Reserved,
    ) -> Box<dyn Acknowledge> {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Box::new(ShardAck {
            progress: Some(self.clone()),
            first,
            _records: records,
        })
    }

    fn acknowledge(&self, report: &BatchReport) {
        let mut state = self.lock();
        if state.tracker.apply(report) {
            state.dirty = true;
        }
        drop(state);
        self.settle_one();
    }

    /// A batch that will never be acknowledged: nothing from `first` on may be passed.
    fn abandon(&self, first: Position) {
        self.lock().tracker.abandon(first);
        self.settle_one();
    }

    fn settle_one(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.acked.notify_waiters();
    }

    /// Waits until every batch handed out has been acknowledged.
    pub async fn settled(&self) {
        loop {
            let acked = self.acked.notified();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            acked.await;
        }
    }

    /// After the last record of a closed shard (`last`, `None` when none was read): finished
    /// when every record up to it is done; the checkpoint is then `SHARD_END`.
    pub fn finish(&self, last: Option<&Position>) -> bool {
        let mut state = self.lock();
        let finished = state.tracker.finish(last);
        state.dirty |= finished;
        finished
    }
}

/// Tells a shard's progress how a batch ended. Dropped unacknowledged (its worker panicked, the
/// runtime stopped), it counts the batch as failed, so nothing waits for it and no checkpoint
/// passes it.
struct ShardAck {
    progress: Option<Arc<ShardProgress>>,
    first: Position,
    /// The batch's share of the budget of records in flight, given back with the ack.
    _records: Reserved,
}

#[async_trait]
impl Acknowledge for ShardAck {
    fn is_current(&self) -> bool {
        self.progress().holds_lease()
    }

    fn holding(&self) -> u64 {
        self.progress().holding
    }

    async fn acknowledge(mut self: Box<Self>, report: &BatchReport) -> Result<(), SourceError> {
        if let Some(progress) = self.progress.take() {
            progress.acknowledge(report);
        }
        Ok(())
    }
}

impl ShardAck {
    fn progress(&self) -> &ShardProgress {
        self.progress.as_ref().expect("set until acknowledged")
    }
}

impl Drop for ShardAck {
    fn drop(&mut self) {
        if let Some(progress) = self.progress.take() {
            progress.abandon(self.first.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Outcome;

    fn report(seqs: &[(u64, bool)]) -> BatchReport {
        let outcomes = seqs
            .iter()
            .map(|(seq, ok)| {
                let outcome = if *ok {
                    Outcome::Stored
                } else {
                    Outcome::Failed { error: "x".into() }
                };
                (Position::from(*seq), outcome)
            })
            .collect();
        BatchReport::new("s".into(), outcomes)
    }

    #[tokio::test]
    async fn a_dropped_ack_counts_as_failed_so_nothing_waits_and_no_checkpoint_passes_it() {
        let progress = Arc::new(ShardProgress::new(Some(Checkpoint::at(1))));
        let lost = progress.handed_out(2.into(), Reserved::default());
        let acked = progress.handed_out(5.into(), Reserved::default());
        drop(lost);
        acked
            .acknowledge(&report(&[(5, true), (6, true)]))
            .await
            .unwrap();
        // Both batches are accounted for: settling does not hang.
        tokio::time::timeout(std::time::Duration::from_secs(1), progress.settled())
            .await
            .expect("settled");
        assert_eq!(
            progress.checkpoint(),
            Some(Checkpoint::at(1)),
            "not past the lost batch"
        );
        assert!(
            !progress.finish(Some(&Position::from(6))),
            "the shard is not finished"
        );
    }

    #[tokio::test]
    async fn the_checkpoint_follows_acks_and_the_shard_finishes_when_all_is_done() {
        let progress = Arc::new(ShardProgress::new(None));
        progress
            .handed_out(1.into(), Reserved::default())
            .acknowledge(&report(&[(1, true), (2, true)]))
            .await
            .unwrap();
        assert_eq!(progress.take_changed(), Some(Checkpoint::at(2)));
        assert_eq!(progress.take_changed(), None, "unchanged since");
        assert!(progress.finish(Some(&Position::from(2))));
        assert_eq!(progress.checkpoint(), Some(Checkpoint::ShardEnd));
    }
}

#[cfg(test)]
mod lease_tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn batches_stop_when_the_lease_is_past_its_time_and_resume_when_renewed() {
        let progress = Arc::new(ShardProgress::new(None));
        progress.lease_written(Instant::now(), Duration::from_secs(3));
        let ack = progress.handed_out(1.into(), Reserved::default());
        assert!(ack.is_current());
        // Paused past the lease duration (a stopped process): not current until renewed.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!ack.is_current());
        let waiting = tokio::spawn({
            let progress = progress.clone();
            async move { progress.lease_current().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        progress.lease_written(Instant::now(), Duration::from_secs(3));
        assert!(waiting.await.unwrap(), "renewed: current again");
        // Lost for good: nothing more.
        progress.lease_lost();
        assert!(!ack.is_current());
        assert!(!progress.lease_current().await);
    }
}
