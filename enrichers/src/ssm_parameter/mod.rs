//! `type = "ssm_parameter"`: sets a field from an SSM parameter (the Waze job's latest batch id),
//! read once per refresh interval rather than once per record.
//!
//! A record is never written without the value: when the parameter cannot be read and the last
//! value read is older than `max_age`, the enricher fails retryably, so the record is retried and
//! then Failed (delivered again later), never stored without it.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::preview::Offline;
use sluice_core::{
    BuildContext, BuildError, EnrichError, Enricher, EnricherConfig, Record, Verdict,
};
use tokio::time::Instant;

fn default_refresh() -> Duration {
    Duration::from_secs(5)
}

fn default_max_age() -> Duration {
    Duration::from_secs(60)
}

/// After a failed read, how long records get the same error before the parameter is read again.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// Sets a field to an SSM parameter's value.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsmParameterConfig {
    /// The parameter's name (`/sdc/waze/latest-batch-id`) or ARN.
    pub parameter: String,
    /// The field the value is written into.
    pub into: String,
    /// Decrypt a SecureString parameter (default false).
    #[serde(default)]
    pub with_decryption: bool,
    /// How long a value read is used before reading again (default 5s).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh: Duration,
    /// The oldest value used while the parameter cannot be read (default 60s); past it, records
    /// wait (retried, then Failed) rather than being written with a stale value.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// The region (see [`sluice_core::aws`], connection settings).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint, such as an emulator (see [`sluice_core::aws`]).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

sluice_core::register_schema!(enricher "ssm_parameter" => SsmParameterConfig);

#[typetag::serde(name = "ssm_parameter")]
#[async_trait]
impl EnricherConfig for SsmParameterConfig {
    fn validate(&self) -> Result<(), BuildError> {
        for (key, value) in [("parameter", &self.parameter), ("into", &self.into)] {
            if value.trim().is_empty() {
                return Err(BuildError::invalid(key, "must not be empty"));
            }
        }
        if self.refresh.is_zero() {
            return Err(BuildError::invalid(
                "refresh",
                "must be longer than zero, e.g. \"5s\" (zero would read the parameter for every record)",
            ));
        }
        if self.max_age < self.refresh {
            return Err(BuildError::invalid(
                "max_age",
                format!(
                    "must be at least `refresh` ({}), or values would expire before they are refreshed",
                    humantime::format_duration(self.refresh)
                ),
            ));
        }
        Ok(())
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Enricher>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        if let Some(offline) = ctx.get::<Offline>() {
            // `sluice test`: the value comes from the command line; nothing is called.
            let value = offline.parameters.get(&self.parameter).ok_or_else(|| {
                BuildError::invalid(
                    "parameter",
                    format!(
                        "`sluice test` calls no service: give SSM parameter `{}` a value with \
                         --parameter {}=VALUE",
                        self.parameter, self.parameter
                    ),
                )
            })?;
            return Ok(Arc::new(OfflineParameter {
                into: self.into.clone(),
                value: value.clone(),
                meta_key: format!("ssm:{}", self.parameter),
            }));
        }
        let connection = Connection {
            region: self.region.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
            retries: Retries::Runtime,
        };
        // The first read, at start-up, gets the SDK's retries (nothing else would retry it);
        // later reads are retried under the pipeline's policy.
        let mut enricher = SsmParameter {
            client: aws::client(ctx, connection.retried_by_sdk()).await?,
            config: self.clone(),
            meta_key: format!("ssm:{}", self.parameter),
            cache: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(None),
        };
        // Reading it now proves it exists and is readable, and fills the cache.
        let first = enricher.read().await.map_err(|e| BuildError::Unavailable {
            what: format!("SSM parameter `{}`", self.parameter),
            message: e.message,
            transient: e.transient,
        })?;
        if first.secure && !self.with_decryption {
            return Err(BuildError::invalid(
                "with_decryption",
                format!(
                    "SSM parameter `{}` is a SecureString: read without decryption its value is \
                     ciphertext, which every record would carry; set `with_decryption = true` \
                     (and allow kms:Decrypt on its key)",
                    self.parameter
                ),
            ));
        }
        enricher.client = aws::client(ctx, connection).await?;
        enricher.cache = RwLock::new(Some(Arc::new(first)));
        Ok(Arc::new(enricher))
    }

    fn describe(&self) -> String {
        format!(
            "set `{}` from SSM parameter {} (read every {})",
            self.into,
            self.parameter,
            humantime::format_duration(self.refresh)
        )
    }

    fn fields_after(&self, before: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
        let mut fields = before?;
        fields.insert(self.into.clone());
        Some(fields)
    }
}

/// Why a read failed, and whether for a passing reason (throttling, a 5xx, a timeout).
struct Unreadable {
    message: String,
    transient: bool,
}

/// A value read, with its version and when it was read.
#[derive(Debug, Clone)]
struct Reading {
    value: String,
    version: i64,
    read_at: Instant,
    /// A SecureString parameter.
    secure: bool,
}

/// An outage of the parameter store as this enricher lives it: from the first failed read to
/// the next good one; logged when it begins and when it ends, not once per record.
#[derive(Debug)]
struct Outage {
    /// When the last read failed, and why (records meanwhile get that answer).
    last: (Instant, String),
    failed_reads: u64,
    /// Records served the older value, or refused, during the outage.
    records: u64,
}

