use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
    ConfigFile::parse("test.toml", text)
}

fn error(text: &str) -> String {
    parse(text).expect_err("an error").to_string()
}

const TWO_NETS: &str = r#"
[[net]]
net = "tcp1"
address = "10.0.1.1"

[[net]]
net = "tcp2"
address = "10.0.2.1"
port = 7002
"#;

#[test]
fn a_minimal_router_is_a_few_lines_and_takes_the_defaults() {
    let f = parse(&format!("{TWO_NETS}\n[routing]\nenable = true\n")).unwrap();
    assert!(f.node.forwarding);
    let nids: Vec<String> = f.nets.iter().map(|n| n.nid.to_string()).collect();
    assert_eq!(nids, ["10.0.1.1@tcp1", "10.0.2.1:7002@tcp2"]);
    let defaults = NodeConfig::new(1);
    assert_eq!(f.node.health, defaults.health);
    assert_eq!(f.node.router_buffers, defaults.router_buffers);
    assert_eq!(f.node.router, defaults.router);
    assert_eq!(f.nets[0].peer_credits, 8);
    assert_eq!(f.nets[0].credits, 256);
    assert_eq!(f.daemon.drain, Duration::from_secs(10));
    assert!(f.routes.is_empty());
    assert!(f.node.incarnation > 1, "a fresh incarnation");
}

#[test]
fn the_examples_in_the_repository_parse_and_say_what_they_claim() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/");
    let router = std::fs::read_to_string(format!("{dir}example-router.toml")).unwrap();
    let f = parse(&router).unwrap();
    assert!(f.node.forwarding);
    assert_eq!(f.nets.len(), 2);
    // Every commented key, uncommented, still parses and keeps the default it shows.
    let uncommented: String = router
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            // Neither the interface nor the key file exist here, a router (two NIs) may
            // not spin, and the example's nets are tcp (eager_max is o2ib's).
            Some(rest)
                if is_setting(rest)
                    && !rest.starts_with("interface")
                    && !rest.starts_with("key_file")
                    && !rest.starts_with("spin")
                    && !rest.starts_with("eager_max") =>
            {
                rest
            }
            Some(rest) if rest.starts_with("[[") => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let all = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let mut expected = f.node.clone();
    expected.router.fellows = vec!["10.0.1.2@tcp1".parse().unwrap()];
    expected.incarnation = all.node.incarnation;
    assert_eq!(all.node, expected, "the example's values are the defaults");
    assert_eq!(all.routes.len(), 2);
    let client = std::fs::read_to_string(format!("{dir}example-client.toml")).unwrap();
    // Its interface does not exist here: the error says so, and where.
    let e = parse(&client).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(6), Some("interface")),
        "{e}"
    );
}

/// `key = value`, as opposed to prose.
fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

#[test]
fn routes_take_one_gateway_or_a_list_and_lnet_names() {
    let f = parse(&format!(
        "{TWO_NETS}\n[[route]]\nnet = \"tcp3\"\ngateway = [\"10.0.2.5@tcp2\", \"10.0.1.9@tcp1\"]\nhop = 2\npriority = 1\n\
         [[route]]\nnet = \"o2ib\"\ngateway = \"10.0.1.7@tcp1\"\n"
    ))
    .unwrap();
    let r: Vec<String> = f
        .routes
        .iter()
        .map(|r| format!("{} {} {} {}", r.net, r.gateway, r.hops, r.priority))
        .collect();
    assert_eq!(
        r,
        [
            "tcp3 10.0.2.5@tcp2 2 1",
            "tcp3 10.0.1.9@tcp1 2 1",
            "o2ib 10.0.1.7@tcp1 1 0"
        ]
    );
}

