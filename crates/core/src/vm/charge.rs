//! Per-task resident limits: which task pays for each resident page, and
//! how a task at its limit makes room from its own pages and no one
//! else's (`TaskLimits::resident_pages`).
//!
//! The VM knows tasks only as [`Owner`]s (the kernel's task numbers), each
//! with an account opened at `task_create` and closed at `task_terminate`.
//!
//! 1. **Charging.** A page is charged to the owner whose fault made it
//!    resident ([`Page::owner`]): the fault path names the owner of each
//!    zero fill, copy-on-write copy and push into a copy object, and of the
//!    placeholders it puts in for a cluster asked of a pager; a pager's
//!    `data_supply` (or `data_unavailable`) for a placeholder charges the
//!    page to the placeholder's owner. [`Vm::page_insert`] and
//!    [`Vm::page_evict`], the only ways a page comes or goes, keep each
//!    account's counts: a placeholder is *in transit*, a page with a frame
//!    *resident*. A page whose owner has no account (a pager's unasked
//!    supply, a restored `data_return`) is charged to nobody.
//! 2. **Uncharging.** A page's charge goes when it leaves memory, however
//!    it leaves (pageout, a flush, the object's termination, the pager's
//!    `destroy`); a placeholder's when the pager fails it or dies. Closing
//!    an account (the task terminated) uncharges its pages where they are:
//!    they stay resident, charged to nobody.
//! 3. **Room.** Before a fault takes a frame, or asks a pager for a
//!    cluster, for an owner, [`Vm::make_room`] checks the owner's resident
//!    and in-transit pages against its limit. Over it, the owner's own
//!    candidates are reclaimed, least recently charged first, with a second
//!    chance for pages the MMU saw referenced (one lap's worth, so that
//!    bits stuck at "referenced" cannot stop it): the same judgement pageout
//!    makes (`Vm::reclaim_one`: dirty and precious pages are returned to
//!    their pager, anonymous ones to the default pager, clean ones dropped).
//!    Pages charged to other owners are never taken. A cluster gets what
//!    room there is, the faulting page first, and never more than half the
//!    limit (a task near its limit would otherwise give up its working set
//!    for pages it may never touch).
//! 4. **Set aside.** A candidate that cannot be reclaimed now (dirty
//!    anonymous memory with no default pager, a dead pager's page) goes
//!    to the account's `kept` list rather than back to its queue, so that a
//!    task refused again and again does not look at the same pages again.
//!    They go back to the queue when a default pager registers
//!    ([`Vm::default_pager_registered`]).
//! 5. **Refusal or wait.** With no room made: if some of the owner's pages
//!    are in transit, the fault waits for them ([`Room::Wait`]; the next
//!    one that lands or fails, or any charged page that goes, pushes the
//!    owner on [`Vm::room_events`], which the kernel turns into a wake-up
//!    of the task's waiting faults); otherwise it is refused
//!    ([`Room::Full`], `KERN_RESOURCE_SHORTAGE`), having changed nothing
//!    but referenced bits and translations of the pages it looked at.
//!
//! Work: each charge pushes one queue entry; a reclaim looks at each entry
//! at most twice (once to clear its referenced bit), drops stale entries
//! for good, and sets aside what it cannot take; the queues are compacted
//! when they grow past four times the pages they hold. So a fault's work
//! here is O(1) amortised, however many pages the task has.

use super::object::{ObjectId, Page};
use super::pageout::{Reprieves, Verdict};
use super::{Vm, MIN_RESIDENT};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A task, as the VM charges it (the kernel's task number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(pub u32);

/// Owners are small numbers, each looked up on every fault that charges
/// a page: they hash by one multiplication (Fibonacci hashing), not by
/// the standard library's keyed hash.
#[derive(Debug, Default)]
pub(super) struct OwnerHasher(u64);

impl Hasher for OwnerHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Every owner's account.
pub(super) type Accounts = HashMap<Owner, Account, BuildHasherDefault<OwnerHasher>>;

/// What one owner is charged, and its reclaim candidates.
#[derive(Debug, Default)]
pub(super) struct Account {
    /// Resident pages charged plus pages in transit may not exceed this.
    limit: usize,
    /// Pages with a frame charged to it.
    resident: usize,
    /// Placeholders for pages asked of pagers for it.
    in_transit: usize,
    /// Candidates for its own reclaim, least recently charged first
    /// (entries may be stale, or repeated).
    queue: VecDeque<(ObjectId, u64)>,
    /// Candidates that could not be reclaimed when last looked at (see
    /// step 4 of the module comment; entries may be stale).
    kept: Vec<(ObjectId, u64)>,
    /// A fault waits for room: the next change must wake it.
    waiting: bool,
}

/// What [`Vm::make_room`] came to.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// The owner may add this many pages now (at least 1, at most what
    /// was asked).
    Pages(usize),
    /// Nothing could be reclaimed, but pages are on their way to the
    /// owner: wait for a task event and try again.
    Wait,
    /// Nothing can be reclaimed and nothing is on its way:
    /// `KERN_RESOURCE_SHORTAGE`.
    Full,
}

