//! How the bytes of one file or object become records: JSON lines, or one JSON document whose
//! named arrays hold the records (`format = "json"` with `records`), gzip when the name ends
//! `.gz`. Shared by the `file` and `s3` sources.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::{BuildError, Encoding, Meta, RawRecord, SequenceNumber};

/// How a file or object is laid out.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON record per line; blank lines are ignored. Positions: line numbers.
    #[default]
    Jsonl,
    /// A Lambda Kinesis event, `{"Records": [...]}`, with base64 `data`; positions from the event.
    KinesisEvent,
    /// One JSON document per file whose arrays named in `records` hold the records (a feed
    /// snapshot). Positions: the element's place among all the named arrays' elements, from 1.
    Json,
}

/// `format = "json"`: which arrays of a document hold the records, and which of its top-level
/// fields each record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// Each array's path as written (`alerts`, `data.items`) and its steps.
    records: Vec<(String, Vec<String>)>,
    /// Record field ← the document's top-level field.
    carried: Vec<(String, String)>,
}

impl Documents {
    /// The layout the settings describe, `None` for line formats, or the setting that is wrong.
    pub fn from_settings(
        format: FileFormat,
        records: &[String],
        document_fields: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, BuildError> {
        if format != FileFormat::Json {
            if !records.is_empty() || !document_fields.is_empty() {
                let key = if records.is_empty() {
                    "document_fields"
                } else {
                    "records"
                };
                return Err(BuildError::invalid(
                    key,
                    "applies to `format = \"json\"` (one JSON document per file); add it, or \
                     leave this out",
                ));
            }
            return Ok(None);
        }
        if records.is_empty() {
            return Err(BuildError::invalid(
                "records",
                "`format = \"json\"` needs the arrays whose elements are the records, such as \
                 `records = [\"alerts\", \"jams\"]`",
            ));
        }
        let mut paths = Vec::with_capacity(records.len());
        for path in records {
            let steps: Vec<String> = path.split('.').map(str::to_owned).collect();
            if steps.iter().any(String::is_empty) {
                return Err(BuildError::invalid(
                    "records",
                    format!("`{path}` is not a path; name an array as `alerts` or `data.alerts`"),
                ));
            }
            if paths.iter().any(|(p, _)| p == path) {
                return Err(BuildError::invalid(
                    "records",
                    format!("`{path}` is named twice"),
                ));
            }
            paths.push((path.clone(), steps));
        }
        for (field, from) in document_fields {
            if paths.iter().any(|(_, steps)| steps[0] == *from) {
                return Err(BuildError::invalid(
                    "document_fields",
                    format!("`{from}` holds records (it is in `records`); carry other fields"),
                ));
            }
            if field.is_empty() || from.is_empty() {
                return Err(BuildError::invalid(
                    "document_fields",
                    "maps a record field to a top-level field of the document, such as \
                     `{ feed_start_millis = \"startTimeMillis\" }`; neither may be empty",
                ));
            }
        }
        Ok(Some(Self {
            records: paths,
            carried: document_fields
                .iter()
                .map(|(f, from)| (f.clone(), from.clone()))
                .collect(),
        }))
    }

    fn names(&self) -> String {
        self.records
            .iter()
            .map(|(p, _)| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The records of one document named `name`, numbered from 1 across the named arrays in
    /// the order they are named, each with its array (`record_path`) and index there. A
    /// document that is not JSON, is not an object, has none of the arrays, or has a named
    /// field that is not an array is one record refused with the reason: it is dead-lettered
    /// whole, and the other documents go on.
    pub fn split(&self, data: Bytes, name: &str, base: &Meta) -> Vec<RawRecord> {
        let refuse = |reason: String| vec![refused(data.clone(), reason, base)];
        let mut doc: Value = match serde_json::from_slice(&data) {
            Ok(doc) => doc,
            Err(e) => return refuse(format!("`{name}` is not a JSON document: {e}")),
        };
        if !doc.is_object() {
            return refuse(format!(
                "`{name}` is a JSON {}, not an object with the arrays {}",
                kind(&doc),
                self.names()
            ));
        }
        let carried: Vec<(&str, Value)> = self
            .carried
            .iter()
            .filter_map(|(field, from)| Some((field.as_str(), doc.get(from)?.clone())))
            .collect();
        let mut arrays = Vec::with_capacity(self.records.len());
        for (path, steps) in &self.records {
            match take(&mut doc, steps) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => arrays.push((path, items)),
                Some(other) => {
                    return refuse(format!(
                        "`{name}`: `{path}` is a JSON {}, not an array of records",
                        kind(&other)
                    ))
                }
            }
        }
        if arrays.is_empty() {
            return refuse(format!(
                "`{name}` has none of the arrays {} (named in `records`)",
                self.names()
            ));
        }
        let mut out = Vec::with_capacity(arrays.iter().map(|(_, a)| a.len()).sum());
        for (path, items) in arrays {
            for (index, mut item) in items.into_iter().enumerate() {
                if let Value::Object(fields) = &mut item {
                    for (field, value) in &carried {
                        fields.insert((*field).to_owned(), value.clone());
                    }
                }
                let mut meta = base.clone();
                meta.sequence_number = SequenceNumber::from(out.len() as u64 + 1);
                meta.record_path = Some(path.clone());
                meta.record_index = Some(index as u64);
                out.push(RawRecord {
                    data: Bytes::from(serde_json::to_vec(&item).expect("a JSON value serialises")),
                    encoding: Encoding::Raw,
                    meta,
                });
            }
        }
        out
    }
}

/// The lines of `data` as records numbered by line from 1; blank lines are not records but keep
/// their number, and a line's `\r\n` or `\n` is not part of it (as `file` reads lines).
pub fn lines(data: &Bytes, base: &Meta) -> Vec<RawRecord> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut line_no = 0u64;
    while start < data.len() {
        let end = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |at| start + at);
        line_no += 1;
        let mut line = &data[start..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            let mut meta = base.clone();
            meta.sequence_number = SequenceNumber::from(line_no);
            out.push(RawRecord {
                data: data.slice_ref(line),
                encoding: Encoding::Raw,
                meta,
            });
        }
        start = end + 1;
    }
    out
}

