//! Hints that bring memory into cache ahead of its use. A batch of point lookups issues them for every
//! point before reading any: unlike loads, prefetches retire without waiting for their line, so dozens
//! of cache misses overlap instead of the few a core's reorder window holds.

/// Bytes per cache line on the targets this runs on.
const LINE: usize = 64;

/// Asks for the cache line holding `address` (any address: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint to the cache: it does not fault on any address, reads nothing the
    // program sees and writes nothing. SSE, which provides it, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Asks for the lines of `count` values of `T` from `start` (`start` may lie past its allocation: only
/// the address is used, computed with wrapping arithmetic).
#[inline(always)]
pub(crate) fn prefetch_run<T>(start: *const T, count: usize) {
    let bytes = count * std::mem::size_of::<T>();
    let first = start.cast::<u8>();
    // The line of the last byte too, when the run straddles one more boundary than its length needs.
    let mut offset = 0;
    while offset < bytes {
        prefetch(first.wrapping_add(offset));
        offset += LINE;
    }
    if bytes > 0 {
        prefetch(first.wrapping_add(bytes - 1));
    }
}
