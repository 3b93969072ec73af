//! The demo's site: two nets, two routers (R1, R2) on both, a failover pair of servers (S1,
//! S2) on the second, and the client (this process) on the first. Routers and servers are
//! processes of their own (this program in another role). As root, every node has a network
//! namespace and the nets are bridges, so a router's cable can be pulled; otherwise all is
//! on loopback and a fault rule on R1 cuts it off instead.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanet::config::{ConfigFile, OpenLnd};
use lanet::node::{FaultAction, FaultRule, GroupId, NidPattern};
use lanet::{Endpoint, Nid};
use lanet_control::Command as Ctl;
use lanet_tests::netns::{self, Host, Lab};
use serde_json::Value;

pub const A: usize = 0;
pub const B: usize = 1;
const NET: [&str; 2] = ["tcp1", "tcp2"];
const PORT: u16 = 7000;
const ROUTERS: [u8; 2] = [11, 12];
const SERVERS: [u8; 2] = [21, 22];
const CLIENT: u8 = 1;
pub const GROUP: &str = "oss0";

/// A child process; closing its standard input ends it (routers drain first).
pub struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(wrapper: &[String], args: &[&str], log: &std::path::Path) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let out = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "lanet-demo {} did not start (see its log)",
                args.join(" ")
            ));
        }
        Ok(Proc { child })
    }

    /// `kill -9`: no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait(); // Drop then finds it ended
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // it drains and ends
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Cut {
    /// Loopback: a fault rule at R1 dropping everything from the second net.
    Fault(Option<u32>),
    /// Namespaces: R1's cable on the second net, pulled at the switch.
    Cable,
}