/// The node keeps one route per net and gateway, and none through itself: a file that
/// lists either is refused where it says it (a site-wide gateway list shared by the
/// gateways themselves, or the same gateway in two routes).
#[test]
fn a_route_twice_or_through_this_node_is_refused() {
    let e = error(&format!(
        "{TWO_NETS}\n[[route]]\nnet = \"tcp3\"\ngateway = \"10.0.1.9@tcp1\"\n\
         [[route]]\nnet = \"tcp3\"\ngateway = [\"10.0.2.5:7002@tcp2\", \"10.0.1.9@tcp1\"]\nhop = 2\n"
    ));
    assert!(
        e.contains(":16: gateway: a second route to tcp3 through 10.0.1.9@tcp1"),
        "{e}"
    );
    let e = error(&format!(
        "{TWO_NETS}\n[[route]]\nnet = \"tcp3\"\ngateway = [\"10.0.1.9@tcp1\", \"10.0.2.1:7002@tcp2\"]\n"
    ));
    assert!(
        e.contains(
            "gateway: route to tcp3 through 10.0.2.1:7002@tcp2: the gateway is this node itself"
        ),
        "{e}"
    );
    let e = error(&format!(
        "{TWO_NETS}[[failover]]\nname = \"x\"\nnids = [\"10.0.1.9@tcp1\", \"10.0.1.1@tcp1\"]\n"
    ));
    assert!(e.contains("nids: 10.0.1.1@tcp1 is this node itself"), "{e}");
}

#[test]
fn tunables_reach_the_node_config() {
    let f = parse(&format!(
        "transaction_timeout = \"30s\"\nretry_count = 4\n{TWO_NETS}credits = 64\npeer_credits = 4\n\
         [health]\ninterval = \"50ms\"\ndetect_mult = 5\n\
         [routing]\nenable = true\nbuffers = {{ tiny = 10, large = 3 }}\nhold_down = \"5s\"\n\
         damping = {{ half_life = \"1m\" }}\nwarm_up = \"250ms\"\ndrain = \"3s\"\nmax_served = 99\n\
         control_socket = \"/tmp/r.sock\"\nfellows = [\"10.0.2.2:7002@tcp2\"]\n"
    ))
    .unwrap();
    let n = &f.node;
    assert_eq!(n.op_timeout, Duration::from_secs(30));
    assert_eq!(n.resend_budget, 4);
    assert_eq!(
        (n.health.interval, n.health.detect_mult),
        (Duration::from_millis(50), 5)
    );
    assert_eq!(
        (
            n.router_buffers.tiny,
            n.router_buffers.small,
            n.router_buffers.large
        ),
        (10, 16384, 3)
    );
    assert_eq!(n.router.hold_down, Duration::from_secs(5));
    assert_eq!(n.router.half_life, Duration::from_secs(60));
    assert_eq!(n.router.warm_up, Duration::from_millis(250));
    assert_eq!(n.router.max_served, 99);
    assert_eq!(parse(&f.to_toml()).unwrap().node.router.max_served, 99);
    assert_eq!(n.router.fellows[0].to_string(), "10.0.2.2:7002@tcp2");
    assert_eq!(f.daemon.drain, Duration::from_secs(3));
    assert_eq!(f.daemon.control_socket, std::path::Path::new("/tmp/r.sock"));
    // The second net's tunables: its own credits, and the smallest offer sets when credits
    // are returned.
    assert_eq!((f.nets[1].credits, f.nets[1].peer_credits), (64, 4));
    let tcp2 = f.nets[1].nid.net();
    assert_eq!(n.data_ni_credits(tcp2), 64);
    assert_eq!(n.data_ni_credits(f.nets[0].nid.net()), 256);
    assert_eq!(n.lanes[Lane::Data].peer_credits, 4);
    assert_eq!(n.lanes[Lane::Data].credits_hiw, 2);
    n.validate().unwrap();
}

#[test]
fn peer_buffer_credits_are_what_a_router_offers_each_peer() {
    let f = parse(&format!(
        "{TWO_NETS}\n[routing]\nenable = true\npeer_buffer_credits = 16\n"
    ))
    .unwrap();
    assert!(f.nets.iter().all(|n| n.peer_credits == 16));
    // Not a router: the setting changes nothing.
    let f = parse(&format!(
        "{TWO_NETS}\n[routing]\npeer_buffer_credits = 16\n"
    ))
    .unwrap();
    assert!(f.nets.iter().all(|n| n.peer_credits == 8));
}

#[test]
fn an_interface_gives_its_address() {
    let f = parse("[[net]]\nnet = \"tcp\"\ninterface = \"lo\"\nport = 7000\n").unwrap();
    assert_eq!(f.nets[0].nid.to_string(), "127.0.0.1:7000@tcp");
    assert_eq!(f.nets[0].interface.as_deref(), Some("lo"));
}

