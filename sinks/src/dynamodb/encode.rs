//! JSON records to DynamoDB items: attribute values, the item's size, and its key.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde_json::Value;

pub use super::key::KeyAttribute;
use super::key::{canonical_number, item_key, ItemKey};

/// DynamoDB's limit on one item's size.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// A JSON object as a DynamoDB item. With `all_strings`, numbers and booleans become strings
/// (as the seed Lambda stored them); `null` stays `NULL`.
pub fn to_item(
    value: &Value,
    all_strings: bool,
) -> Result<HashMap<String, AttributeValue>, String> {
    match value {
        Value::Object(map) => to_map(map, all_strings),
        other => Err(format!(
            "a DynamoDB item must be a JSON object, not {}",
            kind_of(other)
        )),
    }
}

/// DynamoDB keeps 38 significant digits of a number.
const MAX_NUMBER_DIGITS: usize = 38;

fn to_attribute(value: &Value, all_strings: bool) -> Result<AttributeValue, String> {
    Ok(match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) if all_strings => AttributeValue::S(b.to_string()),
        Value::Bool(b) => AttributeValue::Bool(*b),
        // Numbers keep the text they were written with (serde_json's arbitrary precision).
        Value::Number(n) if all_strings => AttributeValue::S(n.to_string()),
        Value::Number(n) => AttributeValue::N(dynamodb_number(&n.to_string())?),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(
            items
                .iter()
                .map(|v| to_attribute(v, all_strings))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => AttributeValue::M(to_map(map, all_strings)?),
    })
}

/// An object's attributes, the map sized once (collecting from fallible items would grow it
/// step by step, rehashing every key each time).
fn to_map(
    map: &serde_json::Map<String, Value>,
    all_strings: bool,
) -> Result<HashMap<String, AttributeValue>, String> {
    let mut item = HashMap::with_capacity(map.len());
    for (k, v) in map {
        item.insert(k.clone(), to_attribute(v, all_strings)?);
    }
    Ok(item)
}

/// A number as written, or why DynamoDB cannot hold it exactly (it would round, never store,
/// an altered number).
fn dynamodb_number(text: &str) -> Result<String, String> {
    let digits = canonical_number(text)
        .map(|c| {
            c.trim_start_matches(['+', '-'])
                .split('e')
                .next()
                .map_or(0, str::len)
        })
        .unwrap_or(0);
    if digits > MAX_NUMBER_DIGITS {
        return Err(format!(
            "the number {text} has {digits} significant digits; DynamoDB keeps {MAX_NUMBER_DIGITS} \
             (store it as a string, e.g. with `all_strings = true`)"
        ));
    }
    Ok(text.to_owned())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A record's value as a BatchWriteItem put request, with its key (to merge duplicates), or why it
/// can never be written: not an object, a missing or mistyped key, over 400 KB.
pub fn write_request(
    value: &Value,
    all_strings: bool,
    key: &[KeyAttribute],
) -> Result<(ItemKey, WriteRequest), String> {
    let item = sized_item(value, all_strings)?;
    let item_key = item_key(&item, key)?;
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| e.to_string())?;
    Ok((item_key, WriteRequest::builder().put_request(put).build()))
}

/// The record's item, or why DynamoDB would refuse it whatever the table: not an object, a
/// number it cannot hold, over 400 KB.
pub fn sized_item(
    value: &Value,
    all_strings: bool,
) -> Result<HashMap<String, AttributeValue>, String> {
    let item = to_item(value, all_strings)?;
    let size = item_size(&item);
    if size > MAX_ITEM_BYTES {
        return Err(format!(
            "the item is {size} bytes, over DynamoDB's limit of {MAX_ITEM_BYTES} bytes (400 KB)"
        ));
    }
    Ok(item)
}

