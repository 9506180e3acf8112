//! A fault-injecting HTTP proxy on loopback, between the `sluice` binary and the emulator: every
//! AWS call the binary makes goes through it (`AWS_ENDPOINT_URL` points here), and it answers a
//! seeded random share of them with the faults AWS gives under load: throttling, 500 and 503,
//! connection resets (before the call reaches the service, and after: a lost answer), latency
//! spikes, BatchWriteItem with part of its items handed back unprocessed (and not written), and
//! SQS outages of several seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value};
use tokio::time::Instant;

/// What the proxy does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// 400 `ProvisionedThroughputExceededException`.
    Throughput,
    /// 400 `ThrottlingException`.
    Throttling,
    /// 500 `InternalServerError`.
    Internal,
    /// 503 `ServiceUnavailable`.
    Unavailable,
    /// The connection closes before the call reaches the service.
    Reset,
    /// The call reaches the service and takes effect; the connection closes before the answer.
    LostAnswer,
    /// The call waits before it goes on.
    Latency,
    /// BatchWriteItem: half its items are written, the others handed back in `UnprocessedItems`.
    Unprocessed,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Throughput => "ProvisionedThroughputExceeded",
            Fault::Throttling => "ThrottlingException",
            Fault::Internal => "500",
            Fault::Unavailable => "503",
            Fault::Reset => "connection reset",
            Fault::LostAnswer => "lost answer",
            Fault::Latency => "latency spike",
            Fault::Unprocessed => "unprocessed items",
        }
    }
}

/// Each fault's chance per call, by kind of call.
fn rates(target: &str) -> &'static [(Fault, f64)] {
    use Fault::*;
    match target {
        "DynamoDB_20120810.BatchWriteItem" => &[
            (Throughput, 0.03),
            (Throttling, 0.02),
            (Internal, 0.02),
            (Unavailable, 0.02),
            (Reset, 0.02),
            (LostAnswer, 0.02),
            (Latency, 0.03),
            (Unprocessed, 0.08),
        ],
        // The lease table: takes, renewals, checkpoints, scans.
        t if t.starts_with("DynamoDB_") => &[
            (Throughput, 0.08),
            (Internal, 0.01),
            (Reset, 0.01),
            (LostAnswer, 0.01),
            (Latency, 0.02),
        ],
        t if t.starts_with("Kinesis_") => &[
            (Throughput, 0.03),
            (Internal, 0.01),
            (Reset, 0.01),
            (Latency, 0.02),
        ],
        t if t.starts_with("AmazonSSM.") => &[(Internal, 0.10), (Throttling, 0.05)],
        t if t.starts_with("AmazonSQS.") => &[(Internal, 0.02), (Reset, 0.01)],
        _ => &[],
    }
}

/// What a call is, in the tally.
fn calls(target: &str) -> &'static str {
    match target {
        "DynamoDB_20120810.BatchWriteItem" => "DynamoDB BatchWriteItem",
        t if t.starts_with("DynamoDB_") => "DynamoDB lease table (and start-up)",
        t if t.starts_with("Kinesis_") => "Kinesis",
        t if t.starts_with("AmazonSSM.") => "SSM",
        t if t.starts_with("AmazonSQS.") => "SQS",
        _ => "other",
    }
}

/// The faults, their seeded randomness and their tally.
pub struct Chaos {
    rng: Mutex<fastrand::Rng>,
    /// SQS answers 503 to every call until then.
    sqs_down_until: Mutex<Option<Instant>>,
    tally: Mutex<BTreeMap<String, u64>>,
}

impl Chaos {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            sqs_down_until: Mutex::new(None),
            tally: Mutex::default(),
        })
    }

    /// Ends an SQS outage under way.
    pub fn end_outage(&self) {
        *self.sqs_down_until.lock().unwrap() = None;
    }

    /// Faults injected so far, by kind and service.
    pub fn tally(&self) -> BTreeMap<String, u64> {
        self.tally.lock().unwrap().clone()
    }

    fn count(&self, what: String) {
        *self.tally.lock().unwrap().entry(what).or_default() += 1;
    }

    fn range(&self, r: std::ops::Range<u64>) -> u64 {
        self.rng.lock().unwrap().u64(r)
    }

    /// SQS goes down for 3 to 6 s every 10 to 20 s, until the task ends.
    pub fn schedule_sqs_outages(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let chaos = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(chaos.range(10_000..20_000))).await;
                let lasts = Duration::from_millis(chaos.range(3_000..6_000));
                *chaos.sqs_down_until.lock().unwrap() = Some(Instant::now() + lasts);
                chaos.count("SQS outage (3-6 s)".into());
            }
        })
    }

    /// The fault for a call to `target`, if any.
    fn pick(&self, target: &str) -> Option<Fault> {
        if target.starts_with("AmazonSQS.") {
            let down = *self.sqs_down_until.lock().unwrap();
            if down.is_some_and(|until| Instant::now() < until) {
                self.count("SQS call refused in an outage".into());
                return Some(Fault::Unavailable);
            }
        }
        let roll = self.rng.lock().unwrap().f64();
        let mut below = 0.0;
        for (fault, rate) in rates(target) {
            below += rate;
            if roll < below {
                self.count(format!("{}: {}", calls(target), fault.label()));
                return Some(*fault);
            }
        }
        None
    }
}