/// One list of a site's routers serves each of them: a router leaves itself out of its
/// fellows (or it would watch and ping itself).
#[test]
fn a_router_is_not_its_own_fellow() {
    let text = "[[net]]\nnet = \"tcp1\"\naddress = \"10.0.1.1\"\n\
                [[net]]\nnet = \"tcp2\"\naddress = \"10.0.2.1\"\n\
                [routing]\nenable = true\nfellows = [\"10.0.1.1@tcp1\", \"10.0.1.2@tcp1\"]\n";
    let f = parse(text).unwrap();
    let fellows: Vec<String> = f
        .node
        .router
        .fellows
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(fellows, ["10.0.1.2@tcp1"]);
}

/// The example files say `port = 988` is the default: written out, it names the node its
/// clients know (they dial `10.0.1.1@tcp1`), not another one.
#[test]
fn the_default_port_written_out_is_the_default() {
    for (net, port) in [("tcp1", 988), ("o2ib", 987)] {
        let text = format!("[[net]]\nnet = \"{net}\"\naddress = \"10.0.1.1\"\nport = {port}\n");
        let f = parse(&text).unwrap();
        assert_eq!(f.nets[0].nid.to_string(), format!("10.0.1.1@{net}"));
    }
}

#[test]
fn errors_name_the_file_line_and_key_and_say_what_was_expected() {
    let cases: &[(&str, &str)] = &[
        // unknown key (a typo of peer_credits)
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\npeer_credit = 8\n",
            "test.toml:4: peer_credit: unknown field `peer_credit`, expected one of",
        ),
        // wrong type
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\ncredits = \"many\"\n",
            "test.toml:4: credits: invalid type: string \"many\", expected u32",
        ),
        // no connection could be accepted
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\npending_accepts = 0\n",
            "test.toml:4: pending_accepts: expected at least 1",
        ),
        // a bad net name
        (
            "[[net]]\nnet = \"tcpx\"\n",
            "test.toml:2: net: expected a net such as \"tcp\", \"tcp1\" or \"o2ib3\", got \"tcpx\"",
        ),
        // a control socket no socket can be bound at
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[routing]\ncontrol_socket = \"\"\n",
            "test.toml: routing.control_socket: \"\" names no file",
        ),
        (
            concat!(
                "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[routing]\ncontrol_socket = ",
                "\"/run/lanet/a-directory-name-long-enough-to-take-the-path-past-what-a-unix-socket-takes-and-some-more-on-top/r.sock\"\n"
            ),
            "test.toml: routing.control_socket: /run/lanet/a-directory",
        ),
        // short enough itself, but not the path it is bound at first (DIR/.lXXXXXX/s)
        (
            concat!(
                "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[routing]\ncontrol_socket = ",
                "\"/run/lanet/a-directory-name-long-enough-for-the-staging-path-to-pass-the-limit-xxxxxxxxxxxxxxxxxx/r.sock\"\n"
            ),
            "test.toml: routing.control_socket: /run/lanet/a-directory-name-long-enough-for-the-staging-path-to-pass-the-limit-xxxxxxxxxxxxxxxxxx/r.sock is 104 bytes long, and the socket is bound first at 108 bytes",
        ),
        // a bad duration
        (
            "[health]\ninterval = \"fast\"\n",
            "test.toml:2: interval: expected a duration such as \"100ms\"",
        ),
        // a net with no address
        (
            "[[net]]\nnet = \"tcp1\"\n",
            "test.toml:1: net: net tcp1 needs an address",
        ),
        (
            "[[net]]\nnet = \"tcp1\"\naddress = \"10.0.0.300\"\n",
            "test.toml:3: address: expected an IPv4 address such as \"10.0.0.1\", got \"10.0.0.300\"",
        ),
        (
            "[[net]]\nnet = \"tcp1\"\naddress = \"10.0.0.3\"\ninterface = \"lo\"\n",
            "test.toml:4: interface: give address or interface, not both",
        ),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.5\"\n",
            "test.toml:4: net: tcp is configured twice",
        ),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[routing]\nenable = true\n",
            "test.toml: routing.enable: a router needs NIs on at least two nets, this file has 1",
        ),
        // routes
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[[route]]\nnet = \"tcp2\"\ngateway = \"1.2.3.9\"\n",
            "test.toml:6: gateway: invalid NID \"1.2.3.9\": expected ADDRESS@NET",
        ),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[[route]]\nnet = \"tcp2\"\ngateway = \"1.2.3.9@tcp3\"\n",
            "test.toml:6: gateway: route to tcp2 through 1.2.3.9@tcp3: the gateway is not on any net",
        ),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[[route]]\nnet = \"tcp\"\ngateway = \"1.2.3.9@tcp\"\n",
            "test.toml:4: route: route to tcp through 1.2.3.9@tcp: the net is one of this node's own",
        ),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"1.2.3.4\"\n[[route]]\nnet = \"tcp2\"\ngateway = \"1.2.3.9@tcp\"\nhop = 0\n",
            "test.toml:4: hop: route to tcp2 through 1.2.3.9@tcp: a route has at least one hop",
        ),
        (
            "[[route]]\nnet = \"tcp2\"\n",
            "test.toml:1: gateway: missing field `gateway`",
        ),
        // values the protocol cannot work with
        (
            "[health]\ndetect_mult = 0\n",
            "test.toml: invalid configuration? health: interval must be at least 1ms",
        ),
        (
            "[routing]\nhold_down = \"10s\"\ndamping = { max_hold_down = \"5s\" }\n",
            "test.toml: routing.damping.max_hold_down: expected at least hold_down (10s)",
        ),
    ];
    for (text, expected) in cases {
        let e = error(text);
        let expected = expected.replace("invalid configuration? ", "");
        assert!(e.starts_with(&expected), "got {e:?}\nexpected {expected:?}");
    }
}

