//! The `sluice` command: run or validate a pipeline file.

mod offline;
mod redrive;
mod summary;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice::sluice_core::{
    lambda, ops, Backoff, BuildContext, Built, ConfigError, PipelineConfig, Progress,
};

// The facade links every component crate, so each `type` is registered.
use sluice as _;

// The hot path allocates small maps and strings per record; mimalloc is much faster at that than
// glibc's allocator and, above all, musl's (the Lambda build). Its v2 line: the default (v3) held
// half again as much memory. Measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  sluice run pipelines/waze-persist.local.toml      the Waze job on SQLite, no AWS needed
  WAZE_INPUT=my.jsonl sluice run pipelines/waze-persist.local.toml
  sluice validate pipelines/waze-persist.local.toml
  SLUICE__SINK__TABLE=other sluice run p.toml        override a key from the environment

Pipeline files are TOML: name, [source], [[enrichers]], [sink], [error_sink], [batch], [retry].
Strings may use ${VAR} and ${VAR:-default}. See README.md for the reference.
Logs go to stderr (level from SLUICE_LOG or RUST_LOG, default info); the summary goes to stdout.";

/// Moves records from a source through enrichers into a sink; what cannot be stored is dead-lettered.
#[derive(Parser)]
#[command(name = "sluice", version, after_help = EXAMPLES)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Threads that run the pipeline: 0 for one per core; 1 runs it on this thread (SQLite and
    /// file writes still use tokio's blocking pool), the least CPU per record where AWS, not
    /// the CPU, bounds the pace (BENCHMARKS.md).
    #[arg(long, default_value_t = 0, global = true, env = "SLUICE_THREADS", value_parser = thread_count)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for CloudWatch and log shippers).
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum SummaryFormat {
    /// Aligned lines for a person.
    Text,
    /// One JSON object, for scripts.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its source is exhausted (or, for Kinesis, until stopped or caught up).
    ///
    /// Ctrl-C or SIGTERM stops reading; records already read finish, checkpoints are stored and
    /// leases released, then the summary is printed; a second one exits at once (code 130; what
    /// is stored past the last checkpoint is read again). Every record ends stored, skipped,
    /// dead-lettered (written to the error sink with its reason) or failed (neither: it must be
    /// delivered again). The exit code is 0 when no record failed, 1 when some did or the source
    /// stopped early, 2 when the pipeline file is invalid.
    #[command(
        after_help = "Examples:\n  sluice run pipelines/waze-persist.local.toml\n  sluice run pipelines/waze-persist.toml --until-caught-up"
    )]
    Run {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Never draw a progress bar (it is drawn only when stderr is a terminal).
        #[arg(long)]
        no_progress: bool,
        /// How to print the summary on stdout.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// With an endless source (Kinesis): stop once every shard is read to its current tip
        /// and checkpointed, instead of waiting for new records.
        #[arg(long)]
        until_caught_up: bool,
        /// This process's id among the workers sharing a stream (written as the lease owner);
        /// stable and unique. Default: the host name and a random suffix.
        #[arg(long, env = "SLUICE_WORKER_ID")]
        worker_id: Option<String>,
        /// Serve /metrics (Prometheus), /health and /ready on this address, e.g. 0.0.0.0:9090.
        #[arg(long, env = "SLUICE_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// /health answers 503 once a shard has been stuck on failed records this long.
        #[arg(long, env = "SLUICE_UNHEALTHY_AFTER", default_value = "5m", value_parser = positive_duration)]
        unhealthy_after: Duration,
    },
    /// Check an HTTP endpoint (exit 0 when it answers 200): a container's health check, where
    /// the image has no shell or curl.
    #[command(after_help = "Example:\n  sluice probe http://127.0.0.1:9090/health")]
    Probe {
        /// The URL (plain http://).
        url: String,
    },
    /// Run a pipeline's enrichers and its sink's encoding over sample records, calling nothing:
    /// what each record becomes (stored, with the exact request the sink would send; skipped;
    /// dead-lettered, with the reason), or the file's unit tests.
    ///
    /// Without --input, the cases of the tests file beside it (`x.tests.toml`) are run when there
    /// is one (exit 1 when a case fails), else the file's own file source is read. Variables the
    /// environment does not set stand for their own names, so `${LATEST_BATCH_ID}` is the
    /// parameter `LATEST_BATCH_ID` (give its value with --parameter).
    #[command(
        after_help = "Examples:\n  sluice test pipelines/waze-persist.local.toml\n  sluice test pipelines/waze-persist.toml --input tests/fixtures/kinesis-event.json --parameter LATEST_BATCH_ID=batch-7 --format json"
    )]
    Test {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Records to run: JSON lines, or a Lambda Kinesis event file.
        #[arg(long)]
        input: Option<PathBuf>,
        /// A value for an `ssm_parameter` enricher's parameter, NAME=VALUE (repeatable).
        #[arg(long = "parameter", value_name = "NAME=VALUE")]
        parameters: Vec<String>,
        /// How to print each record's result.
        #[arg(long, value_enum, default_value_t = offline::Format::Text)]
        format: offline::Format,
        /// The unit tests to run (default: the file's `.tests.toml`, when there is one).
        #[arg(long, conflicts_with = "input")]
        tests: Option<PathBuf>,
    },
    /// Take dead letters back through the pipeline once their cause is fixed.
    ///
    /// SOURCE is the error sink's queue (its URL, or sqs://NAME) or a dead-letter file. Each
    /// envelope's payload and position run again from decoding, so a record lands on the item it
    /// would have been; a letter is removed only once its record is stored, skipped or
    /// dead-lettered again (a new envelope keeping the previous reason). A record that fails
    /// stays. Ctrl-C or SIGTERM makes the letters not yet started visible again at once; after a
    /// hard kill they come back within a minute (the visibility timeout used).
    #[command(
        after_help = "Examples:\n  sluice redrive pipelines/waze-persist.toml --from \"$DLQ_QUEUE_URL\" --rate 50/s\n  sluice redrive pipelines/waze-persist.local.toml --from waze-dlq.jsonl --dry-run"
    )]
    Redrive {
        /// The pipeline file (TOML), as fixed; its [source] is not read.
        file: PathBuf,
        /// The queue (URL or sqs://NAME) or the dead-letter file.
        #[arg(long, value_name = "SOURCE")]
        from: String,
        /// At most this many records a second (`50` or `50/s`).
        #[arg(long, value_parser = redrive::rate)]
        rate: Option<f64>,
        /// Show what each letter would become (as `sluice test` does), change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: a value for an `ssm_parameter` enricher's parameter, NAME=VALUE.
        #[arg(long = "parameter", value_name = "NAME=VALUE", requires = "dry_run")]
        parameters: Vec<String>,
        /// Never draw a progress bar (it is drawn only when stderr is a terminal).
        #[arg(long)]
        no_progress: bool,
        /// How to print the summary on stdout.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
    },
    /// Print the JSON Schema (draft 2020-12) of pipeline files: every component this program
    /// knows, with its settings. Point an editor at it (see README.md, "Editing pipeline files").
    #[command(after_help = "Example:\n  sluice schema > pipelines/sluice.schema.json")]
    Schema,
    /// Check a pipeline file: load it, build every component, read no data, print the plan.
    ///
    /// Exits 0 when the file is valid, 2 with a message naming the key and the fix otherwise.
    #[command(after_help = "Example:\n  sluice validate pipelines/waze-persist.local.toml")]
    Validate {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    sluice::memory::tune();
    // Started by AWS Lambda: serve invocations instead of reading a command line.
    if lambda::is_lambda() {
        return lambda_main();
    }
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match runtime(cli.threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!(
                "error: cannot start {} threads (--threads): {e}",
                cli.threads
            );
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(execute(cli.command));
    // A read of a terminal's stdin cannot be cancelled: exit without waiting for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn lambda_main() -> ExitCode {
    // CloudWatch filters JSON lines; one summary line per invocation, not one per record.
    init_logs(LogFormat::Json);
    // A bad setting is answered on every invocation, as a bad pipeline file is: exiting before
    // serving would only have Lambda start the function again and again.
    let threads = std::env::var_os("SLUICE_THREADS").map_or(Ok(0), |text| {
        let text = text.to_string_lossy();
        thread_count(&text).map_err(|e| format!("SLUICE_THREADS=`{text}`: {e}"))
    });
    let runtime = match runtime(*threads.as_ref().unwrap_or(&0)) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "no runtime could be started");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        match threads {
            Ok(_) => lambda::run("pipelines/waze-persist.toml").await,
            Err(message) => lambda::serve_error(message).await,
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}

/// The most threads `--threads` takes: more than any machine sluice runs on has cores.
const MAX_THREADS: usize = 1024;

/// `--threads` and `SLUICE_THREADS`: a whole number from 0 (one per core) to `MAX_THREADS`.
fn thread_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_THREADS => Ok(n),
        _ => Err(format!(
            "must be a whole number of threads from 0 (one per core) to {MAX_THREADS}, e.g. 1"
        )),
    }
}

