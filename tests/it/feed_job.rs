//! The second real pipeline: the raw Waze feed (JSON documents of alerts, jams and
//! irregularities) into one table per array, locally on SQLite.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::Value as Sql;
use serde_json::Value;

use crate::{root, run, sluice};

pub const ARRAYS: [&str; 3] = ["alerts", "jams", "irregularities"];

/// What the feed should leave in each table, worked out from the files alone: per array, the
/// latest item by key (a later snapshot replaces an earlier one), with its snapshot's times.
pub struct Feed {
    pub latest: BTreeMap<&'static str, BTreeMap<String, (Value, Value, Value)>>,
}

impl Feed {
    pub fn read(folder: &Path) -> Self {
        let mut files: Vec<_> = std::fs::read_dir(folder)
            .expect("feed folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut latest: BTreeMap<&'static str, BTreeMap<String, (Value, Value, Value)>> =
            ARRAYS.iter().map(|a| (*a, BTreeMap::new())).collect();
        for file in files {
            let doc: Value =
                serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("a snapshot");
            for array in ARRAYS {
                for item in doc[array].as_array().into_iter().flatten() {
                    let key = match item.get("uuid").unwrap_or(&item["id"]) {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let times = (doc["startTimeMillis"].clone(), doc["endTimeMillis"].clone());
                    latest
                        .get_mut(array)
                        .unwrap()
                        .insert(key, (item.clone(), times.0, times.1));
                }
            }
        }
        Self { latest }
    }

    pub fn count(&self, array: &str) -> usize {
        self.latest[array].len()
    }
}

fn sample() -> std::path::PathBuf {
    root().join("pipelines/samples/waze-feed")
}

fn count(db: &Path, table: &str) -> usize {
    let conn = rusqlite::Connection::open(db).expect("database");
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .expect("count") as usize
}

/// Every row of `table` as (column, value, SQLite type).
fn rows(db: &Path, table: &str) -> BTreeMap<String, BTreeMap<String, (Sql, String)>> {
    let conn = rusqlite::Connection::open(db).expect("database");
    let names: Vec<String> = conn
        .prepare(&format!("SELECT * FROM {table} LIMIT 0"))
        .expect("table")
        .column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut out = BTreeMap::new();
    for name in &names {
        let sql = format!("SELECT uuid, \"{name}\", typeof(\"{name}\") FROM {table}");
        let mut stmt = conn.prepare(&sql).expect("select");
        let cells = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Sql>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .expect("query");
        for cell in cells {
            let (key, value, ty) = cell.expect("cell");
            out.entry(key)
                .or_insert_with(BTreeMap::new)
                .insert(name.clone(), (value, ty));
        }
    }
    out
}

/// The SQLite cell as the JSON value it was written from: numbers as numbers, text that holds
/// JSON (objects, arrays) parsed back.
fn as_json(cell: &Sql) -> Value {
    match cell {
        Sql::Null => Value::Null,
        Sql::Integer(i) => Value::from(*i),
        Sql::Real(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Sql::Text(t) if t.starts_with('{') || t.starts_with('[') => {
            serde_json::from_str(t).expect("JSON text")
        }
        Sql::Text(t) => Value::String(t.clone()),
        Sql::Blob(_) => panic!("no blobs are written"),
    }
}

/// Numbers compared by value (the database holds f64s and i64s; the feed's text may differ).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => {
            y.as_i64() == Some(i64::from(*x))
        }
        _ => a == b,
    }
}