impl Vm {
    /// Opens `owner`'s account with `limit` (raised to [`MIN_RESIDENT`]:
    /// a copy-on-write fault holds the page it copies while it takes a
    /// frame for the copy).
    pub fn account_open(&mut self, owner: Owner, limit: usize) {
        let limit = limit.max(MIN_RESIDENT);
        self.accounts.insert(owner, Account { limit, ..Account::default() });
    }

    /// Closes `owner`'s account: its pages stay where they are, charged to
    /// nobody (O(its queue), which is O(its pages) amortised).
    pub fn account_close(&mut self, owner: Owner) {
        let Some(acc) = self.accounts.remove(&owner) else {
            return;
        };
        for (object, offset) in acc.queue.into_iter().chain(acc.kept) {
            if let Some(p) = self.objects.get_mut(&object).and_then(|o| o.pages.get_mut(&offset)) {
                if p.owner == Some(owner) {
                    p.owner = None;
                }
            }
        }
        // Placeholders keep their owner's number until they land; with no
        // account behind it, it charges nobody (see `page_insert`).
    }

    /// Resident pages charged to `owner`.
    pub fn charged(&self, owner: Owner) -> usize {
        self.accounts.get(&owner).map_or(0, |a| a.resident)
    }

    /// `owner`'s limit (`usize::MAX` for one with no account).
    pub fn charge_limit(&self, owner: Owner) -> usize {
        self.accounts.get(&owner).map_or(usize::MAX, |a| a.limit)
    }

    /// Resident pages charged to any owner.
    pub fn charged_total(&self) -> usize {
        self.accounts.values().map(|a| a.resident).sum()
    }

    /// Counts a page just put in at `(object, offset)` for its owner;
    /// `false` if the owner has no account (the page is then nobody's).
    #[must_use]
    pub(super) fn charge(&mut self, object: ObjectId, offset: u64, owner: Owner, resident: bool) -> bool {
        let Some(acc) = self.accounts.get_mut(&owner) else {
            return false;
        };
        if !resident {
            acc.in_transit += 1;
            return true;
        }
        acc.resident += 1;
        acc.queue.push_back((object, offset));
        if acc.queue.len() > 4 * (acc.resident + 64) {
            let live = self.owned_entries(owner, |a| &mut a.queue);
            self.account(owner).queue = live.into();
        }
        true
    }

    /// Uncounts a page that left (`resident`: it had a frame) or a
    /// placeholder that failed. A fault waiting for room hears of it.
    pub(super) fn uncharge(&mut self, owner: Option<Owner>, resident: bool) {
        let Some(acc) = owner.and_then(|o| self.accounts.get_mut(&o)) else {
            return;
        };
        if resident {
            acc.resident -= 1;
        } else {
            acc.in_transit -= 1;
        }
        if std::mem::take(&mut acc.waiting) {
            self.room_events.push(owner.expect("has an account"));
        }
    }

    /// Does `owner` have room for `want` more pages without reclaiming
    /// any (always, for a task with no limit)?
    pub fn has_room(&self, owner: Owner, want: usize) -> bool {
        self.accounts.get(&owner).is_none_or(|acc| acc.resident + acc.in_transit + want <= acc.limit)
    }

