//! The tools people trust, run in the same process tree as lanet's own measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Blocking ping-pong of `size`-byte messages over one TCP connection: the floor any
/// transport on TCP is measured against.
pub(crate) fn raw_tcp(
    addr: SocketAddr,
    size: usize,
    warmup: usize,
    iters: usize,
) -> Result<Histogram<u64>, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("raw TCP connect to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let size = size.max(1);
    s.write_all(&(size as u32).to_le_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0x5au8; size];
    let mut hist = histogram();
    for i in 0..warmup + iters {
        let t = Instant::now();
        s.write_all(&buf).map_err(|e| e.to_string())?;
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if i >= warmup {
            hist.record(t.elapsed().as_nanos().max(1) as u64)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(hist)
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Kills a child process when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Round-trip percentiles (us) from `sockperf ping-pong --tcp` on loopback: sockperf reports
/// one-way latency (RTT/2), converted here. None if sockperf is not installed.
pub(crate) fn sockperf(size: usize, secs: u32) -> Option<Result<Vec<(&'static str, f64)>, String>> {
    if !installed("sockperf") {
        return None;
    }
    Some((|| {
        let port = free_port()?.to_string();
        let _server = Reaped(
            Command::new("sockperf")
                .args(["server", "--tcp", "-i", "127.0.0.1", "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("sockperf server: {e}"))?,
        );
        std::thread::sleep(Duration::from_millis(300));
        // sockperf's smallest message is 14 bytes.
        let out = Command::new("sockperf")
            .args(["ping-pong", "--tcp", "-i", "127.0.0.1", "-p", &port])
            .args(["-m", &size.max(14).to_string(), "-t", &secs.to_string()])
            .output()
            .map_err(|e| format!("sockperf ping-pong: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let pick = |pct: &str| {
            text.lines()
                .find(|l| l.contains(&format!("percentile {pct} =")))
                .and_then(|l| l.rsplit('=').next())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|one_way| 2.0 * one_way)
                .ok_or_else(|| format!("no percentile {pct} in sockperf's output:\n{text}"))
        };
        Ok(vec![
            ("p50", pick("50.000")?),
            ("p99", pick("99.000")?),
            ("p999", pick("99.900")?),
        ])
    })())
}

/// Loopback bandwidth (GB/s) from iperf3. None if iperf3 is not installed.
pub(crate) fn iperf3(secs: f64) -> Option<Result<f64, String>> {
    if !installed("iperf3") {
        return None;
    }
    Some((|| {
        let port = free_port()?.to_string();
        let _server = Reaped(
            Command::new("iperf3")
                .args(["-s", "-1", "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("iperf3 server: {e}"))?,
        );
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("iperf3")
            .args([
                "-c",
                "127.0.0.1",
                "-p",
                &port,
                "-J",
                "-t",
                &format!("{}", secs.ceil() as u64),
            ])
            .output()
            .map_err(|e| format!("iperf3 client: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|bps| bps / 8e9)
            .ok_or_else(|| format!("no end.sum_received.bits_per_second in iperf3's output: {v}"))
    })())
}
