//! [`HostMachine`]: the core's machine (`machvm_core::pmap::Machine`) on
//! real memory. The pages are a [`MemfdStore`]'s (a memfd per VM object);
//! the translations of a task whose process has handed over its
//! userfaultfd are the host MMU's own page tables, filled from outside the
//! process with `UFFDIO_CONTINUE`.
//!
//! ```text
//!   task process                          daemon (this machine)
//!   ────────────                          ─────────────────────
//!   window: MAP_SHARED of object 3's      translations: (pmap, va) → page, prot
//!   memfd at offset o, registered         windows:      (pmap, va range) → object, offset
//!   MISSING | MINOR | WP with its uffd    pages:        page → who maps it, modified
//!        │ load / store                        │
//!        ▼ fault ──── uffd ────► fault server ─┴► VM fault ─► enter ─► CONTINUE (WP if read-only)
//! ```
//!
//! Each pmap keeps the translations the VM entered, as the software MMU
//! does; a pmap whose task is a process (attached with
//! [`HostMachine::attach`]) also makes the process's page tables agree:
//!
//! - **enter** records the translations and `CONTINUE`s them over the run
//!   of pages of one window, write-protected unless the protection allows
//!   writing. A page must be its window's own (the object and offset the
//!   window shows at that address: the core guarantees it, see
//!   `Machine::windows_fixed`); a page outside every window of the process
//!   is recorded only.
//! - **protect** write-protects (`UFFDIO_WRITEPROTECT`), which holds
//!   whatever `mprotect` the process makes.
//! - **remove** and **page_remove** cannot take a page of a shared memfd
//!   from one process alone (Linux has no such call): they *zap* it. Every
//!   writer of the page is write-protected first (so no store lands
//!   unseen), its bytes are read, the page is punched out of the memfd
//!   (which takes it from every process that maps it) and written back.
//!   Holders that keep their translation refault (a MINOR fault) and are
//!   served here, from the translation, without the VM ([`HostMachine::resolve`]);
//!   a process whose translation went faults to the VM, which refuses it or
//!   maps it again.
//! - The modified bit is learned from write-protect faults. A page the VM
//!   enters writable for a load is mapped write-protected while it is not
//!   modified; the first store through it faults, and [`HostMachine::resolve`]
//!   marks it modified (with the rest of its run of [`STORE_RUN`] pages)
//!   and lifts the protection, without the VM. A page entered for a store
//!   (the fault server says so: [`HostMachine::storing`]) is modified at
//!   once, with the cluster entered with it. So pages a process only reads
//!   stay clean (no `data_return`), and a page reported modified may not
//!   have been written (the contract allows it). Referenced is always said.
//!
//! Tasks without a process (their loads and stores are calls to the
//! daemon) use the translations only, through [`Machine::access`].
//!
//! Locking: one mutex over the tables; the host calls for translations
//! run under it (each is a few microseconds), so a fault served here and
//! a change by the VM never interleave on a page. The store's lock is
//! taken under it, never the other way round, and the VM calls in with
//! the kernel lock held: kernel → machine → store.

use crate::uffd::{FillMode, Outcome, RegisterMode};
use crate::{MemfdStore, ObjectMemory, PageRange, Result, Userfaultfd};
use machvm_core::pmap::{Access, Frame, HwFault, Machine, ObjectId, PageStore, Pmap, PmapError, PmapId, StoreError};
use machvm_core::types::{VmAddr, VmProt, PAGE_SIZE};
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A window of a process: `[start, end)` shows `object` from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    end: u64,
    object: ObjectId,
    offset: u64,
}

/// A task's process: its uffd and its windows by start address.
#[derive(Debug)]
struct Process {
    uffd: Arc<Userfaultfd>,
    windows: BTreeMap<u64, Window>,
    /// The process is gone (its uffd said so): nothing more is asked of it.
    gone: bool,
}

impl Process {
    fn window_at(&self, va: u64) -> Option<(u64, Window)> {
        let (&start, &w) = self.windows.range(..=va).next_back()?;
        (va < w.end).then_some((start, w))
    }
}

