//! A `lanet-router` child process, the configuration files the tests write for it and for
//! the nodes around it, and its control socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A directory of its own for one test's files, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lanet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make a scratch directory");
        Scratch(dir)
    }

    /// Writes `text` to `name` in it; its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `[[net]]` section.
pub fn net(net: &str, address: &str, port: u16) -> String {
    format!("[[net]]\nnet = \"{net}\"\naddress = \"{address}\"\nport = {port}\n\n")
}

/// One `[[route]]` section.
pub fn route(net: &str, gateways: &[String]) -> String {
    let list: Vec<String> = gateways.iter().map(|g| format!("\"{g}\"")).collect();
    format!(
        "[[route]]\nnet = \"{net}\"\ngateway = [{}]\n\n",
        list.join(", ")
    )
}

/// A router's configuration on loopback: nets tcp1 and tcp2 on ports `tcp1` and `tcp2`,
/// then `sections` (routes, `[auth]`...), then routing enabled with no warm-up, and
/// `routing` (more `[routing]` keys).
pub fn loopback_router(tcp1: u16, tcp2: u16, sections: &str, routing: &str) -> String {
    format!(
        "{}{}{sections}[routing]\nenable = true\nwarm_up = \"0s\"\n{routing}",
        net("tcp1", "127.0.0.1", tcp1),
        net("tcp2", "127.0.0.1", tcp2),
    )
}

pub struct RouterProcess {
    pub child: Child,
    pub control: PathBuf,
}

impl RouterProcess {
    /// Starts the daemon `exe` (the tests' `lanet-router-under-test`) on `config`,
    /// answering on `control`, and waits until its control socket answers.
    pub fn start(exe: &str, config: &Path, control: &Path) -> RouterProcess {
        RouterProcess::start_in(&[], exe, config, control)
    }

    /// The same, behind `prefix` (e.g. `ip netns exec NS`).
    pub fn start_in(prefix: &[String], exe: &str, config: &Path, control: &Path) -> RouterProcess {
        RouterProcess::start_with(prefix, exe, config, control, &[])
    }

    /// The same, with `extra` arguments for the daemon.
    pub fn start_with(
        prefix: &[String],
        exe: &str,
        config: &Path,
        control: &Path,
        extra: &[&str],
    ) -> RouterProcess {
        RouterProcess::try_start_with(prefix, exe, config, control, extra)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same; `Err` if the daemon exits before it answers (its own message is on the
    /// test's standard error). A daemon that neither answers nor exits within 30 s still
    /// panics.
    pub fn try_start_with(
        prefix: &[String],
        exe: &str,
        config: &Path,
        control: &Path,
        extra: &[&str],
    ) -> Result<RouterProcess, String> {
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let child = cmd
            .arg("--config")
            .arg(config)
            .arg("--control-socket")
            .arg(control)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("start lanet-router");
        let mut r = RouterProcess {
            child,
            control: control.to_owned(),
        };
        let start = Instant::now();
        while r.try_status().is_none() {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(format!("lanet-router exited at start: {status}"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "lanet-router never answered"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(r)
    }

    pub fn try_status(&self) -> Option<Value> {
        lanet_control::query(&self.control, "status").ok()
    }

    /// Its report (`status` on the control socket).
    pub fn status(&self) -> Value {
        self.try_status()
            .expect("the router answers on its control socket")
    }

    /// Its state as a router: "forwarding" or "absent".
    pub fn state(&self) -> String {
        self.status()["router"]["state"]
            .as_str()
            .expect("a router state")
            .to_owned()
    }

    /// Waits until it says `state`, at most `limit`; how long that took.
    pub fn wait_state(&self, state: &str, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() <= limit {
            if self.state() == state {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for it to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() <= limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP sockets this host has on `ports`, as local ports (from `ss`), to name what held
/// a port that a daemon could not listen on. Without root, `ss` names the processes of
/// this user only.
pub fn sockets_on(ports: &[u16]) -> String {
    let filter: Vec<String> = ports.iter().map(|p| format!("sport = :{p}")).collect();
    let out = Command::new("ss")
        .args(["-tanpH", &filter.join(" or ")])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if text.is_empty() {
                "none".into()
            } else {
                text
            }
        }
        Ok(out) => format!(
            "(ss failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("(ss did not run: {e})"),
    }
}