fn job(feed: &Path, db: &Path, dlq: &Path) -> String {
    let mut cmd = sluice();
    cmd.args(["run", "pipelines/waze-feed.local.toml"])
        .env("WAZE_FEED", feed)
        .env("WAZE_FEED_DB", db)
        .env("WAZE_FEED_DLQ", dlq);
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn the_local_feed_job_stores_each_item_once_typed_and_the_latest_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dlq) = (dir.path().join("feed.db"), dir.path().join("dlq.jsonl"));
    let feed = Feed::read(&sample());
    assert!(
        ARRAYS.iter().all(|a| feed.count(a) > 5),
        "the sample has items of every kind"
    );
    let stdout = job(&sample(), &db, &dlq);
    assert!(stdout.contains("dead-lettered  0"), "{stdout}");
    for array in ARRAYS {
        assert_eq!(count(&db, array), feed.count(array), "{array}");
        let table = rows(&db, array);
        for (key, (item, start, end)) in &feed.latest[array] {
            let row = table
                .get(key)
                .unwrap_or_else(|| panic!("{array} {key} stored"));
            // Every field of the latest item, typed: numbers as numbers, nested values as JSON.
            for (field, value) in item.as_object().unwrap() {
                let (cell, ty) = &row[field];
                let stored = as_json(cell);
                let expected = match (field.as_str(), value) {
                    ("uuid", Value::Number(n)) => Value::String(n.to_string()),
                    _ => value.clone(),
                };
                assert!(
                    same(&stored, &expected),
                    "{array} {key} {field}: {stored} != {expected}"
                );
                if value.is_number() && field != "uuid" {
                    assert!(ty == "integer" || ty == "real", "{array} {field} is {ty}");
                }
            }
            // Fields an earlier snapshot had and the latest lacks are not left over.
            for (column, (cell, _)) in row {
                if item.get(column).is_none() && !column.starts_with("feed_") && column != "uuid" {
                    assert_eq!(*cell, Sql::Null, "{array} {key}: `{column}` left over");
                }
            }
            assert!(same(&as_json(&row["feed_start_millis"].0), start));
            assert!(same(&as_json(&row["feed_end_millis"].0), end));
            assert_eq!(row["feed_start_millis"].1, "integer");
            assert_eq!(row["uuid"].1, "text");
        }
    }
    let alerts = rows(&db, "alerts");
    let location = &alerts.values().next().expect("an alert")["location"].0;
    assert!(as_json(location).get("x").is_some_and(Value::is_number));

    // Again, and an overlapping snapshot alone: no counts change.
    let stdout = job(&sample(), &db, &dlq);
    assert!(
        stdout.contains(&format!("stored         {}", rows_read(&sample()))),
        "{stdout}"
    );
    let second = std::fs::read_dir(sample())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("21-39-00Z"))
        .expect("the middle snapshot");
    job(&second, &db, &dlq);
    for array in ARRAYS {
        assert_eq!(
            count(&db, array),
            feed.count(array),
            "{array} after rereading"
        );
    }
    assert!(!dlq.exists() || std::fs::read_to_string(&dlq).unwrap().is_empty());
}

/// Elements in every named array of every snapshot: what one run reads.
fn rows_read(folder: &Path) -> usize {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|e| {
            let doc: Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            ARRAYS
                .iter()
                .map(|a| doc[*a].as_array().map_or(0, Vec::len))
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn a_broken_snapshot_is_one_dead_letter_naming_its_file_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed_dir = dir.path().join("feed");
    std::fs::create_dir(&feed_dir).unwrap();
    for entry in std::fs::read_dir(sample()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, feed_dir.join(path.file_name().unwrap())).unwrap();
    }
    let broken = "waze-feed-2019-03-22T21-38-30Z.json";
    let text = "{\"startTimeMillis\": 1553290710000, \"alerts\": [{\"uuid\": \"x\"";
    std::fs::write(feed_dir.join(broken), text).unwrap();
    let (db, dlq) = (dir.path().join("feed.db"), dir.path().join("dlq.jsonl"));
    let stdout = job(&feed_dir, &db, &dlq);
    assert!(stdout.contains("dead-lettered  1"), "{stdout}");
    let feed = Feed::read(&sample());
    for array in ARRAYS {
        assert_eq!(count(&db, array), feed.count(array), "{array}");
    }
    let letters: Vec<Value> = std::fs::read_to_string(&dlq)
        .expect("dlq")
        .lines()
        .map(|l| serde_json::from_str(l).expect("envelope"))
        .collect();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["stage"], "decode");
    let message = letter["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(broken) && message.contains("not a JSON document"),
        "{message}"
    );
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        letter["payload_base64"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(payload, text.as_bytes(), "the document is kept whole");
}
