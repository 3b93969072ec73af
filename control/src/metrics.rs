//! Prometheus metrics: `--metrics ADDR` serves `GET /metrics` over HTTP, the node's report
//! at the moment of the scrape in the OpenMetrics text format (`prometheus-client`):
//! per-lane counters, credits and queues per neighbour, peer states and health values,
//! routes, router state, pools, NACKs and resends, and a histogram of health-ping round
//! trips.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::acceptor::Acceptor;
use lanet::health::{PeerState, RttHistogram};
use lanet::node::NodeReport;
use lanet::wire::RouterState;
use lanet::{Endpoint, Lane};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A scraper has this long to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read.
const MAX_REQUEST: usize = 8192;

type Labels = Vec<(&'static str, String)>;

/// The metrics of one report, as a `prometheus-client` collector.
#[derive(Debug)]
struct Snapshot(NodeReport);

fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, u64, u64>(v, None)?;
    }
    Ok(())
}

fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &RttHistogram) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // Counts per bucket, upper bounds in seconds (the encoder makes them cumulative).
    let buckets: Vec<(f64, u64)> = RttHistogram::BOUNDS
        .iter()
        .map(|b| b.as_secs_f64())
        .chain([f64::INFINITY])
        .zip(h.counts)
        .collect();
    m.encode_histogram::<NoLabelSet>(h.sum.as_secs_f64(), h.count(), &buckets, None)
}

fn lane(l: Lane) -> (&'static str, String) {
    ("lane", l.name().to_owned())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let r = &self.0;
        let s = &r.stats;
        let per_lane = |f: &dyn Fn(&lanet::node::LaneStats) -> u64| -> Vec<(Labels, u64)> {
            Lane::ALL
                .iter()
                .map(|&l| (vec![lane(l)], f(&s.lanes[l])))
                .collect()
        };
        let both_ways = |tx: &dyn Fn(&lanet::node::LaneStats) -> u64,
                         rx: &dyn Fn(&lanet::node::LaneStats) -> u64| {
            let mut rows = Vec::new();
            for l in Lane::ALL {
                rows.push((vec![lane(l), ("direction", "sent".into())], tx(&s.lanes[l])));
                rows.push((
                    vec![lane(l), ("direction", "received".into())],
                    rx(&s.lanes[l]),
                ));
            }
            rows
        };
        counters(
            &mut e,
            "lanet_frames",
            "Frames, per lane and direction",
            &both_ways(&|l| l.frames_sent, &|l| l.frames_received),
        )?;
        counters(
            &mut e,
            "lanet_payload_bytes",
            "Payload bytes, per lane and direction",
            &both_ways(&|l| l.bytes_sent, &|l| l.bytes_received),
        )?;
        counters(
            &mut e,
            "lanet_nacks",
            "NACKs, per lane and direction",
            &both_ways(&|l| l.nacks_sent, &|l| l.nacks_received),
        )?;
        counters(
            &mut e,
            "lanet_send_errors",
            "Frames a driver failed to send",
            &per_lane(&|l| l.send_errors),
        )?;
        counters(
            &mut e,
            "lanet_protocol_errors",
            "Frames that broke the protocol",
            &per_lane(&|l| l.protocol_errors),
        )?;
        counters(
            &mut e,
            "lanet_answers_dropped",
            "Answers dropped with no way left to their target",
            &per_lane(&|l| l.dropped),
        )?;
        counters(
            &mut e,
            "lanet_resent",
            "Requests sent again another way",
            &per_lane(&|l| l.resent),
        )?;
        counters(
            &mut e,
            "lanet_fault_dropped",
            "Frames a fault rule dropped",
            &per_lane(&|l| l.fault_dropped),
        )?;
        counters(
            &mut e,
            "lanet_fault_delayed",
            "Frames a fault rule delayed",
            &per_lane(&|l| l.fault_delayed),
        )?;
        counters(
            &mut e,
            "lanet_forwarded",
            "Frames passed on as a router",
            &[(vec![], s.forwarded)],
        )?;
        counters(
            &mut e,
            "lanet_notices_dropped",
            "News of the network an endpoint dropped: its application left its events untaken",
            &[(vec![], s.notices_dropped)],
        )?;
        counters(
            &mut e,
            "lanet_replies_aborted",
            "REPLYs passed on without their payload: larger than their next hop takes",
            &[(vec![], s.replies_aborted)],
        )?;
        counters(
            &mut e,
            "lanet_stale_frames",
            "Frames of a far end's replaced life, late through a router: dropped",
            &[(vec![], s.stale_frames)],
        )?;
        counters(
            &mut e,
            "lanet_forwards_stalled",
            "Frames passing through refused after waiting at a next hop that took nothing",
            &[(vec![], s.forwards_stalled)],
        )?;
        counters(
            &mut e,
            "lanet_peer_downs",
            "Peers declared Down",
            &[(vec![], r.health.downs)],
        )?;
        histogram(
            &mut e,
            "lanet_health_ping_rtt_seconds",
            "Round trips of the health monitor's PINGs",
            &s.health_rtt,
        )?;

        let nis: Vec<(Labels, i64)> = r
            .nis
            .iter()
            .map(|(nid, up)| (vec![("nid", nid.to_string())], i64::from(*up)))
            .collect();
        gauges(&mut e, "lanet_ni_up", "1 if the NI is up", &nis)?;
        let peer = |nid: &lanet::Nid| -> Labels { vec![("peer", nid.to_string())] };
        let states: Vec<(Labels, i64)> = r
            .peers
            .iter()
            .map(|(nid, h)| (peer(nid), i64::from(h.state == PeerState::Up)))
            .collect();
        gauges(
            &mut e,
            "lanet_peer_up",
            "1 if the peer is Up (0: Suspect or Down)",
            &states,
        )?;
        let health: Vec<(Labels, i64)> = r
            .peers
            .iter()
            .map(|(nid, h)| (peer(nid), i64::from(h.health)))
            .collect();
        gauges(
            &mut e,
            "lanet_peer_health",
            "The peer's health value, 0 to 1000",
            &health,
        )?;
        let mut credits = Vec::new();
        let mut lowest = Vec::new();
        let mut queued = Vec::new();
        for hop in &r.hops {
            for l in Lane::ALL {
                let labels = vec![("peer", hop.nid.to_string()), lane(l)];
                let hl = &hop.lanes[l];
                queued.push((labels.clone(), hl.queued as i64));
                if let Some(c) = hl.credits {
                    credits.push((labels.clone(), i64::from(c.available)));
                    lowest.push((labels, i64::from(c.lowest)));
                }
            }
        }
        gauges(
            &mut e,
            "lanet_peer_credits",
            "Credits to send to the neighbour now",
            &credits,
        )?;
        gauges(
            &mut e,
            "lanet_peer_credits_lowest",
            "The fewest credits since the connection came up",
            &lowest,
        )?;
        gauges(
            &mut e,
            "lanet_peer_queued",
            "Frames waiting for the neighbour",
            &queued,
        )?;
        let routes: Vec<(Labels, i64)> = r
            .routes
            .iter()
            .map(|(route, down)| {
                let labels = vec![
                    ("net", route.net.to_string()),
                    ("gateway", route.gateway.to_string()),
                ];
                (labels, i64::from(down.is_none()))
            })
            .collect();
        gauges(
            &mut e,
            "lanet_route_up",
            "1 if the route is usable",
            &routes,
        )?;

        if let Some(router) = &r.router {
            let c = &router.condition;
            let forwarding = i64::from(c.state == RouterState::Forwarding);
            gauges(
                &mut e,
                "lanet_router_forwarding",
                "1 if the router forwards (0: absent)",
                &[(vec![], forwarding)],
            )?;
            gauges(
                &mut e,
                "lanet_router_degraded",
                "1 if it stays in although it should not (fail-open)",
                &[(vec![], i64::from(c.degraded))],
            )?;
            counters(
                &mut e,
                "lanet_router_withdrawals",
                "Times it took itself out",
                &[(vec![], c.counters.withdrawals)],
            )?;
            counters(
                &mut e,
                "lanet_router_returns",
                "Times it came back",
                &[(vec![], c.counters.returns)],
            )?;
            counters(
                &mut e,
                "lanet_router_unwatched_forwards",
                "Frames it forwarded for peers it did not watch (max_served reached)",
                &[(vec![], c.counters.unwatched_forwards)],
            )?;
            let pools = ["tiny", "small", "large"];
            let pool_rows = |f: &dyn Fn(&lanet::node::PoolStats) -> i64| -> Vec<(Labels, i64)> {
                pools
                    .iter()
                    .zip(&router.stats.pools)
                    .map(|(name, p)| (vec![("pool", (*name).to_owned())], f(p)))
                    .collect()
            };
            gauges(
                &mut e,
                "lanet_router_pool_buffers",
                "Buffers in the pool",
                &pool_rows(&|p| i64::from(p.buffers)),
            )?;
            gauges(
                &mut e,
                "lanet_router_pool_in_use",
                "Buffers in use",
                &pool_rows(&|p| i64::from(p.in_use)),
            )?;
            gauges(
                &mut e,
                "lanet_router_pool_lowest_free",
                "The fewest free buffers seen",
                &pool_rows(&|p| i64::from(p.min_free)),
            )?;
            let waits: Vec<(Labels, u64)> = pools
                .iter()
                .zip(&router.stats.pools)
                .map(|(name, p)| (vec![("pool", (*name).to_owned())], p.waits))
                .collect();
            counters(
                &mut e,
                "lanet_router_pool_waits",
                "Frames that waited for a buffer",
                &waits,
            )?;
        }
        Ok(())
    }
}