#[derive(Debug, Default)]
struct Space {
    /// Translations by page address.
    pages: BTreeMap<u64, (Frame, VmProt)>,
    process: Option<Process>,
    /// Where a store of the process is faulting, while the VM serves that
    /// fault ([`HostMachine::storing`]).
    storing: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct PageState {
    /// Where the page is mapped.
    maps: Maps,
    modified: bool,
}

/// Where a page is mapped: one place inline (nearly every page has one,
/// and entering a cluster then allocates nothing per page), more in a
/// vector.
#[derive(Clone, Debug, Default)]
struct Maps {
    one: Option<(PmapId, u64)>,
    more: Vec<(PmapId, u64)>,
}

impl Maps {
    fn push(&mut self, m: (PmapId, u64)) {
        if self.one.is_none() {
            self.one = Some(m);
        } else {
            self.more.push(m);
        }
    }

    fn retain(&mut self, keep: impl Fn(&(PmapId, u64)) -> bool) {
        self.more.retain(&keep);
        if self.one.as_ref().is_some_and(|m| !keep(m)) {
            self.one = self.more.pop();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(PmapId, u64)> {
        self.one.iter().chain(&self.more)
    }

    fn is_empty(&self) -> bool {
        self.one.is_none()
    }
}

impl IntoIterator for Maps {
    type Item = (PmapId, u64);
    type IntoIter = std::iter::Chain<std::option::IntoIter<(PmapId, u64)>, std::vec::IntoIter<(PmapId, u64)>>;
    fn into_iter(self) -> Self::IntoIter {
        self.one.into_iter().chain(self.more)
    }
}

#[derive(Debug, Default)]
struct Tables {
    next: u32,
    spaces: HashMap<PmapId, Space>,
    pages: HashMap<Frame, PageState>,
}

/// What [`HostMachine::resolve`] did with a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The translation allowed the access: the page is mapped again and
    /// the faulting thread woken. The VM was not needed.
    Resolved,
    /// There is no translation allowing the access: ask the VM.
    AskVm,
}

/// What [`HostMachine::after_fault`] finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFault {
    /// The translation allows the access and is its window's own page:
    /// the process maps it (the enter woke the thread).
    Mapped,
    /// No translation allows the access (taken again since, by pageout
    /// say): fault again.
    NotEntered,
    /// The translation is there, but the process has no window of its
    /// page there: it did not map what its memory channel said.
    NotWindow,
}

/// Counters (for `machvm ps` and the benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Faults served from a translation, without the VM.
    pub resolved: u64,
    /// Pages `CONTINUE`d into processes.
    pub continued: u64,
    /// Pages zapped (punched and written back) to take them from a process.
    pub zapped: u64,
    /// Host calls that failed or met a process that was gone.
    pub host_failures: u64,
}

/// The core's machine on memfds and userfaultfd (see the module comment).
#[derive(Debug)]
pub struct HostMachine {
    store: MemfdStore,
    tables: Mutex<Tables>,
    stats: Mutex<HostStats>,
}

fn page_range(va: u64, pages: u64) -> PageRange {
    PageRange::new(va, pages * PAGE_SIZE).expect("page-aligned, non-empty, no wrap")
}

impl HostMachine {
    /// A machine whose store holds at most `capacity` pages.
    ///
    /// Errors: as [`MemfdStore::new`].
    pub fn new(capacity: usize) -> Result<HostMachine> {
        Ok(HostMachine { store: MemfdStore::new(capacity)?, tables: Mutex::default(), stats: Mutex::default() })
    }

    /// The page store (to reach the objects' memfds).
    pub fn store(&self) -> &MemfdStore {
        &self.store
    }

