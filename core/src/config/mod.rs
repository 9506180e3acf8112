//! Pipeline files: TOML loaded with figment, `${VAR}` interpolation, `SLUICE__` overrides, and
//! errors that name the file, the key and the fix.

mod interpolate;
mod messages;

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserialize;

pub use interpolate::{interpolate, InterpolateError};

use crate::component::{BuildContext, EnricherConfig, SinkConfig, Source, SourceConfig};
use crate::error::{BuildError, ConfigError};
use crate::runtime::{NamedEnricher, Pipeline};
use crate::settings::{BatchSettings, RetryPolicy};

/// The prefix of environment variables that override pipeline keys: `SLUICE__SINK__TABLE`.
pub const OVERRIDE_PREFIX: &str = "SLUICE__";

/// A pipeline file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The pipeline's name: in logs, dead letters and default resource names.
    pub name: String,
    /// Where records come from. Required, except when a Lambda's events are the source (then
    /// the table is not read at all: see [`PipelineConfig::load_for_lambda`]).
    #[serde(default)]
    pub source: Option<Box<dyn SourceConfig>>,
    /// Enrichers, applied in order.
    #[serde(default)]
    pub enrichers: Vec<Box<dyn EnricherConfig>>,
    /// Where records are stored.
    pub sink: Box<dyn SinkConfig>,
    /// Where records that cannot be stored go, each in a dead-letter envelope.
    pub error_sink: Box<dyn SinkConfig>,
    /// How records are grouped into batches.
    #[serde(default)]
    pub batch: BatchSettings,
    /// How retryable failures are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The file this was loaded from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Where `${VAR}` references are looked up.
type Variables = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Reads a TOML file and resolves `${VAR}` references in its strings.
struct InterpolatedToml {
    path: PathBuf,
    variables: Variables,
    /// Drops the `[source]` table before anything reads it.
    without_source: bool,
}

impl Provider for InterpolatedToml {
    fn metadata(&self) -> Metadata {
        Toml::file_exact(&self.path).metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = Toml::file_exact(&self.path).data()?;
        for dict in data.values_mut() {
            if self.without_source {
                dict.remove("source");
            }
            let mut path = Vec::new();
            interpolate_dict(dict, &mut path, &*self.variables).map_err(|e| *e)?;
        }
        Ok(data)
    }
}

