//! A record as a row: what the SQLite sink checks before writing it, and the row `sluice test`
//! shows.

use std::collections::HashMap;

use serde_json::Value;
use sluice_core::preview::{Encoder, Request};
use sluice_core::{Record, SinkError};

use super::schema;
use crate::route::Routes;

/// SQLite's most columns in a table (`SQLITE_MAX_COLUMN` of the bundled build).
pub(super) const MAX_COLUMNS: usize = 2000;
/// Why a record cannot be a row; checked before anything is written.
pub(super) fn check(record: &Record, key: &str) -> Result<(), SinkError> {
    let object = record
        .value
        .as_object()
        .ok_or_else(|| SinkError::Permanent("the record is not a JSON object".into()))?;
    if object.len() > MAX_COLUMNS {
        return Err(SinkError::Permanent(format!(
            "the record has {} fields; a SQLite table holds at most {MAX_COLUMNS} columns",
            object.len()
        )));
    }
    let mut seen = HashMap::with_capacity(object.len());
    for field in object.keys() {
        if let Some(other) = seen.insert(schema::folded(field), field) {
            return Err(SinkError::Permanent(format!(
                "fields `{other}` and `{field}` differ only in case, and SQLite's column names ignore case"
            )));
        }
    }
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(Value::Number(_)) => Ok(()),
        Some(other) => Err(SinkError::Permanent(format!(
            "key field `{key}` must be a non-empty string or a number, not {other}"
        ))),
        None => Err(SinkError::Permanent(format!(
            "the record has no key field `{key}`"
        ))),
    }
}
/// The row a record becomes and its table (`sluice test`): column → value as stored (numbers as
/// numbers, nested values as their JSON text).
pub(super) struct RowEncoder {
    pub(super) routes: Routes,
    pub(super) key: String,
}

impl Encoder for RowEncoder {
    fn encode(&self, record: &Record) -> Result<Request, SinkError> {
        check(record, &self.key)?;
        let table = self.routes.table(record)?;
        let row = record
            .value
            .as_object()
            .expect("checked to be an object")
            .iter()
            .map(|(column, value)| {
                let cell = match schema::to_sql(value) {
                    rusqlite::types::Value::Null => Value::Null,
                    rusqlite::types::Value::Integer(i) => Value::from(i),
                    rusqlite::types::Value::Real(f) => Value::from(f),
                    rusqlite::types::Value::Text(t) => Value::String(t),
                    rusqlite::types::Value::Blob(_) => Value::Null,
                };
                (column.clone(), cell)
            })
            .collect();
        Ok(Request {
            target: table,
            body: Value::Object(row),
        })
    }
}
