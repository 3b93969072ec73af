//! Byte-stream framing: incoming bytes to frames, outgoing frames to `writev` slices.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use lanet::lane::Lane;
use lanet::lnd::TxToken;
use lanet::wire::{decode_header, DecodeError, Header, Limits, HEADER_LEN};

/// Room made for a read when no large frame is in progress: enough for many small frames
/// per system call.
const READ_CHUNK: usize = 64 * 1024;

/// Reassembles frames from a TCP byte stream. Payloads are split off the read buffer
/// without copying; a large payload is read straight into a buffer with room for all of
/// it (and the start of the next frame).
pub(crate) struct RxFramer {
    buf: BytesMut,
    limits: Limits,
    /// Header of the frame whose payload is still arriving.
    header: Option<Header>,
    /// The connection's handshake is not done: only its frames (HELLO, AUTH, each with a
    /// small payload) are taken, so that nobody can make the node hold a data-lane
    /// payload's worth of buffer before saying who it is.
    handshake: bool,
    /// The lane the connection carries, once it is up: a frame of the other lane is refused
    /// at its header, before its payload is waited for (a health connection must not
    /// hold a data payload's worth of buffer).
    lane: Option<Lane>,
    /// The buffer `buf` replaced when a large frame last needed room it could not give
    /// (too small, or still shared with payloads): once the payloads split off it are
    /// dropped, it is used again rather than a new allocation, whose pages the kernel would
    /// fault in and zero again for every frame. Dropped when the stream drains (see
    /// [`Self::next_frame`]), so that a connection that goes idle keeps one buffer.
    previous: Option<BytesMut>,
    /// Bytes moved to make room (tests watch it).
    #[cfg(test)]
    moved_to_make_room: usize,
    /// Buffers allocated to make room (tests watch it).
    #[cfg(test)]
    allocated: usize,
}

impl RxFramer {
    pub(crate) fn new(limits: Limits) -> Self {
        RxFramer {
            buf: BytesMut::new(),
            limits,
            header: None,
            handshake: false,
            lane: None,
            previous: None,
            #[cfg(test)]
            moved_to_make_room: 0,
            #[cfg(test)]
            allocated: 0,
        }
    }

    /// Bytes received and not yet framed (tests watch it).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A framer for a connection still to do its handshake (see [`RxFramer::handshake_done`]).
    pub(crate) fn for_handshake(limits: Limits) -> Self {
        RxFramer {
            handshake: true,
            ..RxFramer::new(limits)
        }
    }

    /// The connection is up, for `lane`: every frame of that lane its limits allow is
    /// taken from now on.
    pub(crate) fn handshake_done(&mut self, lane: Lane) {
        self.handshake = false;
        self.lane = Some(lane);
    }

    /// Drops what was received and not yet framed, for a connection that is being refused:
    /// what it sends from now on is read and dropped, never kept.
    pub(crate) fn discard(&mut self) {
        self.buf.clear();
        self.header = None;
        self.previous = None;
    }

    /// How much room the next read needs: whatever the frame in progress still needs (so a
    /// large payload arrives in as few reads as possible), and at least a chunk (many small
    /// frames per read); but no more than the rest of a large frame that fits already, as
    /// growing the buffer would copy that frame.
    fn want(&self) -> usize {
        let rest = self.rest_of_frame();
        let spare = self.buf.capacity() - self.buf.len();
        if rest > 0 && spare >= rest && self.buf.len() >= READ_CHUNK {
            rest
        } else {
            rest.max(READ_CHUNK)
        }
    }

    /// Bytes still missing from the frame in progress, once its header is known (0 when no
    /// header has arrived yet, or the frame is complete).
    pub(crate) fn rest_of_frame(&self) -> usize {
        match &self.header {
            Some(h) => (HEADER_LEN + h.payload_len as usize).saturating_sub(self.buf.len()),
            None => 0,
        }
    }

    /// The buffer to read into: its spare capacity holds at least [`Self::want`] bytes, and
    /// a read may fill all of it. Nothing is zero-filled; the caller appends what it read
    /// (see `crate::direct::recv_into`).
    pub(crate) fn read_buf(&mut self) -> &mut BytesMut {
        self.make_room(self.want());
        &mut self.buf
    }

