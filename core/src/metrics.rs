//! The process's Prometheus metrics: one registry, recorded into from the record path with
//! atomic counters only (a metric never waits for a scrape), served by `sluice run
//! --metrics-addr` at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outcome::Counts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabels {
    pipeline: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    pipeline: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    pipeline: String,
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    pipeline: String,
    sink: &'static str,
}

/// How a lease changed hands, for `sluice_lease_transitions_total{event}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A free or expired lease taken.
    Taken,
    /// A lease taken from a live worker holding more than its share.
    Stolen,
    /// This worker's lease taken by another.
    Lost,
    /// Let go (stopping, or a shard finished).
    Released,
}

impl LeaseEvent {
    fn as_str(self) -> &'static str {
        match self {
            LeaseEvent::Taken => "taken",
            LeaseEvent::Stolen => "stolen",
            LeaseEvent::Lost => "lost",
            LeaseEvent::Released => "released",
        }
    }
}

/// Every metric sluice exports.
pub struct Metrics {
    registry: Registry,
    records: Family<RecordLabels, Counter>,
    leases_held: Family<PipelineLabels, Gauge>,
    lease_transitions: Family<TransitionLabels, Counter>,
    millis_behind: Family<ShardLabels, Gauge>,
    in_flight: Family<PipelineLabels, Gauge>,
    rewinds: Family<ShardLabels, Counter>,
    expired: Family<PipelineLabels, Counter>,
    aws_calls: Family<CallLabels, Counter>,
    write_seconds: Family<WriteLabels, Histogram>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let records = Family::default();
        registry.register(
            "records",
            "Records by outcome: stored, skipped, dead_lettered or failed",
            records.clone(),
        );
        let leases_held = Family::default();
        registry.register(
            "leases_held",
            "Shard leases this worker holds",
            leases_held.clone(),
        );
        let lease_transitions = Family::default();
        registry.register(
            "lease_transitions",
            "Leases taken, stolen, lost and released by this worker",
            lease_transitions.clone(),
        );
        let millis_behind = Family::default();
        registry.register(
            "shard_millis_behind_latest",
            "How far a held shard's reader is behind its tip, as Kinesis reports it",
            millis_behind.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "records_in_flight",
            "Records read but not yet done, of the budget max_records_in_flight (sampled at each read)",
            in_flight.clone(),
        );
        let rewinds = Family::default();
        registry.register(
            "shard_rewinds",
            "Times a shard was read again from its checkpoint after a failed record",
            rewinds.clone(),
        );
        let expired = Family::default();
        registry.register(
            "records_expired",
            "Records dead-lettered for being older than max_record_age (also in records{outcome=\"dead_lettered\"})",
            expired.clone(),
        );
        let aws_calls = Family::default();
        registry.register(
            "aws_calls",
            "Calls to AWS services (each attempt counts)",
            aws_calls.clone(),
        );
        let write_seconds = Family::<WriteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "sink_write_duration_seconds",
            "Time of one write call of a sink (one attempt of a batch, of a run of a batch for a sink with max_write, or of their remainder)",
            write_seconds.clone(),
        );
        Self {
            registry,
            records,
            leases_held,
            lease_transitions,
            millis_behind,
            in_flight,
            rewinds,
            expired,
            aws_calls,
            write_seconds,
        }
    }

    /// The metrics in the text exposition format (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a batch's outcomes.
    pub fn record_outcomes(&self, pipeline: &str, counts: &Counts) {
        for (outcome, n) in [
            ("stored", counts.stored),
            ("skipped", counts.skipped),
            ("dead_lettered", counts.dead_lettered),
            ("failed", counts.failed),
        ] {
            if n > 0 {
                self.records
                    .get_or_create(&RecordLabels {
                        pipeline: pipeline.to_owned(),
                        outcome,
                    })
                    .inc_by(n);
            }
        }
    }

    /// How many leases this worker holds.
    pub fn leases_held(&self, pipeline: &str, held: usize) {
        let labels = PipelineLabels {
            pipeline: pipeline.to_owned(),
        };
        self.leases_held.get_or_create(&labels).set(held as i64);
    }

    /// A lease changed hands.
    pub fn lease_transition(&self, pipeline: &str, event: LeaseEvent) {
        let labels = TransitionLabels {
            pipeline: pipeline.to_owned(),
            event: event.as_str(),
        };
        self.lease_transitions.get_or_create(&labels).inc();
    }

    /// A held shard's distance from its tip.
    pub fn millis_behind(&self, pipeline: &str, shard: &str, millis: i64) {
        self.millis_behind
            .get_or_create(&shard_labels(pipeline, shard))
            .set(millis);
    }

    /// Records read but not yet done, across the process's shards.
    pub fn records_in_flight(&self, pipeline: &str, records: usize) {
        self.in_flight
            .get_or_create(&PipelineLabels {
                pipeline: pipeline.to_owned(),
            })
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// A shard read again from its checkpoint.
    pub fn rewind(&self, pipeline: &str, shard: &str) {
        self.rewinds
            .get_or_create(&shard_labels(pipeline, shard))
            .inc();
    }

    /// Records dead-lettered for their age.
    pub fn expired(&self, pipeline: &str, n: u64) {
        let labels = PipelineLabels {
            pipeline: pipeline.to_owned(),
        };
        self.expired.get_or_create(&labels).inc_by(n);
    }

    /// A shard this worker no longer holds: its per-shard series go.
    pub fn forget_shard(&self, pipeline: &str, shard: &str) {
        let labels = shard_labels(pipeline, shard);
        self.millis_behind.remove(&labels);
    }

    /// One call (attempt) to an AWS service.
    pub fn aws_call(&self, service: &str, operation: &str) {
        let labels = CallLabels {
            service: service.to_owned(),
            operation: operation.to_owned(),
        };
        self.aws_calls.get_or_create(&labels).inc();
    }

    /// One write call of the sink (`sink`) or the error sink (`error_sink`).
    pub fn sink_write(&self, pipeline: &str, sink: &'static str, took: Duration) {
        let labels = WriteLabels {
            pipeline: pipeline.to_owned(),
            sink,
        };
        self.write_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

fn shard_labels(pipeline: &str, shard: &str) -> ShardLabels {
    ShardLabels {
        pipeline: pipeline.to_owned(),
        shard: shard.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_come_out_in_the_text_format() {
        let m = Metrics::new();
        let counts = Counts {
            records: 3,
            stored: 2,
            failed: 1,
            ..Counts::default()
        };
        m.record_outcomes("p", &counts);
        m.lease_transition("p", LeaseEvent::Stolen);
        m.millis_behind("p", "s1", 1500);
        m.sink_write("p", "sink", Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("sluice_records_total{pipeline=\"p\",outcome=\"stored\"} 2"),
            "{text}"
        );
        assert!(text.contains("sluice_records_total{pipeline=\"p\",outcome=\"failed\"} 1"));
        assert!(text.contains("sluice_lease_transitions_total{pipeline=\"p\",event=\"stolen\"} 1"));
        assert!(
            text.contains("sluice_shard_millis_behind_latest{pipeline=\"p\",shard=\"s1\"} 1500")
        );
        assert!(text
            .contains("sluice_sink_write_duration_seconds_count{pipeline=\"p\",sink=\"sink\"} 1"));
        m.forget_shard("p", "s1");
        assert!(!m.encode().contains("shard=\"s1\"} 1500"));
    }
}
