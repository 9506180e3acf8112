//! JSON records to DynamoDB items, written straight into BatchWriteItem's JSON wire format
//! (`{"PutRequest":{"Item":{"Id":{"S":"..."}}}}`) with the item's size counted on the way, and
//! its key read from the record by the same typing rule ([`Stored`]): no attribute-value map is
//! built per record and serialised again by the SDK.

use serde_json::{Map, Number, Value};

pub use super::key::KeyAttribute;
use super::key::{canonical_number, key_from, ItemKey, Typed};

/// DynamoDB's limit on one item's size.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// DynamoDB keeps 38 significant digits of a number.
const MAX_NUMBER_DIGITS: usize = 38;

/// Appends the record's value as a BatchWriteItem put request to `out` and returns the item's
/// key (to merge duplicates), or why it can never be written: not an object, a number DynamoDB
/// cannot hold, over 400 KB, a missing or mistyped key. On an error `out` is left as it was.
pub fn write_put_request<'a>(
    value: &'a Value,
    all_strings: bool,
    key: &[KeyAttribute],
    out: &mut Vec<u8>,
) -> Result<ItemKey<'a>, String> {
    let start = out.len();
    out.extend_from_slice(br#"{"PutRequest":{"Item":"#);
    let written =
        write_item(value, all_strings, out).and_then(|()| record_key(value, all_strings, key));
    match written {
        Ok(key) => {
            out.extend_from_slice(b"}}");
            Ok(key)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// The record's item alone in the wire format (`{"Id":{"S":"..."}}`), or why DynamoDB would
/// refuse it whatever the table: not an object, a number it cannot hold, over 400 KB.
pub fn item_wire(value: &Value, all_strings: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write_item(value, all_strings, &mut out)?;
    Ok(out)
}

/// Writes the item and checks its size as DynamoDB counts it: attribute names plus values
/// (numbers about one byte per two digits, containers three bytes plus one per element).
fn write_item(value: &Value, all_strings: bool, out: &mut Vec<u8>) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "a DynamoDB item must be a JSON object, not {}",
            kind_of(value)
        ));
    };
    let mut writer = ItemWriter { out, all_strings };
    let size = writer.attributes(map, 0, 0)?;
    if size > MAX_ITEM_BYTES {
        return Err(format!(
            "the item is {size} bytes, over DynamoDB's limit of {MAX_ITEM_BYTES} bytes (400 KB)"
        ));
    }
    Ok(())
}

