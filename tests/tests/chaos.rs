//! Chaos across the client / router / server topology, in network namespaces: the client
//! (this test) on net A, `lanet-router` processes R1 and R2 on A and B, `lanet-peer`
//! servers S1 and S2 on B. A load of PUTs runs throughout, each with a unique tag, while a
//! schedule of faults cycles: links slowed (netem delay, jitter, reordering), lossy,
//! cables pulled (a router becomes a black hole), routers killed (-9) and restarted,
//! servers restarted. At the end, an invariant checker:
//!
//! * every operation completed exactly once;
//! * every PUT was delivered at most once (over every server instance), intact, and
//!   every PUT that succeeded was delivered;
//! * the client declared no peer Down while links were only slowed within the configured
//!   bounds (the detect time is 3 s here, see below; a slowed round trip is a few tens
//!   of milliseconds), counting the detect time after the slowing ends;
//! * the router whose cable was pulled took itself out (absent), and both routers are
//!   back to forwarding once the faults stop, and carry traffic.
//!
//! It runs inside the soft-RoCE VM (`tests/rxe-vm`), whose Debian kernel has `sch_netem`
//! (this machine's has not), as root there, over veths: no RDMA involved. The VM is
//! emulated (TCG) and slow, so every node's health interval is 1 s (detect time 3 s);
//! what counts is what must never happen, not speed.
//!
//! Short mode (the test command): one cycle of 6 s phases, about 1.5 minutes with the
//! VM's boot. Long mode, by hand, for as many seconds as wanted (15 s phases; the VM
//! harness stops anything past 1,200 s):
//!
//! ```sh
//! LANET_CHAOS_SECS=600 cargo test -p lanet-tests --test chaos -- --nocapture
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanet::config::{ConfigFile, OpenLnd};
use lanet::{Endpoint, Event, Nid, OpId};
use lanet_tests::netns::{self, Host, Lab};
use lanet_tests::peer::{put, Peer, PeerCounts};
use lanet_tests::router::{net, route, RouterProcess, Scratch};
use lanet_tests::{run_in_rxe_vm, tagged, IN_RXE_VM};

const ROUTER_EXE: &str = env!("CARGO_BIN_EXE_lanet-router-under-test");
const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");
const DRIVERS: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];
const PORT: u16 = 7000;
const A: usize = 0;
const B: usize = 1;
/// PUTs in flight at once, and their size (the VM is emulated: a modest load).
const WINDOW: usize = 8;
const PUT_LEN: usize = 4096;

/// What the fault schedule is doing; the load notes it with every Down it hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Phase {
    Calm,
    /// Delay, jitter and reordering within the detection bounds: no Down allowed.
    Slow,
    /// Calm after Slow, for a detect time: a Down here would still be Slow's doing.
    Settle,
    Lossy,
    /// R1's cable on net B pulled: R1 is a black hole for B until it takes itself out.
    BlackHole,
    /// R2 killed (-9), restarted.
    RouterKilled,
    /// S1 stopped and started again (a new incarnation).
    ServerRestart,
}

const CYCLE: [Phase; 8] = [
    Phase::Calm,
    Phase::Slow,
    Phase::Settle,
    Phase::Lossy,
    Phase::BlackHole,
    Phase::Calm,
    Phase::RouterKilled,
    Phase::ServerRestart,
];

/// Every node's health settings: the detect time is 3 s (see the module documentation).
const HEALTH: &str = "[health]\ninterval = \"1s\"\n";

/// Slowed, within bounds: 20 ms +- 10 ms each way, a quarter of packets reordered.
const SLOW: &str = "delay 20ms 10ms distribution normal reorder 25% 50%";
const LOSSY: &str = "loss 2%";

struct Site {
    client: Endpoint,
    routers: Vec<Option<RouterProcess>>,
    servers: Vec<Option<Peer>>,
    router_hosts: Vec<Host>,
    server_hosts: Vec<Host>,
    server_nids: Vec<Nid>,
    /// Every server life's counts, as each ended.
    ended: Vec<PeerCounts>,
    /// Which server each life was (life k records its tags in `ids-k`, from 1).
    lives: Vec<usize>,
    scratch: Scratch,
    lab: Lab,
}

