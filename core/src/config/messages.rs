//! Turns figment's errors into messages that name the file, the key and the fix.

use std::path::Path;

use figment::error::Kind;
use figment::providers::Serialized;
use figment::value::Value;
use figment::Figment;

use crate::component::{EnricherConfig, SinkConfig, SourceConfig};

use crate::error::ConfigError;

/// The error, naming the file and the key; `figment` (what was read) helps name a key inside a
/// component's table, which typetag's errors do not.
pub(super) fn from_figment(file: &Path, err: figment::Error, figment: &Figment) -> ConfigError {
    let mut key = None;
    let messages: Vec<String> = err
        .into_iter()
        .map(|e| {
            let mut path = key_path(&e.path);
            if let Some(field) = pinpoint(figment, &e.path, &e.kind) {
                path = format!("{path}.{field}");
            }
            if key.is_none() && !path.is_empty() {
                key = Some(path.clone());
            }
            let origin = e
                .metadata
                .as_ref()
                .filter(|m| m.name.contains("environment"))
                .map(|_| format!(" (from a {}* environment variable)", super::OVERRIDE_PREFIX))
                .unwrap_or_default();
            format!("{}{origin}", describe(&path, &e.kind))
        })
        .collect();
    ConfigError {
        unavailable: false,
        transient: false,
        file: file.to_owned(),
        key,
        message: messages.join("; "),
    }
}

/// A component's settings go through typetag, whose errors lose the key inside the component's
/// table (`enrichers[2]`: invalid type: found sequence, expected a map). The key is found back as
/// the one setting whose removal changes the error (settings are read in order, and a missing
/// one is only noticed at the end, so removing another leaves the error as it was).
fn pinpoint(figment: &Figment, path: &[String], kind: &Kind) -> Option<String> {
    let Kind::Message(msg) = kind else {
        return None;
    };
    if unknown_field_in(msg).is_some() {
        return None;
    }
    let (first, rest) = path.split_first()?;
    let mut table = figment.find_value(first).ok()?;
    for part in rest {
        table = match (table, part.parse::<usize>()) {
            (Value::Array(_, mut items), Ok(i)) if i < items.len() => items.swap_remove(i),
            (Value::Dict(_, mut dict), _) => dict.remove(part)?,
            _ => return None,
        };
    }
    let Value::Dict(_, settings) = table else {
        return None;
    };
    let same_error = |without: &str| {
        let mut rest = settings.clone();
        rest.remove(without);
        let figment = Figment::from(Serialized::defaults(Value::from(rest)));
        let error = match first.as_str() {
            "source" => figment.extract::<Box<dyn SourceConfig>>().err(),
            "enrichers" => figment.extract::<Box<dyn EnricherConfig>>().err(),
            "sink" | "error_sink" => figment.extract::<Box<dyn SinkConfig>>().err(),
            _ => None,
        };
        error.is_some_and(|e| e.kind.to_string() == *msg)
    };
    let mut culprits = settings
        .keys()
        .filter(|k| *k != "type" && !same_error(k.as_str()));
    let culprit = culprits.next()?;
    culprits.next().is_none().then(|| culprit.clone())
}

/// `enrichers.1.keep_if` as `enrichers[1].keep_if`.
pub(super) fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Components deserialise through typetag, which turns serde's structured errors into text;
/// this reads `unknown field: found `x`, expected `one of `a`, `b``` back.
fn unknown_field_in(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field: found `")?;
    let (field, expected) = rest.split_once("`, expected ")?;
    let names = match expected.strip_prefix("`one of ") {
        Some(list) => list.strip_suffix('`').unwrap_or(list),
        None => expected,
    };
    let names = names
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), names))
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `{path}`")
    }
}

fn describe(path: &str, kind: &Kind) -> String {
    match kind {
        Kind::UnknownField(field, expected) => unknown_field(path, field, expected),
        Kind::Message(msg) if unknown_field_in(msg).is_some() => {
            let (field, expected) = unknown_field_in(msg).expect("checked by the guard");
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            unknown_field(path, &field, &expected)
        }
        Kind::UnknownVariant(variant, expected) => {
            let hint = match closest(variant, expected) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "a component from another crate must be linked into the binary".to_owned(),
            };
            format!(
                "unknown type `{variant}` {}; known types are {}: {hint}",
                at(path),
                list(expected)
            )
        }
        Kind::MissingField(field) => {
            let full = if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            if field == "type" {
                format!("missing key `{full}`: every component table needs `type = \"...\"`")
            } else {
                format!("missing key `{full}`: add it")
            }
        }
        Kind::InvalidType(actual, expected) => {
            format!("`{path}` has the wrong type: found {actual}, expected {expected}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("`{path}` has a bad value: found {actual}, expected {expected}")
        }
        Kind::DuplicateField(field) => format!("key `{field}` appears twice {}", at(path)),
        Kind::Message(msg) if path.is_empty() => msg.clone(),
        other => format!("`{path}`: {other}"),
    }
}

fn unknown_field(path: &str, field: &str, expected: &[&str]) -> String {
    let hint = match closest(field, expected) {
        Some(near) => format!("did you mean `{near}`?"),
        None => "remove it, or see the README's pipeline-file reference".to_owned(),
    };
    format!(
        "unknown key `{field}` {}; expected one of {}: {hint}",
        at(path),
        list(expected)
    )
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The expected name nearest to a typo, if it is near enough to be a likely intent.
fn closest<'a>(typo: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (strsim::levenshtein(typo, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_expected_name() {
        assert_eq!(closest("tabel", &["path", "table", "key"]), Some("table"));
        assert_eq!(
            closest("sqlitee", &["file", "sqlite", "stdout"]),
            Some("sqlite")
        );
        assert_eq!(closest("zzzzzz", &["path", "table"]), None);
    }

    #[test]
    fn reads_unknown_fields_back_from_typetag_text() {
        let (field, expected) = unknown_field_in(
            "unknown field: found `tabel`, expected `one of `path`, `table`, `key``",
        )
        .expect("parsed");
        assert_eq!(field, "tabel");
        assert_eq!(expected, ["path", "table", "key"]);
        let (_, expected) =
            unknown_field_in("unknown field: found `x`, expected `path`").expect("parsed");
        assert_eq!(expected, ["path"]);
        assert_eq!(
            key_path(&["enrichers".into(), "1".into(), "keep_if".into()]),
            "enrichers[1].keep_if"
        );
    }
}
