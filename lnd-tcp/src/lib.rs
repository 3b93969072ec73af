//! `lanet-lnd-tcp`: the TCP network driver (LND) for lanet.
//!
//! Planned shape (see the TCP LND issue): one TCP connection per lane per peer pair, so a
//! socket buffer full of bulk data never delays a health frame; an io_uring backend (one ring
//! per driver thread, multishot receive into a provided-buffer ring, registered buffers or
//! `SEND_ZC` for large payloads) and a mio (epoll) fallback chosen automatically when io_uring
//! is unavailable. It implements [`lanet::lnd::Lnd`] and uses [`lanet::handshake`] for HELLO.
//!
//! Nothing is implemented here yet; the crate exists so the workspace shows the architecture.
