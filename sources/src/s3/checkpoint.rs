//! Where an `s3` source keeps how far it is: one item per bucket and prefix in the pipeline's
//! checkpoint table (`leaseKey` = `PIPELINE:s3://BUCKET/PREFIX`, `checkpoint` = the last object fully
//! processed). Writes only move it forward, so a slower worker never takes it back.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType};
use sluice_core::aws;
use sluice_core::SourceError;

pub(super) struct CheckpointStore {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
    /// `s3://BUCKET/PREFIX`.
    pub key: String,
}

fn failed(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Checkpoint(format!("{what}: {e}"))
}

impl CheckpointStore {
    /// The last object done, `None` for a new prefix; creates the table when it is missing.
    pub async fn load(&self) -> Result<Option<String>, SourceError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("leaseKey", AttributeValue::S(self.key.clone()))
            .consistent_read(true)
            .send()
            .await;
        match got {
            Ok(out) => Ok(out
                .item()
                .and_then(|i| i.get("checkpoint"))
                .and_then(|v| v.as_s().ok())
                .cloned()),
            Err(e) if aws::error_code(&e) == Some("ResourceNotFoundException") => {
                tracing::info!(table = %self.table, "creating the checkpoint table");
                aws::dynamodb::create_table(
                    &self.client,
                    &self.table,
                    &[("leaseKey", ScalarAttributeType::S)],
                )
                .await
                .map_err(SourceError::Checkpoint)?;
                Ok(None)
            }
            Err(e) => Err(failed(
                &format!("reading checkpoint table `{}`", self.table),
                aws::describe_error(&e),
            )),
        }
    }

    /// Stores `object` as the last one done, unless the table is already past it.
    pub async fn save(&self, object: &str) -> Result<(), SourceError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let saved = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", AttributeValue::S(self.key.clone()))
            .update_expression("SET #c = :c, #u = :u")
            .condition_expression("attribute_not_exists(#c) OR #c < :c")
            .expression_attribute_names("#c", "checkpoint")
            .expression_attribute_names("#u", "checkpointedAtMillis")
            .expression_attribute_values(":c", AttributeValue::S(object.to_owned()))
            .expression_attribute_values(":u", AttributeValue::N(now.to_string()))
            .send()
            .await;
        match saved {
            Ok(_) => Ok(()),
            Err(e) if aws::error_code(&e) == Some("ConditionalCheckFailedException") => {
                tracing::info!(object, "the checkpoint table is already past this object");
                Ok(())
            }
            Err(e) => Err(failed(
                &format!("storing the checkpoint in `{}`", self.table),
                aws::describe_error(&e),
            )),
        }
    }
}
