//! Helpers for tests against the local AWS emulator that `scripts/test` starts.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

use super::faults::FaultPlan;
use super::{AwsOverrides, ServiceClient};
use crate::component::BuildContext;

/// The variable `scripts/test` sets to the emulator's endpoint (`http://127.0.0.1:PORT`).
pub const MOTO_VAR: &str = "SLUICE_TEST_MOTO";

/// The variable `scripts/test` sets to kinesis-local's endpoint (Kinesis only; for resharding).
pub const KINESIS_LOCAL_VAR: &str = "SLUICE_TEST_KINESIS_LOCAL";

/// The region tests use.
pub const REGION: &str = "us-east-1";

/// The emulator's endpoint. Without one, a test returns early with a note, unless `CI=true`:
/// there a missing emulator fails the test, so CI can never pass by skipping.
pub fn moto_endpoint() -> Option<String> {
    endpoint(MOTO_VAR)
}

/// kinesis-local's endpoint, under the same rule as [`moto_endpoint`].
pub fn kinesis_local_endpoint() -> Option<String> {
    endpoint(KINESIS_LOCAL_VAR)
}

fn endpoint(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{var} is not set but CI=true: an emulator is missing; \
             run the tests with `bash scripts/test`, which starts them"
        ),
        _ => {
            eprintln!(
                "note: {var} is not set; this emulator test did nothing (run `bash scripts/test`)"
            );
            None
        }
    }
}

/// A name no other test in this run uses: tests share one emulator and run in parallel.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// Fixed credentials, region and endpoint for the emulator, calls going through `plan`'s HTTP
/// client.
pub fn overrides(plan: &FaultPlan) -> AwsOverrides {
    AwsOverrides {
        http_client: Some(plan.http_client()),
        credentials: Some(SharedCredentialsProvider::new(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "sluice-tests",
        ))),
        region: Some(REGION.to_owned()),
        endpoint_url: std::env::var(MOTO_VAR).ok(),
    }
}

/// A build context for pipeline `name` whose AWS components talk to the emulator through `plan`.
pub fn context(name: &str, plan: &FaultPlan) -> BuildContext {
    BuildContext::new(name, false).with(overrides(plan))
}

/// A client of service `C` for setting up and inspecting emulator resources (no faults, SDK
/// retries on, calls not counted).
pub async fn client<C: ServiceClient>(endpoint: &str) -> C {
    let o = overrides(&FaultPlan::new());
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(o.credentials.expect("set above"))
        .http_client(o.http_client.expect("set above"))
        .load()
        .await;
    C::from_sdk(&sdk, Some(endpoint), None)
}

/// Creates a test table keyed by `key` (partition key, then an optional sort key).
#[cfg(feature = "dynamodb")]
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &[(&str, aws_sdk_dynamodb::types::ScalarAttributeType)],
) {
    if let Err(e) = super::dynamodb::create_table(client, table, key).await {
        panic!("{e}");
    }
}

/// Creates a test queue with `attributes`; answers its URL.
#[cfg(feature = "sqs")]
pub async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(aws_sdk_sqs::types::QueueAttributeName, &str)],
) -> String {
    let mut create = client.create_queue().queue_name(name);
    for (attribute, value) in attributes {
        create = create.attributes(attribute.clone(), *value);
    }
    create
        .send()
        .await
        .expect("create the test queue")
        .queue_url()
        .expect("a created queue has a URL")
        .to_owned()
}

/// Puts a string parameter, replacing its value when it exists.
#[cfg(feature = "ssm")]
pub async fn put_parameter(client: &aws_sdk_ssm::Client, name: &str, value: &str) {
    client
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("put the test parameter");
}

/// Puts `records` (payload, partition key) into `stream`, 500 per call; answers each record's
/// shard id and sequence number, in order.
#[cfg(feature = "kinesis")]
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    records: Vec<(Vec<u8>, String)>,
) -> Vec<(String, String)> {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let mut placed = Vec::with_capacity(records.len());
    for chunk in records.chunks(500) {
        let entries = chunk
            .iter()
            .map(|(data, key)| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(data.clone()))
                    .partition_key(key)
                    .build()
                    .expect("data and key are set")
            })
            .collect();
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .expect("put records");
        assert_eq!(out.failed_record_count(), Some(0), "every record put");
        placed.extend(out.records().iter().map(|r| {
            let shard = r.shard_id().expect("a shard");
            let seq = r.sequence_number().expect("a sequence number");
            (shard.to_owned(), seq.to_owned())
        }));
    }
    placed
}

/// Receives every message in a queue (with all its attributes) and deletes each.
#[cfg(feature = "sqs")]
pub async fn receive_all(
    client: &aws_sdk_sqs::Client,
    url: &str,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    loop {
        let received = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        if received.messages().is_empty() {
            return out;
        }
        for m in received.messages() {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().expect("a receipt handle"))
                .send()
                .await
                .expect("delete");
            out.push(m.clone());
        }
    }
}

/// Creates a stream of `shards` shards and waits until it is ACTIVE.
#[cfg(feature = "kinesis")]
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("create the test stream");
    wait_until_stream_active(client, name).await;
}

/// Waits until a stream is ACTIVE (after its creation, a split or a merge). The SDK's waiter
/// polls every 10 s at least; kinesis-local is ready within a second.
#[cfg(feature = "kinesis")]
pub async fn wait_until_stream_active(client: &aws_sdk_kinesis::Client, name: &str) {
    for _ in 0..100 {
        let out = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("describe the test stream");
        let status = out
            .stream_description_summary()
            .expect("a summary")
            .stream_status();
        if status.as_str() == "ACTIVE" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("stream {name} never became ACTIVE");
}

/// Every item of `table`, page after page (a scan).
#[cfg(feature = "dynamodb")]
pub async fn scan_all(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap_or_else(|e| panic!("scan {table}: {e}"));
        items.extend(page.items().iter().cloned());
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return items,
        }
    }
}

/// Creates a bucket with a unique name for one test.
#[cfg(feature = "s3")]
pub async fn create_bucket(client: &aws_sdk_s3::Client) -> String {
    let name = unique("bucket").to_lowercase().replace('_', "-");
    client
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create the test bucket");
    name
}

/// An object's bytes as stored.
#[cfg(feature = "s3")]
pub async fn get_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bytes::Bytes {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get s3://{bucket}/{key}: {e}"))
        .body
        .collect()
        .await
        .expect("the object's body")
        .into_bytes()
}
