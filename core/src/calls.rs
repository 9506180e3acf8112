//! Counts of calls to outside services, per operation: what a run cost, and what tests assert.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Calls made to outside services during a run, keyed `Service.Operation` (`DynamoDB.BatchWriteItem`).
#[derive(Debug, Default)]
pub struct ApiCalls {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ApiCalls {
    /// Counts one call (one HTTP request: a retried call counts once per attempt).
    pub fn add(&self, service: &str, operation: &str) {
        let mut counts = self.counts.lock().expect("no panic while counting");
        *counts.entry(format!("{service}.{operation}")).or_default() += 1;
    }

    /// Every count so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("no panic while counting").clone()
    }

    /// All calls to `service` so far.
    pub fn service_total(&self, service: &str) -> u64 {
        let prefix = format!("{service}.");
        self.snapshot()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_operation_and_per_service() {
        let calls = ApiCalls::default();
        calls.add("DynamoDB", "BatchWriteItem");
        calls.add("DynamoDB", "BatchWriteItem");
        calls.add("DynamoDB", "DescribeTable");
        calls.add("SSM", "GetParameter");
        assert_eq!(calls.snapshot()["DynamoDB.BatchWriteItem"], 2);
        assert_eq!(calls.service_total("DynamoDB"), 3);
        assert_eq!(calls.service_total("SSM"), 1);
        assert_eq!(calls.service_total("SQS"), 0);
    }
}