    /// The counters so far.
    pub fn host_stats(&self) -> HostStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, f: impl FnOnce(&mut HostStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The memfd a process maps for a window of `object` that reaches
    /// `end` bytes into it.
    ///
    /// Errors: as [`MemfdStore::memory_for`].
    pub fn memory_for(&self, object: ObjectId, end: u64) -> Result<Arc<ObjectMemory>> {
        self.store.memory_for(object, end)
    }

    /// Does `pmap` have a process attached already (see
    /// [`HostMachine::attach`])?
    pub fn has_process(&self, pmap: PmapId) -> bool {
        self.tables().spaces.get(&pmap).is_some_and(|s| s.process.is_some())
    }

    /// Makes `pmap`'s translations the host MMU's, in the process whose
    /// `uffd` this is (after its handshake). Returns the shared uffd.
    ///
    /// Errors: [`crate::Error::AddressSpace`] if the pmap is gone or has a
    /// process already, or the uffd is this process's own.
    pub fn attach(&self, pmap: PmapId, uffd: Userfaultfd) -> Result<Arc<Userfaultfd>> {
        if uffd.is_own() {
            return Err(crate::Error::AddressSpace("a task's userfaultfd must be another process's"));
        }
        let mut t = self.tables();
        let space = t.spaces.get_mut(&pmap).ok_or(crate::Error::AddressSpace("no such address space"))?;
        if space.process.is_some() {
            return Err(crate::Error::AddressSpace("the address space has a process already"));
        }
        let uffd = Arc::new(uffd);
        space.process = Some(Process { uffd: uffd.clone(), windows: BTreeMap::new(), gone: false });
        Ok(uffd)
    }

    /// The process has mapped `range` as a window of `object` from
    /// `offset`: registers it with the process's uffd (MISSING, MINOR and
    /// WP) and records it. Pages already entered there are mapped on their
    /// first access.
    ///
    /// Errors: [`crate::Error::AddressSpace`] if the pmap has no process;
    /// [`crate::Error::Host`] if the registration fails (the process did
    /// not map a writable memfd window there: `EINVAL`, `EPERM`, `ENOMEM`).
    pub fn add_window(&self, pmap: PmapId, range: PageRange, object: ObjectId, offset: u64) -> Result<()> {
        let mut t = self.tables();
        let p = t
            .spaces
            .get_mut(&pmap)
            .and_then(|s| s.process.as_mut())
            .ok_or(crate::Error::AddressSpace("the address space has no process"))?;
        p.uffd.register(range, RegisterMode::MISSING | RegisterMode::MINOR | RegisterMode::WP)?;
        // A new window replaces the part of older ones it overlaps.
        forget_windows(p, range.start(), range.end());
        p.windows.insert(range.start(), Window { end: range.end(), object, offset });
        Ok(())
    }

    /// Registers `range` of `pmap`'s process as holes: every fault there
    /// goes to the VM (which finds no entry: `KERN_INVALID_ADDRESS`). A
    /// range that is a memfd window still (a process that did not unmap
    /// it) keeps its window's registration.
    ///
    /// Errors: [`crate::Error::AddressSpace`] if the pmap has no process;
    /// [`crate::Error::Host`] if the registration fails.
    pub fn register_hole(&self, pmap: PmapId, range: PageRange) -> Result<()> {
        let t = self.tables();
        let p = t
            .spaces
            .get(&pmap)
            .and_then(|s| s.process.as_ref())
            .ok_or(crate::Error::AddressSpace("the address space has no process"))?;
        let full = RegisterMode::MISSING | RegisterMode::MINOR | RegisterMode::WP;
        match p.uffd.register(range, full) {
            Ok(_) => Ok(()),
            // Anonymous memory takes MISSING only.
            Err(_) => p.uffd.register(range, RegisterMode::MISSING).map(|_| ()),
        }
    }

    /// Forgets the windows of `[start, end)` (the range was deallocated:
    /// the VM maps nothing there any more).
    pub fn forget_windows(&self, pmap: PmapId, start: u64, end: u64) {
        let mut t = self.tables();
        if let Some(p) = t.spaces.get_mut(&pmap).and_then(|s| s.process.as_mut()) {
            forget_windows(p, start, end);
        }
    }

    /// The window of `pmap`'s process at `va`: its range, object and the
    /// object offset at `va`.
    pub fn window_at(&self, pmap: PmapId, va: u64) -> Option<(PageRange, ObjectId, u64)> {
        let t = self.tables();
        let p = t.spaces.get(&pmap)?.process.as_ref()?;
        let (start, w) = p.window_at(va)?;
        Some((PageRange::new(start, w.end - start).ok()?, w.object, w.offset + (va - start)))
    }

    /// A fault of `pmap`'s process at `va`: served from the translation if
    /// it allows the access (the page was zapped, or dropped by the
    /// process's own `madvise`), else [`Resolution::AskVm`].
    pub fn resolve(&self, pmap: PmapId, va: u64, write: bool) -> Resolution {
        let va = va & !(PAGE_SIZE - 1);
        let mut t = self.tables();
        let Some(&(frame, prot)) = t.spaces.get(&pmap).and_then(|s| s.pages.get(&va)) else {
            return Resolution::AskVm;
        };
        let need = if write { VmProt::WRITE } else { VmProt::READ };
        if !prot.contains(need) {
            return Resolution::AskVm;
        }
        if write && !t.pages.get(&frame).is_some_and(|p| p.modified) {
            // The first store through a writable translation (it was
            // write-protected to learn of it): the page is modified, and so
            // are its neighbours of the same run, mapped writable at once.
            let (first, frames) = store_run(&mut t, pmap, va, prot);
            let (before, from_va) = frames.split_at(((va - first) / PAGE_SIZE) as usize);
            if !before.is_empty() {
                self.map_into(&mut t, pmap, first, before, prot);
            }
            if self.map_into(&mut t, pmap, va, from_va, prot) {
                self.count(|s| s.resolved += 1);
                return Resolution::Resolved;
            }
            return Resolution::AskVm;
        }
        if self.map_into(&mut t, pmap, va, &[frame], prot) {
            self.count(|s| s.resolved += 1);
            Resolution::Resolved
        } else {
            Resolution::AskVm
        }
    }

    /// A store of `pmap`'s process is faulting in `[start, end)` (or, with
    /// `None`, no longer): pages the VM enters writable there meanwhile,
    /// and the rest of each run entered with them, are modified at once
    /// rather than write-protected until their first store (which is
    /// known to come). Set by the fault server around the VM's handling
    /// of a write fault (the faulting page, then the pages it maps ahead).
    pub fn storing(&self, pmap: PmapId, range: Option<(u64, u64)>) {
        if let Some(s) = self.tables().spaces.get_mut(&pmap) {
            s.storing = range;
        }
    }

    /// Where the fault of `pmap`'s process at `va` stands after the VM
    /// has made it (with no host call).
    pub fn after_fault(&self, pmap: PmapId, va: u64, write: bool) -> AfterFault {
        let va = va & !(PAGE_SIZE - 1);
        let t = self.tables();
        let Some(s) = t.spaces.get(&pmap) else { return AfterFault::NotEntered };
        let Some(&(frame, prot)) = s.pages.get(&va) else { return AfterFault::NotEntered };
        if !prot.contains(if write { VmProt::WRITE } else { VmProt::READ }) {
            return AfterFault::NotEntered;
        }
        let Some(p) = s.process.as_ref() else { return AfterFault::NotWindow };
        match p.window_at(va) {
            Some((start, w)) if self.store.key(frame) == Some((w.object, w.offset + (va - start))) => {
                AfterFault::Mapped
            }
            _ => AfterFault::NotWindow,
        }
    }

    /// Wakes the threads of `pmap`'s process waiting at `va` (they retry
    /// their access).
    pub fn wake(&self, pmap: PmapId, va: u64) {
        let t = self.tables();
        if let Some(p) = t.spaces.get(&pmap).and_then(|s| s.process.as_ref()) {
            let _ = p.uffd.wake(page_range(va & !(PAGE_SIZE - 1), 1));
        }
    }

    /// Makes the host MMU of `pmap`'s process map `frames` at `va` with
    /// `prot`, for the pages inside one of its windows. Returns whether
    /// the first page was mapped (or is, by someone else's doing).
    fn map_into(&self, t: &mut Tables, pmap: PmapId, va: u64, frames: &[Frame], prot: VmProt) -> bool {
        let Tables { spaces, pages, .. } = t;
        let Some(p) = spaces.get_mut(&pmap).and_then(|s| s.process.as_mut()) else {
            return false;
        };
        // A writable translation of a page not modified yet is mapped
        // write-protected: its first store faults, and so is learned.
        let modified = |f: &Frame| pages.get(f).is_some_and(|p| p.modified);
        let mapped = |f: &Frame| if prot.contains(VmProt::WRITE) && !modified(f) { prot - VmProt::WRITE } else { prot };
        if p.gone {
            return false;
        }
        let mut first_mapped = false;
        let mut i = 0;
        while i < frames.len() {
            let at = va + i as u64 * PAGE_SIZE;
            let Some((wstart, w)) = p.window_at(at) else {
                i += 1;
                continue;
            };
            // The run of pages in this window that are its own, mapped
            // with the same protection.
            let run_prot = mapped(&frames[i]);
            let mut n = 0;
            while i + n < frames.len() {
                let a = at + n as u64 * PAGE_SIZE;
                if a >= w.end
                    || self.store.key(frames[i + n]) != Some((w.object, w.offset + (a - wstart)))
                    || mapped(&frames[i + n]) != run_prot
                {
                    break;
                }
                self.store.materialize(frames[i + n]);
                n += 1;
            }
            if n == 0 {
                // Not the window's own page: the VM broke `windows_fixed`.
                self.count(|s| s.host_failures += 1);
                i += 1;
                continue;
            }
            let mut ok = continue_run(&p.uffd, page_range(at, n as u64), run_prot);
            if let Err(crate::Error::Host { errno: crate::Errno::FAULT, .. }) = ok {
                // A hole where the store holds the pages: a holder of the
                // memfd punched them (their data is lost). They are
                // reserved again, zeroes, so that nobody waits for ever.
                self.count(|s| s.host_failures += 1);
                for f in &frames[i..i + n] {
                    if let Some((object, offset)) = self.store.key(*f) {
                        if let Some(m) = self.store.memory_of(object) {
                            let _ = m.reserve(page_range(offset, 1));
                        }
                    }
                }
                ok = continue_run(&p.uffd, page_range(at, n as u64), run_prot);
            }
            if ok.is_err() {
                // Whatever failed, the waiters retry rather than wait.
                let _ = p.uffd.wake(page_range(at, n as u64));
            }
            match ok {
                Ok(()) => {
                    first_mapped |= i == 0;
                    self.count(|s| s.continued += n as u64);
                }
                // Exited: it keeps no page, and nothing more is asked of it.
                Err(crate::Error::ProcessExited) => {
                    p.gone = true;
                    return first_mapped;
                }
                Err(_) => self.count(|s| s.host_failures += 1),
            }
            i += n;
        }
        first_mapped
    }

    /// Takes `frames` from every process that may map them: write-protects
    /// their writers, then punches the pages out of their memfds and
    /// writes their bytes back (see the module comment), one run of
    /// consecutive pages of an object at a time.
    fn zap(&self, t: &Tables, frames: &[Frame]) {
        let mut keyed = Vec::with_capacity(frames.len());
        for &f in frames {
            let Some((object, offset)) = self.store.key(f) else { continue };
            if let Some(ps) = t.pages.get(&f) {
                for &(pm, va) in ps.maps.iter() {
                    let Some(s) = t.spaces.get(&pm) else { continue };
                    let writable = s.pages.get(&va).is_some_and(|&(_, pr)| pr.contains(VmProt::WRITE));
                    if let Some(p) = s.process.as_ref().filter(|p| !p.gone && writable) {
                        let _ = p.uffd.writeprotect(page_range(va, 1), true);
                    }
                }
            }
            keyed.push((object, offset));
        }
        keyed.sort_unstable();
        keyed.dedup();
        let mut buf = Vec::new();
        let mut i = 0;
        while i < keyed.len() {
            let (object, offset) = keyed[i];
            let n = keyed[i..]
                .iter()
                .enumerate()
                .take_while(|&(k, &(o, off))| o == object && off == offset + k as u64 * PAGE_SIZE)
                .count();
            i += n;
            let Some(memory) = self.store.memory_of(object) else { continue };
            buf.resize(n * PAGE_SIZE as usize, 0);
            let range = page_range(offset, n as u64);
            if memory.read_at(offset, &mut buf).is_err()
                || memory.punch(range).is_err()
                || memory.write_at(offset, &buf).is_err()
            {
                self.count(|s| s.host_failures += 1);
            }
            self.count(|s| s.zapped += n as u64);
        }
    }

    /// Write-protects the page at `va` in `p`'s process; false if the
    /// process has exited (it keeps no page: nothing more is asked of it).
    fn write_protect(&self, p: &mut Process, va: u64) -> bool {
        match p.uffd.writeprotect(page_range(va, 1), true) {
            Ok(_) => true,
            Err(crate::Error::ProcessExited) => {
                p.gone = true;
                false
            }
            Err(_) => {
                self.count(|s| s.host_failures += 1);
                true
            }
        }
    }

    /// Drops the translation of `pmap` at `va` (if any), returning its
    /// page and whether the process may have had it in its page tables.
    fn drop_translation(t: &mut Tables, pmap: PmapId, va: u64) -> Option<(Frame, bool)> {
        let s = t.spaces.get_mut(&pmap)?;
        let (frame, _) = s.pages.remove(&va)?;
        let in_process = s.process.as_ref().is_some_and(|p| !p.gone && p.window_at(va).is_some());
        if let Some(ps) = t.pages.get_mut(&frame) {
            ps.maps.retain(|&m| m != (pmap, va));
        }
        Some((frame, in_process))
    }
}

/// The pages to make writable for a first store at `va` through a
/// writable translation of `pmap`: the translations with the same
/// protection around it, contiguous, inside its aligned run of
/// [`STORE_RUN`] pages. Marks them modified; returns the first address
/// and the pages.
fn store_run(t: &mut Tables, pmap: PmapId, va: u64, prot: VmProt) -> (u64, Vec<Frame>) {
    let run = STORE_RUN * PAGE_SIZE;
    let (lo, hi) = (va / run * run, (va / run + 1) * run);
    let s = &t.spaces[&pmap];
    let same = |a: u64| s.pages.get(&a).filter(|&&(_, pr)| pr == prot).map(|&(f, _)| f);
    let mut first = va;
    while first > lo && same(first - PAGE_SIZE).is_some() {
        first -= PAGE_SIZE;
    }
    let mut frames = Vec::new();
    let mut a = first;
    while a < hi {
        let Some(f) = same(a) else { break };
        frames.push(f);
        a += PAGE_SIZE;
    }
    for f in &frames {
        t.pages.entry(*f).or_default().modified = true;
    }
    (first, frames)
}

/// Pages one first store makes writable at once (see [`HostMachine::resolve`]): a
/// store fault is learned per run, as a host serving a cluster would, and
/// more pages are reported modified than were written (the contract
/// allows it: a needless `data_return`).
pub const STORE_RUN: u64 = 16;

/// `CONTINUE` over `range` with `prot` (write-protected unless it allows
/// writing), retrying what a race left; a page mapped already gets its
/// protection set. The waiters are woken in every case.
fn continue_run(uffd: &Userfaultfd, range: PageRange, prot: VmProt) -> Result<()> {
    let wp = !prot.contains(VmProt::WRITE);
    let mode = if wp { FillMode::WRITE_PROTECT } else { FillMode::empty() };
    let mut at = range;
    loop {
        match uffd.continue_(at, mode)? {
            Outcome::Done => return Ok(()),
            Outcome::Partial { bytes } => {
                at = PageRange::new(at.start() + bytes, at.len() - bytes).expect("a partial fill leaves a rest");
            }
            Outcome::Exists => {
                // Mapped already (by an earlier fill): set its protection,
                // then go on after it.
                let page = page_range(at.start(), 1);
                let _ = uffd.writeprotect(page, wp)?;
                uffd.wake(page)?;
                if at.len() == PAGE_SIZE {
                    return Ok(());
                }
                at = PageRange::new(at.start() + PAGE_SIZE, at.len() - PAGE_SIZE).expect("more pages");
            }
            // The address space is changing, or the window is gone: the
            // waiters retry their access and fault again if need be.
            Outcome::Changed | Outcome::Unmapped => {
                uffd.wake(at)?;
                return Ok(());
            }
        }
    }
}

fn forget_windows(p: &mut Process, start: u64, end: u64) {
    let overlapping: Vec<u64> = p.windows.range(..end).filter(|(_, w)| w.end > start).map(|(&s, _)| s).collect();
    for s in overlapping {
        let w = p.windows.remove(&s).expect("listed");
        if s < start {
            p.windows.insert(s, Window { end: start, ..w });
        }
        if w.end > end {
            p.windows.insert(end, Window { offset: w.offset + (end - s), ..w });
        }
    }
}

impl Pmap for HostMachine {
    fn create(&self) -> PmapId {
        let mut t = self.tables();
        t.next += 1;
        let id = PmapId(t.next);
        t.spaces.insert(id, Space::default());
        id
    }

