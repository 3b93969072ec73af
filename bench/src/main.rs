//! `lanet-bench`: latency, bandwidth, message-rate and instruction-cost benchmarks. Every
//! timed benchmark measures its baseline in the same run (raw blocking TCP, sockperf,
//! iperf3, UCX and libfabric when installed) and prints the ratio.
//!
//! Each benchmark starts its own peer process (this binary with `--serve`), or runs one side
//! with `--serve NID` / `--connect NID` for two hosts. Over RDMA (`--lnd rdma`) the baseline
//! is perftest (`ib_send_lat`, `ib_write_bw`) on the same device.

mod bandwidth;
mod baselines;
mod blackhole;
mod conns;
mod cost;
mod cputime;
mod detect;
mod lanes;
mod latency;
mod netns;
mod peer;
mod perftest;
mod pin;
mod relay;
mod report;
mod rounds;
mod router;
mod router_wire;
mod simrouted;
mod simscale;
mod stalls;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lanet::Nid;

#[derive(Parser)]
#[command(
    name = "lanet-bench",
    about = "lanet benchmarks, with baselines measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Ping-pong of PUTs (each completes on its ACK: one round trip), p50/p99/p99.9.
    Latency(LatencyArgs),
    /// Streaming PUTs: GB/s and messages per second.
    Bandwidth(BandwidthArgs),
    /// Health PING round trips idle, under saturating data load, and with the pings on
    /// the data lane (the baseline without a health lane).
    Lanes(LanesArgs),
    /// Failure detection: time to declare a SIGKILLed peer Down, and false Downs under
    /// saturating load.
    Detect(DetectArgs),
    /// Direct vs routed: PUT round trips and streaming PUTs to a server on the client's
    /// net and to one behind a router, in one run.
    Router(RouterArgs),
    /// A router cut off (net-level and peer-level), timed: how soon it withdraws, how soon
    /// clients stop sending through it, operations lost, and damping (root: namespaces).
    Blackhole(BlackholeArgs),
    /// Instructions per PUT round trip, both ends, on the in-memory LND: counted by
    /// callgrind (valgrind), not timed.
    Cost(CostArgs),
    /// Memory per idle connection: a server's resident memory as peers connect (RDMA).
    Conns(ConnsArgs),
    /// Failure detection at scale on the simulator: health load per node and detection
    /// time as the number of nodes grows.
    Sim(SimArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LndChoice {
    /// Two processes over TCP on loopback.
    Tcp,
    /// Two endpoints in one process on the in-memory LND: the core's own overhead.
    Mem,
    /// Two processes over RDMA (the first active device; see --addr), beside perftest.
    Rdma,
}

impl LndChoice {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LndChoice::Tcp => "tcp",
            LndChoice::Mem => "mem",
            LndChoice::Rdma => "rdma",
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct Common {
    #[arg(long, value_enum, default_value = "tcp")]
    lnd: LndChoice,
    /// Payload bytes per PUT.
    #[arg(long)]
    size: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Only run the server side, listening on this NID (e.g. 10.0.0.1:7001@tcp); the raw TCP
    /// echo baseline listens on the next port.
    #[arg(long, conflicts_with = "connect")]
    serve: Option<Nid>,
    /// Only run the client side, against a server started with --serve at this NID.
    #[arg(long)]
    connect: Option<Nid>,
    /// With --connect: build the client from this lanet configuration file (its NIs and
    /// routes), e.g. to measure through routers.
    #[arg(long, requires = "connect")]
    config: Option<std::path::PathBuf>,
    /// RDMA: the IPv4 address both sides use (default: one of the first active RDMA
    /// device's interface).
    #[arg(long)]
    addr: Option<std::net::Ipv4Addr>,
    /// Seconds each external baseline tool (sockperf, iperf3) runs. 0, over TCP: none of the
    /// external tools (sockperf, iperf3, UCX, libfabric) runs; latency still measures the
    /// raw socket floor. (RDMA's perftest runs regardless.)
    #[arg(long, default_value_t = 5)]
    baseline_secs: u32,
    /// TCP: send messages of at least this many bytes zero-copy (both sides); for measuring
    /// the threshold. Default: the LND's own.
    #[arg(long)]
    zc_min: Option<usize>,
    /// RDMA: payloads up to this many bytes travel inside the message (both sides;
    /// LANET_RDMA_EAGER_MAX). Default: the LND's own (3,968).
    #[arg(long)]
    eager_max: Option<usize>,
    /// Data-lane credits each side offers its peer (both sides; lnetctl's peer_credits).
    /// Default: 8. Bandwidth keeps this many PUTs in flight unless --window says.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    peer_credits: Option<u16>,
}

#[derive(Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Round trips to measure (after 1000 of warm-up).
    #[arg(long, default_value_t = 100_000)]
    iters: usize,
    /// TCP: both lanet processes busy-poll (LANET_TCP_SPIN_US), as UCX and libfabric do.
    #[arg(long)]
    spin: bool,
    /// TCP, sleeping: the client side (this process) on the second CPU it may use, every
    /// server it starts (lanet's and the baselines') on the first; with --serve, this
    /// process on the first.
    #[arg(long, conflicts_with = "spin")]
    pin: bool,
    /// TCP: the lanet side runs a `lanet::Worker` (driven by the benchmark's own thread)
    /// instead of an endpoint (which has a driver thread of its own); so does the server
    /// process this starts (or, with --serve, this one).
    #[arg(long)]
    worker: bool,
    /// TCP: rounds of lanet and its baselines, one after another, each lanet round against
    /// a server process of its own. The figures are then the medians, and each ratio the
    /// median of the rounds' own ratios, with its range.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
}

#[derive(Args)]
pub(crate) struct BandwidthArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds to stream.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// PUTs in flight (default: the peer's data credits, 8). With a small --size this
    /// measures the message rate.
    #[arg(long)]
    window: Option<usize>,
    /// TCP: both lanet processes busy-poll (LANET_TCP_SPIN_US), as ucx_perftest does.
    #[arg(long)]
    spin: bool,
    /// PUTs without ACK (LNet's LNET_NOACK_REQ): each is done once its driver is done with
    /// it (over RDMA: the peer's adapter has it), as a send is for ib_write_bw and
    /// ucx_perftest. By default each waits for the target's ACK.
    #[arg(long)]
    no_ack: bool,
    /// TCP: rounds of lanet, iperf3 and UCX, one after another. The figures are then the
    /// medians, and each ratio the median of the rounds' own ratios, with its range: on a
    /// noisy machine one round's ratio can be off by 2x either way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
}

