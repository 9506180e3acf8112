//! `type = "static"`: sets a field to a configured value (the local stand-in for an SSM batch id).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::{
    BuildContext, BuildError, EnrichError, Enricher, EnricherConfig, Record, Verdict,
};

/// Sets `field` to `value` on every record.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The top-level field to set.
    pub field: String,
    /// The value: any TOML value (string, number, boolean, table, array).
    pub value: Value,
    /// Whether to replace a value the record already has (default true).
    #[serde(default = "yes")]
    pub overwrite: bool,
}

fn yes() -> bool {
    true
}

sluice_core::register_schema!(enricher "static" => StaticConfig);

#[typetag::serde(name = "static")]
#[async_trait]
impl EnricherConfig for StaticConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.field.is_empty() {
            return Err(BuildError::invalid("field", "must not be empty"));
        }
        Ok(())
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Enricher>, BuildError> {
        // Also for a component built without its pipeline file (an embedding program).
        self.validate()?;
        Ok(Arc::new(self.clone()))
    }

    fn describe(&self) -> String {
        format!("set `{}` = {}", self.field, self.value)
    }

    fn fields_after(&self, before: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
        let mut fields = before?;
        fields.insert(self.field.clone());
        Some(fields)
    }
}

#[async_trait]
impl Enricher for StaticConfig {
    async fn enrich(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        self.set(record)
    }

    fn enrich_now(&self, record: &mut Record) -> Option<Result<Verdict, EnrichError>> {
        Some(self.set(record))
    }
}

impl StaticConfig {
    fn set(&self, record: &mut Record) -> Result<Verdict, EnrichError> {
        let object = record
            .value
            .as_object_mut()
            .ok_or_else(|| EnrichError::Permanent("the record is not a JSON object".into()))?;
        if self.overwrite || !object.contains_key(&self.field) {
            object.insert(self.field.clone(), self.value.clone());
        }
        Ok(Verdict::Keep)
    }
}
