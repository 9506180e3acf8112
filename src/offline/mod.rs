//! `sluice test FILE`: a pipeline's enrichers and its sink's request encoding over sample input,
//! with no I/O beyond reading files: what each record would become, and the unit tests of a
//! pipeline file (its `.tests.toml`).

mod cases;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use sluice::sluice_core::preview::{record_key, Offline, OfflinePipeline, Request};
use sluice::sluice_core::{
    BatchSettings, Loader, Meta, Outcome, PipelineConfig, RawRecord, SourceConfig,
};
use sluice::sluice_sources::{FileFormat, FileSourceConfig};

/// How `sluice test` prints what happened.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A block per record, for a person.
    Text,
    /// One JSON object per record, for scripts.
    Json,
}

/// What `sluice test` was asked.
pub struct Args {
    pub file: PathBuf,
    pub input: Option<PathBuf>,
    pub parameters: Vec<String>,
    pub format: Format,
    pub tests: Option<PathBuf>,
}

/// What became of one record.
#[derive(Debug, Clone, Serialize)]
pub struct Result {
    pub stream: String,
    pub shard_id: String,
    pub position: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Why it was dead-lettered, from its envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its dead-letter envelope, as the error sink would get it (without `failed_at`, the
    /// time it was written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<Value>,
    /// What the sink would send, for a stored record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
}

/// The tests file beside a pipeline file: `x.toml` → `x.tests.toml`.
pub fn tests_file(pipeline: &Path) -> PathBuf {
    let name = pipeline
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".toml").unwrap_or(&name);
    pipeline.with_file_name(format!("{stem}.tests.toml"))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut parameters = BTreeMap::new();
    for given in &args.parameters {
        let (name, value) = given
            .split_once('=')
            .with_context(|| format!("--parameter `{given}`: write NAME=VALUE"))?;
        parameters.insert(name.to_owned(), value.to_owned());
    }
    let tests = args.tests.clone().unwrap_or_else(|| tests_file(&args.file));
    if args.input.is_none() && (args.tests.is_some() || tests.is_file()) {
        return cases::run(&args.file, &tests, parameters).await;
    }
    let offline = Offline { parameters };
    let (config, pipeline) = load(&args.file, &offline, |name| std::env::var(name).ok()).await?;
    let records = match &args.input {
        Some(input) => read_input(input, config.batch).await?,
        None => match &config.source {
            Some(source) if source.typetag_name() == "file" => {
                read_source(source.as_ref(), &config, config.batch).await?
            }
            _ => bail!(
                "{}: its source is not a file; give records with --input PATH (JSON lines or a \
                 Lambda Kinesis event)",
                args.file.display()
            ),
        },
    };
    let results = process(&pipeline, records).await;
    let mut out = std::io::stdout().lock();
    for result in &results {
        let line = match args.format {
            Format::Json => format!("{}\n", serde_json::to_string(result)?),
            Format::Text => text(result),
        };
        // A reader that stopped reading (`| head`) is not an error.
        if out.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the file with variables from `variables` (else their own names, so
/// `${LATEST_BATCH_ID}` is the parameter `LATEST_BATCH_ID`), and builds it offline.
async fn load(
    file: &Path,
    offline: &Offline,
    variables: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> anyhow::Result<(PipelineConfig, OfflinePipeline)> {
    let config = Loader::new()
        .variables(variables)
        .unset_as_names()
        .load(file)?;
    let ctx = config.context(false).with(offline.clone());
    let pipeline = config.build_offline(&ctx).await?;
    Ok((config, pipeline))
}

/// The records of a JSON-lines file or a Lambda Kinesis event file, in batches by shard.
async fn read_input(
    input: &Path,
    batch: BatchSettings,
) -> anyhow::Result<Vec<(String, Vec<RawRecord>)>> {
    let text = tokio::fs::read(input)
        .await
        .with_context(|| format!("reading {}", input.display()))?;
    let is_event = serde_json::from_slice::<Value>(&text)
        .ok()
        .is_some_and(|v| v.get("Records").is_some_and(Value::is_array));
    let source = FileSourceConfig {
        path: input.to_string_lossy().into_owned(),
        format: if is_event {
            FileFormat::KinesisEvent
        } else {
            FileFormat::Jsonl
        },
        records: Vec::new(),
        document_fields: BTreeMap::new(),
    };
    let ctx = sluice::sluice_core::BuildContext::new("test", false);
    read_built(source.build(&ctx).await?, batch).await
}

async fn read_source(
    source: &dyn SourceConfig,
    config: &PipelineConfig,
    batch: BatchSettings,
) -> anyhow::Result<Vec<(String, Vec<RawRecord>)>> {
    let built = source.build(&config.context(false)).await?;
    read_built(built, batch).await
}

async fn read_built(
    source: Box<dyn sluice::sluice_core::Source>,
    batch: BatchSettings,
) -> anyhow::Result<Vec<(String, Vec<RawRecord>)>> {
    let mut batches = source.batches(batch);
    let mut out = Vec::new();
    while let Some(next) = batches.next().await {
        let next = next?;
        out.push((next.shard_id, next.records));
    }
    Ok(out)
}

/// Runs the batches through the offline pipeline: each record's outcome and request.
pub async fn process(
    offline: &OfflinePipeline,
    batches: Vec<(String, Vec<RawRecord>)>,
) -> Vec<Result> {
    let mut results = Vec::new();
    for (shard, records) in batches {
        // Results are found by position: none may come from an earlier batch.
        offline.requests.clear();
        offline.dead_letters.clear();
        let metas: Vec<Meta> = records.iter().map(|r| r.meta.clone()).collect();
        let report = offline.pipeline.process_batch(shard, records).await;
        for (meta, (_, outcome)) in metas.iter().zip(report.outcomes) {
            let key = record_key(meta);
            let mut dead_letter = offline.dead_letters.letter(&key);
            let reason = dead_letter.as_ref().map(|letter| {
                letter["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            });
            if let Some(Value::Object(letter)) = &mut dead_letter {
                letter.remove("failed_at");
            }
            let request = match outcome {
                Outcome::Stored => offline.requests.request(&key),
                _ => None,
            };
            results.push(Result {
                stream: meta.stream.clone(),
                shard_id: meta.shard_id.clone(),
                position: meta.position().to_string(),
                outcome,
                reason,
                dead_letter,
                request,
            });
        }
    }
    results
}

/// A record's result as lines for a person.
pub fn text(result: &Result) -> String {
    let what = match &result.outcome {
        Outcome::Stored => "stored".to_owned(),
        Outcome::Skipped { by } => format!("skipped by {by}"),
        Outcome::DeadLettered { stage } => format!(
            "dead-lettered at {stage}: {}",
            result.reason.as_deref().unwrap_or("")
        ),
        Outcome::Failed { error } => format!("failed: {error}"),
    };
    let mut out = format!(
        "{}/{}/{}  {what}\n",
        result.stream, result.shard_id, result.position
    );
    if let Some(request) = &result.request {
        out.push_str(&format!(
            "  → {}\n  {}\n",
            request.target,
            serde_json::to_string(&request.body).unwrap_or_default()
        ));
    }
    out
}
