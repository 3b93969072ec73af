use super::*;
use crate::lane::Lane;

const OLD: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const NEW: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";

fn keys(lines: &[&str]) -> Keys {
    Keys::parse(&lines.join("\n")).unwrap()
}

fn auth(lines: &[&str], accept: Option<Accept>) -> Auth {
    Auth::new(Some(keys(lines)), accept).unwrap()
}

fn hello(n: u32) -> PeerHello {
    PeerHello {
        nid: Nid::mem(n, 0),
        incarnation: 100 + u64::from(n),
        lane: Lane::Data,
        credits: 8,
        max_payload: 4096,
        header_check: crate::wire::HeaderCheck::Crc32,
    }
}

/// The three messages between a dialler (node 1) and an acceptor (node 2): the
/// connection's outcome on each side (Ok(true): authenticated, Ok(false): open).
fn handshake(d: &Auth, a: &Auth) -> (Result<bool, AuthError>, Result<bool, AuthError>) {
    let (dh, ah) = (hello(1), hello(2));
    let nd = [1; NONCE_LEN];
    let sent = d.dialler_hello(|| nd);
    let step = match a.acceptor_step(&ah, &dh, sent.as_ref(), || [2; NONCE_LEN]) {
        Ok(step) => step,
        // The acceptor refuses: the dialler hears KeyRequired (or a closed connection).
        Err(e) => return (Ok(false), Err(e)),
    };
    let (reply, pending) = match step {
        AcceptorStep::Open => (None, None),
        AcceptorStep::Challenge { reply, pending } => (Some(reply), Some(pending)),
    };
    let dialler = d.dialler_step(&dh, &ah, sent.map(|s| s.nonce), reply.as_ref());
    let acceptor = match (&dialler, pending) {
        (Ok(DiallerStep::Prove(proof)), Some(p)) => a.check_dialler(&p, proof).map(|()| true),
        (Ok(DiallerStep::Open), None) => Ok(false),
        (Ok(step), p) => panic!("dialler {step:?} but acceptor pending {p:?}"),
        // The dialler gave up: the acceptor's connection ends at its handshake deadline.
        (Err(_), _) => Ok(false),
    };
    (
        dialler.map(|s| matches!(s, DiallerStep::Prove(_))),
        acceptor,
    )
}

#[test]
fn the_same_key_authenticates_both_sides() {
    let (d, a) = handshake(&auth(&[OLD], None), &auth(&[OLD], None));
    assert_eq!((d, a), (Ok(true), Ok(true)));
}

#[test]
fn a_wrong_key_is_refused_by_the_dialler_and_by_the_acceptor() {
    let (d, _) = handshake(&auth(&[NEW], None), &auth(&[OLD], None));
    assert!(matches!(d, Err(AuthError::WrongKey { .. })), "{d:?}");
    // A dialler that ignores the acceptor's failed proof and answers anyway with its own
    // key is refused by the acceptor.
    let (dk, ak) = (keys(&[NEW]), auth(&[OLD], None));
    let step = ak
        .acceptor_step(
            &hello(2),
            &hello(1),
            Some(&HelloAuth {
                nonce: [1; 16],
                proof: None,
            }),
            || [2; 16],
        )
        .unwrap();
    let AcceptorStep::Challenge { pending, .. } = step else {
        panic!("{step:?}")
    };
    let forged = dk.prove(Role::Dialler, &pending.transcript);
    let e = ak.check_dialler(&pending, &forged).unwrap_err();
    assert!(e.to_string().contains("different keys"), "{e}");
    // Nor does the acceptor's own proof, sent back to it, pass as the dialler's.
    let AcceptorStep::Challenge { reply, .. } = step else {
        unreachable!()
    };
    assert!(ak.check_dialler(&pending, &reply.proof.unwrap()).is_err());
}

