//! The contract between the machine-independent VM and the MMU.
//!
//! The VM (`crate::vm`) decides *what* is mapped; a `Pmap` implementation
//! makes the hardware (here the software MMU, [`soft`]) agree. The VM
//! almost never reads page tables back to make decisions: a pmap may forget
//! a mapping (but never the modified bit of a page, see below) and the next
//! access simply faults again. The one exception is `extract`, below.
//!
//! ## Required operations
//!
//! | routine                 | meaning                                                        |
//! |-------------------------|----------------------------------------------------------------|
//! | `pmap_create/destroy`   | an address space's translation tables                          |
//! | `enter(va, frame, prot)`| map one page; replaces any old translation at `va`             |
//! | `remove(start, end)`    | forget every translation in the range                          |
//! | `protect(start,end,p)`  | lower the protection of every translation in the range to `p`  |
//! | `page_protect(frame,p)` | lower every translation *of a frame*, in every pmap (`NONE` removes) |
//! | `is_modified/clear_modify`, `is_referenced/clear_reference` | per-frame attribute bits |
//! | `extract(va)`           | the translation at `va` now, if any                             |
//!
//! The VM relies on `extract` in one place only: `vm_write` (and
//! `vm_copy`) checks, under the kernel lock, that every page it is about
//! to store into is mapped writable, so that it writes all of its range or
//! nothing. So a pmap may forget a translation on its own only while the
//! kernel lock is free (the software MMU never forgets one on its own).
//!
//! ## Guarantees every implementation gives
//!
//! 1. An access through [`Machine::access`] succeeds only if the pmap holds
//!    a translation whose protection includes the access; otherwise it
//!    reports a [`HwFault`] and touches nothing.
//! 2. Once `remove`, `protect` or `page_protect` returns, no access can use
//!    the old, stronger translation (the software "TLB shootdown").
//! 3. A store sets the frame's modified bit, any access its referenced bit,
//!    before the access is visible; the bits are only cleared by the VM.
//!
//! The bytes of resident pages live in the machine's page store
//! ([`store`]), keyed by `(object, offset)`; a [`Frame`] is the store's
//! handle for one of them.

pub mod soft;
pub mod store;

pub use store::{ObjectId, PageStore, StoreError};

use crate::types::{VmAddr, VmProt};

/// A resident page, as the page store names it: a physical frame number on
/// the software MMU, a slot naming `(object, offset)` on a host whose
/// pages live in each object's own memory (see [`store`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame(pub u32);

/// Names one pmap (one task's translation tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PmapId(pub u32);

/// What the MMU reports when an access cannot be translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwFault {
    /// The faulting virtual address.
    pub va: VmAddr,
    /// The access that faulted (one of READ, WRITE, EXECUTE).
    pub access: VmProt,
    /// A translation existed but did not allow the access.
    pub protection: bool,
}

/// The kind of access a task thread performs.
#[derive(Debug)]
pub enum Access<'a> {
    /// A load into the buffer.
    Load(&'a mut [u8]),
    /// A store of the bytes.
    Store(&'a [u8]),
    /// An instruction fetch (checks execute permission, reads nothing).
    Execute,
}

/// The MMU: translation tables plus the per-frame attribute bits.
pub trait Pmap: Send + Sync {
    /// `pmap_create()`. Never returns the id of a destroyed pmap: accesses
    /// through a stale id must fault (the kernel then finds no task).
    fn create(&self) -> PmapId;
    /// `pmap_destroy()`: drops every translation of the pmap.
    fn destroy(&self, pmap: PmapId);
    /// `pmap_enter()`: maps `va` to `frame` with `prot`.
    fn enter(&self, pmap: PmapId, va: VmAddr, frame: Frame, prot: VmProt);
    /// `pmap_remove()`: forgets translations in `[start, end)`.
    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr);
    /// `pmap_protect()`: lowers translations in `[start, end)` to `prot`.
    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt);
    /// `pmap_page_protect()`: lowers every translation of `frame` to `prot`;
    /// `VmProt::NONE` removes them all.
    fn page_protect(&self, frame: Frame, prot: VmProt);
    /// `pmap_is_modified()`
    fn is_modified(&self, frame: Frame) -> bool;
    /// `pmap_clear_modify()`
    fn clear_modify(&self, frame: Frame);
    /// `pmap_is_referenced()`
    fn is_referenced(&self, frame: Frame) -> bool;
    /// `pmap_clear_reference()`
    fn clear_reference(&self, frame: Frame);
    /// `pmap_extract()`: the translation at `va`, if any.
    fn extract(&self, pmap: PmapId, va: VmAddr) -> Option<(Frame, VmProt)>;
}

/// A whole machine: MMU plus page store, and the "CPU" accesses task
/// threads make through it. One value implements both halves, so that a
/// host can keep what they share (a page dropped from shared memory while
/// it is unmapped, the attribute bits) in one place.
pub trait Machine: Pmap + PageStore {
    /// One access by a task thread within a single page: translate `va`
    /// through `pmap` and perform the access, or report the fault. The
    /// access must not cross a page boundary.
    fn access(&self, pmap: PmapId, va: VmAddr, access: Access<'_>) -> Result<(), HwFault>;
}
