//! The one AWS SDK set-up for AWS components: [`client`] builds any service client with the
//! standard credential and region chain (loaded once per process), the component's own region and
//! endpoint, who retries its calls, a timeout per attempt, and call counting.
//!
//! # Connection settings
//!
//! Every AWS component takes the same two optional keys in its table, declared beside its own
//! (serde's `flatten` would turn off `deny_unknown_fields`, which catches typos):
//!
//! - `region`: the component's region. Default: the region in the resource's ARN when it is given
//!   as one, else the standard chain (`AWS_REGION`, the profile).
//! - `endpoint_url`: another endpoint, such as an emulator. Default: `AWS_ENDPOINT_URL`
//!   (or `AWS_ENDPOINT_URL_<SERVICE>`), else AWS itself. A setting in the pipeline file wins
//!   over the environment.

mod clients;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;

#[cfg(feature = "testkit")]
pub mod faults;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "testkit")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::sync::OnceCell;

pub use crate::arn::{name_from_arn, region_from_arn};
use crate::calls::ApiCalls;
use crate::component::BuildContext;
use crate::error::BuildError;
pub use clients::ServiceClient;

/// Who retries a component's failed calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// sluice's runtime does, under the pipeline's `[retry]` policy: sinks and enrichers, whose
    /// attempts and time budget the policy bounds and the dead-letter envelope reports.
    Runtime,
    /// The SDK's standard mode does (3 attempts with jittered backoff): sources and checkpoints.
    Sdk,
}

/// Where and how one component connects.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The component's `region` setting; `None` uses the standard chain (`AWS_REGION`, profile).
    pub region: Option<&'a str>,
    /// The component's `endpoint_url` setting; `None` uses `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint_url: Option<&'a str>,
    /// Who retries.
    pub retries: Retries,
}

impl Connection<'_> {
    /// The same connection with the SDK's retries: for the calls a component makes at start-up
    /// (DescribeTable, GetQueueAttributes, a first GetParameter), which no runtime policy covers;
    /// a throttled call at a cold start is tried again instead of failing the start.
    pub fn retried_by_sdk(self) -> Self {
        Self {
            retries: Retries::Sdk,
            ..self
        }
    }
}

/// Replaces the standard chain for every AWS component of a pipeline, handed in with
/// [`BuildContext::with`]: tests give fixed credentials and a fault-injecting HTTP client; an
/// embedding program can give its own credentials.
#[derive(Debug, Clone, Default)]
pub struct AwsOverrides {
    /// The HTTP client every AWS component uses instead of the default.
    pub http_client: Option<SharedHttpClient>,
    /// Credentials instead of the standard chain's.
    pub credentials: Option<SharedCredentialsProvider>,
    /// The region instead of the standard chain's (a component's own `region` still wins).
    pub region: Option<String>,
    /// The endpoint instead of `AWS_ENDPOINT_URL` (a component's own `endpoint_url` still wins).
    pub endpoint_url: Option<String>,
}

/// How long one attempt of one call may take before it counts as a (retryable) timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

static BASE: OnceCell<SdkConfig> = OnceCell::const_new();

/// A client of service `C` for one component: the process's credential and region chain with
/// the component's own region, endpoint and retry owner, counting its calls into the pipeline's
/// [`ApiCalls`]. Fails when no region is known.
pub async fn client<C: ServiceClient>(
    ctx: &BuildContext,
    conn: Connection<'_>,
) -> Result<C, BuildError> {
    let overrides = ctx.get::<AwsOverrides>();
    let sdk = sdk_config(overrides, conn).await?;
    // The service's own builder, not the shared config, takes the endpoint: the SDK reads
    // `AWS_ENDPOINT_URL` into each service's config, where it would win over the shared one.
    let endpoint = conn
        .endpoint_url
        .or_else(|| overrides.and_then(|o| o.endpoint_url.as_deref()));
    Ok(C::from_sdk(&sdk, endpoint, Some(CountCalls::new(ctx))))
}

