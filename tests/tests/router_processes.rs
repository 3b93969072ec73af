//! The router daemon as a real process between two loopback nets: a client endpoint here
//! on net tcp1, a `lanet-peer` server process on tcp2, and one or two `lanet-router`
//! processes on both (each NI its own port on 127.0.0.1). Killed, drained, reloaded.
//! Black holes need links that can be cut one by one: those tests are in `netns_routers`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lanet::config::{ConfigFile, OpenLnd};
use lanet::{Endpoint, Event, Nid, OpError, OpId};
use lanet_tests::peer::{check_exchange_of_every_size, put, Peer, HANG};
use lanet_tests::router::{net, route, RouterProcess, Scratch};
use lanet_tests::{free_tcp_nid, pattern};

const ROUTER_EXE: &str = env!("CARGO_BIN_EXE_lanet-router-under-test");
const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");
const DRIVERS: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];

fn free_port() -> u16 {
    free_tcp_nid().socket_addr(0).expect("an IP NID").port()
}

fn nid(port: u16, net: &str) -> Nid {
    format!("127.0.0.1:{port}@{net}").parse().unwrap()
}

/// A client here, a server process, and `routers` router processes between them.
struct Topology {
    scratch: Scratch,
    routers: Vec<Option<RouterProcess>>,
    router_ports: Vec<(u16, u16)>,
    server: Option<Peer>,
    server_nid: Nid,
    client: Endpoint,
}

impl Topology {
    fn new(name: &str, routers: usize, router_extra: &str) -> Topology {
        let scratch = Scratch::new(name);
        let router_ports: Vec<(u16, u16)> =
            (0..routers).map(|_| (free_port(), free_port())).collect();
        let (server_port, client_port) = (free_port(), free_port());
        let gateways = |net_name: &str| -> Vec<String> {
            router_ports
                .iter()
                .map(|&(a, b)| {
                    let port = if net_name == "tcp1" { a } else { b };
                    nid(port, net_name).to_string()
                })
                .collect()
        };
        let server_cfg = format!(
            "{}{}",
            net("tcp2", "127.0.0.1", server_port),
            route("tcp1", &gateways("tcp2"))
        );
        let client_cfg = format!(
            "{}{}",
            net("tcp1", "127.0.0.1", client_port),
            route("tcp2", &gateways("tcp1"))
        );
        let mut t = Topology {
            routers: Vec::new(),
            router_ports,
            server: None,
            server_nid: nid(server_port, "tcp2"),
            client: ConfigFile::parse("client.toml", &client_cfg)
                .unwrap()
                .endpoint(&DRIVERS)
                .unwrap()
                .start()
                .unwrap(),
            scratch,
        };
        for i in 0..routers {
            let r = t.start_router(i, router_extra);
            t.routers.push(Some(r));
        }
        let server_file = t.scratch.file("server.toml", &server_cfg);
        t.server = Some(
            Peer::start_with_config(&[], PEER_EXE, &server_file, t.server_nid, false)
                .expect("the server starts"),
        );
        t
    }

    fn router_config(&self, i: usize, extra: &str) -> String {
        let (a, b) = self.router_ports[i];
        let fellows: Vec<String> = self
            .router_ports
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, &(a, _))| format!("\"{}\"", nid(a, "tcp1")))
            .collect();
        format!(
            "{}{}[routing]\nenable = true\nfellows = [{}]\n{extra}\n",
            net("tcp1", "127.0.0.1", a),
            net("tcp2", "127.0.0.1", b),
            fellows.join(", ")
        )
    }

    fn start_router(&self, i: usize, extra: &str) -> RouterProcess {
        let path = self
            .scratch
            .file(&format!("router{i}.toml"), &self.router_config(i, extra));
        let control = self.scratch.0.join(format!("router{i}.sock"));
        RouterProcess::start(ROUTER_EXE, &path, &control)
    }

    fn router(&self, i: usize) -> &RouterProcess {
        self.routers[i].as_ref().expect("router running")
    }

    fn forwarded(&self, i: usize) -> u64 {
        self.router(i).status()["counters"]["forwarded"]
            .as_u64()
            .unwrap()
    }
}