/// The runtime for `threads` (0: one worker per core; 1: this thread alone, with no hand-offs
/// between threads; the blocking pool, for SQLite and files, is there either way).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = builder.enable_all().build()?;
    tracing::debug!(
        target: "sluice::runtime",
        threads,
        flavor = ?runtime.handle().runtime_flavor(),
        "runtime started"
    );
    Ok(runtime)
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero, e.g. 5m".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (e.g. 30s, 5m)")),
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Probe { url } => {
            let ok = tokio::task::spawn_blocking(move || ops::probe(&url))
                .await?
                .map_err(anyhow::Error::msg)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Test {
            file,
            input,
            parameters,
            format,
            tests,
        } => {
            offline::run(offline::Args {
                file,
                input,
                parameters,
                format,
                tests,
            })
            .await
        }
        Command::Redrive {
            file,
            from,
            rate,
            dry_run,
            parameters,
            no_progress,
            summary,
        } => {
            let stop = sluice::sluice_core::Shutdown::default();
            let mut signals = StopSignals::listen().context("listening for stop signals")?;
            {
                let stop = stop.clone();
                tokio::spawn(async move {
                    signals.next().await;
                    tracing::warn!("stopping: finishing the letters under way; the others are made visible again");
                    stop.trigger();
                    signals.next().await;
                    std::process::exit(130);
                });
            }
            let progress = Arc::new(Progress::default());
            let bar = (!no_progress && std::io::stderr().is_terminal())
                .then(|| spawn_progress_bar(progress.clone()));
            let args = redrive::Args {
                file,
                from,
                rate,
                dry_run,
                parameters,
                records_json: matches!(summary, SummaryFormat::Json),
            };
            let result = redrive::run(args, progress, stop).await;
            if let Some((bar, ticker)) = bar {
                ticker.abort();
                bar.finish_and_clear();
            }
            let result = result?;
            match summary {
                SummaryFormat::Text => print!("{}", summary::text(&result, !dry_run)),
                SummaryFormat::Json => println!("{}", serde_json::to_string(&result)?),
            }
            // A letter whose record failed stays for the next redrive: not a success.
            Ok(if result.is_success() && result.counts.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Schema => {
            let schema = sluice::sluice_core::schema::pipeline_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => {
            let config = PipelineConfig::load(&file)?;
            config.build(&config.context(true)).await?;
            println!("{}: valid", file.display());
            println!("pipeline    {}", config.name);
            for line in config.describe() {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            file,
            no_progress,
            summary,
            until_caught_up,
            worker_id,
            metrics_addr,
            unhealthy_after,
        } => {
            let config = PipelineConfig::load(&file)?;
            let mut ctx = config.context(false);
            ctx.until_caught_up = until_caught_up;
            if let Some(id) = worker_id {
                ctx.worker_id = id;
            }
            ctx.health.set_stuck_after(unhealthy_after);
            if let Some(addr) = metrics_addr {
                let bound = ops::serve(addr, ctx.health.clone())
                    .await
                    .with_context(|| format!("serving metrics on {addr}"))?;
                tracing::info!(%bound, "serving /metrics, /health and /ready");
            }
            let shutdown = ctx.shutdown.clone();
            let health = ctx.health.clone();
            let mut signals = StopSignals::listen().context("listening for stop signals")?;
            tokio::spawn(async move {
                signals.next().await;
                health.set_stopping();
                tracing::warn!(
                    "stopping: finishing the records already read, storing checkpoints \
                     (a second Ctrl-C or SIGTERM exits at once)"
                );
                shutdown.trigger();
                // One keypress can send two signals (the terminal's SIGINT and a wrapper's
                // SIGTERM): only one a second or more later means "now".
                let first = tokio::time::Instant::now();
                signals.next().await;
                while first.elapsed() < Duration::from_secs(1) {
                    signals.next().await;
                }
                // Checkpoints only ever trail what is stored, so nothing is lost: records stored
                // since the last checkpoint are read again by the next run.
                tracing::error!(
                    "a second stop signal: exiting now; records after the last checkpoint will be read again"
                );
                std::process::exit(FORCED_EXIT);
            });
            let built = build_when_reachable(&config, &ctx).await?;
            let (pipeline, source) = (built.pipeline, built.source.context("a [source]")?);
            tracing::info!(pipeline = %config.name, file = %file.display(), worker = %ctx.worker_id, "running");
            let progress = Arc::new(Progress::default());
            let bar = (!no_progress && std::io::stderr().is_terminal())
                .then(|| spawn_progress_bar(progress.clone()));
            let result = pipeline.run(source, progress).await;
            if let Some((bar, ticker)) = bar {
                ticker.abort();
                bar.finish_and_clear();
            }
            match summary {
                SummaryFormat::Text => {
                    print!("{}", summary::text(&result, pipeline.sink_enabled()))
                }
                SummaryFormat::Json => println!(
                    "{}",
                    serde_json::to_string(&result).context("serialising the summary")?
                ),
            }
            tracing::info!(
                records = result.counts.records,
                stored = result.counts.stored,
                skipped = result.counts.skipped,
                dead_lettered = result.counts.dead_lettered,
                failed = result.counts.failed,
                elapsed_s = result.elapsed.as_secs_f64(),
                "run finished"
            );
            Ok(if result.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// How long a start keeps being tried while a resource fails for a passing reason.
const START_BUDGET: Duration = Duration::from_secs(300);
/// Waits between those tries.
const START_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// Builds the pipeline, trying again (up to [`START_BUDGET`], or a stop signal) while a resource
/// it names fails for a passing reason: a daemon that starts during a throttling burst or a
/// service outage waits it out instead of exiting. A missing resource fails at once.
async fn build_when_reachable(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> Result<Built, ConfigError> {
    let until = tokio::time::Instant::now() + START_BUDGET;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match config.build(ctx).await {
            Err(e) if e.transient && !ctx.shutdown.is_triggered() => {
                let wait = START_BACKOFF.delay(attempt);
                if tokio::time::Instant::now() + wait > until {
                    return Err(e);
                }
                tracing::warn!(error = %e, attempt, ?wait, "a resource cannot be reached yet; starting again");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.shutdown.triggered() => return Err(e),
                }
            }
            built => return built,
        }
    }
}

/// The exit code of a run stopped by a second signal (128 + SIGINT, as shells report Ctrl-C).
const FORCED_EXIT: i32 = 130;

/// Ctrl-C and SIGTERM (how Lambda, systemd and Kubernetes ask a process to stop), listened for
/// from start-up on, so a second signal is seen however soon it follows the first.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn spawn_progress_bar(
    progress: Arc<Progress>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("a valid progress template"),
    );
    let shown = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let c = progress.snapshot();
            shown.set_message(format!(
                "{} records: {} stored, {} skipped, {} dead-lettered, {} failed",
                c.records, c.stored, c.skipped, c.dead_lettered, c.failed
            ));
            shown.tick();
        }
    });
    (bar, ticker)
}
