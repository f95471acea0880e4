//! The software MMU: page tables, protection bits, referenced/modified bits
//! and physical frames, all in ordinary memory.
//!
//! It is the reference backend: deterministic, and faulting exactly where
//! hardware would (an access with no translation, or one whose translation
//! lacks the access, faults; nothing else does).
//!
//! ```text
//!   pmaps[PmapId] ──► PageTable { vpn / 64 ─► Leaf { present, [Pte { frame, prot }; 64] } }
//!                                                                  │
//!   pv[frame] ◄── reverse map ─────────────────────────────────────┘
//!                 { (pmap, vpn) } for page_protect
//!   attrs[frame]: MODIFIED | REFERENCED        frames[frame]: 4 KiB of bytes
//!                                              free: the frames no page holds
//! ```
//!
//! As a page store it is physical memory: any frame can hold the page of
//! any `(object, offset)`, so the key of an allocation is not kept, and a
//! rename relabels nothing (the frame is the page's under its new key).
//! It can also keep its page tables in software over another store
//! ([`SoftMachine::with_store`], such as a host's memfd per object): then
//! every page-store call, and the bytes of every access, go to that store.
//!
//! Locking: an access holds its page table's read lock for the whole copy,
//! so `remove`/`protect` (which take the write lock) return only after every
//! access through the old translation has finished — the software TLB
//! shootdown. The VM serialises all table updates under its own lock.
//!
//! Lock order: `pv`, then `pmaps`, then one page table. Only
//! `page_protect` lowering a frame's translations holds `pv` while it takes
//! table locks (it walks the frame's set in place); every other path
//! updates the reverse map after it has released the table (`enter`,
//! `remove`, `destroy`) or before it takes one (`page_protect` removing), so
//! no thread ever waits for `pv` holding a table or `pmaps`.
//!
//! It can also play a lesser host, for tests of the VM: it refuses
//! operations when told to ([`SoftMachine::refuse`]), as a host short of
//! resources would, and it can report the referenced and modified bits
//! only as approximately as a host may ([`Bits`]).
//!
//! Cost: a page table is a hash table of 64-page leaves (a lookup is one
//! hash probe and an index, as a two-level hardware table is two loads),
//! whose leaf numbers are also kept in order. So `remove` and `protect`
//! look only at the leaves their range meets and, in them, only at the
//! translations inside the range: O((k + 1) log n) at worst for k of n
//! translations, however wide the range and however full the table. A
//! leaf takes about 520 bytes however few of its pages are mapped, as a
//! hardware page-table page does. The reverse map holds a hash set per
//! frame (the first translation inline, so a frame mapped once allocates
//! nothing), so forgetting one translation of a frame mapped n times is
//! O(1), and `page_protect` costs O(1) per translation of the frame.

use super::{Access, Frame, HwFault, Machine, ObjectId, PageStore, Pmap, PmapError, PmapId, StoreError};
use crate::sync::{Mutex, RwLock};
use crate::types::{VmAddr, VmProt, PAGE_SHIFT, PAGE_SIZE};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const MODIFIED: u8 = 1;
const REFERENCED: u8 = 2;

#[derive(Clone, Copy, Debug)]
struct Pte {
    frame: Frame,
    prot: VmProt,
}

impl Pte {
    /// What an empty slot holds (never read: `Leaf::present` says which
    /// slots hold translations).
    const EMPTY: Pte = Pte { frame: Frame(0), prot: VmProt::NONE };
}

/// Pages per leaf of a page table: one bit each in `Leaf::present`.
const LEAF_PAGES: u64 = 64;

/// The translations of `LEAF_PAGES` consecutive pages.
struct Leaf {
    /// Bit `i` is set when `ptes[i]` is a translation.
    present: u64,
    ptes: [Pte; LEAF_PAGES as usize],
}

/// The bits of a leaf's slots `lo..=hi`.
fn slot_mask(lo: u64, hi: u64) -> u64 {
    (u64::MAX << lo) & (u64::MAX >> (LEAF_PAGES - 1 - hi))
}

/// The slots whose bits are set in `bits`, lowest first.
fn slots(mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            i
        })
    })
}

/// One pmap's translations: leaves by leaf number (`vpn / LEAF_PAGES`),
/// each holding at least one translation, and the leaf numbers in order.
#[derive(Default)]
struct PageTable {
    leaves: HashMap<u64, Box<Leaf>>,
    order: BTreeSet<u64>,
    /// Translations held.
    len: usize,
}

impl PageTable {
    /// A page number's leaf and slot.
    fn split(vpn: u64) -> (u64, usize) {
        (vpn / LEAF_PAGES, (vpn % LEAF_PAGES) as usize)
    }

    fn get(&self, vpn: u64) -> Option<&Pte> {
        let (l, i) = Self::split(vpn);
        let leaf = self.leaves.get(&l)?;
        (leaf.present & 1 << i != 0).then(|| &leaf.ptes[i])
    }

    fn get_mut(&mut self, vpn: u64) -> Option<&mut Pte> {
        let (l, i) = Self::split(vpn);
        let leaf = self.leaves.get_mut(&l)?;
        (leaf.present & 1 << i != 0).then(|| &mut leaf.ptes[i])
    }

