use serde_json::json;

use super::*;

fn record(value: Value) -> Record {
    Record {
        data: Default::default(),
        value,
        meta: Default::default(),
    }
}

async fn sink(dir: &tempfile::TempDir) -> (Arc<dyn Sink>, String) {
    let path = dir.path().join("t.db").to_string_lossy().into_owned();
    let config = SqliteSinkConfig {
        path: path.clone(),
        table: "curated records".into(),
        key: "Id".into(),
        tables: None,
    };
    let ctx = BuildContext::new("t", false);
    (config.build(&ctx).await.expect("opens"), path)
}

#[tokio::test]
async fn creates_typed_columns_and_replaces_rows_on_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, path) = sink(&dir).await;
    let batch = vec![
        record(json!({"Id": "a", "State": "MI", "n": 3, "x": 1.5, "ok": true, "tags": ["t"]})),
        record(json!({"Id": "b", "State": "OH", "n": 4, "x": 2.5, "ok": false, "tags": []})),
    ];
    assert!(sink.write(&batch).await.iter().all(Result::is_ok));
    // Rerun with a changed value, a new field and fields left out: same rows, the row replaced
    // whole (as DynamoDB's PutItem does), column added.
    let again = vec![record(
        json!({"Id": "a", "State": "WI", "n": 3, "extra": "e"}),
    )];
    assert!(sink.write(&again).await.iter().all(Result::is_ok));

    let conn = Connection::open(&path).expect("open");
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM \"curated records\"", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, 2);
    type Row = (
        String,
        i64,
        Option<f64>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let row = |id: &str| -> Row {
        conn.query_row(
            &format!(
                "SELECT State, n, x, ok, tags, extra FROM \"curated records\" WHERE Id = '{id}'"
            ),
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .expect("row")
    };
    assert_eq!(
        row("a"),
        ("WI".into(), 3, None, None, None, Some("e".into()))
    );
    assert_eq!(
        row("b"),
        ("OH".into(), 4, Some(2.5), Some(0), Some("[]".into()), None)
    );
    let types: Vec<(String, String, i64)> = conn
        .prepare("SELECT name, type, pk FROM pragma_table_info('curated records')")
        .expect("pragma")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("types");
    assert!(
        types.contains(&("Id".into(), "TEXT".into(), 1)),
        "{types:?}"
    );
    assert!(
        types.contains(&("n".into(), "INTEGER".into(), 0)),
        "{types:?}"
    );
    assert!(types.contains(&("x".into(), "REAL".into(), 0)), "{types:?}");
}

#[tokio::test]
async fn records_without_a_usable_key_are_rejected_without_failing_neighbours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, path) = sink(&dir).await;
    let batch = vec![
        record(json!({"Id": "a"})),
        record(json!({"NoId": "b"})),
        record(json!({"Id": null})),
        record(json!({"Id": "c"})),
    ];
    let results = sink.write(&batch).await;
    assert!(results[0].is_ok() && results[3].is_ok());
    assert!(matches!(&results[1], Err(SinkError::Permanent(m)) if m.contains("no key field `Id`")));
    assert!(matches!(&results[2], Err(SinkError::Permanent(_))));
    let conn = Connection::open(&path).expect("open");
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM \"curated records\"", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, 2);
}

#[tokio::test]
async fn an_existing_table_keyed_otherwise_is_a_build_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db").to_string_lossy().into_owned();
    Connection::open(&path)
        .and_then(|c| c.execute_batch("CREATE TABLE t (Other TEXT PRIMARY KEY, Id TEXT)"))
        .expect("setup");
    let config = SqliteSinkConfig {
        path,
        table: "t".into(),
        key: "Id".into(),
        tables: None,
    };
    let ctx = BuildContext::new("t", false);
    let err = config.build(&ctx).await.err().expect("wrong key");
    assert!(err.to_string().contains("not its primary key"), "{err}");
}

