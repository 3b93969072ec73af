//! `lanet-bench router`: what a router costs. The same PUT ping-pong and PUT stream, to a
//! server on the client's own net (direct) and to one behind a router (routed), in one run;
//! the direct figures are the baseline the routed ones are a ratio of.
//!
//! Only the in-memory LND for now: the core's own cost of forwarding (a hop through the
//! router's node: header checks, route choice, pools, credits held and released). Over TCP
//! the router is a process of its own, `lanet-router`, and its benchmark comes with it.

use crate::bandwidth::stream;
use crate::latency::pingpong;
use crate::peer::Target;
use crate::report::Report;
use crate::{LndChoice, RouterArgs};

pub(crate) fn run(args: &RouterArgs) -> Result<Report, String> {
    let c = &args.common;
    if c.lnd != LndChoice::Mem {
        return Err(format!(
            "router over {} needs the router daemon; only --lnd mem for now",
            c.lnd.name()
        ));
    }
    if c.serve.is_some() || c.connect.is_some() {
        return Err("--serve and --connect do not apply to the in-memory router bench".into());
    }
    let size = c.size.unwrap_or(8);
    let title = format!(
        "router over mem: {size}-byte PUT round trips ({} of them) and {}-byte PUTs streamed for {} s, direct vs through one router",
        args.iters, args.stream_size, args.secs
    );
    let mut report = Report::new(title, c.json);
    // Each measured once, in this order; run the bench twice to see the spread.
    report.add_latency("direct", &pingpong(Target::Mem, size, args.iters)?);
    report.add_latency("routed", &pingpong(Target::MemRouted, size, args.iters)?);
    report.add(
        "direct.gbytes_per_s",
        stream(Target::Mem, args.stream_size, args.secs)?,
        "GB/s",
    );
    report.add(
        "routed.gbytes_per_s",
        stream(Target::MemRouted, args.stream_size, args.secs)?,
        "GB/s",
    );
    report.add_ratio(
        "ratio.p50_routed_vs_direct",
        "routed.p50_us",
        "direct.p50_us",
    );
    report.add_ratio(
        "ratio.bandwidth_routed_vs_direct",
        "routed.gbytes_per_s",
        "direct.gbytes_per_s",
    );
    report.note("one process, in-memory LND without delay: a router's cost in the core alone");
    Ok(report)
}
