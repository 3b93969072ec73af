//! The memory a `sendmsg` in flight points at. It must not move or be freed until the
//! kernel is done: the slot is boxed (a stable address), small pieces are copied into its
//! own staging area (queued headers can move when the queue grows), and large payloads are
//! referenced in place with their `Bytes` held here, so closing a connection mid-send cannot
//! free memory the kernel still reads.

use bytes::Bytes;

use crate::framing::{TxQueue, MAX_SLICES};

/// Payload pieces up to this size are copied; larger ones are sent from their own memory.
const COPY_MAX: usize = 2048;
const STAGING: usize = 64 * 1024;
/// Bytes per message, at most (a small piece that crosses it is staged whole, so a message
/// may end up to `COPY_MAX` past it). A send completes only when all of it is out
/// (MSG_WAITALL), and frames queued meanwhile wait for the next one: bounded messages keep
/// the stream moving instead of draining between large batches.
///
/// Larger messages move a stream faster, at the health lane's cost: 2 MiB moved 1 MiB PUTs
/// on loopback at 5.6-7.2 GB/s against 3.6-5.4, but PINGs under that load took twice as
/// long at p99 (bench/RESULTS.md, "2026-12-06 (late)").
pub(crate) const MESSAGE_MAX: usize = 512 * 1024;

pub(crate) struct SendSlot {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_SLICES],
    staging: Box<[u8]>,
    held: Vec<Bytes>,
    /// Bytes described by the current message.
    pub(crate) len: usize,
    /// The part of the current message the bulk mover's next send of it covers (all of it,
    /// or what a short send left).
    part: Part,
}

// SAFETY: the raw pointers in `hdr`, `iov` and `part` point into this slot (its own
// arrays and staging box, allocated once and never replaced) and into the `Bytes` it
// holds; they travel with it and are only used by its owner's thread.
unsafe impl Send for SendSlot {}

const NO_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// The rest of the slot's message from some byte on (see [`SendSlot::describe_rest`]).
struct Part {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_SLICES],
}

impl SendSlot {
    pub(crate) fn new() -> Box<SendSlot> {
        Box::new(SendSlot {
            // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid
            // (null pointers, zero lengths).
            hdr: unsafe { std::mem::zeroed() },
            iov: [NO_IOV; MAX_SLICES],
            // Allocated at the first send: a connection that never says HELLO (one of a
            // flood of half-open ones) costs no 64 KiB.
            staging: Box::default(),
            held: Vec::new(),
            len: 0,
            part: Part {
                // SAFETY: as above.
                hdr: unsafe { std::mem::zeroed() },
                iov: [NO_IOV; MAX_SLICES],
            },
        })
    }

    /// Describes as much of `q`'s unwritten bytes as fits, past the first `skip` of them
    /// (described by messages still being sent); returns how many. Allocates only at a
    /// slot's first use (its staging area, and room for the payloads it holds).
    pub(crate) fn fill(&mut self, q: &TxQueue, skip: usize) -> usize {
        if self.staging.is_empty() {
            // No message is described yet (the slot is home): nothing points into it.
            self.staging = vec![0u8; STAGING].into_boxed_slice();
        }
        self.held.clear();
        let (mut n, mut staged, mut total) = (0usize, 0usize, 0usize);
        // Whether the last iovec covers the end of the staged bytes (and can grow).
        let mut staging_open = false;
        let mut skip = skip;
        for (piece, owner) in q.pieces() {
            let piece = match skip {
                0 => piece,
                _ if skip >= piece.len() => {
                    skip -= piece.len();
                    continue;
                }
                _ => &piece[std::mem::take(&mut skip)..],
            };
            let copy = owner.is_none() || piece.len() <= COPY_MAX;
            if copy {
                if staged + piece.len() > STAGING {
                    break;
                }
                if !staging_open {
                    if n == MAX_SLICES {
                        break;
                    }
                    self.iov[n] = libc::iovec {
                        iov_base: self.staging[staged..].as_mut_ptr().cast(),
                        iov_len: 0,
                    };
                    n += 1;
                    staging_open = true;
                }
                self.staging[staged..staged + piece.len()].copy_from_slice(piece);
                self.iov[n - 1].iov_len += piece.len();
                staged += piece.len();
            } else {
                if n == MAX_SLICES {
                    break;
                }
                // A large payload may be cut here; the rest goes in the next message.
                let take = piece.len().min(MESSAGE_MAX - total);
                self.iov[n] = libc::iovec {
                    iov_base: piece.as_ptr() as *mut libc::c_void,
                    iov_len: take,
                };
                n += 1;
                staging_open = false;
                self.held
                    .push(owner.expect("payload pieces have owners").clone());
                total += take;
                if total == MESSAGE_MAX {
                    break;
                }
                continue;
            }
            total += piece.len();
            if total >= MESSAGE_MAX {
                break;
            }
        }
        // SAFETY: all-zero is a valid msghdr; the fields set point into this boxed slot.
        self.hdr = unsafe { std::mem::zeroed() };
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = n;
        self.len = total;
        total
    }

