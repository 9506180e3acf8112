//! What the emulator itself allows, for scripts/bench: a bare loop of the SDK's BatchWriteItem
//! (25 items per call, as many calls in flight as sluice's sink uses), and the seed Lambda's
//! per-record mode (GetParameter, then PutItem, for every record).
//!
//!   cargo bench --bench emulator_ceiling -- ceiling ENDPOINT TABLE N
//!   cargo bench --bench emulator_ceiling -- per-record ENDPOINT TABLE PARAMETER N
//!
//! Prints one JSON object. Without arguments (as `cargo test --all-targets` runs it) it does
//! nothing.

use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures::StreamExt;

fn item(i: usize, batch_id: &str) -> std::collections::HashMap<String, AttributeValue> {
    let s = |v: String| AttributeValue::S(v);
    [
        ("CurationRecordId", s(format!("ceiling-{i:08}"))),
        ("BatchId", s(batch_id.to_owned())),
        ("DataTableName", s("alert".into())),
        ("S3Key", s(format!("s3://dev-dot-sdc-curated-911061262852-us-east-1/waze/content/state=MI/table=alert/year=2026/alert_{i:012x}.csv.gz"))),
        ("State", s("MI".into())),
        ("TotalNumCuratedRecords", s((1000 + i).to_string())),
        ("IsHistorical", s("false".into())),
        ("Year", s("2026".into())),
        ("Month", s("11".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// On the runtime sluice would use with the same `SLUICE_THREADS` (1: this thread alone).
fn main() {
    let mut builder = match std::env::var("SLUICE_THREADS").as_deref() {
        Ok("1") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(mode) = args.first() else {
        eprintln!("emulator_ceiling: no arguments; run by scripts/bench");
        return;
    };
    let (endpoint, table) = (&args[1], &args[2]);
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let started = Instant::now();
    let (records, calls) = match mode.as_str() {
        "ceiling" => {
            let n: usize = args[3].parse().expect("N");
            let chunks: Vec<Vec<WriteRequest>> = (0..n)
                .map(|i| {
                    let put = PutRequest::builder()
                        .set_item(Some(item(i, "ceiling")))
                        .build()
                        .unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect::<Vec<_>>()
                .chunks(25)
                .map(<[WriteRequest]>::to_vec)
                .collect();
            let calls = chunks.len();
            futures::stream::iter(chunks)
                .map(|chunk| {
                    let dynamodb = dynamodb.clone();
                    async move {
                        let out = dynamodb
                            .batch_write_item()
                            .request_items(table, chunk)
                            .send()
                            .await
                            .expect("BatchWriteItem");
                        assert!(out.unprocessed_items().is_none_or(|u| u.is_empty()));
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<_>>()
                .await;
            (n, calls)
        }
        "per-record" => {
            let (parameter, n): (&str, usize) = (&args[3], args[4].parse().expect("N"));
            let ssm = aws_sdk_ssm::Client::new(&sdk);
            for i in 0..n {
                let batch_id = ssm
                    .get_parameter()
                    .name(parameter)
                    .send()
                    .await
                    .expect("GetParameter");
                let batch_id = batch_id
                    .parameter()
                    .and_then(|p| p.value())
                    .unwrap_or_default()
                    .to_owned();
                dynamodb
                    .put_item()
                    .table_name(table)
                    .set_item(Some(item(i, &batch_id)))
                    .send()
                    .await
                    .expect("PutItem");
            }
            (n, 2 * n)
        }
        other => panic!("unknown mode {other}; use ceiling or per-record"),
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"mode": mode, "records": records, "seconds": secs,
                           "records_per_second": records as f64 / secs, "calls": calls})
    );
}
