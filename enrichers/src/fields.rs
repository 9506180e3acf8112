//! `type = "fields"`: set fields from templates, derive uuid v5 ids, rename, drop, keep only.
//!
//! Templates read the record as it reached this enricher. Renames come first, then the fields
//! `set` and `uuid_v5` make (which win over a renamed field of their name), then `drop`, then
//! `keep_only`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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

/// A uuid v5 in the making, as `Uuid::new_v5` makes it: its namespace, then its name's bytes as a
/// template writes them, so a name is hashed without being kept. Its SHA-1 (RustCrypto's) uses
/// the CPU's SHA extensions where there are some; uuid's own is portable code, and was the
/// `fields` enricher's largest cost per record.
struct UuidV5(sha1::Sha1);

impl UuidV5 {
    fn new(namespace: &Uuid) -> Self {
        use sha1::Digest;
        Self(sha1::Sha1::new_with_prefix(namespace.as_bytes()))
    }

    fn finish(self) -> Uuid {
        use sha1::Digest;
        let digest = self.0.finalize();
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_sha1_bytes(bytes).into_uuid()
    }
}

impl std::fmt::Write for UuidV5 {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        sha1::Digest::update(&mut self.0, s.as_bytes());
        Ok(())
    }
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
            // In name order (a BTreeMap's), as `missing_rename` walks it.
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
        // Renames happen at once (two names may swap), then the set fields join.
        for old in self.rename.keys() {
            fields.remove(old);
        }
        fields.extend(self.rename.values().cloned());
        fields.extend(self.set.keys().chain(self.uuid_v5.keys()).cloned());
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
            let mut id = UuidV5::new(&self.namespace);
            t.render_to(record, &mut id)
                .map_err(|Missing(m)| (m, format!("uuid_v5 template for `{field}`")))?;
            let text = id
                .finish()
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .to_owned();
            values.push((field.clone(), Value::String(text)));
        }
        Ok(values)
    }
}

impl Fields {
    /// The first name to rename that the record lacks. Both lists are in name order (serde_json's
    /// map, without `preserve_order`), so one walk finds them all; a miss is confirmed by lookup,
    /// which holds whatever the map's order.
    fn missing_rename(&self, value: &Value) -> Option<&str> {
        let object = value.as_object()?;
        let mut names = object.keys().peekable();
        let all_found = self.rename.iter().all(|(from, _)| {
            while names.next_if(|name| *name < from).is_some() {}
            names.next_if(|name| *name == from).is_some()
        });
        if all_found {
            return None;
        }
        self.rename
            .iter()
            .map(|(from, _)| from.as_str())
            .find(|from| !object.contains_key(*from))
    }

    /// The object renamed, set, dropped and kept, built once from its entries in order (those
    /// kept as they were, then the renamed, then the set: of two with one name the later wins),
    /// instead of a removal and an insertion in the ordered map per name.
    fn reshaped(
        &self,
        object: Map<String, Value>,
        values: Vec<(String, Value)>,
    ) -> Map<String, Value> {
        let wanted = |name: &str| {
            !self.drop.iter().any(|d| d == name)
                && self
                    .keep_only
                    .as_ref()
                    .is_none_or(|keep| keep.iter().any(|k| k == name))
        };
        let mut entries = Vec::with_capacity(object.len() + values.len());
        let mut renamed = Vec::with_capacity(self.rename.len());
        for (mut name, value) in object {
            match self.rename.iter().find(|(from, _)| *from == name) {
                Some((_, to)) if wanted(to) => {
                    // The old name's buffer, where the new one fits.
                    name.clear();
                    name.push_str(to);
                    renamed.push((name, value));
                }
                Some(_) => {}
                None if wanted(&name) => entries.push((name, value)),
                None => {}
            }
        }
        entries.append(&mut renamed);
        entries.extend(values.into_iter().filter(|(name, _)| wanted(name)));
        // A stable sort, then the last of equal names: as successive insertions would leave it.
        entries.into_iter().collect()
    }
}

#[async_trait]
impl Enricher for Fields {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        self.reshape(record)
    }

    fn enrich_now(&self, record: &mut Record) -> Option<Result<Verdict, EnrichError>> {
        Some(self.reshape(record))
    }
}

