//! `type = "file"`: appends each record as one JSON line; any record size. A local dead-letter queue.
//!
//! A write that fails part way (a full disk) is cut back to where it began, so a retry never
//! leaves a torn line before the records it writes again; a torn line a killed process left at
//! the end is cut off when the file is opened again (its record was never counted as stored).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

/// Appends records to a JSON-lines file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file; created if missing, appended to if present.
    pub path: String,
    /// Whether each write is flushed to the disk before it counts as stored (default true).
    #[serde(default = "yes")]
    pub fsync: bool,
}

fn yes() -> bool {
    true
}

/// Checks, without creating anything, that a file could be created at `path`.
pub(crate) fn check_parent(path: &str) -> Result<(), BuildError> {
    let parent = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        Ok(())
    } else {
        Err(BuildError::invalid(
            "path",
            format!(
                "the folder `{}` does not exist; create it or change the path",
                parent.display()
            ),
        ))
    }
}

sluice_core::register_schema!(sink "file" => FileSinkConfig);

#[typetag::serde(name = "file")]
#[async_trait]
impl SinkConfig for FileSinkConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.path.is_empty() {
            return Err(BuildError::invalid("path", "must not be empty"));
        }
        Ok(())
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        check_parent(&self.path)?;
        let file = if ctx.validate_only {
            None
        } else {
            let unavailable = |e: std::io::Error| BuildError::Unavailable {
                what: self.path.clone(),
                message: e.to_string(),
                transient: false,
            };
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(unavailable)?;
            if let Some(cut) = mend_torn_end(&self.path, &mut file).map_err(unavailable)? {
                tracing::warn!(path = %self.path, bytes = cut, "cut a torn last line (a write the process did not finish); its record was not counted as stored");
            }
            Some(file)
        };
        Ok(Arc::new(FileSink {
            file: Arc::new(Mutex::new(file.map(|f| Output::new(Box::new(f))))),
            fsync: self.fsync,
            path: self.path.clone(),
        }))
    }

    fn describe(&self) -> String {
        format!("file {} (JSON lines)", self.path)
    }
}

/// Ends a regular file on a whole line: a last line without its newline is kept (newline added)
/// when it is a whole JSON value, else cut off. Answers how many bytes were cut. Files that are
/// not regular (a pipe, a terminal) or cannot be read back are left as they are.
fn mend_torn_end(path: &str, file: &mut File) -> std::io::Result<Option<u64>> {
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let Ok(mut reader) = File::open(path) else {
        return Ok(None);
    };
    let len = meta.len();
    // Back from the end, a block at a time, to the last newline.
    let mut tail: Vec<u8> = Vec::new();
    let mut from = len;
    let line_start = loop {
        let step = from.min(64 * 1024);
        from -= step;
        let mut block = vec![0; step as usize];
        reader.seek(SeekFrom::Start(from))?;
        reader.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        if let Some(i) = tail.iter().rposition(|b| *b == b'\n') {
            break from + i as u64 + 1;
        }
        if from == 0 {
            break 0;
        }
    };
    if line_start == len {
        return Ok(None);
    }
    let fragment = &tail[tail.len() - (len - line_start) as usize..];
    if serde_json::from_slice::<serde_json::Value>(fragment).is_ok() {
        file.write_all(b"\n")?;
        return Ok(None);
    }
    file.set_len(line_start)?;
    Ok(Some(len - line_start))
}

struct FileSink {
    file: Arc<Mutex<Option<Output>>>,
    fsync: bool,
    path: String,
}

/// What the sink appends to: the file (in tests, a medium that fills up).
trait Appendable: Send {
    /// Appends all of `buf`, or fails having appended part of it.
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()>;
    fn len(&self) -> std::io::Result<u64>;
    /// Cuts it back to `len` bytes.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl Appendable for File {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_all(buf)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }

    fn len(&self) -> std::io::Result<u64> {
        self.metadata().map(|m| m.len())
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        // Opened for appending: the next write goes to the new end.
        self.set_len(len)
    }
}

/// The output and, after a failed write that could not be cut back, where its good part ends.
struct Output {
    to: Box<dyn Appendable>,
    torn_from: Option<u64>,
}

impl Output {
    fn new(to: Box<dyn Appendable>) -> Self {
        Self {
            to,
            torn_from: None,
        }
    }

