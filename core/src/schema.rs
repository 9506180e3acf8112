//! The JSON Schema (draft 2020-12) of pipeline files, for editors and `sluice schema`: every
//! component registered in this program with its settings, types, defaults and doc comments,
//! `type` telling them apart.
//!
//! A component registers its schema beside its typetag name, so a custom component from
//! another crate appears when its program prints the schema:
//!
//! ```ignore
//! #[typetag::serde(name = "my_sink")]
//! impl SinkConfig for MySinkConfig { /* ... */ }
//! sluice_core::register_schema!(sink "my_sink" => MySinkConfig);
//! ```

use serde_json::{json, Map, Value};

pub use inventory;
pub use schemars;

use crate::settings::{BatchSettings, RetryPolicy};

/// Which table of a pipeline file a component goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `[source]`.
    Source,
    /// `[[enrichers]]`.
    Enricher,
    /// `[sink]` and `[error_sink]`.
    Sink,
}

/// A component's schema, registered with [`register_schema!`](crate::register_schema).
pub struct Component {
    /// Where it goes.
    pub kind: Kind,
    /// Its `type`, as typetag knows it.
    pub name: &'static str,
    /// Its settings' schema.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

inventory::collect!(Component);

/// Registers a component config's schema under its `type`: `register_schema!(sink "x" => T)`
/// (or `source`, `enricher`); `T` implements [`schemars::JsonSchema`].
#[macro_export]
macro_rules! register_schema {
    (source $name:literal => $ty:ty) => {
        $crate::register_schema!(@ Source, $name, $ty);
    };
    (enricher $name:literal => $ty:ty) => {
        $crate::register_schema!(@ Enricher, $name, $ty);
    };
    (sink $name:literal => $ty:ty) => {
        $crate::register_schema!(@ Sink, $name, $ty);
    };
    (@ $kind:ident, $name:literal, $ty:ty) => {
        $crate::schema::inventory::submit! {
            $crate::schema::Component {
                kind: $crate::schema::Kind::$kind,
                name: $name,
                schema: <$ty as $crate::schema::schemars::JsonSchema>::json_schema,
            }
        }
    };
}

/// The variants of one kind of component, each its settings plus its `type`, by name.
fn variants(kind: Kind, generator: &mut schemars::SchemaGenerator) -> Vec<Value> {
    let mut components: Vec<&Component> = inventory::iter::<Component>
        .into_iter()
        .filter(|c| c.kind == kind)
        .collect();
    components.sort_by_key(|c| c.name);
    components.dedup_by_key(|c| c.name);
    components
        .into_iter()
        .map(|c| {
            let mut schema: Value = (c.schema)(generator).into();
            if let Value::Object(object) = &mut schema {
                let properties = object
                    .entry("properties")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(properties) = properties {
                    properties.insert(
                        "type".into(),
                        json!({ "const": c.name, "description": "The component." }),
                    );
                }
                let required = object
                    .entry("required")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(required) = required {
                    required.insert(0, json!("type"));
                }
                object.insert("title".into(), json!(c.name));
            }
            schema
        })
        .collect()
}

/// The schema of a pipeline file with every component this program registered.
pub fn pipeline_schema() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let sources = variants(Kind::Source, &mut generator);
    let enrichers = variants(Kind::Enricher, &mut generator);
    let sinks = variants(Kind::Sink, &mut generator);
    let batch: Value = generator.subschema_for::<BatchSettings>().into();
    let retry: Value = generator.subschema_for::<RetryPolicy>().into();
    let definitions: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sluice.dev/pipeline.schema.json",
        "title": "sluice pipeline file",
        "description": "A source, enrichers in order, a sink and an error sink; see README.md.",
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "sink", "error_sink"],
        "properties": {
            "name": {
                "type": "string",
                "minLength": 1,
                "description": "The pipeline's name: in logs, dead letters and default resource names."
            },
            "max_record_age": {
                "type": "string",
                "description": "Records that arrived longer ago than this (\"24h\") are dead-lettered as `expired` instead of written; off when absent."
            },
            "source": { "description": "Where records come from (not read in Lambda).", "oneOf": sources },
            "enrichers": {
                "description": "Enrichers, applied in order.",
                "type": "array",
                "items": { "oneOf": enrichers }
            },
            "sink": { "description": "Where records are stored.", "oneOf": sinks.clone() },
            "error_sink": { "description": "Where dead letters go.", "oneOf": sinks },
            "batch": batch,
            "retry": retry
        },
        "$defs": definitions
    })
}
