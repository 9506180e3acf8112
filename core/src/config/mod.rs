//! Pipeline files: TOML loaded with figment, `${VAR}` interpolation, `SLUICE__` overrides, and
//! errors that name the file, the key and the fix.

mod interpolate;
mod messages;
mod switch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::providers::Env;
use figment::Figment;
use serde::Deserialize;

pub use interpolate::{interpolate, InterpolateError};
use interpolate::{InterpolatedToml, Variables};
pub use switch::{switch, Switch};

use crate::component::{BuildContext, EnricherConfig, SinkConfig, Source, SourceConfig};
use crate::error::{BuildError, ConfigError};
use crate::preview::{EncodingSink, KeptDeadLetters, OfflinePipeline};
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
    /// the table is not read at all: see [`Loader::without_source`]).
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
    /// Records that arrived longer ago than this when processed are dead-lettered as `expired`
    /// (with their payload) instead of written; off when absent.
    #[serde(default, with = "humantime_serde")]
    pub max_record_age: Option<std::time::Duration>,
    /// The file this was loaded from.
    #[serde(skip)]
    pub file: PathBuf,
    /// Loaded for `sluice test` ([`Loader::unset_as_names`]): the error sink is never built,
    /// so its settings (placeholders there) are not checked.
    #[serde(skip)]
    offline: bool,
}

/// How a pipeline file is read: where `${VAR}` references are looked up, and whether the
/// `[source]` table is read at all.
#[derive(Clone)]
pub struct Loader {
    variables: Variables,
    without_source: bool,
    unset_as_names: bool,
}

impl Default for Loader {
    fn default() -> Self {
        Self {
            variables: Arc::new(|name| std::env::var(name).ok()),
            without_source: false,
            unset_as_names: false,
        }
    }
}

/// A built pipeline and its source (none when the file was loaded without one).
pub struct Built {
    /// Everything but the source.
    pub pipeline: Pipeline,
    /// The source, nothing read yet.
    pub source: Option<Box<dyn Source>>,
}

impl Loader {
    /// Reads `${VAR}` from the environment and the `[source]` table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks `${VAR}` up in `variables` instead of the environment (an embedding program's
    /// settings; tests). `SLUICE__` overrides still apply.
    pub fn variables(
        mut self,
        variables: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.variables = Arc::new(variables);
        self
    }

    /// For AWS Lambda, whose events are the source: the `[source]` table is ignored entirely
    /// (its variables need not be set, nothing it names is called, no source is built).
    pub fn without_source(mut self) -> Self {
        self.without_source = true;
        self
    }

    /// For `sluice test`: a `${VAR}` with no value and no default stands for its own name
    /// (`${LATEST_BATCH_ID}` is the parameter `LATEST_BATCH_ID`) instead of being an error.
    pub fn unset_as_names(mut self) -> Self {
        self.unset_as_names = true;
        self
    }

