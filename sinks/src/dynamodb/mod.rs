//! `type = "dynamodb"`: writes records as items with BatchWriteItem, 25 at a time, keyed by the
//! table's own key so a redelivered record overwrites itself; `table` may be a template that
//! routes each record to its own table.

pub mod encode;
mod key;
mod writer;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{KeyType, ScalarAttributeType as KeyKind};
use serde::{Deserialize, Serialize};
use sluice_core::aws::{self, Connection, Retries};
use sluice_core::preview::{Encoder, Request};
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

use crate::route::Routes;
use encode::KeyAttribute;
use writer::{BatchWriter, Keys};

fn default_concurrency() -> usize {
    4
}

fn default_true() -> bool {
    true
}

/// Writes records to a DynamoDB table.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbSinkConfig {
    /// The table's name or ARN. A template (`waze_{$meta.record_path}`) sends each record to the
    /// table it names.
    pub table: String,
    /// Every table a templated `table` can name: each is described (and its key checked) before
    /// any record is read, and a record naming another is dead-lettered. Without it, a table is
    /// described on first use.
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// Store numbers and booleans as strings, as the seed Lambda did (default false).
    #[serde(default)]
    pub all_strings: bool,
    /// BatchWriteItem calls in flight at once per batch (default 4).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// `false` (or `0`, as in `PERSIST_RECORDS=0`) reads, enriches and counts but writes nothing.
    #[serde(
        default = "default_true",
        deserialize_with = "sluice_core::config::switch"
    )]
    #[schemars(with = "sluice_core::config::Switch")]
    pub enabled: bool,
    /// The region (see [`sluice_core::aws`], connection settings).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint, such as an emulator (see [`sluice_core::aws`]).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl DynamoDbSinkConfig {
    fn table_name(&self) -> &str {
        aws::name_from_arn(&self.table, "table")
    }

    fn routes(&self) -> Result<Routes, BuildError> {
        Routes::new(&self.table, self.tables.as_deref(), |t| {
            aws::name_from_arn(t, "table")
        })
    }

    /// The region named by the setting, else by the table's ARN.
    fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or_else(|| aws::region_from_arn(&self.table))
    }
}

sluice_core::register_schema!(sink "dynamodb" => DynamoDbSinkConfig);

#[typetag::serde(name = "dynamodb")]
#[async_trait]
impl SinkConfig for DynamoDbSinkConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.table_name().is_empty() {
            return Err(BuildError::invalid(
                "table",
                "must name a table or give its ARN",
            ));
        }
        self.routes()?;
        if !(1..=64).contains(&self.max_concurrency) {
            return Err(BuildError::invalid(
                "max_concurrency",
                format!("must be between 1 and 64, not {}", self.max_concurrency),
            ));
        }
        Ok(())
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        let connection = Connection {
            region: self.region(),
            endpoint_url: self.endpoint_url.as_deref(),
            retries: Retries::Runtime,
        };
        let client = aws::client(ctx, connection).await?;
        // Start-up calls get the SDK's retries (nothing else would retry them).
        let starting = aws::client(ctx, connection.retried_by_sdk()).await?;
        let routes = self.routes()?;
        let mut keys = Keys::new();
        for table in routes.known() {
            let key = describe_key(&starting, &table).await?;
            check_key_types(&key, self.all_strings)?;
            if let Some(fields) = &ctx.record_fields {
                check_key_fields(&key, fields)?;
            }
            keys.insert(table, Arc::new(key));
        }
        Ok(Arc::new(BatchWriter::new(
            client,
            self.clone(),
            routes,
            keys,
        )))
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn encoder(&self, _ctx: &BuildContext) -> Result<Box<dyn Encoder>, BuildError> {
        self.validate()?;
        Ok(Box::new(ItemEncoder {
            routes: self.routes()?,
            all_strings: self.all_strings,
        }))
    }

    fn describe(&self) -> String {
        let mut text = match self.routes() {
            Ok(routes) if routes.fixed().is_none() => format!("dynamodb {}", routes.describe()),
            _ => format!("dynamodb table {}", self.table_name()),
        };
        if self.all_strings {
            text.push_str(", every scalar as a string");
        }
        if !self.enabled {
            text.push_str(" (disabled: nothing is written)");
        }
        text
    }
}

/// The item a record becomes and its table, as BatchWriteItem would carry them (`sluice test`);
/// the table's key is not known offline, so a missing key shows only in a real run.
struct ItemEncoder {
    routes: Routes,
    all_strings: bool,
}

impl Encoder for ItemEncoder {
    fn encode(&self, record: &Record) -> Result<Request, SinkError> {
        let table = self.routes.table(record)?;
        let item =
            encode::item_wire(&record.value, self.all_strings).map_err(SinkError::Permanent)?;
        // The bytes the sink would send, read back as JSON to be shown (nested at most 32
        // levels, within serde_json's limit of 128).
        let body = serde_json::from_slice(&item).expect("an item's wire format is JSON");
        Ok(Request {
            target: table,
            body,
        })
    }
}

/// Why DescribeTable gave no key: the error, and DynamoDB's error code when it answered one.
pub(crate) struct DescribeError {
    pub code: Option<String>,
    pub error: BuildError,
}

impl From<DescribeError> for BuildError {
    fn from(e: DescribeError) -> Self {
        e.error
    }
}

