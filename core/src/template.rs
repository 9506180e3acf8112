//! Templates such as `s3://{bucket-name}/{s3-key}` or `{$meta.stream}/{$meta.sequence_number}`:
//! the one template syntax of pipeline files, used by enrichers (`fields.set`, `uuid_v5`) and by
//! sinks that choose a table or an object key per record.
//!
//! `{a|b}` takes the first of `a`, `b` that the record has (not null): one key for records whose
//! id field differs by kind, such as `{uuid|id}`. `{$meta.arrival_time:%Y/%m/%d}` writes the
//! arrival time in a strftime format (chrono's), for date-partitioned object keys.

use serde_json::Value;

use crate::record::{Meta, MetaName, Record};

/// A template parsed once at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The capacity a rendering starts with.
    size_hint: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The first of these that the record has.
    Value(Vec<Name>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Field(String),
    Meta(MetaName),
    /// The arrival time in a strftime format.
    ArrivalTime(String),
}

impl Name {
    fn parse(name: &str) -> Result<Self, String> {
        if let Some(format) = name.strip_prefix("$meta.arrival_time:") {
            use std::fmt::Write;
            // An invalid format is an error when written, not a panic: try it once here.
            let mut probe = String::new();
            let at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
            if format.is_empty() || write!(probe, "{}", at.format(format)).is_err() {
                return Err(format!(
                    "`{{{name}}}`: `{format}` is not a strftime format such as `%Y/%m/%d/%H`"
                ));
            }
            return Ok(Name::ArrivalTime(format.to_owned()));
        }
        match name.strip_prefix("$meta.") {
            Some(m) if !m.is_empty() => Ok(Name::Meta(MetaName::parse(m))),
            _ if name.starts_with('$') => Err(format!(
                "`{{{name}}}`: meta fields are read as `{{$meta.NAME}}`, NAME one of {}",
                Meta::FIELDS.join(", ")
            )),
            _ if name.is_empty() => Err("an empty name; write `{field}` or `{a|b}`".into()),
            _ => Ok(Name::Field(name.to_owned())),
        }
    }

    fn display(&self) -> String {
        match self {
            Name::Field(f) => f.clone(),
            Name::Meta(m) => format!("$meta.{}", m.as_str()),
            Name::ArrivalTime(_) => "$meta.arrival_time".into(),
        }
    }
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
                    // A time format is taken whole (it may hold `|` or spaces).
                    let names = if name.starts_with("$meta.arrival_time:") {
                        vec![Name::parse(&name).map_err(|problem| syntax(&problem))?]
                    } else {
                        name.split('|')
                            .map(|n| Name::parse(n.trim()))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|problem| syntax(&problem))?
                    };
                    parts.push(Part::Value(names));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let size_hint = parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Value(_) => 64,
            })
            .sum();
        Ok(Self { parts, size_hint })
    }

    /// The record fields the template reads (each alternative of `{a|b}`).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.names().filter_map(|n| match n {
            Name::Field(f) => Some(f.as_str()),
            Name::Meta(_) | Name::ArrivalTime(_) => None,
        })
    }

    /// The meta fields the template reads.
    pub fn meta_fields(&self) -> impl Iterator<Item = &str> {
        self.names().filter_map(|n| match n {
            Name::Meta(m) => Some(m.as_str()),
            Name::ArrivalTime(_) => Some("arrival_time"),
            Name::Field(_) => None,
        })
    }

    fn names(&self) -> impl Iterator<Item = &Name> {
        self.parts.iter().flat_map(|p| match p {
            Part::Value(names) => names.as_slice(),
            Part::Text(_) => &[],
        })
    }

    /// The text when the template reads nothing from records (a fixed table name).
    pub fn as_fixed(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(_) => return None,
            }
        }
        Some(out)
    }

    /// Renders the template for a record; a value that is absent or null (every alternative of
    /// `{a|b}`) is `Missing`, named as written.
    pub fn render(&self, record: &Record) -> Result<String, Missing> {
        // Room for the text and a few dozen bytes per value: one allocation for most renders.
        let mut out = String::with_capacity(self.size_hint);
        self.render_to(record, &mut out)?;
        Ok(out)
    }

    /// Renders the template into `out`, a writer that cannot fail (a `String`, or a hasher that
    /// only needs the bytes); on `Missing`, `out` holds the parts before the missing value.
    pub fn render_to(
        &self,
        record: &Record,
        out: &mut impl std::fmt::Write,
    ) -> Result<(), Missing> {
        for part in &self.parts {
            match part {
                Part::Text(t) => {
                    let _ = out.write_str(t);
                }
                Part::Value(names) => {
                    if !names.iter().any(|n| render_name(n, record, out)) {
                        let names: Vec<_> = names.iter().map(Name::display).collect();
                        return Err(Missing(names.join("|")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Appends the value of `name` to `out`; false when the record does not have it.
fn render_name(name: &Name, record: &Record, out: &mut impl std::fmt::Write) -> bool {
    match name {
        Name::Field(f) => match record.value.get(f) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => out.write_str(s).is_ok(),
            Some(other) => write!(out, "{other}").is_ok(),
        },
        Name::Meta(m) => record.meta.write_field(m, out),
        // Checked when parsed, so writing cannot fail.
        Name::ArrivalTime(format) => record
            .meta
            .arrival_time
            .is_some_and(|t| write!(out, "{}", t.format(format)).is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

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
    fn the_first_present_alternative_is_rendered() {
        let t = Template::parse("{uuid|id}").unwrap();
        assert_eq!(t.render(&record(json!({"id": 7}))).unwrap(), "7");
        assert_eq!(
            t.render(&record(json!({"uuid": "u", "id": 7}))).unwrap(),
            "u"
        );
        assert_eq!(
            t.render(&record(json!({"uuid": null, "id": "i"}))).unwrap(),
            "i"
        );
        assert_eq!(t.render(&record(json!({}))), Err(Missing("uuid|id".into())));
        assert_eq!(
            Template::parse("{a | $meta.stream}")
                .unwrap()
                .render(&record(json!({})))
                .unwrap(),
            "waze"
        );
        assert_eq!(t.fields().collect::<Vec<_>>(), ["uuid", "id"]);
        assert_eq!(
            Template::parse("t_{$meta.record_path}").unwrap().as_fixed(),
            None
        );
        assert_eq!(
            Template::parse("t{{x}}").unwrap().as_fixed().as_deref(),
            Some("t{x}")
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
        for bad in [
            "{open",
            "close}",
            "{}",
            "{$stream}",
            "{a{b}}",
            "{a|}",
            "{|b}",
        ] {
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
