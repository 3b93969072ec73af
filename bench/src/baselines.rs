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

pub(crate) fn installed(tool: &str) -> bool {
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
            crate::pin::server_side(&mut Command::new("sockperf"))
                .args(["server", "--tcp", "-i", "127.0.0.1", "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("sockperf server: {e}"))?,
        );
        std::thread::sleep(Duration::from_millis(300));
        // sockperf's smallest message is 14 bytes.
        let mut client = Command::new("sockperf");
        client
            .args(["ping-pong", "--tcp", "-i", "127.0.0.1", "-p", &port])
            .args(["-m", &size.max(14).to_string(), "-t", &secs.to_string()]);
        // A run that hangs (its server gone) is given up on, not waited for.
        let limit = Duration::from_secs(u64::from(secs) + 60);
        let out = output_within(client, limit).map_err(|e| format!("sockperf ping-pong: {e}"))?;
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

/// Loopback bandwidth (GB/s) from iperf3, writing `write_len` bytes per call (`-l`). None
/// if iperf3 is not installed.
pub(crate) fn iperf3(secs: f64, write_len: usize) -> Option<Result<f64, String>> {
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
        let mut client = Command::new("iperf3");
        client.args([
            "-c",
            "127.0.0.1",
            "-p",
            &port,
            "-J",
            "-l",
            &write_len.to_string(),
            "-t",
            &format!("{}", secs.ceil() as u64),
        ]);
        let limit = Duration::from_secs(secs.ceil() as u64 + 60);
        let out = output_within(client, limit).map_err(|e| format!("iperf3 client: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|bps| bps / 8e9)
            .ok_or_else(|| format!("no end.sum_received.bits_per_second in iperf3's output: {v}"))
    })())
}

/// Runs `cmd` to its end, or kills it after `limit` (a baseline that hangs must not hang
/// the benchmark); its output either way.
pub(crate) fn output_within(
    mut cmd: Command,
    limit: Duration,
) -> Result<std::process::Output, String> {
    let mut child = Reaped(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    // Read both pipes as the tool writes, so that it never blocks on a full one.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.0.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "did not finish within {} s{}",
            limit.as_secs(),
            what_went_wrong(&stderr)
        )),
    }
}

/// What a tool said went wrong: its first line naming an error, or its last few lines.
pub(crate) fn what_went_wrong(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let telling = ["error", "fatal", "assert", "failed", "timed out", "timeout"];
    let quoted = match lines.iter().find(|l| {
        let l = l.to_lowercase();
        telling.iter().any(|w| l.contains(w))
    }) {
        Some(line) => line.to_string(),
        None => lines[lines.len().saturating_sub(4)..].join("\n  "),
    };
    if quoted.is_empty() {
        String::new()
    } else {
        format!(":\n  {quoted}")
    }
}

/// Runs a baseline tool's server (`server_args`) and then its client (`client_args`), both
/// with `env`; the client's standard output. The client is retried for a few seconds
/// while the server is not yet listening, and killed if it runs past `limit`.
fn client_server(
    tool: &str,
    env: &[(&str, &str)],
    server_args: &[String],
    client_args: &[String],
    limit: Duration,
) -> Result<String, String> {
    let _server = Reaped(
        crate::pin::server_side(&mut Command::new(tool))
            .envs(env.iter().copied())
            .args(server_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{tool} server: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut client = Command::new(tool);
        client.envs(env.iter().copied()).args(client_args);
        let out = output_within(client, limit).map_err(|e| format!("{tool} client: {e}"))?;
        if out.status.success() {
            return String::from_utf8(out.stdout).map_err(|e| e.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{tool} client: {}{}",
                out.status,
                what_went_wrong(&out.stderr)
            ));
        }
    }
}

/// The numbers of `ucx_perftest`'s `Final:` line: iterations, latency p50, average and
/// overall (us), bandwidth average and overall (MB/s), message rate average and overall.
fn ucx_final(text: &str) -> Result<Vec<f64>, String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Final:"))
        .ok_or_else(|| format!("no Final: line in ucx_perftest's output:\n{text}"))?;
    line.split_whitespace()
        .skip(1)
        .map(|w| {
            w.parse::<f64>()
                .map_err(|e| format!("{w:?} in {line:?}: {e}"))
        })
        .collect()
}

/// Where and how `ucx_perftest` runs: UCX's transports and the server's address.
struct UcxOn<'a> {
    tls: &'a str,
    host: std::net::Ipv4Addr,
    limit: Duration,
}

/// Over UCX's TCP transport on loopback, as a user who picked UCX would run it.
const UCX_TCP: UcxOn = UcxOn {
    tls: "tcp",
    host: std::net::Ipv4Addr::LOCALHOST,
    limit: Duration::from_secs(300),
};

