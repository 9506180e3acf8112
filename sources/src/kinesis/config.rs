//! The `[source]` table of `type = "kinesis"`, and the checks of its ranges.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_core::aws;
use sluice_core::BuildError;

/// Where a shard with no checkpoint starts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The oldest record kept (the default: a persist job must not miss what is in the stream).
    #[default]
    TrimHorizon,
    /// Only records put after the start.
    Latest,
    /// Records from `timestamp` on.
    AtTimestamp,
}

/// How records reach the reader.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// GetRecords, sharing each shard's 2 MB/s and five calls a second with other consumers.
    #[default]
    Polling,
    /// Enhanced fan-out: a registered consumer with its own 2 MB/s per shard, pushed over
    /// SubscribeToShard.
    EnhancedFanOut,
}

/// `start` resolved with its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtTimestamp(DateTime<Utc>),
}

fn default_limit() -> i32 {
    10_000
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_max_records_in_flight() -> usize {
    20_000
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(30)
}

/// Reads a Kinesis data stream.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// The stream's name or ARN.
    pub stream: String,
    /// Where a shard with no checkpoint starts: `trim_horizon` (default), `latest`, `at_timestamp`.
    #[serde(default)]
    pub start: Start,
    /// With `start = "at_timestamp"`: an RFC 3339 time.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    /// Records per GetRecords call, at most 10,000 (the default).
    #[serde(default = "default_limit")]
    pub limit: i32,
    /// The most records this process holds read but not yet done, across all its shards
    /// (default 20,000): what bounds its memory, whatever the number of shards. A KPL aggregate
    /// counts as one record.
    #[serde(default = "default_max_records_in_flight")]
    pub max_records_in_flight: usize,
    /// How long a shard that is caught up waits before asking again (default 1s).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// The DynamoDB lease and checkpoint table; default `<pipeline name>-checkpoints`, created
    /// when missing.
    #[serde(default)]
    pub checkpoint_table: Option<String>,
    /// How often checkpoints are stored and leases renewed (default 5s); also on stopping.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub checkpoint_interval: Duration,
    /// How long a lease lasts without renewal before another worker may take it (default 30s).
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lease_duration: Duration,
    /// The region (see [`sluice_core::aws`], connection settings); default: the stream ARN's.
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint for Kinesis, such as an emulator (see [`sluice_core::aws`]).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Another endpoint for the lease table's DynamoDB; default: as `endpoint_url`.
    #[serde(default)]
    pub checkpoint_endpoint_url: Option<String>,
    /// `polling` (default) or `enhanced_fan_out`.
    #[serde(default)]
    pub mode: Mode,
    /// With enhanced fan-out: the stream consumer's name (registered when missing).
    #[serde(default)]
    pub consumer_name: Option<String>,
}

impl KinesisSourceConfig {
    /// The stream's name, also when it was given as an ARN.
    pub(super) fn stream_name(&self) -> &str {
        aws::name_from_arn(&self.stream, "stream")
    }

    /// The stream's ARN, when it was given as one (API calls then name it by ARN).
    pub(super) fn stream_arn(&self) -> Option<&str> {
        self.stream
            .starts_with("arn:")
            .then_some(self.stream.as_str())
    }

