//! Helpers for tests against the local AWS emulator that `scripts/test` starts.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

use super::faults::FaultPlan;
use super::AwsOverrides;
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

/// The SDK configuration tests use to set up and inspect emulator resources (no faults).
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let o = overrides(&FaultPlan::new());
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(o.credentials.expect("set above"))
        .http_client(o.http_client.expect("set above"))
        .endpoint_url(endpoint)
        .load()
        .await
}