/// Over UCX's shared-memory transports between two processes on this host: what a user
/// who picked UCX would run between processes of one node, with no network between them
/// (the baseline of the in-memory LND's runs).
const UCX_SHM: UcxOn = UcxOn {
    tls: "sm",
    host: std::net::Ipv4Addr::LOCALHOST,
    limit: Duration::from_secs(300),
};

/// A thread that sends back, on `back`, each message that comes in on `to_echo`, until
/// `to_echo` closes: the other end of the channel baselines.
pub(crate) struct ChannelEcho {
    pub(crate) to_echo: crossbeam_channel::Sender<Vec<u8>>,
    pub(crate) back: crossbeam_channel::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<()>,
}

impl ChannelEcho {
    pub(crate) fn start() -> ChannelEcho {
        let (to_echo, echo_rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
        let (to_client, back) = crossbeam_channel::bounded::<Vec<u8>>(1);
        let thread = std::thread::spawn(move || {
            for m in echo_rx {
                if to_client.send(m).is_err() {
                    break;
                }
            }
        });
        ChannelEcho {
            to_echo,
            back,
            thread,
        }
    }

    /// Closes `to_echo` and waits for the thread.
    pub(crate) fn stop(self) {
        drop(self.to_echo);
        let _ = self.thread.join();
    }
}

/// Two threads passing a `size`-byte message back and forth over channels (blocking on
/// them), `warmup + iters` times: what a round trip between two threads of one process
/// costs with no protocol at all (the floor of two endpoints in one process).
pub(crate) fn channels(size: usize, warmup: usize, iters: usize) -> Result<Histogram<u64>, String> {
    let echo = ChannelEcho::start();
    let ended = || "the echo thread ended".to_string();
    let mut hist = histogram();
    let mut message = vec![0x5a; size];
    for i in 0..warmup + iters {
        let t = Instant::now();
        echo.to_echo.send(message).map_err(|_| ended())?;
        message = echo.back.recv().map_err(|_| ended())?;
        if i >= warmup {
            hist.record(t.elapsed().as_nanos().max(1) as u64)
                .map_err(|e| e.to_string())?;
        }
    }
    echo.stop();
    Ok(hist)
}

/// `ucx_perftest -t TEST` on `on`; the numbers of its `Final:` line.
fn ucx_perftest(
    on: &UcxOn,
    test: &str,
    size: usize,
    iters: usize,
) -> Option<Result<Vec<f64>, String>> {
    if !installed("ucx_perftest") {
        return None;
    }
    Some((|| {
        let port = free_port()?.to_string();
        let env = [("UCX_TLS", on.tls)];
        let server = ["-p".to_owned(), port.clone()];
        let client: Vec<String> = [&on.host.to_string(), "-p", &port, "-t", test]
            .iter()
            .map(|s| s.to_string())
            .chain(["-s".into(), size.max(1).to_string()])
            .chain(["-n".into(), iters.to_string()])
            .collect();
        ucx_final(&client_server(
            "ucx_perftest",
            &env,
            &server,
            &client,
            on.limit,
        )?)
    })())
}

/// Iterations UCX's p50 ("typical") is the median of, at most: its last, kept in a ring
/// (`TIMING_QUEUE_SIZE` in libperf).
pub(crate) const UCX_P50_OF_LAST: usize = 2048;

/// UCX's round trip (us), both from `ucx_perftest -t tag_lat`'s half round trips,
/// doubled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct UcxRoundTrip {
    /// The median of its last [`UCX_P50_OF_LAST`] iterations only.
    pub(crate) p50_us: f64,
    /// The mean over every measured iteration.
    pub(crate) mean_us: f64,
}

/// UCX tagged messages' round trip over TCP.
pub(crate) fn ucx_latency(size: usize, iters: usize) -> Option<Result<UcxRoundTrip, String>> {
    ucx_round_trip(&UCX_TCP, size, iters)
}

/// [`ucx_latency`] over shared memory ([`UCX_SHM`]).
pub(crate) fn ucx_shm_latency(size: usize, iters: usize) -> Option<Result<UcxRoundTrip, String>> {
    ucx_round_trip(&UCX_SHM, size, iters)
}

fn ucx_round_trip(on: &UcxOn, size: usize, iters: usize) -> Option<Result<UcxRoundTrip, String>> {
    ucx_perftest(on, "tag_lat", size, iters).map(|r| r.and_then(|f| ucx_lat_figures(&f)))
}

/// A `tag_lat` Final line's figures: iterations, typical (p50), moment and overall
/// average latency (us, half round trips), then bandwidth and message rate.
fn ucx_lat_figures(f: &[f64]) -> Result<UcxRoundTrip, String> {
    match (f.get(1), f.get(3)) {
        (Some(p50), Some(mean)) => Ok(UcxRoundTrip {
            p50_us: 2.0 * p50,
            mean_us: 2.0 * mean,
        }),
        _ => Err("no typical and overall average latency".into()),
    }
}