/// The report in the OpenMetrics text format.
pub fn render(report: NodeReport) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(report)));
    let mut text = String::new();
    // Writing to a String cannot fail; the collector only fails on a String error too.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The HTTP endpoint, served by a thread of its own until dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    _acceptor: Acceptor,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any) and answers scrapes for `endpoint`.
    pub fn serve(addr: SocketAddr, endpoint: Endpoint) -> io::Result<MetricsServer> {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "metrics are served without authentication and name this node's peers and \
                 routes: bind them to loopback or a management network"
            );
        }
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let acceptor = Acceptor::spawn(
            "lanet-metrics",
            listener,
            |l: &TcpListener| l.accept().map(|(c, _)| c),
            move |conn, _| answer(conn, &endpoint),
        )?;
        Ok(MetricsServer {
            addr,
            _acceptor: acceptor,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn answer(mut conn: TcpStream, endpoint: &Endpoint) -> io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    // The whole request within IO_TIMEOUT, not each read: a client trickling bytes is cut
    // off like a silent one.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let ended =
        |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    while !ended(&head) && head.len() < MAX_REQUEST {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete in time",
            ));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            // A stop and continue interrupts a read with a timeout, handler or not.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (status, kind, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => match endpoint.report() {
            Ok(r) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(r),
            ),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
        },
        (Some("GET"), Some(_)) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "400 Bad Request",
            "text/plain",
            "expected GET /metrics\n".into(),
        ),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The whole answer within IO_TIMEOUT too, not each write.
    crate::within::write_all_before(
        answer.as_bytes(),
        std::time::Instant::now() + IO_TIMEOUT,
        |left| conn.set_write_timeout(Some(left)),
        |bytes| (&conn).write(bytes),
    )
}
