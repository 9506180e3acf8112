//! `type = "sqlite"`: the embedded default store. Writes each record as a whole row of a table
//! keyed by one field, so a rerun or a redelivery replaces the row instead of duplicating it; `table` may be a template that
//! routes each record to its own table (`{$meta.record_path}`).

mod row;
mod schema;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::preview::Encoder;
use sluice_core::{BuildContext, BuildError, Record, Sink, SinkConfig, SinkError};

use crate::route::Routes;
use row::{check, RowEncoder, MAX_COLUMNS};
use schema::quote;

/// Upserts records into an SQLite table.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// The database file; created if missing.
    pub path: String,
    /// The table; created on the first write if missing, one column per top-level field. A
    /// template (`waze_{$meta.record_path}`, `{kind}`) sends each record to the table it names.
    pub table: String,
    /// Every table a templated `table` can name: each is checked before any record is read, and
    /// a record naming another is dead-lettered. Without it, tables are checked on first use.
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// The field whose value is the primary key (in every table).
    pub key: String,
}

sluice_core::register_schema!(sink "sqlite" => SqliteSinkConfig);

#[typetag::serde(name = "sqlite")]
#[async_trait]
impl SinkConfig for SqliteSinkConfig {
    fn validate(&self) -> Result<(), BuildError> {
        for (key, value) in [("path", &self.path), ("key", &self.key)] {
            if value.is_empty() {
                return Err(BuildError::invalid(key, "must not be empty"));
            }
        }
        self.routes().map(drop)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        crate::file::check_parent(&self.path)?;
        if ctx.validate_only && !Path::new(&self.path).exists() {
            return Ok(Arc::new(SqliteSink::unopened(self.clone())?));
        }
        let (config, validate_only) = (self.clone(), ctx.validate_only);
        tokio::task::spawn_blocking(move || SqliteSink::open(config, validate_only))
            .await
            .map_err(|e| BuildError::Unavailable {
                what: "sqlite".into(),
                message: e.to_string(),
                transient: false,
            })?
            .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
    }

    fn encoder(&self, _ctx: &BuildContext) -> Result<Box<dyn Encoder>, BuildError> {
        self.validate()?;
        Ok(Box::new(RowEncoder {
            routes: self.routes()?,
            key: self.key.clone(),
        }))
    }

    fn describe(&self) -> String {
        let routes = self
            .routes()
            .map_or_else(|_| self.table.clone(), |r| r.describe());
        format!("sqlite {} {routes} (a row per `{}`)", self.path, self.key)
    }
}

impl SqliteSinkConfig {
    fn routes(&self) -> Result<Routes, BuildError> {
        Routes::new(&self.table, self.tables.as_deref(), |t| t)
    }
}

struct Db {
    conn: Connection,
    /// The columns of each table seen, by [`schema::folded`] name of table and column (SQLite
    /// matches both ignoring ASCII case); an empty set for a table not made yet.
    columns: HashMap<String, HashSet<String>>,
}

struct SqliteSink {
    config: Arc<SqliteSinkConfig>,
    routes: Arc<Routes>,
    db: Arc<Mutex<Option<Db>>>,
}

impl SqliteSink {
    fn unopened(config: SqliteSinkConfig) -> Result<Self, BuildError> {
        Ok(Self {
            routes: Arc::new(config.routes()?),
            config: Arc::new(config),
            db: Arc::new(Mutex::new(None)),
        })
    }

    /// Opens the database and checks an existing table's key; validation opens it read-only.
    fn open(config: SqliteSinkConfig, validate_only: bool) -> Result<Self, BuildError> {
        let unavailable = |e: rusqlite::Error| BuildError::Unavailable {
            what: config.path.clone(),
            message: e.to_string(),
            transient: false,
        };
        let conn = if validate_only {
            Connection::open_with_flags(&config.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(unavailable)?
        } else {
            let conn = Connection::open(&config.path).map_err(unavailable)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(unavailable)?;
            conn
        };
        let mut db = Db {
            conn,
            columns: HashMap::new(),
        };
        let routes = config.routes()?;
        for table in routes.known() {
            db.columns_of(&table, &config)
                .map_err(|e| BuildError::invalid("key", e.to_string()))?;
        }
        Ok(Self {
            db: Arc::new(Mutex::new(Some(db))),
            routes: Arc::new(routes),
            config: Arc::new(config),
        })
    }
}

fn retryable_or_permanent(e: &rusqlite::Error) -> SinkError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull)
        | Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            SinkError::Retryable(e.to_string())
        }
        _ => SinkError::Permanent(e.to_string()),
    }
}

impl Db {
    /// The columns of `table`, read once; an existing table must have the key as its primary key.
    fn columns_of(
        &mut self,
        table: &str,
        config: &SqliteSinkConfig,
    ) -> Result<&mut HashSet<String>, SinkError> {
        let folded = schema::folded(table);
        if !self.columns.contains_key(&folded) {
            let existing = schema::columns(&self.conn, table).map_err(|e| {
                SinkError::Retryable(format!("reading table `{table}`'s columns: {e}"))
            })?;
            let is_key = |c: &str| schema::folded(c) == schema::folded(&config.key);
            if !existing.is_empty() && !existing.iter().any(|(c, pk)| is_key(c) && *pk) {
                return Err(SinkError::Permanent(format!(
                    "table `{table}` in {} exists but `{}` is not its primary key; use its key column or a new table",
                    config.path, config.key
                )));
            }
            let columns = existing.iter().map(|(c, _)| schema::folded(c)).collect();
            self.columns.insert(folded.clone(), columns);
        }
        Ok(self.columns.get_mut(&folded).expect("inserted above"))
    }