impl Fields {
    fn reshape(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
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
        if let Some(from) = self.missing_rename(&record.value) {
            return self.if_missing.resolve(from, "rename");
        }
        let object = record
            .value
            .as_object_mut()
            .expect("checked to be an object above");
        *object = self.reshaped(std::mem::take(object), values);
        Ok(Verdict::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_oneof, Just, Strategy};
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
    async fn renames_may_swap_or_replace_names_and_sets_drops_and_keep_only_come_after() {
        let f = build(json!({
            "set": {"c": "{a}!", "d": "set"},
            "rename": {"a": "b", "b": "a", "x": "y", "p": "q"},
            "drop": ["d", "q"],
            "keep_only": ["a", "b", "c", "y", "z", "d", "q"]
        }))
        .await
        .expect("builds");
        let mut r = record(
            json!({"a": 1, "b": 2, "x": "x", "y": "old y", "z": [3], "p": 0, "gone": true}),
            1,
        );
        assert_eq!(f.enrich(&mut r).await, Ok(Verdict::Keep));
        assert_eq!(
            r.value,
            json!({"a": 2, "b": 1, "c": "1!", "y": "x", "z": [3]}),
            "swapped, the renamed `x` over `y`, `c` from the name before renames, `d` set then \
             dropped, `q` renamed then dropped, `gone` not kept"
        );

        let mut r = record(json!({"a": 1, "p": 0, "x": "x"}), 1);
        let err = f.enrich(&mut r).await.expect_err("b is missing");
        assert!(
            matches!(&err, EnrichError::MissingField { field, .. } if field == "b"),
            "{err}"
        );
        let mut r = record(json!({"a": 1, "b": 2, "p": 0, "w": 0}), 1);
        let err = f.enrich(&mut r).await.expect_err("x is missing");
        assert!(
            matches!(&err, EnrichError::MissingField { field, .. } if field == "x"),
            "{err}"
        );

        // Two renamed onto one name: the later `from` (in name order) wins, as before.
        let f = build(json!({"rename": {"a": "t", "b": "t"}, "set": {"u": "{a}"}}))
            .await
            .expect("builds");
        let mut r = record(json!({"a": 1, "b": 2, "t": 0}), 1);
        f.enrich(&mut r).await.expect("enriches");
        assert_eq!(r.value, json!({"t": 2, "u": "1"}));

        // A set field wins over a renamed one of its name.
        let f = build(json!({"rename": {"a": "t"}, "set": {"t": "set"}}))
            .await
            .expect("builds");
        let mut r = record(json!({"a": 1}), 1);
        f.enrich(&mut r).await.expect("enriches");
        assert_eq!(r.value, json!({"t": "set"}));
    }

    #[test]
    fn uuid_v5_ids_are_those_of_the_uuid_crate() {
        let namespaces = [
            default_namespace(),
            Uuid::NAMESPACE_DNS,
            Uuid::NAMESPACE_URL,
        ];
        // Names of every length around SHA-1's 64-byte blocks, and a long one, each written in
        // two pieces as a template writes its parts.
        let names: Vec<String> = (0..200)
            .map(|n| (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect())
            .chain(["é".repeat(2500)])
            .collect();
        for ns in &namespaces {
            for name in &names {
                let mut id = UuidV5::new(ns);
                let (first, second) = name.split_at(name.len() / 2);
                std::fmt::Write::write_str(&mut id, first).expect("hashed");
                std::fmt::Write::write_str(&mut id, second).expect("hashed");
                let expected = Uuid::new_v5(ns, name.as_bytes());
                assert_eq!(id.finish(), expected, "{}", name.len());
            }
        }
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

    /// The settings applied one after another, as the module's documentation states them, or
    /// `None` when a `set` template reads a field the record lacks: templates read the record as
    /// it came; renames (all at once); the `set` fields, which win over renamed ones; `drop`;
    /// `keep_only`. A `set` value is literal text, or `{name}` for a field's text.
    fn applied_in_order(
        config: &FieldsConfig,
        record: &Map<String, Value>,
    ) -> Option<Map<String, Value>> {
        let mut set = Vec::new();
        for (field, template) in &config.set {
            let value = match template.strip_prefix('{') {
                Some(name) => record.get(name.trim_end_matches('}'))?.clone(),
                None => Value::String(template.clone()),
            };
            set.push((field.clone(), value));
        }
        let mut out: Map<String, Value> = record
            .iter()
            .filter(|(name, _)| !config.rename.contains_key(*name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for (from, to) in &config.rename {
            out.insert(to.clone(), record[from].clone());
        }
        out.extend(set);
        out.retain(|name, _| {
            !config.drop.contains(name)
                && config.keep_only.as_ref().is_none_or(|k| k.contains(name))
        });
        Some(out)
    }

    proptest::proptest! {
        /// Any mix of set, rename, drop and keep_only over a few shared names (so renames land
        /// on kept names, sets on renamed ones, drops on either) gives what applying them one
        /// after another gives, and only fields `fields_after` says a record can have.
        #[test]
        fn reshaping_is_the_settings_applied_in_order(
            record in proptest::collection::btree_map("[a-e]", "[a-z]{0,3}", 0..5),
            set in proptest::collection::btree_map("[a-f]", "[X-Z]{1,2}|\\{[a-e]\\}", 0..3),
            rename in proptest::collection::btree_map("[a-e]", "[a-f]", 0..3),
            drop in proptest::collection::vec("[a-f]", 0..3),
            keep_only in proptest::option::of(proptest::collection::vec("[a-f]", 0..4)),
        ) {
            let record: Map<String, Value> =
                record.into_iter().map(|(n, v)| (n, Value::String(v))).collect();
            // Renames read fields the record has (a missing one is `if_missing`'s business).
            let rename = rename.into_iter().filter(|(from, _)| record.contains_key(from)).collect();
            let config = FieldsConfig { set, rename, drop, keep_only, ..FieldsConfig::default() };
            let fields = config.compile().expect("compiles");
            let mut r = super::tests::record(Value::Object(record.clone()), 1);
            let verdict = run_to_end(fields.enrich(&mut r));
            match applied_in_order(&config, &record) {
                Some(expected) => {
                    proptest::prop_assert_eq!(verdict.expect("enriched"), Verdict::Keep);
                    let can_have = config
                        .fields_after(Some(record.keys().cloned().collect()))
                        .expect("a known shape");
                    proptest::prop_assert!(
                        expected.keys().all(|k| can_have.contains(k)),
                        "{:?} has fields beyond {:?}", expected, can_have
                    );
                    proptest::prop_assert_eq!(r.value, Value::Object(expected));
                }
                None => {
                    proptest::prop_assert!(verdict.is_err(), "a missing field dead-letters");
                    proptest::prop_assert_eq!(r.value, Value::Object(record));
                }
            }
        }
    }

    proptest::proptest! {
        /// A uuid v5 hashed as its template renders (`UuidV5`) is the uuid crate's of the
        /// rendered text: alternatives whose first is absent or null, numbers and objects,
        /// positions with and without a KPL sub-sequence, and names that are missing alike.
        #[test]
        fn a_uuid_hashed_while_rendered_is_that_of_the_rendered_name(
            a in proptest::option::of(prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                "[a-z/é]{0,70}".prop_map(Value::String),
            ]),
            b in proptest::option::of("[a-z]{0,5}".prop_map(Value::String)),
            sub_sequence in proptest::option::of(any::<u64>()),
            template in prop_oneof![
                Just("{a|b}/{$meta.position}"),
                Just("{$meta.stream}/{b|a}"),
                Just("x{{{a}}}{$meta.sub_sequence|b}"),
                Just("{a}{a}{a}{a}"),
            ],
        ) {
            let mut value = Map::new();
            value.extend(a.map(|a| ("a".to_owned(), a)));
            value.extend(b.map(|b| ("b".to_owned(), b)));
            let mut r = record(Value::Object(value), 49_590_338);
            r.meta.sub_sequence = sub_sequence;
            let template = Template::parse(template).expect("a template");
            let mut id = UuidV5::new(&default_namespace());
            match (template.render(&r), template.render_to(&r, &mut id)) {
                (Ok(name), Ok(())) => proptest::prop_assert_eq!(
                    id.finish(),
                    Uuid::new_v5(&default_namespace(), name.as_bytes())
                ),
                (Err(Missing(rendered)), Err(Missing(hashed))) => {
                    proptest::prop_assert_eq!(rendered, hashed)
                }
                (rendered, hashed) => proptest::prop_assert!(
                    false,
                    "render gave {:?}, the hasher {:?}", rendered, hashed
                ),
            }
        }
    }

    /// Runs an enricher's future, which makes no call here, to its end.
    fn run_to_end<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(f)
    }
}
