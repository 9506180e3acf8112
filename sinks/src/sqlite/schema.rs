//! The table's shape: one column per top-level field, typed by the first value seen.

use rusqlite::types::Value as Sql;
use rusqlite::Connection;
use serde_json::Value;

/// Quotes an identifier for SQL, so any field name is a valid column name.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column name as SQLite compares it: ignoring the case of ASCII letters (only those).
pub(super) fn folded(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The column type for a JSON value: TEXT for strings (and JSON text of objects and arrays),
/// INTEGER for integers and booleans, REAL for other numbers.
pub(super) fn column_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) | Value::Object(_) | Value::Array(_) => "TEXT",
        Value::Bool(_) => "INTEGER",
        Value::Number(n) if n.is_i64() => "INTEGER",
        Value::Number(_) => "REAL",
        Value::Null => "",
    }
}

/// The SQL value for a JSON value.
pub(super) fn to_sql(value: &Value) -> Sql {
    match value {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    }
}

/// The columns of `table`, with whether each is the primary key; empty when the table is absent.
pub(super) fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, bool)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(1)?, row.get::<_, i64>(5)? > 0))
    })?;
    rows.collect()
}

/// Creates `table` with `columns` (name, type), `key` as its primary key.
pub(super) fn create(
    conn: &Connection,
    table: &str,
    key: &str,
    columns: &[(String, &'static str)],
) -> rusqlite::Result<()> {
    let defs: Vec<String> = columns
        .iter()
        .map(|(name, ty)| {
            let pk = if name == key {
                " PRIMARY KEY NOT NULL"
            } else {
                ""
            };
            format!("{} {ty}{pk}", quote(name)).replace("  ", " ")
        })
        .collect();
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote(table),
        defs.join(", ")
    ))
}

/// Adds a column to an existing table.
pub(super) fn add_column(
    conn: &Connection,
    table: &str,
    name: &str,
    ty: &'static str,
) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "ALTER TABLE {} ADD COLUMN {} {ty}",
        quote(table),
        quote(name)
    ))
}
