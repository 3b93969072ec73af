use super::*;
use crate::nid::tests::any_nid;
use proptest::prelude::*;

fn limits() -> Limits {
    Limits::new(1 << 20, HeaderCheck::Crc32)
}

fn sample(body: Body, lane: Lane, payload_len: u32) -> Header {
    Header {
        hop_limit: 8,
        router_gen: 0,
        lane,
        credits: 3,
        src: "10.0.0.1@tcp".parse().unwrap(),
        dst: "10.0.0.2:7001@tcp".parse().unwrap(),
        src_incarnation: 0xdead_beef,
        msg_id: 42,
        payload_len,
        body,
        attempt: 0,
    }
}

/// `b` with a checksum that matches it again, as a peer that means harm would send it.
fn reseal(mut b: [u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
    let crc = crc32fast::hash(&b[..92]);
    b[92..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn frame_bytes(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut v = encode_header(h).to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn put_frame_round_trips_with_borrowed_payload() {
    let h = sample(
        Body::Put {
            portal: 7,
            match_bits: 0x1234,
            settled_below: 0,
            ack: true,
        },
        Lane::Data,
        5,
    );
    let bytes = frame_bytes(&h, b"hello");
    let f = decode(&bytes, &limits()).unwrap();
    assert_eq!(f.header, h);
    assert_eq!(f.payload, b"hello");
    assert_eq!(f.wire_len(), bytes.len());
    // The payload is a view into the input, not a copy.
    assert_eq!(f.payload.as_ptr(), bytes[HEADER_LEN..].as_ptr());
}

/// Where the link protects headers they go without a checksum; a link that does not
/// (TCP) refuses such a header, saying why; a flag with a checksum beside it, or an unknown
/// flag, is damage.
#[test]
fn headers_go_without_a_checksum_only_where_the_link_protects_them() {
    let h = sample(
        Body::Ack {
            status: Status::Ok,
            mlen: 5,
        },
        Lane::Data,
        0,
    );
    let link = Limits::new(1 << 20, HeaderCheck::Link);
    let unchecked = encode_header_with(&h, HeaderCheck::Link);
    assert_eq!(unchecked[10], FLAG_LINK_CHECKED);
    assert_eq!(unchecked[92..], [0; 4]);
    assert_eq!(decode_header(&unchecked, &link), Ok(h));
    // A protected link takes checked headers too.
    assert_eq!(decode_header(&encode_header(&h), &link), Ok(h));

    let refused = decode_header(&unchecked, &limits());
    assert_eq!(refused, Err(DecodeError::UncheckedHeader));
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("without a checksum"));

    // A flag bit flipped in a checked header: the checksum catches it.
    let mut flipped = encode_header(&h);
    flipped[10] = FLAG_LINK_CHECKED;
    for l in [link, limits()] {
        assert!(matches!(
            decode_header(&flipped, &l),
            Err(DecodeError::BadChecksum { .. })
        ));
    }
    let flag_and_crc = reseal(flipped);
    let unknown_flag = {
        let mut b = encode_header(&h);
        b[10] = 2;
        reseal(b)
    };
    for l in [link, limits()] {
        assert_eq!(
            decode_header(&unknown_flag, &l),
            Err(DecodeError::ReservedNotZero)
        );
    }
    assert_eq!(
        decode_header(&flag_and_crc, &link),
        Err(DecodeError::ReservedNotZero)
    );
}

#[test]
fn rejects_each_kind_of_bad_header_with_a_typed_error() {
    let good = encode_header(&sample(Body::Ping { seq: 1 }, Lane::Health, 0));
    let l = limits();
    assert_eq!(
        decode_header(&good, &l).map(|h| h.body),
        Ok(Body::Ping { seq: 1 })
    );

    assert!(matches!(
        decode_header(&good[..50], &l),
        Err(DecodeError::Truncated {
            needed: 96,
            have: 50
        })
    ));
    let mut b = good;
    b[0] ^= 1;
    assert!(matches!(
        decode_header(&b, &l),
        Err(DecodeError::BadMagic(_))
    ));
    // A version 1 peer (before routing) is refused with both versions named.
    let mut b = good;
    b[4] = 1;
    let e = decode_header(&b, &l);
    assert_eq!(e, Err(DecodeError::UnsupportedVersion { got: 1 }));
    let said = e.unwrap_err().to_string();
    assert!(
        said.contains("version 1") && said.contains(&format!("version {}", crate::wire::VERSION)),
        "{said}"
    );
    let mut b = good;
    b[57] ^= 0x80; // message id bit: only the checksum can notice
    assert!(matches!(
        decode_header(&b, &l),
        Err(DecodeError::BadChecksum { .. })
    ));

    // Semantically bad headers with a valid checksum.
    let mut b = good;
    b[5] = 99;
    assert_eq!(
        decode_header(&reseal(b), &l),
        Err(DecodeError::UnknownType(99))
    );
    let mut b = good;
    b[6] = 7;
    assert_eq!(
        decode_header(&reseal(b), &l),
        Err(DecodeError::UnknownLane(7))
    );
    let mut b = good;
    b[10] = 2; // an unknown flag
    assert_eq!(
        decode_header(&reseal(b), &l),
        Err(DecodeError::ReservedNotZero)
    );
    let mut nack = encode_header(&sample(
        Body::Nack {
            reason: NackReason::NoRoute,
            target: "10.0.0.3@tcp".parse().unwrap(),
        },
        Lane::Health,
        0,
    ));
    nack[64] = 77;
    assert_eq!(
        decode_header(&reseal(nack), &l),
        Err(DecodeError::UnknownNackReason(77))
    );
    let mut b = good;
    b[16] = 0; // source NID kind 0 does not exist
    assert_eq!(
        decode_header(&reseal(b), &l),
        Err(DecodeError::BadNid { which: "source" })
    );
    let mut b = good;
    b[12] = 1; // a PING with a payload
    assert!(matches!(
        decode_header(&reseal(b), &l),
        Err(DecodeError::UnexpectedPayload {
            ty: FrameType::Ping,
            len: 1
        })
    ));
}

#[test]
fn health_lane_refuses_data_frames() {
    let h = sample(
        Body::Put {
            portal: 1,
            match_bits: 1,
            settled_below: 0,
            ack: true,
        },
        Lane::Health,
        0,
    );
    assert_eq!(
        decode_header(&encode_header(&h), &limits()),
        Err(DecodeError::WrongLane {
            ty: FrameType::Put,
            lane: Lane::Health
        })
    );
}

#[test]
fn lengths_are_checked_against_limits_before_the_payload_is_touched() {
    let h = sample(
        Body::Put {
            portal: 1,
            match_bits: 1,
            settled_below: 0,
            ack: true,
        },
        Lane::Data,
        u32::MAX,
    );
    // A 4 GiB claim in a 96-byte buffer: refused by the limit, nothing allocated.
    assert!(matches!(
        decode(&encode_header(&h), &limits()),
        Err(DecodeError::PayloadTooLarge {
            len: u32::MAX,
            max: 1048576,
            lane: Lane::Data,
            ..
        })
    ));
    let pong = sample(Body::Pong { seq: 1 }, Lane::Health, HEALTH_MAX_PAYLOAD + 1);
    assert!(matches!(
        decode(&encode_header(&pong), &limits()),
        Err(DecodeError::PayloadTooLarge {
            lane: Lane::Health,
            ..
        })
    ));
    let short = sample(
        Body::Put {
            portal: 1,
            match_bits: 1,
            settled_below: 0,
            ack: true,
        },
        Lane::Data,
        10,
    );
    let bytes = frame_bytes(&short, b"12345");
    assert_eq!(
        decode(&bytes, &limits()),
        Err(DecodeError::Truncated {
            needed: 106,
            have: 101
        })
    );
}

#[test]
fn a_put_says_whether_it_wants_an_ack_and_an_older_put_does() {
    let put = |ack| {
        sample(
            Body::Put {
                portal: 1,
                match_bits: 2,
                settled_below: 3,
                ack,
            },
            Lane::Data,
            0,
        )
    };
    let no_ack = encode_header(&put(false));
    assert_eq!(&no_ack[68..72], &PUT_NO_ACK.to_le_bytes());
    assert_eq!(decode_header(&no_ack, &limits()), Ok(put(false)));
    // A PUT from before the flag has the word zero: it wants its ACK, as it always did.
    let older = encode_header(&put(true));
    assert_eq!(&older[68..72], &[0; 4]);
    assert_eq!(decode_header(&older, &limits()), Ok(put(true)));
    // Other bits of the word are not ours to guess at.
    let mut bytes = encode_header_with(&put(false), HeaderCheck::Link);
    bytes[68] |= 2;
    let lim = Limits {
        link_checks_headers: true,
        ..limits()
    };
    assert_eq!(
        decode_header(&bytes, &lim),
        Err(DecodeError::ReservedNotZero)
    );
}

fn any_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Ok),
        Just(Status::NoMatch),
        Just(Status::Busy),
        Just(Status::Aborted)
    ]
}

