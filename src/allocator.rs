//! The process's allocator: mimalloc for small blocks, pages straight from the kernel for large ones.
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
//! instead of 285 MB. Those blocks are mapped pages here, grown in place by `mremap` and returned to the
//! kernel when freed, as glibc did for them. Each block goes to one side by its size and alignment,
//! which `dealloc` and `realloc` are given again, so every block is freed by the side that made it.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// Blocks of at least this many bytes are mapped pages.
pub const LARGE_BLOCK_BYTES: usize = 256 * 1024;

/// mimalloc below [`LARGE_BLOCK_BYTES`], mapped pages from there on.
pub struct SplitAllocator;

fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE_BLOCK_BYTES && pages::serves(align)
}

/// Large blocks as anonymous private mappings (zeroed by the kernel), resized with `mremap`.
#[cfg(target_os = "linux")]
mod pages {
    /// Mappings start on a page; 4 KiB is the smallest page Linux uses.
    const PAGE_BYTES: usize = 4096;

    pub fn serves(align: usize) -> bool {
        align <= PAGE_BYTES
    }

    pub unsafe fn alloc(size: usize) -> *mut u8 {
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr.cast()
        }
    }

    pub unsafe fn dealloc(ptr: *mut u8, size: usize) {
        // Fails only for an address this module did not map.
        unsafe { libc::munmap(ptr.cast(), size) };
    }

    pub unsafe fn realloc(ptr: *mut u8, size: usize, new_size: usize) -> *mut u8 {
        let moved = unsafe { libc::mremap(ptr.cast(), size, new_size, libc::MREMAP_MAYMOVE) };
        if moved == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            moved.cast()
        }
    }
}

/// Elsewhere the system allocator serves large blocks.
#[cfg(not(target_os = "linux"))]
mod pages {
    use std::alloc::{GlobalAlloc, Layout, System};

    pub fn serves(_align: usize) -> bool {
        true
    }

    fn layout(size: usize) -> Layout {
        // Large blocks of any alignment up to a page: ask for a page's, so that every call agrees.
        Layout::from_size_align(size, 4096).expect("a large block's layout")
    }

    pub unsafe fn alloc(size: usize) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout(size)) }
    }

    pub unsafe fn dealloc(ptr: *mut u8, size: usize) {
        unsafe { System.dealloc(ptr, layout(size)) }
    }

    pub unsafe fn realloc(ptr: *mut u8, size: usize, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout(size), new_size) }
    }
}

// SAFETY: every call is forwarded to the side chosen by the block's size and alignment, which are what
// the block was allocated with (the `GlobalAlloc` contract passes the same layout to `dealloc` and
// `realloc`); a `realloc` that crosses the threshold allocates on the other side, copies and frees the
// old block. Mapped blocks are page-aligned, which serves every alignment `is_large` admits.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            unsafe { pages::alloc(layout.size()) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            // Fresh mappings are zero.
            unsafe { pages::alloc(layout.size()) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size(), layout.align()) {
            unsafe { pages::dealloc(ptr, layout.size()) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (is_large(layout.size(), align), is_large(new_size, align)) {
            (true, true) => unsafe { pages::realloc(ptr, layout.size(), new_size) },
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
                // Small → large: moves to mapped pages (mimalloc keeps alignments over a page), keeps the bytes,
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
