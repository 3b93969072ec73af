//! The benchmarks run and report what they promise. No timings are asserted: only that each
//! figure is there and of a sane order of magnitude.

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["--baseline-secs", "1"]);
    run_json(&all)
}

/// Runs lanet-bench with `args` and `--json`; its one JSON object.
fn run_json(args: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_lanet-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run lanet-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    v.as_object().expect("an object").clone()
}

fn positive(obj: &serde_json::Map<String, serde_json::Value>, key: &str) -> f64 {
    let v = obj
        .get(key)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("no {key} in {obj:?}"));
    assert!(v > 0.0, "{key} = {v}");
    v
}

#[test]
fn tcp_latency_reports_lanet_and_the_raw_tcp_floor_in_microseconds() {
    let r = run(&["latency", "--lnd", "tcp", "--size", "8", "--iters", "300"]);
    for key in [
        "lanet.p50_us",
        "lanet.p99_us",
        "lanet.p999_us",
        "raw_tcp.p50_us",
        "raw_tcp.p99_us",
    ] {
        // Loopback round trips: more than a microsecond, less than a second.
        let us = positive(&r, key);
        assert!((1.0..1_000_000.0).contains(&us), "{key} = {us} us");
    }
    assert!(r.contains_key("ratio.p50_vs_raw_tcp"));
    // UCX and libfabric, where installed (`./scripts/setup bench`), in the same run.
    for (tool, key) in [
        ("ucx_perftest", "ucx.p50_us"),
        ("ucx_perftest", "ucx.mean_us"),
        ("fi_pingpong", "libfabric.mean_us"),
    ] {
        if installed(tool) {
            let us = positive(&r, key);
            assert!((1.0..1_000_000.0).contains(&us), "{key} = {us} us");
        }
    }
}

/// Busy-polling TCP (both lanet processes spin): the same figures.
#[test]
fn tcp_latency_busy_polls_with_spin() {
    let r = run(&["latency", "--lnd", "tcp", "--iters", "300", "--spin"]);
    let us = positive(&r, "lanet.p50_us");
    assert!((1.0..1_000_000.0).contains(&us), "{us} us");
    positive(&r, "raw_tcp.p50_us");
}

/// Both sides as workers (`--worker`): the same figures; refused off TCP.
#[test]
fn tcp_latency_runs_with_workers_on_both_sides() {
    let r = run(&["latency", "--lnd", "tcp", "--iters", "300", "--worker"]);
    let us = positive(&r, "lanet.p50_us");
    assert!((1.0..1_000_000.0).contains(&us), "{us} us");
    positive(&r, "ratio.p50_vs_raw_tcp");
    let out = Command::new(env!("CARGO_BIN_EXE_lanet-bench"))
        .args(["latency", "--lnd", "mem", "--iters", "10", "--worker"])
        .output()
        .expect("run lanet-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--worker with --lnd mem ran");
    assert!(stderr.contains("--worker runs the TCP"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_lanet-bench"))
        .args(["latency", "--connect", "127.0.0.1:1@o2ib", "--worker"])
        .output()
        .expect("run lanet-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--worker towards an o2ib NID ran");
    assert!(stderr.contains("--worker runs the TCP"), "{stderr}");
}

/// Pinned (`--pin`, the two sides on two CPUs): the same figures, and each side's CPU time
/// per round trip, for lanet and the raw floor alike.
#[test]
fn tcp_latency_pinned_reports_each_sides_cpu_time() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return; // nothing to place apart: --pin refuses, saying so
    }
    let r = run(&["latency", "--lnd", "tcp", "--iters", "5000", "--pin"]);
    positive(&r, "lanet.p50_us");
    positive(&r, "raw_tcp.p50_us");
    // Where the two sides ran, as the kernel lists their CPUs: one each, not the same.
    let cpu = |side: &str| {
        r.get(&format!("pin.{side}_cpu"))
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("no pin.{side}_cpu in {r:?}"))
    };
    assert_ne!(cpu("client"), cpu("server"));
    for run in ["lanet", "raw_tcp"] {
        for side in ["client", "server"] {
            let mut total = 0.0;
            for part in ["user", "sys"] {
                let key = format!("cpu.{run}.{side}_{part}_us");
                let us = r
                    .get(&key)
                    .and_then(|v| v.as_f64())
                    .unwrap_or_else(|| panic!("no {key} in {r:?}"));
                assert!((0.0..1_000.0).contains(&us), "{key} = {us} us");
                total += us;
            }
            // 6,000 round trips, each microseconds of work on either side: tens of
            // milliseconds, several clock ticks, on each.
            assert!(total > 0.0, "{run}: no CPU time counted on the {side} side");
        }
    }
}

