//! CloudWatch metrics of each invocation, in the Embedded Metric Format: one JSON line on
//! standard output that CloudWatch Logs turns into metrics, no API call and no agent.
//!
//! Written here rather than through `metrics_cloudwatch_embedded` or `metrique`: both install a
//! process-wide recorder (the `metrics` facade's, or their own), and sluice runs inside users'
//! Lambda functions, where that recorder may already be theirs; the document is a dozen numbers
//! sluice has at hand after each invocation, checked against the format in the tests.

use serde_json::{json, Map, Value};

use crate::runtime::RunSummary;

/// Where the metrics go: the namespace and the dimensions every metric carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Emf {
    /// The CloudWatch namespace (`SLUICE_METRICS_NAMESPACE`, default `sluice`).
    pub namespace: String,
    /// Dimension name → value: `Pipeline` (the pipeline's name), then those of
    /// `SLUICE_METRICS_DIMENSIONS` (`Environment=prod,Team=sdc`).
    pub dimensions: Vec<(String, String)>,
}

/// What one invocation did, as metrics.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// The event's records.
    pub batch_size: u64,
    /// How long the invocation took, in milliseconds.
    pub duration_ms: u64,
    /// The age of the oldest record in the event when it was handled, from its arrival time
    /// (the iterator age users alarm on), in milliseconds.
    pub oldest_record_age_ms: Option<u64>,
    /// Records tried again after retryable failures (each retry counting).
    pub retries: u64,
    /// The Lambda request id, as a property (not a dimension).
    pub request_id: String,
}

/// The metrics of a document, with their units.
const METRICS: [(&str, &str); 12] = [
    ("Records", "Count"),
    ("RecordsStored", "Count"),
    ("RecordsSkipped", "Count"),
    ("RecordsDeadLettered", "Count"),
    ("RecordsFailed", "Count"),
    ("DeadLetteredAtDecode", "Count"),
    ("DeadLetteredAtAge", "Count"),
    ("DeadLetteredAtEnrich", "Count"),
    ("DeadLetteredAtSink", "Count"),
    ("Retries", "Count"),
    ("BatchSize", "Count"),
    ("Duration", "Milliseconds"),
];

impl Emf {
    /// The settings from the environment, for pipeline `pipeline`; `None` when
    /// `SLUICE_METRICS=off`, or when a dimension is malformed (logged).
    pub fn from_env(pipeline: &str) -> Option<Self> {
        Self::from_settings(pipeline, |name| {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        })
    }

