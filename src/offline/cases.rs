//! The unit tests of a pipeline file: `x.tests.toml` beside `x.toml`, a list of cases, each a
//! record and what must become of it.
//!
//! ```toml
//! [parameters]                      # SSM parameter values (`--parameter` adds to them)
//! LATEST_BATCH_ID = "batch-7"
//! [variables]                       # ${VAR} values for the pipeline file
//! WAZE_BATCH_ID = "local-batch-0001"
//!
//! [[case]]
//! name = "a Waze file is stored under the seed's names"
//! record = { state = "MI", "s3-key" = "waze/x.csv" }   # or payload = '...' (any text)
//! meta = { stream = "s", shard_id = "shardId-0", sequence_number = "42" }  # optional; also
//!                                   # sub_sequence, partition_key, arrival_time, record_path
//!                                   # (default: stream and shard `test`, the case's number)
//! expect = "stored"                 # or "skipped", "dead_lettered", "failed"
//! target = "curated_records"        # optional: the table (or file, queue) it goes to
//! item = { State = "MI" }           # optional: attributes of the request body it must have
//! # skipped_by = "filter"; stage = "decode"; reason = "part of the reason"
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use serde_json::Value;
use sluice::sluice_core::preview::Offline;
use sluice::sluice_core::{Encoding, Meta, Outcome, RawRecord, SequenceNumber};

use super::{load, process, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsFile {
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Stored,
    Skipped,
    DeadLettered,
    Failed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    record: Option<Value>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    meta: CaseMeta,
    expect: Expect,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    item: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    skipped_by: Option<String>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseMeta {
    stream: Option<String>,
    shard_id: Option<String>,
    sequence_number: Option<String>,
    sub_sequence: Option<u64>,
    partition_key: Option<String>,
    arrival_time: Option<chrono::DateTime<chrono::Utc>>,
    record_path: Option<String>,
    record_index: Option<u64>,
}

impl Case {
    fn raw(&self, index: usize) -> anyhow::Result<RawRecord> {
        let data = match (&self.record, &self.payload) {
            (Some(record), None) => serde_json::to_vec(record)?,
            (None, Some(payload)) => payload.clone().into_bytes(),
            _ => anyhow::bail!(
                "case `{}`: give the record as `record = {{ ... }}` or `payload = '...'` (one)",
                self.name
            ),
        };
        let m = &self.meta;
        let meta = Meta {
            source: "test".into(),
            stream: m.stream.clone().unwrap_or_else(|| "test".into()),
            shard_id: m.shard_id.clone().unwrap_or_else(|| "test".into()),
            sequence_number: m.sequence_number.clone().map_or_else(
                || SequenceNumber::from(index as u64 + 1),
                SequenceNumber::new,
            ),
            sub_sequence: m.sub_sequence,
            partition_key: m.partition_key.clone(),
            arrival_time: m.arrival_time,
            record_path: m.record_path.clone(),
            record_index: m.record_index,
            ..Meta::default()
        };
        Ok(RawRecord {
            data: Bytes::from(data),
            encoding: Encoding::Raw,
            meta,
        })
    }

    /// How the result differs from what the case expects, one line each.
    fn differences(&self, result: &Result) -> Vec<String> {
        let mut out = Vec::new();
        let got = describe(result);
        let kind = match result.outcome {
            Outcome::Stored => Expect::Stored,
            Outcome::Skipped { .. } => Expect::Skipped,
            Outcome::DeadLettered { .. } => Expect::DeadLettered,
            Outcome::Failed { .. } => Expect::Failed,
        };
        if kind != self.expect {
            out.push(format!("expected {:?}, got {got}", self.expect));
            return out;
        }
        if let (Some(by), Outcome::Skipped { by: got_by }) = (&self.skipped_by, &result.outcome) {
            if *by != got_by.to_string() {
                out.push(format!("skipped by: expected `{by}`, got `{got_by}`"));
            }
        }
        if let (Some(stage), Outcome::DeadLettered { stage: got_stage }) =
            (&self.stage, &result.outcome)
        {
            if *stage != got_stage.to_string() {
                out.push(format!("stage: expected `{stage}`, got `{got_stage}`"));
            }
        }
        if let Some(reason) = &self.reason {
            let got_reason = result.reason.as_deref().unwrap_or_default();
            if !got_reason.contains(reason.as_str()) {
                out.push(format!(
                    "reason: expected it to contain `{reason}`, got `{got_reason}`"
                ));
            }
        }
        let request = result.request.as_ref();
        if let Some(target) = &self.target {
            let got_target = request.map_or("(nothing sent)", |r| r.target.as_str());
            if target != got_target {
                out.push(format!("target: expected `{target}`, got `{got_target}`"));
            }
        }
        if let Some(item) = &self.item {
            for (name, expected) in item {
                let got = request.and_then(|r| r.body.get(name));
                if got != Some(expected) {
                    out.push(format!(
                        "item.{name}: expected {expected}, got {}",
                        got.map_or("nothing (absent)".to_owned(), Value::to_string)
                    ));
                }
            }
        }
        out
    }
}

fn describe(result: &Result) -> String {
    match &result.outcome {
        Outcome::Stored => "Stored".to_owned(),
        Outcome::Skipped { by } => format!("Skipped by {by}"),
        Outcome::DeadLettered { stage } => format!(
            "DeadLettered at {stage}: {}",
            result.reason.as_deref().unwrap_or_default()
        ),
        Outcome::Failed { error } => format!("Failed: {error}"),
    }
}

/// Runs the cases of `tests` against `pipeline`: exit 0 when every case passes, 1 otherwise.
pub async fn run(
    pipeline: &Path,
    tests: &Path,
    mut parameters: BTreeMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let file: TestsFile = figment::Figment::from(Toml::file_exact(tests))
        .extract()
        .with_context(|| format!("{}", tests.display()))?;
    if file.cases.is_empty() {
        anyhow::bail!("{}: no [[case]] to run", tests.display());
    }
    for (name, value) in file.parameters {
        parameters.entry(name).or_insert(value);
    }
    // The file's variables only: a shell's settings must not change a unit test's outcome.
    let variables = file.variables;
    let (_, offline) = load(pipeline, &Offline { parameters }, move |name| {
        variables.get(name).cloned()
    })
    .await?;
    let mut failed = 0;
    for (index, case) in file.cases.iter().enumerate() {
        let raw = case
            .raw(index)
            .with_context(|| tests.display().to_string())?;
        let shard = raw.meta.shard_id.clone();
        let results = process(&offline, vec![(shard, vec![raw])]).await;
        let differences = case.differences(&results[0]);
        if differences.is_empty() {
            println!("ok    {}", case.name);
        } else {
            failed += 1;
            println!("FAIL  {}", case.name);
            for line in differences {
                println!("      {line}");
            }
        }
    }
    let total = file.cases.len();
    println!(
        "{}: {} cases, {} passed, {failed} failed",
        tests.display(),
        total,
        total - failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
