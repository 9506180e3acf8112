//! The consumer: one worker among those sharing a stream through the lease table, following the
//! Kinesis Client Library 2.x protocol. Every `checkpoint_interval` it renews its leases and
//! stores their checkpoints; every take interval it reads the table, takes free and expired
//! leases up to its share and steals toward balance; a lease it loses stops its shard at once.
//! Closed shards end at `SHARD_END` with their children's leases created; a child is read once
//! every parent is finished, whoever held them. On stopping it releases what it holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use sluice_core::health::Health;
use sluice_core::{Backoff, BatchSettings, Source, SourceBatch, SourceError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::balance::Observations;
use super::lease_table::{Initial, Lease, LeaseTable};
use super::progress::ShardProgress;
use super::reader::{ReadEnd, ReaderContext, ShardInfo, ShardReader};
use super::shards::{self, Listing};

mod renew;
mod take;

/// How long the start tries the first listing and lease-table scan again while they fail.
const START_PATIENCE: Duration = Duration::from_secs(300);
/// Waits between those tries.
const START_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// How long a daemon waits before starting a failed shard reader again.
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// Take rounds between two shard listings (a listing also follows every finished shard).
const LIST_EVERY: u64 = 6;
/// Rounds in a row that fail to read the table, create the leases of listed shards or take
/// the leases chosen, or to list the shards when a listing is due, before a one-pass run gives
/// up waiting and ends with the error (a round is half a lease duration: three minutes in all
/// with the default lease).
const MAX_FAILED_ROUNDS: u32 = 12;

/// A built Kinesis source: its clients and settings, nothing read yet.
pub struct KinesisSource {
    pub readers: ReaderContext,
    pub leases: Arc<LeaseTable>,
    pub checkpoint_interval: Duration,
    pub lease_duration: Duration,
    pub health: Arc<Health>,
}

impl Source for KinesisSource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let (tx, rx) = mpsc::channel(4);
        let mut readers = self.readers;
        readers.max_records = settings.max_records;
        readers.batches = Some(tx.clone());
        let consumer = Consumer {
            readers: Arc::new(readers),
            leases: self.leases,
            checkpoint_interval: self.checkpoint_interval,
            lease_duration: self.lease_duration,
            health: self.health,
        };
        tokio::spawn(async move {
            if let Err(e) = consumer.supervised().await {
                let _ = tx.send(Err(e)).await;
            }
        });
        ReceiverStream::new(rx).boxed()
    }
}

