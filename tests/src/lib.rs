//! `lanet-tests`: cross-crate integration tests with real sockets, real processes and real
//! verbs (soft-RoCE, in a VM: `rxe-vm/`).
//!
//! Single-process, deterministic topologies on the in-memory LND live in the core
//! (`lanet::sim`); this crate is for tests that need the operating system. Its binary
//! `lanet-peer` is a peer process the tests start, talk to and kill, on TCP or RDMA (by the
//! net of its NID).

use bytes::Bytes;

pub mod netns;
pub mod peer;
pub mod raw;
pub mod router;

/// Portal where the peer accepts PUTs (of up to [`MAX_TRANSFER`] bytes, match bits 1).
pub const SINK_PORTAL: u32 = 4;
/// Portal where the peer serves GETs: match bits `i` answer [`pattern`]`(SIZES[i], i)`.
pub const SOURCE_PORTAL: u32 = 5;
/// Largest transfer the tests make.
pub const MAX_TRANSFER: usize = 16 << 20;
/// Transfer sizes from 0 B to 16 MiB, around the header size and the read chunk.
/// 3968 and 3969 straddle the RDMA driver's largest inline payload.
pub const SIZES: [usize; 11] = [
    0,
    1,
    95,
    96,
    97,
    3968,
    3969,
    65_537,
    1 << 20,
    4 << 20,
    MAX_TRANSFER,
];

/// A child process, killed and reaped if it is still held when this is dropped: a test
/// that fails before its end leaves nothing running (a daemon left behind would hold the
/// test runner's output open). Take the child out to wait for it yourself.
pub struct KilledOnDrop(pub Option<std::process::Child>);

impl KilledOnDrop {
    pub fn new(child: std::process::Child) -> Self {
        KilledOnDrop(Some(child))
    }