#[test]
fn without_a_key_a_secure_node_refuses_and_an_open_one_lets_in() {
    let none = Auth::open();
    let (_, a) = handshake(&none, &auth(&[OLD], None));
    assert!(matches!(a, Err(AuthError::PeerHasNoKey { .. })), "{a:?}");
    let (d, _) = handshake(&auth(&[OLD], None), &none);
    assert!(matches!(d, Err(AuthError::PeerHasNoKey { .. })), "{d:?}");
    // accept = none: dialled peers must prove too.
    let (d, _) = handshake(&auth(&[OLD], Some(Accept::DialOnly)), &none);
    assert!(matches!(d, Err(AuthError::PeerHasNoKey { .. })), "{d:?}");
    // accept = all: keyless peers are let in either way, keyed ones authenticate.
    let all = auth(&[OLD], Some(Accept::All));
    assert_eq!(handshake(&none, &all), (Ok(false), Ok(false)));
    assert_eq!(handshake(&all, &none), (Ok(false), Ok(false)));
    assert_eq!(handshake(&all, &auth(&[OLD], None)), (Ok(true), Ok(true)));
    // ... but a keyed peer with the wrong key is still refused.
    assert!(handshake(&all, &auth(&[NEW], None)).0.is_err());
    assert_eq!(handshake(&none, &none), (Ok(false), Ok(false)));
}

#[test]
fn two_keys_roll_over_in_two_steps_in_any_order() {
    // Step 1: the new key is added, node by node; step 2: the old one removed, likewise.
    let states: [&[&str]; 4] = [&[OLD], &[OLD, NEW], &[NEW, OLD], &[NEW]];
    for (i, x) in states.iter().enumerate() {
        for (j, y) in states.iter().enumerate() {
            let (x, y) = (auth(x, None), auth(y, None));
            let ok = handshake(&x, &y) == (Ok(true), Ok(true))
                && handshake(&y, &x) == (Ok(true), Ok(true));
            // Only nodes with no key in common fail: one not yet given the new key, one
            // that has already dropped the old.
            let disjoint = (i == 0 && j == 3) || (i == 3 && j == 0);
            assert_eq!(ok, !disjoint, "{x:?} with {y:?}");
        }
    }
}

#[test]
fn a_proof_is_good_for_one_connection_only() {
    let a = auth(&[OLD], None);
    let (dh, ah) = (hello(1), hello(2));
    let challenge = |nd: u8, na: u8, dh: &PeerHello| {
        let sent = HelloAuth {
            nonce: [nd; 16],
            proof: None,
        };
        match a.acceptor_step(&ah, dh, Some(&sent), || [na; 16]).unwrap() {
            AcceptorStep::Challenge { reply, pending } => (reply, pending),
            s => panic!("{s:?}"),
        }
    };
    let (reply, pending) = challenge(1, 2, &dh);
    let Ok(DiallerStep::Prove(proof)) = a.dialler_step(&dh, &ah, Some([1; 16]), Some(&reply))
    else {
        panic!()
    };
    a.check_dialler(&pending, &proof).unwrap();
    // Replayed to a connection with another acceptor nonce: refused.
    let (_, other) = challenge(1, 3, &dh);
    assert!(a.check_dialler(&other, &proof).is_err());
    // Or by another incarnation of the dialler, or on another lane.
    let mut reborn = dh;
    reborn.incarnation += 1;
    assert!(a
        .check_dialler(&challenge(1, 2, &reborn).1, &proof)
        .is_err());
    let mut health = dh;
    health.lane = Lane::Health;
    let mut ah_health = ah;
    ah_health.lane = Lane::Health;
    let sent = HelloAuth {
        nonce: [1; 16],
        proof: None,
    };
    let AcceptorStep::Challenge { pending, .. } = a
        .acceptor_step(&ah_health, &health, Some(&sent), || [2; 16])
        .unwrap()
    else {
        panic!()
    };
    assert!(a.check_dialler(&pending, &proof).is_err());
    // The acceptor's reply, checked by a dialler that sent another nonce: refused.
    assert!(matches!(
        a.dialler_step(&dh, &ah, Some([9; 16]), Some(&reply)),
        Err(AuthError::WrongKey { .. })
    ));
}

#[test]
fn malformed_exchanges_are_refused() {
    let a = auth(&[OLD], None);
    let (dh, ah) = (hello(1), hello(2));
    // A dialler's HELLO must not carry a proof; an acceptor's must.
    let with_proof = HelloAuth {
        nonce: [1; 16],
        proof: Some(keys(&[OLD]).prove(Role::Dialler, &dummy_transcript())),
    };
    assert!(matches!(
        a.acceptor_step(&ah, &dh, Some(&with_proof), || [2; 16]),
        Err(AuthError::Malformed { .. })
    ));
    let bare = HelloAuth {
        nonce: [2; 16],
        proof: None,
    };
    assert!(matches!(
        a.dialler_step(&dh, &ah, Some([1; 16]), Some(&bare)),
        Err(AuthError::Malformed { .. })
    ));
    // A proof nobody asked for.
    assert!(matches!(
        Auth::open().dialler_step(&dh, &ah, None, Some(&with_proof)),
        Err(AuthError::Malformed { .. })
    ));
}

