//! `type = "filter"`: keep or skip records by a field's value.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::{
    BuildContext, BuildError, EnrichError, Enricher, EnricherConfig, Record, Verdict,
};
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::missing::IfMissing;

/// A test of one top-level field: exactly one of `equals`, `starts_with`, `exists`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The top-level field to test.
    pub field: String,
    /// True when the field equals this value (any JSON value).
    #[serde(default)]
    pub equals: Option<Value>,
    /// True when the field is a string starting with this (false for other types).
    #[serde(default)]
    pub starts_with: Option<String>,
    /// True when the field's presence is this (an absent field is then no error).
    #[serde(default)]
    pub exists: Option<bool>,
}

/// Keeps the records that pass `keep_if`, or skips those that pass `skip_if`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Keep only records for which this holds.
    #[serde(default)]
    pub keep_if: Option<Condition>,
    /// Skip records for which this holds.
    #[serde(default)]
    pub skip_if: Option<Condition>,
    /// When the field is absent: `dead_letter` (default), `skip` or `keep`.
    #[serde(default)]
    pub if_missing: IfMissing,
}

impl Condition {
    fn validate(&self, key: &str) -> Result<(), BuildError> {
        let tests = [
            self.equals.is_some(),
            self.starts_with.is_some(),
            self.exists.is_some(),
        ];
        match tests.iter().filter(|t| **t).count() {
            1 => Ok(()),
            0 => Err(BuildError::invalid(
                key,
                "needs one test: `equals`, `starts_with` or `exists`",
            )),
            _ => Err(BuildError::invalid(
                key,
                "has more than one test; use one filter per test",
            )),
        }
    }

    /// Whether the condition holds; `None` when the field is absent and the test needs it.
    fn holds(&self, record: &Record) -> Option<bool> {
        let value = record.value.get(&self.field);
        if let Some(exists) = self.exists {
            return Some(value.is_some() == exists);
        }
        let value = value?;
        if let Some(expected) = &self.equals {
            return Some(value == expected);
        }
        if let Some(prefix) = &self.starts_with {
            return Some(
                value
                    .as_str()
                    .is_some_and(|s| s.starts_with(prefix.as_str())),
            );
        }
        Some(false)
    }

    fn describe(&self) -> String {
        if let Some(v) = &self.equals {
            format!("`{}` equals {v}", self.field)
        } else if let Some(p) = &self.starts_with {
            format!("`{}` starts with {p:?}", self.field)
        } else if self.exists == Some(false) {
            format!("`{}` is absent", self.field)
        } else {
            format!("`{}` exists", self.field)
        }
    }
}

impl FilterConfig {
    /// The filter the settings describe, or the setting that is wrong.
    fn compile(&self) -> Result<Filter, BuildError> {
        let (condition, keep_when) = match (&self.keep_if, &self.skip_if) {
            (Some(c), None) => {
                c.validate("keep_if")?;
                (c.clone(), true)
            }
            (None, Some(c)) => {
                c.validate("skip_if")?;
                (c.clone(), false)
            }
            _ => {
                return Err(BuildError::invalid(
                    "keep_if",
                    "give exactly one of `keep_if` and `skip_if`, e.g. keep_if = { field = \"s3-key\", starts_with = \"waze/\" }",
                ))
            }
        };
        let context = format!(
            "filter {} {}",
            if keep_when { "keep_if" } else { "skip_if" },
            condition.describe()
        );
        Ok(Filter {
            condition,
            keep_when,
            if_missing: self.if_missing,
            context,
        })
    }
}

sluice_core::register_schema!(enricher "filter" => FilterConfig);

#[typetag::serde(name = "filter")]
#[async_trait]
impl EnricherConfig for FilterConfig {
    fn validate(&self) -> Result<(), BuildError> {
        self.compile().map(drop)
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Enricher>, BuildError> {
        Ok(Arc::new(self.compile()?))
    }

    fn describe(&self) -> String {
        match (&self.keep_if, &self.skip_if) {
            (Some(c), _) => format!("keep if {}", c.describe()),
            (_, Some(c)) => format!("skip if {}", c.describe()),
            _ => "no condition".into(),
        }
    }

    fn fields_after(&self, before: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
        before
    }
}

struct Filter {
    condition: Condition,
    keep_when: bool,
    if_missing: IfMissing,
    context: String,
}

#[async_trait]
impl Enricher for Filter {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        self.verdict(record)
    }

    fn enrich_now(&self, record: &mut Record) -> Option<Result<Verdict, EnrichError>> {
        Some(self.verdict(record))
    }
}