    /// The child, while it is held.
    pub fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child is still held")
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A data-lane frame for a driver driven by hand (`Lnd::post`): `body` from `from` to its
/// neighbour `to`, with `payload`; its message id and send token are `token`.
pub fn data_frame(
    from: lanet::Nid,
    to: lanet::Nid,
    body: lanet::wire::Body,
    payload: Bytes,
    token: u64,
) -> lanet::lnd::Transmit {
    let header = data_header(from, to, body, payload.len(), token);
    lanet::lnd::Transmit::new(to, &header, payload, token)
}

/// The header of a [`data_frame`] of `len` payload bytes.
pub fn data_header(
    from: lanet::Nid,
    to: lanet::Nid,
    body: lanet::wire::Body,
    len: usize,
    token: u64,
) -> lanet::wire::Header {
    lanet::wire::Header {
        hop_limit: 8,
        router_gen: 0,
        lane: lanet::Lane::Data,
        credits: 0,
        src: from,
        dst: to,
        src_incarnation: 1,
        msg_id: token,
        payload_len: len as u32,
        body,
        attempt: 0,
    }
}

/// Deterministic test data: both processes compute the same bytes. Its first byte is
/// `seed`, so a receiver can check a payload without being told the seed.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .rotate_left((i >> 12) as u32 & 7)
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Marks a [`tagged`] payload.
const TAG_MAGIC: &[u8; 4] = b"LNTG";
/// Bytes before a tagged payload's pattern: magic, tag, seed.
const TAG_LEN: usize = 13;

/// A payload of `len` bytes (at least 13) that names `tag`: a receiver can tell it from
/// every other one, and check it intact ([`untag`]).
pub fn tagged(tag: u64, len: usize) -> Bytes {
    assert!(
        len >= TAG_LEN,
        "a tagged payload has at least {TAG_LEN} bytes"
    );
    let seed = tag as u8;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(TAG_MAGIC);
    b.extend_from_slice(&tag.to_le_bytes());
    b.push(seed);
    b.extend_from_slice(&pattern(len - TAG_LEN, seed));
    b.into()
}

/// The tag of a [`tagged`] payload, and whether it is intact; None if it is not one.
pub fn untag(payload: &[u8]) -> Option<(u64, bool)> {
    if payload.len() < TAG_LEN || &payload[..4] != TAG_MAGIC {
        return None;
    }
    let tag = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
    let seed = payload[12];
    let intact = seed == tag as u8 && payload[TAG_LEN..] == pattern(payload.len() - TAG_LEN, seed);
    Some((tag, intact))
}

/// The driver for `nid`'s net: TCP for `tcp` NIDs, RDMA for `o2ib` ones.
pub fn bind_lnd(
    nid: lanet::Nid,
    cfg: &lanet::NodeConfig,
) -> Result<Box<dyn lanet::lnd::Lnd>, lanet::lnd::LndError> {
    Ok(match nid.net().kind {
        lanet::nid::LndKind::O2ib => Box::new(lanet_lnd_rdma::RdmaLnd::bind(
            nid,
            lanet_lnd_rdma::RdmaConfig::for_node(cfg),
        )?),
        _ => Box::new(lanet_lnd_tcp::TcpLnd::bind(
            nid,
            lanet_lnd_tcp::TcpConfig::for_node(cfg),
        )?),
    })
}

/// A NID on a loopback port that was free a moment ago.
pub fn free_tcp_nid() -> lanet::Nid {
    lanet_lnd_tcp::free_loopback_nid().expect("a free loopback port")
}

/// A TCP LND on a free loopback port. Another test process may take the port between the
/// probe and the bind: then it tries another.
fn loopback_lnd(cfg: &lanet::NodeConfig) -> lanet_lnd_tcp::TcpLnd {
    (0..5)
        .find_map(|_| {
            let tcp = lanet_lnd_tcp::TcpConfig::for_node(cfg);
            lanet_lnd_tcp::TcpLnd::bind(free_tcp_nid(), tcp).ok()
        })
        .expect("bind a loopback port")
}

/// An endpoint on a free loopback port, over TCP.
pub fn loopback_endpoint(incarnation: u64) -> lanet::Endpoint {
    let cfg = lanet::NodeConfig::new(incarnation);
    let lnd = loopback_lnd(&cfg);
    lanet::Endpoint::builder(cfg)
        .lnd(lnd)
        .start()
        .expect("start")
}

/// A worker on a free loopback port, over TCP.
pub fn loopback_worker(incarnation: u64) -> lanet::Worker {
    let cfg = lanet::NodeConfig::new(incarnation);
    let lnd = loopback_lnd(&cfg);
    lanet::Worker::new(cfg, vec![Box::new(lnd)]).expect("start")
}

/// Set inside the soft-RoCE VM when a test binary re-runs itself there.
pub const IN_RXE_VM: &str = "LANET_IN_RXE_VM";

/// Runs `script` (shell) inside the soft-RoCE VM (`tests/rxe-vm/harness.sh`): `rxe0` is up
/// on 10.0.2.15 and 10.0.2.16, and the host's root (so its files and binaries) is `/`.
/// Returns the script's output, or the VM's story if it failed.
pub fn run_in_rxe_vm(name: &str, script: &str) -> Result<String, String> {
    let harness = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rxe-vm/harness.sh");
    let path = std::env::temp_dir().join(format!("lanet-vm-{}-{name}.sh", std::process::id()));
    std::fs::write(&path, script).map_err(|e| format!("write {}: {e}", path.display()))?;
    let out = std::process::Command::new(harness)
        .arg(&path)
        .output()
        .map_err(|e| format!("run the rxe VM harness: {e}"))?;
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} in the VM:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs the calling test inside the soft-RoCE VM (this very test binary, filtered to
/// `test`), unless it is already running there; returns true when the caller is inside and
/// should do the work.
pub fn inside_rxe_vm_or_rerun(test: &str) -> bool {
    if std::env::var_os(IN_RXE_VM).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let script = format!(
        "export {IN_RXE_VM}=1 RUST_BACKTRACE=1\nexec '{}' --exact '{test}' --nocapture --test-threads=1\n",
        exe.display()
    );
    match run_in_rxe_vm(test, &script) {
        Ok(out) => println!("{out}"),
        Err(e) => panic!("{test} failed in the soft-RoCE VM: {e}"),
    }
    false
}
