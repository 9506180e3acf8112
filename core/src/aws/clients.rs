//! The service clients [`super::client`] can build, one per service feature of this crate.

use aws_config::SdkConfig;

use super::CountCalls;

/// An AWS service client built from the shared SDK configuration.
pub trait ServiceClient: Sized {
    /// The client for `sdk`, at `endpoint_url` when given (it wins over `AWS_ENDPOINT_URL`),
    /// counting its calls when `calls` is given.
    fn from_sdk(sdk: &SdkConfig, endpoint_url: Option<&str>, calls: Option<CountCalls>) -> Self;
}

/// Every service crate's config builder has the same methods but no common trait.
macro_rules! service_client {
    ($feature:literal, $service:ident) => {
        service_client!($feature, $service, |config| config);
    };
    // `at_endpoint` adjusts the config when an endpoint is given.
    ($feature:literal, $service:ident, $at_endpoint:expr) => {
        #[cfg(feature = $feature)]
        impl ServiceClient for $service::Client {
            fn from_sdk(
                sdk: &SdkConfig,
                endpoint_url: Option<&str>,
                calls: Option<CountCalls>,
            ) -> Self {
                let mut config = $service::config::Builder::from(sdk);
                if let Some(url) = endpoint_url {
                    config = config.endpoint_url(url);
                }
                // Also for an endpoint from the environment (`AWS_ENDPOINT_URL`).
                if endpoint_url.is_some() || sdk.endpoint_url().is_some() {
                    config = $at_endpoint(config);
                }
                if let Some(calls) = calls {
                    config = config.interceptor(calls);
                }
                $service::Client::from_conf(config.build())
            }
        }
    };
}

service_client!("dynamodb", aws_sdk_dynamodb);
service_client!("kinesis", aws_sdk_kinesis);
// Emulators and S3-compatible stores name the bucket in the path, not the host.
service_client!("s3", aws_sdk_s3, |c: aws_sdk_s3::config::Builder| c
    .force_path_style(true));
service_client!("sqs", aws_sdk_sqs);
service_client!("ssm", aws_sdk_ssm);
