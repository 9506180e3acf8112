//! Records in flight: one budget shared by all of a consumer's shard readers, so what a daemon
//! holds is bounded by its configuration (`max_records_in_flight`), not by how many shards it
//! reads. A reader reserves records before it reads (GetRecords asks for no more than it holds),
//! keeps what it read, and each batch carries its share until the runtime is done with it (its
//! acknowledgement, dropped, gives it back).
//!
//! How much a reader asks for adapts to its shard: a read that fills its reservation doubles the
//! next (up to `limit`), a shorter one shrinks it to twice what came, so quiet shards hold little
//! of the budget and a backlog is read in full-size calls.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The least a reader asks for, however quiet its shard.
const MIN_WINDOW: usize = 100;

/// The records a consumer may hold, read but not yet done.
#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A budget of `total` records (at least one).
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits until `wanted` records (at least one, at most the whole budget) are free, and
    /// holds them. Readers are served in the order they asked.
    pub async fn reserve(&self, wanted: usize) -> Reserved {
        let n = wanted.clamp(1, self.total);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .await
            .expect("the budget's semaphore is never closed");
        Reserved(Some(permit))
    }

    /// Records held now, by readers and by batches not yet done.
    pub fn in_flight(&self) -> usize {
        self.total - self.permits.available_permits()
    }
}

/// Records held from a [`Budget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Reserved(Option<OwnedSemaphorePermit>);

impl Reserved {
    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Gives back all but `n` (or keeps all, when it holds fewer).
    pub fn keep(&mut self, n: usize) {
        if n < self.len() {
            *self = self.take(n);
        }
    }

    /// Takes `n` (all it holds, when fewer) into a reservation of their own.
    pub fn take(&mut self, n: usize) -> Reserved {
        let n = n.min(self.len());
        if n == self.len() {
            return Reserved(self.0.take());
        }
        match &mut self.0 {
            Some(permit) if n > 0 => Reserved(permit.split(n)),
            _ => Reserved(None),
        }
    }

    /// The share of a batch of `batch` records out of `left` still to be handed out: in
    /// proportion (user records of KPL aggregates outnumber the aggregates reserved), and all
    /// that is held for the last batch.
    pub fn share(&mut self, batch: usize, left: usize) -> Reserved {
        if batch >= left {
            return std::mem::take(self);
        }
        self.take(self.len() * batch / left)
    }
}

/// How many records a shard reader asks for next.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    size: usize,
    limit: usize,
}

impl Window {
    /// Starts at `limit` (GetRecords' own), at least one record.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self { size: limit, limit }
    }

    /// What to ask for next.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Learns from a read of `got` records that asked for `asked`.
    pub fn observe(&mut self, got: usize, asked: usize) {
        self.size = if got >= asked {
            asked.saturating_mul(2)
        } else {
            got.saturating_mul(2).max(MIN_WINDOW)
        }
        .min(self.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_are_given_back_when_dropped_kept_or_split() {
        let budget = Budget::new(1000);
        let mut r = budget.reserve(600).await;
        assert_eq!((r.len(), budget.in_flight()), (600, 600));
        r.keep(250);
        assert_eq!(
            (r.len(), budget.in_flight()),
            (250, 250),
            "the rest given back"
        );
        let part = r.take(100);
        assert_eq!((part.len(), r.len(), budget.in_flight()), (100, 150, 250));
        drop(part);
        assert_eq!(budget.in_flight(), 150);
        let all = r.take(10_000);
        assert_eq!(
            (all.len(), r.len()),
            (150, 0),
            "taking more than held takes all"
        );
        assert_eq!(r.take(5).len(), 0);
        drop(all);
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(
            budget.reserve(5000).await.len(),
            1000,
            "at most the whole budget"
        );
        assert_eq!(budget.reserve(0).await.len(), 1, "at least one record");
    }

    #[tokio::test]
    async fn batches_share_a_read_in_proportion_and_the_last_takes_the_rest() {
        let budget = Budget::new(20_000);
        // Plain records: each batch holds its own records.
        let mut read = budget.reserve(1200).await;
        let shares: Vec<usize> = [500, 500, 200]
            .iter()
            .scan(1200, |left, &n| {
                let share = read.share(n, *left).len();
                *left -= n;
                Some(share)
            })
            .collect();
        assert_eq!(shares, [500, 500, 200]);
        // 100 KPL aggregates of 100 user records: every batch of 500 holds 5, none holds all.
        let mut read = budget.reserve(100).await;
        let mut left = 10_000;
        let mut shares = Vec::new();
        while left > 0 {
            shares.push(read.share(500, left));
            left -= 500;
        }
        let counts: Vec<usize> = shares.iter().map(Reserved::len).collect();
        assert_eq!(counts, vec![5; 20]);
        drop(shares.split_off(1));
        assert_eq!(budget.in_flight(), 5, "given back as each batch is done");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_waits_while_the_budget_is_held_and_goes_on_when_it_is_given_back() {
        let budget = Arc::new(Budget::new(100));
        let held = budget.reserve(80).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50).await.len() }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "80 + 50 is over the budget");
        drop(held);
        assert_eq!(waiting.await.expect("reserved"), 50);
    }

    #[test]
    fn the_window_doubles_while_reads_fill_it_and_shrinks_to_what_comes() {
        let mut w = Window::new(10_000);
        assert_eq!(w.size(), 10_000);
        w.observe(3, 10_000);
        assert_eq!(w.size(), MIN_WINDOW, "a quiet shard asks for little");
        w.observe(100, 100);
        w.observe(200, 200);
        assert_eq!(w.size(), 400, "a backlog doubles it");
        w.observe(300, 400);
        assert_eq!(w.size(), 600);
        for _ in 0..10 {
            let asked = w.size();
            w.observe(asked, asked);
        }
        assert_eq!(w.size(), 10_000, "never past the limit");
        assert_eq!(Window::new(0).size(), 1);
    }
}
