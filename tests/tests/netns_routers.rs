//! Routers as real processes in network namespaces, black holes made by pulling cables
//! and cutting paths: the client (this test) on net A (tcp1), `lanet-router` processes R1
//! and R2 on A and B, `lanet-peer` servers S1 and S2 on B (tcp2). Needs root, as CI runs.
//!
//! Figures are printed, and checked only to an order of magnitude (these machines are
//! noisy); `lanet-bench blackhole` measures them properly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lanet::config::{ConfigFile, OpenLnd};
use lanet::{Endpoint, Event, Nid, OpError};
use lanet_tests::netns::{self, Host, Lab};
use lanet_tests::pattern;
use lanet_tests::peer::{put, wait_all, Peer};
use lanet_tests::router::{net, route, RouterProcess, Scratch};

const ROUTER_EXE: &str = env!("CARGO_BIN_EXE_lanet-router-under-test");
const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");
const DRIVERS: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];
const PORT: u16 = 7000;
const A: usize = 0;
const B: usize = 1;

/// One lab at a time: they share this process's namespace (the client's side of net A).
static SERIAL: Mutex<()> = Mutex::new(());

struct Cluster {
    // Dropped in this order: processes first, then the lab under them.
    client: Endpoint,
    servers: Vec<Option<Peer>>,
    routers: Vec<Option<RouterProcess>>,
    router_hosts: Vec<Host>,
    server_hosts: Vec<Host>,
    server_nids: Vec<Nid>,
    scratch: Scratch,
    lab: Lab,
}

fn nid(lab: &Lab, net: usize, n: u8) -> Nid {
    let name = if net == A { "tcp1" } else { "tcp2" };
    format!("{}:{PORT}@{name}", lab.addr(net, n))
        .parse()
        .unwrap()
}