fn dummy_transcript() -> Transcript {
    Transcript {
        dialler: hello(1),
        acceptor: hello(2),
        dialler_nonce: [0; 16],
        acceptor_nonce: [0; 16],
    }
}

#[test]
fn encodings_round_trip_and_reject_garbage() {
    let p = keys(&[OLD, NEW]).prove(Role::Acceptor, &dummy_transcript());
    assert_eq!(Proof::decode(&p.encode()), Ok(p));
    assert_eq!(p.encode().len(), Proof::MAX_LEN);
    let h = HelloAuth {
        nonce: [7; 16],
        proof: Some(p),
    };
    assert_eq!(HelloAuth::decode(&h.encode()), Ok(h));
    let bare = HelloAuth {
        nonce: [7; 16],
        proof: None,
    };
    assert_eq!(HelloAuth::decode(&bare.encode()), Ok(bare));
    let mut padded = h.encode();
    padded.extend([0; 20]);
    assert_eq!(HelloAuth::decode_prefix(&padded).map(|(h, _)| h), Ok(h));
    assert!(HelloAuth::decode(&padded).is_err(), "trailing bytes");
    let mut three = p.encode();
    three[0] = 3;
    assert!(Proof::decode(&three).is_err());
    let mut reserved = p.encode();
    reserved[2] = 1;
    assert!(Proof::decode(&reserved).is_err());
    assert!(
        Proof::decode(&[0, 0, 0, 0]).is_err(),
        "a proof without a MAC"
    );
    assert!(Proof::decode(&p.encode()[..40]).is_err());
}

proptest::proptest! {
    #[test]
    fn decoding_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
        let _ = Proof::decode(&b);
        let _ = HelloAuth::decode(&b);
    }
}

#[test]
fn key_files_must_be_private_and_well_formed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lanet-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let good = write(
        "good",
        &format!("# rolled in 2026-12\n{NEW}\n\n{OLD}\n"),
        0o600,
    );
    let k = Keys::load(&good).unwrap();
    assert_eq!(k.len(), 2);
    // Debug shows fingerprints only.
    let shown = format!("{k:?}");
    assert!(
        !shown.contains(&OLD[..16]) && !shown.contains(&NEW[..16]),
        "{shown}"
    );
    assert_eq!(k.fingerprints().len(), 2);
    assert_ne!(k.fingerprints()[0], k.fingerprints()[1]);

    let exposed = write("exposed", OLD, 0o644);
    let e = Keys::load(&exposed).unwrap_err();
    assert_eq!(e.error, KeyError::Exposed { mode: 0o644 });
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(matches!(
        Keys::load(write("group", OLD, 0o640)).unwrap_err().error,
        KeyError::Exposed { .. }
    ));
    assert!(Keys::load(write("owner-only-read", OLD, 0o400)).is_ok());
    assert!(matches!(
        Keys::load(dir.join("missing")).unwrap_err().error,
        KeyError::Io(_)
    ));
    assert_eq!(Keys::load(&dir).unwrap_err().error, KeyError::NotAFile);
    assert_eq!(
        Keys::load(write("empty", "# nothing yet\n", 0o600))
            .unwrap_err()
            .error,
        KeyError::Empty
    );
    let three = format!("{OLD}\n{NEW}\n{OLD}\n");
    assert_eq!(Keys::parse(&three), Err(KeyError::TooMany(3)));
    for bad in ["abc", "zz00112233445566778899aabbccddeeff", "00112233"] {
        assert!(
            matches!(Keys::parse(bad), Err(KeyError::BadKey { line: 1, .. })),
            "{bad}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn secure_without_keys_is_a_configuration_error() {
    assert!(Auth::new(None, Some(Accept::Secure)).is_err());
    assert_eq!(Auth::new(None, None).unwrap().accept(), Accept::All);
    assert_eq!(
        Auth::new(Some(keys(&[OLD])), None).unwrap().accept(),
        Accept::Secure
    );
    assert!(!Auth::new(None, Some(Accept::DialOnly)).unwrap().listens());
}
