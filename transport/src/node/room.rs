//! The room a burst took, given back. A hash map (or heap) keeps its capacity when it
//! empties: after a burst (a client's 50,000 use-once reply buffers, its requests to a
//! peer that came back) a long-lived node would hold that room for good. The node's
//! tables of entries and ops give most of it back once a quarter of it is used, to twice
//! what they hold: well under [`KEPT_ANYWAY`], so that steady use near it does not shrink
//! and grow them in turn (amortised O(1) per removal).

/// Room (in entries) a table keeps whatever it holds.
pub(crate) const KEPT_ANYWAY: usize = 4096;

/// Whether a table holding `len` entries in `room` gives most of its room back.
pub(crate) fn mostly_idle(len: usize, room: usize) -> bool {
    room > KEPT_ANYWAY && len * 4 < room
}

/// The room such a table keeps for its `len` entries.
pub(crate) fn to_keep(len: usize) -> usize {
    (len * 2).max(1024)
}
