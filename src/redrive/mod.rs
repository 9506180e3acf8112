//! `sluice redrive FILE --from SOURCE`: dead letters back through the pipeline once their cause
//! is fixed. Each envelope's payload and source position run from decoding through the file's
//! enrichers and sink, so a redriven record lands on the item it would have been; a letter is
//! removed (deleted from the queue, left out of the file) only once its record is stored,
//! skipped or dead-lettered again (a new envelope, its attempts counted on, the previous reason
//! kept). A record that fails stays: in the queue it comes back after the visibility timeout.

mod letters;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sluice::sluice_core::aws::{self, Connection, Retries};
use sluice::sluice_core::preview::Offline;
use sluice::sluice_core::{
    BatchReport, Loader, Outcome, Position, Progress, RawRecord, RunSummary, Shutdown, SkippedBy,
};

use letters::{Handle, Letter, Letters};

/// What `sluice redrive` was asked.
pub struct Args {
    pub file: PathBuf,
    pub from: String,
    /// Records per second at most.
    pub rate: Option<f64>,
    pub dry_run: bool,
    pub parameters: Vec<String>,
    /// With `--dry-run`: each record's result as a JSON line (with `--summary json`).
    pub records_json: bool,
}

/// Letters a redrive leaves where they are, counted by reason.
#[derive(Default)]
struct Left {
    others: u64,
    whole: u64,
}

impl Left {
    /// Why `letter` is not redriven now, if it is not, and whether to make it visible again at
    /// once: another pipeline's, a whole file its source could not read, sent since this
    /// redrive began (a letter dead-lettered again by it), or seen already in this run (it
    /// failed, and came back).
    fn why(
        &mut self,
        letter: &Letter,
        pipeline: &str,
        started_ms: u64,
        seen: &mut HashSet<String>,
    ) -> Option<(&'static str, bool)> {
        if letter.pipeline != pipeline {
            self.others += 1;
            return Some(("another pipeline's", true));
        }
        if letter
            .record
            .meta
            .extra
            .contains_key(sluice::sluice_sources::REFUSED_WHOLE)
        {
            self.whole += 1;
            return Some(("a whole file its source could not read", true));
        }
        if let Some((id, sent)) = &letter.message {
            if *sent >= started_ms {
                return Some(("sent since this redrive began", true));
            }
            if !seen.insert(id.clone()) {
                return Some(("seen already in this run", false));
            }
        }
        None
    }

    fn report(&self, summary: &mut RunSummary) {
        if self.others > 0 {
            tracing::warn!(
                letters = self.others,
                "letters of other pipelines left where they are; redrive them with their own files"
            );
        }
        if self.whole > 0 {
            let message = format!(
                "{} letters hold a whole file or object their source could not read: fix the \
                 file and read it again (a redrive cannot split it); they are left where they are",
                self.whole
            );
            tracing::warn!("{message}");
            summary.errors.push(message);
        }
    }
}

