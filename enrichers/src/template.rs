//! Templates such as `s3://{bucket-name}/{s3-key}` or `{$meta.stream}/{$meta.sequence_number}`.

use serde_json::Value;
use sluice_core::Record;

/// A template parsed once at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
    Meta(String),
}

/// A template that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Bad syntax, with the fix.
    #[error("template `{template}`: {problem}")]
    Syntax {
        /// The template.
        template: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a template needed and did not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl Template {
    /// Parses `{field}`, `{$meta.name}`, and `{{` / `}}` for literal braces.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let syntax = |problem: &str| TemplateError::Syntax {
            template: template.to_owned(),
            problem: problem.to_owned(),
        };
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(syntax(
                        "a `}` without its `{`; write `}}` for a literal brace",
                    ))
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(syntax(
                                    "a `{` without its `}`; write `{{` for a literal brace",
                                ))
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(match name.strip_prefix("$meta.") {
                        Some(m) if !m.is_empty() => Part::Meta(m.to_owned()),
                        _ if name.starts_with('$') => {
                            return Err(syntax(&format!(
                                "`{{{name}}}`: meta fields are read as `{{$meta.NAME}}`, NAME one of {}",
                                sluice_core::Meta::FIELDS.join(", ")
                            )))
                        }
                        _ if name.is_empty() => return Err(syntax("an empty `{}`; name a field")),
                        _ => Part::Field(name),
                    });
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { parts })
    }

    /// The record fields the template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            _ => None,
        })
    }

    /// Renders the template for a record; a field that is absent or null is `Missing`.
    pub fn render(&self, record: &Record) -> Result<String, Missing> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match record.value.get(f) {
                    None | Some(Value::Null) => return Err(Missing(f.clone())),
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other) => out.push_str(&other.to_string()),
                },
                Part::Meta(m) => match record.meta.get(m) {
                    Some(v) => out.push_str(&v),
                    None => return Err(Missing(format!("$meta.{m}"))),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;
    use sluice_core::Meta;

    fn record(value: Value) -> Record {
        Record {
            data: Bytes::new(),
            value,
            meta: Meta {
                stream: "waze".into(),
                shard_id: "shardId-1".into(),
                sequence_number: 42.into(),
                ..Meta::default()
            },
        }
    }

    #[test]
    fn renders_fields_meta_and_literal_braces() {
        let t = Template::parse("s3://{bucket-name}/{s3-key}").expect("parses");
        let r = record(json!({"bucket-name": "b", "s3-key": "waze/x.csv", "n": 3}));
        assert_eq!(t.render(&r).unwrap(), "s3://b/waze/x.csv");
        let t = Template::parse("{$meta.stream}/{$meta.shard_id}/{$meta.sequence_number}").unwrap();
        assert_eq!(t.render(&r).unwrap(), "waze/shardId-1/42");
        let t = Template::parse("{{{n}}}").unwrap();
        assert_eq!(t.render(&r).unwrap(), "{3}");
        assert_eq!(
            Template::parse("a{x}b{y}")
                .unwrap()
                .fields()
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
    }

    #[test]
    fn absent_or_null_fields_and_unset_meta_are_missing() {
        let r = record(json!({"a": null}));
        assert_eq!(
            Template::parse("{a}").unwrap().render(&r),
            Err(Missing("a".into()))
        );
        assert_eq!(
            Template::parse("x{b}").unwrap().render(&r),
            Err(Missing("b".into()))
        );
        assert_eq!(
            Template::parse("{$meta.partition_key}").unwrap().render(&r),
            Err(Missing("$meta.partition_key".into()))
        );
    }

    #[test]
    fn malformed_templates_are_rejected() {
        for bad in ["{open", "close}", "{}", "{$stream}", "{a{b}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Any text parses or is refused with a reason; one that parses renders without panic.
        #[test]
        fn any_text_parses_or_is_refused_and_renders_without_panic(
            template in ".{0,40}",
            fields in proptest::collection::btree_map("[a-z$.{}]{0,6}", ".{0,8}", 0..4),
        ) {
            let value = Value::Object(fields.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
            match Template::parse(&template) {
                Ok(t) => {
                    let _ = t.render(&record(value));
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("template `")),
            }
        }

        /// Text with its braces doubled renders as itself.
        #[test]
        fn escaped_text_renders_as_itself(text in ".{0,40}") {
            let escaped = text.replace('{', "{{").replace('}', "}}");
            let t = Template::parse(&escaped).expect("escaped text parses");
            proptest::prop_assert_eq!(t.render(&record(json!({}))).expect("no fields"), text);
        }
    }
}
