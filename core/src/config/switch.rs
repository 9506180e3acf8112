//! On/off switches that environment variables can set.

/// Deserialises an on/off switch that environment variables can set: `true`/`false`, `1`/`0`
/// (as the seed's `PERSIST_RECORDS`), `yes`/`no` or `on`/`off`, as a boolean, number or string.
pub fn switch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct Switch;
    impl serde::de::Visitor<'_> for Switch {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true or false (or 1/0, yes/no, on/off)")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(Switch)
}

/// The schema of a [`switch`] setting: a boolean, `0`/`1`, or one of its words.
pub struct Switch;

impl schemars::JsonSchema for Switch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Switch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "true or false (or 1/0, yes/no, on/off; a ${VAR} such as PERSIST_RECORDS)",
            "anyOf": [
                { "type": "boolean" },
                { "type": "integer", "enum": [0, 1] },
                { "type": "string" }
            ]
        })
    }
}
