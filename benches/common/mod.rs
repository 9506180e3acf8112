//! Records in the seed's payload format and the Waze job's enrichers, shared by the benches.
// Each bench compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use sluice::sluice_core::{
    BuildContext, Encoding, Enricher, EnricherConfig, Meta, RawRecord, SequenceNumber,
};

/// One curated-file metadata record as the seed's producer writes it (about 400 bytes).
pub fn payload(i: usize) -> Vec<u8> {
    let states = ["MI", "IN", "WI", "OH"];
    let tables = ["alert", "jam", "irregularity"];
    let (state, table) = (states[i % 4], tables[i % 3]);
    // Every tenth record is outside waze/ and is filtered out, as in the sample.
    let prefix = if i % 10 == 9 { "other" } else { "waze" };
    format!(
        r#"{{"state":"{state}","table-name":"{table}","num-records":"{}","is-historical":"false","year":"2026","month":"{:02}","bucket-name":"dev-dot-sdc-curated-911061262852-us-east-1","s3-key":"{prefix}/content/state={state}/table={table}/projection=redshift/year=2026/month=11/day=24/hour=07/{table}_{i:012x}.csv.gz"}}"#,
        1000 + i * 7,
        1 + i % 12
    )
    .into_bytes()
}

/// `n` records as a Lambda event delivers them: base64 text, positions in meta.
pub fn base64_records(n: usize) -> Vec<RawRecord> {
    (0..n)
        .map(|i| RawRecord {
            data: Bytes::from(base64::engine::general_purpose::STANDARD.encode(payload(i))),
            encoding: Encoding::Base64,
            meta: meta(i),
        })
        .collect()
}

/// `n` records as the Kinesis source hands them: raw JSON bytes.
pub fn raw_records(n: usize) -> Vec<RawRecord> {
    (0..n)
        .map(|i| RawRecord {
            data: Bytes::from(payload(i)),
            encoding: Encoding::Raw,
            meta: meta(i),
        })
        .collect()
}

fn meta(i: usize) -> Meta {
    Meta {
        source: "kinesis".into(),
        stream: "waze-curated".into(),
        shard_id: "shardId-000000000000".into(),
        sequence_number: SequenceNumber::new(format!(
            "4959033827149025660855969253836157109592157598913{i:07}"
        )),
        partition_key: Some(format!("pk-{i}")),
        ..Meta::default()
    }
}

/// The Waze job's enrichers, as in pipelines/waze-persist.toml, with the SSM batch id already
/// cached: a `static` batch id stands in for the cache hit (no call is made either way).
pub fn waze_enrichers() -> Vec<(String, Arc<dyn Enricher>)> {
    use figment::providers::{Format, Toml};
    #[derive(serde::Deserialize)]
    struct Enrichers {
        enrichers: Vec<Box<dyn EnricherConfig>>,
    }
    let text = r#"
[[enrichers]]
type = "filter"
keep_if = { field = "s3-key", starts_with = "waze/" }

[[enrichers]]
type = "static"
field = "BatchId"
value = "batch-2026-11-24-0007"

[[enrichers]]
type = "fields"
set = { S3Key = "s3://{bucket-name}/{s3-key}" }
uuid_v5 = { CurationRecordId = "{$meta.stream}/{$meta.shard_id}/{$meta.position}" }
rename = { "state" = "State", "table-name" = "DataTableName", "num-records" = "TotalNumCuratedRecords", "is-historical" = "IsHistorical", "year" = "Year", "month" = "Month" }
keep_only = ["CurationRecordId", "BatchId", "DataTableName", "S3Key", "State", "TotalNumCuratedRecords", "IsHistorical", "Year", "Month"]
"#;
    let configs: Enrichers = figment::Figment::from(Toml::string(text))
        .extract()
        .expect("valid enrichers");
    let ctx = BuildContext::new("bench", false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    configs
        .enrichers
        .iter()
        .map(|c| {
            let built = rt.block_on(c.build(&ctx)).expect("builds");
            (c.typetag_name().to_owned(), built)
        })
        .collect()
}
