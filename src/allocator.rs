//! The process's allocator: mimalloc for small blocks, the system allocator for large ones.
//!
//! Why two: the API's requests and the stream's records make many short-lived small allocations on
//! several threads, where glibc's malloc was an eighth of the tokio workers' samples (`_int_free`,
//! `malloc_consolidate`, ...) and mimalloc serves `POST /v1/locations` a sixth faster. The index builds
//! grow a few very large vectors, where glibc grows a block in place (`mremap`) and returns it to the
//! kernel when freed, and mimalloc copied and kept more: the world countries' raster build took 1.1 s
//! instead of 0.75 s and peaked at 345 MB instead of 285 MB. Each block goes to one allocator by its
//! size, which `dealloc` and `realloc` are given again, so every block is freed by the allocator that
//! made it.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of at least this many bytes come from the system allocator.
pub const LARGE_BLOCK_BYTES: usize = 256 * 1024;

/// mimalloc below [`LARGE_BLOCK_BYTES`], the system allocator from there on.
pub struct SplitAllocator;

fn is_large(size: usize) -> bool {
    size >= LARGE_BLOCK_BYTES
}

// SAFETY: every call is forwarded to the allocator chosen by the block's size, which is the size the
// block was allocated with (the `GlobalAlloc` contract passes the same layout to `dealloc` and `realloc`);
// a `realloc` that crosses the threshold allocates in the other allocator, copies and frees the old block.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY (of the layout): `realloc`'s contract makes `new_size` valid for this alignment.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
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
        for align in [8, 64, 4096] {
            let layout = Layout::from_size_align(small, align).unwrap();
            unsafe {
                let ptr = allocator.alloc(layout);
                assert!(!ptr.is_null());
                fill(ptr, small, 7);
                // Small → large: moves to the system allocator, keeps the bytes, keeps the alignment.
                let grown = allocator.realloc(ptr, layout, large);
                assert!(!grown.is_null());
                assert_eq!(grown as usize % align, 0);
                assert!(holds(grown, small, 7));
                fill(grown, large, 9);
                // Large → small: back to mimalloc, keeps what fits.
                let large_layout = Layout::from_size_align(large, align).unwrap();
                let shrunk = allocator.realloc(grown, large_layout, small);
                assert!(!shrunk.is_null());
                assert_eq!(shrunk as usize % align, 0);
                assert!(holds(shrunk, small, 9));
                allocator.dealloc(shrunk, layout);
            }
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
