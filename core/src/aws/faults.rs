//! A fault-injecting HTTP client for tests: it answers chosen AWS operations with throttling, a
//! server error or a timeout, and forwards every other call to the real endpoint (the emulator).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;

/// What an injected fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 400 `ProvisionedThroughputExceededException` (DynamoDB, Kinesis) or `ThrottlingException`.
    Throttle,
    /// 500 `InternalServerError`.
    ServerError,
    /// The connection times out before an answer.
    Timeout,
    /// BatchWriteItem only: 200, but every item of the call comes back in `UnprocessedItems`
    /// (what DynamoDB does under partial throttling); nothing is written.
    Unprocessed,
    /// The call reaches the emulator and takes effect, but its answer is lost (the connection
    /// resets after the request was sent): the caller cannot know it happened.
    LostAnswer,
    /// The code awaiting the call panics (a stand-in for a bug anywhere on that task's path).
    Panic,
    /// The answer starts (a streaming one: an enhanced fan-out subscription), then the
    /// connection drops after this many body frames.
    CutStream { frames: u32 },
}

#[derive(Debug)]
struct Rule {
    operation: String,
    fault: Fault,
    /// How many more calls fail; `None` fails all until healed.
    remaining: Option<u32>,
    /// Only calls whose request body contains this text fail.
    needle: Option<String>,
    /// Calls to let through before the rule starts failing them.
    skip: u32,
}

/// The faults to inject, shared by the HTTP clients made from it; change it while a test runs.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    rules: Arc<Mutex<Vec<Rule>>>,
    injected: Arc<AtomicU64>,
}

impl FaultPlan {
    /// A plan with no faults yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `times` calls of `operation` (e.g. `BatchWriteItem`) fail with `fault`.
    pub fn fail(&self, operation: &str, fault: Fault, times: u32) -> &Self {
        self.push(operation, fault, Some(times))
    }

    /// Every call of `operation` fails with `fault` until [`FaultPlan::heal`].
    pub fn fail_always(&self, operation: &str, fault: Fault) -> &Self {
        self.push(operation, fault, None)
    }

    /// The calls of `operation` after the next `skip` fail with `fault`, `times` of them (while
    /// it lets calls through, rules added after it for the operation wait).
    pub fn fail_after(&self, operation: &str, skip: u32, fault: Fault, times: u32) -> &Self {
        self.lock().push(Rule {
            operation: operation.to_owned(),
            fault,
            remaining: Some(times),
            needle: None,
            skip,
        });
        self
    }

    /// Every call of `operation` whose request body contains `needle` fails with `fault` until
    /// healed: a way to fail chosen records' writes and not their neighbours' calls.
    pub fn fail_when(&self, operation: &str, needle: &str, fault: Fault) -> &Self {
        self.lock().push(Rule {
            operation: operation.to_owned(),
            fault,
            remaining: None,
            needle: Some(needle.to_owned()),
            skip: 0,
        });
        self
    }

    /// Removes every rule for `operation`.
    pub fn heal(&self, operation: &str) {
        self.lock().retain(|r| r.operation != operation);
    }

    /// How many calls were answered with a fault so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// An HTTP client (plain HTTP, for a local emulator) that applies this plan.
    pub fn http_client(&self) -> SharedHttpClient {
        self.wrap(aws_smithy_http_client::Builder::new().build_http())
    }

    /// Wraps `inner`: calls the plan does not fail go to it.
    pub fn wrap(&self, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(FaultyClient {
            inner,
            plan: self.clone(),
        })
    }

    fn push(&self, operation: &str, fault: Fault, remaining: Option<u32>) -> &Self {
        self.lock().push(Rule {
            operation: operation.to_owned(),
            fault,
            remaining,
            needle: None,
            skip: 0,
        });
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules
            .lock()
            .expect("no panic while holding the fault plan")
    }

    /// The fault for this call, if any, using up one of a counted rule's calls.
    fn take(&self, operation: &str, body: &[u8]) -> Option<Fault> {
        let mut rules = self.lock();
        let contains = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
        let i = rules.iter().position(|r| {
            r.operation == operation
                && r.remaining != Some(0)
                && r.needle.as_deref().is_none_or(contains)
        })?;
        let rule = &mut rules[i];
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(rule.fault)
    }
}

