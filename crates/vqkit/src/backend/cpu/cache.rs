//! The data-cache sizes a CPU kernel blocks for, read once per process.
//!
//! On Linux they come from sysfs (`/sys/devices/system/cpu/cpu0/cache/index*/`): the level-1
//! data cache and the level-2 cache, each divided by the number of logical CPUs sharing it,
//! since every thread of a core blocks for itself, and the last-level cache whole, which
//! decides whether data that every thread reads can stay cached between passes. Elsewhere,
//! or when sysfs says nothing usable, safe defaults below every x86-64 and Arm server core
//! of the last decade (32 KiB L1d, 256 KiB L2) leave blocking slightly conservative rather
//! than wrong; the last level's default (32 MiB) takes only data beyond it as streamed.

use std::sync::OnceLock;

/// Bytes of cache one thread may count on, and the last level's size, for data every
/// thread reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheSizes {
    /// Level-1 data cache per thread.
    pub l1d: usize,
    /// Level-2 cache per thread.
    pub l2: usize,
    /// Cpu0's level-3 (or higher) cache, whole rather than divided among the CPUs that
    /// share it: how much of the data that every thread reads can stay cached between
    /// passes. On a machine with several such caches (several dies or sockets) threads
    /// spread over them could keep more; this counts one. [`CacheSizes::DEFAULT`]'s where
    /// no level-3 cache is reported (a VM may hide it).
    pub llc: usize,
}

impl CacheSizes {
    /// The defaults used when the machine does not say.
    pub const DEFAULT: CacheSizes = CacheSizes {
        l1d: 32 << 10,
        l2: 256 << 10,
        llc: 32 << 20,
    };

    /// This machine's caches, detected once.
    pub fn detect() -> CacheSizes {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| read_sysfs().unwrap_or(CacheSizes::DEFAULT))
    }
}

/// Reads cpu0's caches from sysfs; `None` if the level-1 data or level-2 entry is missing.
fn read_sysfs() -> Option<CacheSizes> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    let entries = dir.flatten().filter_map(|entry| {
        let path = entry.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).ok();
        Some(Entry {
            level: read("level")?,
            kind: read("type")?,
            size: read("size")?,
            shared: read("shared_cpu_list"),
        })
    });
    from_entries(entries)
}

/// One cache as sysfs describes it (`index*/level`, `type`, `size`, `shared_cpu_list`).
struct Entry {
    level: String,
    kind: String,
    size: String,
    shared: Option<String>,
}

/// The sizes from a CPU's caches; `None` without a level-1 data or level-2 cache.
fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Option<CacheSizes> {
    let (mut l1d, mut l2) = (None, None);
    // The highest level from 3 on, whole: (level, bytes).
    let mut llc: Option<(u32, usize)> = None;
    for e in entries {
        let sharers = e.shared.map_or(1, |s| count_cpus(s.trim()));
        let Some(whole) = parse_size(e.size.trim()) else {
            continue;
        };
        if let (Ok(l @ 3..), "Unified" | "Data") = (e.level.trim().parse::<u32>(), e.kind.trim())
            && llc.is_none_or(|(at, _)| l > at)
        {
            llc = Some((l, whole));
        }
        let bytes = whole / sharers.max(1);
        match (e.level.trim(), e.kind.trim()) {
            ("1", "Data") => l1d = Some(bytes),
            ("2", "Unified" | "Data") => l2 = Some(bytes),
            _ => {}
        }
    }
    // A cache reported smaller than these floors is not worth blocking for literally.
    let (l1d, l2) = (l1d?.max(8 << 10), l2?.max(64 << 10));
    Some(CacheSizes {
        l1d,
        l2,
        llc: llc.map_or(CacheSizes::DEFAULT.llc, |(_, b)| b).max(l2),
    })
}

