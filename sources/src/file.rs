//! `type = "file"`: JSON lines (one record per line), a Lambda Kinesis event file, or JSON
//! documents whose named arrays hold the records; one file, or every file of a folder in name
//! order.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use sluice_core::kinesis_event::KinesisEvent;
use sluice_core::{
    BatchSettings, BuildContext, BuildError, Meta, Shutdown, Source, SourceBatch, SourceConfig,
    SourceError,
};

pub use crate::document::FileFormat;
use crate::document::{self, Documents};
use crate::lines::{json_lines, Origin};

/// Reads records from a file or a folder of files.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, or a folder whose files (not those starting with `.`) are read in name order. A
    /// file's path, as written here (or the folder's path joined with its name), is its records'
    /// stream name; a name ending `.gz` is read as gzip.
    pub path: String,
    /// `jsonl` (the default), `kinesis_event`, or `json` (one document per file, with `records`).
    #[serde(default)]
    pub format: FileFormat,
    /// With `format = "json"`: the arrays whose elements are the records (`["alerts", "jams"]`,
    /// or a dotted path such as `data.items`); each record's `{$meta.record_path}` names its
    /// array. A document with none of them is dead-lettered whole.
    #[serde(default)]
    pub records: Vec<String>,
    /// With `format = "json"`: top-level fields of the document each record carries, record
    /// field = document field (`{ feed_start_millis = "startTimeMillis" }`); set over a field
    /// of the same name in the element.
    #[serde(default)]
    pub document_fields: BTreeMap<String, String>,
}

impl FileSourceConfig {
    fn documents(&self) -> Result<Option<Documents>, BuildError> {
        Documents::from_settings(self.format, &self.records, &self.document_fields)
    }
}

sluice_core::register_schema!(source "file" => FileSourceConfig);

#[typetag::serde(name = "file")]
#[async_trait]
impl SourceConfig for FileSourceConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.path.is_empty() {
            return Err(BuildError::invalid("path", "must not be empty"));
        }
        self.documents().map(drop)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        let cannot_read = |e: std::io::Error| {
            BuildError::invalid("path", format!("cannot read `{}`: {e}", self.path))
        };
        let meta = tokio::fs::metadata(&self.path).await.map_err(cannot_read)?;
        let files = if meta.is_file() {
            vec![self.path.clone()]
        } else if meta.is_dir() {
            folder_files(&self.path).await.map_err(cannot_read)?
        } else {
            return Err(BuildError::invalid(
                "path",
                format!("`{}` is neither a file nor a folder", self.path),
            ));
        };
        if files.is_empty() {
            tracing::warn!(folder = %self.path, "the folder has no files to read");
        }
        Ok(Box::new(FileSource {
            files,
            format: self.format,
            documents: self.documents()?,
            shutdown: ctx.shutdown.clone(),
        }))
    }

    fn describe(&self) -> String {
        let format = match self.format {
            FileFormat::Jsonl => "JSON lines".to_owned(),
            FileFormat::KinesisEvent => "Lambda Kinesis event".to_owned(),
            FileFormat::Json => format!("JSON documents, records in {}", self.records.join(", ")),
        };
        format!("file {} ({format})", self.path)
    }
}

/// The files of `folder`, in name order, as `folder/name`; hidden files and subfolders are not.
async fn folder_files(folder: &str) -> std::io::Result<Vec<String>> {
    let mut entries = tokio::fs::read_dir(folder).await?;
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.file_type().await?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    let folder = folder.trim_end_matches('/');
    Ok(names.into_iter().map(|n| format!("{folder}/{n}")).collect())
}

struct FileSource {
    files: Vec<String>,
    format: FileFormat,
    documents: Option<Documents>,
    shutdown: Shutdown,
}

impl Source for FileSource {
    fn batches(
        self: Box<Self>,
        settings: BatchSettings,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let FileSource {
            files,
            format,
            documents,
            shutdown,
        } = *self;
        stream::iter(files)
            .take_while({
                let shutdown = shutdown.clone();
                move |_| std::future::ready(!shutdown.is_triggered())
            })
            .flat_map(move |path| {
                read_file(path, format, documents.clone(), settings, shutdown.clone())
            })
            .boxed()
    }
}

/// Where a file's records come from: the file's path is their stream, its one shard `file`.
fn origin(path: &str) -> Origin {
    Origin {
        source: "file",
        stream: path.to_owned(),
        shard_id: "file".into(),
    }
}

fn read_file(
    path: String,
    format: FileFormat,
    documents: Option<Documents>,
    settings: BatchSettings,
    shutdown: Shutdown,
) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
    let io = |path: &str| {
        let what = path.to_owned();
        move |source| SourceError::Io { what, source }
    };
    match format {
        // Plain lines are read as they come, and stop at a stop by themselves, handing out
        // what they read.
        FileFormat::Jsonl if !path.ends_with(".gz") => stream::once(async move {
            let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
            let reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
            Ok(json_lines(reader, origin(&path), settings, shutdown))
        })
        .flat_map(flatten_opened)
        .boxed(),
        // Whole files: read at once, then handed out batch by batch; a stop ends them between
        // batches.
        _ => stream::once(async move {
            let bytes = Bytes::from(tokio::fs::read(&path).await.map_err(io(&path))?);
            let base = Meta {
                source: "file".into(),
                stream: path.clone(),
                shard_id: "file".into(),
                ..Meta::default()
            };
            let data = match document::unpacked(&path, bytes.clone()) {
                Ok(data) => data,
                // One dead letter holding the file; the other files go on.
                Err(reason) => {
                    let batch = SourceBatch {
                        shard_id: "file".into(),
                        records: vec![document::refused(bytes, reason, &base)],
                        ack: None,
                    };
                    return Ok(stream::iter([Ok(batch)]).boxed());
                }
            };
            let batches = match (format, documents) {
                (FileFormat::KinesisEvent, _) => read_event(&path, &data, settings)?,
                (FileFormat::Json, Some(documents)) => {
                    let records = documents.split(data, &path, &base);
                    sluice_core::owned_chunks(records, settings.max_records)
                        .map(|records| SourceBatch {
                            shard_id: "file".into(),
                            records,
                            ack: None,
                        })
                        .collect()
                }
                _ => {
                    let reader = tokio::io::BufReader::new(std::io::Cursor::new(data));
                    return Ok(json_lines(reader, origin(&path), settings, shutdown));
                }
            };
            Ok(stream::iter(batches.into_iter().map(Ok))
                .take_until(async move { shutdown.triggered().await })
                .boxed())
        })
        .flat_map(flatten_opened)
        .boxed(),
    }
}

