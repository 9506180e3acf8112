//! sluice enrichers: `filter`, `fields`, `static` and `ssm_parameter`.
//!
//! Each registers its `type` with typetag; linking this crate makes them available to pipeline files.

mod fields;
mod filter;
mod missing;
mod ssm_parameter;
mod static_value;
mod template;

pub use fields::FieldsConfig;
pub use filter::{Condition, FilterConfig};
pub use missing::IfMissing;
pub use ssm_parameter::SsmParameterConfig;
pub use static_value::StaticConfig;
pub use template::{Template, TemplateError};
