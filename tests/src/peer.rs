//! A `lanet-peer` child process, and the operations the process tests send it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use lanet::op::{Completion, GetRequest, PingRequest, PutRequest};
use lanet::{Endpoint, Event, Lane, Nid, OpError, OpId, OpOutcome};

use crate::{SINK_PORTAL, SIZES, SOURCE_PORTAL};

/// Guards against a hang only; nothing in the process tests should take this long.
pub const HANG: Option<Duration> = Some(Duration::from_secs(120));

/// What a peer received, as it says when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// PUT payloads that were what their sender made.
    pub intact: u64,
    pub corrupt: u64,
}

pub struct Peer {
    pub child: Child,
    pub nid: Nid,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Peer {
    /// Starts `exe` (the `lanet-peer` binary) on `nid`; None if it did not come up (its
    /// address was taken, say).
    pub fn start(exe: &str, nid: Nid, incarnation: u64, quiet: bool) -> Option<Peer> {
        Peer::spawn(
            &[],
            exe,
            &[nid.to_string(), incarnation.to_string()],
            nid,
            quiet,
        )
    }

    /// Starts `exe` on a free loopback port; tries another if the port was taken between
    /// the probe and the peer's bind.
    pub fn start_on_loopback(exe: &str, incarnation: u64, quiet: bool) -> Peer {
        (0..5)
            .find_map(|_| Peer::start(exe, crate::free_tcp_nid(), incarnation, quiet))
            .expect("lanet-peer did not start")
    }

    /// Starts `exe` on configuration file `config`, whose first net is `nid`, behind
    /// `prefix` (e.g. `ip netns exec NS`; empty: none).
    pub fn start_with_config(
        prefix: &[String],
        exe: &str,
        config: &std::path::Path,
        nid: Nid,
        quiet: bool,
    ) -> Option<Peer> {
        let args = ["--config".to_owned(), config.display().to_string()];
        Peer::start_with_args(prefix, exe, &args, nid, quiet)
    }

    /// Starts `exe` with `args` (as `lanet-peer` takes them), behind `prefix`.
    pub fn start_with_args(
        prefix: &[String],
        exe: &str,
        args: &[String],
        nid: Nid,
        quiet: bool,
    ) -> Option<Peer> {
        Peer::spawn(prefix, exe, args, nid, quiet)
    }

    fn spawn(prefix: &[String], exe: &str, args: &[String], nid: Nid, quiet: bool) -> Option<Peer> {
        let (program, before) = match prefix.split_first() {
            Some((p, rest)) => (p.as_str(), rest.to_vec()),
            None => (exe, Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(&before);
        if !prefix.is_empty() {
            cmd.arg(exe);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("start lanet-peer");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the peer's stdout");
        if line.trim() == "ready" {
            return Some(Peer {
                child,
                nid,
                stdout: Some(stdout),
            });
        }
        let _ = child.wait();
        None
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// SIGSTOP, then wait until every thread has actually stopped (signals are delivered
    /// asynchronously: a running thread may still answer a frame).
    pub fn freeze(&self) {
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

    /// Closes the peer's input so it shuts down, and returns what it says last: how many
    /// PUT payloads it received intact and corrupt.
    pub fn finish(self) -> (u64, u64) {
        let c = self.finish_counts();
        (c.intact, c.corrupt)
    }

    /// [`Peer::finish`], with the peer's counts by name.
    pub fn finish_counts(mut self) -> PeerCounts {
        drop(self.child.stdin.take());
        let mut line = String::new();
        let stdout = self.stdout.as_mut().expect("read once");
        stdout.read_line(&mut line).expect("the peer's summary");
        let _ = self.child.wait();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["puts", "intact", ok, "corrupt", bad] => PeerCounts {
                intact: ok.parse().expect("a count"),
                corrupt: bad.parse().expect("a count"),
            },
            _ => panic!("unexpected summary from the peer: {line:?}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for every op in `ops` to complete, exactly once each.
pub fn wait_all(ep: &Endpoint, ops: &[OpId]) -> HashMap<OpId, Completion> {
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

/// A PUT to the peer's sink.
pub fn put(dst: Nid, payload: Bytes) -> PutRequest {
    PutRequest {
        dst,
        lane: Lane::Data,
        portal: SINK_PORTAL,
        match_bits: 1,
        payload,
        timeout: None,
        on_peer_down: Default::default(),
        ack: true,
    }
}

/// A GET of the peer's source `i` (`pattern(SIZES[i], i)`).
pub fn get(dst: Nid, i: usize) -> GetRequest {
    GetRequest {
        dst,
        lane: Lane::Data,
        portal: SOURCE_PORTAL,
        match_bits: i as u64,
        want_len: SIZES[SIZES.len() - 1] as u32,
        timeout: None,
        on_peer_down: Default::default(),
    }
}

/// PUTs of every size in [`SIZES`] to the peer and GETs of every size from it, run at
/// once; every payload must arrive intact (the peer checks the PUTs, we the GETs).
pub fn check_exchange_of_every_size(ep: &Endpoint, peer: Peer) {
    let exchange = Exchange::submit(peer.nid, |r| match r {
        Request::Put(r) => ep.put(r).unwrap(),
        Request::Get(r) => ep.get(r).unwrap(),
    });
    let done = wait_all(ep, &exchange.ops());
    exchange.check(&done, peer);
}

/// A request of an [`Exchange`].
pub enum Request {
    Put(PutRequest),
    Get(GetRequest),
}

/// The operations of [`check_exchange_of_every_size`]: each PUT with its length, each GET
/// with its index in [`SIZES`].
pub struct Exchange {
    puts: Vec<(OpId, usize)>,
    gets: Vec<(OpId, usize)>,
}

impl Exchange {
    /// Submits a PUT and a GET of every size to `dst`, each by `submit`.
    pub fn submit(dst: Nid, mut submit: impl FnMut(Request) -> OpId) -> Exchange {
        let puts = SIZES
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let payload = crate::pattern(len, 100 + i as u8);
                (submit(Request::Put(put(dst, payload))), len)
            })
            .collect();
        let gets = (0..SIZES.len())
            .map(|i| (submit(Request::Get(get(dst, i))), i))
            .collect();
        Exchange { puts, gets }
    }

    pub fn ops(&self) -> Vec<OpId> {
        self.puts
            .iter()
            .chain(&self.gets)
            .map(|(op, _)| *op)
            .collect()
    }

    /// Every PUT acknowledged in full, every GET's data intact, and the peer's count of
    /// intact PUT payloads.
    pub fn check(self, done: &HashMap<OpId, Completion>, peer: Peer) {
        for (op, len) in self.puts {
            assert_eq!(
                done[&op].result,
                Ok(OpOutcome::Put { mlen: len as u32 }),
                "PUT of {len}"
            );
        }
        for (op, i) in self.gets {
            let want = crate::pattern(SIZES[i], i as u8);
            match &done[&op].result {
                Ok(OpOutcome::Get { data }) => {
                    assert!(*data == want, "GET of {} bytes corrupted", SIZES[i])
                }
                other => panic!("GET of {}: {other:?}", SIZES[i]),
            }
        }
        assert_eq!(
            peer.finish(),
            (SIZES.len() as u64, 0),
            "PUT payloads the peer received (intact, corrupt)"
        );
    }
}

/// Freezes the peer with operations of every kind outstanding, kills it, and checks that
/// every one of them fails (peer dead, network or remote) exactly once, and that the dead
/// peer then refuses connections.
pub fn check_kill_mid_transfer(ep: &Endpoint, peer: Peer) {
    let ping = |ep: &Endpoint| {
        ep.ping(PingRequest {
            dst: peer.nid,
            lane: Lane::Health,
            timeout: None,
            on_peer_down: Default::default(),
        })
        .unwrap()
    };
    // Both lanes up and working.
    let first = ep.put(put(peer.nid, crate::pattern(1000, 1))).unwrap();
    let done = wait_all(ep, &[first, ping(ep)]);
    assert!(done.values().all(|c| c.result.is_ok()), "{done:?}");

    // Freeze the peer, so that nothing submitted from now on can be answered; then give it
    // plenty: buffers fill, credits run out, the rest waits in queues.
    peer.freeze();
    let mut ops: Vec<OpId> = (0..32)
        .map(|i| ep.put(put(peer.nid, crate::pattern(1 << 20, i))).unwrap())
        .collect();
    ops.extend((0..4).map(|_| ep.get(get(peer.nid, SIZES.len() - 1)).unwrap()));
    ops.extend((0..4).map(|_| ping(ep)));
    std::thread::sleep(Duration::from_millis(200));
    peer.signal("-KILL");

    let done = wait_all(ep, &ops);
    assert_eq!(done.len(), ops.len());
    for c in done.values() {
        match &c.result {
            // Whichever comes first: failure detection (the frozen peer is silent), or the
            // connection dying with the process.
            Err(OpError::PeerDead | OpError::Network(_) | OpError::Remote(_)) => {}
            other => panic!(
                "{}: expected the peer declared dead, or a network or remote failure, got {other:?}",
                c.op
            ),
        }
    }
    // A new operation fails at once: with `PeerDead` if failure detection already declared
    // the peer Down, else because a process that is gone refuses connections.
    let after = ep
        .put(put(peer.nid, Bytes::from_static(b"anyone?")))
        .unwrap();
    let done = wait_all(ep, &[after]);
    assert!(
        match &done[&after].result {
            Err(OpError::PeerDead) => true,
            Err(OpError::Remote(m)) => m.contains("refused"),
            _ => false,
        },
        "{done:?}"
    );
}