/// Keeps `window` PUTs of 1000 bytes in flight from the client to the server until `total`
/// were submitted, calling `midway` once half were; every op must complete exactly once.
/// Returns each op's result.
fn stream(
    t: &Topology,
    total: usize,
    window: usize,
    midway: impl FnOnce(),
) -> HashMap<OpId, Result<lanet::OpOutcome, OpError>> {
    let mut midway = Some(midway);
    let mut done = HashMap::new();
    let mut submitted = 0;
    let mut outstanding = 0;
    while done.len() < total {
        while outstanding < window && submitted < total {
            let payload = pattern(1000, submitted as u8);
            t.client.put(put(t.server_nid, payload)).unwrap();
            submitted += 1;
            outstanding += 1;
            if submitted == total / 2 {
                if let Some(f) = midway.take() {
                    f();
                }
            }
        }
        match t.client.recv_event(HANG).expect("operations hang") {
            Event::Completed(c) => {
                assert!(done.insert(c.op, c.result).is_none(), "completed twice");
                outstanding -= 1;
            }
            _ => continue,
        }
    }
    done
}

fn failures(done: &HashMap<OpId, Result<lanet::OpOutcome, OpError>>) -> Vec<&OpError> {
    done.values().filter_map(|r| r.as_ref().err()).collect()
}

#[test]
fn a_router_process_forwards_every_size_both_ways_and_reports_its_state() {
    let mut t = Topology::new("router-forwards", 1, "warm_up = \"1s\"");
    // Warming up: absent, and says why.
    let s = t.router(0).status();
    assert_eq!(s["router"]["state"], "absent", "{s}");
    assert_eq!(s["router"]["why"], "it is warming up");
    let took = t
        .router(0)
        .wait_state("forwarding", Duration::from_secs(10))
        .expect("warmed up");
    eprintln!("warm-up ended {took:?} after the first status query");
    let server = t.server.take().unwrap();
    check_exchange_of_every_size(&t.client, server);
    let s = t.router(0).status();
    assert!(s["counters"]["forwarded"].as_u64().unwrap() > 40, "{s}");
    let nets = s["nets"].as_array().unwrap();
    assert_eq!(nets.len(), 2);
    assert!(nets.iter().all(|n| n["up"] == true), "{s}");
    assert_eq!(s["router"]["pools"].as_array().unwrap().len(), 3);
    assert_eq!(s["router"]["holds"], 0, "nothing held once all is done");
    assert!(
        !s["peers"].as_array().unwrap().is_empty(),
        "it watches whom it serves"
    );
}