/// The proxy's state: where it forwards, and the faults.
struct Proxy {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    chaos: Arc<Chaos>,
}

/// Listens on a free loopback port and forwards to `upstream` (the emulator), injecting faults.
pub async fn start(upstream: &str, chaos: Arc<Chaos>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let proxy = Arc::new(Proxy {
        upstream: upstream.trim_end_matches('/').to_owned(),
        client: Client::builder(TokioExecutor::new()).build_http(),
        chaos,
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { proxy.handle(req).await }
                });
                // A reset ends the connection with an error: nothing to do about it here.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Closes the connection without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for Reset {}

type Answer = Result<Response<Full<Bytes>>, Reset>;

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .cloned()
            .unwrap_or_else(|| "application/x-amz-json-1.0".parse().unwrap());
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|_| Reset)?.to_bytes();
        let error = |status: u16, code: &str| {
            let text = format!(r#"{{"__type":"{code}","message":"injected by the chaos proxy"}}"#);
            Ok(Response::builder()
                .status(status)
                .header("content-type", content_type.clone())
                .body(Full::new(Bytes::from(text)))
                .expect("a valid response"))
        };
        match self.chaos.pick(&target) {
            None => self.forward(&parts, body).await,
            Some(Fault::Throughput) => error(400, "ProvisionedThroughputExceededException"),
            Some(Fault::Throttling) => error(400, "ThrottlingException"),
            Some(Fault::Internal) => error(500, "InternalServerError"),
            Some(Fault::Unavailable) => error(503, "ServiceUnavailable"),
            Some(Fault::Reset) => Err(Reset),
            Some(Fault::LostAnswer) => {
                let _ = self.forward(&parts, body).await;
                Err(Reset)
            }
            Some(Fault::Latency) => {
                let spike = Duration::from_millis(self.chaos.range(300..2_000));
                tokio::time::sleep(spike).await;
                self.forward(&parts, body).await
            }
            Some(Fault::Unprocessed) => self.half_unprocessed(&parts, body).await,
        }
    }

    async fn forward(&self, parts: &hyper::http::request::Parts, body: Bytes) -> Answer {
        let uri = format!(
            "{}{}",
            self.upstream,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut req = Request::builder().method(parts.method.clone()).uri(uri);
        for (name, value) in &parts.headers {
            if name != "host" && name != "content-length" {
                req = req.header(name, value);
            }
        }
        let req = req.body(Full::new(body)).expect("a valid request");
        let answer = self.client.request(req).await.map_err(|_| Reset)?;
        let (parts, body) = answer.into_parts();
        let body = body.collect().await.map_err(|_| Reset)?.to_bytes();
        let mut out = Response::builder().status(parts.status);
        for (name, value) in &parts.headers {
            if name != "content-length" && name != "transfer-encoding" {
                out = out.header(name, value);
            }
        }
        Ok(out.body(Full::new(body)).expect("a valid response"))
    }

    /// Sends on the first half of each table's items and hands the rest back unprocessed, as
    /// DynamoDB does when part of a batch is throttled.
    async fn half_unprocessed(&self, parts: &hyper::http::request::Parts, body: Bytes) -> Answer {
        let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
            return self.forward(parts, body).await;
        };
        let mut held = Map::new();
        if let Some(Value::Object(tables)) = request.get_mut("RequestItems") {
            for (table, items) in tables.iter_mut() {
                if let Value::Array(items) = items {
                    let keep = items.len().div_ceil(2);
                    if items.len() > keep {
                        held.insert(table.clone(), Value::Array(items.split_off(keep)));
                    }
                }
            }
        }
        let answer = self
            .forward(parts, Bytes::from(request.to_string()))
            .await?;
        if held.is_empty() || !answer.status().is_success() {
            return Ok(answer);
        }
        let (parts, body) = answer.into_parts();
        let body = body.collect().await.map_err(|_| Reset)?.to_bytes();
        let mut reply: Value = serde_json::from_slice(&body).unwrap_or_default();
        let unprocessed = reply
            .as_object_mut()
            .expect("BatchWriteItem answers an object")
            .entry("UnprocessedItems")
            .or_insert_with(|| Value::Object(Map::new()));
        for (table, items) in held {
            let Value::Array(items) = items else { continue };
            let list = unprocessed
                .as_object_mut()
                .expect("UnprocessedItems is an object")
                .entry(table)
                .or_insert_with(|| Value::Array(Vec::new()));
            list.as_array_mut().expect("a list of writes").extend(items);
        }
        let mut out = Response::from_parts(parts, Full::new(Bytes::from(reply.to_string())));
        // The body changed: its checksum would not match.
        out.headers_mut().remove("x-amz-crc32");
        Ok(out)
    }
}
