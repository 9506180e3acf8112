//! `${VAR}` and `${VAR:-default}` in a pipeline file's strings, resolved from the environment
//! (or the variables an embedding program gives), as a figment provider of the TOML file.

use std::path::PathBuf;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR}` names a variable that is not set, and gives no default.
    #[error("environment variable `{0}` is not set and has no default; set it, or write `${{{0}:-default}}`")]
    Unset(String),
    /// A `${` without its `}`, or an empty or malformed name.
    #[error("malformed reference `{0}`: write `${{NAME}}` or `${{NAME:-default}}`, and `$${{` for a literal `${{`")]
    Malformed(String),
}

/// Replaces every `${NAME}` and `${NAME:-default}` in `text`; `$${` stands for a literal `${`.
///
/// `${NAME:-default}` takes the default when `NAME` is unset or empty, as a shell does.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    expand(text, lookup, false)
}

/// As [`interpolate`]; with `unset_as_names`, a `${NAME}` with no value and no default is
/// `NAME` (for `sluice test`) instead of an error.
fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset_as_names: bool,
) -> Result<String, InterpolateError> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| InterpolateError::Malformed(rest[start..].to_owned()))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(InterpolateError::Malformed(format!("${{{inner}}}")));
        }
        let value = match (lookup(name), default) {
            (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
            (Some(v), _) => v,
            (None, Some(d)) => d.to_owned(),
            (None, None) if unset_as_names => name.to_owned(),
            (None, None) => return Err(InterpolateError::Unset(name.to_owned())),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where `${VAR}` references are looked up.
pub(super) type Variables = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Reads a TOML file and resolves `${VAR}` references in its strings.
pub(super) struct InterpolatedToml {
    pub(super) path: PathBuf,
    pub(super) variables: Variables,
    /// Drops the `[source]` table before anything reads it.
    pub(super) without_source: bool,
    /// `${VAR}` with no value and no default stands for its own name (`sluice test`).
    pub(super) unset_as_names: bool,
}

impl Provider for InterpolatedToml {
    fn metadata(&self) -> Metadata {
        Toml::file_exact(&self.path).metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = Toml::file_exact(&self.path).data()?;
        for dict in data.values_mut() {
            if self.without_source {
                dict.remove("source");
            }
            let mut path = Vec::new();
            let variables = self.variables.clone();
            let unset_as_names = self.unset_as_names;
            let lookup = move |text: &str| expand(text, &*variables, unset_as_names);
            interpolate_dict(dict, &mut path, &lookup).map_err(|e| *e)?;
        }
        Ok(data)
    }
}

/// Resolves the references in one string.
type Expand<'a> = &'a dyn Fn(&str) -> Result<String, InterpolateError>;

fn interpolate_dict(
    dict: &mut Dict,
    path: &mut Vec<String>,
    lookup: Expand<'_>,
) -> Result<(), Box<figment::Error>> {
    for (key, value) in dict.iter_mut() {
        path.push(key.clone());
        interpolate_value(value, path, lookup)?;
        path.pop();
    }
    Ok(())
}

fn interpolate_value(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: Expand<'_>,
) -> Result<(), Box<figment::Error>> {
    match value {
        Value::String(_, s) => {
            *s = lookup(s).map_err(|e| {
                let mut err = figment::Error::from(e.to_string());
                err.path = path.clone();
                Box::new(err)
            })?;
        }
        Value::Dict(_, dict) => interpolate_dict(dict, path, lookup)?,
        Value::Array(_, items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate_value(item, path, lookup)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TABLE" => Some("curated".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, InterpolateError> {
        interpolate(s, &env)
    }

    #[test]
    fn unset_variables_can_stand_for_their_names_keeping_defaults() {
        // Found by review: a retry with names filled in lost `x`, the first one's default.
        assert_eq!(expand("${V:-x}/${V}", &env, true).unwrap(), "x/V");
        assert_eq!(
            expand("${TABLE}/${NOPE}", &env, true).unwrap(),
            "curated/NOPE"
        );
        assert!(expand("${NOPE}", &env, false).is_err());
    }

    #[test]
    fn substitutes_variables_and_defaults() {
        assert_eq!(run("plain").unwrap(), "plain");
        assert_eq!(run("${TABLE}").unwrap(), "curated");
        assert_eq!(run("t-${TABLE}-x").unwrap(), "t-curated-x");
        assert_eq!(run("${NOPE:-a.db}").unwrap(), "a.db");
        assert_eq!(run("${NOPE:-}").unwrap(), "");
        assert_eq!(run("${TABLE:-other}").unwrap(), "curated");
        assert_eq!(run("${EMPTY:-dflt}").unwrap(), "dflt");
        assert_eq!(run("${NOPE:-a:-b}").unwrap(), "a:-b");
        assert_eq!(run("$${TABLE}").unwrap(), "${TABLE}");
        assert_eq!(run("s3://{bucket}/{key}").unwrap(), "s3://{bucket}/{key}");
    }

    #[test]
    fn unset_and_malformed_references_are_errors() {
        assert_eq!(run("${NOPE}"), Err(InterpolateError::Unset("NOPE".into())));
        assert!(matches!(
            run("${TABLE"),
            Err(InterpolateError::Malformed(_))
        ));
        assert!(matches!(run("${}"), Err(InterpolateError::Malformed(_))));
        assert!(matches!(run("${A B}"), Err(InterpolateError::Malformed(_))));
        let msg = run("${NOPE}").unwrap_err().to_string();
        assert!(
            msg.contains("`NOPE` is not set") && msg.contains("${NOPE:-default}"),
            "{msg}"
        );
    }
}