async fn sdk_config(
    overrides: Option<&AwsOverrides>,
    conn: Connection<'_>,
) -> Result<SdkConfig, BuildError> {
    let mut builder = match overrides {
        None => BASE
            .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
            .await
            .to_builder(),
        Some(o) => {
            let mut loader = aws_config::defaults(BehaviorVersion::latest());
            if let Some(region) = &o.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if let Some(credentials) = &o.credentials {
                loader = loader.credentials_provider(credentials.clone());
            }
            loader.load().await.to_builder()
        }
    };
    if let Some(region) = conn.region {
        builder = builder.region(Region::new(region.to_owned()));
    }
    builder = builder.retry_config(match conn.retries {
        Retries::Runtime => RetryConfig::disabled(),
        Retries::Sdk => RetryConfig::standard(),
    });
    builder = builder.timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build(),
    );
    if let Some(client) = overrides.and_then(|o| o.http_client.clone()) {
        builder = builder.http_client(client);
    }
    let config = builder.build();
    if config.region().is_none() {
        return Err(BuildError::invalid(
            "region",
            "no AWS region is configured: set AWS_REGION (or `region` in this table)",
        ));
    }
    Ok(config)
}

/// An SDK interceptor that counts every attempt of every call into the pipeline's [`ApiCalls`];
/// add it to each service client (`config::Builder::from(&sdk).interceptor(..)`).
#[derive(Debug, Clone)]
pub struct CountCalls(pub Arc<ApiCalls>);

impl CountCalls {
    /// The counter for a pipeline's components.
    pub fn new(ctx: &BuildContext) -> Self {
        Self(ctx.api_calls.clone())
    }
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "sluice::CountCalls"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            self.0.add(m.service(), m.name());
            crate::metrics::metrics().aws_call(m.service(), m.name());
        }
        Ok(())
    }
}

/// Throttling codes of single services that the SDK's general lists lack.
const SERVICE_THROTTLING_CODES: &[&str] = &["KMSThrottlingException"];

/// Whether a failed call may succeed if made again: timeouts, lost connections, 5xx, and the
/// codes the SDK's own retry classifier counts as throttling or transient.
pub fn is_retryable<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            s.raw().status().is_server_error()
                || s.err().code().is_some_and(|c| {
                    THROTTLING_ERRORS.contains(&c)
                        || TRANSIENT_ERRORS.contains(&c)
                        || SERVICE_THROTTLING_CODES.contains(&c)
                })
        }
        _ => false,
    }
}

/// Whether a start-up call failed for a passing reason: as [`is_retryable`], except that a
/// failure before the request left (no credentials, a malformed endpoint) is not passing, so a
/// start without credentials fails at once instead of waiting.
pub fn is_transient<E>(e: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => true,
        SdkError::DispatchFailure(d) if d.is_user() => false,
        // "Other": a connection closed before the answer came (found by the chaos test: its
        // proxy cuts connections) passes; credentials the chain could not find do not.
        SdkError::DispatchFailure(_) => !caused_by_credentials(e),
        _ => is_retryable(e),
    }
}

/// Whether a credentials provider's failure is somewhere in the error's chain.
fn caused_by_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// A failed call's error code and message (`ResourceNotFoundException: Requested resource not
/// found`), or the whole error chain when the service sent none.
pub fn describe_error<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(s) => match (s.err().code(), s.err().message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => format!("HTTP {}: {}", s.raw().status().as_u16(), error_chain(e)),
        },
        _ => error_chain(e),
    }
}

/// The error code of a service error, if the service sent one.
pub fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// The error's message and its source chain on one line: the SDK's `Display` alone often says
/// only "service error".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn dispatch(e: ConnectorError) -> SdkError<ErrorMetadata, HttpResponse> {
        SdkError::dispatch_failure(e)
    }

    #[test]
    fn a_failure_before_the_request_left_is_not_transient_though_retried() {
        // Found by review: missing credentials surface as a dispatch failure, and a start
        // waited five minutes for them before failing.
        let missing = aws_credential_types::provider::error::CredentialsError::not_loaded(
            "no credentials found in chain",
        );
        let no_credentials = dispatch(ConnectorError::other(Box::new(missing), None));
        assert!(!is_transient(&no_credentials));
        assert!(
            is_retryable(&no_credentials),
            "a record is never dead-lettered for it"
        );
        let reset = dispatch(ConnectorError::io("connection reset".into()));
        let timeout = dispatch(ConnectorError::timeout("timed out".into()));
        assert!(is_transient(&reset) && is_transient(&timeout));
        // Found by the chaos test: a connection its proxy cut mid-answer is "other", and a
        // start during an outage exited instead of waiting it out.
        let cut = dispatch(ConnectorError::other(
            "client error (SendRequest): connection closed before message completed".into(),
            None,
        ));
        assert!(is_transient(&cut));
    }
}
