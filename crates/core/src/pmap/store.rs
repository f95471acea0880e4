//! The page store: where the bytes of resident pages live.
//!
//! The VM keeps the *state* of each page (busy, dirty, locked, who it is
//! charged to) in its objects (`crate::vm::object`); the store keeps the
//! *bytes*. Every resident page is the page at some `(object, offset)`,
//! and the store is told which when the page is allocated, so a host may
//! keep each object's pages together at their own offsets:
//!
//! ```text
//!   soft MMU (SoftMachine)                 a host with a memfd per object
//!   ──────────────────────                 ───────────────────────────────
//!   Frame(7) ─► frames[7]: 4 KiB           Frame(7) ─► slot 7 = (object 3, 0x5000)
//!   (the key is not needed: any                         │
//!    frame holds any page)                 memfd of object 3: ....[0x5000: page]....
//! ```
//!
//! A [`Frame`] is the store's handle for one resident page: a physical
//! frame number on the soft MMU, a slot naming `(object, offset)` on a
//! host. The VM never makes one up: it gets it from [`PageStore::alloc`]
//! (or [`PageStore::rename`]) and gives it back with [`PageStore::free`];
//! the pmap's translations and attribute bits are per handle.
//!
//! ## What the VM does with the store
//!
//! 1. **Allocate** the page at `(object, offset)` when it becomes
//!    resident: a zero fill, a pager's `data_supply`, a copy-on-write copy
//!    into the shadow object, a push of the old contents into a copy
//!    object, an eager copy, a page put back after a failed `data_return`.
//!    No two resident pages ever have the same key. Its contents are
//!    unspecified until the VM writes, zeroes or copies the whole page.
//! 2. **Read, write, zero, copy** whole or partial pages. A copy-on-write
//!    copy is a copy between two objects' pages (the page below, in the
//!    shadowed or original object, to a new page of the shadow or copy
//!    object): on a memfd store it is a copy from one memfd to another,
//!    never a shared page.
//! 3. **Rename** a page, to give its bytes to another `(object, offset)`
//!    (Mach's `vm_page_rename`): the one way a page changes object. The
//!    VM renames nothing yet: no page moves between objects today (copy
//!    pushes and copy-ups copy, and shadow chains do not collapse); a
//!    collapse, or a copy-up that takes the page of an object nobody else
//!    can see, will rename. A memfd store may do it by copying.
//! 4. **Free** the page when it leaves memory, after every translation of
//!    it is gone ([`super::Pmap::page_remove`]).
//! 5. **Release** an object ([`PageStore::object_released`]) once it is
//!    gone and none of its pages is resident: a host closes its memfd.
//!
//! ## Paging proxies: a view is a window of its real object's store
//!
//! A paging proxy's view object never has pages of its own: the fault
//! path translates each view offset through the proxy's windows to the
//! real object's offset (`crate::vm::ViewResolver`) and maps *that*
//! object's page, asked of the real pager once however many proxies and
//! mappings reach it. So the VM never allocates a page keyed by a view,
//! and a page mapped through a view is the real object's page, with the
//! real object's key: a host with a memfd per object maps a view's window
//! as a window of the real object's memfd, the same pages, never copied.
//!
//! ## What every store guarantees
//!
//! 1. Once [`PageStore::alloc`] (or [`PageStore::rename`]) has succeeded,
//!    reading, writing, zeroing and copying the page cannot fail: a host
//!    reserves the page's backing at allocation (a store that could fail
//!    later would lose data the VM believes it holds).
//! 2. The bytes are the page's, whatever the pmap does with its
//!    translations: a host whose only way to take a page from a mapping is
//!    to drop it from shared memory keeps the bytes elsewhere until the
//!    page is mapped again, and the store's reads see them meanwhile.
//! 3. A store holds at most [`PageStore::capacity`] pages at once; an
//!    allocation beyond what it can hold fails with
//!    [`StoreError::Exhausted`] and changes nothing.
//! 4. The store makes no decision of its own: pages come and go only when
//!    the VM asks (under the kernel lock), and task threads reach their
//!    bytes only through translations the VM entered.

use super::Frame;
use thiserror::Error;

/// Names a VM object: the name the VM and the page store share for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub u64);

/// Why the store could not take a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// No room for another page (every frame is in use; the host is out
    /// of memory, or of descriptors for a new object's store). Nothing
    /// changed. The VM reports `KERN_RESOURCE_SHORTAGE`.
    #[error("the page store is full")]
    Exhausted,
    /// No staging area holds the bytes asked for (the sender has none, or
    /// the range is not inside it; see [`PageStore::write_staged`]). The
    /// VM reports `KERN_INVALID_ARGUMENT`.
    #[error("no staging area holds those bytes")]
    NoStaging,
}

impl From<StoreError> for crate::types::KernError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exhausted => crate::types::KernError::ResourceShortage,
            StoreError::NoStaging => crate::types::KernError::InvalidArgument,
        }
    }
}

/// The bytes of resident pages, keyed by `(object, offset)` (see the
/// module comment for the contract).
pub trait PageStore: Send + Sync {
    /// How many pages the store can hold resident at once (the machine's
    /// physical memory, or the host's configured share of its own).
    fn capacity(&self) -> usize;

    /// Allocates the page at `offset` of `object` (page-aligned; no page
    /// is resident there). Its bytes are unspecified until the VM writes
    /// the whole page; it has no translation, and clear referenced and
    /// modified bits.
    fn alloc(&self, object: ObjectId, offset: u64) -> Result<Frame, StoreError>;

