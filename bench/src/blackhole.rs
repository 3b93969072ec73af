//! `lanet-bench blackhole`: how fast a router that became a black hole takes itself out,
//! and what it costs the clients. Network namespaces (root): the client here on net A,
//! two router processes (the daemon's code) on A and B, two servers on B, PUTs streaming
//! through both routers. Each trial cuts router R1 off, then mends it:
//!
//! * net-level: R1's cable on B pulled at the switch;
//! * peer-level: only the path R1 <-> S1 cut (each drops what it would send the other).
//!
//! Measured per trial: cut -> R1 says it is absent (`absent_ms`, from its control socket),
//! cut -> the last PUT of the client's that R1 passed on (`switch_ms`, from its counters),
//! and at the end the PUTs lost (`lost`: failed, or not delivered once). Then ten flaps of
//! R1's cable in twenty seconds, and how long damping keeps it out after the last one.
//! The baseline beside the figures is LNet's: 110 s for a router to mark its own net
//! down (router_ping_timeout + alive_router_check_interval), minutes for clients to notice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanet::config::{ConfigFile, OpenLnd};
use lanet::op::PutRequest;
use lanet::{Endpoint, Event, Lane, Nid};
use lanet_tests::netns::{self, Host, Lab};
use lanet_tests::router::{net, route};
use serde_json::Value;

use crate::peer::{self, ServerProcess};
use crate::report::Report;
use crate::BlackholeArgs;

const PORT: u16 = 7000;
const A: usize = 0;
const B: usize = 1;

struct Setup {
    lab: Lab,
    routers: Vec<Host>,
    servers: Vec<Host>,
    _processes: Vec<ServerProcess>,
    controls: Vec<PathBuf>,
    client: Endpoint,
    client_nid: Nid,
    server_nids: Vec<Nid>,
    dir: PathBuf,
}

fn nid(lab: &Lab, net: usize, n: u8) -> Nid {
    let name = if net == A { "tcp1" } else { "tcp2" };
    format!("{}:{PORT}@{name}", lab.addr(net, n))
        .parse()
        .expect("a NID")
}

fn setup() -> Result<Setup, String> {
    let mut lab = Lab::new(2)?;
    let here = lab.join_here(A, 1)?;
    let routers: Vec<Host> = [11u8, 12]
        .iter()
        .map(|&n| lab.host(&format!("r{n}"), n, &[A, B]))
        .collect::<Result<_, _>>()?;
    let servers: Vec<Host> = [21u8, 22]
        .iter()
        .map(|&n| lab.host(&format!("s{n}"), n, &[B]))
        .collect::<Result<_, _>>()?;
    let dir = std::env::temp_dir().join(format!("lanet-bench-bh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let gateways = |net: usize| -> Vec<String> {
        [11, 12]
            .iter()
            .map(|&n| nid(&lab, net, n).to_string())
            .collect()
    };
    let mut processes = Vec::new();
    let mut controls = Vec::new();
    for (i, host) in routers.iter().enumerate() {
        let (n, fellow) = (host.n, routers[1 - i].n);
        let control = dir.join(format!("r{n}.sock"));
        let cfg = format!(
            "{}{}[routing]\nenable = true\nwarm_up = \"0s\"\nfellows = [\"{}\", \"{}\"]\ncontrol_socket = \"{}\"\n",
            net("tcp1", &lab.addr(A, n).to_string(), PORT),
            net("tcp2", &lab.addr(B, n).to_string(), PORT),
            nid(&lab, A, fellow),
            nid(&lab, B, fellow),
            control.display()
        );
        let path = dir.join(format!("r{n}.toml"));
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        let wrapper = host.exec();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let p = path.display().to_string();
        processes.push(peer::spawn_self(
            &["router", "--router-config", &p],
            &wrapper,
        )?);
        controls.push(control);
    }
    for host in &servers {
        let n = host.n;
        let cfg = format!(
            "{}{}",
            net("tcp2", &lab.addr(B, n).to_string(), PORT),
            route("tcp1", &gateways(B))
        );
        let path = dir.join(format!("s{n}.toml"));
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        let wrapper = host.exec();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let p = path.display().to_string();
        processes.push(peer::spawn_self(
            &["router", "--serve-config", &p],
            &wrapper,
        )?);
    }
    let client_cfg = format!(
        "{}{}",
        net("tcp1", &here.to_string(), PORT),
        route("tcp2", &gateways(A))
    );
    let drivers: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];
    let client = ConfigFile::parse("client.toml", &client_cfg)
        .map_err(|e| e.to_string())?
        .endpoint(&drivers)
        .map_err(|e| e.to_string())?
        .start()
        .map_err(|e| e.to_string())?;
    Ok(Setup {
        client_nid: nid(&lab, A, 1),
        server_nids: [21, 22].iter().map(|&n| nid(&lab, B, n)).collect(),
        lab,
        routers,
        servers,
        _processes: processes,
        controls,
        client,
        dir,
    })
}

