//! How a shard reader waits: spacing GetRecords within Kinesis's limits and backing off when
//! they fail (`Pacer`), and the episodes of a shard held by a failed record (`Healing`).

use std::time::Duration;

use sluice_core::{Backoff, Shutdown, SourceError};
use tokio::time::Instant;

use super::super::progress::ShardProgress;

/// Kinesis allows five GetRecords calls per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// Backoff after throttling: from twice the call spacing up to 5 s.
const THROTTLE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(400),
    max: Duration::from_secs(5),
};
/// Consecutive failed calls (after the SDK's own retries) before a shard reader gives up.
const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// Waits before reading a shard again after a failed record: from about a second to 3 minutes.
const REWIND_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(2),
    max: Duration::from_secs(180),
};

/// Spacing of GetRecords calls within Kinesis's limit, and backing off when they fail.
#[derive(Default)]
pub(super) struct Pacer {
    last_call: Option<Instant>,
    failures: u32,
}

impl Pacer {
    pub(super) async fn pace(&mut self) {
        if let Some(at) = self.last_call {
            tokio::time::sleep_until(at + MIN_CALL_SPACING).await;
        }
        self.last_call = Some(Instant::now());
    }

    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// After a retryable failure (throttling, 5xx, past the SDK's own retries): waits, or gives
    /// up after too many in a row.
    pub(super) async fn failed(&mut self, shard: &str, error: &str) -> Result<(), SourceError> {
        self.failures += 1;
        if self.failures > MAX_CONSECUTIVE_FAILURES {
            return Err(SourceError::Service(format!(
                "reading shard {shard} kept failing: {error}"
            )));
        }
        let wait = THROTTLE_BACKOFF.delay(self.failures);
        tracing::debug!(%shard, ?wait, %error, "reading backing off");
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// A shard's episodes of failure: from the first failed record until the checkpoint passes it.
pub(super) struct Healing {
    /// The freeze count the reader last re-read for.
    pub(super) rewound_for: u64,
    /// Re-reads in the current episode.
    rewinds: u32,
}

impl Healing {
    pub(super) fn new(freezes: u64) -> Self {
        Self {
            rewound_for: freezes,
            rewinds: 0,
        }
    }

    /// After a freeze, with every batch handed out reported: logs the episode (at error level
    /// once) and waits out the backoff. Answers whether to re-read (false when stopping, or
    /// when the lease is lost).
    pub(super) async fn wait(
        &mut self,
        shard: &str,
        progress: &ShardProgress,
        shutdown: &Shutdown,
    ) -> bool {
        self.rewound_for = progress.freezes();
        self.rewinds += 1;
        let wait = REWIND_BACKOFF.delay(self.rewinds);
        let (position, reason) = progress
            .failure()
            .map(|f| (f.position.to_string(), f.reason))
            .unwrap_or_default();
        if self.rewinds == 1 {
            tracing::error!(%shard, %position, %reason, ?wait, "a record failed; the shard stops reading ahead and reads again from its checkpoint until it is stored or dead-lettered");
        } else {
            tracing::warn!(%shard, %position, %reason, rewinds = self.rewinds, ?wait, "still failing; reading the shard again");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.triggered() => false,
            _ = progress.lost() => false,
        }
    }

    /// Ends the episode once nothing holds the checkpoint any more.
    pub(super) fn note_recovery(&mut self, shard: &str, progress: &ShardProgress) {
        if self.rewinds > 0 && !progress.is_frozen() {
            tracing::info!(%shard, rewinds = self.rewinds, "the failed records are done; the shard reads on");
            self.rewinds = 0;
        }
    }
}