impl Cluster {
    /// None when this process may not make namespaces (not root).
    fn new(name: &str, router_extra: &str) -> Option<Cluster> {
        if !netns::available() {
            eprintln!("SKIPPED {name}: network namespaces need root (CI runs as root)");
            return None;
        }
        let mut lab = Lab::new(2).expect("make the lab");
        let scratch = Scratch::new(name);
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
            "{}{}[[failover]]\nname = \"ost\"\nnids = [\"{}\", \"{}\"]\n",
            net("tcp1", &here.to_string(), PORT),
            route("tcp2", &gateways(&lab, A)),
            nid(&lab, B, 21),
            nid(&lab, B, 22)
        );
        let client = ConfigFile::parse("client.toml", &client_cfg)
            .unwrap()
            .endpoint(&DRIVERS)
            .unwrap()
            .start()
            .unwrap();
        let mut c = Cluster {
            client,
            servers: Vec::new(),
            routers: Vec::new(),
            server_nids: [21, 22].iter().map(|&n| nid(&lab, B, n)).collect(),
            router_hosts,
            server_hosts,
            scratch,
            lab,
        };
        for i in 0..2 {
            let r = c.start_router(i, router_extra);
            c.routers.push(Some(r));
        }
        for i in 0..2 {
            let n = c.server_hosts[i].n;
            let cfg = format!(
                "{}{}",
                net("tcp2", &c.lab.addr(B, n).to_string(), PORT),
                route("tcp1", &gateways(&c.lab, B))
            );
            c.scratch.file(&format!("s{n}.toml"), &cfg);
            let peer = c.start_server(i);
            c.servers.push(Some(peer));
        }
        Some(c)
    }

    /// Starts server `i` (its configuration file written already).
    fn start_server(&self, i: usize) -> Peer {
        let n = self.server_hosts[i].n;
        let path = self.scratch.0.join(format!("s{n}.toml"));
        let prefix = self.server_hosts[i].exec();
        // Its old socket may linger a moment after a kill: try again.
        (0..50)
            .find_map(|_| {
                let p =
                    Peer::start_with_config(&prefix, PEER_EXE, &path, self.server_nids[i], true);
                if p.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                p
            })
            .expect("a server starts")
    }

    fn start_router(&self, i: usize, extra: &str) -> RouterProcess {
        let n = self.router_hosts[i].n;
        let fellow = self.router_hosts[1 - i].n;
        let cfg = format!(
            "{}{}[routing]\nenable = true\n{}fellows = [\"{}\", \"{}\"]\n{extra}\n",
            net("tcp1", &self.lab.addr(A, n).to_string(), PORT),
            net("tcp2", &self.lab.addr(B, n).to_string(), PORT),
            if extra.contains("warm_up") {
                ""
            } else {
                "warm_up = \"0s\"\n"
            },
            nid(&self.lab, A, fellow),
            nid(&self.lab, B, fellow)
        );
        let path = self.scratch.file(&format!("r{n}.toml"), &cfg);
        let control = self.scratch.0.join(format!("r{n}.sock"));
        RouterProcess::start_in(&self.router_hosts[i].exec(), ROUTER_EXE, &path, &control)
    }

    fn router(&self, i: usize) -> &RouterProcess {
        self.routers[i].as_ref().unwrap()
    }

    fn forwarded(&self, i: usize) -> u64 {
        self.router(i).status()["counters"]["forwarded"]
            .as_u64()
            .unwrap()
    }

    /// Pulls (or plugs back) router `i`'s cable on net B.
    fn router_on_b(&self, i: usize, up: bool) {
        self.lab.set_link(B, self.router_hosts[i].n, up).unwrap();
    }

    /// Waits until PUTs to every server go through again, `IN_A_ROW` in a row to each, at
    /// most `limit`, and says how long that took. A router forwards (and is no longer
    /// degraded) once it hears any peer it watches on a net; a server its health monitor
    /// still holds Down (probed with backoff, every `probe_max` at most: 10 s by default)
    /// it refuses as a next hop down, at once, and the client's copy through the other
    /// router likewise.
    fn wait_puts_go_through(&self, limit: Duration) -> Duration {
        const IN_A_ROW: usize = 16;
        let start = Instant::now();
        for (i, &dst) in self.server_nids.iter().enumerate() {
            let mut in_a_row = 0;
            while in_a_row < IN_A_ROW {
                assert!(
                    start.elapsed() < limit,
                    "PUTs to S{} still fail after {limit:?}",
                    i + 1
                );
                let op = self.client.put(put(dst, pattern(10, 2))).unwrap();
                let ok = wait_all(&self.client, &[op])[&op].result.is_ok();
                in_a_row = if ok { in_a_row + 1 } else { 0 };
            }
        }
        start.elapsed()
    }

    /// Stops a PUT-only load and the servers: nothing failed, each PUT arrived once.
    fn finish_load_each_put_once(&mut self, load: Load) {
        let results = load.finish();
        check_none_failed(&results);
        let (intact, corrupt) = self.finish_servers();
        assert_eq!(
            (intact, corrupt),
            (results.len() as u64, 0),
            "each PUT once"
        );
    }

    /// Stops every server and returns the PUTs they received (intact, corrupt).
    fn finish_servers(&mut self) -> (u64, u64) {
        let mut total = (0, 0);
        for s in self.servers.iter_mut() {
            let (ok, bad) = s.take().unwrap().finish();
            total = (total.0 + ok, total.1 + bad);
        }
        total
    }
}

/// PUTs from the client to the servers in turn, `window` at a time, on a thread of its
/// own until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// PUTs that succeeded (each must have reached a server once).
    puts_ok: Arc<std::sync::atomic::AtomicU64>,
    thread: JoinHandle<Vec<Result<lanet::OpOutcome, OpError>>>,
}

impl Load {
    fn start(client: &Endpoint, servers: &[Nid], window: usize) -> Load {
        Load::start_mixed(client, servers, window, false)
    }