    /// Sets the translation of `vpn`; returns the one it replaces.
    fn insert(&mut self, vpn: u64, pte: Pte) -> Option<Pte> {
        let (l, i) = Self::split(vpn);
        let order = &mut self.order;
        let leaf = self.leaves.entry(l).or_insert_with(|| {
            order.insert(l);
            Box::new(Leaf { present: 0, ptes: [Pte::EMPTY; LEAF_PAGES as usize] })
        });
        let old = (leaf.present & 1 << i != 0).then_some(leaf.ptes[i]);
        leaf.present |= 1 << i;
        leaf.ptes[i] = pte;
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Forgets the translation of `vpn`, if any.
    fn remove(&mut self, vpn: u64) -> Option<Pte> {
        let (l, i) = Self::split(vpn);
        let leaf = self.leaves.get_mut(&l)?;
        if leaf.present & 1 << i == 0 {
            return None;
        }
        leaf.present &= !(1 << i);
        let pte = leaf.ptes[i];
        if leaf.present == 0 {
            self.leaves.remove(&l);
            self.order.remove(&l);
        }
        self.len -= 1;
        Some(pte)
    }

    /// Calls `f` on every translation in `range` (page numbers), in order,
    /// and forgets those for which it returns `false`; returns how many it
    /// visited. Only the leaves the range meets are looked at (at most two
    /// more than hold translations inside it), and in them only the slots
    /// that hold translations.
    fn for_range(&mut self, range: Range<u64>, mut f: impl FnMut(u64, &mut Pte) -> bool) -> usize {
        if range.is_empty() {
            return 0;
        }
        let (first, last) = (range.start / LEAF_PAGES, (range.end - 1) / LEAF_PAGES);
        let (mut visited, mut emptied) = (0, Vec::new());
        for &l in self.order.range(first..=last) {
            let leaf = self.leaves.get_mut(&l).expect("leaves and their order agree");
            let lo = if l == first { range.start % LEAF_PAGES } else { 0 };
            let hi = if l == last { (range.end - 1) % LEAF_PAGES } else { LEAF_PAGES - 1 };
            for i in slots(leaf.present & slot_mask(lo, hi)) {
                visited += 1;
                if !f(l * LEAF_PAGES + i as u64, &mut leaf.ptes[i]) {
                    leaf.present &= !(1 << i);
                    self.len -= 1;
                }
            }
            if leaf.present == 0 {
                emptied.push(l);
            }
        }
        for l in emptied {
            self.leaves.remove(&l);
            self.order.remove(&l);
        }
        visited
    }

    /// The translations of `range` (page numbers), in order.
    fn translations_in(&self, range: Range<u64>) -> impl Iterator<Item = Pte> + '_ {
        range.filter_map(|vpn| self.get(vpn).copied())
    }

    /// Every translation, in no particular order.
    fn into_translations(self) -> impl Iterator<Item = (u64, Pte)> {
        self.leaves
            .into_iter()
            .flat_map(|(l, leaf)| slots(leaf.present).map(move |i| (l * LEAF_PAGES + i as u64, leaf.ptes[i])))
    }
}

/// Every translation of each mapped frame.
type ReverseMap = HashMap<Frame, Translations>;

/// The translations of one frame, as `(pmap, vpn)`, each once. Most
/// frames have one, kept inline; only a frame mapped more than once
/// allocates a set.
#[derive(Debug, Default)]
struct Translations {
    one: Option<(PmapId, u64)>,
    /// Boxed so that the reverse map's entries stay 32 bytes, not 72:
    /// entering a page (a fault) then costs a third less.
    #[allow(clippy::box_collection)]
    more: Option<Box<HashSet<(PmapId, u64)>>>,
}

impl Translations {
    fn insert(&mut self, t: (PmapId, u64)) {
        if self.one == Some(t) || self.more.as_ref().is_some_and(|m| m.contains(&t)) {
            return;
        }
        match self.one {
            None => self.one = Some(t),
            Some(_) => {
                self.more.get_or_insert_with(Box::default).insert(t);
            }
        }
    }

    fn remove(&mut self, t: (PmapId, u64)) {
        // A vacated `one` is left empty, not refilled from `more`: finding
        // an element of a hash set can cost a scan of it.
        if self.one == Some(t) {
            self.one = None;
        } else if let Some(m) = &mut self.more {
            m.remove(&t);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.one.is_some()) + self.more.as_ref().map_or(0, |m| m.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = (PmapId, u64)> + '_ {
        self.one.into_iter().chain(self.more.iter().flat_map(|m| m.iter().copied()))
    }
}

/// A software machine with `frame_count` physical pages.
#[allow(missing_debug_implementations)]
pub struct SoftMachine {
    /// Where the pages' bytes live.
    bytes: Bytes,
    attrs: Vec<AtomicU8>,
    pmaps: RwLock<Vec<Option<RwLock<PageTable>>>>,
    pv: Mutex<ReverseMap>,
    /// Translations visited (see [`SoftMachine::pte_visits`]).
    pte_visits: AtomicU64,
    /// Reverse-map entries visited (see [`SoftMachine::pv_visits`]).
    pv_visits: AtomicU64,
    /// Operations still to refuse, by [`Refuse`] kind.
    refusals: [AtomicU64; 3],
    /// How it reports referenced and modified bits.
    bits: Bits,
    /// Calls that broke the contract (see [`SoftMachine::breaches`]).
    breaches: AtomicU64,
    /// Write faults taken (see [`SoftMachine::write_faults`]).
    write_faults: AtomicU64,
    /// Staging areas by owner (see [`SoftMachine::set_staging`]).
    staging: RwLock<HashMap<u64, Vec<u8>>>,
}

/// Where a [`SoftMachine`] keeps the bytes of its pages.
enum Bytes {
    /// Its own frames (the soft MMU as physical memory).
    Frames {
        frames: Vec<RwLock<Box<[u8]>>>,
        /// Frames no page holds, the next to allocate last.
        free: Mutex<Vec<Frame>>,
    },
    /// Another page store (a host's), behind the software page tables.
    Store(Box<dyn PageStore>),
}

/// How a [`SoftMachine`] reports the referenced and modified bits: exactly,
/// as hardware does, or as a host that only approximates them may (the
/// contract allows both, see [`crate::pmap`]). The approximate machines
/// also check that the VM calls `clear_modify` only when no translation of
/// the page allows writing ([`SoftMachine::breaches`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bits {
    /// Every access sets the referenced bit, every store the modified bit.
    Exact,
    /// Every page is always referenced and always modified, whatever was
    /// done to it: a host with no bits at all, answering conservatively.
    Always,
    /// No referenced bits (always referenced); stores are learned from
    /// write-protect faults, as a userfaultfd host learns them: a writable
    /// translation of a page not modified since its last `clear_modify` is
    /// write-protected underneath, and the first store through it faults
    /// into the machine, which marks the page modified and lifts the
    /// protection of the whole aligned run of [`WRITE_FAULT_RUN`] pages
    /// around it in that address space at once, marking every page mapped
    /// writable there modified too (one fault per run, as a host that
    /// resolves a fault for a cluster: more pages reported modified than
    /// were written).
    WriteFaults,
}

