//! The Lambda function's start: find the pipeline file, build it (trying again while a resource
//! it names cannot be reached), and serve. A cold start that cannot reach a resource does not
//! poison the instance: each invocation tries the build again until it succeeds. A file that is
//! wrong answers every invocation with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lambda_events::event::streams::KinesisEventResponse;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{invoke, processing_deadline, Emf};
use crate::component::BuildContext;
use crate::config::Loader;
use crate::error::ConfigError;
use crate::kinesis_event::KinesisEvent;
use crate::runtime::Pipeline;
use crate::settings::Backoff;

/// How long a cold start may spend building the pipeline (Lambda gives its init phase 10 s).
const INIT_BUDGET: Duration = Duration::from_secs(6);
/// Waits between attempts while a resource cannot be reached.
const BUILD_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(2),
};

/// Whether AWS Lambda started this process (it sets `AWS_LAMBDA_RUNTIME_API`).
pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// The pipeline file a Lambda function runs: `SLUICE_PIPELINE`, else `default`. A relative path
/// is looked up in the working directory, then in `LAMBDA_TASK_ROOT` (where the deployment
/// package is unpacked).
pub fn pipeline_path(default: &str) -> PathBuf {
    let name = std::env::var("SLUICE_PIPELINE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let path = PathBuf::from(&name);
    if path.is_absolute() || path.exists() {
        return path;
    }
    match std::env::var_os("LAMBDA_TASK_ROOT") {
        Some(root) if PathBuf::from(&root).join(&name).exists() => PathBuf::from(root).join(name),
        _ => path,
    }
}

/// Loads and builds the pipeline at `path` (without its `[source]`: the event is the source),
/// trying again with backoff until `until` while a resource it names cannot be reached.
async fn build(path: &Path, until: Instant) -> Result<Pipeline, ConfigError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let built = async {
            let config = Loader::new().without_source().load(path)?;
            let ctx = BuildContext::new(config.name.clone(), false);
            config.build(&ctx).await
        };
        match built.await {
            Ok(built) => return Ok(built.pipeline),
            Err(e) if e.unavailable => {
                let wait = BUILD_BACKOFF.delay(attempt);
                if Instant::now() + wait > until {
                    return Err(e);
                }
                tracing::warn!(error = %e, attempt, ?wait, "the pipeline cannot be built yet; trying again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The whole Lambda function: builds the pipeline named by [`pipeline_path`] and serves
/// invocations until the runtime ends. A pipeline file that is wrong answers every invocation
/// with the reason (`PipelineCannotRun`, naming the file) instead of exiting, which would
/// crash-loop the function without one; a resource that cannot be reached (a throttled call at
/// a cold start) is tried again at each invocation, so the instance recovers by itself.
pub async fn run(default_pipeline: &str) -> Result<(), lambda_runtime::Error> {
    let path = pipeline_path(default_pipeline);
    let built = OnceCell::new();
    match build(&path, Instant::now() + INIT_BUDGET).await {
        Ok(pipeline) => {
            tracing::info!(pipeline = %pipeline.name(), file = %path.display(), "serving Lambda invocations");
            let _ = built.set(pipeline);
        }
        Err(e) if !e.unavailable => return serve_error(cannot_run(&path, &e)).await,
        Err(e) => {
            tracing::error!(error = %e, file = %path.display(), "the pipeline cannot be built yet; each invocation tries again");
        }
    }
    let (built, path) = (&built, path.as_path());
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<KinesisEvent>| async move {
            let deadline = processing_deadline(event.context.deadline);
            let pipeline = built
                .get_or_try_init(|| build(path, deadline))
                .await
                .map_err(|e| Diagnostic {
                    error_type: "PipelineCannotRun".to_owned(),
                    error_message: cannot_run(path, &e),
                })?;
            let emf = Emf::from_env(pipeline.name());
            Ok::<KinesisEventResponse, Diagnostic>(
                invoke(pipeline, emf.as_ref(), event, deadline).await,
            )
        },
    ))
    .await
}

fn cannot_run(path: &Path, e: &ConfigError) -> String {
    format!("pipeline {} cannot run: {e}", path.display())
}

/// Serves invocations with an error: for a pipeline that cannot run at all (a wrong pipeline
/// file), so each invocation fails with the reason instead of the function crash-looping
/// without one.
pub async fn serve_error(message: String) -> Result<(), lambda_runtime::Error> {
    let message = &message;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<serde_json::Value>| async move {
            tracing::error!(error = %message, "the pipeline cannot run");
            Err::<(), _>(Diagnostic {
                error_type: "PipelineCannotRun".to_owned(),
                error_message: message.clone(),
            })
        },
    ))
    .await
}