    /// The message for `IORING_OP_SENDMSG(_ZC)`; valid while this slot lives and is not
    /// refilled.
    pub(crate) fn msghdr(&self) -> *const libc::msghdr {
        &self.hdr
    }

    /// Describes the current message from byte `offset` on as this slot's part: the whole
    /// of it, or what a short send left (see [`Self::part_msghdr`]).
    pub(crate) fn describe_rest(&mut self, offset: usize) {
        let part = &mut self.part;
        let (mut skip, mut n) = (offset, 0);
        for iov in &self.iov[..self.hdr.msg_iovlen] {
            if skip >= iov.iov_len {
                skip -= iov.iov_len;
                continue;
            }
            part.iov[n] = libc::iovec {
                iov_base: iov.iov_base.cast::<u8>().wrapping_add(skip).cast(),
                iov_len: iov.iov_len - skip,
            };
            n += 1;
            skip = 0;
        }
        // SAFETY: all-zero is a valid msghdr; the fields set point into `part`.
        part.hdr = unsafe { std::mem::zeroed() };
        part.hdr.msg_iov = part.iov.as_mut_ptr();
        part.hdr.msg_iovlen = n;
    }

    /// The part last described, for `IORING_OP_SENDMSG`; valid while this slot lives and
    /// is not described again.
    pub(crate) fn part_msghdr(&self) -> *const libc::msghdr {
        &self.part.hdr
    }

