//! The contract between the machine-independent VM and the MMU.
//!
//! The VM (`crate::vm`) decides *what* is mapped; a `Pmap` implementation
//! makes the hardware (the software MMU, [`soft`], or a host's) agree. The
//! VM almost never reads page tables back to make decisions: a pmap may
//! forget a translation (but never the modified bit of a page, see below)
//! and the next access simply faults again. The one exception is
//! `extract`, below. The bytes behind translations live in the machine's
//! page store ([`store`]), keyed by `(object, offset)`; a [`Frame`] is the
//! store's handle for one resident page, and translations and attribute
//! bits are kept per handle.
//!
//! As GNU Mach's `pmap.h`, the contract is written for hardware that may
//! lack what the VM would like: operations work on ranges (one call for
//! what a host does in one system call), any of them may fail, and the
//! referenced and modified bits may be simulated, or only approximated.
//!
//! ## Operations
//!
//! | routine                     | meaning                                                      |
//! |-----------------------------|--------------------------------------------------------------|
//! | `create` / `destroy`        | an address space's translations                              |
//! | `enter(va, pages, prot)`    | map `pages[i]` at `va + i` pages, replacing what was there   |
//! | `protect(start, end, prot)` | lower every translation in the range to `prot`               |
//! | `remove(start, end)`        | forget every translation in the range                        |
//! | `page_protect(page, prot)`  | lower every translation *of a page*, in every pmap (`READ \| EXECUTE`: write-protect) |
//! | `page_remove(page)`         | remove a page from every mapping, in every pmap               |
//! | `is_modified` / `clear_modify`, `is_referenced` / `clear_reference` | per-page attribute bits |
//! | `extract(va)`               | the translation at `va` now, if any                          |
//!
//! The VM makes every call but `access` (task threads) under the kernel
//! lock, and relies on `extract` in one place only: `vm_write` (and
//! `vm_copy`) checks, under the kernel lock, that every page it is about
//! to store into is mapped writable, so that it writes all of its range
//! or nothing. So a pmap may forget a translation on its own only while
//! the kernel lock is free (the software MMU never forgets one on its
//! own).
//!
//! ## Failure
//!
//! Every operation that changes translations returns a [`PmapError`] when
//! it cannot do what was asked, and the VM answers each, never with a
//! panic:
//!
//! 1. `enter` gives access, and may be refused: whatever it did enter is
//!    as asked (the right page, no more than `prot`), the rest is not
//!    mapped. The fault fails with the Mach error of the [`PmapError`]
//!    (`KERN_RESOURCE_SHORTAGE`, `KERN_MEMORY_ERROR`); the page stays
//!    resident, and a later fault tries again.
//! 2. `protect` and `page_protect` lower access; one that fails has
//!    lowered part of it or none, and raised nothing. The VM then takes
//!    the next, stronger step itself: `remove` of the range, `page_remove`
//!    of the page (a host that cannot write-protect a page can always
//!    drop it from memory).
//! 3. `remove` and `page_remove` are the last steps and must take the
//!    access away, error or not: an error only says that the host had to
//!    take more than asked to do it (every translation of the address
//!    space for `remove`, which is then unreachable: its later `enter`s
//!    fail with [`PmapError::Unreachable`]; every address space the page
//!    could not be taken from, for `page_remove`). The VM counts them
//!    (`VmStats::pmap_failures`, as every failure) and goes on.
//!
//! ## Guarantees every implementation gives
//!
//! 1. An access through [`Machine::access`] succeeds only if the pmap holds
//!    a translation whose protection includes the access; otherwise it
//!    reports a [`HwFault`] and touches nothing. A host that simulates a
//!    bit by holding back access (a write-protected page whose translation
//!    allows writing) resolves that fault itself: it never reaches the VM.
//! 2. Once `protect`, `remove`, `page_protect` or `page_remove` returns
//!    (`Ok` or `Err`), no access can use the old, stronger translation
//!    (the "TLB shootdown").
//! 3. Translations never change a page's bytes: the store's reads and
//!    writes see them however the host keeps the page while it is mapped
//!    or unmapped (see [`store`]).
//!
//! ## What a host may approximate: the referenced and modified bits
//!
//! - **Modified** must never be missed; it may be reported when it is not
//!   so (a host may say "always modified"). Precisely: if a store reached
//!   the page since the last `clear_modify`, `is_modified` says so once
//!   write access to the page has been taken away (by `page_protect`
//!   without `WRITE`, `page_remove`, or `remove` of its translations). The
//!   VM asks only then when a wrong "clean" could lose data (pageout,
//!   `lock_request`, eviction), and calls `clear_modify` only when no
//!   translation of the page allows writing: a host that learns of stores
//!   from write-protect faults (userfaultfd's WP) or scans for them
//!   (`PAGEMAP_SCAN`) keeps pages write-protected until their first store
//!   after a clear. A conservative answer costs a needless `data_return`,
//!   and keeps dirty-looking anonymous memory resident where no default
//!   pager can take it.
//! - **Referenced** is a hint, right either way (a host without accessed
//!   bits may say "always referenced"). Pageout gives a referenced page one
//!   second chance per lap of its queue, not more, so a host that always
//!   says "referenced" makes it first in, first out, never stuck.
//!
//! The VM's correctness with conservative bits is tested
//! (`tests/approximate_bits.rs`): the pageout, per-task reclaim and
//! `lock_request` rules on a software MMU that answers "always" to both
//! bits, and on one that learns of stores only from write-protect faults
//! ([`soft::Bits`]), which also checks that `clear_modify` is never called
//! while a translation allows writing.