fn nid(lab: &Lab, net: usize, n: u8) -> Nid {
    let name = if net == A { "tcp1" } else { "tcp2" };
    format!("{}:{PORT}@{name}", lab.addr(net, n))
        .parse()
        .unwrap()
}

impl Site {
    fn new() -> Site {
        let mut lab = Lab::new(2).expect("make the lab");
        let scratch = Scratch::new("chaos");
        let here = lab.join_here(A, 1).expect("join net A");
        let router_hosts: Vec<Host> = [11, 12]
            .iter()
            .map(|&n| lab.host(&format!("r{n}"), n, &[A, B]).unwrap())
            .collect();
        let server_hosts: Vec<Host> = [21, 22]
            .iter()
            .map(|&n| lab.host(&format!("s{n}"), n, &[B]).unwrap())
            .collect();
        let gateways = |lab: &Lab, net: usize| -> Vec<String> {
            [11, 12]
                .iter()
                .map(|&n| nid(lab, net, n).to_string())
                .collect()
        };
        let client_cfg = format!(
            "transaction_timeout = \"20s\"\n{}{}{HEALTH}",
            net("tcp1", &here.to_string(), PORT),
            route("tcp2", &gateways(&lab, A)),
        );
        let client = ConfigFile::parse("client.toml", &client_cfg)
            .unwrap()
            .endpoint(&DRIVERS)
            .unwrap()
            .start()
            .unwrap();
        for &n in &[21u8, 22] {
            let cfg = format!(
                "{}{}{HEALTH}",
                net("tcp2", &lab.addr(B, n).to_string(), PORT),
                route("tcp1", &gateways(&lab, B))
            );
            scratch.file(&format!("s{n}.toml"), &cfg);
        }
        let mut site = Site {
            client,
            routers: Vec::new(),
            servers: Vec::new(),
            server_nids: [21, 22].iter().map(|&n| nid(&lab, B, n)).collect(),
            router_hosts,
            server_hosts,
            ended: Vec::new(),
            lives: Vec::new(),
            scratch,
            lab,
        };
        for i in 0..2 {
            let r = site.start_router(i);
            site.routers.push(Some(r));
        }
        for i in 0..2 {
            let s = site.start_server(i);
            site.servers.push(Some(s));
        }
        // The client watches the servers (end to end, through the routers) and the
        // routers: each is pinged on the health lane, and may be declared Down.
        let routers = gateways(&site.lab, A)
            .into_iter()
            .map(|g| g.parse().unwrap());
        for n in site.server_nids.clone().into_iter().chain(routers) {
            site.client.watch(n).unwrap();
        }
        site
    }

    fn start_router(&self, i: usize) -> RouterProcess {
        let n = self.router_hosts[i].n;
        let fellow = self.router_hosts[1 - i].n;
        let cfg = format!(
            "{}{}{HEALTH}[routing]\nenable = true\nwarm_up = \"0s\"\nfellows = [\"{}\", \"{}\"]\n",
            net("tcp1", &self.lab.addr(A, n).to_string(), PORT),
            net("tcp2", &self.lab.addr(B, n).to_string(), PORT),
            nid(&self.lab, A, fellow),
            nid(&self.lab, B, fellow)
        );
        let path = self.scratch.file(&format!("r{n}.toml"), &cfg);
        let control = self.scratch.0.join(format!("r{n}.sock"));
        RouterProcess::start_in(&self.router_hosts[i].exec(), ROUTER_EXE, &path, &control)
    }

    /// Starts server `i`, recording the tags of the PUTs it receives in a file of its own.
    fn start_server(&mut self, i: usize) -> Peer {
        let n = self.server_hosts[i].n;
        let path = self.scratch.0.join(format!("s{n}.toml"));
        let prefix = self.server_hosts[i].exec();
        self.lives.push(i);
        let ids = self.scratch.0.join(format!("ids-{}", self.lives.len()));
        // A start may fail (its port still held a moment): try again.
        (0..50)
            .find_map(|_| {
                let args = [
                    "--config".to_owned(),
                    path.display().to_string(),
                    "--ids".to_owned(),
                    ids.display().to_string(),
                ];
                let p = Peer::start_with_args(&prefix, PEER_EXE, &args, self.server_nids[i], true);
                if p.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                p
            })
            .expect("a server starts")
    }

