//! The README's main command runs this program: it must keep working, and keep its word
//! (it exits 1 if any PUT failed or was lost, a router was blamed, or a step never came).

use std::process::Command;

fn run(loopback: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lanet-demo"));
    if loopback {
        cmd.env("LANET_DEMO_LOOPBACK", "1");
    }
    let out = cmd.output().expect("run lanet-demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lanet-demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Nothing failed, nothing was lost."),
        "{stdout}"
    );
    assert!(stdout.contains("0 failed, 0 lost"), "{stdout}");
    stdout
}

#[test]
fn the_demo_runs_on_loopback_with_injected_faults() {
    let out = run(true);
    assert!(out.contains("mode: loopback"), "{out}");
    assert!(
        out.contains("R1 absent after") && out.contains("moved from"),
        "{out}"
    );
}

#[test]
fn the_demo_runs_in_network_namespaces_as_root() {
    if !lanet_tests::netns::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let out = run(false);
    assert!(out.contains("mode: network namespaces"), "{out}");
}