#[tokio::test]
async fn validation_checks_an_existing_table_without_changing_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db").to_string_lossy().into_owned();
    Connection::open(&path)
        .and_then(|c| c.execute_batch("CREATE TABLE t (Other TEXT PRIMARY KEY, Id TEXT)"))
        .expect("setup");
    let before = std::fs::read(&path).expect("db");
    let config = SqliteSinkConfig {
        path: path.clone(),
        table: "t".into(),
        key: "Id".into(),
        tables: None,
    };
    let ctx = BuildContext::new("t", true);
    let err = config
        .build(&ctx)
        .await
        .err()
        .expect("wrong key is found by validation");
    assert!(err.to_string().contains("not its primary key"), "{err}");
    assert_eq!(
        std::fs::read(&path).expect("db"),
        before,
        "validation wrote nothing"
    );
    assert!(!dir.path().join("t.db-wal").exists());
}

#[tokio::test]
async fn an_empty_path_is_refused_even_when_built_directly() {
    // Found by review: an empty path opened SQLite's temporary database, which keeps nothing.
    let config = SqliteSinkConfig {
        path: String::new(),
        table: "t".into(),
        key: "id".into(),
        tables: None,
    };
    let ctx = BuildContext::new("test", false);
    let e = config.build(&ctx).await.err().expect("refused");
    assert!(e.to_string().contains("must not be empty"), "{e}");
}

fn rows(path: &str) -> i64 {
    let conn = Connection::open(path).expect("open");
    conn.query_row("SELECT COUNT(*) FROM \"curated records\"", [], |r| r.get(0))
        .expect("count")
}

fn refusal(result: &Result<(), SinkError>) -> String {
    match result {
        Err(SinkError::Permanent(reason)) => reason.clone(),
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn field_names_that_differ_only_in_case_share_a_column_or_are_refused() {
    // Found by review: SQLite's column names ignore case, so a field `state` after `State`
    // (or in the same batch) failed the whole batch, on every run.
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, path) = sink(&dir).await;
    let first = vec![record(json!({"Id": "a", "State": "MI"}))];
    assert!(sink.write(&first).await.iter().all(Result::is_ok));
    let second = vec![
        record(json!({"Id": "b", "state": "OH"})),
        record(json!({"Id": "c", "Road": "I-94"})),
        record(json!({"Id": "d", "ROAD": "I-75"})),
        record(json!({"Id": "e", "x": 1, "X": 2})),
    ];
    let results = sink.write(&second).await;
    assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
    assert!(refusal(&results[3]).contains("differ only in case"));
    assert_eq!(rows(&path), 4);
    let conn = Connection::open(&path).expect("open");
    let roads: Vec<String> = conn
        .prepare("SELECT road FROM \"curated records\" WHERE road IS NOT NULL ORDER BY Id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(roads, ["I-94", "I-75"], "one column for Road and ROAD");
}

#[tokio::test]
async fn a_record_past_sqlites_column_limit_is_refused_and_its_neighbours_stored() {
    // Found by review: a record wider than SQLite's 2000 columns failed the whole batch, on
    // every run.
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, path) = sink(&dir).await;
    let wide = |id: &str, prefix: &str, n: usize| {
        let mut fields: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("{prefix}{i}"), json!(i))).collect();
        fields.insert("Id".into(), json!(id));
        record(Value::Object(fields))
    };
    let batch = vec![
        wide("too-wide", "f", MAX_COLUMNS),
        wide("wide", "a", 1500),
        wide("one-too-many", "b", 500),
        wide("narrow", "a", 3),
    ];
    let results = sink.write(&batch).await;
    assert!(refusal(&results[0]).contains("at most 2000 columns"));
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(refusal(&results[2]).contains("2001 columns"));
    assert!(results[3].is_ok(), "{:?}", results[3]);
    assert_eq!(rows(&path), 2);
}