    /// Writes each group of records into its table; one answer per record of `batch`.
    fn write(
        &mut self,
        config: &SqliteSinkConfig,
        routes: &Routes,
        batch: &[Record],
    ) -> Vec<Result<(), SinkError>> {
        let mut results: Vec<Result<(), SinkError>> =
            batch.iter().map(|r| check(r, &config.key)).collect();
        for (table, members) in routes.group(batch, &mut results) {
            let records: Vec<&Record> = members.iter().map(|&i| &batch[i]).collect();
            let answers = match self.columns_of(&table, config) {
                Ok(_) => self.upsert(config, &table, &records),
                Err(e) => vec![Err(e); records.len()],
            };
            for (i, answer) in members.into_iter().zip(answers) {
                results[i] = answer;
            }
        }
        results
    }

    /// Creates the table or adds columns so every field of the records still `Ok` in `results`
    /// has one; a record whose new fields would pass SQLite's column limit is refused instead.
    fn widen(
        &mut self,
        config: &SqliteSinkConfig,
        table: &str,
        batch: &[&Record],
        results: &mut [Result<(), SinkError>],
    ) -> rusqlite::Result<()> {
        let mut new: Vec<(String, &'static str)> = Vec::new();
        let mut adding = HashSet::new();
        let columns = self.columns.entry(schema::folded(table)).or_default();
        for (record, result) in batch.iter().zip(results.iter_mut()) {
            if result.is_err() {
                continue;
            }
            let fields: Vec<(&String, &Value)> = record
                .value
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(f, _)| {
                    let f = schema::folded(f);
                    !columns.contains(&f) && !adding.contains(&f)
                })
                .collect();
            let width = columns.len() + new.len() + fields.len();
            if width > MAX_COLUMNS {
                *result = Err(SinkError::Permanent(format!(
                    "its {} new fields would give table `{table}` {width} columns; SQLite holds at most {MAX_COLUMNS}",
                    fields.len(),
                )));
                continue;
            }
            for (field, value) in fields {
                adding.insert(schema::folded(field));
                new.push((field.clone(), schema::column_type(value)));
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        if columns.is_empty() {
            schema::create(&self.conn, table, &config.key, &new)?;
        } else {
            for (name, ty) in &new {
                schema::add_column(&self.conn, table, name, ty)?;
            }
        }
        columns.extend(adding);
        Ok(())
    }

    /// Upserts records that passed [`check`] into `table`, in one transaction.
    fn upsert(
        &mut self,
        config: &SqliteSinkConfig,
        table: &str,
        batch: &[&Record],
    ) -> Vec<Result<(), SinkError>> {
        let mut results: Vec<Result<(), SinkError>> = vec![Ok(()); batch.len()];
        let whole = |e: rusqlite::Error, results: &mut Vec<Result<(), SinkError>>| {
            let err = retryable_or_permanent(&e);
            let err = match err {
                // A schema or transaction failure is not one record's fault: try the batch again.
                SinkError::Permanent(m) => SinkError::Retryable(m),
                retry => retry,
            };
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(err.clone());
            }
        };
        if let Err(e) = self.widen(config, table, batch, &mut results) {
            // The columns may have changed under it (another writer, or a widening that failed
            // part way): read them again, and widen from what the table really has.
            let widened = schema::columns(&self.conn, table).and_then(|columns| {
                let columns = columns.iter().map(|(c, _)| schema::folded(c)).collect();
                self.columns.insert(schema::folded(table), columns);
                self.widen(config, table, batch, &mut results)
            });
            if widened.is_err() {
                whole(e, &mut results);
                return results;
            }
        }
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                whole(e, &mut results);
                return results;
            }
        };
        for (record, result) in batch.iter().zip(results.iter_mut()) {
            if result.is_err() {
                continue;
            }
            let object = record.value.as_object().expect("checked to be an object");
            let names: Vec<String> = object.keys().map(|k| quote(k)).collect();
            // The row becomes the record as a whole (as DynamoDB's PutItem): a column the record
            // lacks is NULL, not what an earlier record left there.
            let sql = format!(
                "INSERT OR REPLACE INTO {} ({}) VALUES ({})",
                quote(table),
                names.join(", "),
                vec!["?"; names.len()].join(", "),
            );
            let values: Vec<rusqlite::types::Value> = object.values().map(schema::to_sql).collect();
            let executed = tx
                .prepare_cached(&sql)
                .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(values)));
            if let Err(e) = executed {
                *result = Err(retryable_or_permanent(&e));
            }
        }
        if let Err(e) = tx.commit() {
            whole(e, &mut results);
        }
        results
    }
}

#[async_trait]
impl Sink for SqliteSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let (db, config, routes) = (self.db.clone(), self.config.clone(), self.routes.clone());
        let batch = batch.to_vec();
        let n = batch.len();
        tokio::task::spawn_blocking(move || {
            let mut guard = match db.lock() {
                Ok(g) => g,
                Err(_) => {
                    return vec![
                        Err(SinkError::Retryable("the database lock is poisoned".into()));
                        n
                    ]
                }
            };
            match guard.as_mut() {
                Some(db) => db.write(&config, &routes, &batch),
                None => vec![
                    Err(SinkError::Permanent(
                        "the sink was built for validation only".into()
                    ));
                    n
                ],
            }
        })
        .await
        .unwrap_or_else(|e| {
            vec![
                Err(SinkError::Retryable(format!(
                    "the database task failed: {e}"
                )));
                n
            ]
        })
    }
}

#[cfg(test)]
mod tests;
