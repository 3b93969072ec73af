//! Finding where to run: the first active RDMA device, its network interface, and that
//! interface's IPv4 address (what `--lnd rdma` uses when no address is given).

use std::net::Ipv4Addr;
use std::path::Path;

use lanet::lnd::{LndError, LndErrorKind};

use crate::verbs::first_active_device;

/// The first active RDMA device's name and an IPv4 address of its network interface.
pub fn default_ipv4() -> Result<(String, Ipv4Addr), LndError> {
    let device =
        first_active_device().map_err(|e| LndError::new(LndErrorKind::Resource, e.to_string()))?;
    let name = device.name().to_owned();
    let netdev = netdev_of(&name).ok_or_else(|| {
        LndError::new(
            LndErrorKind::Resource,
            format!("RDMA device {name} has no network interface (IPoIB or RoCE) to address it by"),
        )
    })?;
    let ip = ipv4_of(&netdev)?.ok_or_else(|| {
        LndError::new(
            LndErrorKind::Resource,
            format!("{netdev} (the interface of RDMA device {name}) has no IPv4 address"),
        )
    })?;
    Ok((name, ip))
}

/// The network interface of an RDMA device: RoCE devices name it in their GID attributes;
/// InfiniBand ones have their IPoIB interface under the PCI device.
fn netdev_of(device: &str) -> Option<String> {
    let base = Path::new("/sys/class/infiniband").join(device);
    if let Ok(name) = std::fs::read_to_string(base.join("ports/1/gid_attrs/ndevs/0")) {
        let name = name.trim();
        if !name.is_empty() {
            return Some(name.to_owned());
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(base.join("device/net"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The first IPv4 address of interface `netdev`, if any.
fn ipv4_of(netdev: &str) -> Result<Option<Ipv4Addr>, LndError> {
    lanet::nid::interface_ipv4(netdev)
        .map_err(|e| LndError::new(LndErrorKind::Resource, format!("getifaddrs: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_interface_has_its_address_and_unknown_ones_none() {
        assert_eq!(ipv4_of("lo").unwrap(), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(ipv4_of("no-such-interface").unwrap(), None);
    }
}