fn any_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            prop_oneof![Just(HelloStatus::Ok), Just(HelloStatus::Race)]
        )
            .prop_map(|(credits, max_payload, status)| Body::Hello {
                credits,
                max_payload,
                status
            }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(portal, match_bits, settled_below, ack)| Body::Put {
                portal,
                match_bits,
                settled_below,
                ack,
            }
        ),
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
            |(portal, match_bits, want_len, settled_below)| Body::Get {
                portal,
                match_bits,
                want_len,
                settled_below,
            }
        ),
        (any_status(), any::<u32>()).prop_map(|(status, mlen)| Body::Ack { status, mlen }),
        any_status().prop_map(|status| Body::Reply { status }),
        any::<u64>().prop_map(|seq| Body::Ping { seq }),
        any::<u64>().prop_map(|seq| Body::Pong { seq }),
        Just(Body::Credit),
        Just(Body::Status),
        Just(Body::Auth),
        (any_nack_reason(), any_nid()).prop_map(|(reason, target)| Body::Nack { reason, target }),
    ]
}

fn any_nack_reason() -> impl Strategy<Value = NackReason> {
    prop_oneof![
        Just(NackReason::NoRoute),
        Just(NackReason::NextHopDown),
        Just(NackReason::NotForwarding),
        Just(NackReason::HopLimit),
        Just(NackReason::OutOfBuffers),
        Just(NackReason::Absent),
        Just(NackReason::NextHopStalled),
    ]
}

