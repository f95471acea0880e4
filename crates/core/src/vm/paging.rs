//! What pagers do to objects: the VM half of the EMMI's pager-to-kernel
//! calls, already decoded and checked by `crate::memory_object`. Each
//! routine here works page by page and cannot be misled by a pager: pages
//! it did not ask for are accepted only where nothing is resident, and a
//! page already resident is never overwritten by a supply.

use super::charge::{placeholder_owner, Owner};
use super::object::{ObjectId, Page};
use super::Vm;
use crate::types::{KernError, Result, VmProt, PAGE_SIZE};

pub use machvm_protocol::emmi::ReturnPolicy;

impl Vm {
    /// `memory_object_data_supply` for one page. Returns whether the page
    /// was taken (false: something was already resident there).
    pub fn data_supply(
        &mut self,
        object: ObjectId,
        offset: u64,
        data: &[u8],
        lock: VmProt,
        precious: bool,
    ) -> Result<bool> {
        debug_assert_eq!(data.len() as u64, PAGE_SIZE);
        let o = self.objects.get(&object).ok_or(KernError::InvalidArgument)?;
        if let Some(p) = o.pages.get(&offset) {
            if p.frame.is_some() {
                return Ok(false);
            }
        }
        // Room for it was made when it was asked for (see `super::charge`).
        let owner = placeholder_owner(self, object, offset);
        let frame = match self.page_alloc(object, offset) {
            Ok(f) => f,
            Err(e) => {
                self.fail_placeholder(object, offset);
                return Err(e);
            }
        };
        self.machine.write(frame, 0, data);
        self.page_insert(object, offset, Page { lock, precious, owner, ..Page::resident(frame) });
        Ok(true)
    }

    /// `memory_object_data_supply_staged` of `length` bytes at `offset`:
    /// page by page as [`Vm::data_supply`], but each run of pages
    /// not resident yet is copied from `owner`'s staging area (from
    /// `staging_offset` on) in one store call.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` for an unknown object or bytes the
    /// store cannot find in the staging area, `KERN_RESOURCE_SHORTAGE` if
    /// the store is full; with the offset of the first
    /// page that failed (the pages before it were taken, those from it on
    /// were not, and their requests fail).
    pub fn data_supply_staged(
        &mut self,
        object: ObjectId,
        (offset, length): (u64, u64),
        (owner, staging_offset): (u64, u64),
        lock: VmProt,
        precious: bool,
    ) -> std::result::Result<(), (KernError, u64)> {
        let pages = length / PAGE_SIZE;
        let off = |i: u64| offset + i * PAGE_SIZE;
        let mut i = 0;
        while i < pages {
            let o = self.objects.get(&object).ok_or((KernError::InvalidArgument, offset))?;
            if o.pages.get(&off(i)).is_some_and(|p| p.frame.is_some()) {
                i += 1;
                continue;
            }
            // The run of pages from `i` with nothing resident, allocated
            // at once and copied at once.
            let n = (i..pages).take_while(|&k| o.pages.get(&off(k)).is_none_or(|p| p.frame.is_none())).count();
            let frames = match self.page_alloc_run(object, off(i), n) {
                Ok(f) => f,
                Err(e) => {
                    self.fail_placeholder(object, off(i));
                    return Err((e, off(i)));
                }
            };
            let n = frames.len();
            let charged: Vec<Option<Owner>> =
                (0..n as u64).map(|k| placeholder_owner(self, object, off(i + k))).collect();
            if let Err(e) = self.machine.write_staged(&frames, owner, staging_offset + i * PAGE_SIZE) {
                for f in frames {
                    self.page_free(f);
                }
                self.fail_placeholder(object, off(i));
                return Err((e.into(), off(i)));
            }
            for (k, (frame, charged)) in frames.into_iter().zip(charged).enumerate() {
                let p = Page { lock, precious, owner: charged, ..Page::resident(frame) };
                self.page_insert(object, off(i + k as u64), p);
            }
            i += n as u64;
        }
        Ok(())
    }

    /// `memory_object_data_unavailable` for the pages at `offsets` (in
    /// order): each run of consecutive ones not resident yet is zero-filled
    /// with one store allocation. Returns the first offset that failed,
    /// with its error (those before it were filled).
    pub fn data_unavailable_at(
        &mut self,
        object: ObjectId,
        offsets: &[u64],
    ) -> std::result::Result<(), (KernError, u64)> {
        let mut i = 0;
        while i < offsets.len() {
            let o = self.objects.get(&object).ok_or((KernError::InvalidArgument, offsets[i]))?;
            let absent = |k: usize| o.pages.get(&offsets[k]).is_none_or(|p| p.frame.is_none());
            if !absent(i) {
                i += 1;
                continue;
            }
            let n = (i..offsets.len())
                .take_while(|&k| absent(k) && offsets[k] == offsets[i] + (k - i) as u64 * PAGE_SIZE)
                .count();
            let Ok(frames) = self.page_alloc_run(object, offsets[i], n) else {
                // Short of room for the whole run: page by page, as far as
                // it goes.
                for &at in &offsets[i..] {
                    self.data_unavailable(object, at).map_err(|e| (e, at))?;
                }
                return Ok(());
            };
            let n = frames.len();
            for (frame, &at) in frames.into_iter().zip(&offsets[i..i + n]) {
                let charged = placeholder_owner(self, object, at);
                self.machine.zero(frame);
                self.page_insert(object, at, Page::resident(frame).owned_by(charged));
            }
            self.stats.zero_fills += n as u64;
            i += n;
        }
        Ok(())
    }

