//! The server folds recorded histogram samples into their buckets on its own: without a scrape
//! (or with `/metrics` off) they must not pile up. A test binary of its own, because it counts
//! every byte the process holds (its global allocator) and needs nothing else running.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use common::TestServer;

/// System's allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Fan-outs' samples recorded in the test: ~8 bytes each while they wait to be folded in.
const SAMPLES: usize = 250_000;

#[tokio::test]
async fn fan_out_samples_are_folded_in_without_a_scrape() {
    // No [metrics] listen: nothing will ever scrape this server.
    let server = TestServer::start("").await;
    let before = HELD.load(Ordering::Relaxed);
    let fanout = &chatrooms::metrics::get().fanout;
    for _ in 0..SAMPLES {
        fanout.record(0.000_2);
    }
    let grown = HELD.load(Ordering::Relaxed) - before;
    assert!(
        grown > SAMPLES as isize * 4,
        "recording samples held {grown} bytes"
    );
    let folded = async {
        while HELD.load(Ordering::Relaxed) - before > grown / 4 {
            // Fan-outs go on (the recorder frees folded samples' memory when later ones are
            // recorded: epoch-based reclamation).
            for _ in 0..100 {
                fanout.record(0.000_2);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), folded)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still holding {} of the {grown} bytes after 10 s",
                HELD.load(Ordering::Relaxed) - before
            )
        });
    server.shutdown().await;
}