#[derive(Args)]
pub(crate) struct CostArgs {
    /// Round trips counted (beyond a shorter run's, which is subtracted).
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// Payload bytes per PUT.
    #[arg(long, default_value_t = 8)]
    size: usize,
    #[arg(long)]
    json: bool,
    /// How many of the core's most costly functions to list (of the in-memory run).
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// Whose ping-pong the list is of.
    #[arg(long, value_enum, default_value_t = cost::TopOf::Endpoints)]
    top_of: cost::TopOf,
    /// The LND: the in-memory one (the core alone, the goal's figure), or TCP, each
    /// backend in turn (the core and the driver as a client and server run them; the
    /// processes block in their waits). Not RDMA.
    #[arg(long, value_enum, default_value_t = LndChoice::Mem)]
    lnd: LndChoice,
    /// Only run this many round trips (what runs under callgrind).
    #[arg(long, hide = true)]
    inner: Option<usize>,
    /// With --inner: whose round trips.
    #[arg(long, hide = true, requires = "inner", value_enum, default_value_t = cost::Inner::Endpoints)]
    inner_kind: cost::Inner,
    /// With --inner and a TCP kind: the server's NID.
    #[arg(long, hide = true, requires = "inner")]
    inner_nid: Option<Nid>,
}

#[derive(Args)]
pub(crate) struct RouterArgs {
    #[command(flatten)]
    common: Common,
    /// Round trips to measure each way (after 1000 of warm-up).
    #[arg(long, default_value_t = 100_000)]
    iters: usize,
    /// Seconds to stream each way.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Payload bytes per streamed PUT.
    #[arg(long, default_value_t = 1 << 20)]
    stream_size: usize,
    /// With --lnd tcp: instead of loopback, router and servers each in a network namespace
    /// of its own and the client on a veth (root), every cable a wire of this many Gbit/s
    /// (0: as fast as the veths go). The hop is then a wire, as between machines, not copies on the
    /// client's cores.
    #[arg(long)]
    wire_gbit: Option<f64>,
    /// Only run a router daemon on this configuration file (used by the benchmark).
    #[arg(long, hide = true)]
    router_config: Option<std::path::PathBuf>,
    /// Only run a server on this configuration file (used by the benchmark).
    #[arg(long, hide = true)]
    serve_config: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub(crate) struct BlackholeArgs {
    /// Trials of each kind (net-level, peer-level).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct LanesArgs {
    /// Seconds of measurement, split between the three phases.
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
    /// Threads submitting PUTs.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Bytes per PUT.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    #[arg(long)]
    json: bool,
    /// Run both sides' driver threads at real-time priority (SCHED_RR; needs root or
    /// CAP_SYS_NICE), as a host whose CPUs are saturated would, to keep health latency.
    #[arg(long)]
    rt_driver: bool,
    /// Only run the server side (used by the benchmark itself).
    #[arg(long)]
    serve: Option<Nid>,
}

#[derive(Args)]
pub(crate) struct ConnsArgs {
    #[command(flatten)]
    common: Common,
    /// Peers, each connecting both lanes (two connections).
    #[arg(long, default_value_t = 200)]
    peers: usize,
    /// Steps at which the server's memory is read (the slope is fitted over them).
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

#[derive(Args)]
pub(crate) struct DetectArgs {
    /// Peers killed, one per trial.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Health interval (ms); Down after the detect multiplier (3) of them.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Seconds of saturating load during which any Down verdict is false.
    #[arg(long, default_value_t = 60.0)]
    load_secs: f64,
    /// Seed of the random kill moments.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Run both sides' driver threads at real-time priority (SCHED_RR; needs root or
    /// CAP_SYS_NICE): shows whether the silences come from the drivers waiting for a CPU.
    #[arg(long)]
    rt_driver: bool,
    /// Only run the server side (used by the benchmark itself).
    #[arg(long)]
    serve: Option<Nid>,
}

#[derive(Args)]
pub(crate) struct SimArgs {
    /// Sizes to simulate, e.g. 1000,10000.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    nodes: Vec<u32>,
    /// Percent of the nodes that are routers (watched by clients).
    #[arg(long, default_value_t = 1)]
    router_pct: u32,
    /// Percent of the nodes that are servers.
    #[arg(long, default_value_t = 10)]
    server_pct: u32,
    /// Routers each client watches.
    #[arg(long, default_value_t = 2)]
    watch_routers: u32,
    /// Servers each client watches (talks to).
    #[arg(long, default_value_t = 4)]
    watch_servers: u32,
    /// Servers cut off at the end, to time detection.
    #[arg(long, default_value_t = 5)]
    lost_servers: u32,
    /// Seconds of virtual time over which the health load is measured.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Routed part: client counts to simulate, each client on one net reaching servers on
    /// another through the gateways (empty: skip the routed part).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    routed_clients: Vec<u32>,
    /// Routed part: routers between the two nets, each a gateway of every client.
    #[arg(long, default_value_t = 4)]
    gateways: u32,
    /// Routed part: servers behind the gateways.
    #[arg(long, default_value_t = 16)]
    routed_servers: u32,
    #[arg(long)]
    json: bool,
}

impl Bench {
    /// The options shared by the benchmarks that take them.
    fn common(&self) -> Option<&Common> {
        match self {
            Bench::Latency(a) => Some(&a.common),
            Bench::Bandwidth(a) => Some(&a.common),
            Bench::Router(a) => Some(&a.common),
            Bench::Conns(a) => Some(&a.common),
            Bench::Lanes(_)
            | Bench::Detect(_)
            | Bench::Sim(_)
            | Bench::Blackhole(_)
            | Bench::Cost(_) => None,
        }
    }
}

fn main() -> ExitCode {
    // Log lines (which TCP backend runs, and why) go to stderr; stdout carries the results.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let cli = Cli::parse();
    let common = cli.bench.common();
    let serve = match &cli.bench {
        Bench::Lanes(a) => a.serve,
        Bench::Detect(a) => a.serve,
        _ => common.and_then(|c| c.serve),
    };
    peer::set_zero_copy_min(common.and_then(|c| c.zc_min));
    peer::set_peer_credits(common.and_then(|c| c.peer_credits));
    if let Some(n) = common.and_then(|c| c.eager_max) {
        // Before any thread starts; the server process inherits it.
        std::env::set_var(lanet_lnd_rdma::EAGER_ENV, n.to_string());
    }
    let config = match &cli.bench {
        Bench::Latency(a) => a.common.config.clone(),
        Bench::Bandwidth(a) => a.common.config.clone(),
        _ => None,
    };
    if config.is_some() {
        // Otherwise left unset: `router --wire-gbit` sets its own.
        peer::set_client_config(config);
    }
    match &cli.bench {
        Bench::Lanes(a) => peer::set_realtime_driver(a.rt_driver),
        Bench::Detect(a) => peer::set_realtime_driver(a.rt_driver),
        _ => {}
    }
    if let Bench::Latency(a) = &cli.bench {
        peer::set_worker(a.worker);
        if a.pin {
            // Before any other thread starts: those that do inherit the CPU.
            if let Err(e) = latency::pin(a) {
                eprintln!("lanet-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Bench::Router(a) = &cli.bench {
        let child = match (&a.router_config, &a.serve_config) {
            (Some(path), _) => Some(router::run_router(path)),
            (None, Some(path)) => Some(peer::serve_config(path)),
            _ => None,
        };
        if let Some(result) = child {
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lanet-bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    if let Bench::Cost(CostArgs {
        inner: Some(n),
        size,
        inner_kind,
        inner_nid,
        ..
    }) = &cli.bench
    {
        return match cost::run_inner(*n, *size, *inner_kind, *inner_nid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lanet-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(nid) = serve {
        return match peer::serve(nid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lanet-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match cli.bench {
        Bench::Latency(a) => latency::run(&a),
        Bench::Bandwidth(a) => bandwidth::run(&a),
        Bench::Router(a) => router::run(&a),
        Bench::Lanes(a) => lanes::run(&a),
        Bench::Detect(a) => detect::run(&a),
        Bench::Sim(a) => simscale::run(&a),
        Bench::Cost(a) => cost::run(&a),
        Bench::Blackhole(a) => blackhole::run(&a),
        Bench::Conns(a) => conns::run(&a),
    };
    match result {
        Ok(report) => {
            report.print(report.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lanet-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
