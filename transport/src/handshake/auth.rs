//! Optional pre-shared-key authentication of connections: an HMAC-SHA256 challenge and
//! response carried by the HELLO exchange of every LND.
//!
//! Three messages, the first two of which every connection exchanges anyway:
//!
//! ```text
//! dialler  -> HELLO, nonce Nd
//! acceptor -> HELLO, nonce Na, proof: HMAC(key, "acceptor" | transcript)
//! dialler  -> AUTH,            proof: HMAC(key, "dialler"  | transcript)
//! ```
//!
//! The transcript names both NIDs and incarnations, the lane, both HELLOs' credits and
//! payload limits, and both nonces, so a proof is good for one connection only: each side's
//! proof answers the other's fresh nonce. The dialler checks the acceptor before it sends
//! anything else; the acceptor brings the connection up only once the AUTH checks out, so
//! that nothing from an unauthenticated peer reaches the core, health frames included. The
//! dialler sends its frames right behind its AUTH: authenticating costs it no round trip.
//!
//! A node holds one or two keys. A proof carries a MAC under each of the prover's keys and
//! the verifier accepts it if one matches any of its own (each comparison in constant
//! time), so rolling a new key out takes two steps, each in any order of nodes: add the new
//! key everywhere, then remove the old one everywhere.
//!
//! What this proves is that the peer holds a key: frames after the handshake are neither
//! signed nor encrypted (as with LNet's privileged ports). Where an attacker on the path is
//! in the threat model, run lanet over IPsec or WireGuard.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use super::PeerHello;
use crate::nid::{Nid, NID_WIRE_LEN};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of one MAC (HMAC-SHA256, untruncated).
pub const MAC_LEN: usize = 32;
/// Keys a node may hold at once: the one in use and the one being rolled in or out.
pub const MAX_KEYS: usize = 2;
/// Shortest key accepted, in bytes (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted, in bytes (HMAC-SHA256 hashes anything longer than its 64-byte
/// block first; nothing is gained beyond it).
pub const MAX_KEY_LEN: usize = 64;

/// A nonce: fresh random bytes for each connection.
pub type Nonce = [u8; NONCE_LEN];

/// A fresh nonce from the operating system's random source (the one system call of this
/// module; drivers call it and hand the nonce to the handshake).
pub fn fresh_nonce() -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    // The OS source fails only where the kernel has none (before boot's entropy on very
    // old kernels): nothing sensible can authenticate there.
    getrandom::fill(&mut n).expect("the operating system's random source works");
    n
}

/// Which side of a connection proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Dialler,
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialler => b"lanet-auth-v1 dialler",
            Role::Acceptor => b"lanet-auth-v1 acceptor",
        }
    }
}

/// What both sides MAC: the two HELLOs and the two nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    dialler: PeerHello,
    acceptor: PeerHello,
    dialler_nonce: Nonce,
    acceptor_nonce: Nonce,
}

impl Transcript {
    fn mac_input(&self, role: Role, mac: &mut HmacSha256) {
        mac.update(role.label());
        for h in [&self.dialler, &self.acceptor] {
            let mut nid = [0u8; NID_WIRE_LEN];
            h.nid.encode(&mut nid);
            mac.update(&nid);
            mac.update(&h.incarnation.to_le_bytes());
            mac.update(&[h.lane as u8]);
            mac.update(&h.credits.to_le_bytes());
            mac.update(&h.max_payload.to_le_bytes());
        }
        mac.update(&self.dialler_nonce);
        mac.update(&self.acceptor_nonce);
    }
}

/// One node's pre-shared keys (1 or 2). Its `Debug` shows fingerprints, never key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    keys: Vec<Vec<u8>>,
}