    /// Makes room for up to `want` more pages of `owner`, from its own
    /// pages (steps 3 to 5 of the module comment). No owner, or one with
    /// no account: no limit. A cluster gets at most half the limit, so
    /// that a task near it does not give up its whole working set for
    /// pages it may never touch.
    pub fn make_room(&mut self, owner: Option<Owner>, want: usize) -> Room {
        let Some(owner) = owner else { return Room::Pages(want) };
        let Some(acc) = self.accounts.get(&owner) else {
            return Room::Pages(want);
        };
        let want = want.min((acc.limit / 2).max(1));
        let used = acc.resident + acc.in_transit;
        if used.saturating_add(want) <= acc.limit {
            return Room::Pages(want);
        }
        let short = used.saturating_add(want) - acc.limit;
        self.reclaim_own(owner, short);
        let acc = self.account(owner);
        let room = acc.limit.saturating_sub(acc.resident + acc.in_transit);
        if room > 0 {
            Room::Pages(room.min(want))
        } else if acc.in_transit > 0 {
            acc.waiting = true;
            Room::Wait
        } else {
            Room::Full
        }
    }

    /// Reclaims up to `want` of `owner`'s own pages; returns how many it
    /// freed. Each candidate is looked at at most twice: a referenced one
    /// goes to the back of the queue with its bit cleared (while the scan
    /// has second chances left: one lap's worth), a busy one (pinned by
    /// the fault running now) waits for the next call.
    fn reclaim_own(&mut self, owner: Owner, want: usize) -> usize {
        let Some(acc) = self.accounts.get(&owner) else {
            return 0;
        };
        let mut budget = 2 * acc.queue.len() + 8;
        let mut reprieves = Reprieves::lap(acc.queue.len());
        let mut busy = Vec::new();
        let mut freed = 0;
        while freed < want && budget > 0 {
            budget -= 1;
            let Some((object, offset)) = self.account(owner).queue.pop_front() else {
                break;
            };
            self.stats.task_reclaim_visits += 1;
            if self.resident_owner(object, offset) != Some(owner) {
                continue;
            }
            match self.reclaim_one(object, offset, &mut reprieves) {
                Verdict::Gone => {}
                Verdict::Busy => busy.push((object, offset)),
                Verdict::Referenced => self.account(owner).queue.push_back((object, offset)),
                Verdict::Kept => {
                    let a = self.account(owner);
                    a.kept.push((object, offset));
                    if a.kept.len() > 2 * (a.resident + 64) {
                        let live = self.owned_entries(owner, |a| &mut a.kept);
                        self.account(owner).kept = live;
                    }
                }
                Verdict::Freed => freed += 1,
            }
        }
        self.account(owner).queue.extend(busy);
        self.stats.task_reclaims += freed as u64;
        self.stats.pages_reclaimed += freed as u64;
        freed
    }

    /// The account of an owner known to have one.
    fn account(&mut self, owner: Owner) -> &mut Account {
        self.accounts.get_mut(&owner).expect("the owner has an account")
    }

    /// The owner of the resident page at `(object, offset)`, if any.
    fn resident_owner(&self, object: ObjectId, offset: u64) -> Option<Owner> {
        let p = self.objects.get(&object)?.pages.get(&offset)?;
        p.frame.and(p.owner)
    }

    /// Takes the list `which` of `owner`'s account and returns its entries
    /// that still name a resident page of `owner`, each once, in order.
    fn owned_entries<L>(&mut self, owner: Owner, which: impl Fn(&mut Account) -> &mut L) -> Vec<(ObjectId, u64)>
    where
        L: Default + IntoIterator<Item = (ObjectId, u64)>,
    {
        let list = std::mem::take(which(self.account(owner)));
        let mut seen = HashSet::new();
        list.into_iter()
            .filter(|&(o, off)| self.resident_owner(o, off) == Some(owner) && seen.insert((o, off)))
            .collect()
    }

    /// A default pager registered: dirty anonymous pages set aside can
    /// now be paged out, so every set-aside candidate goes back to its
    /// queue (once per registration, O(the pages set aside)).
    pub fn default_pager_registered(&mut self) {
        self.default_pager = true;
        for acc in self.accounts.values_mut() {
            let kept = std::mem::take(&mut acc.kept);
            acc.queue.extend(kept);
        }
    }

