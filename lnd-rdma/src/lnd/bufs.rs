//! Registered message buffers shared by every connection of an NI, as o2iblnd's pools:
//! one pool for SENDs, and per lane a shared receive queue with a pool of its own. An idle
//! connection holds none of them: receive memory follows traffic, not the number of peers.
//!
//! Pools grow by chunks (one registration each) and never shrink. The send pool grows when
//! a SEND finds it empty, so it is bounded by the SENDs in flight. A receive pool doubles
//! when a burst of receives (reaped in consecutive polls, until one finds the CQ drained)
//! reaches half of its buffers: arrivals were outrunning reposts. Under sustained load
//! that never lets the CQ drain it keeps doubling, up to its limit. Short of that, a
//! sender whose message finds no posted receive is told to retry (RNR, retried without
//! limit), so a full pool slows senders down and loses nothing.

use lanet::lane::Lane;

use crate::mr::{Mr, Sge};
use crate::srq::Srq;
use crate::verbs::{Pd, VerbsError};

/// Buffers per registration, at most (256 KiB of 4 KiB messages).
const CHUNK_MAX: usize = 64;

/// Buffers of one size (an NI's messages), registered for local access, handed out by
/// index.
pub(crate) struct BufPool {
    chunks: Vec<Mr>,
    buf_size: usize,
    chunk: usize,
    max: usize,
    free: Vec<u32>,
}

impl BufPool {
    /// A pool that registers `chunk` buffers at a time, up to `max` (rounded down to whole
    /// chunks, at least one: never past a device limit `max` was clamped to). Registers
    /// nothing yet.
    pub(crate) fn new(buf_size: usize, chunk: usize, max: usize) -> BufPool {
        let chunk = chunk.clamp(1, CHUNK_MAX).min(max.max(1));
        BufPool {
            chunks: Vec::new(),
            buf_size,
            chunk,
            max: (max / chunk).max(1) * chunk,
            free: Vec::new(),
        }
    }

    /// Buffers registered.
    pub(crate) fn len(&self) -> usize {
        self.chunks.len() * self.chunk
    }

    /// Bytes registered.
    pub(crate) fn bytes(&self) -> usize {
        self.len() * self.buf_size
    }

    /// Bytes of each buffer.
    pub(crate) fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub(crate) fn at_max(&self) -> bool {
        self.len() >= self.max
    }

    /// Registers another chunk; false if the pool is at its limit.
    pub(crate) fn grow(&mut self, pd: &Pd) -> Result<bool, VerbsError> {
        if self.at_max() {
            return Ok(false);
        }
        let base = self.len();
        self.chunks.push(Mr::new(pd, self.chunk * self.buf_size)?);
        let end = u32::try_from(base + self.chunk).expect("pools stay far below 4 G buffers");
        self.free.extend((base as u32..end).rev());
        Ok(true)
    }

    /// A free buffer, registering a chunk if none is free; `None` at the limit.
    pub(crate) fn take(&mut self, pd: &Pd) -> Result<Option<u32>, VerbsError> {
        if self.free.is_empty() && !self.grow(pd)? {
            return Ok(None);
        }
        Ok(self.free.pop())
    }

