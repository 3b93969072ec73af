//! Every fuzz target over its corpus (`fuzz/corpus/NAME/`) and the inputs that once made
//! it fail (`fuzz/regressions/NAME/`), so CI runs what the fuzzer found.

use std::path::{Path, PathBuf};

use super::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_replays_its_corpus_and_regressions() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: the target would go untested"
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} fails on {}", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
fn the_fuzz_crate_has_a_target_for_each() {
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("lanet::fuzz::{name}(")),
            "{} does not run lanet::fuzz::{name}",
            file.display()
        );
    }
}

/// Runs one input through one target, to debug it: `LANET_FUZZ_TARGET=node
/// LANET_FUZZ_INPUT=path LANET_FUZZ_TRACE=1 cargo test -p lanet --lib replay_one -- --ignored
/// --nocapture`.
#[test]
#[ignore = "debugging aid; run by hand"]
fn replay_one() {
    let name = std::env::var("LANET_FUZZ_TARGET").expect("LANET_FUZZ_TARGET");
    let path = std::env::var("LANET_FUZZ_INPUT").expect("LANET_FUZZ_INPUT");
    let (_, target) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target's name");
    target(&std::fs::read(path).unwrap());
}

/// Writes the seed inputs each corpus starts from (valid encodings, the example files):
/// `cargo test -p lanet --lib write_seed_corpora -- --ignored`. The fuzzer grows the
/// corpora from them; `cargo fuzz cmin` keeps them small before they are committed.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpora() {
    use crate::handshake::LocalHello;
    use crate::lane::Lane;
    use crate::nid::Nid;
    use crate::wire::{
        encode_header, AbsentReason, Body, Header, HelloStatus, NackReason, RouterState,
        RouterStatus, Status,
    };

    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    let a = Nid::mem(1, 0);
    let b = Nid::mem(2, 0);
    let header = |lane, body: Body, payload_len| Header {
        lane,
        hop_limit: 8,
        credits: 1,
        src: b,
        dst: a,
        src_incarnation: 7,
        msg_id: 3,
        payload_len,
        body,
        router_gen: 0,
        attempt: 0,
    };
    let bodies = [
        (
            "put",
            Lane::Data,
            Body::Put {
                portal: 1,
                match_bits: 2,
                settled_below: 1,
                ack: true,
            },
            8,
        ),
        (
            "get",
            Lane::Data,
            Body::Get {
                portal: 1,
                match_bits: 2,
                want_len: 64,
                settled_below: 0,
            },
            0,
        ),
        (
            "ack",
            Lane::Data,
            Body::Ack {
                status: Status::Ok,
                mlen: 8,
            },
            0,
        ),
        ("reply", Lane::Data, Body::Reply { status: Status::Ok }, 16),
        ("ping", Lane::Health, Body::Ping { seq: 9 }, 0),
        ("pong", Lane::Health, Body::Pong { seq: 9 }, 0),
        ("credit", Lane::Data, Body::Credit, 0),
        (
            "nack",
            Lane::Data,
            Body::Nack {
                reason: NackReason::NoRoute,
                target: b,
            },
            0,
        ),
        ("status", Lane::Health, Body::Status, 0),
    ];
    for (name, lane, body, len) in bodies {
        let h = encode_header(&header(lane, body, len));
        let mut frame = vec![0u8];
        frame.extend_from_slice(&h);
        frame.extend(std::iter::repeat_n(5u8, len as usize));
        write("frame", name, &frame);
    }
    let hello = LocalHello {
        nid: b,
        incarnation: 7,
        lane: Lane::Data,
        credits: 8,
        max_payload: 1 << 20,
    };
    write("hello", "ok", &hello.encode(a));
    write(
        "hello_compact",
        "ok",
        &hello.encode_compact(a, HelloStatus::Ok),
    );
    write(
        "hello_compact",
        "race",
        &hello.encode_compact(a, HelloStatus::Race),
    );
    let status = RouterStatus {
        generation: 4,
        state: RouterState::Absent(AbsentReason::BlackHole),
        nets: vec![(a.net(), true), (Nid::mem(0, 1).net(), false)],
        unreachable: vec![b],
        more_unreachable: false,
        vouched: vec![Nid::mem(3, 1)],
    };
    write("router_status", "absent", &status.encode());
    let forwarding = RouterStatus {
        state: RouterState::Forwarding,
        unreachable: vec![],
        vouched: vec![],
        ..status
    };
    write("router_status", "forwarding", &forwarding.encode());
    for example in ["example-client.toml", "example-router.toml"] {
        let text = std::fs::read(fuzz_dir().join("../config").join(example)).unwrap();
        write("config", example, &text);
    }
    for (i, text) in [
        "10.0.0.1@tcp",
        "192.168.1.2:7000@tcp3",
        "5@mem",
        "0@lo",
        "10.1.1.1@o2ib2",
    ]
    .iter()
    .enumerate()
    {
        write("nid", &format!("text-{i}"), text.as_bytes());
    }
    let mut raw = [0u8; crate::nid::NID_WIRE_LEN];
    "10.0.0.1@tcp".parse::<Nid>().unwrap().encode(&mut raw);
    write("nid", "wire", &raw);
    // The node: peer 2 on net 0 connects both lanes, we PUT to it, our sends complete,
    // it ACKs (a header it sends), time passes.
    let mut script = vec![
        0, 0, 0, 1, 8, 0, 2, 8, // connect data lane
        0, 0, 1, 1, 8, 0, 2, 8, // connect health lane
        6, 0, 0, 1, 0, 0, 0, 0, 0, 64, 0, // PUT 64 bytes to peer 0, data lane
        4, 0, 1, // complete a send
        3, 1, // a frame on connection 1 (connections sort by lane: health, then data)
    ];
    let mut ack = header(
        Lane::Data,
        Body::Ack {
            status: Status::Ok,
            mlen: 64,
        },
        0,
    );
    ack.msg_id = 1;
    script.extend_from_slice(&encode_header(&ack));
    script.extend_from_slice(&[3, 3, 0, 9, 1, 200]);
    write("node", "put-ack", &script);
    write("node", "empty", &[]);
}