/// An attribute value in DynamoDB's JSON wire format, as a BatchWriteItem request carries it:
/// `{"S": "x"}`, `{"N": "1.5"}`, `{"BOOL": true}`, `{"NULL": true}`, `{"L": [...]}`,
/// `{"M": {...}}` (sets and binaries, which JSON records never give, as `{"?": ...}`).
pub fn wire_json(value: &AttributeValue) -> Value {
    let tagged = |tag: &str, v: Value| Value::Object([(tag.to_owned(), v)].into_iter().collect());
    match value {
        AttributeValue::S(s) => tagged("S", Value::String(s.clone())),
        AttributeValue::N(n) => tagged("N", Value::String(n.clone())),
        AttributeValue::Bool(b) => tagged("BOOL", Value::Bool(*b)),
        AttributeValue::Null(b) => tagged("NULL", Value::Bool(*b)),
        AttributeValue::L(items) => tagged("L", items.iter().map(wire_json).collect()),
        AttributeValue::M(map) => tagged("M", item_json(map)),
        other => tagged("?", Value::String(format!("{other:?}"))),
    }
}

/// An item in DynamoDB's JSON wire format.
pub fn item_json(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), wire_json(v)))
            .collect(),
    )
}

/// An item's size as DynamoDB counts it: attribute names plus values (numbers about one byte per
/// two digits, containers three bytes plus one per element).
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(items) => 3 + items.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::Ss(items) | AttributeValue::Ns(items) => {
            items.iter().map(|s| s.len()).sum()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_types_map_to_attribute_types() {
        let item = to_item(
            &json!({"s": "x", "n": 12.5, "b": true, "z": null, "l": [1, "a"], "m": {"k": 2}}),
            false,
        )
        .unwrap();
        assert_eq!(item["s"], AttributeValue::S("x".into()));
        assert_eq!(item["n"], AttributeValue::N("12.5".into()));
        assert_eq!(item["b"], AttributeValue::Bool(true));
        assert_eq!(item["z"], AttributeValue::Null(true));
        assert_eq!(
            item["l"],
            AttributeValue::L(vec![
                AttributeValue::N("1".into()),
                AttributeValue::S("a".into())
            ])
        );
        assert_eq!(
            item["m"],
            AttributeValue::M([("k".to_owned(), AttributeValue::N("2".into()))].into())
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
        let item = to_item(&value, false).unwrap();
        assert_eq!(
            item["big"],
            AttributeValue::N("123456789012345678901234567890".into())
        );
        assert_eq!(
            item["precise"],
            AttributeValue::N("0.10000000000000000555".into())
        );
        assert_eq!(item["n"], AttributeValue::N("1.50".into()));
        let strings = to_item(&value, true).unwrap();
        assert_eq!(
            strings["big"],
            AttributeValue::S("123456789012345678901234567890".into())
        );
        let too_long: Value =
            serde_json::from_str(r#"{"n": 1234567890123456789012345678901234567891}"#).unwrap();
        let e = to_item(&too_long, false).unwrap_err();
        assert!(
            e.contains("40 significant digits") && e.contains("38"),
            "{e}"
        );
    }

    #[test]
    fn all_strings_stores_scalars_as_strings() {
        let item = to_item(&json!({"n": 2019, "b": false, "l": [1]}), true).unwrap();
        assert_eq!(item["n"], AttributeValue::S("2019".into()));
        assert_eq!(item["b"], AttributeValue::S("false".into()));
        assert_eq!(
            item["l"],
            AttributeValue::L(vec![AttributeValue::S("1".into())])
        );
    }

    #[test]
    fn only_objects_are_items() {
        let e = to_item(&json!([1, 2]), false).unwrap_err();
        assert!(e.contains("not an array"), "{e}");
    }

    #[test]
    fn size_counts_names_and_values() {
        let item = to_item(&json!({"ab": "xyz", "n": 1234}), false).unwrap();
        assert_eq!(item_size(&item), 2 + 3 + 1 + 3);
        let big = to_item(&json!({"p": "x".repeat(MAX_ITEM_BYTES)}), false).unwrap();
        assert!(item_size(&big) > MAX_ITEM_BYTES);
    }
}
