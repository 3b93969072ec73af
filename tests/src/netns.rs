//! A small lab of network namespaces: one per node, joined by bridges (one per net) in a
//! switch namespace of their own, so a test can pull one node's cable on one net, or cut
//! a single pair of nodes, while everything else keeps working. Needs root (CI runs as
//! root); everything it makes is removed when it is dropped.

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs `ip ARGS`, failing with its error output.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may make namespaces (its effective uid is 0).
pub fn available() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The lab: nets (bridges) and hosts (namespaces).
pub struct Lab {
    tag: String,
    /// Third octet of every address: apart from other test processes' labs.
    octet: u8,
    switch: String,
    nets: usize,
    hosts: Vec<String>,
    /// Veths of this (the test's) namespace, to delete.
    here: Vec<String>,
}

impl Lab {
    /// A switch with `nets` bridges; net `i` is 10.(90+i).X.0/24.
    pub fn new(nets: usize) -> Result<Lab, String> {
        let pid = std::process::id();
        let tag = format!("{:x}", pid % 0xfffff);
        let lab = Lab {
            switch: format!("lnsw{tag}"),
            octet: (pid % 250) as u8 + 1,
            tag,
            nets,
            hosts: Vec::new(),
            here: Vec::new(),
        };
        ip(&["netns", "add", &lab.switch])?;
        for i in 0..nets {
            let br = format!("br{i}");
            lab.in_switch(&["link", "add", &br, "type", "bridge"])?;
            lab.in_switch(&["link", "set", &br, "up"])?;
        }
        Ok(lab)
    }

    fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", ns, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn in_switch(&self, args: &[&str]) -> Result<(), String> {
        Lab::in_ns(&self.switch, args)
    }

    /// The address of host number `n` on net `net`.
    pub fn addr(&self, net: usize, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 90 + net as u8, self.octet, n)
    }

    /// The switch's port for host `n` on net `net`.
    fn port(&self, net: usize, n: u8) -> String {
        format!("p{net}h{n}")
    }

    fn plug(&mut self, ns: Option<&str>, net: usize, n: u8) -> Result<(), String> {
        assert!(net < self.nets, "no net {net}");
        let port = self.port(net, n);
        let end = format!("l{}n{net}h{n}", self.tag);
        ip(&["link", "add", &end, "type", "veth", "peer", "name", &port])?;
        ip(&["link", "set", &port, "netns", &self.switch])?;
        self.in_switch(&["link", "set", &port, "master", &format!("br{net}")])?;
        self.in_switch(&["link", "set", &port, "up"])?;
        let addr = format!("{}/24", self.addr(net, n));
        match ns {
            Some(ns) => {
                ip(&["link", "set", &end, "netns", ns])?;
                Lab::in_ns(ns, &["addr", "add", &addr, "dev", &end])?;
                Lab::in_ns(ns, &["link", "set", &end, "up"])?;
            }
            None => {
                self.here.push(end.clone());
                ip(&["addr", "add", &addr, "dev", &end])?;
                ip(&["link", "set", &end, "up"])?;
            }
        }
        Ok(())
    }

    /// A host (its own namespace, `name`) numbered `n`, on each of `nets`.
    pub fn host(&mut self, name: &str, n: u8, nets: &[usize]) -> Result<Host, String> {
        let ns = format!("ln{}{name}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        Lab::in_ns(&ns, &["link", "set", "lo", "up"])?;
        for &net in nets {
            self.plug(Some(&ns), net, n)?;
        }
        Ok(Host { ns, n })
    }

    /// Puts the test's own namespace on net `net` as host `n`.
    pub fn join_here(&mut self, net: usize, n: u8) -> Result<Ipv4Addr, String> {
        self.plug(None, net, n)?;
        Ok(self.addr(net, n))
    }

    /// Pulls (or plugs back) host `n`'s cable on net `net`, at the switch.
    pub fn set_link(&self, net: usize, n: u8, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        self.in_switch(&["link", "set", &self.port(net, n), state])
    }

    /// Makes host `n`'s cable on net `net` a wire of `gbit` Gbit/s towards the host (a
    /// token bucket on the switch's port), as a NIC's line rate bounds what it receives.
    pub fn set_rate(&self, net: usize, n: u8, gbit: f64) -> Result<(), String> {
        let rate = format!("{}mbit", (gbit * 1000.0).round() as u64);
        let port = self.port(net, n);
        let mut args = vec!["netns", "exec", &self.switch, "tc", "qdisc", "replace"];
        args.extend(["dev", &port, "root", "tbf", "rate", &rate]);
        // A burst of a few large frames' worth; packets wait up to 20 ms at the rate
        // before they are dropped (a switch port's queue).
        args.extend(["burst", "2mb", "latency", "20ms"]);
        ip(&args)
    }

    /// Puts `tc netem` with `spec` (e.g. "delay 20ms 10ms", "loss 2%") on each of
    /// `cables` (net, host), towards the host; None takes it off. One `tc` process for
    /// all: each costs time in an emulated VM.
    pub fn set_netem(&self, cables: &[(usize, u8)], spec: Option<&str>) -> Result<(), String> {
        use std::io::Write;
        let mut batch = String::new();
        for &(net, n) in cables {
            let port = self.port(net, n);
            match spec {
                Some(spec) => batch += &format!("qdisc replace dev {port} root netem {spec}\n"),
                None => batch += &format!("qdisc del dev {port} root\n"),
            }
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.switch, "tc", "-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("tc: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(batch.as_bytes())
            .map_err(|e| format!("tc: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("tc: {e}"))?;
        // Taking off what is not there fails harmlessly.
        if out.status.success() || spec.is_none() {
            Ok(())
        } else {
            Err(format!(
                "tc -batch: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Cuts (or mends) the path between hosts `a` and `b` on net `net` only: each drops
    /// what it would send the other (a firewall rule, in effect).
    pub fn set_cut(&self, net: usize, a: &Host, b: &Host, cut: bool) -> Result<(), String> {
        let verb = if cut { "add" } else { "del" };
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", self.addr(net, to.n));
            Lab::in_ns(&from.ns, &["route", verb, "blackhole", &dst])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", ns]);
        }
        for end in &self.here {
            let _ = ip(&["link", "del", end]);
        }
    }
}

/// A host of the lab: a namespace.
pub struct Host {
    pub ns: String,
    pub n: u8,
}

impl Host {
    /// The command prefix that runs a program inside it.
    pub fn exec(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }
}