#[derive(Debug)]
struct FaultyClient {
    inner: SharedHttpClient,
    plan: FaultPlan,
}

impl HttpClient for FaultyClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector {
            inner: self.inner.http_connector(settings, components),
            plan: self.plan.clone(),
        })
    }
}

/// The S3 operation a REST request makes, for the few a test may fail.
fn s3_operation(method: &str, uri: &str) -> &'static str {
    let after_host = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let path_and_query = after_host.find('/').map_or("", |at| &after_host[at..]);
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let segments = path.split('/').filter(|s| !s.is_empty()).count();
    match (method, segments) {
        ("PUT", n) if n >= 2 && !query.contains("uploadId") => "PutObject",
        ("GET", n) if n >= 2 => "GetObject",
        ("GET", 1) if query.contains("list-type=2") => "ListObjectsV2",
        ("HEAD", 1) => "HeadBucket",
        _ => "",
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    plan: FaultPlan,
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // JSON-protocol services name the operation in `X-Amz-Target: Service_Version.Operation`.
        // S3 names it by method and path (path-style: `/bucket/key`).
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let service = target.split('.').next().unwrap_or_default().to_owned();
        let operation = match target.rsplit('.').next() {
            Some(op) if !op.is_empty() => op,
            _ => s3_operation(request.method(), request.uri()),
        };
        let body = request.body().bytes().unwrap_or_default();
        match self.plan.take(operation, body) {
            None => self.inner.call(request),
            Some(Fault::Timeout) => {
                HttpConnectorFuture::ready(Err(ConnectorError::timeout("injected timeout".into())))
            }
            Some(Fault::Unprocessed) => {
                HttpConnectorFuture::ready(Ok(unprocessed_response(&request)))
            }
            Some(Fault::LostAnswer) => {
                let sent = self.inner.call(request);
                HttpConnectorFuture::new(async move {
                    let _ = sent.await;
                    Err(ConnectorError::io(
                        "injected: the connection reset after the request was sent".into(),
                    ))
                })
            }
            Some(Fault::CutStream { frames }) => {
                let sent = self.inner.call(request);
                HttpConnectorFuture::new(async move {
                    let mut answer = sent.await?;
                    let body = std::mem::replace(answer.body_mut(), SdkBody::empty());
                    *answer.body_mut() = SdkBody::from_body_1_x(CutBody {
                        inner: body,
                        frames,
                    });
                    Ok(answer)
                })
            }
            Some(Fault::Panic) => {
                let call = format!("{service}.{operation}");
                HttpConnectorFuture::new(
                    async move { panic!("injected: a bug on the path of {call}") },
                )
            }
            Some(fault) => HttpConnectorFuture::ready(Ok(error_response(&service, fault))),
        }
    }
}

/// A body that ends in an error after `frames` frames of the real one.
struct CutBody {
    inner: SdkBody,
    frames: u32,
}

impl http_body::Body for CutBody {
    type Data = bytes::Bytes;
    type Error = aws_smithy_runtime_api::box_error::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.frames == 0 {
            return std::task::Poll::Ready(Some(Err(
                "injected: the connection dropped mid-stream".into(),
            )));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.frames -= 1;
        }
        polled
    }
}

/// Every item of a BatchWriteItem request handed back unprocessed.
fn unprocessed_response(request: &HttpRequest) -> Response<SdkBody> {
    let body: serde_json::Value = request
        .body()
        .bytes()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let answer = serde_json::json!({ "UnprocessedItems": body["RequestItems"] });
    let mut response = Response::new(
        StatusCode::try_from(200).expect("a valid status code"),
        SdkBody::from(answer.to_string()),
    );
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.0");
    response
}

fn error_response(service: &str, fault: Fault) -> Response<SdkBody> {
    let (status, code) = match fault {
        Fault::Throttle if service.starts_with("DynamoDB") || service.starts_with("Kinesis") => {
            (400, "ProvisionedThroughputExceededException")
        }
        Fault::Throttle => (400, "ThrottlingException"),
        _ => (500, "InternalServerError"),
    };
    let body = format!(r#"{{"__type":"{code}","message":"injected by the test's fault plan"}}"#);
    let mut response = Response::new(
        StatusCode::try_from(status).expect("a valid status code"),
        SdkBody::from(body),
    );
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.0");
    response
}