/// Any header the encoder may legitimately produce, with a payload that fits it.
fn any_frame() -> impl Strategy<Value = (Header, Vec<u8>)> {
    (
        any_body(),
        prop_oneof![Just(Lane::Health), Just(Lane::Data)],
        (any::<u16>(), any::<u8>(), any::<u32>(), any::<u8>()),
        any_nid(),
        any_nid(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_filter_map(
            "type not allowed on lane",
            |(
                body,
                lane,
                (credits, hop_limit, router_gen, attempt),
                src,
                dst,
                inc,
                msg_id,
                mut payload,
            )| {
                let ty = body.frame_type();
                if !ty.allowed_on(lane) {
                    return None;
                }
                payload.truncate(ty.max_payload(lane, HEALTH_MAX_PAYLOAD) as usize);
                let header = Header {
                    hop_limit,
                    router_gen,
                    lane,
                    credits,
                    src,
                    dst,
                    src_incarnation: inc,
                    msg_id,
                    payload_len: payload.len() as u32,
                    body,
                    attempt,
                };
                Some((header, payload))
            },
        )
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity_without_a_checksum_too((h, _) in any_frame()) {
        let link = Limits::new(1 << 20, HeaderCheck::Link);
        let bytes = encode_header_with(&h, HeaderCheck::Link);
        prop_assert_eq!(decode_header(&bytes, &link), Ok(h));
    }

    #[test]
    fn decode_of_encode_is_identity((h, payload) in any_frame()) {
        let bytes = frame_bytes(&h, &payload);
        let f = decode(&bytes, &limits()).unwrap();
        prop_assert_eq!(f.header, h);
        prop_assert_eq!(f.payload, &payload[..]);
        prop_assert_eq!(f.wire_len(), bytes.len());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes, &limits());
    }

    /// Random bytes almost never reach past the magic; valid frames with damage do. Any
    /// single corrupted header byte must be caught (by the checksum or a field check).
    #[test]
    fn corrupted_headers_are_rejected((h, payload) in any_frame(), at in 0..HEADER_LEN, flip in 1u8..) {
        let mut bytes = frame_bytes(&h, &payload);
        bytes[at] ^= flip;
        prop_assert!(decode(&bytes, &limits()).is_err());
    }

    /// Damage after a valid checksum is recomputed: the field checks alone must hold.
    #[test]
    fn resealed_garbage_never_panics((h, payload) in any_frame(), junk in proptest::collection::vec(any::<u8>(), 92)) {
        let mut bytes = frame_bytes(&h, &payload);
        bytes[4..92].copy_from_slice(&junk[4..]);
        bytes[4] = VERSION;
        let crc = crc32fast::hash(&bytes[..92]);
        bytes[92..96].copy_from_slice(&crc.to_le_bytes());
        if let Ok(f) = decode(&bytes, &limits()) {
            // Whatever decodes re-encodes to the same header bytes: one encoding per header.
            prop_assert_eq!(&encode_header(&f.header)[..], &bytes[..HEADER_LEN]);
        }
    }
}

/// Only a PUT without ACK is a request nothing answers, and a frame built for a driver
/// says so ([`crate::lnd::Transmit::report_at_once`]): drivers that hold completions back
/// hand its completion over at once.
#[test]
fn only_a_put_without_ack_has_its_send_completion_reported_at_once() {
    let put = |ack| Body::Put {
        portal: 4,
        match_bits: 1,
        settled_below: 0,
        ack,
    };
    let get = Body::Get {
        portal: 4,
        match_bits: 1,
        want_len: 9,
        settled_below: 0,
    };
    let ack = Body::Ack {
        status: Status::Ok,
        mlen: 9,
    };
    for (body, report_at_once) in [
        (put(false), true),
        (put(true), false),
        (get, false),
        (ack, false),
        (Body::Ping { seq: 1 << 32 }, false),
    ] {
        let h = sample(body, Lane::Data, 8);
        assert_eq!(h.is_put_without_ack(), report_at_once, "{body:?}");
        let tx = crate::lnd::Transmit::new(h.dst, &h, bytes::Bytes::new(), 1);
        assert_eq!(tx.report_at_once, report_at_once, "{body:?}");
    }
}
