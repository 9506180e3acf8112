//! The S3 sink against the emulator (moto), with faults injected into its HTTP client.

use std::io::Read;

use aws_sdk_s3::Client;
use sluice_core::aws::faults::{Fault, FaultPlan};
use sluice_core::aws::testing::{self, moto_endpoint};
use sluice_core::testkit::{raw, sink_pipeline};
use sluice_core::{Outcome, SinkConfig};

use super::S3SinkConfig;

async fn read_objects(s3: &Client, bucket: &str) -> Vec<(String, Vec<String>)> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list");
    let mut out = Vec::new();
    for object in listed.contents() {
        let key = object.key().unwrap().to_owned();
        let body = testing::get_object(s3, bucket, &key).await;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .expect("gzip");
        out.push((key, text.lines().map(str::to_owned).collect()));
    }
    out
}

#[tokio::test]
async fn batches_become_gzip_objects_per_shard_that_never_overwrite_each_other() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let s3: Client = testing::client(&endpoint).await;
    let bucket = testing::create_bucket(&s3).await;
    let config: S3SinkConfig = {
        use figment::providers::{Format, Toml};
        let text = format!(
            "bucket = \"{bucket}\"\nprefix = \"a/{{$pipeline}}/{{$meta.arrival_time:%Y}}/\"\nendpoint_url = \"{endpoint}\""
        );
        figment::Figment::from(Toml::string(&text))
            .extract()
            .expect("config")
    };
    let plan = FaultPlan::new();
    let ctx = testing::context("feed", &plan);
    let sink = config.build(&ctx).await.expect("builds");
    let (pipeline, dead) = sink_pipeline(sink);
    // A throttled PutObject is retried; the records are stored once.
    plan.fail("PutObject", Fault::Throttle, 1);
    // Two shards whose records sit at the same positions: their objects must not collide.
    for shard in ["shard-a", "shard-b"] {
        let records = (1..=3)
            .map(|seq| {
                raw(
                    shard,
                    seq,
                    &format!("{{\"shard\":\"{shard}\",\"n\":{seq}}}"),
                )
            })
            .collect();
        let report = pipeline.process_batch(shard.into(), records).await;
        assert!(
            report.outcomes.iter().all(|(_, o)| *o == Outcome::Stored),
            "{:?}",
            report.outcomes
        );
    }
    assert!(dead.records().is_empty());
    assert_eq!(plan.injected(), 1);
    let year = chrono::Utc::now().format("%Y").to_string();
    let objects = read_objects(&s3, &bucket).await;
    assert_eq!(objects.len(), 2, "{objects:?}");
    for (key, lines) in &objects {
        let name = key
            .strip_prefix(&format!("a/feed/{year}/"))
            .unwrap_or_else(|| panic!("`{key}`: the pipeline and the write time"));
        assert!(
            name.starts_with("1-") && name.ends_with(".jsonl.gz"),
            "{key}"
        );
        assert_eq!(lines.len(), 3, "{key}");
    }
    let shards: std::collections::BTreeSet<_> = objects
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["shard"].to_string())
        .collect();
    assert_eq!(shards.len(), 2, "both shards' records kept");

    // The same records again overwrite their own object; a second file at the same positions
    // (a later run of a file source, with no arrival time) gets objects of its own.
    let again = (1..=3)
        .map(|seq| {
            raw(
                "shard-a",
                seq,
                &format!("{{\"shard\":\"shard-a\",\"n\":{seq}}}"),
            )
        })
        .collect();
    pipeline.process_batch("shard-a".into(), again).await;
    assert_eq!(
        read_objects(&s3, &bucket).await.len(),
        2,
        "the same batch overwrites itself"
    );
    let other = (1..=3)
        .map(|seq| {
            raw(
                "shard-a",
                seq,
                &format!("{{\"shard\":\"shard-a\",\"n\":{}}}", seq + 10),
            )
        })
        .collect();
    pipeline.process_batch("shard-a".into(), other).await;
    assert_eq!(
        read_objects(&s3, &bucket).await.len(),
        3,
        "other records never overwrite"
    );

    // A failure past the retries leaves the records failed, never stored or dead-lettered.
    plan.fail_always("PutObject", Fault::ServerError);
    let report = pipeline
        .process_batch("shard-c".into(), vec![raw("shard-c", 1, "{\"n\":1}")])
        .await;
    assert!(
        matches!(report.outcomes[0].1, Outcome::Failed { .. }),
        "{:?}",
        report.outcomes
    );
    assert!(dead.records().is_empty());
}
