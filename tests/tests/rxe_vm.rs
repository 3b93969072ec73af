//! The soft-RoCE VM harness (`tests/rxe-vm/harness.sh`) works on this machine: a qemu VM
//! boots Debian's kernel with rdma_rxe, `rxe0` comes up, and verbs traffic flows between two
//! processes in it (perftest). The RDMA LND's tests run through the same harness. This test
//! fails, rather than skips, when the VM cannot run: these machines can run it.

use std::path::PathBuf;
use std::process::Command;

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rxe-vm/harness.sh")
}

/// Runs `script` (shell, run inside the VM) and returns its output; panics with the VM's
/// story if it fails.
fn in_vm(name: &str, script: &str) -> String {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.sh"));
    std::fs::write(&path, script).expect("write the VM script");
    let out = Command::new(harness())
        .arg(&path)
        .output()
        .expect("run the rxe VM harness");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the VM script failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_vm_brings_up_soft_roce_and_verbs_traffic_flows() {
    let out = in_vm(
        "rxe_smoke",
        r#"
set -e
ibv_devinfo -d rxe0 | grep -E "state|link_layer"
ip -4 addr show eth0 | grep inet
# perftest's RC send ping-pong between two processes, through rxe0.
ib_send_lat -d rxe0 -s 2 -n 500 -F > /tmp/lanet-rxe-server.txt 2>&1 &
# The server listens once it is up, which under TCG (and another VM booting beside this
# one) can take longer than a second: the client tries again rather than fail.
ok=
for try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
    sleep 1
    if ib_send_lat -d rxe0 -s 2 -n 500 -F 10.0.2.15; then ok=1; break; fi
done
[ -n "$ok" ]
wait
"#,
    );
    assert!(out.contains("PORT_ACTIVE"), "rxe0 is not active:\n{out}");
    assert!(out.contains("Ethernet"), "rxe0 is not RoCE:\n{out}");
    assert!(
        out.contains("10.0.2.15") && out.contains("10.0.2.16"),
        "two addresses expected:\n{out}"
    );
    assert!(out.contains("t_typical"), "no perftest result:\n{out}");
}

#[test]
fn a_failing_script_fails_the_harness() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rxe_fail.sh");
    std::fs::write(&path, "echo about to fail; exit 7\n").unwrap();
    let out = Command::new(harness()).arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("about to fail"));
}
