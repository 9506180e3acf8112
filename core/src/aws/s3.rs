//! S3 set-up shared by the components that read or write a bucket.

use crate::error::BuildError;

use super::{describe_error, is_transient};

/// Proves at start-up that `bucket` is there and reachable (HeadBucket), naming the setting that
/// gave it (`what`) when it is not.
pub async fn check_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    what: &str,
) -> Result<(), BuildError> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(drop)
        .map_err(|e| BuildError::Unavailable {
            transient: is_transient(&e),
            what: format!("S3 bucket `{bucket}` ({what})"),
            message: format!(
                "HeadBucket failed: {} (check the bucket name, region, endpoint and permissions)",
                describe_error(&e)
            ),
        })
}
