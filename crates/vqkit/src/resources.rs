//! Memory a computation needs, checked before it is allocated: work whose buffers would
//! not fit fails at once with [`Error::OutOfMemory`], saying how much it needs and how much
//! there is, instead of the allocator aborting the process (or the kernel's OOM killer
//! ending it) halfway through.
//!
//! "Available" is Linux's `MemAvailable` (memory the kernel can hand out without swapping),
//! lowered to the cgroup's limit where the process runs in one (containers, CI). Elsewhere
//! nothing is known in advance and only the allocation itself can fail: [`zeroed`] and
//! [`copied`] reserve with `try_reserve_exact`, so a refused allocation is an error too.

use crate::error::{Error, Result};

/// Bytes of memory the process can still allocate, where the system says.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    // cgroup v2: the limit of this process's group, less what the group uses.
    let cgroup = (|| {
        let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
        let max = read("memory.max")?.trim().parse::<u64>().ok()?;
        let current = read("memory.current")?.trim().parse::<u64>().ok()?;
        Some(max.saturating_sub(current))
    })();
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// Below this, work is not checked against the available memory: reading it costs file
/// reads on every call, on paths (each training step's assign) where the buffers are
/// small; a refused small allocation is still an error through `try_reserve_exact`.
const CHECKED_FROM: u128 = 64 << 20;

/// An error unless `bytes` more fit in the memory available now.
pub fn ensure(what: &'static str, bytes: u128) -> Result<()> {
    if bytes < CHECKED_FROM {
        return Ok(());
    }
    match available_bytes() {
        Some(available) if bytes > available as u128 => Err(Error::OutOfMemory {
            what,
            needed: bytes,
            available: Some(available),
        }),
        _ => Ok(()),
    }
}

/// The bytes of `len` values of `T`, without overflow.
pub fn bytes_of<T>(len: usize) -> u128 {
    len as u128 * std::mem::size_of::<T>() as u128
}

/// An empty vector with room for `len` values, or an error if they do not fit.
pub(crate) fn reserve<T>(what: &'static str, len: usize) -> Result<Vec<T>> {
    ensure(what, bytes_of::<T>(len))?;
    let mut v = Vec::new();
    grow(what, &mut v, len)?;
    Ok(v)
}

/// Room for `additional` more values in `v`, or [`Error::OutOfMemory`] (instead of the
/// allocator's abort) where the allocation is refused.
pub(crate) fn grow<T>(what: &'static str, v: &mut Vec<T>, additional: usize) -> Result<()> {
    v.try_reserve_exact(additional)
        .map_err(|_| Error::OutOfMemory {
            what,
            needed: bytes_of::<T>(v.len().saturating_add(additional)),
            available: available_bytes(),
        })
}

/// `v` resized to `len` values (new ones `T::default()`), or an error if they do not fit: a
/// buffer kept from task to task grows through this rather than `Vec::resize`, whose failed
/// allocation aborts the process.
pub(crate) fn resized<T: Clone + Default>(
    what: &'static str,
    v: &mut Vec<T>,
    len: usize,
) -> Result<()> {
    if len > v.capacity() {
        ensure(what, bytes_of::<T>(len - v.len()))?;
        grow(what, v, len - v.len())?;
    }
    v.resize(len, T::default());
    Ok(())
}

/// `len` copies of `value`, or an error if they do not fit.
pub fn filled<T: Clone>(what: &'static str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = reserve(what, len)?;
    v.resize(len, value);
    Ok(v)
}

/// `len` zeros (`T::default()`), or an error if they do not fit.
pub fn zeroed<T: Clone + Default>(what: &'static str, len: usize) -> Result<Vec<T>> {
    filled(what, len, T::default())
}

/// Types whose all-zero bits are a value (zero), for [`zeroed_lazy`].
///
/// # Safety
/// Every value of the type's size with all bits zero is a valid value, and the type is not
/// zero-sized.
pub unsafe trait ZeroBits: Copy {}
// SAFETY: all-zero bits are 0.0 and 0, four bytes each.
unsafe impl ZeroBits for f32 {}
// SAFETY: as above.
unsafe impl ZeroBits for u32 {}
// SAFETY: all-zero bits are 0, two bytes.
unsafe impl ZeroBits for u16 {}
// SAFETY: all-zero bits are 0, one byte.
unsafe impl ZeroBits for u8 {}