#[test]
fn sighup_reloads_routes_and_a_bad_file_changes_nothing() {
    let t = Topology::new("router-reload", 1, "warm_up = \"0s\"");
    let r = t.router(0);
    assert!(r.status()["routes"].as_array().unwrap().is_empty());
    let config = t.scratch.0.join("router0.toml");
    // A route to a net beyond a gateway on tcp2.
    let gw = nid(free_port(), "tcp2");
    let with_route = format!(
        "{}{}",
        t.router_config(0, "warm_up = \"0s\""),
        route("tcp7", &[gw.to_string()])
    );
    // (Appended after [routing]: TOML tables may come in any order.)
    std::fs::write(&config, &with_route).unwrap();
    r.signal("-HUP");
    let start = Instant::now();
    loop {
        let routes = r.status()["routes"].clone();
        if routes.as_array().unwrap().len() == 1 {
            assert_eq!(routes[0]["net"], "tcp7");
            assert_eq!(routes[0]["gateway"], gw.to_string());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never reloaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&config, "[[net]]\nnet = \"tcp1\"\npeer_credit = 3\n").unwrap();
    r.signal("-HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        r.status()["routes"].as_array().unwrap().len(),
        1,
        "unchanged"
    );
    // A new net (which takes a restart) and a route through a gateway on it, the tcp7
    // route gone: refused before anything changes, rather than tcp7's route removed and
    // the new one refused.
    // (Its drain bound changed too, which the reload applies first: seen, the reload ran.)
    let new_net = format!(
        "{}[[net]]\nnet = \"tcp9\"\naddress = \"127.0.0.1\"\nport = {}\n{}",
        t.router_config(0, "warm_up = \"0s\"\ndrain = \"1m\""),
        free_port(),
        route("tcp8", &[nid(free_port(), "tcp9").to_string()])
    );
    std::fs::write(&config, &new_net).unwrap();
    r.signal("-HUP");
    let start = Instant::now();
    loop {
        let export = lanet_control::query(&r.control, "export").expect("an export");
        if export["toml"].as_str().unwrap().contains("drain = \"1m\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never reloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200)); // its routes, right after
    let routes = r.status()["routes"].clone();
    assert_eq!(routes.as_array().unwrap().len(), 1, "unchanged: {routes}");
    assert_eq!(routes[0]["net"], "tcp7");
    assert_eq!(r.state(), "forwarding");
}

#[test]
fn kill_9_of_a_router_mid_stream_costs_nothing_and_its_restart_carries_traffic_again() {
    let mut t = Topology::new("router-kill", 2, "warm_up = \"500ms\"");
    for i in 0..2 {
        t.router(i)
            .wait_state("forwarding", Duration::from_secs(10))
            .unwrap();
    }
    let routers = &mut t.routers;
    let victim = std::cell::RefCell::new(routers[0].take());
    let done = stream(&t, 4000, 64, || {
        let mut r = victim.borrow_mut().take().unwrap();
        r.signal("-KILL");
        r.wait_exit(Duration::from_secs(10)).expect("killed");
    });
    assert_eq!(done.len(), 4000);
    assert!(
        failures(&done).is_empty(),
        "{:?}",
        &failures(&done)[..failures(&done).len().min(5)]
    );
    // Restarted on the same ports: it warms up, then takes its share again.
    let restarted = t.start_router(0, "warm_up = \"500ms\"");
    assert_eq!(restarted.state(), "absent");
    restarted
        .wait_state("forwarding", Duration::from_secs(10))
        .expect("warmed up");
    t.routers[0] = Some(restarted);
    // The client learns it is back (its probes of the dead gateway, then its status).
    let start = Instant::now();
    while t.forwarded(0) == 0 {
        let done = stream(&t, 200, 16, || {});
        assert!(failures(&done).is_empty());
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restarted router is never used"
        );
    }
    let server = t.server.take().unwrap();
    let (intact, corrupt) = server.finish();
    assert_eq!(corrupt, 0);
    // Each PUT delivered exactly once: 4000, and the later rounds of 200.
    assert_eq!(intact % 200, 0, "{intact}");
    assert!(intact >= 4200, "{intact}");
}

#[test]
fn sigterm_drains_a_router_under_load_without_a_failed_operation() {
    let mut t = Topology::new("router-drain", 2, "warm_up = \"0s\"\ndrain = \"5s\"");
    let stopping = std::cell::RefCell::new(None);
    let routers = std::cell::RefCell::new(std::mem::take(&mut t.routers));
    let done = stream(&t, 4000, 64, || {
        let r = routers.borrow_mut()[0].take().unwrap();
        r.signal("-TERM");
        *stopping.borrow_mut() = Some((r, Instant::now()));
    });
    assert!(
        failures(&done).is_empty(),
        "{:?}",
        &failures(&done)[..failures(&done).len().min(5)]
    );
    let (mut r, at) = stopping.into_inner().unwrap();
    let status = r.wait_exit(Duration::from_secs(10)).expect("it exits");
    let took = at.elapsed();
    eprintln!("drained and exited {took:?} after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(6), "within its bound: {took:?}");
    t.routers = routers.into_inner();
    let server = t.server.take().unwrap();
    assert_eq!(server.finish(), (4000, 0), "each PUT delivered once");
}

/// A second SIGTERM or SIGINT during the drain stops the router at once: an operator who
/// asks twice is not made to wait out the drain (here at least two 10 s health intervals,
/// so that its absence has been heard) or to reach for SIGKILL.
#[test]
fn a_second_signal_during_the_drain_stops_the_router_at_once() {
    let scratch = Scratch::new("router-second-signal");
    let config = format!(
        "{}{}[health]\ninterval = \"10s\"\n[routing]\nenable = true\ndrain = \"60s\"\n",
        net("tcp1", "127.0.0.1", free_port()),
        net("tcp2", "127.0.0.1", free_port())
    );
    let path = scratch.file("router.toml", &config);
    let mut r = RouterProcess::start(ROUTER_EXE, &path, &scratch.0.join("router.sock"));
    r.signal("-TERM");
    // Draining (it says it is absent) before the second signal, which would otherwise
    // arrive with the first: that case stops at once too, but is not the one tested.
    let start = Instant::now();
    while r.state() != "absent" {
        assert!(start.elapsed() < Duration::from_secs(10), "never draining");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(r.wait_exit(Duration::ZERO).is_none(), "draining");
    let at = Instant::now();
    r.signal("-INT");
    let status = r.wait_exit(Duration::from_secs(10)).expect("it stops");
    eprintln!("stopped {:?} after the second signal", at.elapsed());
    assert!(status.success(), "{status}");
}

/// How a router that does not start exits, for its supervisor (the systemd unit restarts
/// on 1, not on 2): 2 for a file that is wrong, 1 for what this host lacks (an interface
/// without its address, at boot say; an address already taken), which may mend itself.
#[test]
fn a_router_that_cannot_start_says_whether_trying_again_can_help() {
    let scratch = Scratch::new("router-exit-status");
    let control = scratch.0.join("router.sock");
    let routing = "[routing]\nenable = true\n";
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    for (name, text, status, says) in [
        ("garbage", "[[net]\n".to_string(), 2, "router.toml"),
        (
            "not-routing",
            net("tcp1", "127.0.0.1", free_port()),
            2,
            "routing is not enabled",
        ),
        (
            "no-interface",
            format!(
                "[[net]]\nnet = \"tcp1\"\ninterface = \"nosuch0\"\n\n{}{routing}",
                net("tcp2", "127.0.0.1", free_port())
            ),
            1,
            "has no IPv4 address",
        ),
        (
            "address-taken",
            format!(
                "{}{}{routing}",
                net("tcp1", "127.0.0.1", taken_port),
                net("tcp2", "127.0.0.1", free_port())
            ),
            1,
            "cannot open it",
        ),
    ] {
        let file = scratch.file("router.toml", &text);
        let out = std::process::Command::new(ROUTER_EXE)
            .arg("--config")
            .arg(&file)
            .arg("--control-socket")
            .arg(&control)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
}

/// `lanetctl export` says what runs: the control socket it answers at (here put elsewhere
/// by `--control-socket`), and the drain bound a reload changed.
#[test]
fn export_says_what_runs_after_a_reload_and_where_it_answers() {
    let t = Topology::new("router-export-live", 1, "warm_up = \"0s\"\ndrain = \"10s\"");
    let r = t.router(0);
    let export = || -> String {
        let answer = lanet_control::query(&r.control, "export").expect("an export");
        answer["toml"].as_str().expect("its TOML").to_owned()
    };
    let socket = format!("control_socket = \"{}\"", r.control.display());
    let first = export();
    assert!(first.contains("drain = \"10s\""), "{first}");
    assert!(first.contains(&socket), "{first}");
    let config = t.scratch.0.join("router0.toml");
    std::fs::write(
        &config,
        t.router_config(0, "warm_up = \"0s\"\ndrain = \"1m\""),
    )
    .unwrap();
    r.signal("-HUP");
    let start = Instant::now();
    loop {
        let now = export();
        if now.contains("drain = \"1m\"") {
            assert!(now.contains(&socket), "{now}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reloaded: {now}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
