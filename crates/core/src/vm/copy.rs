//! Copy strategies: how a copy of a pager's object is made
//! (`memory_object_copy_strategy_t`, declared by the pager in `ready` or
//! `change_attributes`).
//!
//! 1. `MEMORY_OBJECT_COPY_DELAY`: copy-on-write ([`Vm::copy_delayed`]):
//!    the copy shares the original's pages until one of them is about to
//!    change through the kernel, and the old contents are pushed into the
//!    copy first. Right for pagers whose data changes only through the
//!    kernel.
//! 2. `MEMORY_OBJECT_COPY_NONE`: the pager may change its data behind the
//!    kernel's back (it flushes and supplies new data), so a delayed copy
//!    would show the change. The copy is made eagerly instead, when it is
//!    asked for ([`EagerCopy`]): every page of the range is read, from the
//!    pager if need be, into a new anonymous object.
//! 3. `MEMORY_OBJECT_COPY_CALL` (the kernel asks the pager to make the
//!    copy) is not supported: `ready` and `change_attributes` refuse it.
//!
//! An eager copy waits for the pager as a fault does, so it is built in
//! steps with the kernel lock released between them; the call that needs
//! it runs only once every copy it makes is complete. An object whose
//! pager has not said `ready` yet has the default strategy, `DELAY` (as a
//! new object has in Mach), so a copy never waits for a pager that has
//! not asked for eager copies.

use super::charge::{Owner, Room};
use super::fault::NoFrame;
use super::object::{ObjectId, Page, Provider, VmObject};
use super::{PagerOp, Vm};
use crate::types::{KernError, VmProt, PAGE_SIZE};

/// What an eager copy step came to.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStep {
    /// Every page is copied.
    Done,
    /// A pager was asked (or is being asked) for a page, or the object is
    /// not ready yet: wait for a page event and step again.
    Wait,
    /// A page cannot be read (`KERN_MEMORY_ERROR`: the pager failed it or
    /// died; `KERN_RESOURCE_SHORTAGE`: no frame for the copy).
    Error(KernError),
}

/// A copy of `[offset, offset + len)` of `source` being made eagerly
/// (`MEMORY_OBJECT_COPY_NONE`). It holds a reference on `source` and one
/// on `dest`, an anonymous object holding the copied pages at the same
/// offsets.
#[derive(Debug)]
pub struct EagerCopy {
    pub source: ObjectId,
    pub offset: u64,
    pub len: u64,
    pub dest: ObjectId,
    /// Who the copied pages (and the source pages read for them) are
    /// charged to: the task making the call.
    owner: Option<Owner>,
    /// Bytes copied so far.
    done: u64,
}

impl Vm {
    /// Must a copy of `object` be made eagerly? Only once its pager said
    /// `ready` is its strategy known (a dead pager's object is ready, and
    /// copied lazily: its faults fail anyway).
    pub fn copies_eagerly(&self, object: ObjectId) -> bool {
        let o = self.object(object);
        o.provider == Provider::External
            && !o.temporary
            && o.ready
            && !o.pager_dead
            && o.copy_strategy == super::object::CopyStrategy::None
    }

    /// Starts an eager copy (takes a reference on `source`), whose pages
    /// are charged to `owner`.
    pub fn eager_copy_begin(&mut self, source: ObjectId, offset: u64, len: u64, owner: Option<Owner>) -> EagerCopy {
        self.object_reference(source);
        let dest = self.object_insert(VmObject::temporary(offset + len));
        EagerCopy { source, offset, len, dest, owner, done: 0 }
    }

    /// Copies as many pages as are resident in `source`, in order; asks
    /// the pager for the first one that is not (the cluster around it)
    /// and returns [`CopyStep::Wait`]. A page the pager has read-locked
    /// gets a `data_unlock` first. Room for each page is made within the
    /// owner's limit as for a fault (see `crate::vm::charge`): none to be
    /// had is `KERN_RESOURCE_SHORTAGE`, or a wait while pages of the
    /// owner are on their way.
    pub fn eager_copy_step(&mut self, job: &mut EagerCopy) -> CopyStep {
        while job.done < job.len {
            let off = job.offset + job.done;
            let o = self.object(job.source);
            let Some(p) = o.pages.get(&off) else {
                if o.pager_dead {
                    return CopyStep::Error(KernError::MemoryError);
                }
                return match super::fault::request_cluster(self, job.source, off, VmProt::READ, job.owner) {
                    Room::Pages(_) | Room::Wait => CopyStep::Wait,
                    Room::Full => CopyStep::Error(KernError::ResourceShortage),
                };
            };
            if p.busy {
                return CopyStep::Wait;
            }
            if p.error || (o.pager_dead && p.lock.contains(VmProt::READ)) {
                return CopyStep::Error(KernError::MemoryError);
            }
            if p.lock.contains(VmProt::READ) {
                if !p.unlock_pending.contains(VmProt::READ) {
                    let source = job.source;
                    self.object_mut(source).pages.get_mut(&off).expect("found above").unlock_pending |= VmProt::READ;
                    self.outbox.push(PagerOp::DataUnlock {
                        object: source,
                        offset: off,
                        length: PAGE_SIZE,
                        access: VmProt::READ,
                    });
                }
                return CopyStep::Wait;
            }
            let frame = p.frame.expect("resident page has a frame");
            let owner = job.owner;
            let dest = job.dest;
            let copy = super::fault::pinned(self, job.source, off, |vm| super::fault::frame_for(vm, dest, off, owner));
            let nf = match copy {
                Ok(f) => f,
                Err(NoFrame::Room(Room::Wait)) => return CopyStep::Wait,
                Err(NoFrame::Room(_)) => return CopyStep::Error(KernError::ResourceShortage),
                Err(NoFrame::Kern(e)) => return CopyStep::Error(e),
            };
            self.machine.copy(frame, nf);
            // The copy's own version: pageout must keep it (dirty), as
            // nothing else holds it.
            self.page_insert(job.dest, off, Page { dirty: true, owner, ..Page::resident(nf) });
            self.stats.eager_copies += 1;
            job.done += PAGE_SIZE;
        }
        CopyStep::Done
    }

    /// Ends a copy: its source reference goes; the copy object's reference
    /// is returned to the caller, to keep or release.
    pub fn eager_copy_finish(&mut self, job: EagerCopy) -> ObjectId {
        self.object_deallocate(job.source);
        job.dest
    }
}
