//! `type = "fields"`: set fields from templates, derive uuid v5 ids, rename, drop, keep only.
//!
//! Applied in that order; templates read the record as it reached this enricher, before renames.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::{
    BuildContext, BuildError, EnrichError, Enricher, EnricherConfig, Record, Verdict,
};
use uuid::Uuid;

use crate::missing::IfMissing;
use sluice_core::template::{Missing, Template};

/// The default namespace of `uuid_v5` ids: uuid v5 of the URL `urn:sluice:record` in the URL namespace.
pub fn default_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:sluice:record")
}

/// Reshapes records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    /// Fields set from templates: `S3Key = "s3://{bucket-name}/{s3-key}"`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields set to a deterministic uuid v5 of a template: `Id = "{$meta.stream}/{$meta.sequence_number}"`.
    #[serde(default)]
    pub uuid_v5: BTreeMap<String, String>,
    /// The uuid v5 namespace (a uuid); the default is sluice's own.
    #[serde(default)]
    pub uuid_namespace: Option<String>,
    /// Renames, old name to new name: `"table-name" = "DataTableName"`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Fields removed (absent ones are ignored).
    #[serde(default)]
    pub drop: Vec<String>,
    /// When given, every other field is removed (applied last).
    #[serde(default)]
    pub keep_only: Option<Vec<String>>,
    /// When a template or rename reads an absent field: `dead_letter` (default), `skip` or `keep`.
    #[serde(default)]
    pub if_missing: IfMissing,
}