#[test]
fn a_missing_file_says_which_and_why() {
    let e = ConfigFile::load("/no/such/lanet.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/no/such/lanet.toml: cannot read it: No such file"),
        "{e}"
    );
}

#[test]
fn failover_groups_name_their_members_and_mode() {
    let f = parse(&format!(
        "{TWO_NETS}[[failover]]\nname = \"ost0\"\nnids = [\"10.0.2.21@tcp2\", \"10.0.2.22@tcp2\"]\n\
         [[failover]]\nname = \"mdt0\"\nnids = [\"10.0.1.9@tcp1\"]\nmode = \"failout\"\n"
    ))
    .unwrap();
    assert_eq!(f.failover.len(), 2);
    assert_eq!(f.failover[0].members.len(), 2);
    assert_eq!(f.failover[0].mode, crate::node::FailoverMode::Failover);
    assert_eq!(f.failover[1].mode, crate::node::FailoverMode::Failout);
    let e = error(&format!(
        "{TWO_NETS}[[failover]]\nname = \"x\"\nnids = [\"1.2.3.4@tcp9\"]\n"
    ));
    assert!(
        e.contains(":12: nids: 1.2.3.4@tcp9 is on no net of this node"),
        "{e}"
    );
    let e = error(&format!(
        "{TWO_NETS}[[failover]]\nname = \"x\"\nnids = [\"10.0.1.9@tcp1\"]\nmode = \"sometimes\"\n"
    ));
    assert!(e.contains("mode: unknown variant `sometimes`"), "{e}");
}

/// Reads `text`, exports it, reads the export: the same configuration, incarnation aside.
fn round_trip(text: &str) -> (ConfigFile, ConfigFile) {
    let first = parse(text).unwrap();
    let exported = first.to_toml();
    let mut second = ConfigFile::parse("test.toml", &exported)
        .unwrap_or_else(|e| panic!("the export does not read back: {e}\n{exported}"));
    second.node.incarnation = first.node.incarnation;
    (first, second)
}

#[test]
fn an_export_reads_back_as_the_same_configuration() {
    let defaults = round_trip(&format!("{TWO_NETS}\n[routing]\nenable = true\n"));
    assert_eq!(defaults.0, defaults.1);
    let everything = format!(
        r#"
transaction_timeout = "7s"
retry_count = 5
max_payload = 2097152
hop_limit = 4
{TWO_NETS}
peer_credits = 16
credits = 512

[[route]]
net = "tcp9"
gateway = ["10.0.1.7@tcp1", "10.0.1.8@tcp1"]
hop = 2
priority = 3

[health]
interval = "250ms"
detect_mult = 4
probe_max = "3s"
sensitivity = 50

[routing]
enable = true
buffers = {{ tiny = 100, small = 200, large = 30 }}
buffer_patience = "750ms"
forward_patience = "3s"
hold_down = "5s"
damping = {{ half_life = "45s", max_hold_down = "2m" }}
fellows = ["10.0.1.9@tcp1"]
warm_up = "3s"
drain = "20s"
control_socket = "/tmp/a \"quoted\" dir/r.sock"

[[failover]]
name = "ost0"
nids = ["10.0.9.1@tcp9", "10.0.9.2@tcp9"]
mode = "failout"
"#
    );
    let (first, second) = round_trip(&everything);
    assert_eq!(first, second);
    assert_eq!(second.routes.len(), 2);
    assert_eq!(second.nets[1].peer_credits, 16);
    assert_eq!(second.node.router.warm_up, Duration::from_secs(3));
    assert_eq!(second.node.forward_patience, Duration::from_secs(3));
    assert_eq!(second.failover[0].members.len(), 2);
}

