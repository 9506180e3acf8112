//! Bounded retries: attempts per stage, one time budget per batch.

use tokio::time::Instant;

use crate::settings::RetryPolicy;

/// Decides, after a failed attempt, whether to try again and how long to wait first.
#[derive(Debug)]
pub(crate) struct Retrier {
    policy: RetryPolicy,
    deadline: Instant,
    attempts: u32,
}

impl Retrier {
    /// A retrier for one stage of a batch whose time budget ends at `deadline`.
    pub(crate) fn new(policy: RetryPolicy, deadline: Instant) -> Self {
        Self {
            policy,
            deadline,
            attempts: 1,
        }
    }

    /// Attempts made so far, the current one included.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Waits out the backoff and returns true, or returns false when attempts or time are spent.
    pub(crate) async fn wait_for_retry(&mut self) -> bool {
        if self.attempts >= self.policy.attempts {
            return false;
        }
        let delay = self.policy.backoff(self.attempts);
        if Instant::now() + delay > self.deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        self.attempts += 1;
        true
    }
}