    /// Checks every account against the pages themselves (tests only):
    /// the counts are the owned pages', and each owned resident page is a
    /// candidate somewhere.
    #[cfg(test)]
    pub(crate) fn audit_charges(&self) {
        let mut counted: HashMap<Owner, (usize, usize)> = HashMap::new();
        let mut owned = HashSet::new();
        for (&id, o) in &self.objects {
            for (&off, p) in &o.pages {
                let Some(owner) = p.owner.filter(|o| self.accounts.contains_key(o)) else {
                    continue;
                };
                assert!(!p.error, "a failed page is charged: {id:?} {off:#x}");
                let c = counted.entry(owner).or_default();
                if p.frame.is_some() {
                    c.0 += 1;
                    owned.insert((owner, id, off));
                } else {
                    c.1 += 1;
                }
            }
        }
        for (&owner, acc) in &self.accounts {
            let (resident, in_transit) = counted.get(&owner).copied().unwrap_or_default();
            assert_eq!((acc.resident, acc.in_transit), (resident, in_transit), "{owner:?}");
            for &(o, off) in acc.queue.iter().chain(&acc.kept) {
                owned.remove(&(owner, o, off));
            }
        }
        assert!(owned.is_empty(), "charged pages no reclaim can find: {owned:?}");
    }
}

/// The owner a page put in at `(object, offset)` inherits from the
/// placeholder there (a pager answering a fault's request).
pub(super) fn placeholder_owner(vm: &Vm, object: ObjectId, offset: u64) -> Option<Owner> {
    vm.objects.get(&object)?.pages.get(&offset).filter(|p| p.frame.is_none() && !p.error).and_then(|p| p.owner)
}