    /// Allocates the `n` pages at consecutive offsets of `object` from
    /// `offset` on, as [`PageStore::alloc`] each (a store that keeps each
    /// object's pages together may reserve them at once). On failure none
    /// is allocated. The default allocates them one by one.
    fn alloc_run(&self, object: ObjectId, offset: u64, n: usize) -> Result<Vec<Frame>, StoreError> {
        let mut pages = Vec::with_capacity(n);
        for i in 0..n as u64 {
            match self.alloc(object, offset + i * crate::types::PAGE_SIZE) {
                Ok(f) => pages.push(f),
                Err(e) => {
                    for f in pages {
                        self.free(f);
                    }
                    return Err(e);
                }
            }
        }
        Ok(pages)
    }

    /// Frees a page the VM no longer holds. It has no translation left.
    fn free(&self, page: Frame);

    /// Copies bytes out of a page. `offset + buf.len()` must not exceed a
    /// page.
    fn read(&self, page: Frame, offset: usize, buf: &mut [u8]);

    /// Copies bytes into a page. `offset + data.len()` must not exceed a
    /// page.
    fn write(&self, page: Frame, offset: usize, data: &[u8]);

    /// Fills a page with zeroes.
    fn zero(&self, page: Frame);

    /// Copies a whole page to another (typically another object's: a
    /// copy-on-write copy).
    fn copy(&self, from: Frame, to: Frame);

    /// `vm_page_rename`: the bytes of `page` become the page at `offset`
    /// of `object` (no page is resident there), and the old key holds
    /// nothing. Returns the page's handle under its new key, which may be
    /// `page` itself; the old handle is then invalid. `page` has no
    /// translation left (the VM removes them first: on a host they are
    /// windows of the old object's store). On failure nothing changed.
    ///
    /// The default allocates, copies and frees: right for a store that
    /// keeps each object's pages apart (a memfd per object). A store whose
    /// pages are not tied to their key (frames) relabels instead.
    fn rename(&self, page: Frame, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        let new = self.alloc(object, offset)?;
        self.copy(page, new);
        self.free(page);
        Ok(new)
    }

    /// The bytes of the staging area of the task numbered `owner`: a
    /// buffer that task's process shares with the host, where a pager
    /// puts the pages it supplies (`memory_object_data_supply_staged`) so
    /// that they need not travel in a message. 0 if it has none (the
    /// default: a store without staging areas).
    fn staging_len(&self, owner: u64) -> u64 {
        let _ = owner;
        0
    }

    /// Copies whole pages into `pages` from `owner`'s staging area, from
    /// `offset` there on (page `i` from `offset + i * PAGE_SIZE`). The
    /// pages are the pages at consecutive offsets of one object, in order
    /// (a store keeping each object's pages together copies them at
    /// once). What the staging area holds is whatever its owner last
    /// wrote: the store only reads it.
    ///
    /// Errors: [`StoreError::NoStaging`] if the bytes are not inside
    /// `owner`'s staging area (or it has none); the pages' bytes are then
    /// unspecified, as after [`PageStore::alloc`].
    fn write_staged(&self, pages: &[Frame], owner: u64, offset: u64) -> Result<(), StoreError> {
        let _ = (pages, owner, offset);
        Err(StoreError::NoStaging)
    }

    /// `object` is gone and none of its pages is resident: whatever the
    /// store keeps for it (a host's memfd) may go. It is never named again.
    fn object_released(&self, object: ObjectId) {
        let _ = object;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmap::soft::SoftMachine;
    use crate::types::PAGE_SIZE;

    /// A store keeping each object's pages apart: the soft MMU's frames,
    /// with the default rename (allocate, copy, free).
    struct Apart(SoftMachine);

    impl PageStore for Apart {
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
        fn alloc(&self, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
            self.0.alloc(object, offset)
        }
        fn free(&self, page: Frame) {
            self.0.free(page)
        }
        fn read(&self, page: Frame, offset: usize, buf: &mut [u8]) {
            self.0.read(page, offset, buf)
        }
        fn write(&self, page: Frame, offset: usize, data: &[u8]) {
            self.0.write(page, offset, data)
        }
        fn zero(&self, page: Frame) {
            self.0.zero(page)
        }
        fn copy(&self, from: Frame, to: Frame) {
            self.0.copy(from, to)
        }
    }

    fn page_of(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE as usize]
    }

    fn bytes(s: &dyn PageStore, page: Frame) -> Vec<u8> {
        let mut buf = page_of(0);
        s.read(page, 0, &mut buf);
        buf
    }

    #[test]
    fn a_rename_keeps_the_bytes_whether_it_relabels_or_copies() {
        let frames = SoftMachine::new(2);
        let apart = Apart(SoftMachine::new(2));
        for (s, relabels) in [(&frames as &dyn PageStore, true), (&apart, false)] {
            let p = s.alloc(ObjectId(1), 0).unwrap();
            s.write(p, 0, &page_of(7));
            let q = s.rename(p, ObjectId(2), 3 * PAGE_SIZE).unwrap();
            assert_eq!(p == q, relabels);
            assert_eq!(bytes(s, q), page_of(7));
            // The old page went back: the store is as full as before.
            let r = s.alloc(ObjectId(3), 0).unwrap();
            assert_eq!(s.alloc(ObjectId(3), PAGE_SIZE), Err(StoreError::Exhausted));
            s.free(r);
            s.free(q);
        }
    }

    #[test]
    fn a_full_store_refuses_and_changes_nothing() {
        let s = SoftMachine::new(1);
        let p = s.alloc(ObjectId(1), 0).unwrap();
        s.write(p, 0, &page_of(5));
        assert_eq!(s.alloc(ObjectId(1), PAGE_SIZE), Err(StoreError::Exhausted));
        // A copying rename needs a second page: refused, the page intact.
        let s = Apart(s);
        assert_eq!(s.rename(p, ObjectId(2), 0), Err(StoreError::Exhausted));
        assert_eq!(bytes(&s, p), page_of(5));
    }
}
