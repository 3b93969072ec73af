//! The demo's story, step by step, with the client's PUTs flowing throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::op::{PingRequest, PutRequest};
use lanet::{Endpoint, Event, Lane, Nid, OpOutcome};

use crate::show::Show;
use crate::site::Site;
use crate::{PORTAL, PUT_SIZE};

/// Set by SIGINT or SIGTERM: the demo stops where it is and cleans up (its processes, and
/// as root its namespaces) on the way out.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// PUTs in flight at once.
const WINDOW: usize = 16;
/// Health pings per round-trip measurement.
const PINGS: usize = 200;

/// The client's traffic: PUTs to the failover group, `WINDOW` in flight, and what became
/// of each.
#[derive(Default)]
struct Load {
    running: bool,
    submitted: u64,
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    outstanding: usize,
    member: Option<Nid>,
    moved: Option<(Instant, Nid, Nid)>,
    route_downs: Vec<String>,
    since: Option<Instant>,
}

impl Load {
    fn pump(&mut self, site: &Site) {
        while self.running && self.outstanding < WINDOW {
            let req = PutRequest {
                dst: site.server_nids[0],
                lane: Lane::Data,
                portal: PORTAL,
                match_bits: 0,
                payload: Bytes::from(vec![0x5a; PUT_SIZE]),
                timeout: Some(Duration::from_secs(30)),
                on_peer_down: Default::default(),
                ack: true,
            };
            match site.client.group_put(site.group, req) {
                Ok(_) => {
                    self.submitted += 1;
                    self.outstanding += 1;
                }
                Err(e) => {
                    self.errors.push(format!("submit: {e}"));
                    self.running = false;
                }
            }
        }
    }

    /// Takes the client's events for up to `wait`.
    fn poll(&mut self, site: &Site, wait: Duration) {
        let mut next = site.client.recv_event(Some(wait));
        while let Some(e) = next {
            match e {
                Event::Completed(c) => {
                    self.outstanding -= 1;
                    match c.result {
                        Ok(OpOutcome::Put { .. }) => self.ok += 1,
                        other => {
                            self.failed += 1;
                            if self.errors.len() < 5 {
                                self.errors.push(format!("{other:?}"));
                            }
                        }
                    }
                }
                Event::FailoverMoved { from, to, .. } => {
                    self.moved = Some((Instant::now(), from, to));
                    self.member = Some(to);
                }
                Event::RouteDown {
                    gateway, reason, ..
                } => self.route_downs.push(format!("{gateway}: {reason}")),
                _ => {}
            }
            next = site.client.try_recv_event();
        }
        self.pump(site);
    }

    fn rate(&self) -> f64 {
        self.since.map_or(0.0, |t| {
            self.ok as f64 / t.elapsed().as_secs_f64().max(1e-3)
        })
    }
}

/// Round trips of `n` health-lane pings from `client` to `to`, sorted.
/// `n` health-lane round trips to `to`, sorted, and why those that did not come back
/// failed (a health ping to a live server must not fail, loaded or not).
fn ping_rtts(client: &Endpoint, to: Nid, n: usize) -> (Vec<Duration>, Vec<String>) {
    let (mut rtts, mut failed) = (Vec::new(), Vec::new());
    for _ in (0..n).take_while(|_| !interrupted()) {
        let req = PingRequest {
            dst: to,
            lane: Lane::Health,
            timeout: Some(Duration::from_secs(2)),
            on_peer_down: Default::default(),
        };
        match client.ping_and_wait(req).map(|done| done.result) {
            Ok(Ok(OpOutcome::Pong { rtt })) => rtts.push(rtt),
            Ok(other) => failed.push(format!("{other:?}")),
            Err(e) => failed.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    rtts.sort();
    (rtts, failed)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

struct Watch<'a> {
    site: &'a mut Site,
    load: Load,
    show: Show,
}

impl Watch<'_> {
    /// Runs the traffic (and the status line) until `done` says so, or `limit` passes.
    fn until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Site, &Load) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        let mut last_check = Instant::now() - Duration::from_secs(1);
        while start.elapsed() < limit && !interrupted() {
            self.load.poll(self.site, Duration::from_millis(10));
            if last_check.elapsed() >= Duration::from_millis(25) {
                last_check = Instant::now();
                if done(self.site, &self.load) {
                    return Some(start.elapsed());
                }
                self.status();
            }
        }
        None
    }

    fn status(&mut self) {
        let l = &self.load;
        let states: Vec<String> = (0..2)
            .map(|i| format!("R{} {}", i + 1, self.site.router_state(i)))
            .collect();
        let member = l.member.map_or_else(
            || "S1".to_owned(),
            |m| {
                if m == self.site.server_nids[1] {
                    "S2".to_owned()
                } else {
                    "S1".to_owned()
                }
            },
        );
        self.show.status(format!(
            "PUTs of 64 KiB: {} ok ({:.0}/s), {} failed, {} in flight | {} | serving: {member}",
            l.ok,
            l.rate(),
            l.failed,
            l.outstanding,
            states.join(", ")
        ));
    }
}

