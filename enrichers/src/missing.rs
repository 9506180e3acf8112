//! What an enricher does with a record that lacks a field it reads.

use serde::{Deserialize, Serialize};
use sluice_core::{EnrichError, Verdict};

/// `if_missing`: what happens to a record that lacks a field the enricher reads.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IfMissing {
    /// Dead-letter the record with the field's name (the default: bad input is never silent).
    #[default]
    DeadLetter,
    /// Skip the record; it is counted as skipped by this enricher.
    Skip,
    /// Pass the record on unchanged.
    Keep,
}

impl IfMissing {
    /// The verdict for a record missing `field`, or the error that dead-letters it.
    pub fn resolve(self, field: &str, context: &str) -> Result<Verdict, EnrichError> {
        match self {
            IfMissing::DeadLetter => Err(EnrichError::MissingField {
                field: field.to_owned(),
                context: context.to_owned(),
            }),
            IfMissing::Skip => Ok(Verdict::Skip),
            IfMissing::Keep => Ok(Verdict::Keep),
        }
    }
}
