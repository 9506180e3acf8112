//! DynamoDB set-up shared by the lease table and the tests: creating a table.

use std::time::Duration;

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

use super::{describe_error, error_chain, error_code};

/// How long a new table may take to become ACTIVE.
const ACTIVE_WITHIN: Duration = Duration::from_secs(120);

/// Creates an on-demand table keyed by `key` (the partition key, then an optional sort key),
/// or finds it created by someone else, and waits until it is ACTIVE. The error says why not.
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &[(&str, ScalarAttributeType)],
) -> Result<(), String> {
    let mut create = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (i, (name, kind)) in key.iter().enumerate() {
        let key_type = if i == 0 {
            KeyType::Hash
        } else {
            KeyType::Range
        };
        create = create
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*name)
                    .key_type(key_type)
                    .build()
                    .expect("name and type are set"),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*name)
                    .attribute_type(kind.clone())
                    .build()
                    .expect("name and type are set"),
            );
    }
    match create.send().await {
        Ok(out) => {
            let active = out
                .table_description()
                .and_then(|d| d.table_status())
                .is_some_and(|s| s.as_str() == "ACTIVE");
            if active {
                return Ok(());
            }
        }
        // Another worker (or test) created it first.
        Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
        Err(e) => return Err(format!("creating table `{table}`: {}", describe_error(&e))),
    }
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(ACTIVE_WITHIN)
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "waiting for table `{table}` to be ACTIVE: {}",
                error_chain(&e)
            )
        })
}