/// The table's key attributes, from DescribeTable: proof that the table exists and is reachable.
async fn describe_key(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Vec<KeyAttribute>, DescribeError> {
    let unavailable = |message: String, transient: bool| BuildError::Unavailable {
        what: format!("DynamoDB table `{table}`"),
        message,
        transient,
    };
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            let hint = match aws::error_code(&e) {
                Some("ResourceNotFoundException") => {
                    " (create it, or check the table name, region and endpoint)"
                }
                _ => "",
            };
            DescribeError {
                code: aws::error_code(&e).map(str::to_owned),
                error: unavailable(
                    format!("DescribeTable failed: {}{hint}", aws::describe_error(&e)),
                    aws::is_transient(&e),
                ),
            }
        })?;
    let plain = |error| DescribeError { code: None, error };
    let description = out.table().ok_or_else(|| {
        plain(unavailable(
            "DescribeTable returned no table description".into(),
            false,
        ))
    })?;
    let mut key: Vec<(KeyType, KeyAttribute)> = Vec::new();
    for element in description.key_schema() {
        let name = element.attribute_name();
        let kind = description
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .map(|d| d.attribute_type().clone())
            .ok_or_else(|| {
                plain(unavailable(
                    format!("key attribute `{name}` has no definition"),
                    false,
                ))
            })?;
        key.push((
            element.key_type().clone(),
            KeyAttribute {
                name: name.to_owned(),
                kind,
            },
        ));
    }
    // The partition key first, then the sort key.
    key.sort_by_key(|(t, _)| t != &KeyType::Hash);
    Ok(key.into_iter().map(|(_, k)| k).collect())
}

/// Fails when no record could carry the table's key: a binary key attribute (JSON has no
/// binary values), or, with `all_strings`, a number key (every value would become a string).
fn check_key_types(key: &[KeyAttribute], all_strings: bool) -> Result<(), BuildError> {
    for k in key {
        match &k.kind {
            KeyKind::B => {
                return Err(BuildError::invalid(
                    "table",
                    format!(
                        "the table's key attribute `{}` is binary (B), which JSON records cannot carry; \
                         write to a table keyed by a string or number",
                        k.name
                    ),
                ))
            }
            KeyKind::N if all_strings => {
                return Err(BuildError::invalid(
                    "all_strings",
                    format!(
                        "the table's key attribute `{}` is a number (N), but `all_strings = true` \
                         writes every number as a string, so every record would be refused; \
                         set `all_strings = false` or key the table by a string",
                        k.name
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fails when the pipeline's enrichers leave records without one of the table's key attributes.
fn check_key_fields(key: &[KeyAttribute], fields: &BTreeSet<String>) -> Result<(), BuildError> {
    match key.iter().find(|k| !fields.contains(&k.name)) {
        None => Ok(()),
        Some(k) => Err(BuildError::invalid(
            "table",
            format!(
                "the table is keyed by `{}`, but records reaching the sink carry only {}; \
                 set `{}` in a `fields` enricher (or keep it in `keep_only`)",
                k.name,
                fields
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                k.name
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(table: &str) -> DynamoDbSinkConfig {
        toml_config(&format!("table = \"{table}\""))
    }

    fn toml_config(text: &str) -> DynamoDbSinkConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .expect("valid config")
    }

    #[test]
    fn the_region_comes_from_the_setting_then_the_arn() {
        let arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/curated";
        assert_eq!(config(arn).region(), Some("eu-west-1"));
        assert_eq!(config(arn).table_name(), "curated");
        assert_eq!(config("curated").region(), None);
        let mut c = config(arn);
        c.region = Some("us-east-1".into());
        assert_eq!(c.region(), Some("us-east-1"));
    }

    #[test]
    fn enabled_reads_the_seeds_persist_records_switch() {
        for (text, expected) in [("0", false), ("1", true), ("false", false), ("true", true)] {
            let c = toml_config(&format!("table = \"t\"\nenabled = \"{text}\""));
            assert_eq!(c.enabled, expected, "enabled = \"{text}\"");
        }
        assert!(toml_config("table = \"t\"\nenabled = 1").enabled);
        assert!(config("t").enabled);
    }

    #[tokio::test]
    async fn a_sink_built_directly_checks_its_settings_before_any_call() {
        // Found by review: with the range check only at load time, `max_concurrency = 0`
        // built a sink whose writes never finished.
        let mut c = config("t");
        c.max_concurrency = 0;
        let ctx = BuildContext::new("test", false);
        let e = c.build(&ctx).await.err().expect("refused");
        assert!(
            matches!(&e, BuildError::Invalid { key, .. } if key == "max_concurrency"),
            "{e:?}"
        );
    }

    #[test]
    fn a_key_no_record_could_carry_is_refused_at_start_up() {
        let key = |kind| {
            vec![KeyAttribute {
                name: "Id".into(),
                kind,
            }]
        };
        let e = check_key_types(&key(KeyKind::N), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`all_strings`") && e.contains("`Id`") && e.contains("all_strings = false"),
            "{e}"
        );
        assert!(check_key_types(&key(KeyKind::N), false).is_ok());
        assert!(check_key_types(&key(KeyKind::S), true).is_ok());
        let e = check_key_types(&key(KeyKind::B), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("binary"), "{e}");
    }

    #[test]
    fn a_key_the_records_lack_is_a_config_error() {
        let key = vec![KeyAttribute {
            name: "Id".into(),
            kind: aws_sdk_dynamodb::types::ScalarAttributeType::S,
        }];
        let fields: BTreeSet<String> = ["id".to_owned(), "x".to_owned()].into();
        let e = check_key_fields(&key, &fields).unwrap_err().to_string();
        assert!(
            e.contains("keyed by `Id`") && e.contains("`id`, `x`"),
            "{e}"
        );
        let fields: BTreeSet<String> = ["Id".to_owned()].into();
        assert!(check_key_fields(&key, &fields).is_ok());
    }
}

#[cfg(test)]
mod emulator_tests;
