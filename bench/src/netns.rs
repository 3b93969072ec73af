//! A network namespace joined to this one by a veth pair, for cutting a peer off the way a
//! pulled cable does: the link goes down, nothing resets, frames just stop.

use std::net::Ipv4Addr;

/// Above the connected route's metric (0), so it only serves while that route is gone.
const BLACKHOLE_METRIC: &str = "4242";

pub(crate) struct Netns {
    pub(crate) name: String,
    /// The veth end in this namespace.
    outer: String,
    pub(crate) inner_ip: Ipv4Addr,
}

pub(crate) use lanet_tests::netns::{available, ip};

impl Netns {
    /// `lanet-PID` with 10.77.N.1 here and 10.77.N.2 inside (N from the process id).
    pub(crate) fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let n = (pid % 250) as u8 + 1;
        let name = format!("lanet-{pid}");
        let (outer, inner) = (format!("lno{pid}"), format!("lni{pid}"));
        let ns = Netns {
            name: name.clone(),
            outer: outer.clone(),
            inner_ip: Ipv4Addr::new(10, 77, n, 2),
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &name])?;
        ip(&["addr", "add", &format!("10.77.{n}.1/24"), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("10.77.{n}.2/24"), "dev", &inner])?;
        inside(&["link", "set", &inner, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        // While our end is down its subnet route is gone, and without this traffic for the
        // namespace would follow the default route out of the machine; a pulled cable drops it.
        ip(&[
            "route",
            "replace",
            "blackhole",
            &ns.subnet(),
            "metric",
            BLACKHOLE_METRIC,
        ])?;
        Ok(ns)
    }

    fn subnet(&self) -> String {
        let [a, b, c, _] = self.inner_ip.octets();
        format!("{a}.{b}.{c}.0/24")
    }

    /// Takes the link down (or up again).
    pub(crate) fn set_link(&self, up: bool) -> Result<(), String> {
        ip(&["link", "set", &self.outer, if up { "up" } else { "down" }])
    }

    /// The command prefix that runs a program inside.
    pub(crate) fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it ours.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&[
            "route",
            "del",
            "blackhole",
            &self.subnet(),
            "metric",
            BLACKHOLE_METRIC,
        ]);
    }
}
