//! KPL-aggregated records through the Waze job: made by AWS's aggregation library, read by the
//! Kinesis source, each user record one item.

use std::collections::BTreeSet;

use super::*;

/// `n` Waze payloads from `from`, each with its own partition key.
fn users(from: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    (from..from + n)
        .map(|i| (format!("user-{i}"), bytes(&waze_payload(i))))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_user_record_of_an_aggregate_is_stored_once_with_its_own_id() {
    let Some(endpoint) = moto_endpoint() else {
        return;
    };
    let world = World::create(&endpoint, 2).await;
    let mut corrupt = kpl_aggregate(&users(900, 3));
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x5a;
    let payloads = vec![
        bytes(&waze_payload(0)),
        kpl_aggregate(&users(100, 1)),
        bytes(&waze_payload(1)),
        kpl_aggregate(&users(200, 2)),
        kpl_aggregate(&users(300, 500)),
        corrupt,
        bytes(&waze_payload(2)),
    ];
    let puts = world.put(&payloads).await;
    let summary = world.run_job();
    assert_eq!(count(&summary, "stored"), 3 + 1 + 2 + 500, "{summary}");
    assert_eq!(count(&summary, "dead_lettered"), 1, "{summary}");

    let ids: BTreeSet<String> = world
        .items()
        .await
        .iter()
        .map(|i| s(i, "CurationRecordId"))
        .collect();
    assert_eq!(ids.len(), 506, "one item per user record, ids distinct");
    // A plain record keeps the id it had before aggregates were read.
    for plain in [&puts[0], &puts[2], &puts[6]] {
        assert!(ids.contains(&expected_id(&world.stream, plain)));
    }
    for (put, n) in [(&puts[1], 1), (&puts[3], 2), (&puts[4], 500)] {
        for sub in 0..n {
            assert!(ids.contains(&expected_sub_id(&world.stream, put, sub)));
        }
    }
    // The corrupted aggregate is dead-lettered whole, with the reason.
    let letters = world.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["stage"], "decode");
    assert!(
        letters[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MD5 digest"),
        "{}",
        letters[0]
    );
    assert_eq!(
        letters[0]["source"]["sequence_number"],
        puts[5].sequence_number
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(letters[0]["payload_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload, payloads[5], "the whole aggregate, as it came");
}