/// `--rate 50` or `--rate 50/s`.
pub fn rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(n) if (0.01..=1_000_000.0).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}`: give records per second, such as 50 or 50/s"
        )),
    }
}

/// Redrives every letter of `args.from` (until `stop`), and answers the summary.
pub async fn run(
    args: Args,
    progress: Arc<Progress>,
    stop: Shutdown,
) -> anyhow::Result<RunSummary> {
    let config = Loader::new().without_source().load(&args.file)?;
    let ctx = config.context(false);
    // Built first: a dead-letter file that is also the error sink is mended (a torn last line
    // cut) before its letters are read.
    let (pipeline, offline) = if args.dry_run {
        let mut parameters = std::collections::BTreeMap::new();
        for given in &args.parameters {
            let (name, value) = given
                .split_once('=')
                .with_context(|| format!("--parameter `{given}`: write NAME=VALUE"))?;
            parameters.insert(name.to_owned(), value.to_owned());
        }
        let offline = config
            .build_offline(&ctx.clone().with(Offline { parameters }))
            .await?;
        (offline.pipeline.clone(), Some(offline))
    } else {
        let built = config.build(&ctx).await?;
        if !built.pipeline.sink_enabled() {
            bail!(
                "{}: the sink is disabled, so nothing would be stored and every letter would be \
                 lost; enable it, or look with --dry-run",
                args.file.display()
            );
        }
        // A letter is as old as its record: redriven, it must not expire again at once.
        (built.pipeline.with_max_record_age(None), None)
    };
    let mut letters = open(&args.from, &ctx).await?;
    let mut summary = RunSummary {
        pipeline: config.name.clone(),
        ..RunSummary::default()
    };
    let started = tokio::time::Instant::now();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // A queue letter is received at most this many at a time, so `--rate` paces it.
    let take = args.rate.map_or(10, |r| (r.ceil() as usize).clamp(1, 10));
    let (mut cursor, mut handled) = (0usize, 0u64);
    let (mut empty, mut idle) = (0u32, 0u32);
    let mut unreadable = Vec::new();
    let mut done_lines = Vec::new();
    let mut kept_back: Vec<Handle> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut left = Left::default();
    while !stop.is_triggered() {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(handled as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.triggered() => break,
            }
        }
        let (batch, received) = letters.next(take, &mut cursor, &mut unreadable).await?;
        if received == 0 {
            // A queue can answer empty while messages are on their way: twice means drained.
            empty += 1;
            if matches!(letters, Letters::File { .. }) || empty >= 2 {
                break;
            }
            continue;
        }
        empty = 0;
        let mut ours = Vec::with_capacity(batch.len());
        let mut others = Vec::new();
        for letter in batch {
            match left.why(&letter, &config.name, started_ms, &mut seen) {
                // Not this redrive's: visible again at once, for its owner (or the next run).
                Some((why, true)) => {
                    tracing::debug!(why, "letter left where it is");
                    others.push(letter.handle);
                }
                // It failed in this run: it comes back after the visibility timeout.
                Some((why, false)) => tracing::debug!(why, "letter left where it is"),
                None => ours.push(letter),
            }
        }
        letters.release(&others).await;
        // Receives that bring only letters to leave (new ones, others', seen ones): after a
        // few, everything of ours that is visible has been taken.
        if ours.is_empty() {
            idle += 1;
            if matches!(letters, Letters::Queue { .. }) && idle >= 5 {
                break;
            }
            continue;
        }
        idle = 0;
        handled += ours.len() as u64;
        for (shard, group) in by_shard(ours) {
            if stop.is_triggered() {
                // Not started: visible again at once for whoever redrives next.
                letters
                    .release(&group.iter().map(|l| l.handle.clone()).collect::<Vec<_>>())
                    .await;
                continue;
            }
            let handles: Vec<Handle> = group.iter().map(|l| l.handle.clone()).collect();
            let records: Vec<RawRecord> = group.into_iter().map(|l| l.record).collect();
            if let Some(offline) = &offline {
                // What would happen, as `sluice test` shows it; nothing is removed.
                let results =
                    crate::offline::process(offline, vec![(shard.clone(), records)]).await;
                let mut out = std::io::stdout().lock();
                for result in &results {
                    let line = if args.records_json {
                        format!("{}\n", serde_json::to_string(result)?)
                    } else {
                        crate::offline::text(result)
                    };
                    // A reader that stopped reading (`| head`) is not an error.
                    let _ = out.write_all(line.as_bytes());
                }
                let outcomes = results
                    .into_iter()
                    .map(|r| (Position::default(), r.outcome))
                    .collect();
                let report = BatchReport::new(shard, outcomes);
                progress.add(&report);
                summary.add(&report);
                kept_back.extend(handles);
                continue;
            }
            let report = pipeline.process_batch(shard.clone(), records).await;
            progress.add(&report);
            summary.add(&report);
            if report.first_failure().is_some() && !summary.unresolved.contains(&shard) {
                summary.unresolved.push(shard);
            }
            let mut done = Vec::new();
            for (handle, (_, outcome)) in handles.into_iter().zip(&report.outcomes) {
                let not_written = matches!(
                    outcome,
                    Outcome::Skipped {
                        by: SkippedBy::DisabledSink
                    }
                );
                if outcome.is_terminal() && !not_written {
                    if let Handle::Line(i) = handle {
                        done_lines.push(i);
                    }
                    done.push(handle);
                }
            }
            if let Err(e) = letters.done(&done).await {
                tracing::error!(error = %e, "letters not deleted");
                summary.errors.push(format!("{e:#}"));
            }
        }
    }
    left.report(&mut summary);
    if args.dry_run {
        // Nothing is removed: every letter is visible again at once.
        letters.release(&kept_back).await;
    } else {
        letters.finish(&done_lines)?;
    }
    summary.errors.extend(
        unreadable
            .into_iter()
            .map(|e| format!("not a sluice dead letter, left where it is: {e}")),
    );
    summary.api_calls = pipeline.api_calls().snapshot();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The letters of `from`: a queue URL (`https://…`, `http://…` for an emulator), `sqs://NAME`,
/// or a dead-letter file.
async fn open(from: &str, ctx: &sluice::sluice_core::BuildContext) -> anyhow::Result<Letters> {
    let connection = Connection {
        region: None,
        endpoint_url: None,
        retries: Retries::Sdk,
    };
    let queue =
        from.starts_with("https://") || from.starts_with("http://") || from.starts_with("sqs://");
    if !queue {
        let path = PathBuf::from(from);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--from {from}: not a queue URL, and no such file"))?;
        return Ok(Letters::File {
            lines: text.split('\n').map(str::to_owned).collect(),
            length: text.len() as u64,
            path,
        });
    }
    let sqs: aws_sdk_sqs::Client = aws::client(ctx, connection).await?;
    let s3: aws_sdk_s3::Client = aws::client(ctx, connection).await?;
    let url = match from.strip_prefix("sqs://") {
        Some(name) => sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("queue `{name}`: {}", aws::describe_error(&e)))?
            .queue_url()
            .context("GetQueueUrl gave no URL")?
            .to_owned(),
        None => from.to_owned(),
    };
    Ok(Letters::Queue { sqs, s3, url })
}

/// Letters grouped by shard, in order of first appearance, each group in position order.
fn by_shard(letters: Vec<Letter>) -> Vec<(String, Vec<Letter>)> {
    let mut groups: Vec<(String, Vec<Letter>)> = Vec::new();
    for letter in letters {
        let shard = letter.record.meta.shard_id.clone();
        match groups.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, group)) => group.push(letter),
            None => groups.push((shard, vec![letter])),
        }
    }
    for (_, group) in &mut groups {
        group.sort_by_key(|l| l.record.meta.position());
    }
    groups
}