    /// Appends bytes received elsewhere (e.g. an io_uring provided buffer).
    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.make_room(self.want().max(data.len()));
        self.buf.extend_from_slice(data);
    }

    /// Makes room for `additional` more bytes, moving (in place, or to another buffer) only
    /// the bytes not yet framed. The other buffer, for the rest of a large frame, is the
    /// one it last replaced if its payloads are gone (else a new one), with a chunk more
    /// than the frame: the read that ends the frame may bring the next one's start too.
    ///
    /// Not `BytesMut::reserve`: when this is the only handle on its allocation, `reserve`
    /// reallocates the frames already split off ahead of it too, and when payloads are
    /// still held it copies the frame in progress, however large.
    fn make_room(&mut self, additional: usize) {
        #[cfg(test)]
        let at = self.buf.as_ptr();
        if !self.buf.try_reclaim(additional) {
            let large = self.header.is_some() && additional > READ_CHUNK;
            let need = self.buf.len() + additional + if large { READ_CHUNK } else { 0 };
            // Small frames leave the previous buffer to the next large one.
            let reusable = if large {
                self.previous.take().and_then(|mut previous| {
                    previous.clear();
                    previous.try_reclaim(need).then_some(previous)
                })
            } else {
                None
            };
            let mut next = reusable.unwrap_or_else(|| {
                #[cfg(test)]
                {
                    self.allocated += 1;
                }
                BytesMut::with_capacity(need)
            });
            next.extend_from_slice(&self.buf);
            let replaced = std::mem::replace(&mut self.buf, next);
            if large {
                self.previous = Some(replaced);
            }
        }
        #[cfg(test)]
        {
            if self.buf.as_ptr() != at {
                self.moved_to_make_room += self.buf.len();
            }
        }
    }

    /// An empty buffer with room for (at least) the `n` bytes that come next in the stream,
    /// for a receive that writes them in place (no copy from an intermediate buffer). It
    /// shares this framer's allocation; give it back with [`Self::append_tail`] and nothing
    /// is copied. Until then, nothing else may be appended.
    pub(crate) fn take_tail(&mut self, n: usize) -> BytesMut {
        self.make_room(n);
        self.buf.split_off(self.buf.len())
    }

    /// Returns a buffer from [`Self::take_tail`], with what was received into it.
    pub(crate) fn append_tail(&mut self, tail: BytesMut) {
        self.buf.unsplit(tail);
    }

    /// The next complete frame, if one has arrived. A bad header is an error for the stream.
    pub(crate) fn next_frame(&mut self) -> Result<Option<(Header, Bytes)>, DecodeError> {
        let h = match self.header {
            Some(h) => h,
            None => {
                if self.buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let h = decode_header(&self.buf[..HEADER_LEN], &self.limits)?;
                if self.handshake && !h.frame_type().is_handshake() {
                    let ty = h.frame_type();
                    return Err(DecodeError::BeforeHandshake { ty });
                }
                if let Some(connection) = self.lane.filter(|&l| l != h.lane) {
                    let frame = h.lane;
                    return Err(DecodeError::OtherLane { frame, connection });
                }
                self.header = Some(h);
                h
            }
        };
        let total = HEADER_LEN + h.payload_len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.header = None;
        self.buf.advance(HEADER_LEN);
        let payload = match h.payload_len {
            // An ACK's, a PING's: nothing to share (a split would still count a reference).
            0 => Bytes::new(),
            n => self.buf.split_to(n as usize).freeze(),
        };
        if self.buf.is_empty() {
            // The stream has drained: a connection that now goes idle, or on with small
            // frames, keeps one buffer, not two.
            self.previous = None;
        }
        Ok(Some((h, payload)))
    }
}

struct TxFrame {
    header: [u8; HEADER_LEN],
    payload: Bytes,
    /// None for the driver's own frames (HELLO).
    token: Option<TxToken>,
    /// Bytes of header + payload already written.
    written: usize,
}