    pub(super) fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or_else(|| aws::region_from_arn(&self.stream))
    }

    /// The lease table's name.
    pub(super) fn table(&self, pipeline: &str) -> String {
        self.checkpoint_table
            .clone()
            .unwrap_or_else(|| format!("{pipeline}-checkpoints"))
    }

    pub(super) fn start_position(&self) -> Result<StartPosition, BuildError> {
        match (self.start, self.timestamp) {
            (Start::TrimHorizon, None) => Ok(StartPosition::TrimHorizon),
            (Start::Latest, None) => Ok(StartPosition::Latest),
            (Start::AtTimestamp, Some(t)) => Ok(StartPosition::AtTimestamp(t)),
            (Start::AtTimestamp, None) => Err(BuildError::invalid(
                "timestamp",
                "`start = \"at_timestamp\"` needs `timestamp`, e.g. timestamp = \"2026-11-24T00:00:00Z\"",
            )),
            (_, Some(_)) => Err(BuildError::invalid(
                "timestamp",
                "is only read with `start = \"at_timestamp\"`",
            )),
        }
    }

    /// The checks that need no I/O: names, ranges and the settings that go together.
    pub(super) fn check(&self) -> Result<(), BuildError> {
        if self.stream_name().is_empty() {
            return Err(BuildError::invalid(
                "stream",
                "must name a stream or give its ARN",
            ));
        }
        match (self.mode, self.consumer_name.as_deref()) {
            (Mode::EnhancedFanOut, None) => {
                return Err(BuildError::invalid(
                    "consumer_name",
                    "`mode = \"enhanced_fan_out\"` needs the consumer's name, e.g. consumer_name = \"waze-persist\" (registered when missing)",
                ))
            }
            (Mode::EnhancedFanOut, Some(name))
                if name.is_empty()
                    || name.len() > 128
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
            {
                return Err(BuildError::invalid(
                    "consumer_name",
                    format!("`{name}` is not a consumer name: 1 to 128 letters, digits, `_`, `.` or `-`"),
                ))
            }
            (Mode::Polling, Some(_)) => {
                return Err(BuildError::invalid(
                    "consumer_name",
                    "is only read with `mode = \"enhanced_fan_out\"`; add that, or remove it",
                ))
            }
            _ => {}
        }
        if !(1..=10_000).contains(&self.limit) {
            return Err(BuildError::invalid(
                "limit",
                format!(
                    "must be between 1 and 10000 (Kinesis's limit), not {}",
                    self.limit
                ),
            ));
        }
        if self.max_records_in_flight == 0 {
            return Err(BuildError::invalid(
                "max_records_in_flight",
                "must be at least 1; it bounds the records read but not yet done (default 20000)",
            ));
        }
        for (key, value) in [
            ("poll_interval", self.poll_interval),
            ("checkpoint_interval", self.checkpoint_interval),
        ] {
            if value.is_zero() {
                return Err(BuildError::invalid(
                    key,
                    "must be longer than zero, e.g. \"1s\"",
                ));
            }
        }
        if self.lease_duration < self.checkpoint_interval * 3 {
            return Err(BuildError::invalid(
                "lease_duration",
                "must be at least three `checkpoint_interval`s, or leases lapse between renewals",
            ));
        }
        self.start_position().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::SourceConfig;

    fn parse(text: &str) -> KinesisSourceConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract::<KinesisSourceConfig>()
            .expect("parses")
    }

    #[test]
    fn settings_out_of_range_are_named() {
        for (text, key, says) in [
            ("limit = 20000", "limit", "between 1 and 10000"),
            (
                "max_records_in_flight = 0",
                "max_records_in_flight",
                "at least 1",
            ),
            ("start = \"at_timestamp\"", "timestamp", "needs `timestamp`"),
            (
                "timestamp = \"2026-01-01T00:00:00Z\"",
                "timestamp",
                "only read with",
            ),
            (
                "checkpoint_interval = \"20s\"",
                "lease_duration",
                "three `checkpoint_interval`s",
            ),
            (
                "checkpoint_interval = \"0s\"",
                "checkpoint_interval",
                "longer than zero",
            ),
            (
                "mode = \"enhanced_fan_out\"",
                "consumer_name",
                "needs the consumer's name",
            ),
            (
                "mode = \"enhanced_fan_out\"\nconsumer_name = \"a b\"",
                "consumer_name",
                "not a consumer name",
            ),
            ("consumer_name = \"x\"", "consumer_name", "only read with"),
            (
                "poll_interval = \"0s\"",
                "poll_interval",
                "longer than zero",
            ),
        ] {
            let e = parse(&format!("stream = \"s\"\n{text}"))
                .validate()
                .expect_err("refused");
            let BuildError::Invalid { key: k, message } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(k, key, "{text}");
            assert!(message.contains(says), "{text}: {message}");
        }
        let e = parse("stream = \"arn:aws:kinesis:us-east-1:1:stream/\"")
            .validate()
            .expect_err("an ARN without a name");
        assert!(e.to_string().contains("must name a stream"), "{e}");
        assert!(parse("stream = \"s\"").validate().is_ok());
    }
}
