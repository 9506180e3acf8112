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
    /// A KPL aggregated record that cannot be split into its user records.
    #[error("{0}")]
    Aggregate(String),
    /// The source could not make a record of the bytes (see [`Encoding::Refused`]).
    #[error("{0}")]
    Refused(String),
}

/// A base64 payload's bytes (surrounding whitespace ignored), if it is valid base64.
pub(crate) fn base64_payload(data: &[u8]) -> Option<Bytes> {
    base64_simd::STANDARD
        .decode_to_vec(data.trim_ascii())
        .ok()
        .map(Bytes::from)
}

/// Standard base64 (padded, canonical) to bytes, surrounding whitespace ignored, or why not.
///
/// Decoded with `base64-simd` (the AWS SDK's own decoder: 2.2% of the hot path's time, against
/// 5.2% for the `base64` crate); it accepts exactly what the `base64` crate's standard engine
/// accepts (two tests hold the two together), and a refusal is worded by the `base64` crate,
/// which names the bad symbol and its offset.
fn from_base64(data: &[u8]) -> Result<Bytes, String> {
    base64_payload(data).ok_or_else(|| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim_ascii())
            .map_or_else(|e| e.to_string(), |_| "refused by base64-simd".into())
    })
}

/// A payload that did not decode, with the record as received, so nothing is lost.
pub type Undecodable = Box<(DecodeError, RawRecord)>;

/// Decodes a raw record; on failure returns the error with the raw record.
pub fn decode(raw: RawRecord) -> Result<Record, Undecodable> {
    // Raw bytes move into the record (a clone and a drop of a shared `Bytes` are two atomic
    // operations per record).
    let data = match raw.encoding {
        Encoding::Raw => raw.data,
        Encoding::Refused(ref reason) => {
            return Err(Box::new((DecodeError::Refused(reason.to_string()), raw)))
        }
        Encoding::Base64 => match from_base64(&raw.data) {
            Ok(bytes) => bytes,
            Err(e) => return Err(Box::new((DecodeError::Base64(e), raw))),
        },
    };
    let parsed = match crate::kpl::split(&data) {
        Some(Err(e)) => Err(DecodeError::Aggregate(e.to_string())),
        Some(Ok(users)) => Err(DecodeError::Aggregate(format!(
            "a KPL aggregated record of {} user records reached the pipeline whole (only Kinesis \
             sources split them)",
            users.len()
        ))),
        None => parse_object(&data),
    };
    match parsed {
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
pub(crate) mod tests {
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

    /// Any JSON value, nested a few levels.
    pub(crate) fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every byte value at every place of a valid encoding long enough for base64-simd's vector
    /// loop, and CR/LF, spaces and missing padding inside it: base64-simd accepts exactly what
    /// the `base64` crate's standard engine accepts, with the same bytes and message.
    #[test]
    fn base64_decoding_agrees_with_the_base64_crate_byte_by_byte() {
        let reference = base64::engine::general_purpose::STANDARD;
        let payload: Vec<u8> = (0..101u8).map(|i| i.wrapping_mul(37)).collect();
        let valid = reference.encode(&payload).into_bytes();
        let mut inputs = Vec::new();
        for at in 0..valid.len() {
            for byte in 0..=255u8 {
                let mut changed = valid.clone();
                changed[at] = byte;
                inputs.push(changed);
            }
            for inserted in [&b"\r\n"[..], b" ", b"\t", b"="] {
                let mut changed = valid.clone();
                changed.splice(at..at, inserted.iter().copied());
                inputs.push(changed);
            }
            inputs.push(valid[..at].to_vec());
        }
        for len in 0..300 {
            inputs.push(reference.encode(vec![0xA5; len]).into_bytes());
        }
        for input in &inputs {
            let ours = from_base64(input).map(|b| b.to_vec());
            let theirs = reference
                .decode(input.trim_ascii())
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(base64_payload(input).map(|b| b.to_vec()), theirs.ok());
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic: a record is an object, or a reason with the payload kept.
        #[test]
        fn any_bytes_decode_to_an_object_or_a_reason_keeping_the_payload(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            base64 in proptest::prelude::any::<bool>(),
        ) {
            let encoding = if base64 { Encoding::Base64 } else { Encoding::Raw };
            match decode(raw(&data, encoding)) {
                Ok(record) => proptest::prop_assert!(record.value.is_object()),
                Err(undecodable) => {
                    let (error, kept) = *undecodable;
                    proptest::prop_assert!(!error.to_string().is_empty());
                    if !base64 || matches!(error, DecodeError::Base64(_)) {
                        proptest::prop_assert_eq!(&kept.data[..], &data[..]);
                    }
                }
            }
        }

        /// base64-simd accepts exactly what the `base64` crate's standard engine accepts, with
        /// the same bytes: text from the base64 alphabet with padding, whitespace and a stray
        /// symbol, and the encodings of arbitrary bytes with a symbol changed (non-canonical
        /// trailing bits among them).
        #[test]
        fn base64_decoding_agrees_with_the_base64_crate(
            text in "[A-Za-z0-9+/=\\s_-]{0,24}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            symbol in "[A-Za-z0-9+/=]",
        ) {
            let reference = base64::engine::general_purpose::STANDARD;
            let mut encoded = reference.encode(&bytes).into_bytes();
            if !encoded.is_empty() {
                let i = at.index(encoded.len());
                encoded[i] = symbol.as_bytes()[0];
            }
            for input in [text.as_bytes(), &encoded[..]] {
                let ours = from_base64(input).map(|b| b.to_vec());
                let theirs = reference.decode(input.trim_ascii());
                proptest::prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", input);
                if let (Ok(ours), Ok(theirs)) = (&ours, &theirs) {
                    proptest::prop_assert_eq!(ours, theirs);
                }
                if let (Err(ours), Err(theirs)) = (ours, theirs) {
                    proptest::prop_assert_eq!(ours, theirs.to_string());
                }
            }
        }

        /// JSON text decodes exactly when it is an object, to the very value written.
        #[test]
        fn json_decodes_exactly_when_it_is_an_object(value in any_json()) {
            let text = value.to_string();
            match decode(raw(text.as_bytes(), Encoding::Raw)) {
                Ok(record) => {
                    proptest::prop_assert!(value.is_object());
                    proptest::prop_assert_eq!(record.value, value);
                }
                Err(undecodable) => {
                    proptest::prop_assert!(!value.is_object());
                    proptest::prop_assert!(matches!(undecodable.0, DecodeError::NotAnObject(_)));
                }
            }
        }
    }
}