/// `"32K"`, `"1024K"`, `"2M"` or a plain byte count.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The number of CPUs in a list such as `"0"`, `"0-1"` or `"0,32"`.
fn count_cpus(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// Whether a software prefetch meant for L2 (`_MM_HINT_T1`) fills L1 as well on this CPU,
/// read once per process. AMD presents T1 and T2 filling L2 only as new in Zen 4; before it
/// (K8 to Zen 3, and Hygon's family 0x18) every temporal hint loads into L1 like
/// `_MM_HINT_T0`, while Intel's cores have long filled L2 only. Where it fills L1, rows
/// streamed from beyond the last-level cache are better prefetched non-temporally; where it
/// does not, the L2 prefetch won wherever the accumulators left half of L2 to the rows
/// (`cluster_sums`'s `prefetch_x`). Measured on Zen 1 and
/// Zen 4 only: Zen 3, Zen 5 (family 0x1A, taken as Zen 4) and Intel follow the documented
/// behaviour unmeasured.
pub(crate) fn t1_prefetch_fills_l1() -> bool {
    static FILLS: OnceLock<bool> = OnceLock::new();
    *FILLS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__cpuid, CpuidResult};
            // A safe function from Rust 1.94, unsafe before it (this crate builds from
            // 1.89).
            #[allow(unused_unsafe)]
            // SAFETY: every x86-64 CPU has CPUID, with leaves 0 and 1.
            let (leaf0, leaf1): (CpuidResult, CpuidResult) = unsafe { (__cpuid(0), __cpuid(1)) };
            let mut vendor = [0u8; 12];
            for (bytes, reg) in vendor.chunks_mut(4).zip([leaf0.ebx, leaf0.edx, leaf0.ecx]) {
                bytes.copy_from_slice(&reg.to_le_bytes());
            }
            t1_fills_l1(&vendor, leaf1.eax)
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// [`t1_prefetch_fills_l1`] from CPUID's vendor string and leaf 1's EAX: the family in bits
/// 8 to 11, plus the extended family in bits 20 to 27 where the base family is 0xF; the
/// model in bits 4 to 7, with the extended model in bits 16 to 19 above them there.
#[cfg(any(target_arch = "x86_64", test))]
fn t1_fills_l1(vendor: &[u8; 12], eax: u32) -> bool {
    let base = (eax >> 8) & 0xF;
    let (family, model) = if base == 0xF {
        (
            base + ((eax >> 20) & 0xFF),
            ((eax >> 4) & 0xF) | ((eax >> 12) & 0xF0),
        )
    } else {
        (base, (eax >> 4) & 0xF)
    };
    // Family 0x19 is Zen 3 and Zen 4; Zen 4's models: Genoa (0x10 to 0x1F), Raphael and
    // Phoenix (0x60 to 0x7F), Bergamo (0xA0 to 0xAF).
    let zen4 = matches!(model, 0x10..=0x1F | 0x60..=0x7F | 0xA0..=0xAF);
    matches!(vendor, b"AuthenticAMD" | b"HygonGenuine")
        && (family < 0x19 || (family == 0x19 && !zen4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t1_fills_l1_on_amd_before_zen_4_only() {
        // Leaf 1's EAX: Zen 1 (EPYC 7601), Zen 2 (Rome), Zen 3 (Milan, Vermeer), Zen 4
        // (Genoa, Phoenix), Zen 5 (Turin), a Hygon Dhyana, an Intel Sapphire Rapids core,
        // and an old AMD family (K10, 0x10).
        let amd = |eax| t1_fills_l1(b"AuthenticAMD", eax);
        assert!(amd(0x0080_0F12), "Zen 1");
        assert!(amd(0x0083_0F10), "Zen 2");
        assert!(amd(0x00A0_0F11), "Zen 3, Milan");
        assert!(amd(0x00A2_0F10), "Zen 3, Vermeer");
        assert!(!amd(0x00A1_0F11), "Zen 4, Genoa");
        assert!(!amd(0x00A7_0F41), "Zen 4, Phoenix");
        assert!(!amd(0x00B0_0F21), "Zen 5");
        assert!(amd(0x0010_0F42), "K10");
        assert!(t1_fills_l1(b"HygonGenuine", 0x0090_0F01));
        assert!(!t1_fills_l1(b"GenuineIntel", 0x0008_06F8));
        // Intel's family 0xF (a Pentium 4's leaf, extended family 0) stays Intel.
        assert!(!t1_fills_l1(b"GenuineIntel", 0x0000_0F29));
        // The extended fields count only under base family 0xF: with them set under base
        // family 6 this is still family 6 (were they added, family 0x105, past Zen 4).
        assert!(amd(0x0FF0_0612));
    }

    #[test]
    fn sizes_and_cpu_lists_parse() {
        assert_eq!(parse_size("32K"), Some(32 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(count_cpus("0"), 1);
        assert_eq!(count_cpus("0-1"), 2);
        assert_eq!(count_cpus("0,32"), 2);
        assert_eq!(count_cpus("0-3,8-11"), 8);
        assert_eq!(count_cpus("garbage"), 1);
    }

    /// Sysfs-like entries: (level, type, size, shared CPUs).
    fn entries(list: &[(&str, &str, &str, &str)]) -> Vec<Entry> {
        list.iter()
            .map(|&(level, kind, size, shared)| Entry {
                level: format!("{level}\n"),
                kind: format!("{kind}\n"),
                size: format!("{size}\n"),
                shared: Some(format!("{shared}\n")),
            })
            .collect()
    }

    #[test]
    fn sizes_from_entries() {
        // This Zen 1 VM: L1 and L2 per core, one 8 MiB L3 for both, listed in sysfs order.
        let zen1 = entries(&[
            ("1", "Data", "32K", "0"),
            ("1", "Instruction", "64K", "0"),
            ("2", "Unified", "512K", "0"),
            ("3", "Unified", "8192K", "0-1"),
        ]);
        let want = |l1d, l2, llc| Some(CacheSizes { l1d, l2, llc });
        assert_eq!(from_entries(zen1), want(32 << 10, 512 << 10, 8 << 20));
        // Two hyper-threads per core share L1 and L2, which are divided; L3 stays whole.
        let smt = entries(&[
            ("3", "Unified", "32M", "0-15"),
            ("2", "Unified", "2M", "0,8"),
            ("1", "Data", "48K", "0,8"),
        ]);
        assert_eq!(from_entries(smt), want(24 << 10, 1 << 20, 32 << 20));
        // No level 3 (or a VM hiding it): the default, not L2.
        let no_l3 = entries(&[("1", "Data", "32K", "0"), ("2", "Unified", "1M", "0")]);
        assert_eq!(from_entries(no_l3), want(32 << 10, 1 << 20, 32 << 20));
        // The highest level wins; a level-3 cache smaller than L2 counts as L2.
        let l4 = entries(&[
            ("1", "Data", "32K", "0"),
            ("2", "Unified", "1M", "0"),
            ("3", "Unified", "512K", "0-3"),
            ("4", "Unified", "128M", "0-7"),
        ]);
        assert_eq!(from_entries(l4), want(32 << 10, 1 << 20, 128 << 20));
        let small = entries(&[
            ("1", "Data", "32K", "0"),
            ("2", "Unified", "1M", "0"),
            ("3", "Unified", "512K", "0-3"),
        ]);
        assert_eq!(from_entries(small), want(32 << 10, 1 << 20, 1 << 20));
        // No L2: nothing usable.
        assert_eq!(from_entries(entries(&[("1", "Data", "32K", "0")])), None);
    }

    #[test]
    fn detected_sizes_are_usable() {
        let c = CacheSizes::detect();
        assert!(
            c.l1d >= 8 << 10 && c.l2 >= 64 << 10 && c.llc >= c.l2,
            "{c:?}"
        );
    }
}
