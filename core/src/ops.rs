//! The endpoints that operate a long-running process: `GET /metrics` (Prometheus), `GET /health`
//! (200 while working; 503 with the reason when a shard is stuck on failed records past its
//! bound or the lease table is unreachable past a lease's duration) and `GET /ready` (200 once
//! leases are taken and readers started; 503 before, and while stopping).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::health::Health;
use crate::metrics::metrics;

/// Listens on `addr` and answers the endpoints until the process ends; answers the address
/// bound (with port 0, the port chosen).
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let health = health.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &health)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn answer(req: &Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().encode(),
        ),
        "/health" => match health.check() {
            None => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            Some(why) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "unhealthy", "reason": why.to_string()}),
            ),
        },
        "/ready" if health.is_ready() => {
            json(StatusCode::OK, serde_json::json!({"status": "ready"}))
        }
        "/ready" => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not ready"}),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /health or /ready\n".into(),
        ),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{body}\n"))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("status, header and body are valid")
}

/// `GET url` on a plain-HTTP loopback address, for container health checks (a scratch image has
/// no curl): answers whether the status was 200. Written by hand: one request line over a TCP
/// stream needs no client library.
pub fn probe(url: &str) -> Result<bool, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("`{url}`: give an http:// URL, e.g. http://127.0.0.1:9090/health")
    })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let timeout = std::time::Duration::from_secs(5);
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| format!("`{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` has no address"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn health_ready_and_metrics_answer_as_the_process_stands() {
        let health = Arc::new(Health::default());
        let addr = serve("127.0.0.1:0".parse().unwrap(), health.clone())
            .await
            .unwrap();
        let url = |path: &str| format!("http://{addr}{path}");
        let probe_ = |u: String| tokio::task::spawn_blocking(move || probe(&u));
        assert_eq!(probe_(url("/health")).await.unwrap(), Ok(true));
        assert_eq!(
            probe_(url("/ready")).await.unwrap(),
            Ok(false),
            "not ready before leases"
        );
        health.set_ready();
        assert_eq!(probe_(url("/ready")).await.unwrap(), Ok(true));
        assert_eq!(probe_(url("/metrics")).await.unwrap(), Ok(true));
        health.set_stuck_after(std::time::Duration::ZERO);
        health.shard_stuck("s", Some((std::time::Instant::now(), "refused")));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(probe_(url("/health")).await.unwrap(), Ok(false));
        health.set_stopping();
        assert_eq!(probe_(url("/ready")).await.unwrap(), Ok(false));
        assert!(
            probe("127.0.0.1:1/health").is_err(),
            "a URL without http:// is refused"
        );
    }
}