    fn destroy(&self, pmap: PmapId) {
        {
            // A process that has exited keeps no page: nothing to zap.
            let mut t = self.tables();
            if let Some(s) = t.spaces.get_mut(&pmap) {
                let first = s.pages.keys().next().copied();
                if let (Some(p), Some(va)) = (s.process.as_mut(), first) {
                    if let Err(crate::Error::ProcessExited) = p.uffd.writeprotect(page_range(va, 1), true) {
                        p.gone = true;
                    }
                }
            }
        }
        let _ = self.remove(pmap, VmAddr(0), VmAddr(!(PAGE_SIZE - 1)));
        self.tables().spaces.remove(&pmap);
    }

    fn enter(&self, pmap: PmapId, va: VmAddr, pages: &[Frame], prot: VmProt) -> std::result::Result<(), PmapError> {
        let mut t = self.tables();
        let has_process = match t.spaces.get(&pmap) {
            None => return Err(PmapError::Unreachable),
            Some(s) => s.process.as_ref().is_some_and(|p| !p.gone),
        };
        // Entered for a store: the pages are modified now (the store comes
        // as soon as the thread wakes). Otherwise a writable page stays
        // unmodified, and write-protected in the process, until its first
        // store faults (`resolve`).
        let end = va.0 + pages.len() as u64 * PAGE_SIZE;
        let storing = prot.contains(VmProt::WRITE)
            && t.spaces.get(&pmap).and_then(|s| s.storing).is_some_and(|(lo, hi)| va.0 < hi && lo < end);
        for (i, &f) in pages.iter().enumerate() {
            let at = va.0 + i as u64 * PAGE_SIZE;
            let s = t.spaces.get_mut(&pmap).expect("checked");
            let old = s.pages.insert(at, (f, prot));
            if let Some((of, _)) = old.filter(|&(of, _)| of != f) {
                if let Some(ps) = t.pages.get_mut(&of) {
                    ps.maps.retain(|&m| m != (pmap, at));
                }
            }
            let ps = t.pages.entry(f).or_default();
            if old.is_none_or(|(of, _)| of != f) {
                ps.maps.push((pmap, at));
            }
            if has_process && storing {
                ps.modified = true;
            }
        }
        if has_process {
            self.map_into(&mut t, pmap, va.0, pages, prot);
        }
        Ok(())
    }

    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) -> std::result::Result<(), PmapError> {
        if prot.is_empty() {
            return self.remove(pmap, start, end);
        }
        let mut t = self.tables();
        let Some(s) = t.spaces.get_mut(&pmap) else { return Err(PmapError::Unreachable) };
        let mut lost_write = Vec::new();
        for (&va, entry) in s.pages.range_mut(start.0..end.0) {
            if entry.1.contains(VmProt::WRITE) && !prot.contains(VmProt::WRITE) {
                lost_write.push(va);
            }
            entry.1 &= prot;
        }
        if let Some(p) = s.process.as_mut().filter(|p| !p.gone) {
            for va in lost_write {
                if p.window_at(va).is_some() && !self.write_protect(p, va) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) -> std::result::Result<(), PmapError> {
        let mut t = self.tables();
        let Some(s) = t.spaces.get(&pmap) else { return Ok(()) };
        let vas: Vec<u64> = s.pages.range(start.0..end.0).map(|(&va, _)| va).collect();
        let mut zap = Vec::new();
        for va in vas {
            if let Some((f, true)) = Self::drop_translation(&mut t, pmap, va) {
                zap.push(f);
            }
        }
        self.zap(&t, &zap);
        Ok(())
    }

    fn page_protect(&self, page: Frame, prot: VmProt) -> std::result::Result<(), PmapError> {
        if prot.is_empty() {
            return self.page_remove(page);
        }
        let mut t = self.tables();
        let maps = t.pages.get(&page).map(|p| p.maps.clone()).unwrap_or_default();
        for (pm, va) in maps {
            let Some(s) = t.spaces.get_mut(&pm) else { continue };
            let Some(entry) = s.pages.get_mut(&va) else { continue };
            let lost_write = entry.1.contains(VmProt::WRITE) && !prot.contains(VmProt::WRITE);
            entry.1 &= prot;
            if let Some(p) = s.process.as_mut().filter(|p| lost_write && !p.gone && p.window_at(va).is_some()) {
                self.write_protect(p, va);
            }
        }
        Ok(())
    }

    fn page_remove(&self, page: Frame) -> std::result::Result<(), PmapError> {
        let mut t = self.tables();
        let maps = t.pages.get(&page).map(|p| p.maps.clone()).unwrap_or_default();
        // Zapped (its writers write-protected first) while the
        // translations still say who may have it.
        let in_process = maps.iter().any(|(pm, va)| {
            t.spaces.get(pm).and_then(|s| s.process.as_ref()).is_some_and(|p| !p.gone && p.window_at(*va).is_some())
        });
        if in_process {
            self.zap(&t, &[page]);
        }
        for (pm, va) in maps {
            Self::drop_translation(&mut t, pm, va);
        }
        Ok(())
    }

    /// As `page_remove`, but the page is punched without its bytes being
    /// kept: the VM frees it next.
    fn page_remove_discard(&self, page: Frame) -> std::result::Result<(), PmapError> {
        let mut t = self.tables();
        let maps = t.pages.get(&page).map(|p| p.maps.clone()).unwrap_or_default();
        for (pm, va) in maps {
            Self::drop_translation(&mut t, pm, va);
        }
        // The store's free punches it out of every mapping.
        Ok(())
    }

    fn is_modified(&self, page: Frame) -> bool {
        self.tables().pages.get(&page).is_some_and(|p| p.modified)
    }

    fn clear_modify(&self, page: Frame) {
        if let Some(p) = self.tables().pages.get_mut(&page) {
            p.modified = false;
        }
    }

    fn is_referenced(&self, _page: Frame) -> bool {
        true
    }

    fn clear_reference(&self, _page: Frame) {}

    fn extract(&self, pmap: PmapId, va: VmAddr) -> Option<(Frame, VmProt)> {
        self.tables().spaces.get(&pmap)?.pages.get(&(va.0 & !(PAGE_SIZE - 1))).copied()
    }
}

impl PageStore for HostMachine {
    fn capacity(&self) -> usize {
        self.store.capacity()
    }
    fn alloc(&self, object: ObjectId, offset: u64) -> std::result::Result<Frame, StoreError> {
        self.store.alloc(object, offset)
    }
    fn alloc_run(&self, object: ObjectId, offset: u64, n: usize) -> std::result::Result<Vec<Frame>, StoreError> {
        self.store.alloc_run(object, offset, n)
    }
    fn free(&self, page: Frame) {
        let mut t = self.tables();
        let gone = t.pages.remove(&page);
        debug_assert!(gone.is_none_or(|p| p.maps.is_empty()), "{page:?} freed while mapped");
        self.store.free(page);
    }
    fn read(&self, page: Frame, offset: usize, buf: &mut [u8]) {
        self.store.read(page, offset, buf)
    }
    fn write(&self, page: Frame, offset: usize, data: &[u8]) {
        self.store.write(page, offset, data)
    }
    fn zero(&self, page: Frame) {
        self.store.zero(page)
    }
    fn copy(&self, from: Frame, to: Frame) {
        self.store.copy(from, to)
    }
    fn object_released(&self, object: ObjectId) {
        self.store.object_released(object)
    }
    fn staging_len(&self, owner: u64) -> u64 {
        self.store.staging_len(owner)
    }
    fn write_staged(&self, pages: &[Frame], owner: u64, offset: u64) -> std::result::Result<(), StoreError> {
        self.store.write_staged(pages, owner, offset)
    }
}

impl Machine for HostMachine {
    fn access(&self, pmap: PmapId, va: VmAddr, access: Access<'_>) -> std::result::Result<(), HwFault> {
        let want = match access {
            Access::Load(_) => VmProt::READ,
            Access::Store(_) => VmProt::WRITE,
            Access::Execute => VmProt::EXECUTE,
        };
        let page_va = va.0 & !(PAGE_SIZE - 1);
        let within = (va.0 - page_va) as usize;
        let mut t = self.tables();
        let Some(&(frame, prot)) = t.spaces.get(&pmap).and_then(|s| s.pages.get(&page_va)) else {
            return Err(HwFault { va, access: want, protection: false });
        };
        if !prot.contains(want) {
            return Err(HwFault { va, access: want, protection: true });
        }
        match access {
            Access::Load(buf) => self.store.read(frame, within, buf),
            Access::Store(data) => {
                self.store.write(frame, within, data);
                t.pages.entry(frame).or_default().modified = true;
            }
            Access::Execute => {}
        }
        Ok(())
    }

    fn windows_fixed(&self) -> bool {
        true
    }
}
