//! `lanetctl import FILE`: an LNet configuration, as `lnetctl export` writes it (YAML),
//! turned into a lanet configuration file (TOML), so a site brings its nets, routes and
//! router buffers across. What has no lanet counterpart is named, not silently dropped.
//!
//! Read: `net` (`net type`, the first of its `local NI(s)`: its `nid`'s address (its
//! `interfaces` entry kept as a comment, since the file may be imported elsewhere),
//! `tunables` `peer_credits`, `credits`, `peer_buffer_credits`),
//! `route` (`net`, `gateway`, `hop`: -1 is lnetctl's "unset", one hop; `priority`),
//! `routing` (`enable`) and `buffers` (`tiny`, `small`, `large`).

use std::fmt::Write;

use yaml_rust2::{Yaml, YamlLoader};

/// The converted file, and notes on what was not carried over.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

fn int(y: &Yaml) -> Option<i64> {
    match y {
        Yaml::Integer(i) => Some(*i),
        Yaml::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn items(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

/// `routing` and `buffers` come as a map or as a list of maps, depending on the version.
fn field<'a>(y: &'a Yaml, key: &str) -> &'a Yaml {
    match y {
        Yaml::Array(list) => list
            .iter()
            .map(|i| &i[key])
            .find(|v| !v.is_badvalue())
            .unwrap_or(&Yaml::BadValue),
        other => &other[key],
    }
}

fn quoted(s: &str) -> String {
    lanet::config::toml_string(s)
}

/// How deep an `lnetctl export` may nest (it nests six deep): a file nested deeper is
/// refused before it is loaded, as the loader recurses once per level (a few hundred
/// kilobytes of `- - - ...` would overflow its stack).
const MAX_DEPTH: usize = 32;

/// Refuses what `lnetctl export` never writes and the loader cannot take safely: aliases
/// (`*name`: the loader copies the anchored value at each, so a few hundred bytes of
/// nested aliases would expand to billions of nodes), and nesting past [`MAX_DEPTH`].
/// The parser's events are pulled one by one: unlike the loader, that does not recurse.
fn check_shape(source: &str) -> Result<(), String> {
    use yaml_rust2::Event;
    let mut parser = yaml_rust2::parser::Parser::new_from_str(source);
    let mut depth = 0usize;
    loop {
        let (event, _) = parser.next_token().map_err(|e| format!("not YAML: {e}"))?;
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => {
                return Err(
                    "YAML aliases (*name) are not taken: lnetctl export never writes them".into(),
                )
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "nested more than {MAX_DEPTH} deep: not an lnetctl export"
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

pub fn lnetctl_yaml(source: &str) -> Result<Imported, String> {
    check_shape(source)?;
    let docs = YamlLoader::load_from_str(source).map_err(|e| format!("not YAML: {e}"))?;
    let doc = docs.first().ok_or("empty: no YAML document")?;
    if doc.as_hash().is_none() {
        return Err(
            "expected lnetctl export's top-level keys (net, route, routing, buffers)".into(),
        );
    }
    let mut t = String::from("# imported from an lnetctl export by lanetctl import\n");
    let mut notes = Vec::new();
    let mut peer_buffer_credits = None;
    let mut kept: Vec<lanet::Net> = Vec::new();
    for net in items(&doc["net"]) {
        let Some(kind) = text(&net["net type"]) else {
            return Err("a net without \"net type\"".into());
        };
        if kind == "lo" {
            continue; // lanet needs no loopback NI
        }
        let Ok(parsed) = kind.parse::<lanet::Net>() else {
            notes.push(format!(
                "net {kind}: not a kind lanet drives (tcp, o2ib): left out"
            ));
            continue;
        };
        let nis = items(&net["local NI(s)"]);
        let Some(ni) = nis.first() else {
            notes.push(format!("net {kind}: no local NI: left out"));
            continue;
        };
        if nis.len() > 1 {
            notes.push(format!(
                "net {kind}: {} NIs (multi-rail); lanet takes one per net: the first",
                nis.len()
            ));
        }
        if kept.contains(&parsed) {
            // tcp and tcp0 are one net; lanet takes one NI per net.
            notes.push(format!("net {kind}: the same net as one before: left out"));
            continue;
        }
        kept.push(parsed);
        let _ = writeln!(t, "\n[[net]]\nnet = {}", quoted(&kind));
        let interface = ni["interfaces"]
            .as_hash()
            .and_then(|h| h.values().next())
            .and_then(text);
        let address = text(&ni["nid"]).and_then(|n| n.split('@').next().map(str::to_owned));
        // The NID's address is what the node was; an interface is looked up on whatever
        // host reads the file, so it is kept only as a hint.
        match (address, interface) {
            (Some(a), i) => {
                let _ = writeln!(t, "address = {}", quoted(&a));
                if let Some(i) = i {
                    let _ = writeln!(
                        t,
                        "# interface = {}   (LNet's; instead of address)",
                        quoted(&i)
                    );
                }
            }
            (None, Some(i)) => {
                let _ = writeln!(t, "interface = {}", quoted(&i));
            }
            (None, None) => {
                return Err(format!("net {kind}: its NI has neither nid nor interface"))
            }
        }
        let tun = &ni["tunables"];
        if let Some(c) = int(&tun["peer_credits"]) {
            let _ = writeln!(t, "peer_credits = {c}");
        }
        if let Some(c) = int(&tun["credits"]) {
            let _ = writeln!(t, "credits = {c}");
        }
        if let Some(c) = int(&tun["peer_buffer_credits"]).filter(|&c| c > 0) {
            peer_buffer_credits = Some(c);
        }
        if let Some(p) = int(&tun["peer_timeout"]) {
            notes.push(format!(
                "net {kind}: peer_timeout {p} s not carried over: lanet's [health] interval and \
                 detect_mult decide (default 100 ms x 3)"
            ));
        }
    }
    for route in items(&doc["route"]) {
        let (Some(net), Some(gw)) = (text(&route["net"]), text(&route["gateway"])) else {
            return Err("a route without net or gateway".into());
        };
        // A gateway must be on one of this node's nets; one on a net left out above
        // would make the whole file unreadable, so its route goes with it.
        let gateway_net = gw.split_once('@').map(|(_, n)| n.parse::<lanet::Net>());
        if gateway_net.is_some_and(|n| n.map_or(true, |n| !kept.contains(&n))) {
            notes.push(format!(
                "route to {net} via {gw}: the gateway's net is not one of this node's: left out"
            ));
            continue;
        }
        let hop = int(&route["hop"]).filter(|&h| h > 0).unwrap_or(1);
        let priority = int(&route["priority"]).unwrap_or(0);
        let _ = writeln!(
            t,
            "\n[[route]]\nnet = {}\ngateway = {}\nhop = {hop}\npriority = {priority}",
            quoted(&net),
            quoted(&gw)
        );
    }
    let enable = int(field(&doc["routing"], "enable")).is_some_and(|e| e != 0);
    let buffers = field(&doc["buffers"], "tiny");
    let mut routing = String::new();
    if enable && kept.len() >= 2 {
        routing.push_str("enable = true\n");
    } else if enable {
        notes.push(format!(
            "routing enable: left off: a router needs two nets, {} kept",
            kept.len()
        ));
    }
    if !buffers.is_badvalue() {
        let b = |k: &str| int(field(&doc["buffers"], k));
        let list: Vec<String> = [
            ("tiny", b("tiny")),
            ("small", b("small")),
            ("large", b("large")),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}")))
        .collect();
        let _ = writeln!(routing, "buffers = {{ {} }}", list.join(", "));
    }
    if let Some(c) = peer_buffer_credits {
        let _ = writeln!(routing, "peer_buffer_credits = {c}");
    }
    if !routing.is_empty() {
        let _ = write!(t, "\n[routing]\n{routing}");
    }
    for key in ["peer", "global", "numa", "discovery", "udsp"] {
        if !doc[key].is_badvalue() {
            notes.push(format!(
                "{key}: not carried over (lanet has no counterpart)"
            ));
        }
    }
    // What lanet would make of it: values out of range (a priority of 300, a negative
    // credit count) are caught here, with the line of the converted file.
    if let Err(e) = lanet::config::ConfigFile::parse("the converted file", &t) {
        let notes: String = notes.iter().map(|n| format!("\n  note: {n}")).collect();
        return Err(format!("{e}{notes}\n--- the converted file:\n{t}"));
    }
    Ok(Imported { toml: t, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanet::config::ConfigFile;

    /// As `lnetctl export` writes it on a router (lnetctl 2.15).
    const ROUTER: &str = r#"
net:
    - net type: lo
      local NI(s):
        - nid: 0@lo
          status: up
    - net type: tcp
      local NI(s):
        - nid: 10.0.1.5@tcp
          status: up
          tunables:
              peer_timeout: 180
              peer_credits: 16
              peer_buffer_credits: 0
              credits: 512
    - net type: o2ib1
      local NI(s):
        - nid: 10.0.2.5@o2ib1
          status: up
          interfaces:
              0: lo
          tunables:
              peer_timeout: 180
              peer_credits: 32
              peer_buffer_credits: 64
              credits: 1024
route:
    - net: tcp9
      gateway: 10.0.1.9@tcp
      hop: -1
      priority: 2
      state: up
routing:
    - enable: 1
buffers:
    tiny: 1024
    small: 8192
    large: 512
global:
    numa_range: 0
"#;

    #[test]
    fn an_lnetctl_export_becomes_a_file_lanet_reads() {
        let out = lnetctl_yaml(ROUTER).unwrap();
        let f = ConfigFile::parse("imported.toml", &out.toml)
            .unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
        let nids: Vec<String> = f.nets.iter().map(|n| n.nid.to_string()).collect();
        // By the NID's address; the interface LNet named is a comment.
        assert_eq!(nids, ["10.0.1.5@tcp", "10.0.2.5@o2ib1"]);
        assert!(out.toml.contains("# interface = \"lo\""), "{}", out.toml);
        assert_eq!(f.nets[0].credits, 512);
        assert!(f.node.forwarding);
        assert_eq!(f.node.router_buffers.small, 8192);
        // peer_buffer_credits applies to a router's every net.
        assert!(f.nets.iter().all(|n| n.peer_credits == 64), "{:?}", f.nets);
        assert_eq!(f.routes.len(), 1);
        assert_eq!((f.routes[0].hops, f.routes[0].priority), (1, 2));
        assert!(
            out.notes.iter().any(|n| n.contains("peer_timeout")),
            "{:?}",
            out.notes
        );
        assert!(
            out.notes.iter().any(|n| n.starts_with("global")),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn nets_lanet_cannot_drive_take_their_routes_and_routing_with_them() {
        // A router between tcp and a Gemini net (gni): only tcp is kept.
        let export = "net:\n    - net type: tcp\n      local NI(s):\n        - nid: 10.0.0.1@tcp\n\
                      \x20   - net type: gni\n      local NI(s):\n        - nid: 27@gni\n\
                      route:\n    - net: tcp5\n      gateway: 30@gni\n\
                      \x20   - net: tcp6\n      gateway: 10.0.0.9@tcp\n\
                      routing:\n    enable: 1\n";
        let out = lnetctl_yaml(export).unwrap_or_else(|e| panic!("{e}"));
        let f = ConfigFile::parse("imported.toml", &out.toml).unwrap();
        assert_eq!(f.nets.len(), 1);
        assert_eq!(f.routes.len(), 1, "{}", out.toml);
        assert_eq!(f.routes[0].net.to_string(), "tcp6");
        assert!(!f.node.forwarding);
        for said in ["gni", "30@gni", "routing enable"] {
            assert!(
                out.notes.iter().any(|n| n.contains(said)),
                "{said}: {:?}",
                out.notes
            );
        }
    }

    #[test]
    fn what_is_not_an_export_is_refused() {
        assert!(lnetctl_yaml("").unwrap_err().contains("empty"));
        assert!(lnetctl_yaml("- a\n- b\n")
            .unwrap_err()
            .contains("top-level keys"));
        assert!(lnetctl_yaml("net: [\n").unwrap_err().contains("not YAML"));
        let no_gw = "route:\n    - net: tcp2\n";
        assert!(lnetctl_yaml(no_gw)
            .unwrap_err()
            .contains("without net or gateway"));
        let too_high = "net:\n    - net type: tcp\n      local NI(s):\n        - nid: 10.0.0.1@tcp\n\
                        route:\n    - net: tcp2\n      gateway: 10.0.0.2@tcp\n      priority: 300\n";
        let e = lnetctl_yaml(too_high).unwrap_err();
        assert!(
            e.contains("priority") && e.contains("the converted file"),
            "{e}"
        );
    }

    /// Nine levels of ten aliases each (a billion nodes once expanded, from 300 bytes) are
    /// refused before anything is expanded; the loader copied each alias's value.
    #[test]
    fn yaml_aliases_are_refused_before_they_expand() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 10].join(",");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let e = lnetctl_yaml(&bomb).unwrap_err();
        assert!(e.contains("aliases"), "{e}");
    }

    /// A file nested a hundred thousand deep (200 KB, within the size limit) is refused
    /// with an error; loaded, it overflowed the loader's stack and aborted lanetctl.
    #[test]
    fn yaml_nested_too_deep_is_refused_before_it_is_loaded() {
        for deep in [
            "- ".repeat(100_000) + "x\n",
            "[".repeat(200) + &"]".repeat(200),
        ] {
            let e = lnetctl_yaml(&deep).unwrap_err();
            assert!(
                e.contains("nested more than") || e.contains("not YAML"),
                "{e}"
            );
        }
        let block = "- ".repeat(100_000) + "x\n";
        assert!(lnetctl_yaml(&block)
            .unwrap_err()
            .contains("nested more than 32"));
    }
}
