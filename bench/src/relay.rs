//! The floor for a router's bandwidth on this machine: a raw TCP stream to a sink, directly
//! and through the simplest relay there is (one thread copying one way with blocking reads
//! and writes of up to 1 MiB). Whatever a relay costs in copies and CPU on this machine,
//! this pays too, with no protocol at all; lanet's router is judged beside it in the same
//! run. Client, relay and sink are threads of this process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BUF: usize = 1 << 20;

fn listener() -> Result<(TcpListener, SocketAddr), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("raw relay bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    Ok((l, addr))
}

/// What a sink received: bytes, and seconds from the first byte to the end.
type Received = JoinHandle<Result<(u64, f64), String>>;

/// Accepts one connection and reads it to its end.
fn sink() -> Result<(SocketAddr, Received), String> {
    let (l, addr) = listener()?;
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().map_err(|e| format!("raw sink accept: {e}"))?;
        let mut buf = vec![0u8; BUF];
        let (mut bytes, mut first) = (0u64, None);
        loop {
            let n = s
                .read(&mut buf)
                .map_err(|e| format!("raw sink read: {e}"))?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            bytes += n as u64;
        }
        let secs = first.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
        Ok((bytes, secs))
    });
    Ok((addr, t))
}

/// Connects to `to`, then accepts one connection and copies it there until it ends.
/// (Connecting first: a relay that cannot reach the sink fails here, not leaving the sink
/// waiting for a connection forever.)
fn relay(to: SocketAddr) -> Result<(SocketAddr, JoinHandle<Result<(), String>>), String> {
    let (l, addr) = listener()?;
    let mut out = TcpStream::connect(to).map_err(|e| format!("raw relay connect: {e}"))?;
    let t = std::thread::spawn(move || -> Result<(), String> {
        let (mut from, _) = l.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = from.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        out.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    Ok((addr, t))
}

/// Streams `size`-byte writes for `secs` to a sink, through a relay if `relayed`; GB/s as
/// the sink received them.
pub(crate) fn raw_stream(relayed: bool, size: usize, secs: f64) -> Result<f64, String> {
    let (sink_addr, sink) = sink()?;
    let (to, relay) = if relayed {
        let (addr, t) = relay(sink_addr)?;
        (addr, Some(t))
    } else {
        (sink_addr, None)
    };
    let mut s = TcpStream::connect(to).map_err(|e| format!("raw stream connect: {e}"))?;
    let buf = vec![0x5au8; size.max(1)];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        s.write_all(&buf)
            .map_err(|e| format!("raw stream write: {e}"))?;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    if let Some(t) = relay {
        // A relay that failed part-way ends the sink's stream early: an error, not a figure.
        t.join()
            .map_err(|_| "the raw relay panicked".to_string())?
            .map_err(|e| format!("raw relay: {e}"))?;
    }
    let (bytes, secs) = sink
        .join()
        .map_err(|_| "the raw sink panicked".to_string())??;
    if secs <= 0.0 {
        return Err("the raw sink received nothing".into());
    }
    Ok(bytes as f64 / secs / 1e9)
}