    fn restart_server(&mut self, i: usize) {
        let counts = self.servers[i].take().unwrap().finish_counts();
        self.ended.push(counts);
        let s = self.start_server(i);
        self.servers[i] = Some(s);
    }

    /// netem `spec` (None: none) on every port of the switch, both nets.
    fn netem_everywhere(&self, spec: Option<&str>) {
        let cables = [
            (A, 1u8),
            (A, 11),
            (A, 12),
            (B, 11),
            (B, 12),
            (B, 21),
            (B, 22),
        ];
        self.lab.set_netem(&cables, spec).expect("tc netem");
    }

    fn forwarded(&self, i: usize) -> u64 {
        self.routers[i].as_ref().unwrap().status()["counters"]["forwarded"]
            .as_u64()
            .unwrap()
    }
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    issued: HashMap<OpId, u64>,
    /// Tags of PUTs that succeeded.
    succeeded: HashSet<u64>,
    failed: HashMap<String, u64>,
    /// Violations of exactly-once completion.
    twice: Vec<String>,
    downs: Vec<(Phase, Nid, Duration)>,
    ups: u64,
    restarts: u64,
    all_tags: HashSet<u64>,
}

/// PUTs to the servers in turn, `WINDOW` at a time, until `stop`; then waits for every
/// one still in flight.
fn load(
    client: &Endpoint,
    servers: &[Nid],
    phase: &AtomicUsize,
    stop: &AtomicBool,
    start: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut next_tag = 1u64;
    // A failed PUT is replaced only after a pause: a peer held Down fails PUTs at once,
    // and replacing them at once would spin (and starve the emulated VM).
    let mut owed = 0usize;
    let mut owed_from = Instant::now();
    let mut issue = |seen: &mut Seen| {
        let tag = next_tag;
        next_tag += 1;
        let to = servers[(tag % servers.len() as u64) as usize];
        let op = client.put(put(to, tagged(tag, PUT_LEN))).expect("submit");
        seen.issued.insert(op, tag);
        seen.all_tags.insert(tag);
    };
    for _ in 0..WINDOW {
        issue(&mut seen);
    }
    let drain_limit = Duration::from_secs(60);
    let mut stopped_at = None;
    // After the last completion, a quiet time in which a second completion of anything
    // would still be seen.
    let mut quiet_until = None;
    loop {
        if stop.load(Ordering::Relaxed) && stopped_at.is_none() {
            stopped_at = Some(Instant::now());
            owed = 0;
        }
        if stopped_at.is_some_and(|t| t.elapsed() > drain_limit) {
            break; // what is left is reported as never completed
        }
        if seen.issued.is_empty() && stopped_at.is_some() {
            let until = *quiet_until.get_or_insert(Instant::now() + Duration::from_secs(2));
            if Instant::now() > until {
                break;
            }
        }
        if owed > 0 && owed_from.elapsed() > Duration::from_millis(100) {
            for _ in 0..std::mem::take(&mut owed) {
                issue(&mut seen);
            }
        }
        let Some(e) = client.recv_event(Some(Duration::from_millis(50))) else {
            continue;
        };
        match e {
            Event::Completed(c) => match seen.issued.remove(&c.op) {
                Some(tag) => match c.result {
                    Ok(_) => {
                        seen.succeeded.insert(tag);
                        if stopped_at.is_none() {
                            issue(&mut seen);
                        }
                    }
                    Err(e) => {
                        *seen.failed.entry(format!("{e:?}")).or_default() += 1;
                        if stopped_at.is_none() {
                            owed += 1;
                            owed_from = Instant::now();
                        }
                    }
                },
                None => seen.twice.push(format!("{:?} completed again", c.op)),
            },
            Event::PeerDown { peer, .. } => {
                let p = CYCLE[phase.load(Ordering::Relaxed) % CYCLE.len()];
                seen.downs.push((p, peer, start.elapsed()));
            }
            Event::PeerUp { .. } => seen.ups += 1,
            Event::PeerRestarted { .. } => seen.restarts += 1,
            _ => {}
        }
    }
    seen
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const TEST: &str = "under_chaos_every_operation_completes_once_and_the_routers_come_back";

#[test]
fn under_chaos_every_operation_completes_once_and_the_routers_come_back() {
    let secs: u64 = std::env::var("LANET_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if std::env::var_os(IN_RXE_VM).is_none() {
        let exe = std::env::current_exe().expect("the test binary's path");
        let script = format!(
            "export {IN_RXE_VM}=1 RUST_BACKTRACE=1 LANET_CHAOS_SECS={secs}\n\
             modprobe -a veth bridge sch_netem\n\
             mkdir -p /run/tmp && export TMPDIR=/run/tmp  # sockets cannot live on 9p\n\
             exec '{}' --exact {TEST} --nocapture --test-threads=1\n",
            exe.display()
        );
        let out = run_in_rxe_vm("chaos", &script).unwrap_or_else(|e| panic!("{e}"));
        println!("{out}");
        assert!(out.contains("test result: ok. 1 passed"), "{out}");
        return;
    }
    assert!(netns::available(), "root in the VM");
    // Short mode: one cycle of 6 s phases. Long: phases of 15 s, for `secs`.
    let (step, total) = match secs {
        0 => (Duration::from_secs(6), Duration::ZERO),
        s => (Duration::from_secs(15), Duration::from_secs(s)),
    };
    let mut site = Site::new();
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let seen = std::thread::scope(|scope| {
        let loader = {
            let (client, servers) = (site.client.clone(), site.server_nids.clone());
            let (phase, stop) = (phase.clone(), stop.clone());
            scope.spawn(move || load(&client, &servers, &phase, &stop, started))
        };
        // Whatever happens below (a panic included), the load stops: else the scope
        // would wait for it forever.
        let _stop_load = StopOnDrop(&stop);
        let mut k = 0usize;
        let mut absences = Vec::new();
        // Short mode: every phase once. Long: cycles until the time is up.
        while k < CYCLE.len() || started.elapsed() < total {
            phase.store(k, Ordering::Relaxed);
            let p = CYCLE[k % CYCLE.len()];
            eprintln!("chaos: {:>6.1} s  {p:?}", started.elapsed().as_secs_f64());
            match p {
                Phase::Calm | Phase::Settle => std::thread::sleep(step),
                Phase::Slow => {
                    site.netem_everywhere(Some(SLOW));
                    std::thread::sleep(step);
                    site.netem_everywhere(None);
                }
                Phase::Lossy => {
                    site.netem_everywhere(Some(LOSSY));
                    std::thread::sleep(step);
                    site.netem_everywhere(None);
                }
                Phase::BlackHole => {
                    let n = site.router_hosts[0].n;
                    site.lab.set_link(B, n, false).unwrap();
                    // It must notice, and take itself out.
                    let r1 = site.routers[0].as_ref().unwrap();
                    let took = r1.wait_state("absent", Duration::from_secs(30));
                    assert!(took.is_some(), "R1 never took itself out: {}", r1.state());
                    absences.push(took.unwrap());
                    std::thread::sleep(step / 2);
                    site.lab.set_link(B, n, true).unwrap();
                    std::thread::sleep(step / 2);
                }
                Phase::RouterKilled => {
                    // Dropping it kills it (-9) and reaps it.
                    drop(site.routers[1].take());
                    std::thread::sleep(step / 3);
                    let r = site.start_router(1);
                    site.routers[1] = Some(r);
                    std::thread::sleep(step * 2 / 3);
                }
                Phase::ServerRestart => {
                    site.restart_server(0);
                    std::thread::sleep(step);
                }
            }
            k += 1;
        }
        // The faults stop: both routers must come back (a flapping one serves a
        // hold-down first: up to the default damping's 60 s).
        phase.store(0, Ordering::Relaxed);
        let calm_from = Instant::now();
        for i in 0..2 {
            let r = site.routers[i].as_ref().unwrap();
            let took = r.wait_state("forwarding", Duration::from_secs(90));
            assert!(
                took.is_some(),
                "router {i} never forwarded again: {}",
                r.state()
            );
        }
        let back_after = calm_from.elapsed();
        // Both carry traffic again.
        let before = [site.forwarded(0), site.forwarded(1)];
        std::thread::sleep(Duration::from_secs(3));
        let after = [site.forwarded(0), site.forwarded(1)];
        stop.store(true, Ordering::Relaxed);
        let seen = loader.join().expect("the load thread");
        eprintln!(
            "chaos: R1 absent {absences:.1?} after its cable was pulled; routers forwarding \
             {:.1} s after the faults stopped; frames forwarded in 3 s: {:?}",
            back_after.as_secs_f64(),
            [after[0] - before[0], after[1] - before[1]]
        );
        assert!(
            after[0] > before[0] && after[1] > before[1],
            "both routers carry traffic again: {before:?} -> {after:?}"
        );
        seen
    });
    for i in 0..2 {
        let counts = site.servers[i].take().unwrap().finish_counts();
        site.ended.push(counts);
    }

    // ---- The invariants ----
    let mut delivered: HashMap<u64, u32> = HashMap::new();
    let mut misrouted = Vec::new();
    for (i, &server) in site.lives.iter().enumerate() {
        let path = site.scratch.0.join(format!("ids-{}", i + 1));
        let bytes = std::fs::read(&path).expect("every server life's tags");
        for tag in bytes.chunks_exact(8) {
            let tag = u64::from_le_bytes(tag.try_into().unwrap());
            *delivered.entry(tag).or_default() += 1;
            // The load sends tag t to server t mod 2.
            if tag % 2 != server as u64 {
                misrouted.push(tag);
            }
        }
    }
    let corrupt: u64 = site.ended.iter().map(|c| c.corrupt).sum();
    let intact: u64 = site.ended.iter().map(|c| c.intact).sum();
    let twice: Vec<_> = delivered.iter().filter(|(_, &n)| n > 1).collect();
    let stranger: Vec<_> = delivered
        .keys()
        .filter(|t| !seen.all_tags.contains(t))
        .collect();
    let lost: Vec<_> = seen
        .succeeded
        .iter()
        .filter(|t| !delivered.contains_key(t))
        .collect();
    let false_downs: Vec<_> = seen
        .downs
        .iter()
        .filter(|(p, _, _)| matches!(p, Phase::Slow | Phase::Settle))
        .collect();
    let mut downs_by_phase: HashMap<Phase, u64> = HashMap::new();
    for (p, _, _) in &seen.downs {
        *downs_by_phase.entry(*p).or_default() += 1;
    }
    let failed: u64 = seen.failed.values().sum();
    eprintln!(
        "chaos: {:.0} s; PUTs issued {}, succeeded {}, failed {failed} {:?}; \
         delivered {} (intact {intact}, corrupt {corrupt}) over {} server lives; \
         peer Downs by phase {:?}, Ups {}, restarts seen {}",
        started.elapsed().as_secs_f64(),
        seen.all_tags.len(),
        seen.succeeded.len(),
        seen.failed,
        delivered.len(),
        site.lives.len(),
        downs_by_phase,
        seen.ups,
        seen.restarts
    );
    assert!(seen.twice.is_empty(), "completed twice: {:?}", seen.twice);
    assert!(
        seen.issued.is_empty(),
        "{} operations never completed",
        seen.issued.len()
    );
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert!(
        stranger.is_empty(),
        "delivered but never sent: {stranger:?}"
    );
    assert!(lost.is_empty(), "succeeded but never delivered: {lost:?}");
    assert_eq!(corrupt, 0, "corrupt deliveries");
    assert_eq!(
        intact,
        delivered.values().map(|&n| u64::from(n)).sum::<u64>()
    );
    assert!(
        false_downs.is_empty(),
        "Down while only slowed within bounds: {false_downs:?}"
    );
    assert!(seen.succeeded.len() as u64 > failed, "mostly served");
}