    /// With `gets`, every third operation is a GET of the server's source 2 (data checked):
    /// traffic both ways.
    fn start_mixed(client: &Endpoint, servers: &[Nid], window: usize, gets: bool) -> Load {
        let (ep, servers) = (client.clone(), servers.to_vec());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let puts_ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = puts_ok.clone();
        let thread = std::thread::spawn(move || {
            let mut results = Vec::new();
            let mut is_get = std::collections::HashMap::new();
            let (mut outstanding, mut i) = (0, 0usize);
            loop {
                while outstanding < window && !stopping.load(Ordering::Relaxed) {
                    let dst = servers[i % servers.len()];
                    let get_now = gets && i % 3 == 2;
                    let op = if get_now {
                        ep.get(lanet_tests::peer::get(dst, 2)).unwrap()
                    } else {
                        ep.put(put(dst, pattern(1000, i as u8))).unwrap()
                    };
                    is_get.insert(op, get_now);
                    i += 1;
                    outstanding += 1;
                }
                if outstanding == 0 {
                    return results;
                }
                match ep.recv_event(Some(Duration::from_secs(60))) {
                    Some(Event::Completed(c)) => {
                        let get = is_get.remove(&c.op).unwrap_or(false);
                        let want = pattern(lanet_tests::SIZES[2], 2);
                        let result = match c.result {
                            Ok(lanet::OpOutcome::Get { data }) if data != want => {
                                Err(OpError::Protocol("GET data corrupt".into()))
                            }
                            other => other,
                        };
                        if !get && result.is_ok() {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        results.push(result);
                        outstanding -= 1;
                    }
                    Some(_) => {}
                    None => panic!("{outstanding} operations hang"),
                }
            }
        });
        Load {
            stop,
            puts_ok,
            thread,
        }
    }

    fn finish(self) -> Vec<Result<lanet::OpOutcome, OpError>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the load thread")
    }
}

fn check_none_failed(results: &[Result<lanet::OpOutcome, OpError>]) {
    let failed: Vec<&OpError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn net_level_black_hole_the_router_withdraws_clients_move_and_damping_holds_it_out() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns-net-level", "") else {
        return;
    };
    let load = Load::start(&c.client, &c.server_nids, 32);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        c.forwarded(0) > 0 && c.forwarded(1) > 0,
        "both routers carry traffic"
    );

    c.router_on_b(0, false);
    let absent = c
        .router(0)
        .wait_state("absent", Duration::from_secs(10))
        .expect("R1 withdraws");
    let s = c.router(0).status();
    eprintln!(
        "R1's cable on B pulled: absent after {} ms ({})",
        absent.as_millis(),
        s["router"]["black_hole"]
    );
    assert!(
        absent < Duration::from_secs(5),
        "an order of magnitude: {absent:?}"
    );
    assert_eq!(c.router(1).state(), "forwarding");
    let parked = c.forwarded(0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.forwarded(0),
        parked,
        "nothing through R1 while it is absent"
    );

    c.router_on_b(0, true);
    let back = c
        .router(0)
        .wait_state("forwarding", Duration::from_secs(20))
        .expect("R1 returns");
    eprintln!(
        "cable back: R1 forwards again after {} ms",
        back.as_millis()
    );
    assert!(
        back >= Duration::from_secs(2),
        "not before its hold-down: {back:?}"
    );

    // Ten flaps in twenty seconds: damping keeps it out.
    let returns = |c: &Cluster| c.router(0).status()["router"]["counters"]["returns"].as_u64();
    let returned_before = returns(&c);
    let mut last_plug = Instant::now();
    for _ in 0..10 {
        c.router_on_b(0, false);
        std::thread::sleep(Duration::from_secs(1));
        c.router_on_b(0, true);
        last_plug = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        returns(&c),
        returned_before,
        "damping kept it out while it flapped"
    );
    c.router(0)
        .wait_state("forwarding", Duration::from_secs(90))
        .expect("R1 returns at last");
    let out = last_plug.elapsed();
    let counters = c.router(0).status()["router"]["counters"].clone();
    eprintln!(
        "after 10 flaps in 20 s: back {} ms after the last plug ({counters})",
        out.as_millis()
    );
    assert!(
        out > Duration::from_secs(4),
        "longer than its base hold-down: {out:?}"
    );

    c.finish_load_each_put_once(load);
}