#[tokio::test]
async fn a_column_added_by_another_writer_is_found_not_fatal() {
    // Found by review: a column the sink did not know of (another writer's, or one a widening
    // that failed part way had added) failed every later batch with "duplicate column name".
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, path) = sink(&dir).await;
    let first = vec![record(json!({"Id": "a", "State": "MI"}))];
    assert!(sink.write(&first).await.iter().all(Result::is_ok));
    Connection::open(&path)
        .expect("open")
        .execute_batch("ALTER TABLE \"curated records\" ADD COLUMN Road TEXT")
        .expect("another writer adds a column");
    let second = vec![record(json!({"Id": "b", "Road": "I-94", "Lanes": 3}))];
    let results = sink.write(&second).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(rows(&path), 2);
}

#[tokio::test]
async fn records_are_routed_to_the_table_their_template_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db").to_string_lossy().into_owned();
    {
        // An existing listed table with another key is found before any record is read.
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("CREATE TABLE waze_roads (name TEXT PRIMARY KEY, uuid TEXT)")
            .expect("create");
    }
    let config = |tables: &[&str]| SqliteSinkConfig {
        path: path.clone(),
        table: "waze_{$meta.record_path}".into(),
        key: "uuid".into(),
        tables: Some(tables.iter().map(|t| t.to_string()).collect()),
    };
    let ctx = BuildContext::new("t", false);
    let e = config(&["waze_alerts", "waze_roads"])
        .build(&ctx)
        .await
        .err()
        .expect("the key is checked in every listed table");
    assert!(e.to_string().contains("waze_roads"), "{e}");

    let sink = config(&["waze_alerts", "waze_jams"])
        .build(&ctx)
        .await
        .expect("opens");
    let routed = |path: Option<&str>, value: Value| Record {
        meta: sluice_core::Meta {
            record_path: path.map(str::to_owned),
            ..Default::default()
        },
        ..record(value)
    };
    let batch = vec![
        routed(Some("alerts"), json!({"uuid": "a1", "type": "HAZARD"})),
        routed(Some("jams"), json!({"uuid": "7", "level": 3})),
        routed(Some("alerts"), json!({"uuid": "a2", "type": "JAM"})),
        routed(Some("roads"), json!({"uuid": "r1"})),
        routed(None, json!({"uuid": "n1"})),
    ];
    let results = sink.write(&batch).await;
    assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
    assert!(
        matches!(&results[3], Err(SinkError::Permanent(m)) if m.contains("not among `tables`")),
        "{results:?}"
    );
    assert!(
        matches!(&results[4], Err(SinkError::Permanent(m)) if m.contains("$meta.record_path")),
        "{results:?}"
    );
    let conn = Connection::open(&path).expect("open");
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!((count("waze_alerts"), count("waze_jams")), (2, 1));
    let level: i64 = conn
        .query_row("SELECT level FROM waze_jams WHERE uuid = '7'", [], |r| {
            r.get(0)
        })
        .expect("jam");
    assert_eq!(level, 3);
}

#[tokio::test]
async fn table_names_differing_only_in_case_are_one_table() {
    // Found by review: the column cache was keyed by the name as written, so `alert` after
    // `Alert` found no columns, and its rows failed against a table SQLite had already.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db").to_string_lossy().into_owned();
    let config = SqliteSinkConfig {
        path: path.clone(),
        table: "{kind}".into(),
        key: "id".into(),
        tables: None,
    };
    let sink = config
        .build(&BuildContext::new("t", false))
        .await
        .expect("opens");
    let first = sink
        .write(&[record(json!({"kind": "Alert", "id": "1", "n": 1}))])
        .await;
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    let second = sink
        .write(&[record(
            json!({"kind": "alert", "id": "2", "n": 2, "x": "new"}),
        )])
        .await;
    assert!(second.iter().all(Result::is_ok), "{second:?}");
    let conn = Connection::open(&path).expect("open");
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM alert WHERE x = 'new' OR n = 1",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 2);
}