impl FieldsConfig {
    /// The enricher the settings describe, or the setting that is wrong.
    fn compile(&self) -> Result<Fields, BuildError> {
        let parse = |table: &str, templates: &BTreeMap<String, String>| {
            templates
                .iter()
                .map(|(field, t)| {
                    Template::parse(t)
                        .map(|t| (field.clone(), t))
                        .map_err(|e| BuildError::invalid(format!("{table}.{field}"), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let namespace = match &self.uuid_namespace {
            None => default_namespace(),
            Some(s) => Uuid::parse_str(s).map_err(|e| {
                BuildError::invalid("uuid_namespace", format!("`{s}` is not a uuid: {e}"))
            })?,
        };
        if let Some(field) = self.uuid_v5.keys().find(|f| self.set.contains_key(*f)) {
            return Err(BuildError::invalid(
                format!("uuid_v5.{field}"),
                "is also in `set`; set each field once",
            ));
        }
        Ok(Fields {
            set: parse("set", &self.set)?,
            uuid_v5: parse("uuid_v5", &self.uuid_v5)?,
            namespace,
            rename: self.rename.clone().into_iter().collect(),
            drop: self.drop.clone(),
            keep_only: self.keep_only.clone(),
            if_missing: self.if_missing,
        })
    }
}

sluice_core::register_schema!(enricher "fields" => FieldsConfig);

#[typetag::serde(name = "fields")]
#[async_trait]
impl EnricherConfig for FieldsConfig {
    fn validate(&self) -> Result<(), BuildError> {
        self.compile().map(drop)
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Enricher>, BuildError> {
        Ok(Arc::new(self.compile()?))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>().join(", ");
        if !self.set.is_empty() {
            parts.push(format!("set {}", names(&self.set)));
        }
        if !self.uuid_v5.is_empty() {
            parts.push(format!("uuid v5 {}", names(&self.uuid_v5)));
        }
        if !self.rename.is_empty() {
            parts.push(format!("rename {} fields", self.rename.len()));
        }
        if !self.drop.is_empty() {
            parts.push(format!("drop {}", self.drop.join(", ")));
        }
        if let Some(keep) = &self.keep_only {
            parts.push(format!("keep only {}", keep.join(", ")));
        }
        parts.join("; ")
    }

    fn fields_after(&self, before: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
        if let Some(keep) = &self.keep_only {
            return Some(keep.iter().cloned().collect());
        }
        let mut fields = before?;
        fields.extend(self.set.keys().chain(self.uuid_v5.keys()).cloned());
        for (old, new) in &self.rename {
            fields.remove(old);
            fields.insert(new.clone());
        }
        for field in &self.drop {
            fields.remove(field);
        }
        Some(fields)
    }
}

struct Fields {
    set: Vec<(String, Template)>,
    uuid_v5: Vec<(String, Template)>,
    namespace: Uuid,
    rename: Vec<(String, String)>,
    drop: Vec<String>,
    keep_only: Option<Vec<String>>,
    if_missing: IfMissing,
}

impl Fields {
    fn render_all(&self, record: &Record) -> Result<Vec<(String, Value)>, (String, String)> {
        let mut values = Vec::with_capacity(self.set.len() + self.uuid_v5.len());
        for (field, t) in &self.set {
            let text = t
                .render(record)
                .map_err(|Missing(m)| (m, format!("template for `{field}`")))?;
            values.push((field.clone(), Value::String(text)));
        }
        for (field, t) in &self.uuid_v5 {
            let name = t
                .render(record)
                .map_err(|Missing(m)| (m, format!("uuid_v5 template for `{field}`")))?;
            let id = Uuid::new_v5(&self.namespace, name.as_bytes());
            values.push((field.clone(), Value::String(id.to_string())));
        }
        Ok(values)
    }
}

#[async_trait]
impl Enricher for Fields {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        if !record.value.is_object() {
            return Err(EnrichError::Permanent(
                "the record is not a JSON object".into(),
            ));
        }
        // Everything that can fail is checked before the record changes.
        let values = match self.render_all(record) {
            Ok(values) => values,
            Err((field, context)) => return self.if_missing.resolve(&field, &context),
        };
        if let Some((from, _)) = self
            .rename
            .iter()
            .find(|(from, _)| record.value.get(from).is_none())
        {
            return self.if_missing.resolve(from, "rename");
        }
        let object = record
            .value
            .as_object_mut()
            .expect("checked to be an object above");
        let renamed: Vec<(String, Value)> = self
            .rename
            .iter()
            .filter_map(|(from, to)| object.remove(from).map(|v| (to.clone(), v)))
            .collect();
        object.extend(renamed);
        object.extend(values);
        for field in &self.drop {
            object.remove(field);
        }
        if let Some(keep) = &self.keep_only {
            object.retain(|k, _| keep.iter().any(|f| f == k));
        }
        Ok(Verdict::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_core::Meta;

    async fn build(config: Value) -> Result<Arc<dyn Enricher>, BuildError> {
        let config: FieldsConfig = serde_json::from_value(config).expect("config");
        let ctx = BuildContext::new("t", false);
        config.build(&ctx).await
    }

    fn record(value: Value, seq: u64) -> Record {
        Record {
            data: Default::default(),
            value,
            meta: Meta {
                stream: "waze".into(),
                shard_id: "shardId-0".into(),
                sequence_number: seq.into(),
                ..Meta::default()
            },
        }
    }

    fn waze() -> Value {
        json!({
            "set": {"S3Key": "s3://{bucket-name}/{s3-key}"},
            "uuid_v5": {"Id": "{$meta.stream}/{$meta.shard_id}/{$meta.sequence_number}"},
            "rename": {"table-name": "DataTableName", "state": "State"},
            "drop": ["bucket-name"],
            "keep_only": ["Id", "S3Key", "DataTableName", "State"]
        })
    }

    #[tokio::test]
    async fn reshapes_a_record_with_templates_renames_and_a_deterministic_id() {
        let f = build(waze()).await.expect("builds");
        let input = json!({"bucket-name": "b", "s3-key": "waze/k", "table-name": "alert", "state": "MI", "extra": 1});
        let mut a = record(input.clone(), 7);
        assert_eq!(f.enrich(&mut a).await, Ok(Verdict::Keep));
        assert_eq!(a.value["S3Key"], "s3://b/waze/k");
        assert_eq!(a.value["DataTableName"], "alert");
        assert_eq!(a.value["State"], "MI");
        let keys: Vec<_> = a.value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys.len(),
            4,
            "keep_only leaves exactly the named fields: {keys:?}"
        );

        let mut again = record(input.clone(), 7);
        f.enrich(&mut again).await.expect("enriches");
        assert_eq!(a.value["Id"], again.value["Id"], "same position, same id");
        let mut other = record(input, 8);
        f.enrich(&mut other).await.expect("enriches");
        assert_ne!(a.value["Id"], other.value["Id"]);
        let expected = Uuid::new_v5(&default_namespace(), b"waze/shardId-0/7").to_string();
        assert_eq!(a.value["Id"], expected.as_str());
    }

    #[tokio::test]
    async fn a_missing_field_is_named_and_leaves_the_record_unchanged() {
        let f = build(waze()).await.expect("builds");
        let input = json!({"s3-key": "waze/k", "table-name": "alert", "state": "MI"});
        let mut r = record(input.clone(), 1);
        let err = f.enrich(&mut r).await.expect_err("bucket-name is missing");
        assert!(matches!(&err, EnrichError::MissingField { field, .. } if field == "bucket-name"));
        assert!(err.to_string().contains("template for `S3Key`"), "{err}");
        assert_eq!(r.value, input);

        let mut r = record(json!({"bucket-name": "b", "s3-key": "k", "state": "MI"}), 1);
        let err = f.enrich(&mut r).await.expect_err("table-name is missing");
        assert!(matches!(&err, EnrichError::MissingField { field, .. } if field == "table-name"));

        let mut config = waze();
        config["if_missing"] = json!("skip");
        let f = build(config).await.expect("builds");
        assert_eq!(f.enrich(&mut record(json!({}), 1)).await, Ok(Verdict::Skip));
    }

    #[tokio::test]
    async fn bad_templates_and_namespaces_are_build_errors_naming_the_key() {
        let err = build(json!({"set": {"X": "{open"}}))
            .await
            .err()
            .expect("bad template");
        assert!(err.to_string().contains("set.X"), "{err}");
        let err = build(json!({"uuid_namespace": "nope"}))
            .await
            .err()
            .expect("bad uuid");
        assert!(err.to_string().contains("uuid_namespace"), "{err}");
    }
}