    /// Whether more than `reserve` buffers are free now, registering chunks as needed
    /// (so [`BufPool::take`] gives one without touching the reserve). An error:
    /// registering failed.
    pub(crate) fn ready_beyond(&mut self, reserve: usize, pd: &Pd) -> Result<bool, VerbsError> {
        while self.free.len() <= reserve {
            if !self.grow(pd)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Buffers free now.
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Buffers it may register, at most.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Buffers taken and not given back.
    pub(crate) fn in_use(&self) -> usize {
        self.len() - self.free.len()
    }

    /// Whether a registered buffer is free now.
    pub(crate) fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Every free buffer, taken.
    pub(crate) fn take_all_free(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.free)
    }

    pub(crate) fn give(&mut self, i: u32) {
        debug_assert!((i as usize) < self.len() && !self.free.contains(&i));
        self.free.push(i);
    }

    /// Buffer `i`'s chunk and its offset there.
    fn place(&self, i: u32) -> (usize, usize) {
        let i = i as usize;
        (i / self.chunk, (i % self.chunk) * self.buf_size)
    }

    /// The element for the first `len` bytes of buffer `i`.
    pub(crate) fn sge(&self, i: u32, len: usize) -> Sge {
        let (chunk, offset) = self.place(i);
        self.chunks[chunk].sge(offset, len.min(self.buf_size))
    }

    /// Buffer `i`'s first `len` bytes, if `i` is one of ours and `len` fits.
    pub(crate) fn get(&self, i: u32, len: usize) -> Option<&[u8]> {
        if i as usize >= self.len() || len > self.buf_size {
            return None;
        }
        let (chunk, offset) = self.place(i);
        Some(self.chunks[chunk].range(offset, len))
    }

    pub(crate) fn get_mut(&mut self, i: u32) -> &mut [u8] {
        let (chunk, offset) = self.place(i);
        self.chunks[chunk].range_mut(offset, self.buf_size)
    }
}

/// How a lane's shared receive queue is sized: buffers posted at first, and at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvPool {
    pub initial: usize,
    pub max: usize,
}

impl RecvPool {
    /// 256 buffers at first and 4,096 at most on the data lane (1 and 16 MiB of 4 KiB
    /// messages); a quarter of that on the health lane, whose messages are few and small.
    pub fn default_for(lane: Lane) -> RecvPool {
        match lane {
            Lane::Data => RecvPool {
                initial: 256,
                max: 4096,
            },
            Lane::Health => RecvPool {
                initial: 64,
                max: 1024,
            },
        }
    }
}

/// A lane's shared receive queue and the buffers posted to it.
pub(crate) struct SharedRecv {
    srq: Srq,
    bufs: BufPool,
    posted: usize,
    /// Receives reaped since the lane's CQ was last seen drained.
    burst: usize,
}

impl SharedRecv {
    /// Creates the SRQ with room for `sizing.max` (within what the device allows, at
    /// least `initial`) and posts `sizing.initial` buffers.
    pub(crate) fn new(
        pd: &Pd,
        lane: Lane,
        buf_size: usize,
        sizing: RecvPool,
        device_max: usize,
    ) -> Result<SharedRecv, VerbsError> {
        if device_max == 0 {
            return Err(VerbsError {
                call: "ibv_query_device",
                errno: libc::EOPNOTSUPP,
                context: "the device has no shared receive queues, which the RDMA LND needs".into(),
            });
        }
        let initial = sizing.initial.clamp(1, device_max);
        let max = sizing.max.clamp(initial, device_max);
        let mut bufs = BufPool::new(buf_size, initial.min(CHUNK_MAX), max);
        let srq = Srq::new(pd, bufs.max)?;
        // Whole chunks, within the limit.
        while bufs.len() < initial && bufs.grow(pd)? {}
        let mut recv = SharedRecv {
            srq,
            bufs,
            posted: 0,
            burst: 0,
        };
        recv.post_free().map_err(|e| VerbsError {
            context: format!("{lane} lane's receives: {}", e.context),
            ..e
        })?;
        Ok(recv)
    }

    pub(crate) fn srq(&self) -> &Srq {
        &self.srq
    }

    /// Buffers registered (each posted, or holding a message being read).
    pub(crate) fn len(&self) -> usize {
        self.bufs.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bufs.bytes()
    }

    /// Bytes of each of its buffers: the largest message it receives.
    pub(crate) fn buf_size(&self) -> usize {
        self.bufs.buf_size()
    }

    /// Buffers it may grow to (what its CQ must have room for).
    pub(crate) fn max_len(&self) -> usize {
        self.bufs.max
    }

    pub(crate) fn posted(&self) -> usize {
        self.posted
    }

