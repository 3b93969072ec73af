//! A node's report as JSON: what the control socket answers (and `lanetctl` reads).

use lanet::node::{
    FaultAction, FaultRuleReport, HopLaneReport, LaneStats, NodeReport, PoolStats, RouterReport,
};
use lanet::wire::{RouterState, RouterStatus};
use lanet::Lane;
use serde_json::{json, Value};

/// The whole report.
pub fn report(r: &NodeReport) -> Value {
    let nets: Vec<Value> = r
        .nis
        .iter()
        .map(|(nid, up)| json!({ "nid": nid.to_string(), "net": nid.net().to_string(), "up": up }))
        .collect();
    // Both sorted by NID: looked up by binary search, not per peer from the start.
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|(nid, h)| {
            let hop = r
                .hops
                .binary_search_by_key(nid, |hop| hop.nid)
                .ok()
                .map(|i| &r.hops[i]);
            let incarnation = r
                .incarnations
                .binary_search_by_key(nid, |(n, _)| *n)
                .ok()
                .map(|i| r.incarnations[i].1);
            json!({
                "nid": nid.to_string(),
                "state": format!("{:?}", h.state).to_lowercase(),
                "health": h.health,
                "last_heard_ms": r.at.saturating_since(h.last_heard).as_millis() as u64,
                "incarnation": incarnation,
                "neighbour": hop.is_some(),
                "lanes": hop.map(|hop| json!({
                    "health": hop_lane(&hop.lanes[Lane::Health]),
                    "data": hop_lane(&hop.lanes[Lane::Data]),
                })),
            })
        })
        .collect();
    let routes: Vec<Value> = r
        .routes
        .iter()
        .map(|(route, down)| {
            json!({
                "net": route.net.to_string(),
                "gateway": route.gateway.to_string(),
                "hop": route.hops,
                "priority": route.priority,
                "state": if down.is_some() { "down" } else { "up" },
                "why": down.map(|d| d.to_string()),
            })
        })
        .collect();
    let gateways: Vec<Value> = r
        .gateways
        .iter()
        .map(|(nid, s)| json!({ "nid": nid.to_string(), "status": status(s) }))
        .collect();
    let s = &r.stats;
    json!({
        "nets": nets,
        "peers": peers,
        "lanes": {
            "health": lane_stats(&s.lanes[Lane::Health]),
            "data": lane_stats(&s.lanes[Lane::Data]),
        },
        "routes": routes,
        "gateways": gateways,
        "router": r.router.as_ref().map(router),
        "faults": r.faults.iter().map(fault).collect::<Vec<_>>(),
        "counters": {
            "frames_sent": s.frames_sent,
            "frames_received": s.frames_received,
            "health_frames_sent": s.health_frames_sent,
            "health_frames_received": s.health_frames_received,
            "forwarded": s.forwarded,
            "forwards_stalled": s.forwards_stalled,
            "nacks_sent": s.nacks_sent,
            "nacks_received": s.nacks_received,
            "resent": s.resent,
            "unroutable_answers": s.unroutable_answers,
            "stale_frames": s.stale_frames,
            "notices_dropped": s.notices_dropped,
            "replies_aborted": s.replies_aborted,
            "protocol_errors": s.protocol_errors,
            "pings_sent": r.health.pings_sent,
            "peer_downs": r.health.downs,
            "peer_recoveries": r.health.recoveries,
            // Not a counter: the highest mark so far, against the detection time.
            "longest_silence_ms": r.health.longest_silence.as_secs_f64() * 1e3,
        },
    })
}

fn hop_lane(l: &HopLaneReport) -> Value {
    json!({
        "connected": l.credits.is_some(),
        "credits": l.credits.map(|c| c.available),
        "max_credits": l.credits.map(|c| c.max),
        "lowest_credits": l.credits.map(|c| c.lowest),
        "held": l.credits.map(|c| c.held),
        "owed": l.credits.map(|c| c.owed),
        "queued": l.queued,
    })
}

fn fault(f: &FaultRuleReport) -> Value {
    let r = &f.rule;
    let (action, latency_ms) = match r.action {
        FaultAction::Drop => ("drop", None),
        FaultAction::Delay(d) => ("delay", Some(d.as_millis() as u64)),
    };
    json!({
        "id": f.id,
        "action": action,
        "latency_ms": latency_ms,
        "src": r.src.to_string(),
        "dst": r.dst.to_string(),
        "lane": r.lane.map_or("*", |l| l.name()),
        "rate": r.rate,
        "matched": f.matched,
        "hit": f.hit,
    })
}

fn lane_stats(l: &LaneStats) -> Value {
    json!({
        "frames_sent": l.frames_sent,
        "frames_received": l.frames_received,
        "bytes_sent": l.bytes_sent,
        "bytes_received": l.bytes_received,
        "send_errors": l.send_errors,
        "protocol_errors": l.protocol_errors,
        "dropped": l.dropped,
        "nacks_sent": l.nacks_sent,
        "nacks_received": l.nacks_received,
        "resent": l.resent,
        "fault_dropped": l.fault_dropped,
        "fault_delayed": l.fault_delayed,
    })
}

fn state(s: RouterState) -> (&'static str, Option<String>) {
    match s {
        RouterState::Forwarding => ("forwarding", None),
        RouterState::Absent(why) => ("absent", Some(why.to_string())),
    }
}

/// A router's status, as it says it.
pub fn status(s: &RouterStatus) -> Value {
    let (st, why) = state(s.state);
    json!({
        "generation": s.generation,
        "state": st,
        "why": why,
        "nets": s.nets.iter().map(|(n, up)| json!({ "net": n.to_string(), "up": up })).collect::<Vec<_>>(),
        "unreachable": s.unreachable.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "more_unreachable": s.more_unreachable,
        "vouched": s.vouched.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn pool(name: &str, p: &PoolStats) -> Value {
    json!({
        "pool": name,
        "buffers": p.buffers,
        "in_use": p.in_use,
        "min_free": p.min_free,
        "waits": p.waits,
        "refused": p.refused,
    })
}

fn router(r: &RouterReport) -> Value {
    let c = &r.condition;
    let (st, why) = state(c.state);
    let pools: Vec<Value> = ["tiny", "small", "large"]
        .iter()
        .zip(&r.stats.pools)
        .map(|(n, p)| pool(n, p))
        .collect();
    let peers: Vec<Value> = r
        .stats
        .peers
        .iter()
        .map(|p| json!({ "nid": p.peer.to_string(), "forwarded": p.forwarded, "held": p.held }))
        .collect();
    json!({
        "state": st,
        "why": why,
        "degraded": c.degraded,
        "black_hole": c.black_hole.map(|b| b.to_string()),
        "hold_down": c.hold_down.map(|(clear_for, needed)| json!({
            "clear_for_ms": clear_for.as_millis() as u64,
            "needed_ms": needed.as_millis() as u64,
        })),
        "status": status(&r.status),
        "holds": r.holds(),
        "pools": pools,
        "upstream": peers,
        "counters": {
            "withdrawals": c.counters.withdrawals,
            "returns": c.counters.returns,
            "flaps": c.counters.flaps,
            "degradations": c.counters.degradations,
            "unwatched_forwards": c.counters.unwatched_forwards,
            "penalty": c.counters.penalty.round() as u64,
        },
    })
}
