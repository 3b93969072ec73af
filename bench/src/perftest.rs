//! perftest (`ib_send_lat`, `ib_write_bw`): the RDMA baselines, run on the same device as
//! lanet's RDMA measurement, one server and one client process.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Kills a child process when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tool` as server and client on `device` (client to `ip`) with `args`; returns the
/// columns of the client's result line (the line after the one naming `header`).
fn run(
    tool: &str,
    device: &str,
    ip: Ipv4Addr,
    args: &[String],
    header: &str,
) -> Result<Vec<f64>, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port()
        .to_string();
    let common = |cmd: &mut Command| {
        cmd.args(["-d", device, "-F", "-p", &port]).args(args);
    };
    let mut server = Command::new(tool);
    common(&mut server);
    let _server = Reaped(
        server
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{tool} server: {e} (is perftest installed?)"))?,
    );
    let mut text = String::new();
    // The server needs a moment to listen; the client fails fast until it does.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let mut client = Command::new(tool);
        common(&mut client);
        let out = client
            .arg(ip.to_string())
            .output()
            .map_err(|e| format!("{tool} client: {e}"))?;
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if std::env::var_os("LANET_BENCH_DEBUG").is_some() {
            eprintln!("{tool}: {}\n{text}", out.status);
        }
        if out.status.success() {
            break;
        }
    }
    let mut lines = text.lines().skip_while(|l| !l.contains(header));
    lines.next();
    lines
        .next()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect::<Vec<f64>>()
        })
        .filter(|cols| !cols.is_empty())
        .ok_or_else(|| format!("no result in {tool}'s output:\n{text}"))
}

/// Round-trip p50 and p99 (us) of `size`-byte RC SENDs from `ib_send_lat`, which reports
/// one-way latency (half the round trip): converted here.
pub(crate) fn send_lat(
    device: &str,
    ip: Ipv4Addr,
    size: usize,
    iters: usize,
) -> Result<(f64, f64), String> {
    let args = [
        "-s".to_string(),
        size.max(1).to_string(),
        "-n".into(),
        iters.to_string(),
    ];
    // Columns: bytes, iterations, t_min, t_max, t_typical, t_avg, t_stdev, 99%, 99.9%.
    let cols = run("ib_send_lat", device, ip, &args, "t_typical")?;
    match cols[..] {
        [_, _, _, _, typical, _, _, p99, ..] => Ok((2.0 * typical, 2.0 * p99)),
        _ => Err(format!("unexpected ib_send_lat columns: {cols:?}")),
    }
}

/// RDMA WRITE bandwidth (GB/s) of `size`-byte messages for `secs` from `ib_write_bw`, whose
/// MB are 2^20 bytes.
pub(crate) fn write_bw(device: &str, ip: Ipv4Addr, size: usize, secs: u32) -> Result<f64, String> {
    // Iterations, not perftest's duration mode (-D), which here finished no message of a
    // deep queue of 1 MiB writes within its time: enough for `secs` at 30 MB/s or more.
    let iters = (u64::from(secs.max(1)) * 30_000_000 / size.max(1) as u64).clamp(20, 1_000_000);
    let args = [
        "-s".to_string(),
        size.to_string(),
        "-n".into(),
        iters.to_string(),
    ];
    // Columns: bytes, iterations, BW peak, BW average, message rate.
    let cols = run("ib_write_bw", device, ip, &args, "BW average")?;
    match cols[..] {
        [_, _, _, average, ..] => Ok(average * 1_048_576.0 / 1e9),
        _ => Err(format!("unexpected ib_write_bw columns: {cols:?}")),
    }
}