    /// The kernel is done with the memory: drop the payloads held for it.
    pub(crate) fn release(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanet::lane::Lane;
    use lanet::lnd::TxToken;
    use lanet::nid::Nid;
    use lanet::wire::{encode_header, Body, Header, HEADER_LEN};

    fn push(q: &mut TxQueue, len: usize, tag: u8) {
        let h = Header {
            hop_limit: 8,
            router_gen: 0,
            lane: Lane::Data,
            credits: 0,
            src: Nid::mem(1, 0),
            dst: Nid::mem(2, 0),
            src_incarnation: 1,
            msg_id: u64::from(tag),
            payload_len: len as u32,
            body: Body::Put {
                portal: 1,
                match_bits: 2,
                settled_below: 0,
                ack: true,
            },
            attempt: 0,
        };
        q.push(
            encode_header(&h),
            Bytes::from(vec![tag; len]),
            Some(TxToken(u64::from(tag))),
        );
    }

    /// What the kernel would send: the bytes the iovecs describe, in order.
    fn gather(slot: &SendSlot) -> Vec<u8> {
        gather_iovecs(&slot.iov[..slot.hdr.msg_iovlen])
    }

    fn gather_iovecs(iovecs: &[libc::iovec]) -> Vec<u8> {
        let mut out = Vec::new();
        for iov in iovecs {
            // SAFETY: the iovecs point into the slot's staging or its held Bytes, alive here.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len)
            });
        }
        out
    }

    fn expected(q: &TxQueue) -> Vec<u8> {
        q.pieces().flat_map(|(p, _)| p.iter().copied()).collect()
    }

    #[test]
    fn small_pieces_are_coalesced_and_large_payloads_sent_in_place() {
        let mut q = TxQueue::default();
        push(&mut q, 8, 1);
        push(&mut q, 100, 2);
        push(&mut q, 100_000, 3);
        push(&mut q, 0, 4);
        let mut slot = SendSlot::new();
        let n = slot.fill(&q, 0);
        assert_eq!(gather(&slot), expected(&q));
        assert_eq!(n, 4 * 96 + 8 + 100 + 100_000);
        // header+8, header+100, header (staged, one iovec) | 100 KB in place | header
        assert_eq!(slot.hdr.msg_iovlen, 3);
        assert_eq!(slot.held.len(), 1);
        // Partly written: the slot describes exactly the rest.
        let mut done = Vec::new();
        q.advance(96 + 8 + 50, &mut done);
        slot.fill(&q, 0);
        assert_eq!(gather(&slot), expected(&q));
        slot.release();
        assert!(slot.held.is_empty());
    }

    #[test]
    fn the_rest_from_any_byte_is_exactly_the_messages_tail() {
        let mut q = TxQueue::default();
        push(&mut q, 8, 1);
        push(&mut q, 300_000, 2);
        push(&mut q, 100, 3);
        let mut slot = SendSlot::new();
        let total = slot.fill(&q, 0);
        let whole = gather(&slot);
        // The message's start, inside the staged header and payload, where they end, inside
        // the payload sent in place, and its end.
        for offset in [0, 1, 95, 96 + 8, 4096, 128 * 1024, total - 1, total] {
            slot.describe_rest(offset);
            let part = &slot.part;
            let rest = gather_iovecs(&part.iov[..part.hdr.msg_iovlen]);
            assert!(rest == whole[offset..], "the rest from byte {offset}");
        }
    }

    #[test]
    fn a_message_stops_at_its_size_limit_even_inside_a_payload() {
        let mut q = TxQueue::default();
        push(&mut q, MESSAGE_MAX * 3 / 4, 1);
        push(&mut q, MESSAGE_MAX * 3 / 4, 2);
        let mut slot = SendSlot::new();
        let n = slot.fill(&q, 0);
        assert_eq!(n, MESSAGE_MAX);
        assert_eq!(gather(&slot), expected(&q)[..n]);
    }

    /// Messages filled one after another, each past what those before describe (as the
    /// bulk mover's pipelined sends are), are the queue's bytes back to back, wherever a
    /// message ends: inside a payload sent in place (the size limit), or among staged
    /// headers and small payloads (the staging area full).
    #[test]
    fn messages_filled_past_those_before_them_continue_the_stream() {
        let mut q = TxQueue::default();
        push(&mut q, 8, 1);
        push(&mut q, 700_000, 2);
        push(&mut q, 1000, 3);
        push(&mut q, 900_000, 4);
        for i in 0..100 {
            push(&mut q, 1000, 5 + i); // ~107 KiB staged: more than one staging area
        }
        push(&mut q, 300_000, 105);
        // Written in part already: the first message starts inside the first header.
        q.advance(50, &mut Vec::new());
        let all = expected(&q);
        let (mut joined, mut ends) = (Vec::new(), Vec::new());
        while joined.len() < all.len() {
            let mut slot = SendSlot::new();
            let n = slot.fill(&q, joined.len());
            assert!(n > 0, "stuck at {} of {}", joined.len(), all.len());
            let message = gather(&slot);
            assert_eq!(message.len(), n);
            joined.extend(message);
            ends.push(joined.len());
        }
        assert_eq!(joined, all);
        // The small frames' bytes in the stream (less the 50 written):
        let small_from = (8 + 700_000 + 1000 + 900_000 + 4 * HEADER_LEN) - 50;
        let small = small_from..small_from + 100 * (HEADER_LEN + 1000);
        assert!(
            ends.iter().any(|end| small.contains(end)),
            "a message ended among staged frames (staging full): {ends:?}"
        );
        // Past the end, nothing is left to describe.
        let mut slot = SendSlot::new();
        assert_eq!(slot.fill(&q, all.len()), 0);
        assert_eq!(slot.hdr.msg_iovlen, 0);
    }

    #[test]
    fn a_full_staging_area_ends_the_message_early() {
        let mut q = TxQueue::default();
        for i in 0..1000 {
            push(&mut q, 1000, i as u8);
        }
        let mut slot = SendSlot::new();
        let n = slot.fill(&q, 0);
        assert!(n <= STAGING && n > STAGING - 2000, "{n}");
        let all = expected(&q);
        assert_eq!(gather(&slot), all[..n]);
    }
}
