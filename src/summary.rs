//! The run summary printed on stdout.

use std::fmt::Write;

use sluice_core::RunSummary;

fn by(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("  ({})", parts.join(", "))
}

/// The summary as text for a person.
pub fn text(summary: &RunSummary, sink_enabled: bool) -> String {
    let c = &summary.counts;
    let mut out = String::new();
    let _ = writeln!(out, "pipeline       {}", summary.pipeline);
    let _ = writeln!(
        out,
        "records        {} in {:.2} s ({:.0} records/s)",
        c.records,
        summary.elapsed.as_secs_f64(),
        summary.records_per_second()
    );
    let _ = writeln!(out, "stored         {}", c.stored);
    let _ = writeln!(
        out,
        "skipped        {}{}",
        c.skipped,
        by(&summary.skipped_by)
    );
    let _ = writeln!(
        out,
        "dead-lettered  {}{}",
        c.dead_lettered,
        by(&summary.dead_lettered_by)
    );
    let healed = if c.failed > 0 && summary.unresolved.is_empty() {
        "  (read again and done since)"
    } else {
        ""
    };
    let _ = writeln!(out, "failed         {}{healed}", c.failed);
    if summary.handed_back > 0 {
        let _ = writeln!(
            out,
            "handed back    {}  (their shards' leases went to other workers, which read them)",
            summary.handed_back
        );
    }
    if !summary.api_calls.is_empty() {
        let calls: Vec<String> = summary
            .api_calls
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "calls          {}", calls.join(", "));
    }
    for (shard, seq) in &summary.checkpoints {
        let _ = writeln!(out, "checkpoint     {shard} @ {seq}");
    }
    if !sink_enabled {
        let _ = writeln!(
            out,
            "note           the sink is disabled: records were read and enriched but nothing was written, and no checkpoint was stored"
        );
    }
    for f in &summary.failures {
        let _ = writeln!(out, "failure        {f}");
    }
    for e in &summary.errors {
        let _ = writeln!(out, "error          {e}");
    }
    out
}
