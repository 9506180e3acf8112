//! Enhanced fan-out: the stream consumer this source reads as, registered when missing and
//! waited for until ACTIVE; several workers of one pipeline share it (one subscription per
//! shard, held by the worker that holds the shard's lease).

use std::time::Duration;

use aws_sdk_kinesis::types::ConsumerStatus;
use sluice_core::aws;
use sluice_core::BuildError;

/// How long a new consumer may take to become ACTIVE (AWS takes seconds to tens of seconds).
const READY_WITHIN: Duration = Duration::from_secs(180);
/// How often its status is read meanwhile.
const POLL: Duration = Duration::from_millis(500);

/// The ARN of consumer `name` of the stream at `stream_arn`, once ACTIVE: an existing one is
/// reused, a missing one registered.
pub(super) async fn consumer_arn(
    client: &aws_sdk_kinesis::Client,
    stream_arn: &str,
    name: &str,
) -> Result<String, BuildError> {
    let unavailable = |call: &str, message: String, transient: bool| BuildError::Unavailable {
        what: format!("Kinesis stream consumer `{name}`"),
        message: format!("{call} failed: {message}"),
        transient,
    };
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    let mut registered = false;
    loop {
        let described = client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await;
        match described {
            Ok(out) => {
                let Some(consumer) = out.consumer_description() else {
                    return Err(unavailable(
                        "DescribeStreamConsumer",
                        "no description".into(),
                        false,
                    ));
                };
                if consumer.consumer_status() == &ConsumerStatus::Active {
                    return Ok(consumer.consumer_arn().to_owned());
                }
                tracing::info!(consumer = %name, status = %consumer.consumer_status(), "waiting for the stream consumer to become ACTIVE");
            }
            Err(e) if aws::error_code(&e) == Some("ResourceNotFoundException") && !registered => {
                tracing::info!(consumer = %name, "registering the stream consumer (enhanced fan-out)");
                match client
                    .register_stream_consumer()
                    .stream_arn(stream_arn)
                    .consumer_name(name)
                    .send()
                    .await
                {
                    Ok(_) => registered = true,
                    // Another worker registered it meanwhile.
                    Err(e) if aws::error_code(&e) == Some("ResourceInUseException") => {
                        registered = true
                    }
                    Err(e) => {
                        return Err(unavailable(
                            "RegisterStreamConsumer",
                            aws::describe_error(&e),
                            aws::is_transient(&e),
                        ))
                    }
                }
            }
            Err(e) if aws::error_code(&e) == Some("ResourceNotFoundException") => {}
            Err(e) => {
                return Err(unavailable(
                    "DescribeStreamConsumer",
                    aws::describe_error(&e),
                    aws::is_transient(&e),
                ))
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(unavailable(
                "waiting for ACTIVE",
                format!("not ACTIVE after {READY_WITHIN:?}"),
                true,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
