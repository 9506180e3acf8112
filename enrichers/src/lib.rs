//! sluice enrichers: `filter`, `fields`, `static` and `ssm_parameter`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod fields;
mod filter;
mod missing;
mod ssm_parameter;
mod static_value;

pub use fields::FieldsConfig;
pub use filter::{Condition, FilterConfig};
pub use missing::IfMissing;
pub use sluice_core::template::{Template, TemplateError};
pub use ssm_parameter::SsmParameterConfig;
pub use static_value::StaticConfig;
