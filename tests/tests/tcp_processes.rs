//! lanet over TCP between two processes on 127.0.0.1: this test process and a
//! `lanet-tcp-peer` child that the tests start, stop and kill.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use lanet::op::{Completion, GetRequest, PingRequest, PutRequest};
use lanet::{Endpoint, Event, Lane, Nid, NodeConfig, OpError, OpId, OpOutcome};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};
use lanet_tests::{free_tcp_nid, pattern, SINK_PORTAL, SIZES, SOURCE_PORTAL};

/// Guards against a hang only; nothing here should take more than a few seconds.
const HANG: Option<Duration> = Some(Duration::from_secs(60));

struct Peer {
    child: Child,
    nid: Nid,
}

impl Peer {
    /// Starts a peer process on a free port and waits until it serves.
    fn spawn(incarnation: u64) -> Peer {
        for _ in 0..5 {
            let nid = free_tcp_nid();
            let mut child = Command::new(env!("CARGO_BIN_EXE_lanet-tcp-peer"))
                .args([nid.to_string(), incarnation.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start lanet-tcp-peer");
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped");
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read the peer's stdout");
            if line.trim() == "ready" {
                return Peer { child, nid };
            }
            // The port was taken between our probe and its bind: try another.
            let _ = child.wait();
        }
        panic!("lanet-tcp-peer did not start");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// SIGSTOP, then wait until every thread has actually stopped (signals are delivered
    /// asynchronously: a running thread may still answer a frame).
    fn freeze(&self) {
        self.signal("-STOP");
        let tasks = format!("/proc/{}/task", self.child.id());
        for _ in 0..1000 {
            let all_stopped = std::fs::read_dir(&tasks)
                .expect("list the peer's threads")
                .all(|t| {
                    let stat =
                        std::fs::read_to_string(t.expect("thread entry").path().join("stat"))
                            .unwrap_or_default();
                    // The state follows the parenthesised command name: "pid (comm) T ..."
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                });
            if all_stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the peer did not stop");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_endpoint(incarnation: u64) -> Endpoint {
    let cfg = NodeConfig::new(incarnation);
    // Another test process may take the port between our probe and our bind: try again.
    let lnd = (0..5)
        .find_map(|_| TcpLnd::bind(free_tcp_nid(), TcpConfig::for_node(&cfg)).ok())
        .expect("bind a loopback port");
    Endpoint::builder(cfg).lnd(lnd).start().expect("start")
}

fn wait_all(ep: &Endpoint, ops: &[OpId]) -> HashMap<OpId, Completion> {
    let mut done = HashMap::new();
    while ops.iter().any(|op| !done.contains_key(op)) {
        let e = ep.recv_event(HANG).expect("operations hang");
        if let Event::Completed(c) = e {
            assert!(
                done.insert(c.op, c.clone()).is_none(),
                "completed twice: {c:?}"
            );
        }
    }
    done
}

fn put(dst: Nid, payload: Bytes) -> PutRequest {
    PutRequest {
        dst,
        lane: Lane::Data,
        portal: SINK_PORTAL,
        match_bits: 1,
        payload,
        timeout: None,
    }
}

fn get(dst: Nid, i: usize) -> GetRequest {
    GetRequest {
        dst,
        lane: Lane::Data,
        portal: SOURCE_PORTAL,
        match_bits: i as u64,
        want_len: SIZES[SIZES.len() - 1] as u32,
        timeout: None,
    }
}

#[test]
fn puts_and_gets_of_0_bytes_to_16_mib_cross_processes_intact_both_ways() {
    let peer = Peer::spawn(7);
    let ep = local_endpoint(1);
    let puts: Vec<(OpId, usize)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            (
                ep.put(put(peer.nid, pattern(len, 100 + i as u8))).unwrap(),
                len,
            )
        })
        .collect();
    let gets: Vec<(OpId, usize)> = (0..SIZES.len())
        .map(|i| (ep.get(get(peer.nid, i)).unwrap(), i))
        .collect();
    let ids: Vec<OpId> = puts.iter().chain(&gets).map(|(op, _)| *op).collect();
    let done = wait_all(&ep, &ids);
    for (op, len) in puts {
        assert_eq!(
            done[&op].result,
            Ok(OpOutcome::Put { mlen: len as u32 }),
            "PUT of {len}"
        );
    }
    for (op, i) in gets {
        let want = pattern(SIZES[i], i as u8);
        match &done[&op].result {
            Ok(OpOutcome::Get { data }) => {
                assert!(*data == want, "GET of {} bytes corrupted", SIZES[i])
            }
            other => panic!("GET of {}: {other:?}", SIZES[i]),
        }
    }
}

#[test]
fn killing_the_peer_mid_transfer_fails_every_operation_in_flight_exactly_once() {
    let peer = Peer::spawn(7);
    let ep = local_endpoint(1);
    // Both lanes up and working.
    let first = ep.put(put(peer.nid, pattern(1000, 1))).unwrap();
    let ping = ep
        .ping(PingRequest {
            dst: peer.nid,
            lane: Lane::Health,
            timeout: None,
        })
        .unwrap();
    let done = wait_all(&ep, &[first, ping]);
    assert!(done.values().all(|c| c.result.is_ok()), "{done:?}");

    // Freeze the peer, so that nothing submitted from now on can be answered; then give it
    // plenty: socket buffers fill, credits run out, the rest waits in queues.
    peer.freeze();
    let mut ops: Vec<OpId> = (0..32)
        .map(|i| ep.put(put(peer.nid, pattern(1 << 20, i))).unwrap())
        .collect();
    ops.extend((0..4).map(|_| ep.get(get(peer.nid, SIZES.len() - 1)).unwrap()));
    ops.extend((0..4).map(|_| {
        ep.ping(PingRequest {
            dst: peer.nid,
            lane: Lane::Health,
            timeout: None,
        })
        .unwrap()
    }));
    std::thread::sleep(Duration::from_millis(200));
    peer.signal("-KILL");

    let done = wait_all(&ep, &ops);
    assert_eq!(done.len(), ops.len());
    for c in done.values() {
        match &c.result {
            Err(OpError::Network(_) | OpError::Remote(_)) => {}
            other => panic!(
                "{}: expected a network or remote failure, got {other:?}",
                c.op
            ),
        }
    }
    // A process that is gone refuses connections.
    let after = ep
        .put(put(peer.nid, Bytes::from_static(b"anyone?")))
        .unwrap();
    let done = wait_all(&ep, &[after]);
    assert!(
        matches!(&done[&after].result, Err(OpError::Remote(m)) if m.contains("refused")),
        "{done:?}"
    );
}

#[test]
fn a_restarted_peer_process_is_reported_as_a_restart() {
    let peer = Peer::spawn(7);
    let ep = local_endpoint(1);
    let op = ep.put(put(peer.nid, pattern(10, 0))).unwrap();
    assert!(wait_all(&ep, &[op])[&op].result.is_ok());
    let nid = peer.nid;
    drop(peer);
    // A new process on the same address, with a new incarnation.
    let mut reborn = None;
    for _ in 0..50 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lanet-tcp-peer"))
            .args([nid.to_string(), "8".to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() == "ready" {
            reborn = Some(Peer { child, nid });
            break;
        }
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100)); // the old socket may linger
    }
    let _reborn = reborn.expect("restart the peer on its old address");
    let mut restarted = false;
    let mut result = None;
    while result.is_none() {
        let op = ep.put(put(nid, pattern(10, 0))).unwrap();
        loop {
            match ep.recv_event(HANG).expect("events") {
                Event::PeerRestarted {
                    peer,
                    old: 7,
                    new: 8,
                } if peer == nid => restarted = true,
                Event::Completed(c) if c.op == op => {
                    // The first attempt may meet the dead connection; the next one connects.
                    if c.result.is_ok() {
                        result = Some(c.result);
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    assert!(restarted, "the new incarnation was noticed");
}
