//! JSON records to DynamoDB items: attribute values, the item's size, and its key.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, ScalarAttributeType, WriteRequest};
use serde_json::Value;

/// DynamoDB's limit on one item's size.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// One key attribute of the table: its name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttribute {
    /// The attribute's name.
    pub name: String,
    /// `S`, `N` or `B`.
    pub kind: ScalarAttributeType,
}

/// A JSON object as a DynamoDB item. With `all_strings`, numbers and booleans become strings
/// (as the seed Lambda stored them); `null` stays `NULL`.
pub fn to_item(
    value: &Value,
    all_strings: bool,
) -> Result<HashMap<String, AttributeValue>, String> {
    match value {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(k, v)| (k.clone(), to_attribute(v, all_strings)))
            .collect()),
        other => Err(format!(
            "a DynamoDB item must be a JSON object, not {}",
            kind_of(other)
        )),
    }
}

fn to_attribute(value: &Value, all_strings: bool) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) if all_strings => AttributeValue::S(b.to_string()),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) if all_strings => AttributeValue::S(n.to_string()),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => {
            AttributeValue::L(items.iter().map(|v| to_attribute(v, all_strings)).collect())
        }
        Value::Object(map) => AttributeValue::M(
            map.iter()
                .map(|(k, v)| (k.clone(), to_attribute(v, all_strings)))
                .collect(),
        ),
    }
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
) -> Result<(String, WriteRequest), String> {
    let item = to_item(value, all_strings)?;
    let item_key = item_key(&item, key)?;
    let size = item_size(&item);
    if size > MAX_ITEM_BYTES {
        return Err(format!(
            "the item is {size} bytes, over DynamoDB's limit of {MAX_ITEM_BYTES} bytes (400 KB)"
        ));
    }
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| e.to_string())?;
    Ok((item_key, WriteRequest::builder().put_request(put).build()))
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

/// The item's key as one string (to merge duplicates), checking each key attribute is present
/// with the table's type and not empty.
pub fn item_key(
    item: &HashMap<String, AttributeValue>,
    key: &[KeyAttribute],
) -> Result<String, String> {
    let mut out = String::new();
    for attr in key {
        let value = item.get(&attr.name).ok_or_else(|| {
            format!(
                "the item has no key attribute `{}`; the table is keyed by it",
                attr.name
            )
        })?;
        let text = match (value, &attr.kind) {
            (AttributeValue::S(s), ScalarAttributeType::S) => s.clone(),
            (AttributeValue::N(n), ScalarAttributeType::N) => n.clone(),
            _ => {
                return Err(format!(
                    "key attribute `{}` must be of type {} for this table, but the item has {}",
                    attr.name,
                    attr.kind.as_str(),
                    type_name(value)
                ))
            }
        };
        if text.is_empty() {
            return Err(format!("key attribute `{}` is an empty string", attr.name));
        }
        out.push_str(&text);
        out.push('\u{0}');
    }
    Ok(out)
}

fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::S(_) => "S (string)",
        AttributeValue::N(_) => "N (number)",
        AttributeValue::B(_) => "B (binary)",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::L(_) => "L (list)",
        AttributeValue::M(_) => "M (map)",
        _ => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str, kind: ScalarAttributeType) -> Vec<KeyAttribute> {
        vec![KeyAttribute {
            name: name.into(),
            kind,
        }]
    }

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

    #[test]
    fn keys_are_checked_for_presence_type_and_emptiness() {
        let k = key("Id", ScalarAttributeType::S);
        let ok = to_item(&json!({"Id": "a"}), false).unwrap();
        assert_eq!(item_key(&ok, &k).unwrap(), "a\u{0}");
        let missing = to_item(&json!({"id": "a"}), false).unwrap();
        assert!(item_key(&missing, &k)
            .unwrap_err()
            .contains("no key attribute `Id`"));
        let number = to_item(&json!({"Id": 5}), false).unwrap();
        let e = item_key(&number, &k).unwrap_err();
        assert!(
            e.contains("must be of type S") && e.contains("N (number)"),
            "{e}"
        );
        let empty = to_item(&json!({"Id": ""}), false).unwrap();
        assert!(item_key(&empty, &k).unwrap_err().contains("empty string"));
        let composite = [
            k[0].clone(),
            KeyAttribute {
                name: "Seq".into(),
                kind: ScalarAttributeType::N,
            },
        ];
        let item = to_item(&json!({"Id": "a", "Seq": 7}), false).unwrap();
        assert_eq!(item_key(&item, &composite).unwrap(), "a\u{0}7\u{0}");
    }
}