fn interpolate_dict(
    dict: &mut Dict,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Box<figment::Error>> {
    for (key, value) in dict.iter_mut() {
        path.push(key.clone());
        interpolate_value(value, path, lookup)?;
        path.pop();
    }
    Ok(())
}

fn interpolate_value(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Box<figment::Error>> {
    match value {
        Value::String(_, s) => {
            *s = interpolate(s, lookup).map_err(|e| {
                let mut err = figment::Error::from(e.to_string());
                err.path = path.clone();
                Box::new(err)
            })?;
        }
        Value::Dict(_, dict) => interpolate_dict(dict, path, lookup)?,
        Value::Array(_, items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate_value(item, path, lookup)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Deserialises an on/off switch that environment variables can set: `true`/`false`, `1`/`0`
/// (as the seed's `PERSIST_RECORDS`), `yes`/`no` or `on`/`off`, as a boolean, number or string.
pub fn switch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct Switch;
    impl serde::de::Visitor<'_> for Switch {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true or false (or 1/0, yes/no, on/off)")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(Switch)
}

impl PipelineConfig {
    /// Loads a pipeline file: the TOML, `${VAR}` interpolation, then `SLUICE__` overrides.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, |name| std::env::var(name).ok())
    }

    /// [`PipelineConfig::load`] with `${VAR}` looked up in `variables` instead of the
    /// environment (an embedding program's settings; tests). `SLUICE__` overrides still apply.
    pub fn load_with(
        path: impl AsRef<Path>,
        variables: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Self::load_inner(path.as_ref(), std::sync::Arc::new(variables), false)
    }

    /// Loads a pipeline file for AWS Lambda, whose events are the source: the `[source]` table
    /// is ignored entirely (its variables need not be set, nothing it names is called).
    pub fn load_for_lambda(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::load_for_lambda_with(path, |name| std::env::var(name).ok())
    }

    /// [`PipelineConfig::load_for_lambda`] with `${VAR}` looked up in `variables`.
    pub fn load_for_lambda_with(
        path: impl AsRef<Path>,
        variables: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Self::load_inner(path.as_ref(), std::sync::Arc::new(variables), true)
    }

    fn load_inner(
        path: &Path,
        variables: Variables,
        without_source: bool,
    ) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError {
                file: path.to_owned(),
                key: None,
                message: if path.exists() {
                    "is not a file; give the path of a pipeline .toml file".into()
                } else {
                    "no such file; give the path of a pipeline .toml file (see pipelines/)".into()
                },
            });
        }
        let figment = Figment::new()
            .merge(InterpolatedToml {
                path: path.to_owned(),
                variables,
                without_source,
            })
            .merge(
                Env::prefixed(OVERRIDE_PREFIX)
                    // Without a source, overrides of it are ignored too (`SLUICE__SOURCE__...`).
                    .filter(move |key| {
                        !(without_source && key.as_str().to_ascii_lowercase().starts_with("source"))
                    })
                    .split("__"),
            );
        let mut config: PipelineConfig = figment
            .extract()
            .map_err(|e| messages::from_figment(path, e))?;
        config.file = path.to_owned();
        if without_source {
            config.source = None;
        } else if config.source.is_none() {
            return Err(config.error(
                "source",
                "missing: add a [source] table, e.g. [source] type = \"file\" path = \"records.jsonl\"",
            ));
        }
        config.check()?;
        Ok(config)
    }

    fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError {
            file: self.file.clone(),
            message: format!("`{key}`: {}", message.into()),
            key: Some(key),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(self.error("name", "must not be empty; name the pipeline"));
        }
        self.batch
            .validate()
            .and_then(|()| self.retry.validate())
            .map_err(|(key, message)| self.error(key, message))
    }

    /// The context components are built in; add extensions to it with [`BuildContext::with`].
    pub fn context(&self, validate_only: bool) -> BuildContext {
        BuildContext::new(self.name.clone(), validate_only)
    }

    fn build_error(&self, table: &str, e: BuildError) -> ConfigError {
        match e {
            BuildError::Invalid { key, message } => self.error(format!("{table}.{key}"), message),
            BuildError::Unavailable { what, message } => {
                self.error(table, format!("{what}: {message}"))
            }
        }
    }

    /// Builds everything but the source (a Lambda's events are its source).
    pub async fn build_pipeline(&self, validate_only: bool) -> Result<Pipeline, ConfigError> {
        self.build_pipeline_in(&self.context(validate_only)).await
    }

    /// [`PipelineConfig::build_pipeline`] in a given context.
    pub async fn build_pipeline_in(&self, ctx: &BuildContext) -> Result<Pipeline, ConfigError> {
        let ctx = ctx.clone();
        let mut enrichers = Vec::with_capacity(self.enrichers.len());
        for (i, config) in self.enrichers.iter().enumerate() {
            let enricher = config
                .build(&ctx)
                .await
                .map_err(|e| self.build_error(&format!("enrichers[{i}]"), e))?;
            enrichers.push(NamedEnricher {
                name: self.enricher_name(i),
                enricher,
            });
        }
        let mut sink_ctx = ctx.clone();
        sink_ctx.record_fields = self
            .enrichers
            .iter()
            .fold(None, |fields, e| e.fields_after(fields));
        let sink = self
            .sink
            .build(&sink_ctx)
            .await
            .map_err(|e| self.build_error("sink", e))?;
        let error_sink = self
            .error_sink
            .build(&ctx)
            .await
            .map_err(|e| self.build_error("error_sink", e))?;
        Ok(Pipeline::new(
            self.name.clone(),
            enrichers,
            sink,
            error_sink,
            self.batch,
            self.retry,
        )
        .with_api_calls(ctx.api_calls.clone()))
    }

    /// Builds the source and the pipeline; nothing is read yet.
    pub async fn build(
        &self,
        validate_only: bool,
    ) -> Result<(Pipeline, Box<dyn Source>), ConfigError> {
        self.build_in(&self.context(validate_only)).await
    }

    /// [`PipelineConfig::build`] in a given context.
    pub async fn build_in(
        &self,
        ctx: &BuildContext,
    ) -> Result<(Pipeline, Box<dyn Source>), ConfigError> {
        let source = self
            .source
            .as_ref()
            .ok_or_else(|| self.error("source", "missing: add a [source] table"))?
            .build(ctx)
            .await
            .map_err(|e| self.build_error("source", e))?;
        let pipeline = self.build_pipeline_in(ctx).await?;
        Ok((pipeline, source))
    }

    /// The name of enricher `i` in stages and summaries: its type, with `#n` for the n-th of a type.
    pub fn enricher_name(&self, i: usize) -> String {
        let kind = self.enrichers[i].typetag_name();
        let nth = self.enrichers[..=i]
            .iter()
            .filter(|e| e.typetag_name() == kind)
            .count();
        if nth == 1 {
            kind.to_owned()
        } else {
            format!("{kind}#{nth}")
        }
    }

    /// What the pipeline will do, one line per stage, for `sluice validate`.
    pub fn describe(&self) -> Vec<String> {
        let source = self.source.as_ref().map_or_else(
            || "the Lambda invocation's event".to_owned(),
            |s| s.describe(),
        );
        let mut lines = vec![format!("source      {source}")];
        for (i, e) in self.enrichers.iter().enumerate() {
            lines.push(format!(
                "enricher {} {} ({})",
                i + 1,
                self.enricher_name(i),
                e.describe()
            ));
        }
        lines.push(format!("sink        {}", self.sink.describe()));
        lines.push(format!("error sink  {}", self.error_sink.describe()));
        lines.push(format!(
            "batches     up to {} records or {}",
            self.batch.max_records,
            human(self.batch.max_age)
        ));
        lines.push(format!(
            "retries     {} attempts, backoff {}..{}, within {}, then {}",
            self.retry.attempts,
            human(self.retry.initial_backoff),
            human(self.retry.max_backoff),
            human(self.retry.max_elapsed),
            match self.retry.on_exhausted {
                crate::settings::OnExhausted::Fail => "fail (deliver again)",
                crate::settings::OnExhausted::DeadLetter => "dead-letter",
            }
        ));
        lines
    }
}

fn human(d: std::time::Duration) -> humantime_serde::re::humantime::FormattedDuration {
    humantime_serde::re::humantime::format_duration(d)
}