impl TxFrame {
    fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Frames waiting to be written to one connection, in order.
#[derive(Default)]
pub(crate) struct TxQueue {
    frames: VecDeque<TxFrame>,
}

/// At most this many slices per gathering write (IOV_MAX is 1024 on Linux: `sendmsg`
/// fails above it).
pub(crate) const MAX_SLICES: usize = 64;
const _: () = assert!(MAX_SLICES <= 1024);

impl TxQueue {
    pub(crate) fn push(
        &mut self,
        header: [u8; HEADER_LEN],
        payload: Bytes,
        token: Option<TxToken>,
    ) {
        self.frames.push_back(TxFrame {
            header,
            payload,
            token,
            written: 0,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames queued, the one being written included.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether more than `n` bytes are unwritten (looking no further than that).
    pub(crate) fn unwritten_exceeds(&self, n: usize) -> bool {
        let mut unwritten = 0;
        self.frames.iter().any(|f| {
            unwritten += f.len() - f.written;
            unwritten > n
        })
    }

    /// The first `max` unwritten bytes (or all) of the first `out.len() / 2` frames, as
    /// slices for one `writev`, in `out`; returns how many. No allocation: the caller
    /// keeps the array on its stack, and its length (at most [`MAX_SLICES`], for the
    /// kernel) decides how many frames one `writev` takes.
    pub(crate) fn slices_up_to<'a>(&'a self, out: &mut [IoSlice<'a>], mut max: usize) -> usize {
        let frames = out.len() / 2;
        let mut n = 0;
        let mut push = |s: &'a [u8]| {
            if max > 0 && !s.is_empty() {
                let s = &s[..s.len().min(max)];
                max -= s.len();
                out[n] = IoSlice::new(s);
                n += 1;
            }
        };
        for f in self.frames.iter().take(frames) {
            if f.written < HEADER_LEN {
                push(&f.header[f.written..]);
                if !f.payload.is_empty() {
                    push(&f.payload);
                }
            } else {
                push(&f.payload[f.written - HEADER_LEN..]);
            }
        }
        n
    }

    /// The unwritten parts of the queued frames, in order: header bytes (which live in the
    /// queue and may move when it grows) or payload bytes with the `Bytes` that owns them.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&[u8], Option<&Bytes>)> {
        self.frames.iter().flat_map(|f| {
            let (header, payload) = if f.written < HEADER_LEN {
                (&f.header[f.written..], &f.payload[..])
            } else {
                (&[][..], &f.payload[f.written - HEADER_LEN..])
            };
            let header = (!header.is_empty()).then_some((header, None));
            let payload = (!payload.is_empty()).then_some((payload, Some(&f.payload)));
            header.into_iter().chain(payload)
        })
    }

    /// `n` more bytes were written: frames now fully written are done; their tokens are
    /// pushed to `done`.
    pub(crate) fn advance(&mut self, mut n: usize, done: &mut Vec<TxToken>) {
        while n > 0 {
            let f = self.frames.front_mut().expect("wrote more than was queued");
            let step = (f.len() - f.written).min(n);
            f.written += step;
            n -= step;
            if f.written == f.len() {
                let f = self.frames.pop_front().expect("front");
                done.extend(f.token);
            }
        }
    }

    /// Empties the queue (the connection is gone), returning the tokens of frames not done.
    pub(crate) fn abandon(&mut self) -> impl Iterator<Item = TxToken> + '_ {
        self.frames.drain(..).filter_map(|f| f.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanet::lane::Lane;
    use lanet::nid::Nid;
    use lanet::wire::{encode_header, Body, HeaderCheck};
    use proptest::prelude::*;

    fn frame(id: u64, payload: &[u8]) -> ([u8; HEADER_LEN], Bytes) {
        let h = Header {
            hop_limit: 8,
            router_gen: 0,
            lane: Lane::Data,
            credits: 0,
            src: Nid::mem(1, 0),
            dst: Nid::mem(2, 0),
            src_incarnation: 1,
            msg_id: id,
            payload_len: payload.len() as u32,
            body: Body::Put {
                portal: 1,
                match_bits: 2,
                settled_below: 0,
                ack: true,
            },
            attempt: 0,
        };
        (encode_header(&h), Bytes::copy_from_slice(payload))
    }

    /// Writes the queue out at most `cut` bytes at a time into one stream.
    fn write_all(q: &mut TxQueue, cut: usize, tokens: &mut Vec<TxToken>) -> Vec<u8> {
        let mut stream = Vec::new();
        while !q.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            // Slices never cover more than asked (the per-round write budget).
            let count = q.slices_up_to(&mut slices, cut);
            let n: usize = slices[..count].iter().map(|s| s.len()).sum();
            assert!(n > 0 && n <= cut, "{n} bytes for a cut of {cut}");
            for s in &slices[..count] {
                stream.extend_from_slice(s);
            }
            q.advance(n, tokens);
        }
        stream
    }

    proptest! {
        /// Whatever the write sizes and read sizes, frames come out whole and in order.
        #[test]
        fn frames_survive_any_segmentation(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..20),
            write_cut in 1usize..5000,
            read_cut in 1usize..5000,
        ) {
            let mut q = TxQueue::default();
            for (i, p) in payloads.iter().enumerate() {
                let (h, b) = frame(i as u64, p);
                q.push(h, b, Some(TxToken(i as u64)));
            }
            let mut tokens = Vec::new();
            let stream = write_all(&mut q, write_cut, &mut tokens);
            prop_assert_eq!(tokens, (0..payloads.len() as u64).map(TxToken).collect::<Vec<_>>());

            let mut rx = RxFramer::new(Limits::new(1 << 20, HeaderCheck::Crc32));
            let mut got = Vec::new();
            for chunk in stream.chunks(read_cut) {
                rx.extend(chunk);
                while let Some((h, p)) = rx.next_frame().unwrap() {
                    got.push((h.msg_id, p));
                }
            }
            prop_assert_eq!(got.len(), payloads.len());
            for (i, (id, p)) in got.iter().enumerate() {
                prop_assert_eq!(*id, i as u64);
                prop_assert_eq!(&p[..], &payloads[i][..]);
            }
        }
    }