/// `len` zeros, or an error if they do not fit. Unlike [`zeroed`], nothing is written here:
/// the allocator hands out memory already zeroed (for large buffers, fresh pages from the
/// OS), so each page is faulted in and cleared by whichever thread first writes it. A
/// buffer that parallel code fills at once is then touched once, by every thread, instead
/// of twice with the first pass on the calling thread alone.
pub fn zeroed_lazy<T: ZeroBits>(what: &'static str, len: usize) -> Result<Vec<T>> {
    const { assert!(std::mem::size_of::<T>() > 0) };
    ensure(what, bytes_of::<T>(len))?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let out_of_memory = || Error::OutOfMemory {
        what,
        needed: bytes_of::<T>(len),
        available: available_bytes(),
    };
    let layout = std::alloc::Layout::array::<T>(len).map_err(|_| out_of_memory())?;
    // SAFETY: the layout has a non-zero size (len > 0, and T is not zero-sized).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(out_of_memory());
    }
    advise_huge_pages(ptr.cast(), layout.size());
    // SAFETY: `ptr` comes from the global allocator with the layout of `len` values of T,
    // which `Vec` frees with the same layout; all-zero bits are a valid T (`ZeroBits`'s
    // contract).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Buffers at least this large are backed by huge pages where the OS does that on request.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// Asks Linux to back the whole 2 MiB extents of a large, untouched buffer with huge pages
/// (`MADV_HUGEPAGE`; where transparent huge pages are "madvise", as here, nothing else
/// does). A buffer written once by many threads then takes one fault per 2 MiB instead of
/// per 4 KiB. `python_bench.py pq`, 2 threads, two runs of each build: PQ decode at M = 64,
/// nbits = 4 (102 MB of reconstructions) 62.2 and 57.4 ms -> 30.6 and 29.6 ms
/// (docs/performance.md). NumPy does the same for its arrays of 4 MiB and more. A no-op
/// elsewhere, and where the advice fails (the buffer then has small pages, as before).
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    if bytes >= HUGE_PAGE_MIN_BYTES {
        const HUGE: usize = 2 << 20;
        // So that the range holds at least one whole extent: end > start below.
        const { assert!(HUGE_PAGE_MIN_BYTES >= 2 * HUGE) };
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        // SAFETY: [start, end) lies within the allocation just made (page-aligned, as
        // madvise requires, and not empty); the advice changes no byte of it.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

/// A copy of `src`, or an error if it does not fit.
pub fn copied<T: Clone>(what: &'static str, src: &[T]) -> Result<Vec<T>> {
    let mut v = reserve(what, src.len())?;
    v.extend_from_slice(src);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept buffer grows, shrinks and keeps its values; one too large for memory is an
    /// error that leaves it as it was, not the allocator's abort.
    #[test]
    fn resized_buffers_refuse_what_does_not_fit() {
        let mut v = vec![1.0f32, 2.0];
        resized("a test buffer", &mut v, 4).unwrap();
        assert_eq!(v, [1.0, 2.0, 0.0, 0.0]);
        resized("a test buffer", &mut v, 1).unwrap();
        assert_eq!(v, [1.0]);
        for len in [usize::MAX / 4, usize::MAX / 64] {
            let e = resized("a test buffer", &mut v, len).unwrap_err();
            assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
            assert!(e.to_string().contains("a test buffer"), "{e}");
            assert_eq!(v, [1.0]);
        }
    }

    #[test]
    fn absurd_sizes_are_errors_with_the_sizes_in_them() {
        let e = zeroed::<f32>("a test buffer", usize::MAX / 8).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
        assert!(
            msg.contains("a test buffer") && msg.contains("GiB"),
            "{msg}"
        );
        assert!(ensure("x", u128::MAX).is_err());
        assert_eq!(zeroed::<u32>("small", 5).unwrap(), [0; 5]);
        assert_eq!(copied("small", &[1u8, 2]).unwrap(), [1, 2]);
    }

    /// Buffers large enough for the huge-page advice (and one that is not) are zeros,
    /// whole, and writable to their last element, wherever the allocator put them.
    #[test]
    fn lazy_zeros_with_and_without_huge_pages() {
        for len in [3, HUGE_PAGE_MIN_BYTES / 4 - 1, HUGE_PAGE_MIN_BYTES, 3 << 20] {
            let mut v = zeroed_lazy::<f32>("a test buffer", len).unwrap();
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            v[len - 1] = 1.0;
            v[0] = 2.0;
            assert_eq!((v[0], v[len - 1]), (2.0, 1.0));
        }
        // The advice on written memory, on a range that starts one byte past a 2 MiB
        // boundary (rounded in to the next), changes no byte.
        let mut big = vec![1u8; 8 << 20];
        let base = big.as_mut_ptr() as usize;
        let off = base.next_multiple_of(2 << 20) - base + 1;
        advise_huge_pages(big[off..].as_mut_ptr(), HUGE_PAGE_MIN_BYTES);
        advise_huge_pages(big.as_mut_ptr(), 0);
        assert!(big.iter().all(|&b| b == 1));
    }
}