    /// Posts every free buffer. A buffer whose post fails stays free (for the next try).
    pub(crate) fn post_free(&mut self) -> Result<(), VerbsError> {
        let mut free = self.bufs.take_all_free().into_iter();
        while let Some(i) = free.next() {
            if let Err(e) = self.post(i) {
                // This one and the rest stay free.
                for j in std::iter::once(i).chain(free) {
                    self.bufs.give(j);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn post(&mut self, i: u32) -> Result<(), VerbsError> {
        let sge = self.bufs.sge(i, self.bufs.buf_size());
        // SAFETY: buffer `i` belongs to this pool. Its registration outlives every QP that
        // can write into it: `RdmaLnd` drops its connections (`conns`, the first field)
        // before `ctx` and this pool, and `SharedRecv` drops `srq` before `bufs`. We do not
        // touch the buffer until its receive completes.
        unsafe { self.srq.post_recv(sge, recv_wr_id(i)) }?;
        self.posted += 1;
        Ok(())
    }

    /// A receive into buffer `i` completed: its first `len` bytes, if `i` and `len` are
    /// plausible. The buffer is ours until [`SharedRecv::repost`].
    pub(crate) fn completed(&mut self, i: u32, len: usize) -> Option<&[u8]> {
        self.posted = self.posted.saturating_sub(1);
        self.bufs.get(i, len)
    }

    /// Posts buffer `i` again (its message has been copied out). A failure keeps it free
    /// for [`SharedRecv::post_free`].
    pub(crate) fn repost(&mut self, i: u32) -> Result<(), VerbsError> {
        if i as usize >= self.bufs.len() {
            return Ok(()); // not ours: a peer cannot make us post a wild buffer
        }
        self.post(i).inspect_err(|_| self.bufs.give(i))
    }

    /// A poll of the lane's CQ reaped `receives` receives and found it `drained` (fewer
    /// completions than asked for). Returns true if the pool should grow: this burst used
    /// half of what is posted before the CQ ran dry.
    pub(crate) fn note_poll(&mut self, receives: usize, drained: bool) -> bool {
        self.burst += receives;
        let grow = !self.bufs.at_max() && self.burst * 2 >= self.bufs.len();
        if drained || grow {
            self.burst = 0;
        }
        grow
    }

    /// Doubles the pool (within its limit) and posts the new buffers; returns how many
    /// were added.
    pub(crate) fn grow(&mut self, pd: &Pd) -> Result<usize, VerbsError> {
        let before = self.bufs.len();
        while self.bufs.len() < 2 * before && self.bufs.grow(pd)? {}
        self.post_free()?;
        Ok(self.bufs.len() - before)
    }
}

/// Marks a receive's work request id (the low word holds the buffer).
pub(crate) const RECV_BIT: u64 = 1 << 63;

pub(crate) fn recv_wr_id(buf: u32) -> u64 {
    RECV_BIT | u64::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_down_to_whole_chunks_and_chunks_are_bounded() {
        let p = BufPool::new(4096, 4, 10);
        assert_eq!((p.chunk, p.max, p.len()), (4, 8, 0));
        let p = BufPool::new(4096, 1000, 100);
        assert_eq!((p.chunk, p.max), (CHUNK_MAX, 64));
        // A device limit below a chunk: one smaller chunk.
        let p = BufPool::new(4096, 64, 20);
        assert_eq!((p.chunk, p.max), (20, 20));
        let p = BufPool::new(4096, 0, 0);
        assert_eq!((p.chunk, p.max), (1, 1));
    }

    #[test]
    fn receive_wr_ids_are_told_apart_from_sends() {
        assert_ne!(recv_wr_id(0) & RECV_BIT, 0);
        assert_eq!(recv_wr_id(7) & !RECV_BIT, 7);
        // A send's id (connection << 32 | slot) never has the bit: connection ids stay
        // below 2^31 (`RdmaLnd::new_conn_id`).
        let send = (u64::from(u32::MAX >> 1) << 32) | 63;
        assert_eq!(send & RECV_BIT, 0);
    }
}