    /// How long the application holds the payloads it is handed.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Held {
        /// Dropped at once: the framer is then the only handle on its buffer.
        Never,
        /// Until the next frame has arrived (as a receiver that hands each payload to
        /// another thread).
        UntilTheNext,
        /// Kept to the end.
        Always,
    }

    /// Reads `stream` as the epoll backend does: `read_buf`, then as much as fits and the
    /// "socket" holds (`arrives` bytes at a time), frames taken after each read. Every
    /// payload must be `payload` when taken, and still when let go of (a buffer used again
    /// too early would have overwritten it). The ids of the frames, and their payloads if
    /// `held` is `Always`.
    fn read_like_epoll(
        rx: &mut RxFramer,
        stream: &[u8],
        arrives: usize,
        held: Held,
        payload: &[u8],
    ) -> Vec<(u64, Bytes)> {
        let (mut at, mut got, mut last) = (0, Vec::new(), None);
        while at < stream.len() {
            let buf = rx.read_buf();
            let spare = buf.capacity() - buf.len();
            assert!(spare > 0, "room to read into");
            let n = spare.min(arrives).min(stream.len() - at);
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
            while let Some((h, p)) = rx.next_frame().unwrap() {
                assert!(p[..] == *payload, "frame {} intact when taken", h.msg_id);
                let kept = match held {
                    Held::Never => Bytes::new(),
                    Held::UntilTheNext => {
                        if let Some(before) = last.replace(p) {
                            assert!(before[..] == *payload, "a held payload intact");
                        }
                        Bytes::new()
                    }
                    Held::Always => p,
                };
                got.push((h.msg_id, kept));
            }
        }
        got
    }

