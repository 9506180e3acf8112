//! The take round: read the table, create the leases of new shards, take this worker's share,
//! notice leases gone to others, start the readers whose parents are finished, and remove
//! finished leases no longer needed.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_core::metrics::{metrics, LeaseEvent};
use sluice_core::SourceError;
use tokio::time::Instant;

use super::super::balance::Balance;
use super::super::config::StartPosition;
use super::super::lease_table::{Initial, Lease, LeaseWrite, WriteKind};
use super::super::progress::ShardProgress;
use super::super::reader::ShardReader;
use super::super::shards::{self, Listing};
use super::{Consumer, Held, State, World, LIST_EVERY};

impl Consumer {
    /// Creates the leases of listed shards that have none yet; answers which there were, so the
    /// table is read again: a lease this worker's lost answer made (refused as existing when
    /// tried again) or another worker's is seen there too, as is its own.
    async fn create_missing(
        &self,
        listing: &Listing,
        leases: &[Lease],
    ) -> Result<Vec<String>, SourceError> {
        let mut missing = Vec::new();
        for (shard, parents, child) in shards::missing(listing, leases) {
            // A child starts at its beginning; a root where `start` says, a `latest` start
            // written as the moment it began, so a restart goes on from there, not from a new
            // LATEST past what came meanwhile.
            let initial = match (child, self.readers.start) {
                (true, _) | (false, StartPosition::TrimHorizon) => Initial::TrimHorizon,
                (false, StartPosition::Latest) => {
                    Initial::AtTimestamp(Some(chrono::Utc::now().timestamp_millis()))
                }
                (false, StartPosition::AtTimestamp(t)) => {
                    Initial::AtTimestamp(Some(t.timestamp_millis()))
                }
            };
            if self.leases.create(&shard, &parents, initial).await? {
                tracing::info!(%shard, ?parents, "lease created");
            }
            missing.push(shard);
        }
        Ok(missing)
    }