/// Whether `tool` can be run here.
fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn tcp_bandwidth_reports_gigabytes_per_second() {
    let r = run(&[
        "bandwidth",
        "--lnd",
        "tcp",
        "--size",
        "1048576",
        "--secs",
        "1",
    ]);
    let g = positive(&r, "lanet.gbytes_per_s");
    assert!(g > 0.001 && g < 1000.0, "{g} GB/s");
    positive(&r, "lanet.msgs_per_s");
    if installed("ucx_perftest") {
        positive(&r, "ucx.gbytes_per_s");
        positive(&r, "ucx.msgs_per_s");
        positive(&r, "ratio.rate_vs_ucx");
    }
}

/// Rounds of lanet and its baselines: medians, and each ratio with the range of the rounds'.
#[test]
fn tcp_bandwidth_in_rounds_reports_medians_and_the_ratios_range() {
    let r = run(&[
        "bandwidth",
        "--lnd",
        "tcp",
        "--secs",
        "0.5",
        "--rounds",
        "2",
    ]);
    positive(&r, "lanet.gbytes_per_s");
    assert_eq!(positive(&r, "rounds"), 2.0);
    if installed("ucx_perftest") {
        for key in ["ratio.vs_ucx.min", "ratio.vs_ucx", "ratio.vs_ucx.max"] {
            positive(&r, key);
        }
    }
}