    /// Appends `buf` whole (and syncs it), or leaves the output as it was before.
    fn append_whole(&mut self, buf: &[u8], fsync: bool) -> Result<(), String> {
        if let Some(good) = self.torn_from {
            self.to.truncate(good).map_err(|e| {
                format!(
                    "a torn write is still at the end and cannot be cut back to {good} bytes: {e}"
                )
            })?;
            self.torn_from = None;
        }
        let start = self.to.len().map_err(|e| e.to_string())?;
        let written = self
            .to
            .append(buf)
            .and_then(|()| if fsync { self.to.sync() } else { Ok(()) });
        written.map_err(|e| match self.to.truncate(start) {
            Ok(()) => e.to_string(),
            Err(cut) => {
                self.torn_from = Some(start);
                format!("{e}; cutting the torn write back to {start} bytes failed too: {cut}")
            }
        })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let buf = crate::json_lines(batch);
        let (file, fsync, path) = (self.file.clone(), self.fsync, self.path.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut guard = file
                .lock()
                .map_err(|_| "the file lock is poisoned".to_owned())?;
            let output = guard
                .as_mut()
                .ok_or_else(|| "the sink was built for validation only".to_owned())?;
            output.append_whole(&buf, fsync)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let result = written.map_err(|e| SinkError::Retryable(format!("writing {path}: {e}")));
        vec![result; batch.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn appends_one_line_per_record_of_any_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl").to_string_lossy().into_owned();
        let config = FileSinkConfig {
            path: path.clone(),
            fsync: true,
        };
        let ctx = BuildContext::new("t", false);
        let sink = config.build(&ctx).await.expect("builds");
        let big = "x".repeat(2 * 1024 * 1024);
        let records: Vec<_> = [json!({"a": 1}), json!({"big": big})]
            .into_iter()
            .map(|value| Record {
                data: Default::default(),
                value,
                meta: Default::default(),
            })
            .collect();
        assert!(sink.write(&records).await.iter().all(Result::is_ok));
        assert!(sink.write(&records[..1]).await.iter().all(Result::is_ok));
        let text = std::fs::read_to_string(&path).expect("written");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1]["big"].as_str().map(str::len),
            Some(2 * 1024 * 1024)
        );
    }

    #[tokio::test]
    async fn a_write_error_is_retryable_for_every_record() {
        let config = FileSinkConfig {
            path: "/dev/full".into(),
            fsync: false,
        };
        let ctx = BuildContext::new("t", false);
        let sink = config.build(&ctx).await.expect("opens");
        let r = Record {
            data: Default::default(),
            value: json!({"a": 1}),
            meta: Default::default(),
        };
        let results = sink.write(&[r.clone(), r]).await;
        assert_eq!(results.len(), 2);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(SinkError::Retryable(_)))),
            "{results:?}"
        );
    }

    /// A medium with room for `room` bytes: an append writes what fits, then fails.
    struct Filling {
        bytes: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<usize>>,
    }

    impl Appendable for Filling {
        fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let mut bytes = self.bytes.lock().unwrap();
            let fits = buf.len().min(*self.room.lock().unwrap() - bytes.len());
            bytes.extend_from_slice(&buf[..fits]);
            if fits < buf.len() {
                return Err(std::io::Error::other("no space left on device"));
            }
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.bytes.lock().unwrap().len() as u64)
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.lock().unwrap().truncate(len as usize);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_short_write_is_cut_back_so_the_retry_leaves_no_torn_line() {
        // Found by review: after a short write the retry appended the whole buffer again, after
        // the part already written: a torn line, and a dead letter only inside it.
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let room = Arc::new(Mutex::new(20));
        let sink = FileSink {
            file: Arc::new(Mutex::new(Some(Output::new(Box::new(Filling {
                bytes: bytes.clone(),
                room: room.clone(),
            }))))),
            fsync: true,
            path: "full.jsonl".into(),
        };
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                data: Default::default(),
                value: json!({"record": i}),
                meta: Default::default(),
            })
            .collect();
        let first = sink.write(&records).await;
        assert!(first
            .iter()
            .all(|r| matches!(r, Err(SinkError::Retryable(_)))));
        assert!(
            bytes.lock().unwrap().is_empty(),
            "cut back to where it began"
        );
        *room.lock().unwrap() = 1 << 20;
        assert!(sink.write(&records).await.iter().all(Result::is_ok));
        let text = String::from_utf8(bytes.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line whole"))
            .collect();
        assert_eq!(lines.len(), 3);
    }

    #[tokio::test]
    async fn a_missing_folder_is_a_build_error_naming_the_path() {
        let config = FileSinkConfig {
            path: "/no/such/folder/x.jsonl".into(),
            fsync: true,
        };
        let ctx = BuildContext::new("t", true);
        let err = config.build(&ctx).await.err().expect("fails");
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
    }

    #[tokio::test]
    async fn a_torn_last_line_left_by_a_killed_process_is_cut_off_at_open() {
        // Found by review: a second Ctrl-C (an immediate exit) can land in the middle of a
        // write; the next run appended after the fragment, gluing it to a good line.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let ctx = BuildContext::new("t", false);
        let config = FileSinkConfig {
            path: path.to_string_lossy().into_owned(),
            fsync: false,
        };
        for (left, mended) in [
            ("{\"a\":1}\n{\"b\":", "{\"a\":1}\n"),
            ("{\"a\":1}\n{\"b\":2}", "{\"a\":1}\n{\"b\":2}\n"),
            ("{\"torn", ""),
            ("{\"a\":1}\n", "{\"a\":1}\n"),
        ] {
            std::fs::write(&path, left).expect("written");
            let sink = config.build(&ctx).await.expect("opens");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), mended, "{left:?}");
            let record = Record {
                data: Default::default(),
                value: json!({"c": 3}),
                meta: Default::default(),
            };
            assert!(sink.write(&[record]).await.iter().all(Result::is_ok));
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text, format!("{mended}{{\"c\":3}}\n"));
        }
    }
}
