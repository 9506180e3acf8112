//! Where a shard reader's records come from: GetRecords with a shard iterator (polling), or an
//! enhanced fan-out subscription over which Kinesis pushes them. Everything after the fetch
//! (handing out, checkpoints, resharding, the rewind of failed records) is the same for both.

use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput;
use aws_sdk_kinesis::types::{
    ChildShard, Record, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use sluice_core::aws;
use sluice_core::{SequenceNumber, SourceError};

use super::pacing::Pacer;
use super::{Resume, ShardReader};
use crate::kinesis::budget::Reserved;

/// How long a subscription may stay silent before it is given up.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// An open subscription (its event stream).
type Events = SubscribeToShardOutput;

/// Where a read starts, as both GetShardIterator and SubscribeToShard take it.
pub(super) struct Starting {
    pub kind: ShardIteratorType,
    pub sequence: Option<String>,
    pub timestamp: Option<aws_smithy_types::DateTime>,
}

/// An open source of one shard's records.
pub(super) enum Feed {
    /// GetRecords from this shard iterator.
    Poll { iterator: String },
    /// A subscription (opened at the first fetch, and again when it ends) from this position.
    Push {
        consumer_arn: String,
        from: Resume,
        events: Option<Box<Events>>,
    },
}

impl Feed {
    pub(super) fn is_polling(&self) -> bool {
        matches!(self, Feed::Poll { .. })
    }
}

/// What one fetch brought.
pub(super) struct Fetched {
    pub records: Vec<Record>,
    /// The records' room in the process's budget: what a poll asked for (no fewer than it got),
    /// or, for a push, what it brought.
    pub reserved: Reserved,
    pub millis_behind: Option<i64>,
    /// The shard is closed and everything in it is delivered.
    pub closed: bool,
    /// The shards it gave way to, as Kinesis names them at its end (GetRecords' and the last
    /// event's `ChildShards`; moto names none).
    pub children: Vec<String>,
}

/// The ids of the child shards Kinesis named at `parent`'s end; none when one of them does not
/// name `parent` among its parents (the KCL refuses such a set too): a listing tells instead.
fn ids(parent: &str, children: &[ChildShard]) -> Vec<String> {
    if children
        .iter()
        .any(|c| !c.parent_shards().iter().any(|p| p == parent))
    {
        tracing::warn!(
            shard = parent,
            ?children,
            "child shards that do not name their parent; ignored"
        );
        return Vec::new();
    }
    children.iter().map(|c| c.shard_id().to_owned()).collect()
}

/// The outcome of one fetch.
pub(super) enum Fetch {
    Got(Fetched),
    /// Nothing this time (a wait after a failure, a subscription that ended): fetch again.
    Again,
    /// The shard iterator expired: open the feed again where reading got to.
    Expired,
}

impl ShardReader {
    /// Opens a feed from `from`: a shard iterator, or (enhanced fan-out) a subscription to come.
    /// A GetShardIterator throttled or failing past the SDK's own retries is tried again after
    /// `pacer`'s backoff, as a GetRecords is: under throttling a `--until-caught-up` run (which
    /// does not restart a failed reader, unlike a daemon) used to end with the shard unread.
    pub(super) async fn open(&self, from: &Resume, pacer: &mut Pacer) -> Result<Feed, SourceError> {
        let cx = &*self.context;
        if let Some(consumer_arn) = &cx.consumer_arn {
            return Ok(Feed::Push {
                consumer_arn: consumer_arn.clone(),
                from: from.clone(),
                events: None,
            });
        }
        let start = self.starting(from);
        loop {
            let mut call = cx
                .client
                .get_shard_iterator()
                .shard_id(&self.shard.id)
                .shard_iterator_type(start.kind.clone())
                .set_starting_sequence_number(start.sequence.clone())
                .set_timestamp(start.timestamp);
            call = match &cx.stream_arn {
                Some(arn) => call.stream_arn(arn),
                None => call.stream_name(&cx.stream_name),
            };
            let out = match call.send().await {
                Ok(out) => out,
                Err(e) if aws::is_retryable(&e) => {
                    pacer
                        .failed(&self.shard.id, &aws::describe_error(&e))
                        .await?;
                    continue;
                }
                Err(e) => {
                    return Err(SourceError::Service(format!(
                        "GetShardIterator for shard {} failed: {}",
                        self.shard.id,
                        aws::describe_error(&e)
                    )))
                }
            };
            let iterator = out.shard_iterator().map(str::to_owned).ok_or_else(|| {
                SourceError::Service(format!("no shard iterator for shard {}", self.shard.id))
            })?;
            pacer.succeeded();
            return Ok(Feed::Poll { iterator });
        }
    }

    /// The next records from `feed`, held in the process's budget: a poll first waits for room
    /// for `limit` (its window) and asks for no more; a push is held as it comes. The budget is
    /// never held through a wait for Kinesis (pacing, backoff, a subscription's silence).
    pub(super) async fn fetch(
        &self,
        feed: &mut Feed,
        limit: usize,
        pacer: &mut Pacer,
    ) -> Result<Fetch, SourceError> {
        match feed {
            Feed::Poll { iterator } => self.poll(iterator, limit, pacer).await,
            Feed::Push {
                consumer_arn,
                from,
                events,
            } => self.receive(consumer_arn, from, events, pacer).await,
        }
    }

    async fn poll(
        &self,
        iterator: &mut String,
        limit: usize,
        pacer: &mut Pacer,
    ) -> Result<Fetch, SourceError> {
        let cx = &*self.context;
        pacer.pace().await;
        let Some(reserved) = self.reserve(limit).await else {
            return Ok(Fetch::Again);
        };
        let limit = reserved.len();
        let out = match cx
            .client
            .get_records()
            .shard_iterator(iterator.as_str())
            .limit(i32::try_from(limit).unwrap_or(cx.limit).clamp(1, cx.limit))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if aws::error_code(&e) == Some("ExpiredIteratorException") => {
                return Ok(Fetch::Expired)
            }
            Err(e) if aws::is_retryable(&e) => {
                drop(reserved);
                pacer
                    .failed(&self.shard.id, &aws::describe_error(&e))
                    .await?;
                return Ok(Fetch::Again);
            }
            Err(e) => {
                return Err(SourceError::Service(format!(
                    "GetRecords on shard {} failed: {}",
                    self.shard.id,
                    aws::describe_error(&e)
                )))
            }
        };
        pacer.succeeded();
        let closed = match out.next_shard_iterator() {
            Some(next) => {
                *iterator = next.to_owned();
                false
            }
            None => true,
        };
        Ok(Fetch::Got(Fetched {
            millis_behind: out.millis_behind_latest(),
            children: ids(&self.shard.id, out.child_shards()),
            records: out.records,
            reserved,
            closed,
        }))
    }

    /// The next event of the subscription, subscribing first when there is none (at the start,
    /// after one ended, which Kinesis does every five minutes, and after an error).
    async fn receive(
        &self,
        consumer_arn: &str,
        from: &mut Resume,
        events: &mut Option<Box<Events>>,
        pacer: &mut Pacer,
    ) -> Result<Fetch, SourceError> {
        let cx = &*self.context;
        let subscription = match events {
            Some(events) => events,
            None => {
                let start = self.starting(from);
                let position = StartingPosition::builder()
                    .r#type(start.kind)
                    .set_sequence_number(start.sequence)
                    .set_timestamp(start.timestamp)
                    .build()
                    .map_err(|e| SourceError::Service(format!("a starting position: {e}")))?;
                let subscribed = cx
                    .client
                    .subscribe_to_shard()
                    .consumer_arn(consumer_arn)
                    .shard_id(&self.shard.id)
                    .starting_position(position)
                    .send()
                    .await;
                match subscribed {
                    Ok(out) => events.insert(Box::new(out)),
                    // Another subscription to the shard is still open (its worker just lost the
                    // lease), throttling, an outage: wait, and subscribe again.
                    Err(e)
                        if aws::is_retryable(&e)
                            || aws::error_code(&e) == Some("ResourceInUseException") =>
                    {
                        pacer
                            .failed(&self.shard.id, &aws::describe_error(&e))
                            .await?;
                        return Ok(Fetch::Again);
                    }
                    Err(e) => {
                        return Err(SourceError::Service(format!(
                            "SubscribeToShard on shard {} failed: {}",
                            self.shard.id,
                            aws::describe_error(&e)
                        )))
                    }
                }
            }
        };
        let received = tokio::select! {
            received = subscription.event_stream.recv() => received,
            // The loop sees these and stops; the subscription closes with the feed.
            _ = cx.shutdown.triggered() => return Ok(Fetch::Again),
            _ = self.progress.lost() => return Ok(Fetch::Again),
            // Kinesis pushes an event every few seconds, records or not: a silent connection
            // (a NAT that dropped it) is given up and subscribed again where it was.
            _ = tokio::time::sleep(SILENCE) => {
                tracing::warn!(shard = %self.shard.id, "the subscription went silent; subscribing again");
                *events = None;
                return Ok(Fetch::Again);
            }
        };
        match received {
            Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                pacer.succeeded();
                // Held before the subscription moves on past them; stopping or a lost lease
                // leaves them to whoever reads the shard from its checkpoint.
                let Some(reserved) = self.reserve(event.records.len()).await else {
                    return Ok(Fetch::Again);
                };
                let continuation = event.continuation_sequence_number();
                if !continuation.is_empty() {
                    // A new subscription goes on after what this one delivered.
                    *from = Resume::After(SequenceNumber::new(continuation));
                }
                // A closed shard's last event names its children.
                Ok(Fetch::Got(Fetched {
                    millis_behind: Some(event.millis_behind_latest()),
                    closed: !event.child_shards().is_empty(),
                    children: ids(&self.shard.id, event.child_shards()),
                    records: event.records,
                    reserved,
                }))
            }
            Ok(Some(_)) => Ok(Fetch::Again),
            Ok(None) => {
                *events = None;
                Ok(Fetch::Again)
            }
            Err(e) => {
                *events = None;
                pacer.failed(&self.shard.id, &e.to_string()).await?;
                Ok(Fetch::Again)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::types::HashKeyRange;

    fn child(id: &str, parents: &[&str]) -> ChildShard {
        ChildShard::builder()
            .shard_id(id)
            .set_parent_shards(Some(parents.iter().map(|p| (*p).to_owned()).collect()))
            .hash_key_range(
                HashKeyRange::builder()
                    .starting_hash_key("0")
                    .ending_hash_key("1")
                    .build()
                    .expect("a range"),
            )
            .build()
            .expect("a child shard")
    }

    #[test]
    fn children_are_taken_only_when_each_names_the_shard_that_ended() {
        let split = [child("s-2", &["s-1"]), child("s-3", &["s-1"])];
        assert_eq!(ids("s-1", &split), ["s-2", "s-3"]);
        let merge = [child("s-9", &["s-7", "s-8"])];
        assert_eq!(ids("s-8", &merge), ["s-9"]);
        let stray = [child("s-2", &["s-1"]), child("s-5", &["s-4"])];
        assert!(ids("s-1", &stray).is_empty());
    }
}
