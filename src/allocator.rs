//! The process's allocator: mimalloc for small blocks and as `malloc`, glibc's malloc for large blocks.
//!
//! Why mimalloc, and for C too: the API's requests and the stream's records make many short-lived small
//! allocations on several threads, where glibc's malloc was an eighth of the tokio workers' samples
//! (`_int_free`, `malloc_consolidate`, ...) and mimalloc serves `POST /v1/locations` a sixth faster.
//! librdkafka allocates a record on one thread and frees it on another (the application thread produces,
//! the broker thread frees once acknowledged; the broker thread makes a consumer op, the application
//! frees it): with glibc's malloc those frees went through the arena's lock and its bins, and in about
//! half the pipeline benchmark's runs `_int_malloc`, `_int_free` and walks over scattered records took
//! 60% more CPU in librdkafka's threads (the run took a third longer). mimalloc's `override` feature
//! makes it the process's `malloc`, librdkafka's included.
//!
//! Why not mimalloc for large blocks: the index builds grow a few very large vectors, which mimalloc
//! copied and kept: the world countries' raster build took 1.1 s instead of 0.75 s and peaked at 345 MB
//! instead of 285 MB. Those blocks still come from glibc's malloc, reached past the override, which
//! grows them in place (`mremap`) and returns them to the kernel when freed. Each block goes to one side
//! by its size and alignment, which `dealloc` and `realloc` are given again, so every block is freed by
//! the side that made it.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long};

use mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before it returns it to the kernel, unless the environment
/// says otherwise (`MIMALLOC_PURGE_DELAY`). Its default, 10 ms, is shorter than the stream's rhythm:
/// librdkafka frees each fetch response's and produce request's megabytes and allocates the next a few
/// milliseconds later, so the pipeline benchmark took 66–95 k page faults per 3 M events, every one a
/// freshly zeroed page (`clear_page_erms` was 7% of the samples). With a second: 8–9 k faults, 8% less
/// CPU. A burst's memory goes back to the kernel a second after it is freed instead.
pub const PURGE_DELAY_MS: c_long = 1000;

/// mimalloc 2's `mi_option_purge_delay` (`mi_option_t` in `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: c_int = 15;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

/// Sets the process allocator's options this service runs with; the environment's `MIMALLOC_*`
/// variables win. Call first thing in `main`: mimalloc reads the option at every purge.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's options may be set at any time from any thread.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Blocks of at least this many bytes come from glibc's malloc.
pub const LARGE_BLOCK_BYTES: usize = 256 * 1024;

/// mimalloc below [`LARGE_BLOCK_BYTES`], glibc's malloc from there on.
pub struct SplitAllocator;

fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE_BLOCK_BYTES && large::serves(align)
}

/// Large blocks from glibc's own malloc, found past mimalloc's override with `dlsym(RTLD_NEXT, ...)`:
/// it grows mapped blocks in place with `mremap` and reuses freed heap memory without faulting it in
/// again (raw mappings per block faulted 7× the pages in `geopromo match` and cost 0.2 s in 1.1).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod large {
    use std::alloc::Layout;
    use std::ffi::{c_void, CStr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// glibc's `malloc` returns blocks aligned to 16 bytes on 64-bit targets.
    const MALLOC_ALIGN: usize = 16;
    /// Larger alignments are left to mimalloc, so that glibc needs no `memalign`/`realloc` pairing.
    pub fn serves(align: usize) -> bool {
        align <= MALLOC_ALIGN
    }

    struct Symbol {
        name: &'static CStr,
        address: AtomicUsize,
    }

    impl Symbol {
        const fn new(name: &'static CStr) -> Self {
            Self {
                name,
                address: AtomicUsize::new(0),
            }
        }

        /// The next definition after this executable's (glibc's), resolved once; `dlsym` may allocate,
        /// which goes to mimalloc, never back here.
        fn address(&self) -> usize {
            let cached = self.address.load(Ordering::Acquire);
            if cached != 0 {
                return cached;
            }
            let found = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
            assert!(found != 0, "glibc's {:?} not found", self.name);
            self.address.store(found, Ordering::Release);
            found
        }
    }

    static MALLOC: Symbol = Symbol::new(c"malloc");
    static CALLOC: Symbol = Symbol::new(c"calloc");
    static REALLOC: Symbol = Symbol::new(c"realloc");
    static FREE: Symbol = Symbol::new(c"free");

    pub unsafe fn alloc(layout: Layout) -> *mut u8 {
        let malloc: unsafe extern "C" fn(usize) -> *mut c_void =
            unsafe { std::mem::transmute(MALLOC.address()) };
        unsafe { malloc(layout.size()) }.cast()
    }

    pub unsafe fn alloc_zeroed(layout: Layout) -> *mut u8 {
        let calloc: unsafe extern "C" fn(usize, usize) -> *mut c_void =
            unsafe { std::mem::transmute(CALLOC.address()) };
        unsafe { calloc(1, layout.size()) }.cast()
    }

    pub unsafe fn dealloc(ptr: *mut u8, _layout: Layout) {
        let free: unsafe extern "C" fn(*mut c_void) =
            unsafe { std::mem::transmute(FREE.address()) };
        unsafe { free(ptr.cast()) }
    }

    pub unsafe fn realloc(ptr: *mut u8, _layout: Layout, new_size: usize) -> *mut u8 {
        let realloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void =
            unsafe { std::mem::transmute(REALLOC.address()) };
        unsafe { realloc(ptr.cast(), new_size) }.cast()
    }
}

