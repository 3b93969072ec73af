//! A configuration as a file again: what `lanetctl export` prints of a running node, with
//! every key written out (defaults included; `[auth]` only where it is set), so what runs
//! is what the file says.

use std::fmt::Write;
use std::time::Duration;

use super::file::ConfigFile;
use crate::handshake::auth::Accept;
use crate::nid::{LndKind, NidAddr};
use crate::node::FailoverMode;

fn dur(d: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

/// A TOML basic string: quoted, with backslash, quote and control characters escaped.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quoted(items: impl IntoIterator<Item = impl ToString>) -> String {
    let list: Vec<String> = items
        .into_iter()
        .map(|i| toml_string(&i.to_string()))
        .collect();
    format!("[{}]", list.join(", "))
}

impl ConfigFile {
    /// The file as TOML that [`ConfigFile::parse`] reads back to the same settings (its
    /// nets, routes, failover groups and every tunable; the incarnation is the one thing
    /// a node takes fresh at each start).
    pub fn to_toml(&self) -> String {
        let n = &self.node;
        let mut t = String::new();
        // `write!` to a String cannot fail.
        let _ = writeln!(t, "# exported by lanet {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(t, "transaction_timeout = {}", dur(n.op_timeout));
        let _ = writeln!(t, "retry_count = {}", n.resend_budget);
        let _ = writeln!(t, "max_payload = {}", n.max_payload);
        let _ = writeln!(t, "hop_limit = {}", n.hop_limit);
        for net in &self.nets {
            let _ = writeln!(t, "\n[[net]]\nnet = \"{}\"", net.nid.net());
            let (ip, port) = match net.nid.addr() {
                NidAddr::Num(_) => (None, None),
                NidAddr::Ip(ip) => (Some(ip), None),
                NidAddr::IpPort(a) => (Some(*a.ip()), Some(a.port())),
            };
            match (&net.interface, ip) {
                (Some(i), _) => {
                    let _ = writeln!(t, "interface = {}", toml_string(i));
                }
                (None, Some(ip)) => {
                    let _ = writeln!(t, "address = \"{ip}\"");
                }
                (None, None) => {}
            }
            if let Some(p) = port {
                let _ = writeln!(t, "port = {p}");
            }
            if !matches!(net.nid.net().kind, LndKind::Lo) {
                let _ = writeln!(t, "peer_credits = {}", net.peer_credits);
                let _ = writeln!(t, "credits = {}", net.credits);
                let _ = writeln!(t, "pending_accepts = {}", net.pending_accepts);
                let _ = writeln!(t, "check_source_address = {}", net.check_source_address);
                if let Some(spin) = net.spin {
                    let _ = writeln!(t, "spin = {}", dur(spin));
                }
                if let Some(poll) = net.mover_poll {
                    let _ = writeln!(t, "mover_poll = {}", dur(poll));
                }
                if let Some(e) = net.eager_max {
                    let _ = writeln!(t, "eager_max = {e}");
                }
            }
        }
        for r in &self.routes {
            let _ = writeln!(
                t,
                "\n[[route]]\nnet = \"{}\"\ngateway = \"{}\"\nhop = {}\npriority = {}",
                r.net, r.gateway, r.hops, r.priority
            );
        }
        let h = &n.health;
        let _ = writeln!(
            t,
            "\n[health]\ninterval = {}\ndetect_mult = {}\nprobe_max = {}\nsensitivity = {}",
            dur(h.interval),
            h.detect_mult,
            dur(h.probe_max),
            h.sensitivity
        );
        let r = &n.router;
        let b = &n.router_buffers;
        let _ = writeln!(t, "\n[routing]\nenable = {}", n.forwarding);
        let _ = writeln!(
            t,
            "buffers = {{ tiny = {}, small = {}, large = {} }}",
            b.tiny, b.small, b.large
        );
        let _ = writeln!(t, "buffer_patience = {}", dur(n.router_patience));
        let _ = writeln!(t, "forward_patience = {}", dur(n.forward_patience));
        let _ = writeln!(t, "hold_down = {}", dur(r.hold_down));
        let _ = writeln!(
            t,
            "damping = {{ half_life = {}, max_hold_down = {} }}",
            dur(r.half_life),
            dur(r.max_hold_down)
        );
        let _ = writeln!(t, "fellows = {}", quoted(&r.fellows));
        let _ = writeln!(t, "warm_up = {}", dur(r.warm_up));
        let _ = writeln!(t, "max_served = {}", r.max_served);
        let _ = writeln!(t, "drain = {}", dur(self.daemon.drain));
        let socket = self.daemon.control_socket.display().to_string();
        let _ = writeln!(t, "control_socket = {}", toml_string(&socket));
        // Keys given in code, with no file, cannot be written out: nor can their policy.
        match (&self.key_file, n.auth.accept()) {
            (Some(k), accept) => {
                let file = toml_string(&k.display().to_string());
                let _ = writeln!(
                    t,
                    "\n[auth]\nkey_file = {file}\naccept = \"{}\"",
                    accept.name()
                );
            }
            (None, Accept::DialOnly) => {
                let _ = writeln!(t, "\n[auth]\naccept = \"none\"");
            }
            (None, _) => {}
        }
        for g in &self.failover {
            let mode = match g.mode {
                FailoverMode::Failover => "failover",
                FailoverMode::Failout => "failout",
            };
            let _ = writeln!(
                t,
                "\n[[failover]]\nname = {}\nnids = {}\nmode = \"{mode}\"",
                toml_string(&g.name),
                quoted(&g.members)
            );
        }
        t
    }
}
