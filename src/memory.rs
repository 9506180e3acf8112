//! How the sluice binary sets up its memory at start, for a program that embeds the runtime with
//! mimalloc as its allocator (as the binary and the benchmarks do). Measured in BENCHMARKS.md.

/// mimalloc's `mi_option_purge_delay` (v2's `mi_option_e`, `include/mimalloc.h`): how long freed
/// memory stays with the process before it is given back to the system.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays, in milliseconds (ten times this for mimalloc's arenas). mimalloc's
/// default, 10 ms, is shorter than one batch: each batch's records, and each GetRecords response,
/// landed in pages given back and faulted in (and zeroed) again. A second keeps them between
/// batches and still gives memory back after a burst.
pub const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// Sets the process's memory up as the sluice binary does: transparent huge pages off (mimalloc
/// asks for them on its arena, and each first touch of a 2 MB page zeroes all of it: for a heap
/// of tens of megabytes that costs more in page faults and resident memory than it saves in TLB
/// misses), and freed memory kept for [`PURGE_DELAY_MS`] before it is given back, unless the
/// environment sets another delay (`MIMALLOC_PURGE_DELAY`). Call it first thing in `main`.
/// Without mimalloc as the allocator, the second part changes nothing.
pub fn tune() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integers and writes no memory of this process; a
    // kernel without it answers an error, which leaves things as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // SAFETY: mi_option_set_default stores an integer in mimalloc's option table unless the
    // environment set the option; any value is valid for this option. No other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mimalloc's current purge delay in milliseconds.
    fn purge_delay_ms() -> std::os::raw::c_long {
        // SAFETY: reads an integer from mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    #[test]
    fn tune_sets_mimallocs_purge_delay() {
        // Option 15 must be mimalloc's purge delay: its default is 10 ms, and tune() makes it a
        // second (a delay set in the environment is left as it is).
        let set = |name: &str| std::env::vars_os().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if set("MIMALLOC_PURGE_DELAY") || set("MIMALLOC_RESET_DELAY") {
            return;
        }
        assert_eq!(purge_delay_ms(), 10, "not mimalloc's purge_delay option");
        tune();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
