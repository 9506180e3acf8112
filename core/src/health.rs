//! What a long-running process reports about itself: ready (leases taken and readers started,
//! not stopping), and healthy (no shard stuck on failed records for too long, the lease table
//! reachable). Sources write into it; `sluice run --metrics-addr` serves it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The process's readiness and health, shared by its sources and its HTTP endpoints.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    stopping: AtomicBool,
    /// How long a shard may be stuck on failed records before the process is unhealthy.
    stuck_after: Mutex<Duration>,
    /// How long the lease table may be unreachable (a lease's duration).
    table_grace: Mutex<Duration>,
    /// Shards whose checkpoint a failed record holds: since when, and its error.
    stuck: Mutex<HashMap<String, (Instant, String)>>,
    /// Since when the lease table cannot be read or written.
    lease_table_down: Mutex<Option<Instant>>,
}

/// Why the process is not healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// A shard has been stuck on a failed record longer than the bound.
    ShardStuck {
        shard: String,
        for_secs: u64,
        /// The failed record's error.
        reason: String,
    },
    /// The lease table has been unreachable longer than a lease lasts.
    LeaseTableUnreachable { for_secs: u64 },
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::ShardStuck {
                shard,
                for_secs,
                reason,
            } => write!(
                f,
                "shard {shard} stuck on a failed record for {for_secs} s: {reason}"
            ),
            Unhealthy::LeaseTableUnreachable { for_secs } => {
                write!(f, "the lease table unreachable for {for_secs} s")
            }
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stuck_after: Mutex::new(Duration::from_secs(300)),
            table_grace: Mutex::new(Duration::from_secs(30)),
            stuck: Mutex::default(),
            lease_table_down: Mutex::default(),
        }
    }
}

impl Health {
    /// How long a shard may be stuck on failed records before `/health` says 503 (default 5 min).
    pub fn set_stuck_after(&self, bound: Duration) {
        *Self::lock(&self.stuck_after) = bound;
    }

    /// How long the lease table may be unreachable before `/health` says 503: a lease's duration.
    pub fn set_lease_duration(&self, duration: Duration) {
        *Self::lock(&self.table_grace) = duration;
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().expect("no panic while holding health state")
    }

    /// Leases taken and readers started: the process does its work.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Stopping (SIGTERM): no longer ready.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    /// A shard is stuck on a failed record (since when, and its error), or (`None`) no longer.
    pub fn shard_stuck(&self, shard: &str, failure: Option<(Instant, &str)>) {
        let mut stuck = Self::lock(&self.stuck);
        match failure {
            Some((since, reason)) => {
                stuck.insert(shard.to_owned(), (since, reason.to_owned()));
            }
            None => {
                stuck.remove(shard);
            }
        }
    }

    /// The lease table answered (`true`) or failed (`false`).
    pub fn lease_table_reached(&self, reached: bool) {
        let mut down = Self::lock(&self.lease_table_down);
        match (reached, *down) {
            (true, _) => *down = None,
            (false, None) => *down = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// Why the process is unhealthy now, if it is: a shard stuck on failed records longer than
    /// its bound, or the lease table unreachable longer than a lease lasts.
    pub fn check(&self) -> Option<Unhealthy> {
        let stuck_after = *Self::lock(&self.stuck_after);
        let lease_duration = *Self::lock(&self.table_grace);
        let now = Instant::now();
        let stuck = Self::lock(&self.stuck)
            .iter()
            .map(|(shard, (since, reason))| {
                (shard.clone(), now.duration_since(*since), reason.clone())
            })
            .filter(|(_, d, _)| *d > stuck_after)
            .max_by_key(|(_, d, _)| *d);
        if let Some((shard, d, reason)) = stuck {
            return Some(Unhealthy::ShardStuck {
                shard,
                for_secs: d.as_secs(),
                reason,
            });
        }
        let down = *Self::lock(&self.lease_table_down);
        down.map(|since| now.duration_since(since))
            .filter(|d| *d > lease_duration)
            .map(|d| Unhealthy::LeaseTableUnreachable {
                for_secs: d.as_secs(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_stuck_past_the_bound_or_an_unreachable_table_is_unhealthy() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.set_ready();
        assert!(health.is_ready());
        let bound = Duration::from_millis(50);
        health.set_stuck_after(bound);
        health.set_lease_duration(bound);
        health.shard_stuck("s1", Some((Instant::now(), "the sink refused it")));
        assert_eq!(health.check(), None, "not yet past the bound");
        std::thread::sleep(bound * 2);
        assert!(matches!(
            health.check(),
            Some(Unhealthy::ShardStuck { shard, reason, .. })
                if shard == "s1" && reason == "the sink refused it"
        ));
        health.shard_stuck("s1", None);
        assert_eq!(health.check(), None);
        health.lease_table_reached(false);
        std::thread::sleep(bound * 2);
        assert!(matches!(
            health.check(),
            Some(Unhealthy::LeaseTableUnreachable { .. })
        ));
        health.lease_table_reached(true);
        assert_eq!(health.check(), None);
        health.set_stopping();
        assert!(!health.is_ready());
    }
}
