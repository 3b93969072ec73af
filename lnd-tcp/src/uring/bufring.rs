//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel picks a buffer for each
//! multishot receive completion; we copy the bytes out and hand the buffer straight back.
//!
//! Memory: the ring array is a few KiB (locked with the ring); the buffers are ordinary heap
//! memory the kernel copies into, so the 8 MiB locked-memory limit of these machines is
//! never approached.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

const PAGE: usize = 4096;

pub(crate) struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    buf_size: usize,
    /// Our copy of the ring's tail: buffers handed to the kernel so far (wrapping).
    tail: u16,
    bgid: u16,
}

impl BufRing {
    /// `entries` buffers of `buf_size` bytes as buffer group `bgid`. `entries` must be a
    /// power of two.
    ///
    /// # Safety
    /// The kernel writes the buffers and reads the ring until the group is unregistered
    /// or the io_uring instance is gone: the caller drops this only after one of those
    /// (leaking it if unregistering failed).
    pub(crate) unsafe fn new(
        submitter: &Submitter<'_>,
        bgid: u16,
        entries: u16,
        buf_size: usize,
    ) -> io::Result<BufRing> {
        assert!(
            entries.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let ring_layout =
            Layout::from_size_align(ring_bytes.max(PAGE), PAGE).map_err(io::Error::other)?;
        let bufs_layout = Layout::from_size_align(usize::from(entries) * buf_size, 64)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size. The memory is zeroed, so every ring entry
        // (including the tail field in entry 0) starts initialised.
        let (ring, bufs) = unsafe { (alloc_zeroed(ring_layout), alloc_zeroed(bufs_layout)) };
        let (Some(ring), Some(bufs)) = (
            NonNull::new(ring.cast::<BufRingEntry>()),
            NonNull::new(bufs),
        ) else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "cannot allocate the receive buffers",
            ));
        };
        let mut br = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            buf_size,
            tail: 0,
            bgid,
        };
        // SAFETY: the ring memory is page aligned, holds `entries` entries, and stays
        // allocated until this value is dropped, which the owner does only after the buffer
        // group is unregistered or the io_uring instance is gone.
        unsafe { submitter.register_buf_ring_with_flags(ring.as_ptr() as u64, entries, bgid, 0)? };
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < `entries`, so the entry lies inside the ring allocation; the kernel
        // only reads entries up to the published tail, and this one is past it until publish.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // SAFETY: bid < entries, so the buffer lies inside the buffer allocation.
        let addr = unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.buf_size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring base is the first entry of an initialised ring; `tail` points at
        // its `resv` field, which the kernel reads as the ring tail. It is a u16 at a 2-byte
        // aligned address, only ever written here, through an atomic with release ordering
        // so the kernel sees the entries before the tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// A completion named buffer `bid`, holding `len` received bytes: `read` sees them,
    /// then the buffer goes back to the kernel. One call per completion, so a buffer is
    /// never handed back twice (two receives would write it at once) nor read once back.
    pub(crate) fn take(&mut self, bid: u16, len: usize, read: impl FnOnce(&[u8])) {
        assert!(
            bid < self.entries && len <= self.buf_size,
            "kernel reported buffer {bid} with {len} bytes"
        );
        // SAFETY: in bounds (checked above). The kernel wrote these bytes before posting the
        // completion that named this buffer, and does not touch the buffer again until it
        // is pushed back below, after `read` (which cannot keep the borrow) has returned.
        let data = unsafe {
            std::slice::from_raw_parts(
                self.bufs.as_ptr().add(usize::from(bid) * self.buf_size),
                len,
            )
        };
        read(data);
        self.push(bid);
        self.publish();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts; the kernel no longer uses
        // them (see `new`'s contract).
        unsafe {
            dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

// SAFETY: the raw pointers are owned allocations; BufRing is used by one thread at a time
// (the LND's driver thread) and moves with it.
unsafe impl Send for BufRing {}
