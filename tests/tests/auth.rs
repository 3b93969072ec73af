//! Authentication with pre-shared keys, over real TCP: `lanet-peer` server processes and
//! a `lanet-router` process configured with `[auth]`, clients here with their own keys
//! (the right one, a wrong one, none, two during a rollover), and impostors on raw sockets
//! that try to be heard without proving a key.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lanet::config::{ConfigFile, OpenLnd};
use lanet::handshake::auth::{HelloAuth, Proof};
use lanet::handshake::LocalHello;
use lanet::op::PingRequest;
use lanet::wire::{Body, HelloStatus, HEADER_LEN};
use lanet::{Endpoint, Lane, Nid};
use lanet_tests::peer::{get, put, wait_all, Peer};
use lanet_tests::raw::{answered_with_pong, closed_by_server, dial, frame, CLOSE_WITHIN};
use lanet_tests::router::{loopback_router, net, route, RouterProcess, Scratch};
use lanet_tests::{free_tcp_nid, pattern};

const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");
const ROUTER_EXE: &str = env!("CARGO_BIN_EXE_lanet-router-under-test");
const DRIVERS: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];

const OLD: &str = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";
const NEW: &str = "7e240de74fb1ed08fa08d38063f6a6a97e240de74fb1ed08fa08d38063f6a6a9";

fn port() -> u16 {
    free_tcp_nid().socket_addr(0).expect("an IP NID").port()
}

fn nid(port: u16, net: &str) -> Nid {
    format!("127.0.0.1:{port}@{net}").parse().unwrap()
}

