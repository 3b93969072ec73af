//! The RDMA LND between two processes on soft-RoCE: this test process on 10.0.2.16 and a
//! `lanet-peer` child on 10.0.2.15, inside the rxe VM (`tests/rxe-vm`). On the host, one
//! test boots the VM and runs the `vm_` tests there; they are ignored on the host, which
//! has no RDMA device.

use lanet::{Endpoint, Nid, NodeConfig};
use lanet_tests::peer::{check_exchange_of_every_size, check_kill_mid_transfer, Peer};
use lanet_tests::{bind_lnd, run_in_rxe_vm, IN_RXE_VM};

const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");

/// The two addresses of the VM's `rxe0` netdev; each test uses its own ports.
fn nids(port: u16) -> (Nid, Nid) {
    let nid = |ip: &str, port: u16| format!("{ip}:{port}@o2ib").parse::<Nid>().unwrap();
    (nid("10.0.2.16", port), nid("10.0.2.15", port + 1))
}

fn endpoints(port: u16) -> (Endpoint, Peer) {
    assert!(
        std::env::var_os(IN_RXE_VM).is_some(),
        "runs inside the soft-RoCE VM only"
    );
    let (local, remote) = nids(port);
    let peer = Peer::start(PEER_EXE, remote, 7, false).expect("lanet-peer on RDMA");
    let cfg = NodeConfig::new(1);
    let lnd = bind_lnd(local, &cfg).expect("the RDMA LND on rxe0");
    let ep = Endpoint::builder(cfg)
        .boxed_lnd(lnd)
        .start()
        .expect("start");
    (ep, peer)
}

#[test]
fn rdma_lnd_tests_pass_in_the_soft_roce_vm() {
    if std::env::var_os(IN_RXE_VM).is_some() {
        return; // the VM runs the `vm_` tests themselves
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let script = format!(
        "export {IN_RXE_VM}=1 RUST_BACKTRACE=1\n\
         exec '{}' vm_ --include-ignored --nocapture --test-threads=1\n",
        exe.display()
    );
    let out = run_in_rxe_vm("rdma_processes", &script).unwrap_or_else(|e| panic!("{e}"));
    println!("{out}");
    // Every VM test ran and passed (a filter typo would otherwise pass vacuously).
    assert!(out.contains("test result: ok. 2 passed"), "{out}");
}

#[test]
#[ignore = "needs RDMA: run inside the VM by rdma_lnd_tests_pass_in_the_soft_roce_vm"]
fn vm_puts_and_gets_of_0_bytes_to_16_mib_between_processes_intact_both_ways() {
    let (ep, peer) = endpoints(7000);
    check_exchange_of_every_size(&ep, peer);
}

#[test]
#[ignore = "needs RDMA: run inside the VM by rdma_lnd_tests_pass_in_the_soft_roce_vm"]
fn vm_killing_the_peer_mid_transfer_fails_every_operation_exactly_once() {
    let (ep, peer) = endpoints(7100);
    check_kill_mid_transfer(&ep, peer);
}
