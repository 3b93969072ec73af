//! The RDMA wrappers over real verbs: soft-RoCE (rdma_rxe) in a VM, two RC connection ends
//! set up with rdma_cm between 10.0.2.16 and 10.0.2.15, a SEND and an RDMA WRITE with their
//! data checked. On the host, each test re-runs itself inside the VM.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use lanet_lnd_rdma::cm::{CmEventKind, CmId, EventChannel};
use lanet_lnd_rdma::mr::{Mr, RemoteBuf};
use lanet_lnd_rdma::verbs::{first_active_device, Completion, Cq, Pd, PortState};
use lanet_tests::{inside_rxe_vm_or_rerun, IN_RXE_VM};

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 7471);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);

/// Polls `cq` until the completion `wr_id` arrives; it must have succeeded.
fn completion(cq: &Cq, wr_id: u64) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(c) = cq.poll_one().expect("poll the CQ") {
            assert!(
                c.ok(),
                "work request {} failed with verbs status {}",
                c.wr_id,
                c.status
            );
            if c.wr_id == wr_id {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no completion for work request {wr_id}"
        );
        std::hint::spin_loop();
    }
}

#[test]
fn without_a_device_there_is_one_clear_error() {
    if std::env::var_os(IN_RXE_VM).is_some() {
        // In the VM there is a device: it is found, and its port is up.
        let ctx = first_active_device().expect("rxe0");
        assert_eq!(ctx.name(), "rxe0");
        assert_eq!(ctx.port_state(1).unwrap(), PortState::Active);
        return;
    }
    // This machine's kernel has no RDMA stack.
    let err = first_active_device()
        .err()
        .expect("no RDMA device on this host")
        .to_string();
    assert!(err.contains("RDMA"), "{err}");
}

#[test]
fn the_found_device_is_rxe0_inside_the_vm() {
    if inside_rxe_vm_or_rerun("the_found_device_is_rxe0_inside_the_vm") {
        let ctx = first_active_device().expect("an active RDMA device in the VM");
        assert_eq!(
            (ctx.name(), ctx.port_state(1).unwrap()),
            ("rxe0", PortState::Active)
        );
    }
}

