//! Bounded retries of the records that failed retryably: attempts per stage, one time budget per
//! batch. Every stage (enrichers, the sink, the error sink) drives its attempts with
//! [`RetryRounds`]: try the pending records, hand the retryable failures back, get them back to
//! try again or as exhausted.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::settings::RetryPolicy;

/// The rounds of one stage of one batch.
#[derive(Debug)]
pub(crate) struct RetryRounds<'a> {
    policy: RetryPolicy,
    deadline: Instant,
    what: &'a str,
    attempt: u32,
    /// Where the records tried again are counted.
    retried: &'a AtomicU64,
}

impl<'a> RetryRounds<'a> {
    /// The rounds of stage `what`, no retry starting after `deadline`.
    pub(crate) fn new(
        policy: RetryPolicy,
        deadline: Instant,
        what: &'a str,
        retried: &'a AtomicU64,
    ) -> Self {
        Self {
            policy,
            deadline,
            what,
            attempt: 1,
            retried,
        }
    }

    /// The number of the attempt under way (1 for the first).
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After an attempt, the items that failed retryably (each with its error): `Ok` with the
    /// items to try again, after the backoff; `Err` with those still failing when nothing is
    /// left to try or the policy's attempts or time ran out (empty when all succeeded).
    pub(crate) async fn retry<T>(
        &mut self,
        failing: Vec<(T, String)>,
    ) -> Result<Vec<T>, Vec<(T, String)>> {
        let Some((_, error)) = failing.first() else {
            return Err(failing);
        };
        tracing::warn!(what = self.what, records = failing.len(), attempt = self.attempt, %error, "retryable failure");
        if self.attempt >= self.policy.attempts {
            return Err(failing);
        }
        let delay = self.policy.backoff(self.attempt);
        if Instant::now() + delay > self.deadline {
            return Err(failing);
        }
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        self.retried
            .fetch_add(failing.len() as u64, Ordering::Relaxed);
        Ok(failing.into_iter().map(|(item, _)| item).collect())
    }
}