/// Why keys cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key in it (one key per line, in hex; `openssl rand -hex 32` makes one)")]
    Empty,
    #[error("{0} keys in it: at most {MAX_KEYS} (the one in use and the one being rolled)")]
    TooMany(usize),
    #[error("line {line}: not a key: {why}")]
    BadKey { line: usize, why: String },
    #[error("it is readable or writable by others (mode {mode:o}): run chmod 600 on it")]
    Exposed { mode: u32 },
    #[error("it is not a regular file")]
    NotAFile,
    #[error("cannot read it: {0}")]
    Io(String),
}

/// A key file that cannot be used: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key file {path}: {error}")]
pub struct KeyFileError {
    pub path: std::path::PathBuf,
    pub error: KeyError,
}

impl Keys {
    /// Keys from their bytes: 1 or 2, each of 16 to 64 bytes.
    pub fn new(keys: Vec<Vec<u8>>) -> Result<Keys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany(keys.len()));
        }
        for (i, k) in keys.iter().enumerate() {
            check_key_len(k, i + 1)?;
        }
        Ok(Keys { keys })
    }

    /// Keys from a key file's text: one key per line in hex; blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Keys, KeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = decode_hex(line).map_err(|why| KeyError::BadKey {
                line: i + 1,
                why: why.to_owned(),
            })?;
            check_key_len(&key, i + 1)?;
            keys.push(key);
        }
        Keys::new(keys)
    }

    /// Keys from a key file, which must be a regular file that only its owner may read or
    /// write (mode 0600 or stricter), as ssh insists of its private keys.
    pub fn load(path: impl AsRef<Path>) -> Result<Keys, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let fail = |error| KeyFileError {
            path: path.to_owned(),
            error,
        };
        use std::io::Read;
        let io = |e: std::io::Error| fail(KeyError::Io(e.to_string()));
        // Opened once: the mode checked is the mode of what is read.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(fail(KeyError::NotAFile));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(KeyError::Exposed { mode }));
        }
        let mut text = String::new();
        // A key file is a few lines: a bigger one is not a key file.
        (&mut file)
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(io)?;
        Keys::parse(&text).map_err(fail)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A short public name of each key (the first bytes of a hash of it), for logs and for
    /// telling which nodes hold which key without showing it.
    pub fn fingerprints(&self) -> Vec<String> {
        use sha2::Digest;
        self.keys
            .iter()
            .map(|k| {
                let mut h = Sha256::new();
                h.update(b"lanet-auth-v1 fingerprint");
                h.update(k);
                h.finalize()[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    }

    fn mac(key: &[u8], role: Role, t: &Transcript) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        t.mac_input(role, &mut mac);
        mac
    }

    fn prove(&self, role: Role, t: &Transcript) -> Proof {
        let mut p = Proof {
            macs: [[0; MAC_LEN]; MAX_KEYS],
            count: self.keys.len() as u8,
        };
        for (slot, key) in p.macs.iter_mut().zip(&self.keys) {
            slot.copy_from_slice(&Self::mac(key, role, t).finalize().into_bytes());
        }
        p
    }

    /// Whether one of the proof's MACs matches one of our keys. Every pair is compared, in
    /// constant time, whatever matched first.
    fn verify(&self, role: Role, t: &Transcript, proof: &Proof) -> bool {
        let mut ok = false;
        for key in &self.keys {
            for got in proof.macs() {
                ok |= Self::mac(key, role, t).verify_slice(got).is_ok();
            }
        }
        ok
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({})", self.fingerprints().join(", "))
    }
}

/// A key of `line` (1-based) must have 16 to 64 bytes.
fn check_key_len(key: &[u8], line: usize) -> Result<(), KeyError> {
    if (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
        return Ok(());
    }
    Err(KeyError::BadKey {
        line,
        why: format!(
            "{} bytes; a key has {MIN_KEY_LEN} to {MAX_KEY_LEN}",
            key.len()
        ),
    })
}

fn decode_hex(s: &str) -> Result<Vec<u8>, &'static str> {
    if !s.len().is_multiple_of(2) {
        return Err("an odd number of hex digits");
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err("not hex (0-9, a-f)"),
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A side's proof: one MAC per key it holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    macs: [[u8; MAC_LEN]; MAX_KEYS],
    count: u8,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof({} MACs)", self.count)
    }
}

