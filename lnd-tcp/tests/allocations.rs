//! No heap allocation per message on the hot path: a counting global allocator watches a
//! steady-state PUT ping-pong between two endpoints over TCP (whichever backend runs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use lanet::op::{MatchEntry, PutRequest};
use lanet::{Endpoint, Event, Lane, Nid, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn free_nid() -> Nid {
    lanet_lnd_tcp::free_loopback_nid().expect("a free loopback port")
}

fn endpoint(nid: Nid, on_event: impl FnMut(Event) + Send + 'static) -> Endpoint {
    let cfg = NodeConfig::new(u64::from(nid.socket_addr(0).unwrap().port()));
    let lnd = TcpLnd::bind(nid, TcpConfig::for_node(&cfg)).unwrap();
    Endpoint::builder(cfg)
        .lnd(lnd)
        .on_event(on_event)
        .start()
        .unwrap()
}

#[test]
fn a_steady_ping_pong_allocates_nothing_per_message() {
    const WARMUP: u64 = 3_000;
    const MEASURED: u64 = 20_000;
    let (na, nb) = (free_nid(), free_nid());
    let server = endpoint(nb, |_| {});
    server.attach(MatchEntry::sink(4, 0, 64)).unwrap();

    // Each completion sends the next PUT from the driver thread, as a server would.
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let cell: Arc<OnceLock<(Endpoint, PutRequest)>> = Arc::new(OnceLock::new());
    let mut count = 0u64;
    let mut before = 0u64;
    let on_event = {
        let cell = cell.clone();
        move |e: Event| {
            let Event::Completed(c) = e else { return };
            assert!(c.result.is_ok(), "{c:?}");
            count += 1;
            if count == WARMUP {
                before = ALLOCATIONS.load(Ordering::Relaxed);
            }
            if count == WARMUP + MEASURED {
                let _ = done_tx.try_send(ALLOCATIONS.load(Ordering::Relaxed) - before);
                return;
            }
            let (ep, req) = cell.get().unwrap();
            ep.put(req.clone()).unwrap();
        }
    };
    let client = endpoint(na, on_event);
    let req = PutRequest {
        dst: nb,
        lane: Lane::Data,
        portal: 4,
        match_bits: 0,
        payload: Bytes::from_static(b"8 bytes!"),
        timeout: Some(Duration::from_secs(10)),
        on_peer_down: Default::default(),
        ack: true,
    };
    let _ = cell.set((client.clone(), req.clone()));
    client.put(req).unwrap();
    let allocations = done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("ping-pong finished");
    let per_message = allocations as f64 / MEASURED as f64;
    eprintln!(
        "{allocations} allocations over {MEASURED} round trips ({per_message:.4} per round trip)"
    );
    // Both processes' worth of work (client and server in this process) for each round
    // trip: PUT, ACK, completion. Amortised buffer growth may allocate now and then; one
    // allocation per hundred round trips is the ceiling.
    assert!(
        per_message < 0.01,
        "{per_message} allocations per round trip"
    );
    client.shutdown();
    server.shutdown();
}