/// Pages whose write protection one write fault lifts, in
/// [`Bits::WriteFaults`].
pub const WRITE_FAULT_RUN: u64 = 16;

impl SoftMachine {
    /// A machine with `frame_count` frames of physical memory. Frame
    /// storage is allocated on first use.
    pub fn new(frame_count: usize) -> SoftMachine {
        SoftMachine::with_bits(frame_count, Bits::Exact)
    }

    /// A machine whose referenced and modified bits are `bits`: exact, or
    /// the approximations a host may give instead (see [`Bits`]).
    pub fn with_bits(frame_count: usize, bits: Bits) -> SoftMachine {
        let bytes = Bytes::Frames {
            frames: (0..frame_count).map(|_| RwLock::new(Box::default())).collect(),
            free: Mutex::new((0..frame_count as u32).rev().map(Frame).collect()),
        };
        SoftMachine::build(bytes, frame_count, bits)
    }

    /// A machine whose page tables are software but whose pages' bytes
    /// live in `store` (a host's, such as a memfd per object): every
    /// [`PageStore`] call goes to `store`, and accesses read and write
    /// through it. The store must name its pages with frame numbers below
    /// its [`PageStore::capacity`] (the attribute bits are kept in a table
    /// of that size, as for the machine's own frames). Exact bits.
    pub fn with_store(store: Box<dyn PageStore>) -> SoftMachine {
        let n = store.capacity();
        SoftMachine::build(Bytes::Store(store), n, Bits::Exact)
    }

    fn build(bytes: Bytes, frame_count: usize, bits: Bits) -> SoftMachine {
        SoftMachine {
            bits,
            breaches: AtomicU64::new(0),
            write_faults: AtomicU64::new(0),
            staging: RwLock::new(HashMap::new()),
            bytes,
            attrs: (0..frame_count).map(|_| AtomicU8::new(0)).collect(),
            pmaps: RwLock::new(Vec::new()),
            pv: Mutex::new(HashMap::new()),
            pte_visits: AtomicU64::new(0),
            pv_visits: AtomicU64::new(0),
            refusals: Default::default(),
        }
    }

    /// How many translations `remove`, `protect`, `page_protect` and
    /// `destroy` have visited since the machine was made (for tests and
    /// benchmarks; single accesses, `enter` and `extract` are not
    /// counted). A range operation costs O(log n) per visit at worst, plus
    /// O(log n) for finding the range (in which it meets at most two
    /// leaves holding no translation it visits).
    pub fn pte_visits(&self) -> u64 {
        self.pte_visits.load(Ordering::Relaxed)
    }

    /// How many reverse-map (frame to translations) entries have been
    /// visited, added or removed since the machine was made (for tests
    /// and benchmarks). Each costs O(1).
    pub fn pv_visits(&self) -> u64 {
        self.pv_visits.load(Ordering::Relaxed)
    }

    /// Calls that broke the contract since the machine was made: on an
    /// approximate machine ([`Bits`]), `clear_modify` of a page some
    /// translation still allows writing (a host learning of stores from
    /// write faults would miss the next one).
    pub fn breaches(&self) -> u64 {
        self.breaches.load(Ordering::Relaxed)
    }

    /// Write faults taken ([`Bits::WriteFaults`]).
    pub fn write_faults(&self) -> u64 {
        self.write_faults.load(Ordering::Relaxed)
    }

    /// Does a translation of `frame`, in any pmap, allow writing?
    fn writable_anywhere(&self, frame: Frame) -> bool {
        let pv = self.pv.lock();
        let Some(set) = pv.get(&frame) else { return false };
        let writable = set.iter().any(|(pmap, vpn)| {
            self.with_table(pmap, |t| t.get(vpn).is_some_and(|p| p.frame == frame && p.prot.contains(VmProt::WRITE)))
                .unwrap_or(false)
        });
        writable
    }