pub fn run() -> Result<(), String> {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone()).map_err(|e| e.to_string())?;
    }
    let result = story();
    if interrupted() {
        return Err("interrupted: its processes and namespaces are gone".into());
    }
    result
}

fn story() -> Result<(), String> {
    let mut show = Show::new();
    show.step("lanet demo: a client, two routers and a failover pair of servers, each a process");
    let mut site = Site::start()?;
    show.line(format!("mode: {}", site.mode));
    show.line(format!(
        "client {} on tcp1; routers R1, R2 on tcp1 and tcp2 (fellows); servers S1 {} and S2 {} on tcp2, a failover pair",
        site.client_nid, site.server_nids[0], site.server_nids[1]
    ));
    show.line(format!(
        "logs and configuration files: {}",
        site.dir.display()
    ));
    let mut w = Watch {
        site: &mut site,
        load: Load::default(),
        show,
    };
    let started = w.until(Duration::from_secs(15), |s, _| {
        (0..2).all(|i| s.router_state(i) == "forwarding")
            && s.client
                .report()
                .is_ok_and(|r| r.routes.iter().all(|(_, d)| d.is_none()))
    });
    if started.is_none() {
        return Err("the routers did not start forwarding within 15 s".into());
    }
    w.show
        .line("both routers forwarding (after a 500 ms warm-up)");

    w.show.step("the health lane: PING round trips to S1, idle");
    let (idle, mut pings_failed) = ping_rtts(&w.site.client, w.site.server_nids[0], PINGS);
    w.show.line(format!(
        "{} pings: p50 {}, p99 {}",
        idle.len(),
        us(pct(&idle, 0.5)),
        us(pct(&idle, 0.99))
    ));

    w.show
        .step("traffic: 64 KiB PUTs to the pair, 16 in flight, through both routers");
    w.load.running = true;
    w.load.since = Some(Instant::now());
    w.load.pump(w.site);
    w.until(Duration::from_secs(2), |_, _| false);
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let client = w.site.client.clone();
        let s1 = w.site.server_nids[0];
        std::thread::spawn(move || {
            let _ = tx.send(ping_rtts(&client, s1, PINGS));
        });
    }
    let mut loaded = Vec::new();
    w.until(Duration::from_secs(20), |_, _| match rx.try_recv() {
        Ok((rtts, failed)) => {
            loaded = rtts;
            pings_failed.extend(failed);
            true
        }
        Err(_) => false,
    });
    if loaded.is_empty() {
        return Err("no health-lane round trip under load came back within 20 s".into());
    }
    let fwd = [
        w.site.forwarded_for_client(0),
        w.site.forwarded_for_client(1),
    ];
    w.show.line(format!(
        "{} PUTs acknowledged, {:.0}/s; R1 passed on {}, R2 {}",
        w.load.ok,
        w.load.rate(),
        fwd[0],
        fwd[1]
    ));
    w.show.line(format!(
        "health-lane round trips under this load: p50 {}, p99 {} (idle: p50 {})",
        us(pct(&loaded, 0.5)),
        us(pct(&loaded, 0.99)),
        us(pct(&idle, 0.5))
    ));

    w.show
        .step("R1 becomes a black hole: cut off from tcp2, still up on tcp1");
    w.show.line(w.site.cut_how());
    let cut_at = Instant::now();
    w.site.cut_r1(true)?;
    let mut last_fwd = (w.site.forwarded_for_client(0), Instant::now());
    let absent = w.until(Duration::from_secs(10), |s, _| {
        let f = s.forwarded_for_client(0);
        if f != last_fwd.0 {
            last_fwd = (f, Instant::now());
        }
        s.router_state(0) == "absent"
    });
    let absent = absent.ok_or("R1 never took itself out")?;
    let why = w.site.status(0)["router"]["why"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    w.show
        .line(format!("R1 absent after {}: {why}", ms(absent)));
    w.until(Duration::from_secs(2), |s, _| {
        let f = s.forwarded_for_client(0);
        if f != last_fwd.0 {
            last_fwd = (f, Instant::now());
        }
        false
    });
    let switched = last_fwd.1.saturating_duration_since(cut_at);
    w.show.line(format!(
        "the client's last PUT through R1 {} after the cut; since then all through R2; {} failed so far",
        ms(switched),
        w.load.failed
    ));

    w.show
        .step("R1 mended: it returns after its hold-down of sustained health");
    w.site.cut_r1(false)?;
    let back = w
        .until(Duration::from_secs(30), |s, _| {
            s.router_state(0) == "forwarding"
        })
        .ok_or("R1 never came back")?;
    w.show.line(format!(
        "R1 forwarding again {} after it was mended",
        ms(back)
    ));
    let before = w.site.forwarded_for_client(0);
    w.until(Duration::from_secs(5), |s, _| {
        s.forwarded_for_client(0) > before + 10
    })
    .ok_or("R1 carried none of the client's PUTs within 5 s of forwarding again")?;
    w.show.line(format!(
        "R1 carries the client's PUTs again ({} more)",
        w.site.forwarded_for_client(0) - before
    ));

    w.show
        .step("S1 killed (kill -9): the client moves to S2; the routers are not blamed");
    let downs_before = w.load.route_downs.len();
    let killed_at = Instant::now();
    w.site.kill_server(0);
    w.until(Duration::from_secs(15), |_, l| l.moved.is_some())
        .ok_or("the client never moved to S2")?;
    let (moved_at, from, to) = w.load.moved.expect("moved");
    let moved = moved_at - killed_at;
    w.show.line(format!(
        "moved from {from} to {to} {} after the kill",
        ms(moved)
    ));
    w.until(Duration::from_secs(2), |_, _| false);
    let blamed = w.load.route_downs[downs_before..].to_vec();
    let routers_up = (0..2).all(|i| w.site.router_state(i) == "forwarding");
    w.show.line(format!(
        "routers: {}; routes the client took down meanwhile: {}",
        if routers_up {
            "both forwarding"
        } else {
            "NOT both forwarding"
        },
        blamed.len()
    ));

    w.show
        .step("stopping the traffic: every PUT ends in exactly one completion");
    w.load.running = false;
    w.until(Duration::from_secs(40), |_, l| l.outstanding == 0)
        .ok_or("PUTs still outstanding after 40 s")?;
    w.show.done();
    let l = &w.load;
    let lost = l.submitted - l.ok - l.failed;
    println!(
        "\n  {} PUTs submitted, {} acknowledged, {} failed, {lost} lost",
        l.submitted, l.ok, l.failed
    );
    println!("\n  {:<54} {:>8}   LNet's defaults", "", "lanet");
    let rows = [
        (
            "a dead server detected, clients moved to its partner",
            ms(moved),
            "transaction_timeout 150 s, then ptlrpc recovery",
        ),
        (
            "a router cut off from a net: it takes itself out",
            ms(absent),
            "110 s to mark its own net down",
        ),
        (
            "the last PUT through it, after the cut",
            ms(switched),
            "~60 s + 150 s for clients to notice",
        ),
        (
            "it returns once mended",
            ms(back),
            "a 110 s wait on start (2.17)",
        ),
        (
            "health round trip under load, p50",
            us(pct(&loaded, 0.5)),
            "no health lane: behind the data",
        ),
    ];
    for (what, ours, lnet) in rows {
        println!("  {what:<54} {ours:>8}   {lnet}");
    }
    println!();
    let refused = l.errors.iter().any(|e| e.starts_with("submit"));
    if l.failed > 0 || lost > 0 || !blamed.is_empty() || !routers_up || refused {
        return Err(format!(
            "the demo's promises did not hold: {} failed, {lost} lost, routes blamed {blamed:?}; errors {:?}",
            l.failed, l.errors
        ));
    }
    if !pings_failed.is_empty() {
        return Err(format!(
            "{} health pings to a live server failed: {:?}",
            pings_failed.len(),
            &pings_failed[..pings_failed.len().min(5)]
        ));
    }
    println!("lanet demo: done. Nothing failed, nothing was lost.");
    Ok(())
}
