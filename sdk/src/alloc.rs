//! A cache of small freed blocks in front of the plugin's allocator.
//!
//! Every string and list that crosses the boundary is an allocation in the
//! plugin, and the batch is freed when the call ends: a thousand-event batch
//! is some ten thousand small blocks allocated and freed per call. Profiles
//! put talc's general-purpose allocate and free at 14% of the whole server's
//! CPU. Small freed blocks are cheaper to keep in a free list per size class
//! and hand out again on the next call: a pop and a push instead of a bin
//! search, a split and a coalesce.
//!
//! Bounded: at most [`CACHE_BYTES`] of freed blocks are kept; beyond that they
//! go back to the inner allocator, so a burst of small blocks can still be
//! reused for large ones afterwards.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// Size classes are multiples of this; it is also the blocks' alignment.
const GRANULE: usize = 8;
/// Classes cover 8..=512 bytes; larger requests go straight to the inner allocator.
const CLASSES: usize = 64;
/// Most bytes of freed blocks kept for reuse, over all classes.
pub const CACHE_BYTES: usize = 4 << 20;

/// Wraps `A`, serving small allocations from per-size free lists.
pub struct SmallBlocks<A> {
    inner: A,
    state: UnsafeCell<Lists>,
}

struct Lists {
    /// Head of each class's singly linked list; a free block stores the next pointer.
    heads: [*mut u8; CLASSES],
    cached: usize,
}

// SAFETY: `new` is unsafe and requires a single-threaded program, which is
// what wasm32 without the atomics feature is (the only place the SDK
// installs it); no two calls can then race on `state`.
unsafe impl<A: Sync> Sync for SmallBlocks<A> {}

impl<A> SmallBlocks<A> {
    /// # Safety
    /// The allocator must only ever be used from one thread.
    pub const unsafe fn new(inner: A) -> Self {
        SmallBlocks {
            inner,
            state: UnsafeCell::new(Lists {
                heads: [ptr::null_mut(); CLASSES],
                cached: 0,
            }),
        }
    }
}

/// The class serving `layout`, if it is small enough.
fn class(layout: Layout) -> Option<usize> {
    let c = layout.size().saturating_sub(1) / GRANULE;
    (c < CLASSES && layout.align() <= GRANULE).then_some(c)
}

/// What is asked of the inner allocator for a block of class `c`.
fn block(c: usize) -> Layout {
    // SAFETY: a non-zero multiple of a power-of-two alignment, far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked((c + 1) * GRANULE, GRANULE) }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for SmallBlocks<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: single-threaded (see `new`), and no reference outlives this call.
        let lists = unsafe { &mut *self.state.get() };
        let p = lists.heads[c];
        if p.is_null() {
            return unsafe { self.inner.alloc(block(c)) };
        }
        // SAFETY: `p` is a free block of this class; its first word is the next one.
        lists.heads[c] = unsafe { p.cast::<*mut u8>().read() };
        lists.cached -= block(c).size();
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            return unsafe { self.inner.dealloc(p, layout) };
        };
        let lists = unsafe { &mut *self.state.get() };
        let size = block(c).size();
        if lists.cached + size > CACHE_BYTES {
            return unsafe { self.inner.dealloc(p, block(c)) };
        }
        // SAFETY: `p` came from `alloc` with this class, so it is a block of at
        // least GRANULE bytes aligned to GRANULE: room for the next pointer.
        unsafe { p.cast::<*mut u8>().write(lists.heads[c]) };
        lists.heads[c] = p;
        lists.cached += size;
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            (None, None) => unsafe { self.inner.realloc(p, layout, new_size) },
            (Some(a), Some(b)) if a == b => p,
            _ => {
                let q = unsafe { self.alloc(new) };
                if !q.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::cell::Cell;

    /// System, counting what reaches it.
    #[derive(Default)]
    struct Counting {
        allocs: Cell<usize>,
        frees: Cell<usize>,
    }
    unsafe impl Sync for Counting {}
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            self.frees.set(self.frees.get() + 1);
            unsafe { System.dealloc(p, l) }
        }
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 1).unwrap()
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class() {
        let a = unsafe { SmallBlocks::new(Counting::default()) };
        unsafe {
            let p = a.alloc(layout(20));
            a.dealloc(p, layout(20));
            assert_eq!(
                a.alloc(layout(17)),
                p,
                "17 and 20 bytes share the 24-byte class"
            );
            let q = a.alloc(layout(20));
            assert_ne!(q, p, "a block in use is not handed out twice");
            assert_eq!(a.inner.allocs.get(), 2);
            a.dealloc(p, layout(17));
            a.dealloc(q, layout(20));
        }
    }

    #[test]
    fn large_and_overaligned_requests_go_to_the_inner_allocator() {
        let a = unsafe { SmallBlocks::new(Counting::default()) };
        for l in [layout(513), Layout::from_size_align(32, 16).unwrap()] {
            unsafe {
                let p = a.alloc(l);
                assert_eq!(p as usize % l.align(), 0);
                a.dealloc(p, l);
            }
        }
        assert_eq!(a.inner.frees.get(), 2);
    }

    #[test]
    fn realloc_keeps_contents_across_classes_and_into_large_blocks() {
        let a = unsafe { SmallBlocks::new(Counting::default()) };
        unsafe {
            let mut p = a.alloc(layout(3));
            p.copy_from(b"abc".as_ptr(), 3);
            let mut size = 3;
            for new in [7, 30, 300, 5000, 100, 2] {
                p = a.realloc(p, layout(size), new);
                size = new;
                assert_eq!(
                    std::slice::from_raw_parts(p, 2),
                    b"ab",
                    "after realloc to {new}"
                );
            }
            a.dealloc(p, layout(size));
        }
    }

    #[test]
    fn cached_bytes_are_bounded() {
        let a = unsafe { SmallBlocks::new(Counting::default()) };
        let n = CACHE_BYTES / 512 + 10;
        let blocks: Vec<_> = (0..n).map(|_| unsafe { a.alloc(layout(512)) }).collect();
        for p in blocks {
            unsafe { a.dealloc(p, layout(512)) };
        }
        assert_eq!(
            a.inner.frees.get(),
            10,
            "the blocks past the budget are given back"
        );
    }

    #[test]
    fn live_blocks_never_overlap_under_churn() {
        let a = unsafe { SmallBlocks::new(Counting::default()) };
        let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
        let mut seed = 7u64;
        for i in 0..20_000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as usize;
            if r.is_multiple_of(3) && !live.is_empty() {
                let (p, size, tag) = live.swap_remove(r % live.len());
                let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                assert!(bytes.iter().all(|&b| b == tag), "block was overwritten");
                unsafe { a.dealloc(p, layout(size)) };
            } else {
                let size = 1 + r % 700;
                let p = unsafe { a.alloc(layout(size)) };
                let tag = i as u8;
                unsafe { p.write_bytes(tag, size) };
                live.push((p, size, tag));
            }
        }
        for (p, size, _) in live {
            unsafe { a.dealloc(p, layout(size)) };
        }
    }
}
