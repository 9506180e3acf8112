//! `sluice run` as a fleet of daemons sharing a stream: real processes, so that one can be
//! killed (`kill -9`) or paused (`SIGSTOP`), against the emulators. Leases last 3 s here (1 s
//! renewals, a take round every 1.5 s), so protocol events happen within seconds.

mod fencing;
mod fleet;
mod healing;
mod kcl;
mod reshard;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use sluice_core::SequenceNumber;

use crate::aws_job::World;
use crate::{root, sluice};

/// The protocol's timings for these tests, as pipeline-file overrides.
pub const QUICK_LEASES: &[(&str, &str)] = &[
    ("SLUICE__SOURCE__LEASE_DURATION", "3s"),
    ("SLUICE__SOURCE__CHECKPOINT_INTERVAL", "1s"),
    ("SLUICE__SOURCE__POLL_INTERVAL", "200ms"),
    ("SLUICE__BATCH__MAX_AGE", "200ms"),
];
/// A lease's duration and a take interval, as set above.
pub const LEASE: Duration = Duration::from_secs(3);
pub const TAKE_INTERVAL: Duration = Duration::from_millis(1500);

/// One `sluice run` process.
pub struct Daemon {
    pub name: String,
    child: Child,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Daemon {
    /// Starts `sluice run FILE` as worker `name`, with `env`, logging JSON into `dir`.
    pub fn start(file: &Path, name: &str, env: &[(&str, String)], dir: &Path) -> Self {
        Self::try_start(file, name, env, dir, Duration::from_secs(20))
            .unwrap_or_else(|logs| panic!("{name} never became ready: {logs}"))
    }

    /// As [`Daemon::start`], answering its logs when it is not ready `within` (or exits first).
    pub fn try_start(
        file: &Path,
        name: &str,
        env: &[(&str, String)],
        dir: &Path,
        within: Duration,
    ) -> Result<Self, String> {
        Self::try_start_with(file, name, QUICK_LEASES, env, dir, within)
    }

    /// As [`Daemon::try_start`], with `quick` overrides instead of [`QUICK_LEASES`] (a source
    /// without leases has none of their keys).
    pub fn try_start_with(
        file: &Path,
        name: &str,
        quick: &[(&str, &str)],
        env: &[(&str, String)],
        dir: &Path,
        within: Duration,
    ) -> Result<Self, String> {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = sluice();
        cmd.arg("--log-format")
            .arg("json")
            .arg("run")
            .arg(file)
            .args(["--no-progress", "--summary", "json", "--worker-id", name])
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"));
        for (k, v) in quick {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("sluice starts");
        let mut daemon = Self {
            name: name.to_owned(),
            child,
            metrics,
            log,
        };
        let ready = wait_until(within, || {
            daemon.get("/ready").0 == 200 || daemon.exited().is_some()
        });
        match (ready, daemon.exited()) {
            (true, None) => Ok(daemon),
            (_, exited) => Err(format!("{exited:?}: {}", daemon.logs())),
        }
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("its status")
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {signal}");
    }

    /// SIGTERM, then its exit status and summary.
    pub fn stop(mut self) -> (ExitStatus, Value) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("its status") {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .expect("piped")
                    .read_to_string(&mut out)
                    .expect("its summary");
                let summary = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("{e}: {out} {}", self.logs()));
                return (status, summary);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop: {}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9`: gone at once, its leases left owned.
    pub fn kill(mut self) {
        self.child.kill().expect("killed");
        self.child.wait().expect("reaped");
    }

    /// `GET path` on its metrics address: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path).unwrap_or((0, String::new()))
    }

    /// Its metrics: `name{labels}` to value.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        parse_prometheus(&body)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Prometheus text into `name{labels}` → value (comments skipped).
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the metric's series whose name and labels contain every one of `parts`.
pub fn metric(metrics: &BTreeMap<String, f64>, parts: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| v)
        .sum()
}

/// Polls `done` every 100 ms for up to `within`.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// A lease as the table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub owner: Option<String>,
    pub checkpoint: Option<String>,
}

/// The lease table now, by shard.
pub async fn leases(world: &World) -> BTreeMap<String, LeaseRow> {
    let out = world
        .dynamodb
        .scan()
        .table_name(&world.checkpoints)
        .consistent_read(true)
        .send()
        .await;
    let Ok(out) = out else {
        return BTreeMap::new();
    };
    out.items()
        .iter()
        .filter_map(|i| {
            let text = |k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
            Some((
                text("leaseKey")?,
                LeaseRow {
                    owner: text("leaseOwner"),
                    checkpoint: text("checkpoint"),
                },
            ))
        })
        .collect()
}

/// How many leases each worker holds.
pub fn owners(leases: &BTreeMap<String, LeaseRow>) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for row in leases.values() {
        if let Some(o) = &row.owner {
            *count.entry(o.clone()).or_default() += 1;
        }
    }
    count
}

/// Watches the lease table in the background and remembers every checkpoint seen per shard, in
/// order, with the number of the scan that first saw it: to show checkpoints never move
/// backwards, and which shard finished before which began.
pub struct CheckpointWatch {
    seen: Arc<Mutex<Histories>>,
    task: tokio::task::JoinHandle<()>,
}

/// Per shard, each checkpoint seen with the scan that first saw it.
type Histories = HashMap<String, Vec<(u64, String)>>;

fn rank(cp: &str) -> (u8, SequenceNumber) {
    match cp {
        "TRIM_HORIZON" | "LATEST" | "AT_TIMESTAMP" => (0, SequenceNumber::default()),
        "SHARD_END" => (2, SequenceNumber::default()),
        seq => (1, SequenceNumber::new(seq)),
    }
}

impl CheckpointWatch {
    pub fn start(world: &World) -> Self {
        let seen: Arc<Mutex<Histories>> = Arc::default();
        let (client, table) = (world.dynamodb.clone(), world.checkpoints.clone());
        let record = seen.clone();
        let task = tokio::spawn(async move {
            for scan in 0u64.. {
                let out = client
                    .scan()
                    .table_name(&table)
                    .consistent_read(true)
                    .send()
                    .await;
                if let Ok(out) = out {
                    let mut seen = record.lock().unwrap();
                    for item in out.items() {
                        let (Some(AttributeValue::S(key)), Some(AttributeValue::S(cp))) =
                            (item.get("leaseKey"), item.get("checkpoint"))
                        else {
                            continue;
                        };
                        let history = seen.entry(key.clone()).or_default();
                        if history.last().map(|(_, last)| last) != Some(cp) {
                            history.push((scan, cp.clone()));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { seen, task }
    }

    /// The first scan that saw `shard` at a checkpoint `which` accepts.
    pub fn first(&self, shard: &str, which: impl Fn(&str) -> bool) -> Option<u64> {
        let seen = self.seen.lock().unwrap();
        seen.get(shard)?
            .iter()
            .find(|(_, cp)| which(cp))
            .map(|(scan, _)| *scan)
    }

    /// Stops watching; fails if a shard's checkpoint ever moved backwards.
    pub fn assert_monotonic(self) {
        self.task.abort();
        for (shard, history) in self.seen.lock().unwrap().iter() {
            assert!(
                history.windows(2).all(|w| rank(&w[0].1) <= rank(&w[1].1)),
                "{shard}'s checkpoint moved backwards: {history:?}"
            );
        }
    }
}

/// A pipeline file that reads the world's stream and writes each record, with its shard and
/// sequence number, to the JSON-lines file `${OUT}` (one per daemon).
pub fn file_pipeline(dir: &Path) -> PathBuf {
    crate::pipeline_file(
        dir,
        "fleet.toml",
        r#"name = "fleet"

[source]
type = "kinesis"
stream = "${KINESIS_STREAM}"

[[enrichers]]
type = "fields"
set = { shard = "{$meta.shard_id}", seq = "{$meta.sequence_number}" }

[sink]
type = "file"
path = "${OUT}"
fsync = false

[error_sink]
type = "file"
path = "${OUT}.dlq"
"#,
    )
}

/// The lines a daemon wrote with [`file_pipeline`].
pub fn written(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The repository's Waze pipeline.
pub fn waze_pipeline() -> PathBuf {
    root().join("pipelines/waze-persist.toml")
}

/// Polls `done` every 100 ms for up to `within`, without blocking the runtime.
pub async fn eventually(within: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done().await
}
