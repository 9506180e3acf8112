//! `sluice schema`: the JSON Schema of pipeline files, committed in `pipelines/`, agrees with
//! `validate`: every shipped file validates, a typo does not.

use std::path::Path;

use figment::providers::{Format, Toml};
use serde_json::Value;

use crate::{root, run, sluice};

fn schema() -> Value {
    let (out, stdout, stderr) = run(sluice().arg("schema"));
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str(&stdout).expect("the schema is JSON")
}

/// A pipeline file as the JSON an editor checks against the schema.
fn as_json(path: &Path) -> Value {
    figment::Figment::from(Toml::file_exact(path))
        .extract()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_committed_schema_is_current() {
    let committed = std::fs::read_to_string(root().join("pipelines/sluice.schema.json"))
        .expect("pipelines/sluice.schema.json");
    let committed: Value = serde_json::from_str(&committed).expect("JSON");
    assert!(
        committed == schema(),
        "pipelines/sluice.schema.json is stale: run `cargo run -- schema > pipelines/sluice.schema.json`"
    );
}

#[test]
fn every_shipped_pipeline_file_validates_and_a_typo_does_not() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let validator = jsonschema::validator_for(&schema).expect("a valid draft 2020-12 schema");
    let mut checked = 0;
    for (name, path) in crate::shipped_pipelines() {
        let file = as_json(&path);
        let errors: Vec<String> = validator
            .iter_errors(&file)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        checked += 1;
    }
    assert!(checked >= 5);

    // What `validate` refuses, the schema refuses: a typo'd key, an unknown type, a wrong type.
    let text = std::fs::read_to_string(root().join("pipelines/waze-persist.local.toml")).unwrap();
    for (from, to) in [
        ("key = \"CurationRecordId\"", "kee = \"CurationRecordId\""),
        ("type = \"sqlite\"", "type = \"sqlight\""),
        ("max_records = 500", "max_records = \"many\""),
        (
            "name = \"waze-persist-local\"",
            "nmae = \"waze-persist-local\"",
        ),
    ] {
        let broken = text.replacen(from, to, 1);
        assert_ne!(broken, text, "{from}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &broken).unwrap();
        assert!(
            !validator.is_valid(&as_json(&path)),
            "the schema refuses {to}"
        );
        let (out, _, _) = run(sluice().arg("validate").arg(&path));
        assert_eq!(out.status.code(), Some(2), "validate refuses {to}");
    }
}

#[test]
fn components_carry_their_settings_defaults_and_descriptions() {
    let schema = schema();
    let sinks = schema["properties"]["sink"]["oneOf"].as_array().unwrap();
    let names: Vec<&str> = sinks
        .iter()
        .map(|s| s["properties"]["type"]["const"].as_str().unwrap())
        .collect();
    for expected in ["dynamodb", "file", "s3", "sqlite", "sqs", "stdout"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let dynamodb = sinks
        .iter()
        .find(|s| s["properties"]["type"]["const"] == "dynamodb")
        .unwrap();
    assert_eq!(dynamodb["additionalProperties"], false);
    assert_eq!(dynamodb["properties"]["max_concurrency"]["default"], 4);
    assert!(dynamodb["properties"]["table"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("ARN")));
    let sources = schema["properties"]["source"]["oneOf"].as_array().unwrap();
    assert!(sources
        .iter()
        .any(|s| s["properties"]["type"]["const"] == "kinesis"));
}
