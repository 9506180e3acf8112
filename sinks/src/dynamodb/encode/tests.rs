use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, ScalarAttributeType, WriteRequest};
use proptest::prelude::*;
use serde_json::json;

use super::super::key::handed_back_key;
use super::*;

/// The item a value becomes, read back from its wire format.
fn item(value: &Value, all_strings: bool) -> Result<Value, String> {
    let wire = item_wire(value, all_strings)?;
    Ok(serde_json::from_slice(&wire).expect("the wire format is JSON"))
}

fn key(name: &str, kind: ScalarAttributeType) -> Vec<KeyAttribute> {
    vec![KeyAttribute {
        name: name.into(),
        kind,
    }]
}

#[test]
fn json_types_map_to_attribute_types() {
    let got = item(
        &json!({"s": "x", "n": 12.5, "b": true, "z": null, "l": [1, "a"], "m": {"k": 2}}),
        false,
    )
    .unwrap();
    assert_eq!(
        got,
        json!({
            "s": {"S": "x"},
            "n": {"N": "12.5"},
            "b": {"BOOL": true},
            "z": {"NULL": true},
            "l": {"L": [{"N": "1"}, {"S": "a"}]},
            "m": {"M": {"k": {"N": "2"}}},
        })
    );
}

#[test]
fn numbers_are_stored_exactly_as_written_or_refused() {
    // Found by review: numbers beyond 64 bits or 17 significant digits were rounded on
    // their way to DynamoDB, which keeps 38.
    let value: Value = serde_json::from_str(
        r#"{"big": 123456789012345678901234567890, "precise": 0.10000000000000000555, "n": 1.50}"#,
    )
    .unwrap();
    let got = item(&value, false).unwrap();
    assert_eq!(got["big"], json!({"N": "123456789012345678901234567890"}));
    assert_eq!(got["precise"], json!({"N": "0.10000000000000000555"}));
    assert_eq!(got["n"], json!({"N": "1.50"}));
    let strings = item(&value, true).unwrap();
    assert_eq!(
        strings["big"],
        json!({"S": "123456789012345678901234567890"})
    );
    let too_long: Value =
        serde_json::from_str(r#"{"n": 1234567890123456789012345678901234567891}"#).unwrap();
    let e = item(&too_long, false).unwrap_err();
    assert!(
        e.contains("40 significant digits") && e.contains("38"),
        "{e}"
    );
}

#[test]
fn all_strings_stores_scalars_as_strings() {
    let got = item(&json!({"n": 2019, "b": false, "l": [1], "z": null}), true).unwrap();
    assert_eq!(
        got,
        json!({"n": {"S": "2019"}, "b": {"S": "false"}, "l": {"L": [{"S": "1"}]}, "z": {"NULL": true}})
    );
}

#[test]
fn only_objects_are_items() {
    let e = item(&json!([1, 2]), false).unwrap_err();
    assert!(e.contains("not an array"), "{e}");
}

#[test]
fn size_counts_names_and_values_as_dynamodb_does() {
    // Names plus values; a number about one byte per two digits plus one; a container three
    // bytes plus one per element (and its names).
    let nested = json!({"m": {"k": "ab"}, "l": [1234, "x"], "b": true, "z": null});
    // m: 1 + (3 + 1 + 1 + 2); l: 1 + (3 + (1 + 3) + (1 + 1)); b: 1 + 1; z: 1 + 1.
    let counted = 8 + 10 + 2 + 2;
    let padding = MAX_ITEM_BYTES - counted - 1;
    let mut fits = nested.clone();
    fits["p"] = json!("x".repeat(padding));
    assert!(item(&fits, false).is_ok(), "exactly 400 KB is allowed");
    let mut over = nested;
    over["p"] = json!("x".repeat(padding + 1));
    let e = item(&over, false).unwrap_err();
    assert!(
        e.contains(&format!("is {} bytes", MAX_ITEM_BYTES + 1)),
        "{e}"
    );
}

#[test]
fn a_refused_record_leaves_the_requests_before_it_as_they_were() {
    let id = key("Id", ScalarAttributeType::S);
    let mut out = Vec::new();
    write_put_request(&json!({"Id": "a"}), false, &id, &mut out).unwrap();
    let before = out.clone();
    for (value, reason) in [
        (json!({"x": 1}), "no key attribute `Id`"),
        (json!({"Id": 5}), "must be of type S"),
        (json!({"Id": ""}), "empty string"),
        (
            json!({"Id": "b", "p": "x".repeat(MAX_ITEM_BYTES)}),
            "over DynamoDB's limit",
        ),
        (json!("text"), "not a string"),
    ] {
        let e = write_put_request(&value, false, &id, &mut out).unwrap_err();
        assert!(e.contains(reason), "{value}: {e}");
        assert_eq!(out, before, "{value}");
    }
    let request: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(request, json!({"PutRequest": {"Item": {"Id": {"S": "a"}}}}));
}

#[test]
fn keys_are_read_as_the_item_stores_them() {
    let by_number = key("Id", ScalarAttributeType::N);
    let by_string = key("Id", ScalarAttributeType::S);
    let key_of = |value: Value, all_strings, key: &[KeyAttribute]| {
        // Keys borrow their value; compared here by what they hold.
        write_put_request(&value, all_strings, key, &mut Vec::new()).map(|k| format!("{k:?}"))
    };
    // Numbers by value; with all_strings a number is a string key, as it is stored.
    assert_eq!(
        key_of(json!({"Id": 1}), false, &by_number),
        key_of(
            serde_json::from_str(r#"{"Id": 1.0}"#).unwrap(),
            false,
            &by_number
        )
    );
    assert_eq!(
        key_of(json!({"Id": 2019}), true, &by_string),
        key_of(json!({"Id": "2019"}), false, &by_string)
    );
    assert_eq!(
        key_of(json!({"Id": true}), true, &by_string),
        key_of(json!({"Id": "true"}), false, &by_string)
    );
    let e = key_of(json!({"Id": [1]}), false, &by_string).unwrap_err();
    assert!(e.contains("the item has L (list)"), "{e}");
    let e = key_of(json!({"Id": 2019}), true, &by_number).unwrap_err();
    assert!(e.contains("the item has S (string)"), "{e}");
}

/// The item as an attribute map, the way the SDK's own types hold it: the reference the wire
/// format must match.
fn reference_item(value: &Value, all_strings: bool) -> HashMap<String, AttributeValue> {
    fn attribute(value: &Value, all_strings: bool) -> AttributeValue {
        match value {
            Value::Null => AttributeValue::Null(true),
            Value::Bool(b) if all_strings => AttributeValue::S(b.to_string()),
            Value::Bool(b) => AttributeValue::Bool(*b),
            Value::Number(n) if all_strings => AttributeValue::S(n.to_string()),
            Value::Number(n) => AttributeValue::N(n.to_string()),
            Value::String(s) => AttributeValue::S(s.clone()),
            Value::Array(items) => {
                AttributeValue::L(items.iter().map(|v| attribute(v, all_strings)).collect())
            }
            Value::Object(map) => AttributeValue::M(
                map.iter()
                    .map(|(k, v)| (k.clone(), attribute(v, all_strings)))
                    .collect(),
            ),
        }
    }
    match attribute(value, all_strings) {
        AttributeValue::M(map) => map,
        _ => unreachable!("generated values are objects"),
    }
}

/// The body the SDK itself serialises for a BatchWriteItem of `items` by table, captured before
/// it is signed (the call then stops, so nothing is sent).
fn sdk_body(
    runtime: &tokio::runtime::Runtime,
    client: &aws_sdk_dynamodb::Client,
    items: &[(&str, HashMap<String, AttributeValue>)],
) -> Vec<u8> {
    let mut tables: HashMap<String, Vec<WriteRequest>> = HashMap::new();
    for (table, item) in items {
        let put = PutRequest::builder()
            .set_item(Some(item.clone()))
            .build()
            .unwrap();
        let request = WriteRequest::builder().put_request(put).build();
        tables.entry((*table).to_owned()).or_default().push(request);
    }
    let captured = Arc::new(Mutex::new(Vec::new()));
    let keep = captured.clone();
    let call = runtime.block_on(
        client
            .batch_write_item()
            .set_request_items(Some(tables))
            .customize()
            .map_request(move |request| {
                *keep.lock().unwrap() = request.body().bytes().unwrap().to_vec();
                Err::<_, _>(std::io::Error::other("captured, not sent"))
            })
            .send(),
    );
    assert!(call.is_err(), "the call is stopped before it is sent");
    let body = captured.lock().unwrap().clone();
    body
}

fn json_value() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (any::<i32>(), 0u32..1_000_000).prop_map(|(i, f)| format!("{i}.{f}")),
        "-?[1-9][0-9]{0,30}(\\.[0-9]{1,5})?(e-?[0-9]{1,2})?",
    ]
    .prop_map(|text| Value::Number(serde_json::from_str(&text).expect("a JSON number")));
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        any::<String>().prop_map(Value::String),
        "[\"\\\\/\\u{0}-\\u{1f}a\u{e9}\u{1f600}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A record with an `Id` (a string, a number or a boolean, so that `all_strings` decides its
/// stored type) and other fields.
fn json_record() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        "[a-z0-9\"]{1,6}".prop_map(Value::String),
        any::<u32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
    ];
    (
        id,
        prop::collection::btree_map("\\PC{0,6}", json_value(), 0..6),
    )
        .prop_map(|(id, m)| {
            let mut record: Map<String, Value> = m.into_iter().collect();
            record.insert("Id".into(), id);
            Value::Object(record)
        })
}