pub mod soft;
pub mod store;

pub use store::{ObjectId, PageStore, StoreError};

use thiserror::Error;

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

/// Why a pmap could not do what the VM asked (see the module comment,
/// "Failure", for what each operation guarantees when it fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PmapError {
    /// The host is short of something the operation needs (memory for
    /// translation tables, a kernel object): try again later. A fault that
    /// meets it fails with `KERN_RESOURCE_SHORTAGE`.
    #[error("the host is short of resources for translations")]
    ResourceShortage,
    /// The address space can no longer be changed: it was destroyed, its
    /// process is gone, or the host gave up on it (every access through it
    /// faults from now on). A fault that meets it fails with
    /// `KERN_MEMORY_ERROR`.
    #[error("the address space is unreachable")]
    Unreachable,
}

impl From<PmapError> for crate::types::KernError {
    fn from(e: PmapError) -> Self {
        match e {
            PmapError::ResourceShortage => crate::types::KernError::ResourceShortage,
            PmapError::Unreachable => crate::types::KernError::MemoryError,
        }
    }
}

/// The MMU: translation tables plus the per-page attribute bits (the
/// module comment is the contract).
pub trait Pmap: Send + Sync {
    /// `pmap_create()`. Never returns the id of a destroyed pmap: accesses
    /// through a stale id must fault (the kernel then finds no task).
    fn create(&self) -> PmapId;
    /// `pmap_destroy()`: drops every translation of the pmap; it is
    /// unreachable from now on.
    fn destroy(&self, pmap: PmapId);
    /// `pmap_enter()` over a range: maps `pages[i]` at `va + i * PAGE_SIZE`
    /// with `prot` (not `NONE`), replacing any translation there. `va` is
    /// page-aligned, and the range does not wrap.
    fn enter(&self, pmap: PmapId, va: VmAddr, pages: &[Frame], prot: VmProt) -> Result<(), PmapError>;
    /// `pmap_protect()`: lowers every translation in `[start, end)` to
    /// `prot` (`NONE` removes them). On failure the VM removes the range.
    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) -> Result<(), PmapError>;
    /// `pmap_remove()`: forgets every translation in `[start, end)`, error
    /// or not (an error: the whole address space went with them).
    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) -> Result<(), PmapError>;
    /// `pmap_page_protect()` lowering: every translation of `page`, in
    /// every pmap, to `prot` (most often `READ | EXECUTE`, a
    /// write-protect; `NONE` is [`Pmap::page_remove`]). On failure the VM
    /// removes the page from every mapping instead.
    fn page_protect(&self, page: Frame, prot: VmProt) -> Result<(), PmapError>;
    /// `pmap_page_protect(VM_PROT_NONE)`: removes every translation of
    /// `page`, in every pmap, error or not (an error: the host had to take
    /// more, see the module comment). The page stays resident in the store.
    fn page_remove(&self, page: Frame) -> Result<(), PmapError>;
    /// [`Pmap::page_remove`] of a page the VM frees next without reading
    /// it (a clean page paged out, a page whose object is gone): a host
    /// that must keep the bytes of a page it takes from its mappings (see
    /// the module comment) may drop them. The default is `page_remove`.
    fn page_remove_discard(&self, page: Frame) -> Result<(), PmapError> {
        self.page_remove(page)
    }
    /// `pmap_is_modified()`: may say "modified" when it is not, never the
    /// reverse once write access is taken away (see the module comment).
    fn is_modified(&self, page: Frame) -> bool;
    /// `pmap_clear_modify()`: called only when no translation of the page
    /// allows writing.
    fn clear_modify(&self, page: Frame);
    /// `pmap_is_referenced()`: a hint (any answer is correct).
    fn is_referenced(&self, page: Frame) -> bool;
    /// `pmap_clear_reference()`
    fn clear_reference(&self, page: Frame);
    /// `pmap_extract()`: the translation at `va`, if any, with the
    /// protection the VM entered it with (whatever access a host holds
    /// back to simulate a bit).
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

    /// Does a translation of this machine show only the page of its
    /// window's own object? A host whose tasks map each object's memory
    /// as a window at the object's offsets (a memfd per object) cannot
    /// show, at an address of one object's window, a page another object
    /// holds. The fault path then never maps a page found below the
    /// entry's object, even to read it: it copies the page up first (as a
    /// write would), and it gives a copy-on-write entry its private object
    /// on the first access, not the first write. The semantics are Mach's
    /// either way (a copy sees the data as of the copy); only what is
    /// shared in memory differs. The software MMU says no.
    fn windows_fixed(&self) -> bool {
        false
    }
}
