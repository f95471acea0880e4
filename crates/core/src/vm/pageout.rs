//! Pageout: keeping resident pages under the configured limit.
//!
//! Candidates come off a FIFO queue with a second chance for pages the MMU
//! saw referenced (a clock, in effect): at most one per lap of the queue,
//! so that a pmap whose referenced bits are stuck at "referenced" (a host
//! without them may answer so, see `crate::pmap`) makes pageout first in,
//! first out, not stuck. With exact bits a lap clears every bit it sees,
//! so a second lap in one scan meets a set bit only if a task touched the
//! page meanwhile, and the bound changes nothing. For each victim:
//!
//! 1. every translation of its frame is removed (`page_protect(NONE)`),
//!    so no task can change it while it is written back;
//! 2. a dirty or precious page goes to its pager in a `data_return`
//!    (anonymous pages to the default pager, which is attached to the
//!    object on its first pageout); the message carries a copy of the data,
//!    so the frame is free as soon as the message is queued, and a later
//!    `data_request` for the page is queued behind it — no data is lost;
//! 3. a clean page is simply dropped: its pager (or zero fill) has it.
//!
//! With no default pager registered, dirty anonymous pages are never
//! reclaimed (there is nowhere to put them); nor are the pages of an
//! object whose pager died, clean or not (the kernel holds the only copy:
//! a `data_return` would go nowhere, and the next fault could only fail).
//! They stay in the queue, until the object itself goes.
//! Pages pinned busy by a fault that is copying them are skipped too.

use super::object::{ObjectId, Provider};
use super::{PagerOp, Vm};

/// What pageout made of one candidate ([`Vm::reclaim_one`]).
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No resident page there any more: a stale candidate.
    Gone,
    /// Pinned busy by a fault that is copying it: look again later.
    Busy,
    /// The MMU saw it used since it was last looked at: its referenced
    /// bit is cleared, and it gets a second chance (see [`Reprieves`]).
    Referenced,
    /// Nobody could get it back if it went (see the module comment): it
    /// stays resident.
    Kept,
    /// Reclaimed: its frame is free.
    Freed,
}

/// The second chances one scan of a queue may still give: one lap's
/// worth (the queue's length when the scan starts), then none, whatever
/// the referenced bits say.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reprieves(usize);

impl Reprieves {
    /// For a scan of a queue of `len` candidates.
    pub(super) fn lap(len: usize) -> Reprieves {
        Reprieves(len)
    }

    /// May another referenced page be spared? (Uses one up if so.)
    fn take(&mut self) -> bool {
        self.0.checked_sub(1).map(|n| self.0 = n).is_some()
    }
}

impl Vm {
    /// Reclaims up to `want` frames; returns how many it freed.
    pub fn pageout(&mut self, want: usize) -> usize {
        let mut freed = 0;
        let mut budget = self.queue.len() * 2 + 8;
        let mut reprieves = Reprieves::lap(self.queue.len());
        while freed < want && budget > 0 {
            budget -= 1;
            let Some((object, offset)) = self.queue.pop_front() else {
                break;
            };
            self.stats.pageout_visits += 1;
            match self.reclaim_one(object, offset, &mut reprieves) {
                Verdict::Gone => {}
                Verdict::Busy | Verdict::Referenced | Verdict::Kept => self.queue.push_back((object, offset)),
                Verdict::Freed => freed += 1,
            }
        }
        self.stats.pages_reclaimed += freed as u64;
        freed
    }

    /// Judges one candidate and reclaims it if it can go (steps 1 to 3 of
    /// the module comment); a referenced one is spared while the scan has
    /// `reprieves` left. A task's own reclaim (`crate::vm::charge`) judges
    /// its pages the same way.
    pub(super) fn reclaim_one(&mut self, object: ObjectId, offset: u64, reprieves: &mut Reprieves) -> Verdict {
        let Some(o) = self.objects.get(&object) else {
            return Verdict::Gone;
        };
        let Some(p) = o.pages.get(&offset) else {
            return Verdict::Gone;
        };
        let Some(frame) = p.frame else { return Verdict::Gone };
        if p.busy {
            return Verdict::Busy;
        }
        if self.machine.is_referenced(frame) && reprieves.take() {
            self.machine.clear_reference(frame);
            if !self.machine.is_referenced(frame) {
                return Verdict::Referenced;
            }
            // A machine whose pages are always referenced (it has no such
            // bits): a second chance would only send every page round the
            // queue once per scan, so this scan gives none (first in,
            // first out).
            reprieves.0 = 0;
        }
        // Pages nobody could get back: dirty anonymous memory with no
        // default pager, and every page of a dead pager (it can give
        // nothing back, not even a clean page).
        let (temporary, pager_dead) = (o.temporary, o.pager_dead);
        let keep = move |dirty: bool, default_pager: bool| (temporary && !default_pager && dirty) || pager_dead;
        if keep(self.page_is_dirty(p), self.default_pager) {
            return Verdict::Kept;
        }
        // Stop writers before judging the page: a store through a live
        // translation could land after a "clean" verdict and be lost.
        self.page_remove(frame);
        let o = self.object(object);
        let dirty = self.page_is_dirty(&o.pages[&offset]);
        if keep(dirty, self.default_pager) {
            // Written just before the shootdown: it stays.
            return Verdict::Kept;
        }
        if o.temporary && dirty && o.provider == Provider::None {
            let size = o.size;
            let o = self.object_mut(object);
            o.provider = Provider::External;
            o.ready = true;
            self.outbox.push(PagerOp::CreateDefault { object, size });
        }
        // The return records the offset as the default pager's.
        self.page_evict(object, offset, true);
        self.stats.pageouts += 1;
        Verdict::Freed
    }
}
