//! `type = "file"`: appends each record as one JSON line; any record size. A local dead-letter queue.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

/// Appends records to a JSON-lines file.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| BuildError::Unavailable {
                    what: self.path.clone(),
                    message: e.to_string(),
                })?;
            Some(file)
        };
        Ok(Arc::new(FileSink {
            file: Arc::new(Mutex::new(file)),
            fsync: self.fsync,
            path: self.path.clone(),
        }))
    }

    fn describe(&self) -> String {
        format!("file {} (JSON lines)", self.path)
    }
}

struct FileSink {
    file: Arc<Mutex<Option<File>>>,
    fsync: bool,
    path: String,
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
            let file = guard
                .as_mut()
                .ok_or_else(|| "the sink was built for validation only".to_owned())?;
            file.write_all(&buf).map_err(|e| e.to_string())?;
            if fsync {
                file.sync_data().map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
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
}