/// Why bytes are not an authentication message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed authentication data: {0}")]
pub struct Malformed(pub &'static str);

impl Proof {
    /// Bytes of the longest encoding.
    pub const MAX_LEN: usize = 4 + MAX_KEYS * MAC_LEN;

    fn macs(&self) -> &[[u8; MAC_LEN]] {
        &self.macs[..usize::from(self.count)]
    }

    /// `count` (1 byte), 3 zero bytes, then the MACs.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![self.count, 0, 0, 0];
        for m in self.macs() {
            b.extend_from_slice(m);
        }
        b
    }

    /// A proof at the start of `b`, and the bytes it took. `None` for a count of 0 (the
    /// dialler's HELLO, which proves nothing yet).
    fn decode_prefix(b: &[u8]) -> Result<(Option<Proof>, usize), Malformed> {
        let head = b.get(..4).ok_or(Malformed("too short"))?;
        if head[1..] != [0, 0, 0] {
            return Err(Malformed("reserved bytes set"));
        }
        let count = head[0];
        if usize::from(count) > MAX_KEYS {
            return Err(Malformed("more MACs than keys a node may hold"));
        }
        let len = 4 + usize::from(count) * MAC_LEN;
        let macs = b.get(4..len).ok_or(Malformed("too short"))?;
        if count == 0 {
            return Ok((None, len));
        }
        let mut p = Proof {
            macs: [[0; MAC_LEN]; MAX_KEYS],
            count,
        };
        for (slot, m) in p.macs.iter_mut().zip(macs.chunks(MAC_LEN)) {
            slot.copy_from_slice(m);
        }
        Ok((Some(p), len))
    }

    /// The payload of an AUTH frame: exactly one proof.
    pub fn decode(b: &[u8]) -> Result<Proof, Malformed> {
        match Proof::decode_prefix(b)? {
            (Some(p), len) if len == b.len() => Ok(p),
            (None, _) => Err(Malformed("a proof without a MAC")),
            _ => Err(Malformed("bytes after the proof")),
        }
    }
}

/// What a HELLO carries for authentication: the sender's nonce, and from the acceptor
/// its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloAuth {
    pub nonce: Nonce,
    pub proof: Option<Proof>,
}

impl HelloAuth {
    /// Bytes of the longest encoding.
    pub const MAX_LEN: usize = NONCE_LEN + Proof::MAX_LEN;

    /// The nonce, then the proof (a count of 0 when there is none).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.nonce.to_vec();
        match &self.proof {
            Some(p) => b.extend(p.encode()),
            None => b.extend([0, 0, 0, 0]),
        }
        b
    }

    /// An extension at the start of `b`, and the bytes it took (transports may pad).
    pub fn decode_prefix(b: &[u8]) -> Result<(HelloAuth, usize), Malformed> {
        let nonce: Nonce = b
            .get(..NONCE_LEN)
            .ok_or(Malformed("too short"))?
            .try_into()
            .expect("16 bytes");
        let (proof, len) = Proof::decode_prefix(&b[NONCE_LEN..])?;
        Ok((HelloAuth { nonce, proof }, NONCE_LEN + len))
    }

    /// Exactly one extension (a TCP HELLO's payload).
    pub fn decode(b: &[u8]) -> Result<HelloAuth, Malformed> {
        match HelloAuth::decode_prefix(b)? {
            (a, len) if len == b.len() => Ok(a),
            _ => Err(Malformed("bytes after the HELLO's authentication")),
        }
    }
}