impl Filter {
    fn verdict(&self, record: &Record) -> Result<Verdict, EnrichError> {
        match self.condition.holds(record) {
            Some(holds) if holds == self.keep_when => Ok(Verdict::Keep),
            Some(_) => Ok(Verdict::Skip),
            None => self
                .if_missing
                .resolve(&self.condition.field, &self.context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn build(config: Value) -> Result<Arc<dyn Enricher>, BuildError> {
        let config: FilterConfig = serde_json::from_value(config).expect("config");
        let ctx = BuildContext::new("t", false);
        config.build(&ctx).await
    }

    async fn verdict(f: &Arc<dyn Enricher>, value: Value) -> Result<Verdict, EnrichError> {
        let mut r = Record {
            data: Default::default(),
            value,
            meta: Default::default(),
        };
        f.enrich(&mut r).await
    }

    #[tokio::test]
    async fn keeps_and_skips_by_prefix_and_dead_letters_a_missing_field() {
        let f = build(json!({"keep_if": {"field": "s3-key", "starts_with": "waze/"}}))
            .await
            .expect("builds");
        assert_eq!(
            verdict(&f, json!({"s3-key": "waze/a"})).await,
            Ok(Verdict::Keep)
        );
        assert_eq!(
            verdict(&f, json!({"s3-key": "cv/a"})).await,
            Ok(Verdict::Skip)
        );
        assert_eq!(verdict(&f, json!({"s3-key": 5})).await, Ok(Verdict::Skip));
        let err = verdict(&f, json!({"other": 1})).await.expect_err("missing");
        assert!(matches!(&err, EnrichError::MissingField { field, .. } if field == "s3-key"));
        assert!(err.to_string().contains("s3-key"), "{err}");
    }

    #[tokio::test]
    async fn skip_if_equals_exists_and_if_missing() {
        let f = build(json!({"skip_if": {"field": "state", "equals": "MI"}, "if_missing": "keep"}))
            .await
            .expect("builds");
        assert_eq!(verdict(&f, json!({"state": "MI"})).await, Ok(Verdict::Skip));
        assert_eq!(verdict(&f, json!({"state": "OH"})).await, Ok(Verdict::Keep));
        assert_eq!(verdict(&f, json!({})).await, Ok(Verdict::Keep));
        let f = build(json!({"keep_if": {"field": "x", "exists": true}}))
            .await
            .expect("builds");
        assert_eq!(verdict(&f, json!({})).await, Ok(Verdict::Skip));
        assert_eq!(verdict(&f, json!({"x": null})).await, Ok(Verdict::Keep));
        let f = build(json!({"keep_if": {"field": "x", "equals": 1}, "if_missing": "skip"}))
            .await
            .expect("builds");
        assert_eq!(verdict(&f, json!({})).await, Ok(Verdict::Skip));
    }

    #[tokio::test]
    async fn conditions_need_exactly_one_test_and_one_direction() {
        for bad in [
            json!({}),
            json!({"keep_if": {"field": "x"}}),
            json!({"keep_if": {"field": "x", "equals": 1, "exists": true}}),
            json!({"keep_if": {"field": "x", "exists": true}, "skip_if": {"field": "y", "exists": true}}),
        ] {
            assert!(build(bad.clone()).await.is_err(), "{bad}");
        }
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z/]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            proptest::collection::vec(inner, 0..3).prop_map(Value::Array)
        })
    }

    proptest::proptest! {
        /// Any condition on any record: a verdict, or (the field absent) the `if_missing`
        /// answer; never a panic.
        #[test]
        fn any_condition_on_any_record_gives_a_verdict_or_names_the_missing_field(
            test in 0..3usize,
            keep in proptest::prelude::any::<bool>(),
            wanted in any_json(),
            fields in proptest::collection::btree_map("[ab]", any_json(), 0..3),
        ) {
            let condition = match test {
                // A pipeline file (TOML) has no null to compare with.
                0 if wanted.is_null() => json!({"field": "a", "equals": "x"}),
                0 => json!({"field": "a", "equals": wanted}),
                1 => json!({"field": "a", "starts_with": wanted.as_str().unwrap_or("x")}),
                _ => json!({"field": "a", "exists": wanted.as_bool().unwrap_or(true)}),
            };
            let config = if keep { json!({"keep_if": condition}) } else { json!({"skip_if": condition}) };
            let present = fields.contains_key("a");
            let value = Value::Object(fields.into_iter().collect());
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            let answer = runtime.block_on(async {
                let filter = build(config).await.expect("a valid filter");
                verdict(&filter, value).await
            });
            match answer {
                Ok(_) => {}
                Err(EnrichError::MissingField { field, .. }) => {
                    proptest::prop_assert!(!present && test != 2);
                    proptest::prop_assert_eq!(field, "a");
                }
                Err(other) => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }
}
