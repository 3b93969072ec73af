//! Helpers shared by the tests that drive TCP LNDs by hand.

use bytes::Bytes;
use lanet::lnd::Transmit;
use lanet::wire::{Body, Header};
use lanet::{Lane, Nid};

/// A data-lane PUT without ACK from `from` to the neighbour `to`, carrying `payload`.
pub fn put_with(from: Nid, to: Nid, msg_id: u64, token: u64, payload: Bytes) -> Transmit {
    let header = Header {
        lane: Lane::Data,
        hop_limit: 8,
        credits: 0,
        src: from,
        dst: to,
        src_incarnation: 1,
        msg_id,
        payload_len: payload.len() as u32,
        body: Body::Put {
            portal: 4,
            match_bits: 1,
            settled_below: 0,
            ack: false,
        },
        router_gen: 0,
    };
    Transmit::new(to, &header, payload, token)
}