/// Elsewhere the system allocator serves large blocks, with their own layouts.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod large {
    use std::alloc::{GlobalAlloc, Layout, System};

    pub fn serves(_align: usize) -> bool {
        true
    }

    pub unsafe fn alloc(layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    pub unsafe fn alloc_zeroed(layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    pub unsafe fn dealloc(ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    pub unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// SAFETY: every call is forwarded to the side chosen by the block's size and alignment, which are what
// the block was allocated with (the `GlobalAlloc` contract passes the same layout to `dealloc` and
// `realloc`); a `realloc` that crosses the threshold allocates on the other side, copies and frees the
// old block. `is_large` admits only alignments the large side's blocks always have.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            unsafe { large::alloc(layout) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            unsafe { large::alloc_zeroed(layout) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size(), layout.align()) {
            unsafe { large::dealloc(ptr, layout) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (is_large(layout.size(), align), is_large(new_size, align)) {
            (true, true) => unsafe { large::realloc(ptr, layout, new_size) },
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY (of the layout): `realloc`'s contract makes `new_size` valid for this alignment.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills `len` bytes at `ptr` with a pattern that depends on `seed`.
    fn fill(ptr: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            unsafe {
                ptr.add(i)
                    .write((i as u8).wrapping_mul(31).wrapping_add(seed))
            };
        }
    }

    fn holds(ptr: *const u8, len: usize, seed: u8) -> bool {
        (0..len)
            .all(|i| unsafe { ptr.add(i).read() } == (i as u8).wrapping_mul(31).wrapping_add(seed))
    }

    #[test]
    fn blocks_keep_their_bytes_across_the_threshold_both_ways() {
        let allocator = SplitAllocator;
        let small = 1000;
        let large = LARGE_BLOCK_BYTES + 4096;
        for align in [8, 64, 4096, 16384] {
            let layout = Layout::from_size_align(small, align).unwrap();
            unsafe {
                let ptr = allocator.alloc(layout);
                assert!(!ptr.is_null());
                fill(ptr, small, 7);
                // Small → large: moves to glibc (mimalloc keeps alignments over 16 bytes), keeps the bytes,
                // keeps the alignment.
                let grown = allocator.realloc(ptr, layout, large);
                assert!(!grown.is_null());
                assert_eq!(grown as usize % align, 0);
                assert!(holds(grown, small, 7));
                fill(grown, large, 9);
                // Large → larger: remapped, same bytes.
                let large_layout = Layout::from_size_align(large, align).unwrap();
                let larger = allocator.realloc(grown, large_layout, 5 * large);
                assert!(!larger.is_null());
                assert_eq!(larger as usize % align, 0);
                assert!(holds(larger, large, 9));
                let larger_layout = Layout::from_size_align(5 * large, align).unwrap();
                let grown = allocator.realloc(larger, larger_layout, large);
                assert!(holds(grown, large, 9));
                // Large → small: back to mimalloc, keeps what fits.
                let shrunk = allocator.realloc(grown, large_layout, small);
                assert!(!shrunk.is_null());
                assert_eq!(shrunk as usize % align, 0);
                assert!(holds(shrunk, small, 9));
                allocator.dealloc(shrunk, layout);
            }
        }
    }

    extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
    }

    fn purge_delay_ms() -> c_long {
        // SAFETY: reading an option has no precondition.
        unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    #[test]
    fn the_purge_delay_option_is_mimallocs_and_configure_sets_it() {
        // The option's number is mimalloc 2's enum position: its default (10 ms) shows it is the one.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && purge_delay_ms() != PURGE_DELAY_MS
        {
            assert_eq!(purge_delay_ms(), 10);
        }
        configure();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        let allocator = SplitAllocator;
        for size in [
            24,
            LARGE_BLOCK_BYTES - 1,
            LARGE_BLOCK_BYTES,
            4 * LARGE_BLOCK_BYTES,
        ] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            unsafe {
                let ptr = allocator.alloc_zeroed(layout);
                assert!(!ptr.is_null());
                assert!((0..size).all(|i| ptr.add(i).read() == 0), "{size} bytes");
                allocator.dealloc(ptr, layout);
            }
        }
    }

    #[test]
    fn growing_within_either_side_keeps_the_bytes() {
        let allocator = SplitAllocator;
        for (from, to) in [(16, 4000), (LARGE_BLOCK_BYTES, 8 * LARGE_BLOCK_BYTES)] {
            let layout = Layout::from_size_align(from, 8).unwrap();
            unsafe {
                let ptr = allocator.alloc(layout);
                fill(ptr, from, 3);
                let grown = allocator.realloc(ptr, layout, to);
                assert!(holds(grown, from, 3));
                allocator.dealloc(grown, Layout::from_size_align(to, 8).unwrap());
            }
        }
    }
}