/// How a JSON value is stored: with `all_strings`, numbers and booleans become strings (as the
/// seed Lambda stored them); `null` stays `NULL`. The one rule for items written and keys read.
enum Stored<'a> {
    S(&'a str),
    N(&'a Number),
    Bool(bool),
    Null,
    L(&'a [Value]),
    M(&'a Map<String, Value>),
}

fn stored(value: &Value, all_strings: bool) -> Stored<'_> {
    match value {
        Value::Null => Stored::Null,
        Value::Bool(b) if all_strings => Stored::S(if *b { "true" } else { "false" }),
        Value::Bool(b) => Stored::Bool(*b),
        // Numbers keep the text they were written with (serde_json's arbitrary precision).
        Value::Number(n) if all_strings => Stored::S(n.as_str()),
        Value::Number(n) => Stored::N(n),
        Value::String(s) => Stored::S(s),
        Value::Array(items) => Stored::L(items),
        Value::Object(map) => Stored::M(map),
    }
}

/// DynamoDB's limit on how deeply maps and lists nest.
const MAX_DEPTH: usize = 32;

/// Writes an item's attributes in the wire format.
struct ItemWriter<'a> {
    out: &'a mut Vec<u8>,
    all_strings: bool,
}

impl ItemWriter<'_> {
    /// `{"name":value,...}`; the size of its attributes, each name counted plus `per_entry`.
    fn attributes(
        &mut self,
        map: &Map<String, Value>,
        per_entry: usize,
        depth: usize,
    ) -> Result<usize, String> {
        self.out.push(b'{');
        let mut size = 0;
        for (i, (name, value)) in map.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_string(self.out, name);
            self.out.push(b':');
            size += per_entry + name.len() + self.attribute(value, depth)?;
        }
        self.out.push(b'}');
        Ok(size)
    }

    /// One attribute value, `{"S":"x"}`, `{"N":"1.5"}`, `{"BOOL":true}`, `{"NULL":true}`,
    /// `{"L":[...]}` or `{"M":{...}}`, and its size; `depth` counts the maps and lists around it.
    fn attribute(&mut self, value: &Value, depth: usize) -> Result<usize, String> {
        let nested = |depth: usize| {
            if depth >= MAX_DEPTH {
                return Err(format!(
                    "the item nests maps and lists more than {MAX_DEPTH} levels deep, DynamoDB's limit"
                ));
            }
            Ok(depth + 1)
        };
        Ok(match stored(value, self.all_strings) {
            Stored::Null => {
                self.out.extend_from_slice(br#"{"NULL":true}"#);
                1
            }
            Stored::Bool(b) => {
                self.out.extend_from_slice(if b {
                    br#"{"BOOL":true}"#
                } else {
                    br#"{"BOOL":false}"#
                });
                1
            }
            Stored::N(n) => {
                let text = dynamodb_number(n)?;
                // A number's text needs no escaping.
                for part in [r#"{"N":""#, text, r#""}"#] {
                    self.out.extend_from_slice(part.as_bytes());
                }
                text.len().div_ceil(2) + 1
            }
            Stored::S(s) => {
                self.out.extend_from_slice(br#"{"S":"#);
                write_string(self.out, s);
                self.out.push(b'}');
                s.len()
            }
            Stored::L(items) => {
                let depth = nested(depth)?;
                self.out.extend_from_slice(br#"{"L":["#);
                let mut size = 3;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    size += 1 + self.attribute(item, depth)?;
                }
                self.out.extend_from_slice(b"]}");
                size
            }
            Stored::M(map) => {
                let depth = nested(depth)?;
                self.out.extend_from_slice(br#"{"M":"#);
                let size = 3 + self.attributes(map, 1, depth)?;
                self.out.push(b'}');
                size
            }
        })
    }
}

/// Appends a JSON string, escaped as serde_json escapes it. Most strings need no escaping: they
/// are found so eight bytes at a time and copied whole.
fn write_string(out: &mut Vec<u8>, s: &str) {
    if needs_escaping(s.as_bytes()) {
        serde_json::to_writer(out, s).expect("a string written into a Vec cannot fail");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte is one JSON escapes: a quote, a backslash or a control character.
fn needs_escaping(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH_BITS: u64 = ONES * 0x80;
    // A byte's high bit is set where it is below `n` (for n ≤ 128): exact for "any byte".
    let any_below = |word: u64, n: u8| word.wrapping_sub(ONES * n as u64) & !word & HIGH_BITS != 0;
    let any_equal = |word: u64, b: u8| any_below(word ^ (ONES * b as u64), 1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        if any_below(word, 0x20) || any_equal(word, b'"') || any_equal(word, b'\\') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A number as written, or why DynamoDB cannot hold it exactly (it would round, never store,
/// an altered number).
fn dynamodb_number(n: &Number) -> Result<&str, String> {
    let text = n.as_str();
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
    Ok(text)
}

/// The key of the item a record's value becomes, its attributes typed as they are stored.
fn record_key<'a>(
    value: &'a Value,
    all_strings: bool,
    key: &[KeyAttribute],
) -> Result<ItemKey<'a>, String> {
    key_from(key, |name| {
        Some(match stored(value.get(name)?, all_strings) {
            Stored::S(s) => Typed::S(s),
            Stored::N(n) => Typed::N(n.as_str()),
            Stored::Bool(_) => Typed::Bool,
            Stored::Null => Typed::Null,
            Stored::L(_) => Typed::L,
            Stored::M(_) => Typed::M,
        })
    })
}

/// A BatchWriteItem request body, `{"RequestItems":{"<table>":[<put request>,...],...}}`, from
/// each request's table and wire format; each table's requests keep their order.
pub fn batch_write_body<'a, I>(requests: I) -> Vec<u8>
where
    I: Iterator<Item = (&'a str, &'a [u8])> + Clone,
{
    let length: usize = requests.clone().map(|(_, r)| r.len() + 1).sum();
    let mut body = Vec::with_capacity(length + 64);
    body.extend_from_slice(br#"{"RequestItems":{"#);
    let mut tables: Vec<&str> = Vec::new();
    for (table, _) in requests.clone() {
        if tables.contains(&table) {
            continue;
        }
        if !tables.is_empty() {
            body.push(b',');
        }
        tables.push(table);
        write_string(&mut body, table);
        body.extend_from_slice(b":[");
        for (i, (_, request)) in requests.clone().filter(|(t, _)| *t == table).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(request);
        }
        body.push(b']');
    }
    body.extend_from_slice(b"}}");
    body
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

#[cfg(test)]
mod tests;
