//! Which leases this worker takes, as KCL 2.x decides it: expiry by observation (a lease's
//! counter unchanged for `lease_duration` on this worker's own clock, never comparing clocks),
//! a target of `ceil(leases / workers)`, free and expired leases first, then stealing from the
//! most loaded worker, never below its own target, so the fleet converges without flapping.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::lease_table::Lease;

/// What this worker has seen of each lease: its counter, and since when (on this clock).
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    counter: i64,
    since: Instant,
    /// The counter moved while this worker watched: its holder is alive (or was).
    moved: bool,
}

impl Observations {
    /// Records a scan: a lease whose counter changed (or that is new) is alive as of `now`.
    pub fn record(&mut self, leases: &[Lease], now: Instant) {
        self.seen
            .retain(|key, _| leases.iter().any(|l| &l.key == key));
        for lease in leases {
            let seen = self.seen.entry(lease.key.clone()).or_insert(Seen {
                counter: lease.counter,
                since: now,
                moved: false,
            });
            if seen.counter != lease.counter {
                *seen = Seen {
                    counter: lease.counter,
                    since: now,
                    moved: true,
                };
            }
        }
    }

    /// Whether a lease held by another worker is, or may turn out, free: expired, or not yet
    /// seen renewed (a one-pass run waits to know).
    pub fn may_be_free(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        let moved = self.seen.get(&lease.key).is_some_and(|s| s.moved);
        !moved || self.is_expired(lease, now, duration)
    }

    /// Whether the lease's holder stopped renewing it: its counter has not moved for
    /// `duration` since this worker first saw that value.
    pub fn is_expired(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        self.seen
            .get(&lease.key)
            .is_some_and(|s| s.counter == lease.counter && now.duration_since(s.since) >= duration)
    }
}

/// A lease to take, and from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub shard: String,
    pub counter: i64,
    /// The worker it is taken from: a steal when that worker is alive, else an expired lease.
    pub from: Option<String>,
    pub steal: bool,
}

/// The leases to take in this round.
pub struct Balance<'a> {
    pub me: &'a str,
    pub duration: Duration,
    /// One-pass runs read every lease no live worker holds, whatever the share.
    pub take_all: bool,
}