#[test]
fn rc_send_and_rdma_write_over_soft_roce() {
    if !inside_rxe_vm_or_rerun("rc_send_and_rdma_write_over_soft_roce") {
        return;
    }
    // Server: listen.
    let sch = EventChannel::new().unwrap();
    let listener = CmId::new(&sch).unwrap();
    listener.bind(SERVER).unwrap();
    listener.listen(4).unwrap();

    // Client: resolve, create its QP, post a receive, connect with private data.
    let cch = EventChannel::new().unwrap();
    let mut client = CmId::new(&cch).unwrap();
    client
        .resolve_addr(Some(SocketAddrV4::new(CLIENT_IP, 0)), SERVER, 5000)
        .unwrap();
    cch.expect(CmEventKind::AddrResolved).unwrap();
    client.resolve_route(5000).unwrap();
    cch.expect(CmEventKind::RouteResolved).unwrap();
    let cctx = client.context().expect("bound to a device");
    let (cpd, ccq) = (Pd::new(&cctx).unwrap(), Cq::new(&cctx, 64).unwrap());
    client.create_qp(&cpd, &ccq, 16).unwrap();
    let mut cmr = Mr::with_remote_access(&cpd, 128 * 1024).unwrap();
    client.connect(b"lanet-client").unwrap();

    // Server: adopt the request, create its QP and memory, accept with where to write.
    let mut req = sch.expect(CmEventKind::ConnectRequest).unwrap();
    assert_eq!(req.private_data.get(..12), Some(&b"lanet-client"[..]));
    let mut conn = CmId::adopt(&sch, &mut req).expect("the request's id");
    assert!(CmId::adopt(&sch, &mut req).is_none(), "adopted once only");
    let sctx = conn.context().expect("bound to a device");
    let (spd, scq) = (Pd::new(&sctx).unwrap(), Cq::new(&sctx, 64).unwrap());
    conn.create_qp(&spd, &scq, 16).unwrap();
    let smr = Mr::with_remote_access(&spd, 256 * 1024).unwrap();
    // SAFETY: `smr` outlives the connection and is not touched until the receive completes.
    unsafe { conn.post_recv(smr.sge(0, 4096), 10) }.unwrap();
    let mut sink = smr.addr().to_le_bytes().to_vec();
    sink.extend_from_slice(&smr.rkey().to_le_bytes());
    conn.accept(&sink).unwrap();
    // The active side first: librdmacm completes the handshake (sends the RTU) when the
    // client's application takes the connect response from its channel.
    let est = cch.expect(CmEventKind::Established).unwrap();
    sch.expect(CmEventKind::Established).unwrap();
    let remote_addr = u64::from_le_bytes(est.private_data[..8].try_into().unwrap());
    let rkey = u32::from_le_bytes(est.private_data[8..12].try_into().unwrap());
    assert_eq!(
        (remote_addr, rkey),
        (smr.addr(), smr.rkey()),
        "the sink travelled in private data"
    );

    // SEND: lands in the server's posted receive.
    cmr.as_mut_slice()[..11].copy_from_slice(b"hello, rxe!");
    // SAFETY: `cmr` is alive and unchanged until the send's completion, awaited below.
    unsafe { client.post_sends(&[(cmr.sge(0, 11), 2)]) }.unwrap();
    completion(&ccq, 2);
    let recv = completion(&scq, 10);
    assert!(recv.is_recv());
    assert_eq!(recv.byte_len, 11);
    assert_eq!(&smr.as_slice()[..11], b"hello, rxe!");

    // Three SENDs chained in one post: each lands, in order, in its own receive (a
    // completion out of order would be skipped by `completion`, and the next one missed).
    const CHAIN_AT: usize = 131072;
    for k in 0..3u64 {
        let at = CHAIN_AT + 4096 * k as usize;
        // SAFETY: as above; these receives take the three SENDs below.
        unsafe { conn.post_recv(smr.sge(at, 4096), 11 + k) }.unwrap();
    }
    let mut chain = Vec::new();
    for k in 0..3u64 {
        let at = 4096 * (1 + k as usize);
        cmr.as_mut_slice()[at..at + 8].copy_from_slice(&(100 + k).to_le_bytes());
        chain.push((cmr.sge(at, 8), 4 + k));
    }
    // SAFETY: `cmr` is alive and these bytes unchanged until the completions below.
    unsafe { client.post_sends(&chain) }.unwrap();
    for k in 0..3u64 {
        completion(&ccq, 4 + k);
        let recv = completion(&scq, 11 + k);
        assert_eq!(recv.byte_len, 8);
        let at = CHAIN_AT + 4096 * k as usize;
        assert_eq!(smr.as_slice()[at..at + 8], (100 + k).to_le_bytes());
    }

    // RDMA WRITE: 64 KiB straight into the server's memory, no receive involved.
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    cmr.as_mut_slice()[..65536].copy_from_slice(&pattern);
    let sink = RemoteBuf {
        addr: remote_addr + 65536,
        rkey,
        len: 65536,
    };
    // SAFETY: as above, until the write's completion, awaited below.
    unsafe { client.post_write(cmr.sge(0, 65536), sink, 3) }.unwrap();
    completion(&ccq, 3);
    assert!(
        smr.as_slice()[65536..131072] == pattern[..],
        "RDMA WRITE data differs"
    );

    // Both sides disconnect: the passive side's rdma_disconnect sends the DREP the active
    // side waits for (without it, the active side sits out the CM's retry timeout, ~100 s).
    client.disconnect().unwrap();
    sch.expect(CmEventKind::Disconnected).unwrap();
    conn.disconnect().unwrap();
    cch.expect(CmEventKind::Disconnected).unwrap();
    // The QPs go before the memory regions their work requests named (declared after
    // them, the regions would drop first).
    drop(conn);
    drop(client);
}