    fn count_pte(&self, n: usize) {
        self.pte_visits.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn count_pv(&self, n: usize) {
        self.pv_visits.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn with_table<R>(&self, pmap: PmapId, f: impl FnOnce(&mut PageTable) -> R) -> Option<R> {
        let pmaps = self.pmaps.read();
        let table = pmaps.get(pmap.0 as usize)?.as_ref()?;
        let mut t = table.write();
        Some(f(&mut t))
    }

    /// Forgets `(pmap, vpn)` among the translations of `frame`.
    fn pv_remove(&self, pv: &mut ReverseMap, frame: Frame, pmap: PmapId, vpn: u64) {
        if let Some(set) = pv.get_mut(&frame) {
            self.count_pv(1);
            set.remove((pmap, vpn));
            if set.is_empty() {
                pv.remove(&frame);
            }
        }
    }

    /// The page numbers of `[start, end)`; empty if `end <= start`.
    fn range(start: VmAddr, end: VmAddr) -> Range<u64> {
        let (s, e) = (start.0 >> PAGE_SHIFT, end.0.div_ceil(PAGE_SIZE));
        s..e.max(s)
    }

    /// How many translations the pmap holds (for reports and tests).
    pub fn resident_count(&self, pmap: PmapId) -> usize {
        self.with_table(pmap, |t| t.len).unwrap_or(0)
    }
}

impl PageStore for SoftMachine {
    fn capacity(&self) -> usize {
        match &self.bytes {
            Bytes::Frames { frames, .. } => frames.len(),
            Bytes::Store(s) => s.capacity(),
        }
    }

    fn alloc(&self, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        match &self.bytes {
            Bytes::Frames { free, .. } => free.lock().pop().ok_or(StoreError::Exhausted),
            Bytes::Store(s) => {
                let page = s.alloc(object, offset)?;
                assert!((page.0 as usize) < self.attrs.len(), "{page:?} is past the store's capacity");
                Ok(page)
            }
        }
    }

    fn alloc_run(&self, object: ObjectId, offset: u64, n: usize) -> Result<Vec<Frame>, StoreError> {
        match &self.bytes {
            Bytes::Frames { free, .. } => {
                let mut free = free.lock();
                if free.len() < n {
                    return Err(StoreError::Exhausted);
                }
                let at = free.len() - n;
                Ok(free.split_off(at).into_iter().rev().collect())
            }
            Bytes::Store(s) => {
                let pages = s.alloc_run(object, offset, n)?;
                assert!(pages.iter().all(|p| (p.0 as usize) < self.attrs.len()), "a page past the store's capacity");
                Ok(pages)
            }
        }
    }

    fn free(&self, page: Frame) {
        match &self.bytes {
            Bytes::Frames { free, .. } => free.lock().push(page),
            Bytes::Store(s) => s.free(page),
        }
    }

    fn rename(&self, page: Frame, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        match &self.bytes {
            Bytes::Frames { .. } => Ok(page),
            Bytes::Store(s) => s.rename(page, object, offset),
        }
    }

    fn read(&self, frame: Frame, offset: usize, buf: &mut [u8]) {
        let frames = match &self.bytes {
            Bytes::Frames { frames, .. } => frames,
            Bytes::Store(s) => return s.read(frame, offset, buf),
        };
        let f = frames[frame.0 as usize].read();
        if f.is_empty() {
            buf.fill(0);
        } else {
            buf.copy_from_slice(&f[offset..offset + buf.len()]);
        }
    }

    fn write(&self, frame: Frame, offset: usize, data: &[u8]) {
        let frames = match &self.bytes {
            Bytes::Frames { frames, .. } => frames,
            Bytes::Store(s) => return s.write(frame, offset, data),
        };
        let mut f = frames[frame.0 as usize].write();
        if f.is_empty() {
            *f = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
        }
        f[offset..offset + data.len()].copy_from_slice(data);
    }

    fn zero(&self, frame: Frame) {
        let frames = match &self.bytes {
            Bytes::Frames { frames, .. } => frames,
            Bytes::Store(s) => return s.zero(frame),
        };
        let mut f = frames[frame.0 as usize].write();
        if !f.is_empty() {
            f.fill(0);
        }
    }

    fn copy(&self, from: Frame, to: Frame) {
        let frames = match &self.bytes {
            Bytes::Frames { frames, .. } => frames,
            Bytes::Store(s) => return s.copy(from, to),
        };
        if from == to {
            return;
        }
        let data = frames[from.0 as usize].read().clone();
        *frames[to.0 as usize].write() = data;
    }

    fn object_released(&self, object: ObjectId) {
        if let Bytes::Store(s) = &self.bytes {
            s.object_released(object);
        }
    }

    fn staging_len(&self, owner: u64) -> u64 {
        match &self.bytes {
            Bytes::Frames { .. } => self.staging.read().get(&owner).map_or(0, |b| b.len() as u64),
            Bytes::Store(s) => s.staging_len(owner),
        }
    }

    fn write_staged(&self, pages: &[Frame], owner: u64, offset: u64) -> Result<(), StoreError> {
        if let Bytes::Store(s) = &self.bytes {
            return s.write_staged(pages, owner, offset);
        }
        let staging = self.staging.read();
        let bytes = staging.get(&owner).ok_or(StoreError::NoStaging)?;
        let start = usize::try_from(offset).map_err(|_| StoreError::NoStaging)?;
        let data = (pages.len() * PAGE_SIZE as usize)
            .checked_add(start)
            .and_then(|end| bytes.get(start..end))
            .ok_or(StoreError::NoStaging)?;
        for (&page, d) in pages.iter().zip(data.chunks(PAGE_SIZE as usize)) {
            self.write(page, 0, d);
        }
        Ok(())
    }
}

impl SoftMachine {
    /// Gives the task numbered `owner` a staging area holding `bytes`
    /// (what a host gets from a pager process's shared buffer; see
    /// [`PageStore::write_staged`]), replacing any it had; `None` takes
    /// it away. For tests of staged supplies on the software MMU.
    pub fn set_staging(&self, owner: u64, bytes: Option<Vec<u8>>) {
        let mut staging = self.staging.write();
        match bytes {
            Some(b) => staging.insert(owner, b),
            None => staging.remove(&owner),
        };
    }
}

/// Operations a [`SoftMachine`] can be told to refuse, to play a host
/// that fails them (see [`SoftMachine::refuse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// `enter` fails with [`PmapError::ResourceShortage`], entering nothing.
    Enter,
    /// `protect` and `page_protect` fail with
    /// [`PmapError::ResourceShortage`], lowering nothing.
    Lower,
    /// `remove` and `page_remove` take more than asked: every address
    /// space they touch is destroyed (unreachable from then on), and they
    /// fail with [`PmapError::Unreachable`].
    Remove,
}

impl SoftMachine {
    /// The next `count` operations of kind `what` are refused, as a host
    /// short of resources would refuse them (for tests of the VM's
    /// answers to a failing pmap).
    pub fn refuse(&self, what: Refuse, count: u64) {
        self.refusals[what as usize].store(count, Ordering::Relaxed);
    }

    /// Is this operation to be refused (one refusal used up)?
    fn refused(&self, what: Refuse) -> bool {
        let n = &self.refusals[what as usize];
        n.load(Ordering::Relaxed) != 0
            && n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1)).is_ok()
    }

    fn remove_range(&self, pmap: PmapId, start: VmAddr, end: VmAddr) {
        let range = Self::range(start, end);
        let mut removed = Vec::new();
        let visited = self.with_table(pmap, |t| {
            t.for_range(range, |vpn, pte| {
                removed.push((vpn, *pte));
                false
            })
        });
        self.count_pte(visited.unwrap_or(0));
        if !removed.is_empty() {
            let mut pv = self.pv.lock();
            for (vpn, pte) in removed {
                self.pv_remove(&mut pv, pte.frame, pmap, vpn);
            }
        }
    }

    fn page_lower(&self, frame: Frame, prot: VmProt) {
        if prot.is_empty() {
            // Every translation goes: the frame's set leaves the reverse
            // map whole, and the tables are visited after the pv lock is
            // released.
            let Some(set) = self.pv.lock().remove(&frame) else { return };
            self.count_pv(set.len());
            self.count_pte(set.len());
            for (pmap, vpn) in set.iter() {
                self.with_table(pmap, |t| {
                    if t.get(vpn).is_some_and(|pte| pte.frame == frame) {
                        t.remove(vpn);
                    }
                });
            }
        } else {
            // Lowering changes no set: walk it in place, holding the pv
            // lock over the table locks (the lock order above).
            let pv = self.pv.lock();
            let Some(set) = pv.get(&frame) else { return };
            self.count_pv(set.len());
            self.count_pte(set.len());
            for (pmap, vpn) in set.iter() {
                self.with_table(pmap, |t| {
                    if let Some(pte) = t.get_mut(vpn).filter(|pte| pte.frame == frame) {
                        pte.prot &= prot;
                    }
                });
            }
        }
    }
}

