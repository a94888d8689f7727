//! The memory budget (`max_memory`): what chd and its workers hold resident, measured from
//! `/proc`, against the budget. Past the budget chd refuses writes that would create a key,
//! as Redis does past `maxmemory` with `noeviction`: each new key costs an index entry on R
//! workers that only a delete gives back. Overwrites and deletes go on, since they add none.
//!
//! The measure is the resident set of every process (chd and each worker), sampled a few times
//! a second by [`crate::lifecycle`]: it counts what the OOM killer counts, whatever holds it
//! (indexes, the value cache, buffers). Between two samples a burst of new keys may pass the
//! budget by what it can write in that time; the budget is a refusal point, not a hard cap,
//! so it is set well below the machine's memory by default.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use chd_data::NodeId;

/// The smallest budget accepted (besides 0, no budget).
pub const MIN_BUDGET: u64 = 64 << 20;

pub struct Memory {
    /// Bytes; 0 means no budget.
    budget: u64,
    used: AtomicU64,
    nodes: RwLock<BTreeMap<NodeId, u64>>,
}

impl Memory {
    pub fn new(budget: u64) -> Memory {
        Memory { budget, used: AtomicU64::new(0), nodes: RwLock::default() }
    }

    /// Bytes allowed, 0 for no budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes resident in chd and its workers at the last sample.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// New keys are refused.
    pub fn is_full(&self) -> bool {
        self.budget != 0 && self.used() >= self.budget
    }

    /// A worker's resident bytes at the last sample, if it was running.
    pub fn of_node(&self, id: NodeId) -> Option<u64> {
        self.nodes.read().expect("memory lock").get(&id).copied()
    }

    /// Takes a sample: chd's own resident bytes and each running worker's.
    pub fn record(&self, chd: u64, nodes: BTreeMap<NodeId, u64>) {
        self.used.store(chd + nodes.values().sum::<u64>(), Ordering::Relaxed);
        *self.nodes.write().expect("memory lock") = nodes;
    }
}

/// The resident bytes of process `pid` (`/proc/<pid>/statm`), `None` if it is gone.
pub fn resident(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The default budget: half the memory this machine (or the cgroup chd runs in, if it sets a
/// lower limit) has, leaving the rest to the kernel's page cache, which chd's reads rely on.
/// The machine's memory comes from `sysinfo(2)`, which works where `/proc/meminfo` is hidden
/// (the packaged unit's `ProcSubset=pid`).
pub fn default_budget() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let limit = match (mem_total(), cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (Some(t), None) => t,
        (None, Some(c)) => c,
        (None, None) => return 0,
    };
    (limit / 2).max(MIN_BUDGET)
}

fn mem_total() -> Option<u64> {
    // SAFETY: sysinfo fills the struct it is given; a zeroed one is a valid start.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    // `totalram` is a C `unsigned long`: u64 here, u32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let total = u64::from(info.totalram);
    total.checked_mul(u64::from(info.mem_unit.max(1)))
}

/// A size as the settings take it: a number of bytes with an optional unit, `KiB`, `MiB`,
/// `GiB` or `TiB` (also `k`, `kb`, `m`, `mb`, `g`, `gb`, `t`, `tb`, any case; all powers of
/// 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size such as 512MiB or 2GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use B, KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// A size in the largest binary unit that divides it, as [`parse_size`] reads it back.
pub fn render_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_render_back() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
        for n in [0, 1, 1023, 1 << 10, 3 << 20, (5 << 30) + (1 << 20), 7 << 40] {
            assert_eq!(parse_size(&render_size(n)), Ok(n), "{}", render_size(n));
        }
    }

    #[test]
    fn full_only_past_a_budget() {
        let m = Memory::new(100);
        assert!(!m.is_full());
        m.record(60, BTreeMap::from([(0, 30)]));
        assert!(!m.is_full());
        assert_eq!((m.used(), m.of_node(0), m.of_node(1)), (90, Some(30), None));
        m.record(60, BTreeMap::from([(0, 30), (1, 10)]));
        assert!(m.is_full());
        let off = Memory::new(0);
        off.record(u64::MAX / 2, BTreeMap::new());
        assert!(!off.is_full());
    }

    #[test]
    fn the_default_is_half_the_memory_and_never_below_the_minimum() {
        assert!(mem_total().is_some_and(|t| t > MIN_BUDGET));
        let d = default_budget();
        assert!(d == 0 || d >= MIN_BUDGET, "{d}");
        assert!(resident(std::process::id()).is_some_and(|r| r > 0));
        assert_eq!(resident(u32::MAX), None);
    }
}
