//! Lanes: independent channels between two peers, each with its own credits, buffers and
//! connection. The health lane is served strictly before the data lane.

use std::ops::{Index, IndexMut};

/// A lane. The discriminant is the wire value and the priority order (lower goes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Small fixed-size health frames (PING, PONG): strict priority, never behind data.
    Health = 0,
    /// Everything else: PUT, GET, ACK, REPLY.
    Data = 1,
}

impl Lane {
    /// All lanes in service order: health first.
    pub const ALL: [Lane; 2] = [Lane::Health, Lane::Data];

    pub(crate) fn from_wire(v: u8) -> Option<Lane> {
        match v {
            0 => Some(Lane::Health),
            1 => Some(Lane::Data),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::Health => "health",
            Lane::Data => "data",
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerLane<T>(pub [T; 2]);

impl<T> PerLane<T> {
    pub fn new(health: T, data: T) -> Self {
        PerLane([health, data])
    }

    pub fn iter(&self) -> impl Iterator<Item = (Lane, &T)> {
        Lane::ALL.into_iter().zip(self.0.iter())
    }
}

impl<T> Index<Lane> for PerLane<T> {
    type Output = T;
    fn index(&self, lane: Lane) -> &T {
        &self.0[lane as usize]
    }
}

impl<T> IndexMut<Lane> for PerLane<T> {
    fn index_mut(&mut self, lane: Lane) -> &mut T {
        &mut self.0[lane as usize]
    }
}