impl Pmap for SoftMachine {
    fn create(&self) -> PmapId {
        // Slots of destroyed pmaps are never reused: a terminated task's
        // stale handle must miss, not reach a later task's tables.
        let mut pmaps = self.pmaps.write();
        pmaps.push(Some(RwLock::new(PageTable::default())));
        PmapId((pmaps.len() - 1) as u32)
    }

    fn destroy(&self, pmap: PmapId) {
        let table = {
            let mut pmaps = self.pmaps.write();
            pmaps.get_mut(pmap.0 as usize).and_then(Option::take)
        };
        if let Some(table) = table {
            let table = table.into_inner();
            self.count_pte(table.len);
            let mut pv = self.pv.lock();
            for (vpn, pte) in table.into_translations() {
                self.pv_remove(&mut pv, pte.frame, pmap, vpn);
            }
        }
    }

    fn enter(&self, pmap: PmapId, va: VmAddr, pages: &[Frame], prot: VmProt) -> Result<(), PmapError> {
        if self.refused(Refuse::Enter) {
            return Err(PmapError::ResourceShortage);
        }
        let first = va.0 >> PAGE_SHIFT;
        if let [frame] = *pages {
            // One page (a fault): as below, with nothing to collect.
            let old = self.with_table(pmap, |t| t.insert(first, Pte { frame, prot })).ok_or(PmapError::Unreachable)?;
            if old.is_none_or(|o| o.frame != frame) {
                let mut pv = self.pv.lock();
                if let Some(old) = old {
                    self.pv_remove(&mut pv, old.frame, pmap, first);
                }
                pv.entry(frame).or_default().insert((pmap, first));
                self.count_pv(1);
            }
            return Ok(());
        }
        // Each translation replaced by one of another frame: its old
        // frame's reverse-map entry goes, the new one's comes.
        let mut moved = Vec::new();
        self.with_table(pmap, |t| {
            for (i, &frame) in pages.iter().enumerate() {
                let vpn = first + i as u64;
                let old = t.insert(vpn, Pte { frame, prot });
                if old.is_none_or(|o| o.frame != frame) {
                    moved.push((vpn, old.map(|o| o.frame), frame));
                }
            }
        })
        .ok_or(PmapError::Unreachable)?;
        if !moved.is_empty() {
            let mut pv = self.pv.lock();
            for (vpn, old, frame) in moved {
                if let Some(old) = old {
                    self.pv_remove(&mut pv, old, pmap, vpn);
                }
                pv.entry(frame).or_default().insert((pmap, vpn));
                self.count_pv(1);
            }
        }
        Ok(())
    }

    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) -> Result<(), PmapError> {
        if self.refused(Refuse::Remove) {
            self.destroy(pmap);
            return Err(PmapError::Unreachable);
        }
        self.remove_range(pmap, start, end);
        Ok(())
    }

    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) -> Result<(), PmapError> {
        if prot.is_empty() {
            return self.remove(pmap, start, end);
        }
        if self.refused(Refuse::Lower) {
            return Err(PmapError::ResourceShortage);
        }
        let range = Self::range(start, end);
        let visited = self.with_table(pmap, |t| {
            t.for_range(range, |_, pte| {
                pte.prot &= prot;
                true
            })
        });
        self.count_pte(visited.unwrap_or(0));
        Ok(())
    }

    fn page_protect(&self, frame: Frame, prot: VmProt) -> Result<(), PmapError> {
        if prot.is_empty() {
            return self.page_remove(frame);
        }
        if self.refused(Refuse::Lower) {
            return Err(PmapError::ResourceShortage);
        }
        self.page_lower(frame, prot);
        Ok(())
    }

    fn page_remove(&self, frame: Frame) -> Result<(), PmapError> {
        if self.refused(Refuse::Remove) {
            let pmaps: BTreeSet<PmapId> =
                self.pv.lock().get(&frame).map(|set| set.iter().map(|(p, _)| p).collect()).unwrap_or_default();
            if !pmaps.is_empty() {
                pmaps.into_iter().for_each(|p| self.destroy(p));
                return Err(PmapError::Unreachable);
            }
            return Ok(());
        }
        self.page_lower(frame, VmProt::NONE);
        Ok(())
    }

    fn is_modified(&self, frame: Frame) -> bool {
        self.bits == Bits::Always || self.attrs[frame.0 as usize].load(Ordering::Acquire) & MODIFIED != 0
    }

    fn clear_modify(&self, frame: Frame) {
        if self.bits != Bits::Exact && self.writable_anywhere(frame) {
            self.breaches.fetch_add(1, Ordering::Relaxed);
        }
        self.attrs[frame.0 as usize].fetch_and(!MODIFIED, Ordering::AcqRel);
    }

    fn is_referenced(&self, frame: Frame) -> bool {
        self.bits != Bits::Exact || self.attrs[frame.0 as usize].load(Ordering::Acquire) & REFERENCED != 0
    }

    fn clear_reference(&self, frame: Frame) {
        self.attrs[frame.0 as usize].fetch_and(!REFERENCED, Ordering::AcqRel);
    }

    fn extract(&self, pmap: PmapId, va: VmAddr) -> Option<(Frame, VmProt)> {
        self.with_table(pmap, |t| t.get(va.0 >> PAGE_SHIFT).map(|p| (p.frame, p.prot))).flatten()
    }
}

