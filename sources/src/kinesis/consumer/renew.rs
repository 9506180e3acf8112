//! The renew round: every held lease written (renewed, checkpointed, or finished and let go)
//! on condition nobody took it since; a refused write means the lease is lost.

use sluice_core::metrics::{metrics, LeaseEvent};
use sluice_core::SourceError;
use tokio::time::Instant;

use super::super::lease_table::{LeaseTable, LeaseWrite, WriteKind};
use super::{Consumer, Held, State, World};

/// Waits between attempts at the last lease writes of a stopping worker.
const RELEASE_BACKOFF: sluice_core::Backoff = sluice_core::Backoff {
    initial: std::time::Duration::from_millis(200),
    max: std::time::Duration::from_secs(2),
};

impl Consumer {
    pub(super) fn lose(&self, world: &mut World, shard: &str) {
        if let Some(held) = world.held.remove(shard) {
            tracing::warn!(%shard, "lease lost to another worker: the shard stops here, its checkpoint is not stored");
            held.progress.lease_lost();
            metrics().lease_transition(self.pipeline(), LeaseEvent::Lost);
            metrics().forget_shard(self.pipeline(), shard);
            self.health.shard_stuck(shard, None);
        }
    }

    /// Renews every held lease, storing checkpoints that moved and `SHARD_END` of finished
    /// shards (whose leases it then lets go); a lease whose write is refused is lost.
    pub(super) async fn renew_round(&self, world: &mut World) {
        let writes = each_held(world, |held| {
            match (&held.state, held.progress.take_changed()) {
                (State::Finished(children), _) => WriteKind::Finish(children.clone()),
                (_, Some(cp)) => WriteKind::Checkpoint(cp),
                (_, None) => WriteKind::Renew,
            }
        });
        self.write_held(world, writes).await;
        for (key, held) in &world.held {
            let failure = held.progress.failure();
            let stuck = failure.as_ref().map(|f| (f.since, f.reason.as_str()));
            self.health.shard_stuck(key, stuck);
        }
    }

    /// Stopping: stores the last checkpoints and lets every lease go. A write the table did not
    /// take (throttling, an outage past the SDK's retries) is tried again for up to half a lease
    /// duration, while the leases are surely still this worker's: a failed write puts its
    /// checkpoints back, and a lease lost meanwhile is refused by its counter, not overwritten.
    pub(super) async fn release_all(&self, world: &mut World) -> Result<(), SourceError> {
        let give_up = Instant::now() + self.lease_duration / 2;
        let mut attempt = 0;
        loop {
            let writes = each_held(world, |held| match &held.state {
                State::Finished(children) => WriteKind::Finish(children.clone()),
                _ => WriteKind::Release(held.progress.take_changed()),
            });
            if self.write_held(world, writes).await {
                return Ok(());
            }
            attempt += 1;
            let wait = RELEASE_BACKOFF.delay(attempt);
            if Instant::now() + wait >= give_up {
                return Err(SourceError::Checkpoint(
                    "the last checkpoints could not be stored; the next run reads those records \
                     again"
                        .into(),
                ));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Writes held leases; answers whether the table took the writes (some may be refused:
    /// those leases are lost).
    async fn write_held(&self, world: &mut World, writes: Vec<LeaseWrite>) -> bool {
        if writes.is_empty() {
            return true;
        }
        let sent = Instant::now();
        match self.leases.write(&writes).await {
            Ok(answers) => {
                self.health.lease_table_reached(true);
                for (write, answer) in writes.iter().zip(answers) {
                    match (answer, &write.kind) {
                        (None, _) => self.lose(world, &write.shard),
                        (Some(_), WriteKind::Finish(_) | WriteKind::Release(_)) => {
                            world.held.remove(&write.shard);
                            metrics().lease_transition(self.pipeline(), LeaseEvent::Released);
                            metrics().forget_shard(self.pipeline(), &write.shard);
                        }
                        (Some(counter), _) => {
                            if let Some(held) = world.held.get_mut(&write.shard) {
                                held.counter = counter;
                                held.progress.lease_written(sent, self.lease_duration);
                            }
                        }
                    }
                }
                metrics().leases_held(self.pipeline(), world.held.len());
                true
            }
            Err(e) => {
                // Kept, and tried again at the next round: a lease outlasts three of them.
                self.health.lease_table_reached(false);
                for write in &writes {
                    if matches!(
                        write.kind,
                        WriteKind::Checkpoint(_) | WriteKind::Release(Some(_))
                    ) {
                        if let Some(held) = world.held.get(&write.shard) {
                            held.progress.mark_unstored();
                        }
                    }
                }
                tracing::warn!(error = %e, "leases not written; trying again at the next round");
                false
            }
        }
    }
}

/// One write for each held lease, on condition of the counter this worker last wrote.
fn each_held(world: &World, kind: impl Fn(&Held) -> WriteKind) -> Vec<LeaseWrite> {
    world
        .held
        .iter()
        .map(|(key, held)| LeaseWrite {
            shard: key.clone(),
            counter: held.counter,
            kind: kind(held),
        })
        .collect()
}

/// Releases every unfinished lease the table says this worker owns, checkpoints untouched; what
/// a consumer that lost its own record of them (a panic) can still do. Answers how many.
pub(super) async fn release_owned(leases: &LeaseTable) -> Result<usize, SourceError> {
    let writes: Vec<LeaseWrite> = leases
        .scan()
        .await?
        .into_iter()
        .filter(|l| !l.is_finished() && l.owner.as_deref() == Some(leases.owner()))
        .map(|l| LeaseWrite {
            shard: l.key,
            counter: l.counter,
            kind: WriteKind::Release(None),
        })
        .collect();
    if writes.is_empty() {
        return Ok(0);
    }
    let answers = leases.write(&writes).await?;
    Ok(answers.iter().filter(|a| a.is_some()).count())
}