#[test]
fn peer_level_black_hole_the_router_advertises_the_peer_then_withdraws() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns-peer-level", "") else {
        return;
    };
    let load = Load::start(&c.client, &c.server_nids, 32);
    std::thread::sleep(Duration::from_millis(500));
    c.lab
        .set_cut(B, &c.router_hosts[0], &c.server_hosts[0], true)
        .unwrap();
    let absent = c
        .router(0)
        .wait_state("absent", Duration::from_secs(10))
        .expect("R1 withdraws");
    let s1 = c.server_nids[0].to_string();
    let r1 = c.router(0).status();
    eprintln!(
        "R1 <-> S1 cut: absent after {} ms ({})",
        absent.as_millis(),
        r1["router"]["black_hole"]
    );
    let unreachable = r1["router"]["status"]["unreachable"].as_array().unwrap();
    assert!(unreachable.iter().any(|p| p == &s1), "advertised: {r1}");
    assert!(
        r1["router"]["black_hole"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{r1}"
    );
    let r2 = c.router(1).status();
    assert_eq!(r2["router"]["state"], "forwarding");
    assert!(
        r2["router"]["status"]["vouched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == &s1),
        "R2 vouches for S1: {r2}"
    );
    std::thread::sleep(Duration::from_millis(500));
    c.finish_load_each_put_once(load);
}

#[test]
fn when_both_routers_lose_net_b_neither_strands_net_a_and_nothing_hangs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = Cluster::new("netns-fail-open", "") else {
        return;
    };
    let load = Load::start(&c.client, &c.server_nids, 8);
    std::thread::sleep(Duration::from_millis(300));
    check_none_failed(&load.finish());
    c.router_on_b(0, false);
    c.router_on_b(1, false);
    std::thread::sleep(Duration::from_secs(2));
    let states: Vec<serde_json::Value> = (0..2)
        .map(|i| c.router(i).status()["router"].clone())
        .collect();
    for (i, s) in states.iter().enumerate() {
        eprintln!(
            "both lost B: R{} {} degraded={} ({})",
            i + 1,
            s["state"],
            s["degraded"],
            s["black_hole"]
        );
    }
    assert!(
        states.iter().any(|s| s["state"] == "forwarding"),
        "one router at least still forwards (fail-open): {states:?}"
    );
    // The client's operations to B end at once, none hanging.
    let start = Instant::now();
    let op = c.client.put(put(c.server_nids[0], pattern(10, 1))).unwrap();
    let result = loop {
        match c.client.recv_event(Some(Duration::from_secs(30))) {
            Some(Event::Completed(done)) if done.op == op => break done.result,
            Some(_) => {}
            None => panic!("the operation hangs"),
        }
    };
    eprintln!(
        "both routers lost B: a PUT to S1 ended in {:?}: {result:?}",
        start.elapsed()
    );
    assert!(result.is_err());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "not at its deadline"
    );
    for i in 0..2 {
        c.router_on_b(i, true);
    }
    for i in 0..2 {
        c.router(i)
            .wait_state("forwarding", Duration::from_secs(30))
            .unwrap();
    }
    let start = Instant::now();
    while (0..2).any(|i| c.router(i).status()["router"]["degraded"] == true) {
        assert!(start.elapsed() < Duration::from_secs(30), "still degraded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Within the monitor's longest probe gap (10 s), and a margin.
    let took = c.wait_puts_go_through(Duration::from_secs(15));
    eprintln!("both routers back on B: PUTs to both servers go through after {took:?}");
    let load = Load::start(&c.client, &c.server_nids, 8);
    std::thread::sleep(Duration::from_millis(1500));
    check_none_failed(&load.finish());
}

#[test]
fn a_failover_pair_behind_routers_moves_to_the_partner_and_no_router_is_blamed() {
    // Seed 000: S1 dies and its partner S2 starts only seconds later. The client must keep
    // both routers (no route down), move to S2 once S1 is declared down, and end every
    // operation once; in failover mode, successfully, once S2 answers.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns-failover", "") else {
        return;
    };
    let ost = c
        .client
        .group("ost")
        .expect("the group from the config file");
    drop(c.servers[1].take()); // the partner is not running yet
    let submit = |c: &Cluster| {
        c.client
            .group_put(ost, put(c.server_nids[0], pattern(1000, 7)))
            .unwrap()
    };
    let (mut outstanding, mut submitted) = (0usize, 0usize);
    let mut results = Vec::new();
    let mut events = Vec::new();
    let start = Instant::now();
    let mut killed_at = None;
    let mut partner_at = None;
    while start.elapsed() < Duration::from_secs(8) || outstanding > 0 {
        if start.elapsed() < Duration::from_secs(8) {
            while outstanding < 16 {
                submit(&c);
                submitted += 1;
                outstanding += 1;
            }
        }
        if killed_at.is_none() && start.elapsed() > Duration::from_secs(1) {
            c.servers[0].as_ref().unwrap().signal("-KILL");
            killed_at = Some(Instant::now());
        }
        if partner_at.is_none() && start.elapsed() > Duration::from_secs(4) {
            c.servers[1] = Some(c.start_server(1));
            partner_at = Some(Instant::now());
        }
        match c.client.recv_event(Some(Duration::from_millis(20))) {
            Some(Event::Completed(done)) => {
                results.push(done.result);
                outstanding -= 1;
            }
            Some(e) => events.push(e),
            None => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{outstanding} operations hang"
        );
    }
    assert_eq!(results.len(), submitted, "each op completed once");
    check_none_failed(&results);
    let moved: Vec<(Nid, Nid)> = events
        .iter()
        .filter_map(|e| match e {
            Event::FailoverMoved { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    eprintln!(
        "failover: {} ops, moved {moved:?}; S1 killed, partner started {:?} later",
        results.len(),
        partner_at.unwrap() - killed_at.unwrap()
    );
    assert_eq!(moved, vec![(c.server_nids[0], c.server_nids[1])]);
    let route_downs: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::RouteDown { .. }))
        .collect();
    assert!(route_downs.is_empty(), "routers blamed: {route_downs:?}");
    for i in 0..2 {
        assert_eq!(c.router(i).state(), "forwarding", "R{} stayed", i + 1);
    }
    let (intact, corrupt) = c.servers[1].take().unwrap().finish();
    assert_eq!(corrupt, 0);
    assert!(intact > 0, "the partner took the service");
}

#[test]
fn kill_9_of_one_router_then_sigterm_of_the_other_under_traffic_both_ways_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut c) = Cluster::new("netns-kill-drain", "warm_up = \"500ms\"") else {
        return;
    };
    for i in 0..2 {
        c.router(i)
            .wait_state("forwarding", Duration::from_secs(10))
            .unwrap();
    }
    let load = Load::start_mixed(&c.client, &c.server_nids, 32, true);
    std::thread::sleep(Duration::from_millis(700));
    // R1 killed mid-stream: what it held is resent through R2, answered once.
    let mut r1 = c.routers[0].take().unwrap();
    r1.signal("-KILL");
    r1.wait_exit(Duration::from_secs(10)).expect("killed");
    drop(r1);
    std::thread::sleep(Duration::from_millis(700));
    // Restarted on its addresses: it warms up, then carries traffic again.
    let r1 = c.start_router(0, "warm_up = \"500ms\"");
    assert_eq!(r1.state(), "absent", "warming up");
    r1.wait_state("forwarding", Duration::from_secs(10))
        .unwrap();
    let before = r1.status()["counters"]["forwarded"].as_u64().unwrap();
    c.routers[0] = Some(r1);
    let start = Instant::now();
    while c.forwarded(0) == before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "R1 is never used again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // R2 drained under load: clients move to R1, nothing fails, R2 exits within its
    // bound (10 s by default).
    let mut r2 = c.routers[1].take().unwrap();
    let term = Instant::now();
    r2.signal("-TERM");
    let status = r2.wait_exit(Duration::from_secs(15)).expect("R2 exits");
    eprintln!(
        "R2 drained and exited {:?} after SIGTERM: {status}",
        term.elapsed()
    );
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(500));
    let puts_ok = load.puts_ok.clone();
    let results = load.finish();
    check_none_failed(&results);
    let puts = puts_ok.load(Ordering::Relaxed);
    eprintln!(
        "{} operations, {puts} of them PUTs, through a kill and a drain",
        results.len()
    );
    let (intact, corrupt) = c.finish_servers();
    assert_eq!((intact, corrupt), (puts, 0), "each PUT delivered once");
}