proptest! {
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them(
        s in prop_oneof![
            any::<String>(),
            "[\"\\\\\\u{0}-\\u{1f}\\u{7f}a\u{e9}\u{1f600}]{0,40}",
            // One byte to escape, anywhere in the eight-byte words.
            "[a\u{e9}]{0,20}[\"\\\\\\u{0}-\\u{1f}][a\u{e9}]{0,20}",
        ],
    ) {
        let mut ours = Vec::new();
        write_string(&mut ours, &s);
        prop_assert_eq!(ours, serde_json::to_vec(&s).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_wire_format_is_what_the_sdk_serialises_for_the_same_items(
        records in prop::collection::vec((0usize..3, json_record()), 1..8),
        all_strings in any::<bool>(),
        numbered in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client: aws_sdk_dynamodb::Client =
            runtime.block_on(sluice_core::aws::testing::client("http://127.0.0.1:9"));
        let tables = ["alpha", "beta", "gam\"ma"];
        let kind = if numbered { ScalarAttributeType::N } else { ScalarAttributeType::S };
        let id = key("Id", kind);
        let reference: Vec<(&str, HashMap<String, AttributeValue>)> = records
            .iter()
            .map(|(t, v)| (tables[*t], reference_item(v, all_strings)))
            .collect();

        // Each record's put request, its key as the SDK's item gives it, and the body of them
        // all, tables interleaved.
        let mut encoded = Vec::new();
        let mut ranges = Vec::new();
        let mut written = Vec::new();
        for ((_, value), (table, item)) in records.iter().zip(&reference) {
            let start = encoded.len();
            let ours = write_put_request(value, all_strings, &id, &mut encoded);
            let theirs = handed_back_key(item, &id);
            prop_assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
            if ours.is_ok() {
                ranges.push((*table, start..encoded.len()));
                written.push((*table, item.clone()));
            }
        }
        prop_assume!(!written.is_empty());
        let body = batch_write_body(ranges.iter().map(|(t, r)| (*t, &encoded[r.clone()])));
        // Each table once (a JSON object read back would hide a name given twice); only a
        // table's name is followed by an array, attribute names by an object.
        for table in tables {
            let name = format!("{}:[", serde_json::to_string(table).unwrap());
            let times = body.windows(name.len()).filter(|w| *w == name.as_bytes()).count();
            prop_assert!(times <= 1, "{} named {} times", table, times);
        }
        let ours: Value = serde_json::from_slice(&body).expect("our wire format is JSON");
        let sdk: Value = serde_json::from_slice(&sdk_body(&runtime, &client, &written)).unwrap();
        prop_assert_eq!(ours, sdk);
    }
}

#[test]
fn maps_and_lists_nest_at_most_32_levels_as_dynamodb_allows() {
    let nest = |levels: usize| {
        (0..levels).fold(json!("x"), |inner, level| {
            if level % 2 == 0 {
                json!({ "m": inner })
            } else {
                json!([inner])
            }
        })
    };
    assert!(item(&json!({ "deep": nest(32) }), false).is_ok());
    let e = item(&json!({ "deep": nest(33) }), false).unwrap_err();
    assert!(e.contains("more than 32 levels"), "{e}");
}