/// At the start, tries `call` again while it fails (a throttling burst, an outage), for up to
/// [`START_PATIENCE`] or until a stop: the build proved the stream is there.
async fn patiently<T, F>(
    cx: &ReaderContext,
    what: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, SourceError>
where
    F: std::future::Future<Output = Result<T, SourceError>>,
{
    let until = Instant::now() + START_PATIENCE;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if !cx.shutdown.is_triggered() && Instant::now() < until => {
                let wait = START_BACKOFF.delay(attempt);
                tracing::warn!(error = %e, attempt, ?wait, "{what} failed at the start; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cx.shutdown.triggered() => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

impl Consumer {
    /// Consumes; a panic (a bug) stops the run with an error that says so, after the leases
    /// the table says are this worker's are released, so others take them at once.
    async fn supervised(self) -> Result<(), SourceError> {
        let (leases, shutdown) = (self.leases.clone(), self.readers.shutdown.clone());
        let panic = match tokio::spawn(async move { self.consume().await }).await {
            Ok(consumed) => return consumed,
            Err(e) => e,
        };
        tracing::error!(error = %panic, "the Kinesis consumer panicked; releasing its leases and stopping");
        shutdown.trigger();
        let released = match renew::release_owned(&leases).await {
            Ok(n) => format!("{n} leases released"),
            Err(e) => format!("its leases could not be released ({e}); they lapse"),
        };
        Err(SourceError::Service(format!(
            "the Kinesis consumer panicked: {panic}; {released}"
        )))
    }
}

struct Consumer {
    readers: Arc<ReaderContext>,
    leases: Arc<LeaseTable>,
    checkpoint_interval: Duration,
    lease_duration: Duration,
    health: Arc<Health>,
}

/// A lease this worker holds.
struct Held {
    /// The counter after this worker's last write.
    counter: i64,
    progress: Arc<ShardProgress>,
    shard: ShardInfo,
    initial: Option<Initial>,
    state: State,
    /// A lease stolen from a live worker is read only from here on: by then that worker's own
    /// hold has run out, whatever became of its renewals, so the two never read it at once.
    read_after: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for its parents to finish.
    Blocked,
    Reading,
    /// Read to its end, every record done: `SHARD_END` to store with these children.
    Finished(Vec<String>),
    /// Nothing more to read in this run (caught up, or closed with a failed record).
    Idle,
}

/// How a reader ended: its shard, the progress of the tenure it read for, and why.
type Ended = (String, Arc<ShardProgress>, Result<ReadEnd, SourceError>);

impl World {
    /// Tells the readers of held shards the listing shows closed where they end (an enhanced
    /// fan-out subscription may not say so itself).
    fn note_closed(&self) {
        for held in self.held.values() {
            if let Some(ending) = self.listing.ending(&held.shard.id) {
                held.progress.mark_closed(ending);
            }
        }
    }
}

/// What the loop knows.
#[derive(Default)]
struct World {
    held: HashMap<String, Held>,
    table: Vec<Lease>,
    listing: Listing,
    observations: Observations,
    readers: JoinSet<Ended>,
    rounds: u64,
    list_now: bool,
    /// A listing is under way in the background (renewals never wait for Kinesis), answered
    /// with its number.
    listing_due: Option<mpsc::Sender<(u64, Result<Listing, SourceError>)>>,
    /// Listings started so far, numbered in order, and the number of the one `listing` is.
    listings_started: u64,
    listing_number: u64,
    /// Take rounds in a row that could not read the table, create the leases of listed shards
    /// or take the leases chosen, with the last error.
    round_failures: Option<(u32, SourceError)>,
    /// A one-pass run: a shard ended here when the shards could not be listed, so its children
    /// are not known; a listing started after this number must come before the run ends.
    children_unlisted: Option<u64>,
    /// Background listings in a row that failed since, with the last error.
    listing_failures: Option<(u32, SourceError)>,
    /// A one-pass run: shards read to their end here (their children are waited for).
    finished: HashSet<String>,
    /// A one-pass run gave up waiting for the table, leases or a listing (the error is in
    /// `errors`): it ends.
    gave_up: bool,
    errors: Vec<SourceError>,
}

impl World {
    /// A take round that could not read the table, left a listed shard without a lease, did
    /// not see the leases it made, or could not take the leases it chose: one more in a row,
    /// with `e` as the reason a one-pass run gives if it gives up.
    fn round_failed(&mut self, e: SourceError) {
        count_failure(&mut self.round_failures, e);
    }

    /// The next listing's number.
    fn listing_started(&mut self) -> u64 {
        self.listings_started += 1;
        self.listings_started
    }

    /// A listing answered: taken unless a later one already was; it may be the one a
    /// one-pass run waits for.
    fn listed(&mut self, number: u64, listed: Result<Listing, SourceError>) {
        match listed {
            Ok(listing) if number > self.listing_number => {
                self.listing = listing;
                self.listing_number = number;
                self.list_now = false;
                if self.children_unlisted.is_some_and(|after| number > after) {
                    self.children_unlisted = None;
                    self.listing_failures = None;
                }
                self.note_closed();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "listing shards failed; trying again at the next round");
                // Only a listing that could have shown the children counts against them.
                if self.children_unlisted.is_some_and(|after| number > after) {
                    count_failure(&mut self.listing_failures, e);
                }
            }
        }
    }

    /// Listed shards without a lease whose parent ended here: the next round creates them.
    fn children_unleased(&self) -> bool {
        !self.finished.is_empty()
            && shards::missing(&self.listing, &self.table)
                .iter()
                .any(|(_, parents, _)| parents.iter().any(|p| self.finished.contains(p)))
    }
}

fn count_failure(failures: &mut Option<(u32, SourceError)>, e: SourceError) {
    let n = failures.take().map_or(1, |(n, _)| n + 1);
    *failures = Some((n, e));
}

impl Consumer {
    fn pipeline(&self) -> &str {
        &self.readers.pipeline
    }

    /// Takes leases, reads the shards held (parents first), renews and checkpoints, balances,
    /// and releases everything at the end.
    async fn consume(&self) -> Result<(), SourceError> {
        let cx = &*self.readers;
        let mut world = World {
            listing: patiently(cx, "listing the shards", || shards::list(cx)).await?,
            ..World::default()
        };
        let leases = patiently(cx, "reading the lease table", || self.leases.scan()).await?;
        self.leases.check_stream(&leases)?;
        self.take_round(&mut world, Some(leases)).await;
        self.health.set_ready();
        let mut renew = tokio::time::interval(self.checkpoint_interval);
        renew.reset();
        // KCL takes every 2 × failover; half a lease duration moves a dead worker's shards in
        // about one and a half lease durations instead of three.
        let mut take =
            tokio::time::interval((self.lease_duration / 2).max(self.checkpoint_interval));
        take.reset();
        let (listed, mut listings) = mpsc::channel(1);
        world.listing_due = Some(listed);
        loop {
            if cx.shutdown.is_triggered() && world.readers.is_empty() {
                break;
            }
            if cx.until_caught_up && world.readers.is_empty() && !self.anything_left(&mut world) {
                break;
            }
            tokio::select! {
                Some(joined) = world.readers.join_next(), if !world.readers.is_empty() => {
                    self.reader_ended(&mut world, joined).await;
                }
                _ = renew.tick() => self.renew_round(&mut world).await,
                // A stopping worker takes nothing more (it would only give it back).
                _ = take.tick(), if !cx.shutdown.is_triggered() => {
                    self.take_round(&mut world, None).await
                }
                Some((number, listed)) = listings.recv() => world.listed(number, listed),
                // The readers stop by themselves (renewals go on meanwhile); with none, stop now.
                _ = cx.shutdown.triggered(), if world.readers.is_empty() => {}
            }
        }
        let waiting = world
            .held
            .values()
            .filter(|h| h.state == State::Blocked)
            .count();
        if waiting > 0 {
            tracing::warn!(shards = waiting, "child shards not read: their parents are not finished (a failed record, or read elsewhere)");
        }
        self.release_all(&mut world).await?;
        match world.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// In a one-pass run: whether the run waits for the next round (the last could not read the
    /// table or create a listed shard's lease; the children of a shard ended here are not yet
    /// listed, the listing having failed, or not yet leased), or a lease may still become this
    /// worker's to read (free, or held by a worker not yet seen alive nor expired). A run that
    /// cannot read the table, create its leases or list the shards for `MAX_FAILED_ROUNDS`
    /// rounds in a row gives up and ends with that error, not as caught up with shards unread.
    fn anything_left(&self, world: &mut World) -> bool {
        for failures in [&mut world.round_failures, &mut world.listing_failures] {
            if let Some((n, _)) = failures {
                if *n >= MAX_FAILED_ROUNDS && !world.gave_up {
                    let (_, e) = failures.take().expect("matched above");
                    world.errors.push(e);
                    world.gave_up = true;
                }
            }
        }
        if world.gave_up {
            return false;
        }
        if world.round_failures.is_some()
            || world.children_unlisted.is_some()
            || world.children_unleased()
        {
            return true;
        }
        let now = Instant::now();
        world.table.iter().any(|l| {
            !l.is_finished()
                && !world.held.contains_key(&l.key)
                && match l.owner.as_deref() {
                    None => true,
                    Some(o) if o == self.leases.owner() => true,
                    Some(_) => world.observations.may_be_free(l, now, self.lease_duration),
                }
        })
    }

    async fn reader_ended(&self, world: &mut World, joined: Result<Ended, tokio::task::JoinError>) {
        let cx = &*self.readers;
        let (id, progress, end) = match joined {
            Ok(ended) => ended,
            Err(e) => {
                // A reader panicked (a bug): which shard is unknown, so stop the whole run; the
                // leases are released with the checkpoints acknowledged so far.
                tracing::error!(error = %e, "a shard reader panicked; stopping the run");
                world.errors.push(SourceError::Service(format!(
                    "a shard reader panicked: {e}"
                )));
                cx.shutdown.trigger();
                return;
            }
        };
        let current = world
            .held
            .get(&id)
            .is_some_and(|h| Arc::ptr_eq(&h.progress, &progress));
        if !current {
            // A reader of a lease lost earlier (this worker may hold the shard again since).
            tracing::debug!(shard = %id, ?end, "a reader of an earlier lease ended");
            return;
        }
        match end {
            Ok(ReadEnd::Finished(named)) => {
                tracing::info!(shard = %id, "shard read to its end");
                if cx.until_caught_up {
                    world.finished.insert(id.clone());
                }
                // The listing may predate the split or merge that closed the shard.
                let number = world.listing_started();
                match shards::list(cx).await {
                    Ok(listing) => world.listed(number, Ok(listing)),
                    Err(e) => {
                        tracing::warn!(error = %e, "listing shards failed; the children are found at a later round");
                        if cx.until_caught_up {
                            world.children_unlisted = Some(number);
                        }
                    }
                }
                // Kinesis names the children at the shard's end, listed or not; from a listing
                // where it does not (moto).
                let children = if named.is_empty() {
                    world.listing.children(&id)
                } else {
                    named
                };
                if let Some(held) = world.held.get_mut(&id) {
                    held.state = State::Finished(children);
                }
                // SHARD_END now, then the children: their leases, and (here or elsewhere) reads.
                world.list_now = true;
                self.renew_round(world).await;
                self.take_round(world, None).await;
            }
            Ok(ReadEnd::Lost) => self.lose(world, &id),
            Ok(end) => {
                tracing::debug!(shard = %id, ?end, "shard reader ended");
                if let Some(held) = world.held.get_mut(&id) {
                    held.state = State::Idle;
                }
            }
            Err(e) if !cx.until_caught_up && !cx.shutdown.is_triggered() => {
                // A daemon keeps every shard it holds read: start the reader again, from the
                // checkpoint, once its batches in flight are done.
                tracing::warn!(shard = %id, error = %e, "shard reader failed; restarting it in {RESTART_DELAY:?}");
                let Some(held) = world.held.get(&id) else {
                    return;
                };
                let reader = ShardReader {
                    context: self.readers.clone(),
                    shard: held.shard.clone(),
                    initial: held.initial,
                    progress: held.progress.clone(),
                };
                let shutdown = cx.shutdown.clone();
                world.readers.spawn(async move {
                    reader.progress.settled().await;
                    tokio::select! {
                        _ = tokio::time::sleep(RESTART_DELAY) => {}
                        _ = shutdown.triggered() => {}
                    }
                    let progress = reader.progress.clone();
                    (id, progress, reader.run().await)
                });
            }
            Err(e) => {
                tracing::error!(shard = %id, error = %e, "shard reader failed");
                if let Some(held) = world.held.get_mut(&id) {
                    held.state = State::Idle;
                }
                world.errors.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<Listing, SourceError> {
        Err(SourceError::Service("ListShards failed".into()))
    }

    /// A listing started before the one that failed at a shard's end cannot show its children
    /// either way: its failure does not bring the run's giving up nearer.
    #[test]
    fn only_listings_started_after_the_children_went_unlisted_count_as_failed() {
        let mut world = World::default();
        let early = world.listing_started();
        let at_end = world.listing_started();
        world.children_unlisted = Some(at_end);
        world.listed(early, failed());
        assert!(world.listing_failures.is_none());
        let later = world.listing_started();
        world.listed(later, failed());
        assert_eq!(world.listing_failures.as_ref().map(|(n, _)| *n), Some(1));
        let last = world.listing_started();
        world.listed(last, Ok(Listing::default()));
        assert!(world.children_unlisted.is_none() && world.listing_failures.is_none());
    }
}