    /// Reads the table (unless `scanned` is a fresh read), creates the leases of new shards,
    /// takes what this worker should, and starts the readers it can.
    pub(super) async fn take_round(&self, world: &mut World, scanned: Option<Vec<Lease>>) {
        world.rounds += 1;
        let due = world.list_now || world.children_unlisted.is_some();
        if due || world.rounds.is_multiple_of(LIST_EVERY) {
            // In the background: the next round uses what it finds.
            if let Some(Ok(permit)) = world
                .listing_due
                .as_ref()
                .map(|tx| tx.clone().try_reserve_owned())
            {
                let number = world.listing_started();
                let readers = self.readers.clone();
                tokio::spawn(async move { permit.send((number, shards::list(&readers).await)) });
            }
        }
        let scanned = match scanned {
            Some(leases) => Ok(self.observe(world, leases)),
            None => self.scan(world).await,
        };
        let mut leases = match scanned {
            Ok(leases) => leases,
            Err(e) => {
                // What the table holds is not known: a one-pass run does not end as caught up
                // on an old reading of it, and gives up while it stays unreadable.
                world.round_failed(e);
                return;
            }
        };
        // What went wrong this round, counted at its end (a round that does all it set out to
        // ends a run's count of failed rounds).
        let mut failed = None;
        match self.create_missing(&world.listing, &leases).await {
            Ok(created) if created.is_empty() => {}
            Ok(created) => match self.scan(world).await {
                Ok(rescanned) => {
                    let unseen = shards::missing(&world.listing, &rescanned)
                        .into_iter()
                        .any(|(shard, _, _)| created.contains(&shard));
                    if unseen {
                        failed = Some(SourceError::Checkpoint(
                            "leases created are not in the lease table yet".into(),
                        ));
                    }
                    leases = rescanned;
                }
                Err(e) => {
                    // Until a round sees the new leases, a one-pass run is not caught up.
                    world.round_failed(e);
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "creating leases failed; trying again at the next round");
                world.list_now = true;
                failed = Some(e);
            }
        }
        self.notice_losses(world, &leases);
        let held: HashSet<String> = world.held.keys().cloned().collect();
        let balance = Balance {
            me: self.leases.owner(),
            duration: self.lease_duration,
            take_all: self.readers.until_caught_up,
        };
        let choices = balance.choose(&leases, &world.observations, &held, Instant::now());
        if !choices.is_empty() {
            let writes: Vec<LeaseWrite> = choices
                .iter()
                .map(|c| LeaseWrite {
                    shard: c.shard.clone(),
                    counter: c.counter,
                    kind: WriteKind::Take {
                        switch: c.from.is_some(),
                    },
                })
                .collect();
            let sent = Instant::now();
            match self.leases.write(&writes).await {
                Ok(answers) => {
                    for (choice, answer) in choices.iter().zip(answers) {
                        let Some(counter) = answer else { continue };
                        let lease = leases
                            .iter()
                            .find(|l| l.key == choice.shard)
                            .expect("chosen from these");
                        let event = if choice.steal {
                            LeaseEvent::Stolen
                        } else {
                            LeaseEvent::Taken
                        };
                        tracing::info!(shard = %choice.shard, from = ?choice.from, ?event, "lease taken");
                        metrics().lease_transition(self.pipeline(), event);
                        let progress = Arc::new(ShardProgress::new(lease.checkpoint.clone()));
                        progress.lease_written(sent, self.lease_duration);
                        let shard = world.listing.info(&lease.key, &lease.parents);
                        world.held.insert(
                            lease.key.clone(),
                            Held {
                                counter,
                                progress,
                                shard,
                                initial: lease.initial,
                                state: State::Blocked,
                                read_after: if choice.steal {
                                    sent + self.lease_duration
                                } else {
                                    sent
                                },
                            },
                        );
                    }
                }
                Err(e) => {
                    self.health.lease_table_reached(false);
                    tracing::warn!(error = %e, "taking leases failed; trying again at the next round");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => world.round_failed(e),
            None => world.round_failures = None,
        }
        self.start_readers(world, &leases);
        self.clean_up_finished(&leases).await;
        metrics().leases_held(self.pipeline(), world.held.len());
    }

    /// Scans the table and records what it shows, or answers why it cannot be read.
    async fn scan(&self, world: &mut World) -> Result<Vec<Lease>, SourceError> {
        match self.leases.scan().await {
            Ok(leases) => Ok(self.observe(world, leases)),
            Err(e) => {
                self.health.lease_table_reached(false);
                tracing::warn!(error = %e, "the lease table cannot be read; trying again at the next round");
                Err(e)
            }
        }
    }

    fn observe(&self, world: &mut World, leases: Vec<Lease>) -> Vec<Lease> {
        self.health.lease_table_reached(true);
        world.observations.record(&leases, Instant::now());
        world.table = leases.clone();
        leases
    }

    /// Leases held here that the table shows in other hands (or gone) are lost.
    fn notice_losses(&self, world: &mut World, leases: &[Lease]) {
        let lost: Vec<String> = world
            .held
            .iter()
            .filter(|(key, held)| {
                !matches!(held.state, State::Finished(_))
                    && !leases.iter().any(|l| {
                        &l.key == *key
                            && l.owner.as_deref() == Some(self.leases.owner())
                            && l.counter == held.counter
                    })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for shard in lost {
            self.lose(world, &shard);
        }
    }

    /// Starts the readers of held shards whose parents are all finished (or gone).
    fn start_readers(&self, world: &mut World, leases: &[Lease]) {
        let finished_here: HashSet<&String> = world
            .held
            .iter()
            .filter(|(_, h)| matches!(h.state, State::Finished(_)))
            .map(|(k, _)| k)
            .collect();
        let ready: Vec<String> = world
            .held
            .iter()
            .filter(|(_, h)| h.state == State::Blocked && h.read_after <= Instant::now())
            .filter(|(_, h)| {
                h.shard.parents.iter().all(|p| {
                    finished_here.contains(p)
                        || leases
                            .iter()
                            .find(|l| &l.key == p)
                            .is_none_or(Lease::is_finished)
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            let held = world.held.get_mut(&key).expect("listed above");
            held.state = State::Reading;
            let progress = held.progress.clone();
            let reader = ShardReader {
                context: self.readers.clone(),
                shard: held.shard.clone(),
                initial: held.initial,
                progress: progress.clone(),
            };
            world
                .readers
                .spawn(async move { (key, progress, reader.run().await) });
        }
    }

    /// Deletes finished leases whose children all have checkpoints of their own.
    async fn clean_up_finished(&self, leases: &[Lease]) {
        for lease in shards::finished_and_replaced(leases) {
            match self.leases.delete_finished(&lease.key).await {
                Ok(()) => tracing::info!(shard = %lease.key, "finished shard's lease removed"),
                Err(e) => tracing::debug!(error = %e, "a finished lease stays for now"),
            }
        }
    }
}
