//! The example's binary started as Lambda starts it: a pipeline file that cannot run answers
//! each invocation with the reason, as the `sluice` binary does, instead of exiting.

use std::time::Duration;

use serde_json::json;
use sluice::sluice_core::testkit::lambda_api::RuntimeApi;

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_pipeline_file_answers_each_invocation_with_an_error_naming_it() {
    let api = RuntimeApi::start().await;
    let mut function = tokio::process::Command::new(env!("CARGO_BIN_EXE_custom-lambda"))
        .envs(api.function_environment("custom-lambda"))
        .env("SLUICE_PIPELINE", "no-such-pipeline.toml")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the example's binary starts");
    for _ in 0..2 {
        let id = api.invoke(json!({"Records": []}), Duration::from_secs(10));
        let (kind, body) = api.answer(&id).await;
        assert_eq!(kind, "error", "{body}");
        assert_eq!(body["errorType"], "PipelineCannotRun");
        let message = body["errorMessage"].as_str().unwrap_or_default();
        assert!(
            message.contains("no-such-pipeline.toml") && message.contains("no such file"),
            "{body}"
        );
    }
    assert!(
        function.try_wait().expect("its status").is_none(),
        "the function keeps serving"
    );
}