impl Setup {
    fn status(&self, r: usize) -> Value {
        lanet_control::query(&self.controls[r], "status").unwrap_or(Value::Null)
    }

    fn state(&self, r: usize) -> String {
        self.status(r)["router"]["state"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned()
    }

    /// PUTs R1 passed on for the client.
    fn forwarded_for_client(&self) -> u64 {
        let client = self.client_nid.to_string();
        self.status(0)["router"]["upstream"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["nid"] == client.as_str()))
            .and_then(|p| p["forwarded"].as_u64())
            .unwrap_or(0)
    }

    fn wait_state(&self, r: usize, state: &str, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.state(r) == state {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("router {} never became {state}", r + 1))
    }

    fn cut(&self, kind: Kind, cut: bool) -> Result<(), String> {
        match kind {
            Kind::Net => self.lab.set_link(B, self.routers[0].n, !cut),
            Kind::Peer => self.lab.set_cut(B, &self.routers[0], &self.servers[0], cut),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Net,
    Peer,
}

/// What the load saw: operations, failures, and the first few failures' errors.
type Loaded = (u64, u64, Vec<String>);

/// PUTs to the servers in turn, 16 in flight, until stopped.
fn load(
    client: &Endpoint,
    servers: &[Nid],
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> std::thread::JoinHandle<Loaded> {
    let (ep, servers) = (client.clone(), servers.to_vec());
    std::thread::spawn(move || {
        let mut sent_at = std::collections::HashMap::new();
        let (mut outstanding, mut i, mut done, mut failed) = (0usize, 0usize, 0u64, 0u64);
        let mut errors = Vec::new();
        loop {
            while outstanding < 16 && !stop.load(Ordering::Relaxed) {
                let req = PutRequest {
                    dst: servers[i % servers.len()],
                    lane: Lane::Data,
                    portal: peer::PORTAL,
                    match_bits: 0,
                    payload: bytes::Bytes::from_static(&[7u8; 1000]),
                    timeout: None,
                    on_peer_down: Default::default(),
                    ack: true,
                };
                let dst = req.dst;
                match ep.put(req) {
                    Ok(op) => {
                        sent_at.insert(op, (t0.elapsed(), dst));
                    }
                    Err(_) => break,
                }
                i += 1;
                outstanding += 1;
            }
            if outstanding == 0 {
                return (done, failed, errors);
            }
            if let Some(Event::Completed(c)) = ep.recv_event(Some(Duration::from_secs(60))) {
                outstanding -= 1;
                done += 1;
                let (at, dst) = sent_at.remove(&c.op).unwrap_or((Duration::ZERO, Nid::LO));
                if let Err(e) = c.result {
                    failed += 1;
                    if errors.len() < 5 {
                        errors.push(format!(
                            "{e:?} (sent at {:.3} s to {dst})",
                            at.as_secs_f64()
                        ));
                    }
                }
            }
        }
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn run(args: &BlackholeArgs) -> Result<Report, String> {
    if !netns::available() {
        return Err("the blackhole bench makes network namespaces: run it as root".into());
    }
    let s = setup()?;
    let mut report = Report::new(
        format!(
            "blackhole: a router cut off (its cable on B, or its path to one server), {} trials each, health interval 100 ms, PUTs streaming through two routers",
            args.trials
        ),
        args.json,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let loader = load(&s.client, &s.server_nids, stop.clone(), t0);
    let mut timeline = Vec::new();
    std::thread::sleep(Duration::from_millis(500));
    for kind in [Kind::Net, Kind::Peer] {
        let name = if kind == Kind::Net { "net" } else { "peer" };
        let (mut absent, mut switch) = (Vec::new(), Vec::new());
        for _ in 0..args.trials {
            s.wait_state(0, "forwarding", Duration::from_secs(120))?;
            std::thread::sleep(Duration::from_millis(300));
            let mut last = s.forwarded_for_client();
            s.cut(kind, true)?;
            let cut = Instant::now();
            timeline.push(format!("{name} cut at {:.3} s", t0.elapsed().as_secs_f64()));
            let mut last_change = cut;
            let mut absent_after = None;
            while cut.elapsed() < Duration::from_secs(10) {
                let status = s.status(0);
                let now = cut.elapsed();
                if absent_after.is_none() && status["router"]["state"] == "absent" {
                    absent_after = Some(now);
                }
                let f = s.forwarded_for_client();
                if f != last {
                    last = f;
                    last_change = Instant::now();
                }
                if absent_after.is_some_and(|a| now > a + Duration::from_millis(500)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let absent_after = absent_after.ok_or("R1 never withdrew")?;
            absent.push(absent_after.as_secs_f64() * 1e3);
            switch.push((last_change - cut).as_secs_f64() * 1e3);
            s.cut(kind, false)?;
            timeline.push(format!("healed at {:.3} s", t0.elapsed().as_secs_f64()));
        }
        report.add(
            format!("{name}.absent_ms.p50"),
            percentile(&mut absent, 0.5),
            "ms",
        );
        report.add(
            format!("{name}.absent_ms.max"),
            percentile(&mut absent, 1.0),
            "ms",
        );
        report.add(
            format!("{name}.switch_ms.p50"),
            percentile(&mut switch, 0.5),
            "ms",
        );
        report.add(
            format!("{name}.switch_ms.max"),
            percentile(&mut switch, 1.0),
            "ms",
        );
    }
    // Damping: ten flaps in twenty seconds.
    s.wait_state(0, "forwarding", Duration::from_secs(120))?;
    let mut last_plug = Instant::now();
    for _ in 0..10 {
        s.cut(Kind::Net, true)?;
        std::thread::sleep(Duration::from_secs(1));
        s.cut(Kind::Net, false)?;
        last_plug = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
    }
    s.wait_state(0, "forwarding", Duration::from_secs(300))?;
    report.add(
        "damping.out_after_last_flap_ms",
        last_plug.elapsed().as_secs_f64() * 1e3,
        "ms",
    );
    stop.store(true, Ordering::Relaxed);
    let (ops, failed, errors) = loader.join().map_err(|_| "the load thread panicked")?;
    report.add("ops", ops as f64, "");
    report.add("lost", failed as f64, "");
    if !errors.is_empty() {
        report.note(format!("first failures: {}", errors.join("; ")));
        report.note(format!("timeline: {}", timeline.join(", ")));
    }
    report.note("baseline, LNet defaults: 110000 ms for a router to mark its own net down; clients notice a silent router after ~60 s + 150 s");
    report.note("goal (issue 14): switch_ms p50 <= 500 at the 100 ms health interval; lost = 0");
    Ok(report)
}