/// Round-trip p50 (us) of UCX tagged messages over verbs (`UCX_TLS=rc_verbs,ud_verbs`:
/// UCX sets up its RC connections over UD) to `host`, given `limit` to finish.
pub(crate) fn ucx_rdma_latency(
    host: std::net::Ipv4Addr,
    size: usize,
    iters: usize,
    limit: Duration,
) -> Option<Result<UcxRoundTrip, String>> {
    let on = UcxOn {
        tls: "rc_verbs,ud_verbs",
        host,
        limit,
    };
    ucx_round_trip(&on, size, iters)
}

/// Bandwidth and message rate of UCX tagged messages of `size` bytes over TCP
/// (`-t tag_bw`, UCX's own window of outstanding sends).
pub(crate) fn ucx_stream(
    size: usize,
    iters: usize,
) -> Option<Result<crate::bandwidth::Streamed, String>> {
    ucx_stream_on(&UCX_TCP, size, iters)
}

/// [`ucx_stream`] over shared memory ([`UCX_SHM`]).
pub(crate) fn ucx_shm_stream(
    size: usize,
    iters: usize,
) -> Option<Result<crate::bandwidth::Streamed, String>> {
    ucx_stream_on(&UCX_SHM, size, iters)
}

fn ucx_stream_on(
    on: &UcxOn,
    size: usize,
    iters: usize,
) -> Option<Result<crate::bandwidth::Streamed, String>> {
    ucx_perftest(on, "tag_bw", size, iters).map(|r| {
        r.and_then(|f| match (f.get(5), f.get(7)) {
            (Some(mibps), Some(rate)) => Ok(crate::bandwidth::Streamed {
                gbytes_per_s: mib_to_gb(*mibps),
                msgs_per_s: *rate,
            }),
            _ => Err("no overall bandwidth and message rate".into()),
        })
    })
}

/// GB/s (10^9 bytes, as lanet's figures) of ucx_perftest's "MB/s", which are MiB/s: it
/// divides bytes per second by 1024 x 1024.
fn mib_to_gb(mib_per_s: f64) -> f64 {
    mib_per_s * 1_048_576.0 / 1e9
}

/// Round-trip mean (us) of libfabric's TCP provider: `fi_pingpong -p tcp -e msg` reports
/// the mean time per transfer (half a round trip; it reports no percentiles).
pub(crate) fn libfabric_latency(size: usize, iters: usize) -> Option<Result<f64, String>> {
    if !installed("fi_pingpong") {
        return None;
    }
    Some((|| {
        let port = free_port()?.to_string();
        let common = |v: &mut Vec<String>| {
            v.extend(["-p", "tcp", "-e", "msg", "-S"].map(String::from));
            v.push(size.max(1).to_string());
            v.push("-I".into());
            v.push(iters.to_string());
        };
        let mut server = vec!["-B".to_owned(), port.clone()];
        common(&mut server);
        let mut client = vec!["-P".to_owned(), port];
        common(&mut client);
        client.push("127.0.0.1".into());
        let limit = Duration::from_secs(300);
        let text = client_server("fi_pingpong", &[], &server, &client, limit)?;
        // bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec
        let row = text
            .lines()
            .rfind(|l| l.split_whitespace().count() == 8)
            .ok_or_else(|| format!("no result row in fi_pingpong's output:\n{text}"))?;
        let per_xfer: f64 = row
            .split_whitespace()
            .nth(6)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("no usec/xfer in {row:?}"))?;
        Ok(2.0 * per_xfer)
    })())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ucx_perftest_final_lines_are_read() {
        let text = "|    Stage     | # iterations | 50.0%ile | average |\n\
                    Final:                 20000      5.634     6.048     6.048        1.26       1.26      165336      165336\n";
        let f = super::ucx_final(text).unwrap();
        assert_eq!((f[0], f[1], f[5], f[7]), (20000.0, 5.634, 1.26, 165336.0));
        assert!(super::ucx_final("no such line").is_err());
    }

    #[test]
    fn ucx_bandwidth_is_mib_per_second_and_its_round_trips_are_doubled() {
        // 4,482.76 "MB/s" is 4,700,000,000 bytes per second.
        assert!((super::mib_to_gb(4482.76) - 4.7).abs() < 1e-3);
        let f = [20000.0, 5.634, 6.048, 6.1, 1.26, 1.26, 165336.0, 165336.0];
        let rt = super::ucx_lat_figures(&f).unwrap();
        assert_eq!((rt.p50_us, rt.mean_us), (11.268, 12.2));
    }
}