/// The reference (`config/example-router.toml`) names every key there is: everything an
/// export writes (which is every key, defaults included) appears in it.
#[test]
fn the_reference_example_names_every_key() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/");
    let reference = std::fs::read_to_string(format!("{dir}example-router.toml")).unwrap();
    let mut all = parse(&format!(
        "{TWO_NETS}\n[[route]]\nnet = \"tcp3\"\ngateway = \"10.0.1.7@tcp1\"\n\
         [[failover]]\nname = \"g\"\nnids = [\"10.0.1.8@tcp1\"]\n[routing]\nenable = true\n"
    ))
    .unwrap();
    all.nets[0].interface = Some("eth1".into());
    // (Only a node of one NI may spin; the export writes it all the same.)
    all.nets[0].spin = Some(Duration::from_micros(50));
    all.nets[0].mover_poll = Some(Duration::ZERO);
    // (An o2ib net's; the export writes what it is given.)
    all.nets[0].eager_max = Some(8064);
    all.key_file = Some("/etc/lanet/lanet.key".into());
    let exported = all.to_toml();
    let keys: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    assert!(keys.len() > 25, "{keys:?}");
    for key in keys {
        let named = reference.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} ="))
        });
        assert!(named, "config/example-router.toml does not name `{key}`");
    }
}

#[test]
fn a_net_says_how_it_accepts_connections() {
    let text = "[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\npending_accepts = 64\n\
                check_source_address = false\n[[net]]\nnet = \"tcp2\"\naddress = \"10.0.2.1\"\n";
    let f = ConfigFile::parse("test.toml", text).unwrap();
    assert_eq!(
        (f.nets[0].pending_accepts, f.nets[0].check_source_address),
        (64, false)
    );
    assert_eq!(
        (f.nets[1].pending_accepts, f.nets[1].check_source_address),
        (crate::config::DEFAULT_PENDING_ACCEPTS, true),
        "the defaults"
    );
    let again = ConfigFile::parse("again.toml", &f.to_toml()).unwrap();
    assert_eq!(again.nets, f.nets, "written back the same");
    // An o2ib net's pending accepts each hold a queue pair: a smaller default.
    let rdma = ConfigFile::parse(
        "r.toml",
        "[[net]]\nnet = \"o2ib\"\naddress = \"10.0.0.1\"\n",
    );
    assert_eq!(
        rdma.unwrap().nets[0].pending_accepts,
        crate::config::DEFAULT_PENDING_ACCEPTS_RDMA
    );
}