impl Balance<'_> {
    /// Chooses from `leases` (a fresh scan) what to take, given those held here.
    pub fn choose(
        &self,
        leases: &[Lease],
        observations: &Observations,
        held: &HashSet<String>,
        now: Instant,
    ) -> Vec<Choice> {
        // Finished shards need nobody; they do not count toward anyone's share.
        let live: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
        let alive = |l: &Lease| match &l.owner {
            Some(owner) if owner != self.me => !observations.is_expired(l, now, self.duration),
            _ => false,
        };
        let mut load: HashMap<&str, usize> = HashMap::new();
        for lease in live.iter().filter(|l| alive(l)) {
            *load
                .entry(lease.owner.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
        let workers = load.len() + 1;
        let target = if workers >= live.len() {
            1
        } else {
            live.len().div_ceil(workers)
        };
        let mine = live.iter().filter(|l| held.contains(&l.key)).count();
        let mut room = if self.take_all {
            usize::MAX
        } else {
            target.saturating_sub(mine)
        };
        if room == 0 {
            return Vec::new();
        }

        // Free, own (from an earlier life of this worker id) and expired leases first.
        let mut available: Vec<&Lease> = live
            .iter()
            .copied()
            .filter(|l| !held.contains(&l.key) && !alive(l))
            .collect();
        available.sort_by_key(|l| match l.owner.as_deref() {
            Some(owner) if owner == self.me => 0,
            None => 1,
            Some(_) => 2,
        });
        let mut chosen: Vec<Choice> = available
            .into_iter()
            .take(room)
            .map(|l| Choice {
                shard: l.key.clone(),
                counter: l.counter,
                from: l.owner.clone().filter(|o| o != self.me),
                steal: false,
            })
            .collect();
        room = room.saturating_sub(chosen.len());
        if room == 0 || self.take_all || !chosen.is_empty() {
            return chosen;
        }

        // Nothing free: steal from the most loaded worker what it holds beyond the target.
        let Some((&victim, &count)) = load.iter().max_by_key(|(owner, count)| (**count, *owner))
        else {
            return chosen;
        };
        // When every worker is at the target but this one is two or more short of the most
        // loaded, one lease moves: it narrows the gap, and the victim cannot take it back.
        let excess = if count > target {
            count - target
        } else if count >= mine + 2 {
            1
        } else {
            return chosen;
        };
        let mut theirs: Vec<&Lease> = live
            .iter()
            .copied()
            .filter(|l| l.owner.as_deref() == Some(victim))
            .collect();
        fastrand::shuffle(&mut theirs);
        chosen.extend(theirs.into_iter().take(room.min(excess)).map(|l| Choice {
            shard: l.key.clone(),
            counter: l.counter,
            from: Some(victim.to_owned()),
            steal: true,
        }));
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, owner: Option<&str>, counter: i64) -> Lease {
        Lease {
            key: key.into(),
            owner: owner.map(str::to_owned),
            counter,
            ..Lease::default()
        }
    }

    const LEASE: Duration = Duration::from_secs(10);

    fn balance(me: &str) -> Balance<'_> {
        Balance {
            me,
            duration: LEASE,
            take_all: false,
        }
    }

    fn keys(choices: &[Choice]) -> Vec<&str> {
        let mut k: Vec<&str> = choices.iter().map(|c| c.shard.as_str()).collect();
        k.sort();
        k
    }

    #[test]
    fn expiry_is_observed_on_this_clock_never_read_from_the_table() {
        let t0 = Instant::now();
        let mut seen = Observations::default();
        let held = lease("s1", Some("a"), 5);
        seen.record(std::slice::from_ref(&held), t0);
        // Unchanged, but not yet for a whole lease duration on this clock.
        assert!(!seen.is_expired(&held, t0 + LEASE / 2, LEASE));
        assert!(seen.is_expired(&held, t0 + LEASE, LEASE));
        // A renewal (a new counter) makes it alive again, from the moment it is seen.
        let renewed = lease("s1", Some("a"), 6);
        seen.record(std::slice::from_ref(&renewed), t0 + LEASE);
        assert!(!seen.is_expired(&renewed, t0 + LEASE * 3 / 2, LEASE));
        // A lease never seen before is not expired, however old its holder's timestamps.
        assert!(!Observations::default().is_expired(&held, t0, LEASE));
    }

    #[test]
    fn a_new_worker_takes_free_leases_up_to_its_share_then_steals_toward_balance() {
        let t0 = Instant::now();
        // Six shards: `a` holds four, two are free; `b` is new.
        let leases: Vec<Lease> = (0..6)
            .map(|i| lease(&format!("s{i}"), (i < 4).then_some("a"), 1))
            .collect();
        let mut seen = Observations::default();
        seen.record(&leases, t0);
        let none = HashSet::new();
        let first = balance("b").choose(&leases, &seen, &none, t0);
        // Two workers: a share of three. Both free ones first, nothing stolen in the same round.
        assert_eq!(keys(&first), ["s4", "s5"]);
        assert!(first.iter().all(|c| !c.steal));

        // Next round, `b` holds two; `a` still four (alive: its counters move).
        let leases: Vec<Lease> = (0..6)
            .map(|i| lease(&format!("s{i}"), Some(if i < 4 { "a" } else { "b" }), 2))
            .collect();
        seen.record(&leases, t0 + Duration::from_secs(1));
        let held: HashSet<String> = ["s4".to_owned(), "s5".to_owned()].into();
        let second = balance("b").choose(&leases, &seen, &held, t0 + Duration::from_secs(1));
        assert_eq!(
            second.len(),
            1,
            "one steal brings both to three: {second:?}"
        );
        assert!(second[0].steal && second[0].from.as_deref() == Some("a"));
    }

    #[test]
    fn a_worker_with_its_share_takes_nothing_and_a_third_steals_only_the_excess() {
        let t0 = Instant::now();
        let leases: Vec<Lease> = (0..6)
            .map(|i| lease(&format!("s{i}"), Some(if i < 3 { "a" } else { "b" }), 1))
            .collect();
        let mut seen = Observations::default();
        seen.record(&leases, t0);
        let held_by_a: HashSet<String> = (0..3).map(|i| format!("s{i}")).collect();
        assert!(balance("a")
            .choose(&leases, &seen, &held_by_a, t0)
            .is_empty());
        // `c` arrives: three workers, a share of two; it steals one from a worker with three.
        let stolen = balance("c").choose(&leases, &seen, &HashSet::new(), t0);
        assert_eq!(stolen.len(), 1, "{stolen:?}");
        assert!(stolen[0].steal);
    }

    #[test]
    fn a_worker_below_a_full_fleet_still_gets_one() {
        let t0 = Instant::now();
        let steals = |owners: &[&str]| {
            let leases: Vec<Lease> = owners
                .iter()
                .enumerate()
                .map(|(i, o)| lease(&format!("s{i}"), Some(o), 1))
                .collect();
            let mine: HashSet<String> = leases
                .iter()
                .filter(|l| l.owner.as_deref() == Some("d"))
                .map(|l| l.key.clone())
                .collect();
            let mut seen = Observations::default();
            seen.record(&leases, t0);
            balance("d").choose(&leases, &seen, &mine, t0)
        };
        // Nine leases; `d` arrives to three workers holding three each (everyone's share).
        let first = steals(&["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
        assert!(first.len() == 1 && first[0].steal, "{first:?}");
        // One against threes: one more. Two against a three: no move narrows the gap.
        assert_eq!(
            steals(&["a", "b", "c", "a", "b", "c", "a", "b", "d"]).len(),
            1
        );
        assert!(steals(&["a", "b", "c", "a", "b", "c", "a", "d", "d"]).is_empty());
    }

    #[test]
    fn a_dead_workers_leases_are_taken_once_expired_and_finished_shards_do_not_count() {
        let t0 = Instant::now();
        let mut leases = vec![
            lease("s0", Some("dead"), 7),
            lease("s1", Some("dead"), 9),
            lease("s2", Some("me"), 3),
        ];
        leases.push(Lease {
            checkpoint: Some(sluice_core::Checkpoint::ShardEnd),
            ..lease("old", None, 4)
        });
        let mut seen = Observations::default();
        seen.record(&leases, t0);
        let held: HashSet<String> = ["s2".to_owned()].into();
        // Alive as far as this worker knows: two workers, a share of two each; nothing to do.
        let early = balance("me").choose(&leases, &seen, &held, t0 + LEASE / 2);
        assert!(early.is_empty(), "{early:?}");
        // Unchanged for a lease duration: expired, taken (not stolen), and `old` left alone.
        let late = balance("me").choose(&leases, &seen, &held, t0 + LEASE);
        assert_eq!(keys(&late), ["s0", "s1"]);
        assert!(late
            .iter()
            .all(|c| !c.steal && c.from.as_deref() == Some("dead")));
    }

    #[test]
    fn a_one_pass_run_takes_every_lease_no_live_worker_holds() {
        let t0 = Instant::now();
        let leases = vec![
            lease("s0", None, 0),
            lease("s1", None, 0),
            lease("s2", Some("other"), 3),
        ];
        let mut seen = Observations::default();
        seen.record(&leases, t0);
        let all = Balance {
            take_all: true,
            ..balance("me")
        };
        assert_eq!(
            keys(&all.choose(&leases, &seen, &HashSet::new(), t0)),
            ["s0", "s1"]
        );
    }
}
