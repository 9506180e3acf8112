//! Runtime settings shared by every pipeline: `[batch]` and `[retry]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How sources group records into batches (`[batch]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// The most records in one batch.
    pub max_records: usize,
    /// How long an endless source waits to fill a batch before sending what it has.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_records: 500,
            max_age: Duration::from_secs(1),
        }
    }
}

/// `items` in runs of at most `size` (at least one), in order, each item moved once: how sources
/// cut batches and sinks cut calls, without copying what they cut.
pub fn owned_chunks<T>(items: Vec<T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    let size = size.max(1);
    let mut rest = items.into_iter().peekable();
    std::iter::from_fn(move || {
        rest.peek()
            .is_some()
            .then(|| rest.by_ref().take(size).collect())
    })
}

/// What happens to a record whose retries are exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// The record is `Failed`: the checkpoint stays before it and it is delivered again.
    Fail,
    /// The record is dead-lettered with kind `retries_exhausted`.
    DeadLetter,
}

/// Retries of retryable errors (`[retry]`): exponential backoff with jitter, bounded in attempts and in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The backoff ceiling before the first retry; it doubles on each retry.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// No retry starts after this much time since the first attempt.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_elapsed: Duration,
    /// What becomes of a record still failing when the attempts or the time run out.
    pub on_exhausted: OnExhausted,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
            on_exhausted: OnExhausted::Fail,
        }
    }
}

/// Exponential backoff with equal jitter, the one formula every wait after a failure uses: the
/// ceiling starts at `initial` and doubles per retry up to `max`; the wait is drawn uniformly
/// from `[ceiling/2, ceiling]`, so waiters spread out but never retry at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling before the first retry.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry number `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered wait before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let half = self.ceiling(retry) / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

impl RetryPolicy {
    fn backoff_curve(&self) -> Backoff {
        Backoff {
            initial: self.initial_backoff,
            max: self.max_backoff,
        }
    }

    /// The ceiling of the backoff before retry number `retry` (1-based); the sleep is drawn below it.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        self.backoff_curve().ceiling(retry)
    }

    /// A jittered backoff before retry number `retry` (equal jitter: uniform in `[ceiling/2, ceiling]`).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_curve().delay(retry)
    }

    /// Checks that the bounds make sense; names the key to fix.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.attempts == 0 {
            return Err((
                "retry.attempts".into(),
                "must be at least 1 (the first attempt counts)".into(),
            ));
        }
        for (key, value) in [
            ("retry.initial_backoff", self.initial_backoff),
            ("retry.max_elapsed", self.max_elapsed),
        ] {
            if value.is_zero() {
                return Err((
                    key.into(),
                    "must be longer than zero, e.g. \"100ms\" (zero would retry without a pause, \
                     or never)"
                        .into(),
                ));
            }
        }
        if self.max_backoff < self.initial_backoff {
            return Err((
                "retry.max_backoff".into(),
                "must not be less than retry.initial_backoff".into(),
            ));
        }
        Ok(())
    }
}

impl BatchSettings {
    /// Checks that the bounds make sense; names the key to fix.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_records == 0 {
            return Err(("batch.max_records".into(), "must be at least 1".into()));
        }
        if self.max_age.is_zero() {
            return Err((
                "batch.max_age".into(),
                "must be longer than zero, e.g. \"1s\"".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_chunks_keep_the_order_and_cut_at_the_size() {
        let chunks: Vec<Vec<u32>> = owned_chunks((1..=5).collect(), 2).collect();
        assert_eq!(chunks, vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert_eq!(owned_chunks(Vec::<u32>::new(), 2).count(), 0);
        assert_eq!(owned_chunks(vec![1, 2], 0).count(), 2, "a size of 0 is one");
    }

    #[test]
    fn zero_durations_that_make_no_sense_are_refused_naming_the_key() {
        let zero = Duration::ZERO;
        for (policy, key) in [
            (
                RetryPolicy {
                    initial_backoff: zero,
                    ..RetryPolicy::default()
                },
                "retry.initial_backoff",
            ),
            (
                RetryPolicy {
                    max_elapsed: zero,
                    ..RetryPolicy::default()
                },
                "retry.max_elapsed",
            ),
        ] {
            assert_eq!(policy.validate().map_err(|(k, _)| k), Err(key.into()));
        }
        let batch = BatchSettings {
            max_age: zero,
            ..BatchSettings::default()
        };
        assert_eq!(
            batch.validate().map_err(|(k, _)| k),
            Err("batch.max_age".into())
        );
        assert!(RetryPolicy::default().validate().is_ok());
        assert!(BatchSettings::default().validate().is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling_and_stays_within_it() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(4), Duration::from_millis(700));
        assert_eq!(p.backoff_ceiling(60), Duration::from_millis(700));
        for retry in 1..10 {
            let b = p.backoff(retry);
            assert!(b <= p.backoff_ceiling(retry) && b >= p.backoff_ceiling(retry) / 2);
        }
    }
}
