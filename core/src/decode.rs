//! Turns a source's raw payload into a record whose value is a JSON object.

use base64::Engine;
use bytes::Bytes;

use crate::record::{Encoding, RawRecord, Record};

/// Why a payload is not a record; the runtime dead-letters it at stage `decode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload has no bytes.
    #[error("the payload is empty")]
    Empty,
    /// The base64 transport encoding is broken.
    #[error("the payload is not valid base64: {0}")]
    Base64(String),
    /// The bytes are not UTF-8.
    #[error("the payload is not valid UTF-8 (first bad byte at offset {0})")]
    Utf8(usize),
    /// The text is not JSON.
    #[error("the payload is not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object.
    #[error("the payload is a JSON {0}, not an object")]
    NotAnObject(&'static str),
}

/// A payload that did not decode, with the record as received, so nothing is lost.
pub type Undecodable = Box<(DecodeError, RawRecord)>;

/// Decodes a raw record; on failure returns the error with the raw record.
pub fn decode(raw: RawRecord) -> Result<Record, Undecodable> {
    let data = match raw.encoding {
        Encoding::Raw => raw.data.clone(),
        Encoding::Base64 => {
            match base64::engine::general_purpose::STANDARD.decode(raw.data.trim_ascii()) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => return Err(Box::new((DecodeError::Base64(e.to_string()), raw))),
            }
        }
    };
    match parse_object(&data) {
        Ok(value) => Ok(Record {
            data,
            value,
            meta: raw.meta,
        }),
        // Past the transport encoding, the decoded bytes are the payload worth keeping.
        Err(e) => Err(Box::new((
            e,
            RawRecord {
                data,
                encoding: Encoding::Raw,
                meta: raw.meta,
            },
        ))),
    }
}

fn parse_object(data: &[u8]) -> Result<serde_json::Value, DecodeError> {
    if data.trim_ascii().is_empty() {
        return Err(DecodeError::Empty);
    }
    let text = std::str::from_utf8(data).map_err(|e| DecodeError::Utf8(e.valid_up_to()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    match value {
        serde_json::Value::Object(_) => Ok(value),
        serde_json::Value::Array(_) => Err(DecodeError::NotAnObject("array")),
        serde_json::Value::String(_) => Err(DecodeError::NotAnObject("string")),
        serde_json::Value::Number(_) => Err(DecodeError::NotAnObject("number")),
        serde_json::Value::Bool(_) => Err(DecodeError::NotAnObject("boolean")),
        serde_json::Value::Null => Err(DecodeError::NotAnObject("null")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Meta;

    fn raw(data: &[u8], encoding: Encoding) -> RawRecord {
        RawRecord {
            data: Bytes::copy_from_slice(data),
            encoding,
            meta: Meta::default(),
        }
    }

    fn err(data: &[u8], encoding: Encoding) -> DecodeError {
        decode(raw(data, encoding)).expect_err("must not decode").0
    }

    #[test]
    fn decodes_objects_raw_and_base64() {
        let r = decode(raw(br#"{"a":"b"}"#, Encoding::Raw)).expect("object");
        assert_eq!(r.value["a"], "b");
        let r = decode(raw(b"eyJhIjoiYiJ9", Encoding::Base64)).expect("base64 object");
        assert_eq!(r.value["a"], "b");
        assert_eq!(&r.data[..], br#"{"a":"b"}"#);
    }

    #[test]
    fn rejects_each_kind_of_bad_payload_with_its_reason() {
        assert_eq!(err(b"", Encoding::Raw), DecodeError::Empty);
        assert_eq!(err(b"  ", Encoding::Raw), DecodeError::Empty);
        assert!(matches!(
            err(b"%%%", Encoding::Base64),
            DecodeError::Base64(_)
        ));
        assert_eq!(
            err(b"{\"a\":\"\xff\"}", Encoding::Raw),
            DecodeError::Utf8(6)
        );
        assert!(matches!(
            err(b"{\"a\":", Encoding::Raw),
            DecodeError::Json(_)
        ));
        assert_eq!(
            err(b"[1]", Encoding::Raw),
            DecodeError::NotAnObject("array")
        );
        assert_eq!(
            err(b"\"s\"", Encoding::Raw),
            DecodeError::NotAnObject("string")
        );
        assert_eq!(
            err(b"null", Encoding::Raw),
            DecodeError::NotAnObject("null")
        );
    }

    #[test]
    fn bad_base64_keeps_the_text_as_received() {
        let (_, kept) = *decode(raw(b"not base64!", Encoding::Base64)).expect_err("bad");
        assert_eq!(&kept.data[..], b"not base64!");
        let (_, kept) = *decode(raw(b"WzFd", Encoding::Base64)).expect_err("array");
        assert_eq!(&kept.data[..], b"[1]");
    }
}
