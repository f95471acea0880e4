//! The memory channel: what a task process whose memory is real and the
//! daemon say to each other besides the calls (`wire`), over a
//! `SOCK_SEQPACKET` socket pair the process made and whose other end the
//! daemon took at `memory_attach` (one message per packet, postcard, at
//! most [`MAX_PACKET`] bytes; descriptors ride with the replies).
//!
//! ```text
//!   process                                   daemon
//!   vm_map (a call) ───────────────────────►  address A in the arena
//!   Windows { A, len } ────────────────────►  objects settled for good
//!   ◄──────────── Windows { windows, next } + one memfd per window
//!   mmap each memfd at its window (MAP_FIXED in the arena)
//!   Mapped { A, len } ─────────────────────►  registered with the uffd
//!   ◄──────────────────────────── Mapped
//!   loads and stores: faults go to the daemon through the uffd
//! ```
//!
//! The daemon trusts nothing in a request: it answers from the task's own
//! map, and a range the process did not map as told fails its
//! registration.

use crate::types::{KernError, VmAddr, VmProt};
use serde::{Deserialize, Serialize};

/// The largest packet either side sends or reads.
pub const MAX_PACKET: usize = 64 * 1024;

/// The most windows (and so descriptors) in one reply; a range with more
/// is answered in parts ([`MemReply::Windows::next`]).
pub const MAX_WINDOWS: usize = 128;

/// What the process asks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemRequest {
    /// The windows of `[start, start + len)` → [`MemReply::Windows`].
    Windows { start: VmAddr, len: u64 },
    /// The process has mapped the windows of `[start, start + len)` as it
    /// was told → [`MemReply::Mapped`].
    Mapped { start: VmAddr, len: u64 },
}

/// One window: map the `i`-th descriptor of the reply, from `offset`, at
/// `[start, start + len)`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemWindow {
    pub start: VmAddr,
    pub len: u64,
    pub offset: u64,
    /// What the task may do there (the daemon enforces it).
    pub prot: VmProt,
}

/// What the daemon answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemReply {
    /// The windows, in address order, with one descriptor each, in the
    /// same order. Gaps are addresses no entry maps. `next`: where the
    /// rest of the range begins, if the reply could not hold it all.
    Windows {
        windows: Vec<MemWindow>,
        next: Option<VmAddr>,
    },
    Mapped,
    /// The request failed with this Mach error.
    Error(KernError),
    /// The request could not be read: what was wrong with it.
    Malformed(String),
}

/// Encodes a packet.
pub fn encode<T: Serialize>(m: &T) -> Vec<u8> {
    postcard::to_stdvec(m).expect("memory channel messages always encode")
}

/// Decodes a packet: `Err` says what was wrong.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("bad memory channel packet ({} bytes): {e}", bytes.len()))
}