type Batches = BoxStream<'static, Result<SourceBatch, SourceError>>;

fn flatten_opened(opened: Result<Batches, SourceError>) -> Batches {
    match opened {
        Ok(batches) => batches,
        Err(e) => stream::once(async { Err(e) }).boxed(),
    }
}

fn read_event(
    path: &str,
    bytes: &[u8],
    settings: BatchSettings,
) -> Result<Vec<SourceBatch>, SourceError> {
    let event: KinesisEvent = serde_json::from_slice(bytes).map_err(|e| {
        SourceError::Format(format!(
            "{path} is not a Lambda Kinesis event ({{\"Records\": [...]}}): {e}"
        ))
    })?;
    let mut batches = Vec::new();
    for (shard_id, records) in event.into_shard_batches("file") {
        for records in sluice_core::owned_chunks(records, settings.max_records) {
            batches.push(SourceBatch {
                shard_id: shard_id.clone(),
                records,
                ack: None,
            });
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn read_all(config: FileSourceConfig) -> Vec<sluice_core::RawRecord> {
        let ctx = BuildContext::new("t", false);
        let source = config.build(&ctx).await.expect("builds");
        let settings = BatchSettings {
            max_records: 2,
            max_age: Duration::from_secs(60),
        };
        source
            .batches(settings)
            .map(|b| b.expect("batch").records)
            .concat()
            .await
    }

    #[tokio::test]
    async fn a_folder_is_read_file_by_file_in_name_order_gzip_included() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            r#"{"t": 2, "alerts": [{"u": "b1"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"t": 1, "alerts": [{"u": "a1"}, {"u": "a2"}], "jams": [{"u": "j"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.json"), "not read").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(br#"{"t": 3, "jams": [{"u": "c1"}]}"#).unwrap();
        std::fs::write(dir.path().join("c.json.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("d.json"), "{\"t\": 4, \"alerts\": [").unwrap();
        std::fs::write(dir.path().join("e.json.gz"), "not gzip").unwrap();
        std::fs::write(
            dir.path().join("f.json"),
            r#"{"t": 6, "alerts": [{"u": "f1"}]}"#,
        )
        .unwrap();
        let folder = dir.path().to_string_lossy().into_owned();
        let records = read_all(FileSourceConfig {
            path: folder.clone(),
            format: FileFormat::Json,
            records: vec!["alerts".into(), "jams".into()],
            document_fields: BTreeMap::from([("feed".into(), "t".into())]),
        })
        .await;
        let seen: Vec<(String, String, String)> = records
            .iter()
            .map(|r| {
                (
                    r.meta.stream.trim_start_matches(&folder).to_owned(),
                    r.meta.sequence_number.to_string(),
                    String::from_utf8_lossy(&r.data).into_owned(),
                )
            })
            .collect();
        let row = |f: &str, s: &str, d: &str| (f.to_owned(), s.to_owned(), d.to_owned());
        assert_eq!(
            seen[..5],
            [
                row("/a.json", "1", r#"{"feed":1,"u":"a1"}"#),
                row("/a.json", "2", r#"{"feed":1,"u":"a2"}"#),
                row("/a.json", "3", r#"{"feed":1,"u":"j"}"#),
                row("/b.json", "1", r#"{"feed":2,"u":"b1"}"#),
                row("/c.json.gz", "1", r#"{"feed":3,"u":"c1"}"#),
            ]
        );
        assert_eq!(
            records.len(),
            8,
            "the broken d.json and e.json.gz are a record each"
        );
        assert!(
            matches!(&records[5].encoding, sluice_core::Encoding::Refused(r) if r.contains("d.json")),
            "{:?}",
            records[5].encoding
        );
        assert!(
            matches!(&records[6].encoding, sluice_core::Encoding::Refused(r) if r.contains("e.json.gz") && r.contains("not gzip")),
            "{:?}",
            records[6].encoding
        );
        assert_eq!(
            &records[7].data[..],
            br#"{"feed":6,"u":"f1"}"#,
            "files after go on"
        );
        assert_eq!(records[0].meta.record_path.as_deref(), Some("alerts"));
        assert_eq!(records[2].meta.record_path.as_deref(), Some("jams"));
        assert_eq!(records[2].meta.record_index, Some(0));
    }

    #[tokio::test]
    async fn gzip_lines_read_as_lines_with_their_numbers() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"a\":1}\n\n{\"a\":2}\n{\"a\":3}\n")
            .unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let records = read_all(FileSourceConfig {
            path: path.to_string_lossy().into_owned(),
            format: FileFormat::Jsonl,
            records: vec![],
            document_fields: BTreeMap::new(),
        })
        .await;
        let seqs: Vec<String> = records
            .iter()
            .map(|r| r.meta.sequence_number.to_string())
            .collect();
        assert_eq!(seqs, ["1", "3", "4"]);
        assert!(records.iter().all(|r| r.meta.shard_id == "file"));
    }
}