/// `--baseline-secs 0` runs lanet (and the raw socket floor) without the external tools:
/// it once ran iperf3 with `-t 0`, which never ends. Bounded here, so that it cannot hang.
#[test]
fn zero_baseline_seconds_runs_no_external_tool_and_ends() {
    for args in [
        &["bandwidth", "--lnd", "tcp", "--secs", "0.5"][..],
        &["latency", "--lnd", "tcp", "--iters", "300"][..],
    ] {
        // Its log goes to a file (a pipe read only at the end could fill).
        let log = std::env::temp_dir().join(format!(
            "lanet-smoke-zero-baseline-{}-{}.log",
            std::process::id(),
            args[0]
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_lanet-bench"))
            .args(args)
            .args(["--baseline-secs", "0", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("run lanet-bench");
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for lanet-bench") {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} --baseline-secs 0 still ran after 120 s (see {log:?})");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        assert!(status.success(), "{args:?}: {status}\n{stderr}");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut out)
            .expect("its output");
        let r: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        let r = r.as_object().expect("an object");
        let lanet = if args[0] == "bandwidth" {
            "lanet.gbytes_per_s"
        } else {
            "lanet.p50_us"
        };
        positive(r, lanet);
        for tool in ["iperf3.", "ucx.", "sockperf.", "libfabric."] {
            assert!(!r.keys().any(|k| k.starts_with(tool)), "{tool} in {r:?}");
        }
    }
}

/// Rounds compare TCP with its baselines; elsewhere they are refused, not ignored.
#[test]
fn rounds_are_refused_where_there_are_no_baselines_to_run() {
    for (command, length) in [("bandwidth", "--secs"), ("latency", "--iters")] {
        let out = Command::new(env!("CARGO_BIN_EXE_lanet-bench"))
            .args([command, "--lnd", "mem", length, "1", "--rounds", "2"])
            .output()
            .expect("run lanet-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{command} --rounds with --lnd mem ran"
        );
        assert!(
            stderr.contains("--rounds is for TCP"),
            "{command}: {stderr}"
        );
    }
}

/// Latency in rounds: medians, and each ratio with the range of the rounds' own.
#[test]
fn tcp_latency_in_rounds_reports_medians_and_the_ratios_range() {
    let r = run(&["latency", "--lnd", "tcp", "--iters", "300", "--rounds", "2"]);
    assert_eq!(positive(&r, "rounds"), 2.0);
    positive(&r, "lanet.p50_us");
    for key in [
        "ratio.p50_vs_raw_tcp.min",
        "ratio.p50_vs_raw_tcp",
        "ratio.p50_vs_raw_tcp.max",
    ] {
        positive(&r, key);
    }
}

/// Small PUTs with a window beyond the credits: a message rate, beside UCX's.
#[test]
fn tcp_message_rate_is_reported_with_a_window() {
    let r = run(&[
        "bandwidth",
        "--lnd",
        "tcp",
        "--size",
        "8",
        "--window",
        "32",
        "--secs",
        "1",
    ]);
    let rate = positive(&r, "lanet.msgs_per_s");
    assert!((100.0..100_000_000.0).contains(&rate), "{rate} msg/s");
    if installed("ucx_perftest") {
        let ucx = positive(&r, "ucx.msgs_per_s");
        assert!((100.0..100_000_000.0).contains(&ucx), "{ucx} msg/s");
    }
}

#[test]
fn the_in_memory_lnd_runs_both_benchmarks() {
    // In-process: no network baseline compares with it, so none runs; two threads over
    // channels, and UCX over shared memory where installed, do.
    let network = |k: &String| {
        ["iperf3.", "raw_tcp.", "sockperf.", "libfabric."]
            .iter()
            .any(|p| k.starts_with(p))
    };
    let latency = run(&["latency", "--lnd", "mem", "--iters", "300"]);
    positive(&latency, "lanet.p50_us");
    positive(&latency, "channels.p50_us");
    positive(&latency, "ratio.p50_vs_channels");
    assert!(!latency.keys().any(network), "{latency:?}");
    let bandwidth = run(&["bandwidth", "--lnd", "mem", "--secs", "0.5"]);
    positive(&bandwidth, "lanet.gbytes_per_s");
    assert!(!bandwidth.keys().any(network), "{bandwidth:?}");
    if installed("ucx_perftest") {
        positive(&latency, "ucx.p50_us");
        positive(&latency, "ratio.p50_vs_ucx");
        positive(&bandwidth, "ucx.gbytes_per_s");
        positive(&bandwidth, "ratio.vs_ucx");
    }
}

#[test]
fn lanes_reports_ping_latency_idle_loaded_and_on_the_data_lane_with_the_throughput() {
    let r = run_json(&["lanes", "--secs", "1.5", "--threads", "2"]);
    for key in ["idle.p99_us", "loaded.p99_us", "loaded_single_lane.p99_us"] {
        let us = positive(&r, key);
        assert!(us < 10_000_000.0, "{key} = {us} us");
    }
    for key in [
        "loaded.data_gbytes_per_s",
        "loaded_single_lane.data_gbytes_per_s",
        "pings.idle",
        "pings.loaded",
        "pings.loaded_single_lane",
    ] {
        positive(&r, key);
    }
}

#[test]
fn detect_reports_detection_times_and_false_downs() {
    let r = run_json(&[
        "detect",
        "--trials",
        "2",
        "--load-secs",
        "1",
        "--interval-ms",
        "50",
    ]);
    assert_eq!(positive(&r, "interval_ms"), 50.0);
    for key in ["detect_ms.p50", "detect_ms.max"] {
        // Detection takes a few intervals: more than one, far less than twenty.
        let ms = positive(&r, key);
        assert!((50.0..1000.0).contains(&ms), "{key} = {ms} ms");
    }
    let false_downs = r["false_downs"].as_f64().expect("false_downs");
    assert!(false_downs >= 0.0);
    positive(&r, "load.data_gbytes_per_s");
    // Every CPU watched: a wake is always a little late, and never by seconds.
    let stall = positive(&r, "load.cpu_stall_max_ms");
    assert!(stall < 1000.0, "a CPU stalled {stall} ms");
    for key in [
        "load.longest_silence_ms",
        "load.host_steal_ms",
        "load.pings_sent",
    ] {
        assert!(
            r[key].as_f64().is_some_and(|v| v >= 0.0),
            "{key}: {}",
            r[key]
        );
    }
}

#[test]
fn sim_reports_health_load_and_detection_per_size() {
    let r = run_json(&["sim", "--nodes", "100,400", "--secs", "1"]);
    for n in [100, 400] {
        // Each client pings ~6 peers 10 times a second: tens to hundreds of frames.
        let load = positive(&r, &format!("n{n}.health_frames_per_node_per_s"));
        assert!((10.0..1000.0).contains(&load), "n{n}: {load} frames/s");
        let ms = positive(&r, &format!("n{n}.detect_ms.max"));
        assert!((100.0..1000.0).contains(&ms), "n{n}: detected in {ms} ms");
    }
    // The load per node follows interest, not the number of nodes.
    let ratio = positive(&r, "ratio.load_largest_vs_smallest");
    assert!((0.5..2.0).contains(&ratio), "{ratio}");
}

/// Instructions per round trip, counted under callgrind where valgrind is installed: the
/// owners' shares add up to the whole, the core's is the headline, and the whole is of a
/// sane order.
#[test]
fn cost_counts_instructions_per_round_trip() {
    if !installed("valgrind") {
        eprintln!("valgrind is not installed: skipping");
        return;
    }
    let r = run_json(&["cost", "--iters", "1000"]);
    let total = positive(&r, "total_instructions_per_round_trip");
    assert!((100.0..10_000_000.0).contains(&total), "{total}");
    let core = positive(&r, "instructions_per_round_trip");
    assert!(core < total, "{core} of {total}");
    positive(&r, "instructions.mem_lnd");
    let parts: f64 = core
        + ["mem_lnd", "bench", "runtime"]
            .iter()
            .map(|p| r[&format!("instructions.{p}")].as_f64().unwrap())
            .sum::<f64>();
    // Every instruction has an owner (a few hundred run in no function at all).
    assert!((parts / total - 1.0).abs() < 0.05, "{parts} of {total}");
    positive(&r, "channel_pingpong.instructions_per_round_trip");
    // The workers' ping-pong: the same node and LND without the endpoints' threads.
    let worker = positive(&r, "worker.instructions_per_round_trip");
    let worker_total = positive(&r, "worker.total_instructions_per_round_trip");
    assert!(worker < worker_total, "{worker} of {worker_total}");
    assert!(
        worker > core / 10.0,
        "{worker} against the endpoints' {core}"
    );
}