/// Which connections a node accepts (LNet's `accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accept {
    /// Only from peers that prove they hold one of our keys; and dialled peers must prove
    /// it too. The default when the node has keys; needs them.
    Secure,
    /// From any peer. With keys, a peer that sends a proof must send a good one, and one
    /// that sends none is let in unauthenticated: for rolling keys out on a live cluster.
    /// The default without keys.
    #[default]
    All,
    /// `none`: the node listens on no port and only dials (a client that needs no calls
    /// back). Peers it dials must prove they hold a key, if it has keys.
    DialOnly,
}

impl Accept {
    pub fn name(self) -> &'static str {
        match self {
            Accept::Secure => "secure",
            Accept::All => "all",
            Accept::DialOnly => "none",
        }
    }
}

impl std::str::FromStr for Accept {
    type Err = String;
    fn from_str(s: &str) -> Result<Accept, String> {
        match s {
            "secure" => Ok(Accept::Secure),
            "all" => Ok(Accept::All),
            "none" => Ok(Accept::DialOnly),
            _ => Err(format!("accept is secure, all or none, not {s:?}")),
        }
    }
}

/// A node's authentication settings, given to each of its drivers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    keys: Option<Arc<Keys>>,
    accept: Accept,
}

/// Why a handshake fails authentication. Each says which side lacks what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{peer} sent no proof of a key (it has no key_file), and this node requires one of its peers (accept = {accept})")]
    PeerHasNoKey { peer: Nid, accept: &'static str },
    #[error(
        "{peer}'s proof matches none of this node's keys ({ours}): the two hold different keys"
    )]
    WrongKey { peer: Nid, ours: String },
    #[error("{peer}: {malformed}")]
    Malformed { peer: Nid, malformed: Malformed },
}

/// What an acceptor does with a dialler's HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptorStep {
    /// No authentication on this connection (policy allows it): answer with a plain HELLO
    /// and bring it up.
    Open,
    /// Answer with this in our HELLO, then wait for the dialler's AUTH and
    /// [`Auth::check_dialler`] it before bringing the connection up.
    Challenge { reply: HelloAuth, pending: Pending },
}

/// An acceptor's connection awaiting the dialler's AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    transcript: Transcript,
}

/// What a dialler does once the acceptor's HELLO checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiallerStep {
    /// Nothing more: the connection is up unauthenticated (the policy allows it).
    Open,
    /// Send this proof in an AUTH frame, then the connection is up.
    Prove(Proof),
}

impl Auth {
    /// Settings with `keys` (or none) and `accept` (the default for the keys if None).
    /// `Secure` without keys cannot be: it would accept nobody.
    pub fn new(keys: Option<Keys>, accept: Option<Accept>) -> Result<Auth, String> {
        let accept = accept.unwrap_or(if keys.is_some() {
            Accept::Secure
        } else {
            Accept::All
        });
        if accept == Accept::Secure && keys.is_none() {
            return Err("accept = \"secure\" needs keys: set [auth] key_file".to_owned());
        }
        Ok(Auth {
            keys: keys.map(Arc::new),
            accept,
        })
    }

