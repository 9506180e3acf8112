//! A stand-in for the Lambda Runtime API (`/2018-06-01/runtime/...`): it hands a function
//! events and collects its answers, as Lambda would, so tests can run a real Lambda binary.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use tokio::sync::Notify;

/// What the function answered for one invocation: `response`, `error` (or `init` for an
/// initialisation error), and the body.
pub type Answer = (String, Value);

/// A stand-in for the Lambda Runtime API (`/2018-06-01/runtime/...`).
pub struct RuntimeApi {
    /// Where it listens: the value of `AWS_LAMBDA_RUNTIME_API` for the function.
    pub addr: SocketAddr,
    events: Mutex<VecDeque<(String, Value, u64)>>,
    event_ready: Notify,
    answers: Mutex<HashMap<String, Answer>>,
    answered: Notify,
}

impl RuntimeApi {
    /// Starts listening on a free loopback port.
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            events: Mutex::default(),
            event_ready: Notify::new(),
            answers: Mutex::default(),
            answered: Notify::new(),
        });
        let serving = api.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let api = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.route(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    /// The environment Lambda gives a function (`AWS_LAMBDA_RUNTIME_API` pointing here).
    pub fn function_environment(&self, function: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/11/24/[$LATEST]0123456789abcdef".to_owned(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function}"),
            ),
        ]
    }

    /// Queues an invocation with `budget` before its deadline; answers its request id.
    pub fn invoke(&self, event: Value, budget: Duration) -> String {
        let id = format!("req-{}", fastrand::u64(..));
        let deadline = chrono::Utc::now().timestamp_millis() as u64 + budget.as_millis() as u64;
        self.events
            .lock()
            .unwrap()
            .push_back((id.clone(), event, deadline));
        self.event_ready.notify_one();
        id
    }

    /// Waits (a minute at most) for the answer to invocation `id`; `init` for an init error.
    pub async fn answer(&self, id: &str) -> Answer {
        let wait = async {
            loop {
                let answered = self.answered.notified();
                if let Some(a) = self.answers.lock().unwrap().get(id).cloned() {
                    return a;
                }
                answered.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no answer to {id} within a minute"))
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let prefix = "/2018-06-01/runtime/";
        let rest = path.strip_prefix(prefix).unwrap_or_default().to_owned();
        if rest == "invocation/next" {
            let (id, event, deadline) = loop {
                let ready = self.event_ready.notified();
                if let Some(next) = self.events.lock().unwrap().pop_front() {
                    break next;
                }
                ready.await;
            };
            return Response::builder()
                .header("lambda-runtime-aws-request-id", &id)
                .header("lambda-runtime-deadline-ms", deadline.to_string())
                .header(
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:sluice-waze",
                )
                .header(
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000",
                )
                .body(Full::new(Bytes::from(event.to_string())))
                .unwrap();
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (id, kind) = match rest.rsplit_once('/') {
            Some(("init", "error")) => ("init".to_owned(), "init"),
            Some((invocation, kind)) => (
                invocation.trim_start_matches("invocation/").to_owned(),
                if kind == "response" {
                    "response"
                } else {
                    "error"
                },
            ),
            None => (rest.clone(), "unknown"),
        };
        self.answers
            .lock()
            .unwrap()
            .insert(id, (kind.to_owned(), body));
        self.answered.notify_waiters();
        Response::builder()
            .status(202)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }
}