/// A key file beside the configuration, with `mode`; the directory holding both.
fn dir_with_key(name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lanet-conf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("lanet.key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

#[test]
fn auth_takes_a_private_key_file_and_an_accept_policy() {
    use crate::handshake::auth::Accept;
    let dir = dir_with_key("auth", 0o600);
    let conf = dir.join("lanet.toml");
    // A relative key_file is found beside the configuration file.
    let f = ConfigFile::parse(
        &conf,
        &format!("{TWO_NETS}\n[auth]\nkey_file = \"lanet.key\"\n"),
    )
    .unwrap();
    assert_eq!(f.node.auth.keys().map(|k| k.len()), Some(1));
    assert_eq!(
        f.node.auth.accept(),
        Accept::Secure,
        "the default with a key"
    );
    assert_eq!(f.key_file.as_deref(), Some(dir.join("lanet.key").as_path()));
    let again = ConfigFile::parse(&conf, &f.to_toml()).unwrap();
    assert_eq!(
        (again.node.auth, again.key_file),
        (f.node.auth.clone(), f.key_file)
    );

    let all = format!("{TWO_NETS}\n[auth]\nkey_file = \"lanet.key\"\naccept = \"all\"\n");
    assert_eq!(
        ConfigFile::parse(&conf, &all).unwrap().node.auth.accept(),
        Accept::All
    );
    let none =
        ConfigFile::parse(&conf, &format!("{TWO_NETS}\n[auth]\naccept = \"none\"\n")).unwrap();
    assert!(!none.node.auth.listens() && none.node.auth.keys().is_none());
    // Without an [auth] section: no keys, every connection accepted, nothing exported.
    let open = parse(TWO_NETS).unwrap();
    assert_eq!(open.node.auth, crate::handshake::auth::Auth::open());
    assert!(!open.to_toml().contains("[auth]"));

    let e = error(&format!("{TWO_NETS}\n[auth]\naccept = \"secure\"\n"));
    assert!(e.contains("accept") && e.contains("key_file"), "{e}");
    let e = error(&format!("{TWO_NETS}\n[auth]\naccept = \"some\"\n"));
    assert!(e.contains("secure, all or none"), "{e}");
    let e = ConfigFile::parse(
        &conf,
        &format!("{TWO_NETS}\n[auth]\nkey_file = \"nope.key\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("key_file"));
    assert!(e.message.contains("nope.key"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();

    let exposed = dir_with_key("exposed", 0o644);
    let e = ConfigFile::parse(
        exposed.join("lanet.toml"),
        &format!("{TWO_NETS}\n[auth]\nkey_file = \"lanet.key\"\n"),
    )
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(12), Some("key_file")),
        "{e}"
    );
    assert!(e.message.contains("chmod 600"), "{e}");
    std::fs::remove_dir_all(&exposed).unwrap();
}

#[test]
fn a_net_may_busy_poll_for_a_while() {
    for (text, spin) in [
        (
            "net = \"tcp\"\naddress = \"10.0.0.1\"\nspin = \"50us\"\n",
            Some(50),
        ),
        (
            "net = \"o2ib\"\naddress = \"10.0.1.1\"\nspin = \"2ms\"\n",
            Some(2000),
        ),
        ("net = \"tcp2\"\naddress = \"10.0.2.1\"\n", None),
    ] {
        let f = parse(&format!("[[net]]\n{text}")).unwrap();
        assert_eq!(f.nets[0].spin, spin.map(Duration::from_micros), "{text}");
        let (first, second) = round_trip(&f.to_toml());
        assert_eq!(first.nets, second.nets, "written back the same");
    }
    // Several NIs share one driver thread, which cannot spin for one of them.
    let e = error(&format!("{TWO_NETS}spin = \"50us\"\n"));
    assert!(
        e.contains("spin: busy-polling applies to a node with one NI"),
        "{e}"
    );
    let e = error("[[net]]\nnet = \"mem\"\naddress = \"10.0.0.1\"\nspin = \"50us\"\n");
    assert!(e.contains("do not busy-poll") && e.contains("spin"), "{e}");
    let e = error("[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\nspin = \"1m\"\n");
    assert!(e.contains("test.toml:4: spin: at most 10s"), "{e}");
    let e = error("[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\nspin = \"fast\"\n");
    assert!(e.contains("test.toml:4: spin:"), "{e}");
    assert!(e.contains("\"50us\""), "{e}");
}

#[test]
fn a_tcp_net_may_say_how_long_its_bulk_mover_polls() {
    // A router too: its NIs' movers are their own, whatever thread the drivers share.
    for (text, poll) in [
        (format!("{TWO_NETS}mover_poll = \"0us\"\n"), Some(0)),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\nmover_poll = \"1ms\"\n".into(),
            Some(1000),
        ),
        (
            "[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\n".into(),
            None,
        ),
    ] {
        let f = parse(&text).unwrap();
        let last = f.nets.last().unwrap();
        assert_eq!(last.mover_poll, poll.map(Duration::from_micros), "{text}");
        let (first, second) = round_trip(&f.to_toml());
        assert_eq!(first.nets, second.nets, "written back the same");
    }
    let e = error("[[net]]\nnet = \"o2ib\"\naddress = \"10.0.1.1\"\nmover_poll = \"0us\"\n");
    assert!(
        e.contains("test.toml:4: mover_poll: o2ib nets have no bulk mover"),
        "{e}"
    );
    let e = error("[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\nmover_poll = \"3ms\"\n");
    assert!(e.contains("test.toml:4: mover_poll: at most 2ms"), "{e}");
    let e = error("[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\nmover_poll = \"off\"\n");
    assert!(
        e.contains("test.toml:4: mover_poll:") && e.contains("\"1ms\""),
        "{e}"
    );
}

#[test]
fn an_o2ib_net_may_send_larger_payloads_inside_its_messages() {
    let f = parse("[[net]]\nnet = \"o2ib\"\naddress = \"10.0.1.1\"\neager_max = 8064\n").unwrap();
    assert_eq!(f.nets[0].eager_max, Some(8064));
    let (first, second) = round_trip(&f.to_toml());
    assert_eq!(first.nets, second.nets, "written back the same");
    let f = parse("[[net]]\nnet = \"o2ib\"\naddress = \"10.0.1.1\"\n").unwrap();
    assert_eq!(f.nets[0].eager_max, None, "the driver's default");
    let f = parse("[[net]]\nnet = \"o2ib\"\naddress = \"10.0.1.1\"\neager_max = 65408\n");
    assert_eq!(f.unwrap().nets[0].eager_max, Some(65408), "the largest");
    let e = error("[[net]]\nnet = \"tcp\"\naddress = \"10.0.0.1\"\neager_max = 8064\n");
    assert!(e.contains("eager_max is o2ib's"), "{e}");
    for bad in ["0", "65409"] {
        let e = error(&format!(
            "[[net]]\nnet = \"o2ib\"\naddress = \"10.0.1.1\"\neager_max = {bad}\n"
        ));
        assert!(
            e.contains("test.toml:4: eager_max: expected 1 to 65408"),
            "{e}"
        );
    }
}

/// Health settings that validated but broke the node: a `probe_max` of zero (its driver
/// thread looped for ever once a watched peer went Down), a sensitivity that overflowed the
/// health value, an interval below the timers' granularity (a ping flood).
#[test]
fn health_settings_that_would_hang_overflow_or_flood_are_refused() {
    for (setting, expected) in [
        ("probe_max = \"0s\"", "probe_max must be positive"),
        ("sensitivity = 65000", "sensitivity must be at most 1000"),
        ("interval = \"100us\"", "interval must be at least 1ms"),
    ] {
        let e = error(&format!("{TWO_NETS}\n[health]\n{setting}\n"));
        assert!(e.contains(expected), "{setting}: {e}");
    }
    let ok = parse(&format!(
        "{TWO_NETS}\n[health]\ninterval = \"1ms\"\nprobe_max = \"1ms\"\nsensitivity = 1000\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

/// A router pool of no buffers validated, and then refused every frame of its size class
/// after holding it for `forward_patience`.
#[test]
fn router_buffer_pools_of_none_are_refused() {
    let e = error(&format!(
        "{TWO_NETS}\n[routing]\nenable = true\nbuffers = {{ tiny = 0 }}\n"
    ));
    assert!(
        e.contains("routing.buffers: tiny, small and large must each be at least 1"),
        "{e}"
    );
}

/// Under 8 ns, the stall checks of a frame held at a connecting hop came round again at
/// the same instant, for ever.
#[test]
fn a_forward_patience_under_a_millisecond_is_refused() {
    let e = error(&format!(
        "{TWO_NETS}\n[routing]\nenable = true\nforward_patience = \"5ns\"\n"
    ));
    assert!(e.contains("forward_patience must be at least 1ms"), "{e}");
}

#[test]
fn a_router_that_watches_no_peer_is_refused() {
    let e = error(&format!(
        "{TWO_NETS}\n[routing]\nenable = true\nmax_served = 0\n"
    ));
    assert!(e.contains("max_served must be positive"), "{e}");
}

/// A `lo` net's tunables are not exported (it has no peers), so they must not shape the
/// node either: its `peer_credits` made the data lane's offer 2, which an export and
/// reload silently turned back into 8.
#[test]
fn a_lo_nets_peer_credits_do_not_shape_the_node_and_export_round_trips() {
    let text = "[[net]]\nnet = \"lo\"\npeer_credits = 2\n\n[[net]]\nnet = \"tcp1\"\naddress = \"10.0.1.1\"\n";
    let f = parse(text).unwrap();
    assert_eq!(f.node.lanes[Lane::Data].peer_credits, 8);
    let again = parse(&f.to_toml()).unwrap();
    assert_eq!(again.node.lanes, f.node.lanes);
}

/// A path that is no configuration file (a device, a log) is refused past 1 MiB, not read
/// to its end.
#[test]
fn a_file_over_a_mebibyte_is_refused_without_reading_it_all() {
    let e = ConfigFile::load("/dev/zero").unwrap_err().to_string();
    assert!(e.contains("larger than 1024 KiB"), "{e}");
}
