//! `lanet-bench router --lnd tcp --wire-gbit G`: the router bench with wires between the
//! hops. The client (this process, on a veth of its own) and the router and two servers
//! (each in a network namespace of its own) on two bridged nets; every switch port a `gbit` Gbit/s line (`tc tbf`).
//! Direct: client -> server on net A. Routed: client -> router -> server on net B. On a
//! cluster the hop is a wire and the router a machine of its own; here the router still
//! shares this machine's cores with client and server, so a wire slower than those cores
//! are is what shows whether the router keeps up with a line, which is what it is for.

use lanet::Nid;
use lanet_tests::netns::{self, Lab};
use lanet_tests::router::{net, route};

use crate::bandwidth::stream;
use crate::latency::pingpong;
use crate::peer::{self, ServerProcess, Target};
use crate::report::Report;
use crate::RouterArgs;

const PORT: u16 = 7000;
const A: usize = 0;
const B: usize = 1;
const CLIENT: u8 = 1;
const ROUTER: u8 = 11;
const DIRECT_SERVER: u8 = 21;
const ROUTED_SERVER: u8 = 22;

fn nid(lab: &Lab, net: usize, n: u8) -> Nid {
    let name = if net == A { "tcp1" } else { "tcp2" };
    format!("{}:{PORT}@{name}", lab.addr(net, n))
        .parse()
        .expect("a NID")
}

pub(crate) fn run(args: &RouterArgs, gbit: f64) -> Result<Report, String> {
    if !netns::available() {
        return Err("--wire-gbit makes network namespaces: run it as root".into());
    }
    if !(gbit >= 0.0 && gbit.is_finite()) {
        return Err(format!("--wire-gbit {gbit}: expected a rate >= 0"));
    }
    let c = &args.common;
    if c.serve.is_some() || c.connect.is_some() {
        return Err("--serve and --connect do not apply to the router bench".into());
    }
    let size = c.size.unwrap_or(8);
    let mut lab = Lab::new(2)?;
    let here = lab.join_here(A, CLIENT)?;
    let router = lab.host("r", ROUTER, &[A, B])?;
    let direct_server = lab.host("sa", DIRECT_SERVER, &[A])?;
    let routed_server = lab.host("sb", ROUTED_SERVER, &[B])?;
    if gbit > 0.0 {
        for (net, n) in [
            (A, CLIENT),
            (A, ROUTER),
            (B, ROUTER),
            (A, DIRECT_SERVER),
            (B, ROUTED_SERVER),
        ] {
            lab.set_rate(net, n, gbit)?;
        }
    }
    let dir = super::router::TempDir::new("wire")?;
    let write = |name: &str, text: String| -> Result<String, String> {
        let path = dir.0.join(name);
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Ok(path.display().to_string())
    };
    let common = format!("max_payload = {}\n", peer::MAX_PUT);
    let addr = |net: usize, n: u8| lab.addr(net, n).to_string();
    let router_cfg = write(
        "router.toml",
        format!(
            "{common}{}{}[routing]\nenable = true\nwarm_up = \"0s\"\ncontrol_socket = \"{}\"\n",
            net("tcp1", &addr(A, ROUTER), PORT),
            net("tcp2", &addr(B, ROUTER), PORT),
            dir.0.join("router.sock").display(),
        ),
    )?;
    let direct_cfg = write(
        "direct.toml",
        format!("{common}{}", net("tcp1", &addr(A, DIRECT_SERVER), PORT)),
    )?;
    let routed_cfg = write(
        "routed.toml",
        format!(
            "{common}{}{}",
            net("tcp2", &addr(B, ROUTED_SERVER), PORT),
            route("tcp1", &[nid(&lab, B, ROUTER).to_string()])
        ),
    )?;
    let client_cfg = write(
        "client.toml",
        format!(
            "{common}{}{}",
            net("tcp1", &here.to_string(), PORT),
            route("tcp2", &[nid(&lab, A, ROUTER).to_string()])
        ),
    )?;
    let spawn = |host: &netns::Host, flag: &str, cfg: &str| -> Result<ServerProcess, String> {
        let wrapper = host.exec();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        peer::spawn_self(&["router", flag, cfg], &wrapper)
    };
    let processes = [
        spawn(&router, "--router-config", &router_cfg)?,
        spawn(&direct_server, "--serve-config", &direct_cfg)?,
        spawn(&routed_server, "--serve-config", &routed_cfg)?,
    ];
    peer::set_client_config(Some(client_cfg.into()));
    let direct = Target::Remote(nid(&lab, A, DIRECT_SERVER));
    let routed = Target::Remote(nid(&lab, B, ROUTED_SERVER));
    let line = if gbit > 0.0 {
        format!("{gbit} Gbit/s wires")
    } else {
        "unlimited veths".to_owned()
    };
    let title = format!(
        "router over tcp (network namespaces, {line}): {size}-byte PUT round trips ({} of them) and {}-byte PUTs streamed for {} s, direct vs through one lanet-router process",
        args.iters, args.stream_size, args.secs
    );
    let mut report = Report::new(title, c.json);
    report.add_latency("direct", &pingpong(direct, size, args.iters)?);
    report.add_latency("routed", &pingpong(routed, size, args.iters)?);
    let direct_bw = stream(direct, args.stream_size, args.secs)?;
    report.add("direct.gbytes_per_s", direct_bw, "GB/s");
    report.add(
        "routed.gbytes_per_s",
        stream(routed, args.stream_size, args.secs)?,
        "GB/s",
    );
    if gbit > 0.0 {
        report.add("wire.configured_gbytes_per_s", gbit / 8.0, "GB/s");
    }
    super::router::add_ratios(&mut report);
    report.note("direct is the baseline: the same client, and a server on the client's own net");
    report.note("goals (issue 14): routed bandwidth >= 0.9x direct, routed p50 <= 2.2x direct");
    drop(processes);
    Ok(report)
}