/// Takes the value at `steps` out of `doc`.
fn take(doc: &mut Value, steps: &[String]) -> Option<Value> {
    let (last, parents) = steps.split_last()?;
    let mut at = doc;
    for step in parents {
        at = at.get_mut(step)?;
    }
    at.as_object_mut()?.remove(last)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The meta entry of a record a source refused whole (a file or object it could not read):
/// its dead letter holds the whole file, which `sluice redrive` cannot split again.
pub const REFUSED_WHOLE: &str = "sluice:refused";

/// The whole of `data` as one record the pipeline dead-letters with `reason`.
pub fn refused(data: Bytes, reason: String, base: &Meta) -> RawRecord {
    let mut meta = base.clone();
    meta.sequence_number = SequenceNumber::from(1);
    meta.extra.insert(REFUSED_WHOLE.into(), "whole".into());
    RawRecord {
        data,
        encoding: Encoding::Refused(Arc::from(reason)),
        meta,
    }
}

/// The bytes of a file or object named `name`, gunzipped when the name ends `.gz`.
pub fn unpacked(name: &str, data: Bytes) -> Result<Bytes, String> {
    if !name.ends_with(".gz") {
        return Ok(data);
    }
    // A guess at the size, bounded: the gzip header cannot be trusted with an allocation.
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(64 << 20));
    flate2::read::MultiGzDecoder::new(&data[..])
        .read_to_end(&mut out)
        .map_err(|e| format!("`{name}` ends in .gz but is not gzip: {e}"))?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn layout() -> Documents {
        let fields = BTreeMap::from([("feed_start".to_owned(), "startTimeMillis".to_owned())]);
        Documents::from_settings(
            FileFormat::Json,
            &["alerts".into(), "jams".into(), "data.more".into()],
            &fields,
        )
        .unwrap()
        .expect("a document layout")
    }

    fn split(doc: &str) -> Vec<RawRecord> {
        layout().split(Bytes::from(doc.to_owned()), "feed.json", &Meta::default())
    }

    fn reason(r: &RawRecord) -> &str {
        match &r.encoding {
            Encoding::Refused(reason) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn elements_of_the_named_arrays_are_records_carrying_the_document_fields() {
        let records = split(
            r#"{"startTimeMillis": 1553290680000, "alerts": [{"uuid": "a", "n": 1.50}, {"uuid": "b"}],
                "jams": [], "data": {"more": [{"id": 7}, 3]}, "other": [1]}"#,
        );
        let seen: Vec<(String, Option<String>, Option<u64>, Value)> = records
            .iter()
            .map(|r| {
                (
                    r.meta.sequence_number.to_string(),
                    r.meta.record_path.clone(),
                    r.meta.record_index,
                    serde_json::from_slice(&r.data).unwrap(),
                )
            })
            .collect();
        let at = |seq: &str, path: &str, index: u64, v: Value| {
            (seq.to_owned(), Some(path.to_owned()), Some(index), v)
        };
        assert_eq!(
            seen,
            [
                at(
                    "1",
                    "alerts",
                    0,
                    serde_json::from_str(
                        r#"{"uuid": "a", "n": 1.50, "feed_start": 1553290680000}"#
                    )
                    .unwrap()
                ),
                at(
                    "2",
                    "alerts",
                    1,
                    json!({"uuid": "b", "feed_start": 1553290680000u64})
                ),
                at(
                    "3",
                    "data.more",
                    0,
                    json!({"id": 7, "feed_start": 1553290680000u64})
                ),
                at("4", "data.more", 1, json!(3)),
            ]
        );
        // Numbers keep their text (1.50 is not rewritten as 1.5).
        assert!(std::str::from_utf8(&records[0].data)
            .unwrap()
            .contains("1.50"));
        assert!(records.iter().all(|r| r.encoding == Encoding::Raw));
    }

    #[test]
    fn a_broken_document_is_one_refused_record_naming_the_file() {
        for (doc, expected) in [
            ("{\"alerts\": [", "`feed.json` is not a JSON document"),
            ("[1, 2]", "is a JSON array, not an object"),
            (
                "{\"roads\": []}",
                "has none of the arrays `alerts`, `jams`, `data.more`",
            ),
            (
                "{\"alerts\": {\"a\": 1}}",
                "`alerts` is a JSON object, not an array",
            ),
        ] {
            let records = split(doc);
            assert_eq!(records.len(), 1, "{doc}");
            assert!(
                reason(&records[0]).contains(expected),
                "{doc}: {}",
                reason(&records[0])
            );
            assert_eq!(
                &records[0].data[..],
                doc.as_bytes(),
                "the document is kept whole"
            );
        }
        assert!(
            split("{\"jams\": []}").is_empty(),
            "an empty array is no records"
        );
    }

    #[test]
    fn settings_that_do_not_go_together_are_named() {
        let none = BTreeMap::new();
        let e = Documents::from_settings(FileFormat::Json, &[], &none).unwrap_err();
        assert!(e.to_string().contains("records"), "{e}");
        let e = Documents::from_settings(FileFormat::Jsonl, &["a".into()], &none).unwrap_err();
        assert!(
            e.to_string().contains("format = \\\"json\\\"")
                || e.to_string().contains("format = \"json\""),
            "{e}"
        );
        for bad in ["", "a.", "a..b"] {
            assert!(
                Documents::from_settings(FileFormat::Json, &[bad.into()], &none).is_err(),
                "{bad}"
            );
        }
        assert!(
            Documents::from_settings(FileFormat::Json, &["a".into(), "a".into()], &none).is_err()
        );
        assert_eq!(
            Documents::from_settings(FileFormat::Jsonl, &[], &none).unwrap(),
            None
        );
    }

    #[test]
    fn lines_in_memory_are_numbered_as_file_lines_are() {
        let data = Bytes::from_static(b"{\"a\":1}\n\n  \r\n{\"a\":2}\r\nx\n{\"a\":3}");
        let records = lines(&data, &Meta::default());
        let seen: Vec<(String, &[u8])> = records
            .iter()
            .map(|r| (r.meta.sequence_number.to_string(), &r.data[..]))
            .collect();
        assert_eq!(
            seen,
            [
                ("1".to_owned(), &b"{\"a\":1}"[..]),
                ("4".to_owned(), b"{\"a\":2}"),
                ("5".to_owned(), b"x"),
                ("6".to_owned(), b"{\"a\":3}"),
            ]
        );
        assert!(lines(&Bytes::new(), &Meta::default()).is_empty());
    }

    #[test]
    fn gzip_is_undone_by_name_and_bad_gzip_is_named() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"a\":1}\n").unwrap();
        let packed = Bytes::from(gz.finish().unwrap());
        assert_eq!(
            &unpacked("x.jsonl.gz", packed.clone()).unwrap()[..],
            b"{\"a\":1}\n"
        );
        assert_eq!(unpacked("x.jsonl", packed.clone()).unwrap(), packed);
        let e = unpacked("x.gz", Bytes::from_static(b"plain")).unwrap_err();
        assert!(e.contains("`x.gz`") && e.contains("not gzip"), "{e}");
    }
}