    /// `memory_object_data_unavailable` for one page: zero fill.
    pub fn data_unavailable(&mut self, object: ObjectId, offset: u64) -> Result<bool> {
        let o = self.objects.get(&object).ok_or(KernError::InvalidArgument)?;
        if o.pages.get(&offset).is_some_and(|p| p.frame.is_some()) {
            return Ok(false);
        }
        let owner = placeholder_owner(self, object, offset);
        if let Err(e) = self.page_zero_fill(object, offset, owner) {
            self.fail_placeholder(object, offset);
            return Err(e);
        }
        Ok(true)
    }

    /// `memory_object_data_error` for one page: waiting faults fail.
    pub fn data_error(&mut self, object: ObjectId, offset: u64) {
        self.fail_placeholder(object, offset);
    }

    /// The page at `offset` fails (its charge, if it was asked for a
    /// task, goes).
    fn fail_placeholder(&mut self, object: ObjectId, offset: u64) {
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        match o.pages.get_mut(&offset) {
            Some(p) if p.frame.is_none() => {
                p.busy = false;
                p.error = true;
                let owner = p.owner.take();
                self.uncharge(owner, false);
            }
            Some(_) => {}
            None => {
                o.pages.insert(offset, Page { error: true, ..Page::default() });
            }
        }
    }

    /// `memory_object_lock_request` over `[offset, offset + size)`.
    pub fn lock_request(
        &mut self,
        object: ObjectId,
        offset: u64,
        size: u64,
        should_return: ReturnPolicy,
        should_flush: bool,
        lock: VmProt,
    ) {
        let Some(o) = self.objects.get(&object) else {
            return;
        };
        let end = offset.saturating_add(size);
        let offsets: Vec<u64> = o.pages.range(offset..end).map(|(&k, _)| k).collect();
        for off in offsets {
            let o = self.object_mut(object);
            let p = o.pages.get_mut(&off).expect("listed above");
            let Some(frame) = p.frame else {
                // An error page is forgotten by a flush, so the next fault
                // asks again; a busy one is left to its request.
                if should_flush && p.error {
                    o.pages.remove(&off);
                }
                continue;
            };
            if p.busy {
                continue;
            }
            let (precious, marked_dirty) = (p.precious, p.dirty);
            // Stop writers before judging the page (as Mach's
            // `memory_object_lock_page` does): a store through a live
            // translation landing after a "clean" verdict would be neither
            // returned nor prevented. A flush takes every access; a return
            // takes write access (the page stays readable meanwhile).
            if should_flush {
                self.page_remove(frame);
            } else if should_return != ReturnPolicy::None {
                self.page_write_protect(frame);
            }
            let dirty = marked_dirty || self.machine.is_modified(frame);
            let give = match should_return {
                ReturnPolicy::None => false,
                ReturnPolicy::Dirty => dirty,
                ReturnPolicy::All => dirty || precious,
            };
            if give {
                // No writer is left: the copy is the page as judged.
                let data = self.page_bytes(frame);
                self.page_returned(object, off, data, dirty, !should_flush);
                self.machine.clear_modify(frame);
                let p = self.object_mut(object).pages.get_mut(&off).expect("listed above");
                p.dirty = false;
                p.precious = false;
            }
            if should_flush {
                self.page_evict(object, off, false);
                continue;
            }
            let p = self.object_mut(object).pages.get_mut(&off).expect("listed above");
            p.lock = lock;
            p.unlock_pending &= lock;
            if !lock.is_empty() {
                self.page_protect(frame, VmProt::ALL - lock);
            }
        }
    }

    /// The pager of `object` died or destroyed it: every page still being
    /// asked for fails, and so will every future request. An object only
    /// the cache keeps (no reference) can never be mapped again: it is
    /// terminated now, frames and all.
    pub fn pager_died(&mut self, object: ObjectId) {
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        o.pager_dead = true;
        o.ready = true;
        let mut failed = Vec::new();
        for p in o.pages.values_mut() {
            if p.frame.is_none() {
                p.busy = false;
                p.error = true;
                failed.push(p.owner.take());
            }
        }
        let unreferenced = o.refs == 0;
        for owner in failed {
            self.uncharge(owner, false);
        }
        if unreferenced {
            // Cached objects are external: they shadow nothing.
            let _ = self.object_terminate(object);
        }
    }

    /// Makes a copy-on-write snapshot of `object` (Mach's delayed copy):
    /// a new copy object that shadows it. Until a page of the original is
    /// about to change, the copy sees it through the shadow link; before it
    /// changes, the fault path pushes the old contents into the copy. An
    /// older copy now sees the original through the new one. Returns the
    /// copy, with one reference for the caller.
    pub fn copy_delayed(&mut self, object: ObjectId) -> ObjectId {
        let size = self.object(object).size;
        let mut c = super::object::VmObject::temporary(size);
        c.shadow = Some((object, 0));
        let c = self.object_insert(c);
        self.object_reference(object); // the copy's shadow link
        if let Some(old) = self.object(object).copy {
            // old → c → object
            self.object_mut(old).shadow = Some((c, 0));
            self.object_reference(c);
            self.object_mut(object).refs -= 1;
        }
        self.object_mut(object).copy = Some(c);
        // Writers of the original must fault so that pushes happen.
        let frames: Vec<_> = self.object(object).pages.values().filter_map(|p| p.frame).collect();
        for f in frames {
            self.page_write_protect(f);
        }
        c
    }
}