struct SsmParameter {
    client: aws_sdk_ssm::Client,
    config: SsmParameterConfig,
    meta_key: String,
    cache: RwLock<Option<Arc<Reading>>>,
    /// Held while reading, so concurrent records wait for one call; the outage under way.
    refreshing: tokio::sync::Mutex<Option<Outage>>,
}

impl SsmParameter {
    fn cached(&self) -> Option<Arc<Reading>> {
        self.cache.read().expect("no panic while caching").clone()
    }

    /// The cached value while it is younger than `refresh`.
    fn fresh(&self) -> Option<Arc<Reading>> {
        self.cached()
            .filter(|r| r.read_at.elapsed() < self.config.refresh)
    }

    /// The value to use now: the cached one while fresh, else a new read, else the cached one
    /// while younger than `max_age`.
    async fn current(&self) -> Result<Arc<Reading>, EnrichError> {
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let mut outage = self.refreshing.lock().await;
        // Another record may have refreshed it while this one waited.
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let held = outage
            .as_ref()
            .filter(|o| o.last.0.elapsed() < FAILURE_HOLD)
            .map(|o| o.last.1.clone());
        let failure = match held {
            Some(error) => error,
            None => match self.read().await {
                Ok(reading) => {
                    let reading = Arc::new(reading);
                    *self.cache.write().expect("no panic while caching") = Some(reading.clone());
                    if let Some(ended) = outage.take() {
                        tracing::info!(parameter = %self.config.parameter, failed_reads = ended.failed_reads, records = ended.records, "SSM parameter readable again");
                    }
                    return Ok(reading);
                }
                Err(Unreadable { message: error, .. }) => {
                    match outage.as_mut() {
                        Some(o) => {
                            o.last = (Instant::now(), error.clone());
                            o.failed_reads += 1;
                        }
                        None => {
                            tracing::warn!(parameter = %self.config.parameter, %error, "SSM parameter unreadable; records use the value read last while younger than max_age, else wait");
                            *outage = Some(Outage {
                                last: (Instant::now(), error.clone()),
                                failed_reads: 1,
                                records: 0,
                            });
                        }
                    }
                    error
                }
            },
        };
        if let Some(o) = outage.as_mut() {
            o.records += 1;
        }
        match self.cached() {
            Some(r) if r.read_at.elapsed() < self.config.max_age => Ok(r),
            _ => Err(EnrichError::Retryable(failure)),
        }
    }

    async fn read(&self) -> Result<Reading, Unreadable> {
        let out = self
            .client
            .get_parameter()
            .name(&self.config.parameter)
            .with_decryption(self.config.with_decryption)
            .send()
            .await
            .map_err(|e| Unreadable {
                message: format!(
                    "cannot read SSM parameter `{}`: {}",
                    self.config.parameter,
                    aws::describe_error(&e)
                ),
                transient: aws::is_transient(&e),
            })?;
        let parameter = out.parameter().ok_or_else(|| Unreadable {
            message: format!("SSM returned no parameter for `{}`", self.config.parameter),
            transient: false,
        })?;
        Ok(Reading {
            value: parameter.value().unwrap_or_default().to_owned(),
            version: parameter.version(),
            read_at: Instant::now(),
            secure: parameter.r#type() == Some(&aws_sdk_ssm::types::ParameterType::SecureString),
        })
    }
}

#[async_trait]
impl Enricher for SsmParameter {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        let reading = self.current().await?;
        self.apply(&reading, record)
    }

    /// While the cached value is fresh: no call, so no waiting.
    fn enrich_now(&self, record: &mut Record) -> Option<Result<Verdict, EnrichError>> {
        let reading = self.fresh()?;
        Some(self.apply(&reading, record))
    }
}

impl SsmParameter {
    fn apply(&self, reading: &Reading, record: &mut Record) -> Result<Verdict, EnrichError> {
        let object = record
            .value
            .as_object_mut()
            .ok_or_else(|| EnrichError::Permanent("the record is not a JSON object".into()))?;
        object.insert(
            self.config.into.clone(),
            Value::String(reading.value.clone()),
        );
        record
            .meta
            .extra
            .insert(self.meta_key.clone(), reading.version.to_string());
        Ok(Verdict::Keep)
    }
}

/// The parameter as `sluice test` was given it: version `offline`.
struct OfflineParameter {
    into: String,
    value: String,
    meta_key: String,
}

#[async_trait]
impl Enricher for OfflineParameter {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        self.apply(record)
    }

    fn enrich_now(&self, record: &mut Record) -> Option<Result<Verdict, EnrichError>> {
        Some(self.apply(record))
    }
}

impl OfflineParameter {
    fn apply(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        let object = record
            .value
            .as_object_mut()
            .ok_or_else(|| EnrichError::Permanent("the record is not a JSON object".into()))?;
        object.insert(self.into.clone(), Value::String(self.value.clone()));
        record
            .meta
            .extra
            .insert(self.meta_key.clone(), "offline".into());
        Ok(Verdict::Keep)
    }
}

#[cfg(test)]
mod emulator_tests;
