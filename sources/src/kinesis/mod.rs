//! `type = "kinesis"`: a polling consumer of a Kinesis data stream. One task per shard, parents
//! before children, checkpoints in a DynamoDB lease table written only for records the runtime
//! reports done.
//!
//! - [`config`]: the settings and their checks;
//! - `consumer`: the loop that takes leases and owns this worker's shards;
//! - `reader`: reading one shard within Kinesis's limits;
//! - `progress`: one shard's checkpoint under the core's rule, and its batches in flight;
//! - `lease_table`: the DynamoDB items, keyed like the Kinesis Client Library's.

mod balance;
mod budget;
mod config;
mod consumer;
mod fan_out;
mod lease_table;
mod progress;
mod reader;
mod shards;

use std::sync::Arc;

use async_trait::async_trait;
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::{BuildContext, BuildError, Source, SourceConfig};

use budget::Budget;
pub use config::{KinesisSourceConfig, Mode, Start};
use consumer::KinesisSource;
use lease_table::LeaseTable;
use reader::ReaderContext;

sluice_core::register_schema!(source "kinesis" => KinesisSourceConfig);

#[typetag::serde(name = "kinesis")]
#[async_trait]
impl SourceConfig for KinesisSourceConfig {
    fn validate(&self) -> Result<(), BuildError> {
        self.check()
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.check()?;
        let start = self.start_position()?;
        let kinesis: aws_sdk_kinesis::Client = aws::client(
            ctx,
            Connection {
                region: self.region(),
                endpoint_url: self.endpoint_url.as_deref(),
                retries: Retries::Sdk,
            },
        )
        .await?;
        let dynamodb = aws::client(
            ctx,
            Connection {
                region: self.region(),
                endpoint_url: self
                    .checkpoint_endpoint_url
                    .as_deref()
                    .or(self.endpoint_url.as_deref()),
                retries: Retries::Sdk,
            },
        )
        .await?;
        // Proves the stream exists and is reachable before anything runs.
        let mut describe = kinesis.describe_stream_summary();
        describe = match self.stream_arn() {
            Some(arn) => describe.stream_arn(arn),
            None => describe.stream_name(self.stream_name()),
        };
        let summary = describe.send().await.map_err(|e| {
            let hint = match aws::error_code(&e) {
                Some("ResourceNotFoundException") => {
                    " (create it, or check the stream name, region and endpoint)"
                }
                _ => "",
            };
            BuildError::Unavailable {
                transient: aws::is_transient(&e),
                what: format!("Kinesis stream `{}`", self.stream_name()),
                message: format!(
                    "DescribeStreamSummary failed: {}{hint}",
                    aws::describe_error(&e)
                ),
            }
        })?;
        // Enhanced fan-out reads as a registered consumer (validation registers nothing).
        let consumer_arn = match (&self.mode, &self.consumer_name) {
            (Mode::EnhancedFanOut, Some(name)) if !ctx.validate_only => {
                let stream_arn = summary
                    .stream_description_summary()
                    .map(|s| s.stream_arn().to_owned())
                    .or_else(|| self.stream_arn().map(str::to_owned))
                    .ok_or_else(|| BuildError::Unavailable {
                        what: format!("Kinesis stream `{}`", self.stream_name()),
                        message: "DescribeStreamSummary gave no ARN".into(),
                        transient: false,
                    })?;
                Some(fan_out::consumer_arn(&kinesis, &stream_arn, name).await?)
            }
            _ => None,
        };
        ctx.health.set_lease_duration(self.lease_duration);
        Ok(Box::new(KinesisSource {
            readers: ReaderContext {
                pipeline: ctx.pipeline.clone(),
                client: kinesis,
                stream_name: self.stream_name().to_owned(),
                stream_arn: self.stream_arn().map(str::to_owned),
                start,
                limit: self.limit,
                budget: Arc::new(Budget::new(self.max_records_in_flight)),
                poll_interval: self.poll_interval,
                max_records: 0,
                until_caught_up: ctx.until_caught_up,
                consumer_arn,
                shutdown: ctx.shutdown.clone(),
                batches: None,
            },
            leases: Arc::new(LeaseTable::new(
                dynamodb,
                self.table(&ctx.pipeline),
                self.stream_name().to_owned(),
                ctx.worker_id.clone(),
                self.lease_duration,
            )),
            checkpoint_interval: self.checkpoint_interval,
            lease_duration: self.lease_duration,
            health: ctx.health.clone(),
        }))
    }

    fn describe(&self) -> String {
        format!(
            "kinesis stream {} (checkpoints in {})",
            self.stream_name(),
            self.checkpoint_table
                .as_deref()
                .unwrap_or("<pipeline name>-checkpoints")
        )
    }
}

#[cfg(test)]
mod emulator_tests;