    #[test]
    fn streaming_large_frames_moves_little_of_them_and_reuses_buffers() {
        const SIZE: usize = 1 << 20;
        let payload: Vec<u8> = (0..SIZE as u32).map(|i| (i % 251) as u8).collect();
        let mut stream = Vec::new();
        for id in 0..16 {
            let (h, p) = frame(id, &payload);
            stream.extend_from_slice(&h);
            stream.extend_from_slice(&p);
        }
        // Loopback hands a reader what the writer's pieces left: 256 KiB, 200,000 bytes.
        for held in [Held::Always, Held::UntilTheNext, Held::Never] {
            for arrives in [256 << 10, 200_000, 64 << 10] {
                let mut rx = RxFramer::new(Limits::new(2 << 20, HeaderCheck::Crc32));
                let got = read_like_epoll(&mut rx, &stream, arrives, held, &payload);
                assert_eq!(got.len(), 16);
                for (i, (id, p)) in got.iter().enumerate() {
                    assert_eq!(*id, i as u64);
                    assert!(
                        held != Held::Always || p[..] == payload[..],
                        "frame {i} intact"
                    );
                }
                let (copied, allocated) = (rx.moved_to_make_room, rx.allocated);
                eprintln!(
                    "{arrives} at a time, payloads held {held:?}: {copied} bytes moved, \
                     {allocated} buffers allocated"
                );
                // A frame's first read (before its header says how long it is) may be
                // copied once into a buffer of the frame's size; the rest arrives in place.
                // Growing with a frame's last bytes once copied all of it: more than the
                // stream.
                assert!(
                    copied <= stream.len() / 8,
                    "{copied} bytes moved for 16 frames of {SIZE}, {arrives} at a time, {held:?}"
                );
                // The stream ended with its last frame: drained, it keeps one buffer.
                assert!(
                    rx.previous.is_none(),
                    "a second buffer kept past the stream"
                );
                // Payloads let go of leave their buffers to the frames after them (a new
                // buffer's pages cost the kernel a fault and zeroing each); payloads kept
                // need a buffer each. Three: the first chunk's, then two taking turns.
                if held != Held::Always {
                    assert!(
                        allocated <= 3,
                        "{allocated} buffers for 16 frames, {held:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_payload_received_in_place_is_not_copied_and_completes_the_frame() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (h, _) = frame(7, &payload);
        let mut rx = RxFramer::new(Limits::new(1 << 20, HeaderCheck::Crc32));
        rx.extend(&h);
        rx.extend(&payload[..1000]);
        assert!(rx.next_frame().unwrap().is_none());
        let rest = rx.rest_of_frame();
        assert_eq!(rest, payload.len() - 1000);
        let mut tail = rx.take_tail(rest);
        assert!(tail.is_empty() && tail.capacity() >= rest);
        let at = tail.as_ptr();
        tail.extend_from_slice(&payload[1000..]); // what the kernel would write in place
        assert_eq!(tail.as_ptr(), at, "the tail was not reallocated");
        rx.append_tail(tail);
        let (got, body) = rx.next_frame().unwrap().expect("complete");
        assert_eq!(got.msg_id, 7);
        assert_eq!(&body[..], &payload[..]);
        // The payload sits in the framer's one allocation: header and payload contiguous.
        assert_eq!(body.as_ptr(), at.wrapping_sub(1000));
        assert_eq!(rx.rest_of_frame(), 0);
    }

    #[test]
    fn a_bad_header_is_an_error_and_a_huge_claim_allocates_nothing() {
        let mut rx = RxFramer::new(Limits::new(1024, HeaderCheck::Crc32));
        let (mut h, _) = frame(1, b"");
        h[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // claims 4 GiB (checksum now bad)
        rx.extend(&h);
        assert!(rx.next_frame().is_err());
    }

    /// A short array takes as many whole frames as it has room for, and the rest waits.
    #[test]
    fn a_short_slice_array_takes_the_frames_it_has_room_for() {
        let mut q = TxQueue::default();
        for id in 0..5 {
            let (h, p) = frame(id, b"abc");
            q.push(h, p, Some(TxToken(id)));
        }
        let mut slices = [IoSlice::new(&[]); 8];
        let n = q.slices_up_to(&mut slices, usize::MAX);
        assert_eq!(n, 8, "four frames, header and payload each");
        let frame_len = HEADER_LEN + 3;
        let total: usize = slices[..n].iter().map(|s| s.len()).sum();
        assert_eq!(total, 4 * frame_len);
        let mut done = Vec::new();
        q.advance(total, &mut done);
        assert_eq!(done, (0..4).map(TxToken).collect::<Vec<_>>());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn unwritten_bytes_count_from_what_is_written_of_the_first_frame() {
        let mut q = TxQueue::default();
        assert!(!q.unwritten_exceeds(0));
        for id in 0..2 {
            let (h, p) = frame(id, b"abc");
            q.push(h, p, None);
        }
        let all = 2 * (HEADER_LEN + 3);
        assert!(q.unwritten_exceeds(all - 1));
        assert!(!q.unwritten_exceeds(all));
        q.advance(10, &mut Vec::new());
        assert!(q.unwritten_exceeds(all - 11));
        assert!(!q.unwritten_exceeds(all - 10));
    }

    #[test]
    fn abandoning_returns_unfinished_tokens_only() {
        let mut q = TxQueue::default();
        let (h, p) = frame(1, b"abc");
        q.push(h, p.clone(), Some(TxToken(1)));
        q.push(h, p, None);
        let mut done = Vec::new();
        q.advance(10, &mut done);
        assert!(done.is_empty());
        assert_eq!(q.abandon().collect::<Vec<_>>(), vec![TxToken(1)]);
        assert!(q.is_empty());
    }
}