impl Machine for SoftMachine {
    fn access(&self, pmap: PmapId, va: VmAddr, access: Access<'_>) -> Result<(), HwFault> {
        let want = match access {
            Access::Load(_) => VmProt::READ,
            Access::Store(_) => VmProt::WRITE,
            Access::Execute => VmProt::EXECUTE,
        };
        let fault = |protection| HwFault { va, access: want, protection };
        let pmaps = self.pmaps.read();
        let Some(Some(table)) = pmaps.get(pmap.0 as usize) else {
            return Err(fault(false));
        };
        let table = table.read();
        let pte = *table.get(va.0 >> PAGE_SHIFT).ok_or(fault(false))?;
        if !pte.prot.contains(want) {
            return Err(fault(true));
        }
        let offset = (va.0 % PAGE_SIZE) as usize;
        let attr = &self.attrs[pte.frame.0 as usize];
        match access {
            Access::Load(buf) => {
                attr.fetch_or(REFERENCED, Ordering::AcqRel);
                self.read(pte.frame, offset, buf);
            }
            Access::Store(data) => {
                if self.bits == Bits::WriteFaults && attr.load(Ordering::Acquire) & MODIFIED == 0 {
                    // Write-protected underneath: the write fault, which
                    // the host resolves for the whole run around it.
                    let vpn = va.0 >> PAGE_SHIFT;
                    let run = vpn - vpn % WRITE_FAULT_RUN..vpn - vpn % WRITE_FAULT_RUN + WRITE_FAULT_RUN;
                    for p in table.translations_in(run).filter(|p| p.prot.contains(VmProt::WRITE)) {
                        self.attrs[p.frame.0 as usize].fetch_or(MODIFIED, Ordering::AcqRel);
                    }
                    self.write_faults.fetch_add(1, Ordering::Relaxed);
                }
                attr.fetch_or(REFERENCED | MODIFIED, Ordering::AcqRel);
                self.write(pte.frame, offset, data);
            }
            Access::Execute => {
                attr.fetch_or(REFERENCED, Ordering::AcqRel);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_exactly_where_hardware_would() {
        let m = SoftMachine::new(4);
        let p = m.create();
        let mut buf = [0u8; 4];
        let va = VmAddr(0x10000);
        let e = m.access(p, va, Access::Load(&mut buf)).unwrap_err();
        assert!(!e.protection);
        m.enter(p, va, &[Frame(1)], VmProt::READ).unwrap();
        m.access(p, VmAddr(va.0 + 8), Access::Load(&mut buf)).unwrap();
        assert!(m.is_referenced(Frame(1)) && !m.is_modified(Frame(1)));
        let e = m.access(p, va, Access::Store(&[1, 2])).unwrap_err();
        assert!(e.protection && e.access == VmProt::WRITE);
        assert!(m.access(p, va, Access::Execute).unwrap_err().protection);
        m.enter(p, va, &[Frame(1)], VmProt::DEFAULT).unwrap();
        m.access(p, VmAddr(va.0 + 8), Access::Store(&[7, 7])).unwrap();
        assert!(m.is_modified(Frame(1)));
        m.access(p, VmAddr(va.0 + 7), Access::Load(&mut buf)).unwrap();
        assert_eq!(buf, [0, 7, 7, 0]);
    }

    #[test]
    fn page_protect_reaches_every_pmap() {
        let m = SoftMachine::new(4);
        let (a, b) = (m.create(), m.create());
        m.enter(a, VmAddr(0x1000), &[Frame(2)], VmProt::ALL).unwrap();
        m.enter(b, VmAddr(0x5000), &[Frame(2)], VmProt::ALL).unwrap();
        m.page_protect(Frame(2), VmProt::READ).unwrap();
        assert_eq!(m.extract(a, VmAddr(0x1000)), Some((Frame(2), VmProt::READ)));
        assert_eq!(m.extract(b, VmAddr(0x5000)), Some((Frame(2), VmProt::READ)));
        m.page_protect(Frame(2), VmProt::NONE).unwrap();
        assert_eq!(m.extract(a, VmAddr(0x1000)), None);
        assert_eq!(m.extract(b, VmAddr(0x5000)), None);
        assert!(m.pv.lock().is_empty());
    }

    #[test]
    fn remove_and_protect_ranges() {
        let m = SoftMachine::new(8);
        let p = m.create();
        for i in 0..4 {
            m.enter(p, VmAddr(i * PAGE_SIZE), &[Frame(i as u32)], VmProt::ALL).unwrap();
        }
        m.protect(p, VmAddr(PAGE_SIZE), VmAddr(3 * PAGE_SIZE), VmProt::READ).unwrap();
        assert_eq!(m.extract(p, VmAddr(PAGE_SIZE)).unwrap().1, VmProt::READ);
        assert_eq!(m.extract(p, VmAddr(3 * PAGE_SIZE)).unwrap().1, VmProt::ALL);
        m.remove(p, VmAddr(0), VmAddr(2 * PAGE_SIZE)).unwrap();
        assert_eq!(m.resident_count(p), 2);
        m.destroy(p);
        assert!(m.pv.lock().is_empty());
    }

    #[test]
    fn a_range_enter_maps_each_page_and_replaces_what_was_there() {
        let m = SoftMachine::new(8);
        let p = m.create();
        m.enter(p, VmAddr(0x4000), &[Frame(1), Frame(2), Frame(3)], VmProt::READ).unwrap();
        for (i, f) in [1, 2, 3].into_iter().enumerate() {
            assert_eq!(m.extract(p, VmAddr(0x4000 + i as u64 * PAGE_SIZE)), Some((Frame(f), VmProt::READ)));
        }
        // Over the middle one: another frame, more access.
        m.enter(p, VmAddr(0x5000), &[Frame(7)], VmProt::ALL).unwrap();
        assert_eq!(m.extract(p, VmAddr(0x5000)), Some((Frame(7), VmProt::ALL)));
        m.page_remove(Frame(2)).unwrap();
        assert_eq!(m.resident_count(p), 3, "frame 2 is mapped nowhere any more");
        m.page_remove(Frame(7)).unwrap();
        assert_eq!(m.extract(p, VmAddr(0x5000)), None);
        m.destroy(p);
        assert!(m.pv.lock().is_empty());
        assert_eq!(m.enter(p, VmAddr(0), &[Frame(1)], VmProt::READ), Err(PmapError::Unreachable));
    }

    #[test]
    fn a_refused_operation_changes_nothing_or_takes_the_address_space() {
        let m = SoftMachine::new(4);
        let (p, q) = (m.create(), m.create());
        m.refuse(Refuse::Enter, 1);
        assert_eq!(m.enter(p, VmAddr(0), &[Frame(1)], VmProt::ALL), Err(PmapError::ResourceShortage));
        assert_eq!(m.extract(p, VmAddr(0)), None);
        m.enter(p, VmAddr(0), &[Frame(1)], VmProt::ALL).unwrap();
        m.refuse(Refuse::Lower, 2);
        assert_eq!(m.protect(p, VmAddr(0), VmAddr(PAGE_SIZE), VmProt::READ), Err(PmapError::ResourceShortage));
        assert_eq!(m.page_protect(Frame(1), VmProt::READ), Err(PmapError::ResourceShortage));
        assert_eq!(m.extract(p, VmAddr(0)), Some((Frame(1), VmProt::ALL)));
        // A refused removal takes every address space the page is in.
        m.enter(q, VmAddr(0), &[Frame(2)], VmProt::ALL).unwrap();
        m.refuse(Refuse::Remove, 1);
        assert_eq!(m.page_remove(Frame(1)), Err(PmapError::Unreachable));
        assert!(m.access(p, VmAddr(0), Access::Execute).is_err());
        assert_eq!(m.enter(p, VmAddr(0), &[Frame(1)], VmProt::ALL), Err(PmapError::Unreachable));
        assert_eq!(m.extract(q, VmAddr(0)), Some((Frame(2), VmProt::ALL)), "q never mapped frame 1");
        m.refuse(Refuse::Remove, 1);
        assert_eq!(m.remove(q, VmAddr(0x10000), VmAddr(0x20000)), Err(PmapError::Unreachable));
        assert_eq!(m.extract(q, VmAddr(0)), None);
        assert!(m.pv.lock().is_empty());
    }

    #[test]
    fn approximate_bits_never_miss_a_store() {
        let m = SoftMachine::with_bits(4, Bits::Always);
        assert!(m.is_modified(Frame(0)) && m.is_referenced(Frame(0)));
        m.clear_modify(Frame(0));
        m.clear_reference(Frame(0));
        assert!(m.is_modified(Frame(0)) && m.is_referenced(Frame(0)));

        let m = SoftMachine::with_bits(WRITE_FAULT_RUN as usize + 2, Bits::WriteFaults);
        let p = m.create();
        // Pages 0..=RUN mapped writable, page 1 read-only.
        for i in 0..=WRITE_FAULT_RUN {
            let prot = if i == 1 { VmProt::READ } else { VmProt::DEFAULT };
            m.enter(p, page(i), &[Frame(i as u32)], prot).unwrap();
        }
        assert!(m.is_referenced(Frame(5)) && !m.is_modified(Frame(0)));
        // The first store faults and lifts the protection of its run: the
        // run's writable pages count as modified, not the read-only one,
        // nor the page of the next run.
        m.access(p, page(0), Access::Store(&[1])).unwrap();
        m.access(p, page(2), Access::Store(&[1])).unwrap();
        assert_eq!(m.write_faults(), 1);
        assert!((0..WRITE_FAULT_RUN).filter(|&i| i != 1).all(|i| m.is_modified(Frame(i as u32))));
        assert!(!m.is_modified(Frame(1)) && !m.is_modified(Frame(WRITE_FAULT_RUN as u32)));
        // Cleared with no writer left, the next store faults again.
        m.page_protect(Frame(0), VmProt::READ).unwrap();
        m.clear_modify(Frame(0));
        assert_eq!(m.breaches(), 0);
        m.enter(p, page(0), &[Frame(0)], VmProt::DEFAULT).unwrap();
        m.access(p, page(0), Access::Store(&[2])).unwrap();
        assert_eq!(m.write_faults(), 2);
        assert!(m.is_modified(Frame(0)));
        // Cleared under a writable translation: a breach of the contract.
        m.clear_modify(Frame(2));
        assert_eq!(m.breaches(), 1);
    }

    /// Sizes each growth test runs at: a cost that grows with the table
    /// (or the frame's mappings) shows as an 8x larger count at the second.
    const SIZES: [u64; 2] = [512, 4096];

    /// A pmap mapping pages `0..n`, page `i` to frame `i`.
    fn with_pages(n: u64) -> (SoftMachine, PmapId) {
        let m = SoftMachine::new(n as usize + 1);
        let p = m.create();
        for i in 0..n {
            m.enter(p, VmAddr(i * PAGE_SIZE), &[Frame(i as u32)], VmProt::ALL).unwrap();
        }
        (m, p)
    }

    /// A pmap mapping pages `0..n` all to frame 0.
    fn one_frame_many_times(n: u64) -> (SoftMachine, PmapId) {
        let m = SoftMachine::new(1);
        let p = m.create();
        for i in 0..n {
            m.enter(p, VmAddr(i * PAGE_SIZE), &[Frame(0)], VmProt::ALL).unwrap();
        }
        (m, p)
    }

    fn page(i: u64) -> VmAddr {
        VmAddr(i * PAGE_SIZE)
    }

    #[test]
    fn protect_of_one_page_visits_one_translation_however_many_are_mapped() {
        for n in SIZES {
            let (m, p) = with_pages(n);
            let before = m.pte_visits();
            m.protect(p, page(7), page(8), VmProt::READ).unwrap();
            assert_eq!(m.pte_visits() - before, 1, "{n} translations mapped");
            assert_eq!(m.extract(p, page(7)).unwrap().1, VmProt::READ);
            assert_eq!(m.extract(p, page(8)).unwrap().1, VmProt::ALL);
        }
    }

    #[test]
    fn protecting_each_page_by_a_call_of_its_own_visits_each_translation_once() {
        for n in SIZES {
            let (m, p) = with_pages(n);
            let before = m.pte_visits();
            for i in 0..n {
                m.protect(p, page(i), page(i + 1), VmProt::READ).unwrap();
            }
            assert_eq!(m.pte_visits() - before, n, "{n} translations mapped");
            assert!((0..n).all(|i| m.extract(p, page(i)).unwrap().1 == VmProt::READ));
        }
    }

    #[test]
    fn wide_ranges_visit_only_the_translations_inside_them() {
        // `n` translations low, one far above: a range around the far one
        // (wider than the table) must not walk the low ones.
        for n in SIZES {
            let (m, p) = with_pages(n);
            let far = VmAddr(1 << 40);
            m.enter(p, far, &[Frame(n as u32)], VmProt::ALL).unwrap();
            let before = m.pte_visits();
            m.protect(p, VmAddr(1 << 39), VmAddr(1 << 41), VmProt::READ).unwrap();
            assert_eq!(m.pte_visits() - before, 1, "protect, {n} translations mapped");
            assert_eq!(m.extract(p, far).unwrap().1, VmProt::READ);
            let before = m.pte_visits();
            m.remove(p, VmAddr(1 << 39), VmAddr(1 << 41)).unwrap();
            assert_eq!(m.pte_visits() - before, 1, "remove, {n} translations mapped");
            assert_eq!((m.extract(p, far), m.resident_count(p)), (None, n as usize));
            // A range over nothing at all visits nothing.
            let before = m.pte_visits();
            m.remove(p, VmAddr(1 << 39), VmAddr(1 << 41)).unwrap();
            m.protect(p, VmAddr(1 << 39), VmAddr(1 << 41), VmProt::READ).unwrap();
            assert_eq!(m.pte_visits() - before, 0);
        }
    }

    #[test]
    fn removing_one_of_many_translations_of_a_frame_is_constant_reverse_map_work() {
        for n in SIZES {
            let (m, p) = one_frame_many_times(n);
            let before = m.pv_visits();
            m.remove(p, page(5), page(6)).unwrap();
            assert_eq!(m.pv_visits() - before, 1, "frame mapped {n} times");
            // The rest, one call each: each costs the same.
            let before = m.pv_visits();
            for i in 0..n {
                m.remove(p, page(i), page(i + 1)).unwrap();
            }
            assert_eq!(m.pv_visits() - before, n - 1, "frame mapped {n} times");
            assert!(m.pv.lock().is_empty());
        }
    }

    #[test]
    fn page_protect_and_destroy_visit_each_translation_of_the_frame_once() {
        for n in SIZES {
            let (m, p) = one_frame_many_times(n);
            let (pte, pv) = (m.pte_visits(), m.pv_visits());
            m.page_protect(Frame(0), VmProt::READ).unwrap();
            assert_eq!((m.pte_visits() - pte, m.pv_visits() - pv), (n, n), "lowering, frame mapped {n} times");
            assert!((0..n).all(|i| m.extract(p, page(i)) == Some((Frame(0), VmProt::READ))));
            let (pte, pv) = (m.pte_visits(), m.pv_visits());
            m.page_protect(Frame(0), VmProt::NONE).unwrap();
            assert_eq!((m.pte_visits() - pte, m.pv_visits() - pv), (n, n), "removing, frame mapped {n} times");
            assert_eq!(m.resident_count(p), 0);
            assert!(m.pv.lock().is_empty());

            let (m, p) = one_frame_many_times(n);
            let (pte, pv) = (m.pte_visits(), m.pv_visits());
            m.destroy(p);
            assert_eq!((m.pte_visits() - pte, m.pv_visits() - pv), (n, n), "destroy, frame mapped {n} times");
            assert!(m.pv.lock().is_empty());
        }
    }

    #[test]
    fn the_page_table_and_reverse_map_agree_with_a_plain_map_across_leaf_boundaries() {
        use std::collections::BTreeMap;
        // Pages around three leaf boundaries and near the top of the
        // address space; ranges that start, end and span anywhere.
        let pages: Vec<u64> = (0..200).chain(1000..1070).chain((1 << 52) - 130..(1 << 52)).collect();
        let m = SoftMachine::new(8);
        let p = m.create();
        let mut model: BTreeMap<u64, (Frame, VmProt)> = BTreeMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for step in 0..20_000 {
            let a = pages[next(pages.len())];
            let b = (a + next(150) as u64).min((1 << 52) - 1);
            let prot = VmProt::from_bits_truncate(next(8) as u32);
            match next(5) {
                0 | 1 => {
                    let f = Frame(next(8) as u32);
                    m.enter(p, page(a), &[f], prot).unwrap();
                    model.insert(a, (f, prot));
                }
                2 => {
                    m.remove(p, page(a), page(b)).unwrap();
                    model.retain(|v, _| !(a..b).contains(v));
                }
                3 => {
                    let f = Frame(next(8) as u32);
                    m.page_protect(f, prot).unwrap();
                    if prot.is_empty() {
                        model.retain(|_, (g, _)| *g != f);
                    } else {
                        model.values_mut().filter(|(g, _)| *g == f).for_each(|(_, q)| *q &= prot);
                    }
                }
                _ => {
                    m.protect(p, page(a), page(b), prot).unwrap();
                    if prot.is_empty() {
                        model.retain(|v, _| !(a..b).contains(v));
                    } else {
                        model.range_mut(a..b).for_each(|(_, (_, q))| *q &= prot);
                    }
                }
            }
            if step % 500 == 0 || step == 19_999 {
                assert_eq!(m.resident_count(p), model.len(), "step {step}");
                for &v in &pages {
                    assert_eq!(m.extract(p, page(v)), model.get(&v).copied(), "step {step}, page {v:#x}");
                }
                let mut reverse: HashMap<Frame, HashSet<(PmapId, u64)>> = HashMap::new();
                for (&v, &(f, _)) in &model {
                    reverse.entry(f).or_default().insert((p, v));
                }
                let pv = m.pv.lock();
                let pv: HashMap<Frame, HashSet<(PmapId, u64)>> =
                    pv.iter().map(|(&f, t)| (f, t.iter().collect())).collect();
                assert_eq!(pv, reverse, "step {step}");
            }
        }
        m.destroy(p);
        assert!(m.pv.lock().is_empty());
    }
}