impl Page {
    /// This page, charged to `owner`.
    pub fn owned_by(self, owner: Option<Owner>) -> Page {
        Page { owner, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmap::soft::SoftMachine;
    use crate::pmap::{Access, Machine, Pmap};
    use crate::types::{VmAddr, VmProt, PAGE_SIZE as P};
    use crate::vm::object::VmObject;
    use crate::vm::PagerOp;
    use std::sync::Arc;

    const A: Owner = Owner(1);
    const B: Owner = Owner(2);

    fn vm() -> (Vm, Arc<SoftMachine>) {
        let m = Arc::new(SoftMachine::new(64));
        (Vm::new(m.clone(), 64), m)
    }

    /// An anonymous object with `n` resident pages charged to `owner`,
    /// dirty or clean.
    fn pages(vm: &mut Vm, owner: Owner, n: u64, dirty: bool) -> ObjectId {
        let o = vm.object_insert(VmObject::temporary(n * P));
        for i in 0..n {
            let f = vm.page_alloc(o, i * P).unwrap();
            vm.page_insert(o, i * P, Page { dirty, ..Page::resident(f) }.owned_by(Some(owner)));
        }
        o
    }

    fn resident(vm: &Vm, o: ObjectId) -> Vec<u64> {
        vm.object(o).pages.iter().filter(|(_, p)| p.frame.is_some()).map(|(&k, _)| k / P).collect()
    }

    #[test]
    fn a_page_is_charged_while_it_is_resident_or_on_its_way_and_the_charge_goes_with_it() {
        let (mut vm, _) = vm();
        vm.account_open(A, 8);
        let o = vm.object_insert(VmObject::external(1));
        // Two placeholders for A's fault: in transit, not resident.
        for off in [0, P] {
            vm.page_insert(o, off, Page::requested().owned_by(Some(A)));
        }
        assert_eq!(vm.charged(A), 0);
        vm.audit_charges();
        // The pager answers one (charged to A) and fails the other (no
        // longer counted at all).
        assert!(vm.data_supply(o, 0, &[1; P as usize], VmProt::NONE, false).unwrap());
        vm.data_error(o, P);
        assert_eq!(vm.charged(A), 1);
        vm.audit_charges();
        // A page the pager supplies unasked is charged to nobody.
        assert!(vm.data_supply(o, 2 * P, &[2; P as usize], VmProt::NONE, false).unwrap());
        assert_eq!((vm.charged(A), vm.charged_total(), vm.resident), (1, 1, 2));
        // A zero fill answering a placeholder, then a flush.
        vm.page_insert(o, 3 * P, Page::requested().owned_by(Some(A)));
        assert!(vm.data_unavailable(o, 3 * P).unwrap());
        assert_eq!(vm.charged(A), 2);
        vm.page_evict(o, 0, true);
        assert_eq!(vm.charged(A), 1);
        vm.audit_charges();
        // The object goes, placeholders and all.
        vm.page_insert(o, 4 * P, Page::requested().owned_by(Some(A)));
        vm.object_deallocate(o);
        assert_eq!((vm.charged(A), vm.charged_total()), (0, 0));
        vm.audit_charges();
        // Its account is whole again.
        assert_eq!((vm.accounts[&A].resident, vm.accounts[&A].in_transit), (0, 0));
    }

    #[test]
    fn a_dead_pager_uncharges_the_pages_on_their_way_and_keeps_the_resident_ones() {
        let (mut vm, _) = vm();
        vm.account_open(A, 8);
        let o = vm.object_insert(VmObject::external(1));
        vm.page_insert(o, 0, Page::requested().owned_by(Some(A)));
        vm.page_insert(o, P, Page::requested().owned_by(Some(A)));
        assert!(vm.data_supply(o, 0, &[1; P as usize], VmProt::NONE, false).unwrap());
        vm.object_reference(o);
        vm.pager_died(o);
        assert_eq!(vm.charged(A), 1);
        vm.audit_charges();
        assert_eq!(vm.accounts[&A].in_transit, 0, "the failed page holds no room");
    }

    #[test]
    fn an_owner_with_no_account_charges_nobody_and_a_closed_account_leaves_its_pages() {
        let (mut vm, _) = vm();
        vm.account_open(A, 8);
        let nobody = pages(&mut vm, Owner(99), 2, false);
        assert_eq!(vm.charged_total(), 0);
        assert!(vm.object(nobody).pages.values().all(|p| p.owner.is_none()));
        let o = pages(&mut vm, A, 3, false);
        vm.page_insert(o, 3 * P, Page::requested().owned_by(Some(A)));
        vm.account_close(A);
        assert_eq!((vm.charged_total(), resident(&vm, o).len()), (0, 3));
        assert!(vm.object(o).pages.values().all(|p| p.frame.is_none() || p.owner.is_none()));
        // The placeholder lands after the close: charged to nobody.
        assert!(vm.data_supply(o, 3 * P, &[1; P as usize], VmProt::NONE, false).unwrap());
        assert!(vm.object(o).pages[&(3 * P)].owner.is_none());
        vm.audit_charges();
    }

    #[test]
    fn room_comes_from_the_owners_least_recently_charged_pages_and_no_one_elses() {
        let (mut vm, _) = vm();
        vm.account_open(A, 4);
        vm.account_open(B, 4);
        // B's pages are older than A's in the kernel's own queue.
        let b = pages(&mut vm, B, 4, false);
        let a = pages(&mut vm, A, 4, false);
        assert_eq!(vm.make_room(Some(A), 1), Room::Pages(1));
        assert_eq!((resident(&vm, a), resident(&vm, b)), (vec![1, 2, 3], vec![0, 1, 2, 3]));
        // A dirty page goes back (to the default pager), a clean one is
        // dropped; either way only A's.
        vm.object_mut(a).pages.get_mut(&P).unwrap().dirty = true;
        vm.default_pager_registered();
        let f = vm.page_alloc(a, 0).unwrap();
        vm.page_insert(a, 0, Page::resident(f).owned_by(Some(A)));
        assert_eq!(vm.make_room(Some(A), 2), Room::Pages(2));
        assert_eq!((resident(&vm, a), resident(&vm, b)), (vec![0, 3], vec![0, 1, 2, 3]));
        assert!(vm
            .outbox
            .iter()
            .any(|op| matches!(op, PagerOp::DataReturn { object, offset, .. } if *object == a && *offset == P)));
        assert_eq!((vm.charged(A), vm.charged(B), vm.stats.task_reclaims), (2, 4, 3));
        vm.audit_charges();
    }

    #[test]
    fn a_referenced_page_gets_a_second_chance() {
        let (mut vm, m) = vm();
        vm.account_open(A, 3);
        let a = pages(&mut vm, A, 3, false);
        // The oldest page is used through a mapping.
        let pmap = m.create();
        let f = vm.object(a).pages[&0].frame.unwrap();
        m.enter(pmap, VmAddr(0), &[f], VmProt::READ).unwrap();
        m.access(pmap, VmAddr(0), Access::Load(&mut [0u8; 8])).unwrap();
        assert_eq!(vm.make_room(Some(A), 1), Room::Pages(1));
        assert_eq!(resident(&vm, a), vec![0, 2]);
        // It went to the back of the queue, behind page 2; then it goes.
        let add = |vm: &mut Vm, page: u64| {
            let f = vm.page_alloc(a, page * P).unwrap();
            vm.page_insert(a, page * P, Page::resident(f).owned_by(Some(A)));
        };
        add(&mut vm, 3);
        assert_eq!(vm.make_room(Some(A), 1), Room::Pages(1));
        assert_eq!(resident(&vm, a), vec![0, 3]);
        add(&mut vm, 4);
        assert_eq!(vm.make_room(Some(A), 1), Room::Pages(1));
        assert_eq!(resident(&vm, a), vec![3, 4]);
        assert_eq!(vm.stats.task_reclaim_visits, 4, "each page looked at once, page 0 twice");
        vm.audit_charges();
    }

    #[test]
    fn with_nothing_reclaimable_room_is_refused_and_the_pages_are_not_looked_at_again() {
        let (mut vm, _) = vm();
        vm.account_open(A, 4);
        // Dirty anonymous pages, and no default pager.
        let a = pages(&mut vm, A, 4, true);
        assert_eq!(vm.make_room(Some(A), 1), Room::Full);
        let visits = vm.stats.task_reclaim_visits;
        assert_eq!(visits, 4);
        for _ in 0..100 {
            assert_eq!(vm.make_room(Some(A), 1), Room::Full);
        }
        assert_eq!(vm.stats.task_reclaim_visits, visits, "the pages were set aside");
        assert_eq!((resident(&vm, a).len(), vm.charged(A), vm.stats.pageouts), (4, 4, 0));
        assert!(vm.outbox.is_empty());
        vm.audit_charges();
        // A default pager: the same pages can go now.
        vm.default_pager_registered();
        assert_eq!(vm.make_room(Some(A), 1), Room::Pages(1));
        assert_eq!(vm.charged(A), 3);
        assert!(matches!(vm.outbox[..], [PagerOp::CreateDefault { .. }, PagerOp::DataReturn { .. }]));
        vm.audit_charges();
    }

    #[test]
    fn a_cluster_gets_the_room_there_is_and_at_most_half_the_limit() {
        let (mut vm, _) = vm();
        vm.account_open(A, 4);
        // At most half the limit, with no reclaim while there is room.
        assert_eq!(vm.make_room(Some(A), 8), Room::Pages(2));
        let _ = pages(&mut vm, A, 3, true);
        assert_eq!(vm.make_room(Some(A), 8), Room::Pages(1));
        let a = pages(&mut vm, A, 1, false);
        assert_eq!(vm.make_room(Some(A), 8), Room::Pages(1), "the clean page is taken for one");
        assert!(resident(&vm, a).is_empty());
        vm.audit_charges();
    }

    #[test]
    fn with_nothing_reclaimable_but_pages_on_their_way_room_is_waited_for() {
        let (mut vm, _) = vm();
        vm.account_open(A, 4);
        let _ = pages(&mut vm, A, 2, true);
        let o = vm.object_insert(VmObject::external(1));
        vm.page_insert(o, 0, Page::requested().owned_by(Some(A)));
        vm.page_insert(o, P, Page::requested().owned_by(Some(A)));
        // All four are A's: two unreclaimable, two on their way.
        assert_eq!(vm.make_room(Some(A), 1), Room::Wait);
        assert!(vm.room_events.is_empty());
        // One lands: the waiter hears of it, and that page (clean) can go.
        assert!(vm.data_supply(o, 0, &[1; P as usize], VmProt::NONE, false).unwrap());
        assert_eq!(vm.room_events, [A]);
        assert_eq!(vm.make_room(Some(A), 1), Room::Pages(1));
        assert_eq!(resident(&vm, o), Vec::<u64>::new());
        vm.audit_charges();
    }

    #[test]
    fn the_queue_stays_within_four_times_the_pages_charged() {
        let (mut vm, _) = vm();
        vm.account_open(A, 64);
        let o = vm.object_insert(VmObject::temporary(P));
        for _ in 0..10_000 {
            let f = vm.page_alloc(o, 0).unwrap();
            vm.page_insert(o, 0, Page::resident(f).owned_by(Some(A)));
            vm.page_evict(o, 0, false);
        }
        assert!(vm.accounts[&A].queue.len() <= 4 * 64 + 1, "{}", vm.accounts[&A].queue.len());
        vm.audit_charges();
    }
}
