//! A sink defined outside sluice's crates (this test crate is "another crate") registers with
//! typetag and is usable from a pipeline file, as the README shows.

use std::sync::{Arc, Mutex};

use sluice::sluice_core::{
    async_trait, BuildContext, BuildError, Progress, Record, Sink, SinkConfig, SinkError,
};
use sluice::PipelineConfig;

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountingSinkConfig {
    /// Written before each record's id.
    pub label: String,
}

sluice::sluice_core::register_schema!(sink "counting" => CountingSinkConfig);

#[typetag::serde(name = "counting")]
#[async_trait]
impl SinkConfig for CountingSinkConfig {
    async fn build(&self, _: &BuildContext) -> Result<Arc<dyn Sink>, BuildError> {
        Ok(Arc::new(CountingSink(self.label.clone())))
    }
    fn describe(&self) -> String {
        format!("counting ({})", self.label)
    }
}

struct CountingSink(String);

#[async_trait]
impl Sink for CountingSink {
    async fn write(&self, batch: &[Record]) -> Vec<Result<(), SinkError>> {
        let mut seen = SEEN.lock().expect("lock");
        seen.extend(
            batch
                .iter()
                .map(|r| format!("{}:{}", self.0, r.value["id"])),
        );
        vec![Ok(()); batch.len()]
    }
}

#[tokio::test]
async fn a_sink_from_another_crate_runs_in_a_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\":1}\n{\"id\":2}\n").expect("input");
    let file = crate::pipeline_file(
        dir.path(),
        "p.toml",
        &format!(
            "name = \"custom\"\n[source]\ntype = \"file\"\npath = \"{}\"\n[sink]\ntype = \"counting\"\nlabel = \"mine\"\n[error_sink]\ntype = \"stdout\"\n",
            input.display()
        ),
    );
    let config = PipelineConfig::load(&file).expect("loads");
    let built = config.build(&config.context(false)).await.expect("builds");
    let source = built.source.expect("a [source] table");
    let summary = built
        .pipeline
        .run(source, Arc::new(Progress::default()))
        .await;
    assert_eq!(summary.counts.stored, 2);
    assert_eq!(*SEEN.lock().expect("lock"), ["mine:1", "mine:2"]);
}

#[test]
fn a_sink_from_another_crate_appears_in_the_schema_of_its_program() {
    let schema = sluice::sluice_core::schema::pipeline_schema();
    let counting = schema["properties"]["sink"]["oneOf"]
        .as_array()
        .expect("sinks")
        .iter()
        .find(|s| s["properties"]["type"]["const"] == "counting")
        .expect("the custom sink is there");
    assert_eq!(
        counting["properties"]["label"]["description"],
        "Written before each record's id."
    );
    assert_eq!(counting["required"], serde_json::json!(["type", "label"]));
}
