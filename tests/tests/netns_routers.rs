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
use lanet_tests::peer::{put, Peer};
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
            "{}{}",
            net("tcp1", &here.to_string(), PORT),
            route("tcp2", &gateways(&lab, A))
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
            let path = c.scratch.file(&format!("s{n}.toml"), &cfg);
            let prefix = c.server_hosts[i].exec();
            let peer = Peer::start_with_config(&prefix, PEER_EXE, &path, c.server_nids[i], true)
                .expect("a server starts");
            c.servers.push(Some(peer));
        }
        Some(c)
    }

    fn start_router(&self, i: usize, extra: &str) -> RouterProcess {
        let n = self.router_hosts[i].n;
        let fellow = self.router_hosts[1 - i].n;
        let cfg = format!(
            "{}{}[routing]\nenable = true\nwarm_up = \"0s\"\nfellows = [\"{}\"]\n{extra}\n",
            net("tcp1", &self.lab.addr(A, n).to_string(), PORT),
            net("tcp2", &self.lab.addr(B, n).to_string(), PORT),
            nid(&self.lab, A, fellow)
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
    thread: JoinHandle<Vec<Result<lanet::OpOutcome, OpError>>>,
}

impl Load {
    fn start(client: &Endpoint, servers: &[Nid], window: usize) -> Load {
        let (ep, servers) = (client.clone(), servers.to_vec());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut results = Vec::new();
            let (mut outstanding, mut i) = (0, 0usize);
            loop {
                while outstanding < window && !stopping.load(Ordering::Relaxed) {
                    let dst = servers[i % servers.len()];
                    ep.put(put(dst, pattern(1000, i as u8))).unwrap();
                    i += 1;
                    outstanding += 1;
                }
                if outstanding == 0 {
                    return results;
                }
                match ep.recv_event(Some(Duration::from_secs(60))) {
                    Some(Event::Completed(c)) => {
                        results.push(c.result);
                        outstanding -= 1;
                    }
                    Some(_) => {}
                    None => panic!("{outstanding} operations hang"),
                }
            }
        });
        Load { stop, thread }
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

    let results = load.finish();
    check_none_failed(&results);
    let (intact, corrupt) = c.finish_servers();
    assert_eq!(
        (intact, corrupt),
        (results.len() as u64, 0),
        "each PUT once"
    );
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
    let results = load.finish();
    check_none_failed(&results);
    let (intact, corrupt) = c.finish_servers();
    assert_eq!(
        (intact, corrupt),
        (results.len() as u64, 0),
        "each PUT once"
    );
}

#[test]
fn when_both_routers_lose_net_b_they_fail_open_and_the_client_is_told() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = Cluster::new("netns-fail-open", "") else {
        return;
    };
    let load = Load::start(&c.client, &c.server_nids, 8);
    std::thread::sleep(Duration::from_millis(300));
    assert!(load.finish().iter().all(|r| r.is_ok()));
    c.router_on_b(0, false);
    c.router_on_b(1, false);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        let s = c.router(i).status();
        assert_eq!(s["router"]["state"], "forwarding", "R{}: {s}", i + 1);
        assert_eq!(s["router"]["degraded"], true, "R{}: {s}", i + 1);
        let b = &s["router"]["status"]["nets"][1];
        assert_eq!(
            (b["net"].as_str(), b["up"].as_bool()),
            (Some("tcp2"), Some(false))
        );
    }
    // The client is told, and its operations to B end at once, none hanging.
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
    assert!(matches!(result, Err(OpError::NoRoute(_))), "{result:?}");
    for i in 0..2 {
        c.router_on_b(i, true);
    }
    for i in 0..2 {
        c.router(i)
            .wait_state("forwarding", Duration::from_secs(20))
            .unwrap();
    }
    let start = Instant::now();
    loop {
        let s: Vec<bool> = (0..2)
            .map(|i| c.router(i).status()["router"]["degraded"] == false)
            .collect();
        if s.iter().all(|&x| x) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "still degraded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let load = Load::start(&c.client, &c.server_nids, 8);
    std::thread::sleep(Duration::from_millis(1500));
    check_none_failed(&load.finish());
}
