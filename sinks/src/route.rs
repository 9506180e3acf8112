//! Records routed to tables: a sink's `table` is a template (`waze_{$meta.record_path}`), and
//! `tables` lists every table it may name, so each is checked before any record is read.

use std::collections::BTreeSet;

use sluice_core::template::Template;
use sluice_core::{BuildError, Record, SinkError};

/// How a sink names a table it is given (DynamoDB: the name of an ARN), so a listed ARN and a
/// rendered name of the same table match.
pub(crate) type Canonical = fn(&str) -> &str;

/// Where a sink's records go.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    template: Template,
    canonical: Canonical,
    /// The fixed table, when the template reads nothing from records.
    fixed: Option<String>,
    /// The tables a templated `table` may name, when the file lists them.
    listed: Option<BTreeSet<String>>,
}

impl Routes {
    /// `table` (a template) with the `tables` it may name, each taken by `canonical`.
    pub fn new(
        table: &str,
        tables: Option<&[String]>,
        canonical: Canonical,
    ) -> Result<Self, BuildError> {
        if table.is_empty() {
            return Err(BuildError::invalid("table", "must not be empty"));
        }
        let template =
            Template::parse(table).map_err(|e| BuildError::invalid("table", e.to_string()))?;
        let fixed = template.as_fixed().map(|t| canonical(&t).to_owned());
        let listed = match (tables, &fixed) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                return Err(BuildError::invalid(
                    "tables",
                    "lists the tables a templated `table` can name (such as \
                     `waze_{$meta.record_path}`); with one fixed table, leave it out",
                ))
            }
            (Some([]), None) => {
                return Err(BuildError::invalid(
                    "tables",
                    "is empty; list every table `table` can name, or leave it out",
                ))
            }
            (Some(list), None) => {
                if let Some(empty) = list.iter().find(|t| t.is_empty()) {
                    return Err(BuildError::invalid(
                        "tables",
                        format!("holds an empty name ({empty:?}); name each table"),
                    ));
                }
                Some(list.iter().map(|t| canonical(t).to_owned()).collect())
            }
        };
        Ok(Self {
            template,
            canonical,
            fixed,
            listed,
        })
    }

    /// The tables known before any record is read: the fixed one, or those listed.
    pub fn known(&self) -> Vec<String> {
        match (&self.fixed, &self.listed) {
            (Some(table), _) => vec![table.clone()],
            (None, Some(listed)) => listed.iter().cloned().collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The fixed table, when `table` names one.
    pub fn fixed(&self) -> Option<&str> {
        self.fixed.as_deref()
    }

    /// The table a record goes to, or why it has none (a permanent failure: the record lacks
    /// what the template reads, or names a table not listed).
    pub fn table(&self, record: &Record) -> Result<String, SinkError> {
        if let Some(table) = &self.fixed {
            return Ok(table.clone());
        }
        let rendered = self.template.render(record).map_err(|missing| {
            SinkError::Permanent(format!(
                "the table template needs `{}`, which the record does not have",
                missing.0
            ))
        })?;
        let table = (self.canonical)(&rendered).to_owned();
        if table.is_empty() {
            return Err(SinkError::Permanent(
                "the table template gives an empty table name for this record".into(),
            ));
        }
        match &self.listed {
            Some(listed) if !listed.contains(&table) => Err(SinkError::Permanent(format!(
                "the record's table `{table}` is not among `tables` ({})",
                listed.iter().cloned().collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(table),
        }
    }

    /// The batch's records grouped by table, in order of first appearance, each group holding
    /// indices into `batch` in order; records without a table are answered in `results`.
    pub fn group(
        &self,
        batch: &[Record],
        results: &mut [Result<(), SinkError>],
    ) -> Vec<(String, Vec<usize>)> {
        if let Some(table) = &self.fixed {
            let all = (0..batch.len()).filter(|&i| results[i].is_ok()).collect();
            return vec![(table.clone(), all)];
        }
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            match self.table(record) {
                Ok(table) => match groups.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((table, vec![i])),
                },
                Err(e) => results[i] = Err(e),
            }
        }
        groups
    }

    /// How the routes read in a description: the table or the template.
    pub fn describe(&self) -> String {
        match (&self.fixed, &self.listed) {
            (Some(t), _) => format!("table `{t}`"),
            (None, Some(listed)) => format!(
                "tables {}",
                listed
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, None) => "a table per record".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_core::Meta;

    use super::*;

    fn record(path: &str) -> Record {
        Record {
            data: Default::default(),
            value: json!({}),
            meta: Meta {
                record_path: Some(path.into()),
                ..Meta::default()
            },
        }
    }

    #[test]
    fn records_are_grouped_by_their_table_in_order_and_unknown_tables_refused() {
        let tables = ["waze_alerts".to_string(), "waze_jams".to_string()];
        let routes = Routes::new("waze_{$meta.record_path}", Some(&tables), |t| t).unwrap();
        let batch: Vec<_> = ["jams", "alerts", "jams", "roads", "alerts"]
            .into_iter()
            .map(record)
            .collect();
        let mut results = vec![Ok(()); batch.len()];
        let groups = routes.group(&batch, &mut results);
        assert_eq!(
            groups,
            [
                ("waze_jams".to_string(), vec![0, 2]),
                ("waze_alerts".to_string(), vec![1, 4])
            ]
        );
        assert!(matches!(&results[3], Err(SinkError::Permanent(m)) if m.contains("waze_roads")));
        assert_eq!(routes.known(), tables);
        let mut no_path = Record {
            meta: Meta::default(),
            ..record("x")
        };
        no_path.meta.record_path = None;
        assert!(
            matches!(routes.table(&no_path), Err(SinkError::Permanent(m)) if m.contains("$meta.record_path"))
        );
    }

    #[test]
    fn a_listed_fixed_table_or_an_empty_list_is_a_config_error() {
        let one = ["t".to_string()];
        let same: Canonical = |t| t;
        assert!(Routes::new("t", Some(&one), same).is_err());
        assert!(Routes::new("t_{$meta.record_path}", Some(&[]), same).is_err());
        assert!(Routes::new("t_{oops", None, same).is_err());
        assert!(Routes::new("", None, same).is_err());
        assert_eq!(Routes::new("t", None, same).unwrap().known(), ["t"]);
        let empty = Routes::new("{$meta.record_path}", None, same).unwrap();
        assert!(
            matches!(empty.table(&record("")), Err(SinkError::Permanent(m)) if m.contains("empty"))
        );
    }

    #[test]
    fn listed_names_and_rendered_names_match_in_canonical_form() {
        // A DynamoDB sink lists ARNs and renders names, or the other way round.
        let arn = "arn:aws:dynamodb:us-east-1:123456789012:table/waze_alerts".to_string();
        let name: Canonical = |t| t.rsplit_once("table/").map_or(t, |(_, n)| n);
        let routes = Routes::new("waze_{$meta.record_path}", Some(&[arn]), name).unwrap();
        assert_eq!(routes.table(&record("alerts")).unwrap(), "waze_alerts");
        assert_eq!(routes.known(), ["waze_alerts"]);
    }
}