    /// No keys; accept every connection (lanet without authentication).
    pub fn open() -> Auth {
        Auth::default()
    }

    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_deref()
    }

    pub fn accept(&self) -> Accept {
        self.accept
    }

    /// Whether the node listens for connections at all.
    pub fn listens(&self) -> bool {
        self.accept != Accept::DialOnly
    }

    /// Whether a peer that does not prove a key is refused.
    fn proof_required(&self) -> bool {
        self.keys.is_some() && self.accept != Accept::All
    }

    /// What a dialler adds to its HELLO: a nonce (drawn from `nonce`), if it has keys.
    pub fn dialler_hello(&self, nonce: impl FnOnce() -> Nonce) -> Option<HelloAuth> {
        self.keys.as_ref().map(|_| HelloAuth {
            nonce: nonce(),
            proof: None,
        })
    }

    fn peer_has_no_key(&self, peer: Nid) -> AuthError {
        AuthError::PeerHasNoKey {
            peer,
            accept: self.accept.name(),
        }
    }

    /// An acceptor received `dialler`'s HELLO, carrying `got`: what to answer. `local` is
    /// the acceptor's HELLO; `nonce` draws a fresh nonce (only if one is needed).
    pub fn acceptor_step(
        &self,
        local: &PeerHello,
        dialler: &PeerHello,
        got: Option<&HelloAuth>,
        nonce: impl FnOnce() -> Nonce,
    ) -> Result<AcceptorStep, AuthError> {
        let peer = dialler.nid;
        let malformed = |m| AuthError::Malformed { peer, malformed: m };
        let (keys, got) = match (&self.keys, got) {
            (None, _) => return Ok(AcceptorStep::Open),
            (Some(_), None) if self.proof_required() => return Err(self.peer_has_no_key(peer)),
            (Some(_), None) => return Ok(AcceptorStep::Open),
            (Some(keys), Some(got)) => (keys, got),
        };
        if got.proof.is_some() {
            return Err(malformed(Malformed("a dialler's HELLO carries a proof")));
        }
        let nonce = nonce();
        let transcript = Transcript {
            dialler: *dialler,
            acceptor: *local,
            dialler_nonce: got.nonce,
            acceptor_nonce: nonce,
        };
        Ok(AcceptorStep::Challenge {
            reply: HelloAuth {
                nonce,
                proof: Some(keys.prove(Role::Acceptor, &transcript)),
            },
            pending: Pending { transcript },
        })
    }

    /// The dialler's AUTH arrived for a connection answered with a challenge.
    pub fn check_dialler(&self, pending: &Pending, proof: &Proof) -> Result<(), AuthError> {
        let keys = self
            .keys
            .as_ref()
            .expect("a challenge is sent only with keys");
        if keys.verify(Role::Dialler, &pending.transcript, proof) {
            Ok(())
        } else {
            Err(self.wrong_key(pending.transcript.dialler.nid))
        }
    }

    /// A dialler received the acceptor's HELLO (already checked as a HELLO), carrying
    /// `got`, in answer to ours (`local`, with `sent` as our nonce if we sent one).
    pub fn dialler_step(
        &self,
        local: &PeerHello,
        acceptor: &PeerHello,
        sent: Option<Nonce>,
        got: Option<&HelloAuth>,
    ) -> Result<DiallerStep, AuthError> {
        let peer = acceptor.nid;
        let malformed = |m| AuthError::Malformed { peer, malformed: m };
        let (keys, dialler_nonce) = match (&self.keys, sent) {
            (Some(keys), Some(nonce)) => (keys, nonce),
            _ if got.is_some() => {
                return Err(malformed(Malformed("a proof we did not ask for")));
            }
            // With keys, a driver that sent no nonce cannot authenticate: fail closed.
            (Some(_), None) if self.proof_required() => return Err(self.peer_has_no_key(peer)),
            _ => return Ok(DiallerStep::Open),
        };
        let Some(got) = got else {
            return if self.proof_required() {
                Err(self.peer_has_no_key(peer))
            } else {
                Ok(DiallerStep::Open)
            };
        };
        let proof = got
            .proof
            .ok_or(malformed(Malformed("an acceptor's HELLO without a proof")))?;
        let transcript = Transcript {
            dialler: *local,
            acceptor: *acceptor,
            dialler_nonce,
            acceptor_nonce: got.nonce,
        };
        if !keys.verify(Role::Acceptor, &transcript, &proof) {
            return Err(self.wrong_key(peer));
        }
        Ok(DiallerStep::Prove(keys.prove(Role::Dialler, &transcript)))
    }

    fn wrong_key(&self, peer: Nid) -> AuthError {
        let ours = self.keys.as_ref().map_or(Vec::new(), |k| k.fingerprints());
        AuthError::WrongKey {
            peer,
            ours: ours.join(", "),
        }
    }
}

#[cfg(test)]
mod tests;