    /// As [`Emf::from_env`], with the settings looked up in `var`.
    pub fn from_settings(pipeline: &str, var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        if var("SLUICE_METRICS").is_some_and(|v| v.eq_ignore_ascii_case("off")) {
            return None;
        }
        let mut dimensions = vec![("Pipeline".to_owned(), pipeline.to_owned())];
        if let Some(extra) = var("SLUICE_METRICS_DIMENSIONS") {
            for pair in extra.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let taken = |name: &str| {
                    METRICS.iter().any(|(m, _)| *m == name)
                        || ["OldestRecordAge", "RequestId", "_aws"].contains(&name)
                        || dimensions.iter().any(|(d, _)| d == name)
                };
                match pair.split_once('=') {
                    Some((name, value))
                        if !name.trim().is_empty()
                            && !value.trim().is_empty()
                            && !taken(name.trim())
                            && dimensions.len() < 30 =>
                    {
                        dimensions.push((name.trim().to_owned(), value.trim().to_owned()))
                    }
                    _ => {
                        tracing::error!(dimension = pair, "SLUICE_METRICS_DIMENSIONS takes up to 29 Name=Value pairs separated by commas, each name new (not a metric's) and each value not empty; no metrics are written");
                        return None;
                    }
                }
            }
        }
        Some(Self {
            namespace: var("SLUICE_METRICS_NAMESPACE").unwrap_or_else(|| "sluice".into()),
            dimensions,
        })
    }

    /// The EMF document of one invocation, stamped `timestamp_ms`.
    pub fn document(&self, summary: &RunSummary, run: &Invocation, timestamp_ms: u64) -> Value {
        let c = &summary.counts;
        let at = |stage: &str| -> u64 {
            summary
                .dead_lettered_by
                .iter()
                .filter(|(s, _)| s.as_str() == stage || s.starts_with(&format!("{stage}:")))
                .map(|(_, n)| n)
                .sum()
        };
        let values: [u64; 12] = [
            c.records,
            c.stored,
            c.skipped,
            c.dead_lettered,
            c.failed,
            at("decode"),
            at("age"),
            at("enrich"),
            at("sink"),
            run.retries,
            run.batch_size,
            run.duration_ms,
        ];
        let mut metrics: Vec<Value> = METRICS
            .iter()
            .map(|(name, unit)| json!({ "Name": name, "Unit": unit }))
            .collect();
        let mut doc = Map::new();
        for ((name, _), value) in METRICS.iter().zip(values) {
            doc.insert((*name).to_owned(), json!(value));
        }
        // No records with an arrival time: no age to report, rather than a false zero.
        if let Some(age) = run.oldest_record_age_ms {
            metrics.push(json!({ "Name": "OldestRecordAge", "Unit": "Milliseconds" }));
            doc.insert("OldestRecordAge".into(), json!(age));
        }
        for (name, value) in &self.dimensions {
            doc.insert(name.clone(), json!(value));
        }
        doc.insert("RequestId".into(), json!(run.request_id));
        let dimension_names: Vec<&str> = self.dimensions.iter().map(|(n, _)| n.as_str()).collect();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [dimension_names],
                    "Metrics": metrics,
                }],
            }),
        );
        Value::Object(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Counts;

    /// Checks a document against the EMF specification's rules: `_aws` with a millisecond
    /// timestamp and directives, each metric's and dimension's value at the top level (metrics
    /// numbers, dimensions strings), at most 100 metrics and 30 dimensions per set.
    fn assert_emf(doc: &Value) {
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_500_000_000_000));
        let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
        assert!(!directives.is_empty());
        for d in directives {
            assert!(d["Namespace"].as_str().is_some_and(|n| !n.is_empty()));
            for set in d["Dimensions"].as_array().expect("dimension sets") {
                let set = set.as_array().expect("a set");
                assert!(set.len() <= 30);
                for name in set {
                    let name = name.as_str().expect("a dimension name");
                    assert!(doc[name].is_string(), "dimension {name} has a string value");
                }
            }
            let metrics = d["Metrics"].as_array().expect("metrics");
            assert!(!metrics.is_empty() && metrics.len() <= 100);
            for m in metrics {
                let name = m["Name"].as_str().expect("a metric name");
                assert!(doc[name].is_number(), "metric {name} has a number");
                assert!(m["Unit"].is_string());
            }
        }
    }

    #[test]
    fn dimensions_that_would_break_the_document_turn_metrics_off_with_an_error() {
        let with = |dimensions: &str| {
            let dimensions = dimensions.to_owned();
            Emf::from_settings("p", move |name| {
                (name == "SLUICE_METRICS_DIMENSIONS").then(|| dimensions.clone())
            })
        };
        let emf = with("Environment=prod, Team=sdc").expect("valid");
        assert_eq!(emf.dimensions.len(), 3);
        assert_eq!(emf.namespace, "sluice");
        // Found by review: a name equal to a metric's overwrote its value, an empty value or
        // a repeated name made CloudWatch refuse the document.
        for bad in [
            "Records=x",
            "Team=",
            "Pipeline=other",
            "A=1,A=2",
            "_aws=1",
            "novalue",
        ] {
            assert!(with(bad).is_none(), "{bad}");
        }
        assert!(
            Emf::from_settings("p", |n| (n == "SLUICE_METRICS").then(|| "off".into())).is_none()
        );
    }

    #[test]
    fn an_invocation_is_one_emf_document_with_every_metric() {
        let summary = RunSummary {
            pipeline: "waze-persist".into(),
            counts: Counts {
                records: 10,
                stored: 6,
                skipped: 1,
                dead_lettered: 3,
                failed: 0,
            },
            dead_lettered_by: [
                ("decode".to_owned(), 1),
                ("enrich:fields".to_owned(), 1),
                ("enrich:filter".to_owned(), 1),
            ]
            .into(),
            ..RunSummary::default()
        };
        let emf = Emf {
            namespace: "sluice".into(),
            dimensions: vec![
                ("Pipeline".into(), "waze-persist".into()),
                ("Environment".into(), "prod".into()),
            ],
        };
        let run = Invocation {
            batch_size: 10,
            duration_ms: 250,
            oldest_record_age_ms: Some(1500),
            retries: 2,
            request_id: "req-1".into(),
        };
        let doc = emf.document(&summary, &run, 1_764_000_000_000);
        assert_emf(&doc);
        assert_eq!(doc["RecordsStored"], 6);
        assert_eq!(doc["DeadLetteredAtEnrich"], 2);
        assert_eq!(doc["DeadLetteredAtDecode"], 1);
        assert_eq!(doc["DeadLetteredAtSink"], 0);
        assert_eq!(doc["OldestRecordAge"], 1500);
        assert_eq!(doc["Retries"], 2);
        assert_eq!(doc["Environment"], "prod");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Pipeline", "Environment"]])
        );
        let without_age = emf.document(
            &summary,
            &Invocation {
                oldest_record_age_ms: None,
                ..run
            },
            1_764_000_000_000,
        );
        assert_emf(&without_age);
        assert!(without_age.get("OldestRecordAge").is_none());
    }
}