    /// Loads a pipeline file: the TOML, `${VAR}` interpolation, then `SLUICE__` overrides; then
    /// every setting is checked (no I/O) and named with its file and key when wrong.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<PipelineConfig, ConfigError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(ConfigError {
                unavailable: false,
                transient: false,
                file: path.to_owned(),
                key: None,
                message: if path.exists() {
                    "is not a file; give the path of a pipeline .toml file".into()
                } else {
                    "no such file; give the path of a pipeline .toml file (see pipelines/)".into()
                },
            });
        }
        let without_source = self.without_source;
        let figment = Figment::new()
            .merge(InterpolatedToml {
                path: path.to_owned(),
                variables: self.variables.clone(),
                without_source,
                unset_as_names: self.unset_as_names,
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
            .map_err(|e| messages::from_figment(path, e, &figment))?;
        config.file = path.to_owned();
        config.offline = self.unset_as_names;
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
}

impl PipelineConfig {
    /// Loads a pipeline file with `${VAR}` from the environment; [`Loader`] for other ways.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Loader::new().load(path)
    }

    fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError {
            file: self.file.clone(),
            message: format!("`{key}`: {}", message.into()),
            key: Some(key),
            unavailable: false,
            transient: false,
        }
    }

    /// Every check that needs no I/O, the components' own included.
    fn check(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(self.error("name", "must not be empty; name the pipeline"));
        }
        if self.max_record_age.is_some_and(|d| d.is_zero()) {
            return Err(self.error(
                "max_record_age",
                "must be longer than zero, e.g. \"24h\" (or leave it out: no limit)",
            ));
        }
        self.batch
            .validate()
            .and_then(|()| self.retry.validate())
            .map_err(|(key, message)| self.error(key, message))?;
        if let Some(source) = &self.source {
            source
                .validate()
                .map_err(|e| self.build_error("source", e))?;
        }
        for (i, enricher) in self.enrichers.iter().enumerate() {
            enricher
                .validate()
                .map_err(|e| self.build_error(&format!("enrichers[{i}]"), e))?;
        }
        self.sink
            .validate()
            .map_err(|e| self.build_error("sink", e))?;
        if self.offline {
            return Ok(());
        }
        self.error_sink
            .validate()
            .map_err(|e| self.build_error("error_sink", e))
    }

    /// The context components are built in; add extensions to it with [`BuildContext::with`].
    pub fn context(&self, validate_only: bool) -> BuildContext {
        BuildContext::new(self.name.clone(), validate_only)
    }

    fn build_error(&self, table: &str, e: BuildError) -> ConfigError {
        match e {
            BuildError::Invalid { key, message } => self.error(format!("{table}.{key}"), message),
            BuildError::Unavailable {
                what,
                message,
                transient,
            } => ConfigError {
                unavailable: true,
                transient,
                ..self.error(table, format!("{what}: {message}"))
            },
        }
    }

    /// Builds the source (when the file was loaded with one) and the pipeline in `ctx`; nothing
    /// is read yet. With `ctx.validate_only`, components check what they need exists and change
    /// nothing.
    pub async fn build(&self, ctx: &BuildContext) -> Result<Built, ConfigError> {
        // Every setting first, before any component opens anything (the fields are public).
        self.check()?;
        let source = match &self.source {
            Some(config) => Some(
                config
                    .build(ctx)
                    .await
                    .map_err(|e| self.build_error("source", e))?,
            ),
            None => None,
        };
        let enrichers = self.build_enrichers(ctx).await?;
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
            .build(ctx)
            .await
            .map_err(|e| self.build_error("error_sink", e))?;
        let pipeline = Pipeline::new(
            self.name.clone(),
            enrichers,
            sink,
            error_sink,
            self.batch,
            self.retry,
        )
        .with_api_calls(ctx.api_calls.clone())
        .with_stop(ctx.shutdown.clone())
        .with_max_record_age(self.max_record_age);
        Ok(Built { pipeline, source })
    }

    /// The enrichers, built in order in `ctx`, each named as stages and summaries name it.
    async fn build_enrichers(&self, ctx: &BuildContext) -> Result<Vec<NamedEnricher>, ConfigError> {
        let mut enrichers = Vec::with_capacity(self.enrichers.len());
        for (i, config) in self.enrichers.iter().enumerate() {
            let enricher = config
                .build(ctx)
                .await
                .map_err(|e| self.build_error(&format!("enrichers[{i}]"), e))?;
            enrichers.push(NamedEnricher {
                name: self.enricher_name(i),
                enricher,
            });
        }
        Ok(enrichers)
    }

    /// Builds the pipeline for a run with no I/O (`sluice test`): the file's enrichers (built in
    /// `ctx`, which should carry [`crate::preview::Offline`]), the sink's encoder in place of
    /// the sink, dead letters kept in memory; no source. Nothing is opened or called.
    pub async fn build_offline(&self, ctx: &BuildContext) -> Result<OfflinePipeline, ConfigError> {
        self.check()?;
        let enrichers = self.build_enrichers(ctx).await?;
        let encoder = self
            .sink
            .encoder(ctx)
            .map_err(|e| self.build_error("sink", e))?;
        let requests = Arc::new(EncodingSink::new(encoder, self.sink.enabled()));
        let dead_letters = Arc::new(KeptDeadLetters::default());
        let pipeline = Pipeline::new(
            self.name.clone(),
            enrichers,
            requests.clone(),
            dead_letters.clone(),
            self.batch,
            self.retry,
        )
        .with_api_calls(ctx.api_calls.clone())
        .with_max_record_age(self.max_record_age);
        Ok(OfflinePipeline {
            pipeline,
            requests,
            dead_letters,
        })
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