pub struct Site {
    pub routers: Vec<Proc>,
    pub servers: Vec<Option<Proc>>,
    pub controls: Vec<PathBuf>,
    pub server_nids: Vec<Nid>,
    pub client: Endpoint,
    pub client_nid: Nid,
    pub group: GroupId,
    pub mode: &'static str,
    pub dir: PathBuf,
    cut: Cut,
    lab: Option<Lab>,
    router_hosts: Vec<Option<Host>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn section(net: &str, addr: &str, port: u16) -> String {
    format!("[[net]]\nnet = \"{net}\"\naddress = \"{addr}\"\nport = {port}\n\n")
}

fn list(nids: &[Nid]) -> String {
    let q: Vec<String> = nids.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", q.join(", "))
}

impl Site {
    pub fn start() -> Result<Site, String> {
        let dir = std::env::temp_dir().join(format!("lanet-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // LANET_DEMO_LOOPBACK=1: the loopback variant even as root.
        let loopback = std::env::var_os("LANET_DEMO_LOOPBACK").is_some_and(|v| v == "1");
        let mut lab = None;
        if netns::available() && !loopback {
            // Root without the right to make namespaces (an unprivileged container, say):
            // the loopback variant, which needs none.
            match Lab::new(2) {
                Ok(l) => lab = Some(l),
                Err(e) => eprintln!(
                    "lanet demo: cannot build network namespaces ({e}): on loopback instead"
                ),
            }
        }
        // (address, port) of node `n` on net `net`.
        let mut ports = std::collections::HashMap::new();
        let mut place = |lab: &Option<Lab>, net: usize, n: u8| -> (String, u16) {
            match lab {
                Some(lab) => (lab.addr(net, n).to_string(), PORT),
                None => {
                    let port = *ports.entry((net, n)).or_insert_with(free_port);
                    ("127.0.0.1".to_owned(), port)
                }
            }
        };
        let mut nid = |lab: &Option<Lab>, net: usize, n: u8| -> Nid {
            let (addr, port) = place(lab, net, n);
            format!("{addr}:{port}@{}", NET[net])
                .parse()
                .expect("a NID")
        };
        let router_nids: Vec<[Nid; 2]> = ROUTERS
            .iter()
            .map(|&r| [nid(&lab, A, r), nid(&lab, B, r)])
            .collect();
        let server_nids: Vec<Nid> = SERVERS.iter().map(|&s| nid(&lab, B, s)).collect();
        let client_nid = nid(&lab, A, CLIENT);
        let gateways = |net: usize| -> Vec<Nid> { router_nids.iter().map(|r| r[net]).collect() };
        let addr_port = |n: &Nid| {
            let sa = n.socket_addr(0).expect("an IP NID");
            (sa.ip().to_string(), sa.port())
        };

        let mut router_hosts = Vec::new();
        let mut server_hosts = Vec::new();
        if let Some(lab) = lab.as_mut() {
            lab.join_here(A, CLIENT)?;
            for (i, &r) in ROUTERS.iter().enumerate() {
                router_hosts.push(Some(lab.host(&format!("r{}", i + 1), r, &[A, B])?));
            }
            for (i, &s) in SERVERS.iter().enumerate() {
                server_hosts.push(Some(lab.host(&format!("s{}", i + 1), s, &[B])?));
            }
        } else {
            router_hosts = vec![None, None];
            server_hosts = vec![None, None];
        }
        let wrapper = |h: &Option<Host>| h.as_ref().map(Host::exec).unwrap_or_default();

        let mut routers = Vec::new();
        let mut controls = Vec::new();
        for i in 0..2 {
            let fellow = &router_nids[1 - i];
            let (a, b) = (addr_port(&router_nids[i][A]), addr_port(&router_nids[i][B]));
            let control = dir.join(format!("r{}.sock", i + 1));
            let cfg = format!(
                "{}{}[routing]\nenable = true\nwarm_up = \"500ms\"\nhold_down = \"2s\"\n\
                 fellows = {}\ndrain = \"2s\"\ncontrol_socket = \"{}\"\n",
                section(NET[A], &a.0, a.1),
                section(NET[B], &b.0, b.1),
                list(fellow),
                control.display()
            );
            let path = dir.join(format!("r{}.toml", i + 1));
            std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
            let log = dir.join(format!("r{}.log", i + 1));
            let p = path.display().to_string();
            routers.push(Proc::spawn(
                &wrapper(&router_hosts[i]),
                &["--role", "router", "--config", &p],
                &log,
            )?);
            controls.push(control);
        }
        let mut servers = Vec::new();
        for (i, s) in server_nids.iter().enumerate() {
            let (addr, port) = addr_port(s);
            let cfg = format!(
                "{}[[route]]\nnet = \"{}\"\ngateway = {}\n",
                section(NET[B], &addr, port),
                NET[A],
                list(&gateways(B))
            );
            let path = dir.join(format!("s{}.toml", i + 1));
            std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
            let log = dir.join(format!("s{}.log", i + 1));
            let p = path.display().to_string();
            servers.push(Some(Proc::spawn(
                &wrapper(&server_hosts[i]),
                &["--role", "server", "--config", &p],
                &log,
            )?));
        }
        let (addr, port) = addr_port(&client_nid);
        let client_cfg = format!(
            "{}[[route]]\nnet = \"{}\"\ngateway = {}\n[[failover]]\nname = \"{GROUP}\"\nnids = {}\n\
             mode = \"failover\"\n",
            section(NET[A], &addr, port),
            NET[B],
            list(&gateways(A)),
            list(&server_nids)
        );
        let drivers: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];
        let client = ConfigFile::parse("client.toml", &client_cfg)
            .map_err(|e| e.to_string())?
            .endpoint(&drivers)
            .map_err(|e| e.to_string())?
            .start()
            .map_err(|e| format!("the client: {e}"))?;
        let group = client
            .group(GROUP)
            .ok_or("the client has no failover group")?;
        let mode = if lab.is_some() {
            "network namespaces (root): a bridge per net, a namespace per node"
        } else {
            "loopback (not root, or LANET_DEMO_LOOPBACK=1): a port per NI; faults injected by lanetctl's rules"
        };
        Ok(Site {
            routers,
            servers,
            controls,
            server_nids,
            client,
            client_nid,
            group,
            mode,
            dir,
            cut: if lab.is_some() {
                Cut::Cable
            } else {
                Cut::Fault(None)
            },
            lab,
            router_hosts,
        })
    }

    /// Router `i`'s report, from its control socket.
    pub fn status(&self, i: usize) -> Value {
        lanet_control::query(&self.controls[i], "status").unwrap_or(Value::Null)
    }

    pub fn router_state(&self, i: usize) -> String {
        self.status(i)["router"]["state"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned()
    }

    /// PUTs router `i` has passed on for the client.
    pub fn forwarded_for_client(&self, i: usize) -> u64 {
        let me = self.client_nid.to_string();
        self.status(i)["router"]["upstream"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["nid"] == me.as_str()))
            .and_then(|p| p["forwarded"].as_u64())
            .unwrap_or(0)
    }

    /// Cuts R1 off the second net (or mends it).
    pub fn cut_r1(&mut self, cut: bool) -> Result<(), String> {
        match &mut self.cut {
            Cut::Cable => {
                let lab = self.lab.as_ref().expect("namespaces");
                let n = self.router_hosts[0].as_ref().expect("a host").n;
                lab.set_link(B, n, !cut)
            }
            Cut::Fault(id) => {
                if cut {
                    let rule = FaultRule {
                        action: FaultAction::Drop,
                        src: NidPattern::Net(NET[B].parse().expect("a net")),
                        dst: NidPattern::Any,
                        lane: None,
                        rate: 1,
                    };
                    let answer = lanet_control::request(&self.controls[0], &Ctl::FaultAdd(rule))
                        .map_err(|e| e.to_string())?;
                    *id = answer["id"].as_u64().map(|i| i as u32);
                    Ok(())
                } else if let Some(rule) = id.take() {
                    lanet_control::request(&self.controls[0], &Ctl::FaultDel(rule))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// How R1 is cut off, in words.
    pub fn cut_how(&self) -> &'static str {
        match self.cut {
            Cut::Cable => "R1's cable on tcp2 pulled at the switch",
            Cut::Fault(_) => {
                "a fault rule at R1 drops everything from tcp2 (lanetctl fault drop add --src tcp2)"
            }
        }
    }

    pub fn kill_server(&mut self, i: usize) {
        if let Some(p) = self.servers[i].take() {
            p.kill();
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.client.shutdown();
        self.routers.clear();
        self.servers.clear();
        // The lab goes last: its namespaces hold the processes' NIs.
        drop(self.lab.take());
    }
}