/// A key file of `keys` in `scratch`, owner-only.
fn key_file(scratch: &Scratch, name: &str, keys: &[&str]) -> PathBuf {
    let path = scratch.file(name, &(keys.join("\n") + "\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An `[auth]` section: its key file, if any, and accept policy, if given.
fn auth(key: Option<&Path>, accept: Option<&str>) -> String {
    let mut s = "[auth]\n".to_owned();
    if let Some(k) = key {
        s += &format!("key_file = \"{}\"\n", k.display());
    }
    if let Some(a) = accept {
        s += &format!("accept = \"{a}\"\n");
    }
    s
}

/// A server process on tcp (loopback) with `auth`; its NID.
fn start_server(scratch: &Scratch, name: &str, auth: &str) -> (Peer, Nid) {
    start_server_on(scratch, name, "tcp", auth)
}

/// A server process on net `net_name` (loopback) with `extra` configuration; its NID.
fn start_server_on(scratch: &Scratch, name: &str, net_name: &str, extra: &str) -> (Peer, Nid) {
    let p = port();
    let file = scratch.file(name, &format!("{}{extra}", net(net_name, "127.0.0.1", p)));
    let nid = nid(p, net_name);
    let peer = Peer::start_with_config(&[], PEER_EXE, &file, nid, true).expect("a server");
    (peer, nid)
}

/// A client endpoint here with `extra` configuration (its [auth], routes); operations
/// give up after 3 s.
fn client(net_name: &str, extra: &str) -> (Endpoint, Nid) {
    let p = port();
    let text = format!(
        "transaction_timeout = \"3s\"\n{}{extra}",
        net(net_name, "127.0.0.1", p)
    );
    let ep = ConfigFile::parse("client.toml", &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .endpoint(&DRIVERS)
        .unwrap()
        .start()
        .unwrap();
    (ep, nid(p, net_name))
}

/// A PUT and a GET from `ep` to `to`: whether both succeeded (both must end alike).
fn exchange(ep: &Endpoint, to: Nid) -> bool {
    let p = ep.put(put(to, pattern(4096, 3))).unwrap();
    let g = ep.get(get(to, 5)).unwrap();
    let done = wait_all(ep, &[p, g]);
    let (p, g) = (done[&p].result.is_ok(), done[&g].result.is_ok());
    assert_eq!(p, g, "a PUT and a GET to {to} ended differently");
    p
}

/// A health-lane ping from `ep` to `to`, answered or not.
fn pinged(ep: &Endpoint, to: Nid) -> bool {
    let req = PingRequest {
        dst: to,
        lane: Lane::Health,
        timeout: Some(std::time::Duration::from_secs(3)),
        on_peer_down: Default::default(),
    };
    ep.ping_and_wait(req).is_ok_and(|c| c.result.is_ok())
}

#[test]
fn only_peers_that_hold_the_key_are_heard() {
    let scratch = Scratch::new("auth-keys");
    let (old, new) = (
        key_file(&scratch, "old.key", &[OLD]),
        key_file(&scratch, "new.key", &[NEW]),
    );
    let (server, to) = start_server(&scratch, "server.toml", &auth(Some(&old), None));
    let (good, _) = client("tcp", &auth(Some(&old), None));
    assert!(exchange(&good, to), "the same key: served");
    assert!(pinged(&good, to), "the health lane too");
    let (wrong, _) = client("tcp", &auth(Some(&new), None));
    assert!(!exchange(&wrong, to), "a wrong key: refused");
    assert!(!pinged(&wrong, to));
    let (keyless, _) = client("tcp", "");
    assert!(!exchange(&keyless, to), "no key: refused");
    assert!(!pinged(&keyless, to));
    // accept = "all" lets a keyless peer in, for rolling keys out on a live cluster ...
    let (open_server, open_to) =
        start_server(&scratch, "open.toml", &auth(Some(&old), Some("all")));
    assert!(exchange(&keyless, open_to));
    assert!(
        exchange(&good, open_to),
        "... and still authenticates keyed ones"
    );
    assert!(!exchange(&wrong, open_to), "... and refuses a wrong key");
    assert!(exchange(&good, to), "the right key is still served");
    drop((good, wrong, keyless));
    // Exactly the PUTs that should have been delivered were.
    assert_eq!(server.finish(), (2, 0));
    assert_eq!(open_server.finish(), (2, 0));
}

#[test]
fn a_new_key_rolls_in_and_the_old_one_out_without_a_refusal() {
    let scratch = Scratch::new("auth-rollover");
    let both = key_file(&scratch, "both.key", &[OLD, NEW]);
    let (old, new) = (
        key_file(&scratch, "old.key", &[OLD]),
        key_file(&scratch, "new.key", &[NEW]),
    );
    // Step 1 under way: the server has both keys, clients have either.
    let (rolling, rolling_to) = start_server(&scratch, "rolling.toml", &auth(Some(&both), None));
    for key in [&old, &new, &both] {
        let (c, _) = client("tcp", &auth(Some(key), None));
        assert!(exchange(&c, rolling_to), "{} with both", key.display());
    }
    // Step 2 under way: the server has only the new key; a client with both is served,
    // one never given the new key is not.
    let (rolled, rolled_to) = start_server(&scratch, "rolled.toml", &auth(Some(&new), None));
    let (c, _) = client("tcp", &auth(Some(&both), None));
    assert!(exchange(&c, rolled_to));
    let (c, _) = client("tcp", &auth(Some(&old), None));
    assert!(!exchange(&c, rolled_to));
    assert_eq!(rolling.finish(), (3, 0));
    assert_eq!(rolled.finish(), (1, 0));
}

/// A HELLO from `me` (an impostor) to `server` on `lane`, with a nonce if `nonce`.
fn impostor_hello(me: Nid, server: Nid, lane: Lane, nonce: bool) -> Vec<u8> {
    let hello = LocalHello {
        nid: me,
        incarnation: 99,
        lane,
        credits: 8,
        max_payload: 1 << 20,
    };
    let ext = nonce.then_some(HelloAuth {
        nonce: [0x42; 16],
        proof: None,
    });
    let (h, p) = hello.frame(server, HelloStatus::Ok, ext.as_ref());
    [&h[..], &p].concat()
}

/// Reads the server's HELLO on `s`: its status, and whether it carried a proof.
fn read_answer(s: &mut TcpStream) -> (HelloStatus, bool) {
    use std::io::Read;
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).expect("the server's HELLO");
    let header = lanet::wire::decode_header(&h, &Default::default()).expect("a HELLO");
    let mut payload = vec![0u8; header.payload_len as usize];
    s.read_exact(&mut payload).expect("its payload");
    let Body::Hello { status, .. } = header.body else {
        panic!("expected a HELLO, got {:?}", header.body)
    };
    let proof = HelloAuth::decode(&payload).is_ok_and(|a| a.proof.is_some());
    (status, proof)
}

#[test]
fn an_impostor_without_the_key_can_send_nothing_health_frames_included() {
    let scratch = Scratch::new("auth-impostor");
    let key = key_file(&scratch, "site.key", &[OLD]);
    let (server, to) = start_server(&scratch, "server.toml", &auth(Some(&key), None));
    let addr = SocketAddr::V4(to.socket_addr(0).unwrap());
    let me: Nid = "127.0.0.1:7@tcp".parse().unwrap();
    let ping = |seq| frame(me, to, Lane::Health, Body::Ping { seq }, seq, 0);

    // No nonce: told a key is required, and closed; its PING is never answered.
    let mut s = dial(addr, Ipv4Addr::LOCALHOST);
    s.write_all(&impostor_hello(me, to, Lane::Health, false))
        .unwrap();
    let _ = s.write_all(&ping(1));
    assert_eq!(read_answer(&mut s), (HelloStatus::KeyRequired, false));
    assert!(
        !answered_with_pong(&mut s, 1),
        "closed, and the PING unanswered"
    );

    // A nonce, as a keyed dialler's: challenged, then a PING instead of the AUTH closes it.
    let mut s = dial(addr, Ipv4Addr::LOCALHOST);
    s.write_all(&impostor_hello(me, to, Lane::Health, true))
        .unwrap();
    assert_eq!(read_answer(&mut s), (HelloStatus::Ok, true));
    s.write_all(&ping(2)).unwrap();
    assert!(!answered_with_pong(&mut s, 2));

    // A forged AUTH (a MAC under no key of the server's), then a PING: closed, unanswered.
    let mut s = dial(addr, Ipv4Addr::LOCALHOST);
    s.write_all(&impostor_hello(me, to, Lane::Health, true))
        .unwrap();
    assert_eq!(read_answer(&mut s), (HelloStatus::Ok, true));
    let mut forged = vec![1, 0, 0, 0];
    forged.extend([0x17; 32]);
    let hello = LocalHello {
        nid: me,
        incarnation: 99,
        lane: Lane::Health,
        credits: 8,
        max_payload: 1 << 20,
    };
    let (h, p) = hello.auth_frame(to, &Proof::decode(&forged).unwrap());
    s.write_all(&[&h[..], &p, &ping(3)].concat()).unwrap();
    assert!(!answered_with_pong(&mut s, 3));

    // The data lane likewise: a PUT behind a missing AUTH is never delivered.
    let mut s = dial(addr, Ipv4Addr::LOCALHOST);
    s.write_all(&impostor_hello(me, to, Lane::Data, true))
        .unwrap();
    let put = Body::Put {
        portal: lanet_tests::SINK_PORTAL,
        match_bits: 1,
        settled_below: 0,
        ack: true,
    };
    s.write_all(&frame(me, to, Lane::Data, put, 4, 0)).unwrap();
    assert!(closed_by_server(&mut s));

    // Meanwhile a client with the key is served, and only its PUT was delivered.
    let (good, _) = client("tcp", &auth(Some(&key), None));
    assert!(exchange(&good, to));
    drop(good);
    assert_eq!(server.finish(), (1, 0));
}

#[test]
fn a_node_that_accepts_nothing_listens_nowhere_and_still_dials() {
    let scratch = Scratch::new("auth-none");
    let key = key_file(&scratch, "site.key", &[OLD]);
    let (server, to) = start_server(&scratch, "server.toml", &auth(Some(&key), None));
    let (c, me) = client("tcp", &auth(Some(&key), Some("none")));
    let refused = TcpStream::connect(SocketAddr::V4(me.socket_addr(0).unwrap()));
    assert!(refused.is_err(), "nothing listens on {me}");
    assert!(exchange(&c, to));
    assert!(pinged(&c, to));
    drop(c);
    assert_eq!(server.finish(), (1, 0));
}

#[test]
fn a_router_with_the_key_authenticates_both_its_sides() {
    let scratch = Scratch::new("auth-router");
    let key = key_file(&scratch, "site.key", &[OLD]);
    let other = key_file(&scratch, "other.key", &[NEW]);
    let (ra, rb) = (port(), port());
    let router_file = scratch.file(
        "router.toml",
        &loopback_router(ra, rb, &auth(Some(&key), None), ""),
    );
    let control = scratch.0.join("router.sock");
    let _router = RouterProcess::start(ROUTER_EXE, &router_file, &control);
    let back = route("tcp1", &[nid(rb, "tcp2").to_string()]);
    let with_key = |k: &Path| format!("{back}{}", auth(Some(k), None));
    let (server, to) = start_server_on(&scratch, "server.toml", "tcp2", &with_key(&key));
    let (stranger, stranger_to) =
        start_server_on(&scratch, "stranger.toml", "tcp2", &with_key(&other));
    let via = route("tcp2", &[nid(ra, "tcp1").to_string()]);
    let (good, _) = client("tcp1", &format!("{via}{}", auth(Some(&key), None)));
    assert!(exchange(&good, to), "keyed client, router and server");
    assert!(
        !exchange(&good, stranger_to),
        "the router does not connect to a server with another key"
    );
    let (keyless, _) = client("tcp1", &via);
    assert!(
        !exchange(&keyless, to),
        "the router refuses a keyless client"
    );
    drop((good, keyless));
    assert_eq!(server.finish(), (1, 0));
    assert_eq!(stranger.finish(), (0, 0));
}
