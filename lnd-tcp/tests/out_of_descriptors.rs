//! A TCP LND in a process out of file descriptors. Alone in its binary: it lowers the
//! process's descriptor limit, which no other test may share.

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanet::lnd::Lnd;
use socket2::{Domain, Socket, Type};

/// Lowers the process's soft descriptor limit to `room` above the highest open
/// descriptor: the limit to put back.
fn lower_descriptor_limit(room: u64) -> libc::rlimit {
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid rlimit for the kernel to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let low = libc::rlimit {
        rlim_cur: highest + 1 + room,
        rlim_max: old.rlim_max,
    };
    // SAFETY: a valid rlimit, read by the kernel only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    old
}

/// Opens descriptors until the process may open no more.
fn use_up_descriptors() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return held,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
}

fn restore_descriptors(held: Vec<File>, old: libc::rlimit) {
    drop(held);
    // SAFETY: a valid rlimit, read by the kernel only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
}

/// Out of descriptors, an accept fails at once, with or without a connection waiting: the
/// driver must not retry at once (a busy loop, a log line per turn), and the connection
/// left waiting in the listen backlog must be taken once descriptors are free again,
/// without another connection's arrival to prompt it (the epoll listener is
/// edge-triggered).
#[test]
fn out_of_descriptors_a_driver_pauses_accepting_and_then_takes_what_waited() {
    // Lowered first: io_uring's accept takes the limit as it was when it was armed.
    let old = lower_descriptor_limit(64);
    let nid = lanet_lnd_tcp::free_loopback_nid().unwrap();
    let mut server = common::lnd(nid, Duration::ZERO);
    let addr: SocketAddr = server.local_addr().unwrap();
    let mut events = Vec::new();
    server.poll(&mut events, Some(Duration::ZERO)).unwrap(); // the ring runs, accepting
    let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let held = use_up_descriptors();
    // The handshake completes in the kernel; the LND's accept needs a descriptor.
    client.connect(&addr.into()).unwrap();
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < Duration::from_millis(500) {
        server
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        polls += 1;
    }
    restore_descriptors(held, old);
    // Each poll waits up to 50 ms, or to the end of a pause: about ten in 500 ms. An
    // io_uring driver retrying at once polled ~960,000 times; epoll's failure was the
    // other (below): it stranded the backlog.
    assert!(
        polls < 100,
        "{:?}: {polls} polls in 500 ms while out of descriptors: accepting spins",
        server.backend()
    );

    // Bytes that are no lanet frame: once the LND has taken the connection, it closes it.
    let mut client = std::net::TcpStream::from(client);
    client.write_all(&[0u8; 128]).unwrap();
    client.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let closed = loop {
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        match client.read(&mut [0u8; 64]) {
            Ok(0) => break true,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("unexpected read: {other:?}"),
        }
        if start.elapsed() > Duration::from_secs(3) {
            break false;
        }
    };
    assert!(
        closed,
        "{:?}: the connection that waited in the backlog was never taken",
        server.backend()
    );
}
