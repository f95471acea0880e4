//! The software MMU: page tables, protection bits, referenced/modified bits
//! and physical frames, all in ordinary memory.
//!
//! It is the reference backend: deterministic, and faulting exactly where
//! hardware would (an access with no translation, or one whose translation
//! lacks the access, faults; nothing else does).
//!
//! ```text
//!   pmaps[PmapId] ──► PageTable { vpn ─► Pte { frame, prot } }
//!                                         │
//!   pv[frame] ◄── reverse map ────────────┘   (pmap, vpn) for page_protect
//!   attrs[frame]: MODIFIED | REFERENCED        frames[frame]: 4 KiB of bytes
//! ```
//!
//! Locking: an access holds its page table's read lock for the whole copy,
//! so `remove`/`protect` (which take the write lock) return only after every
//! access through the old translation has finished — the software TLB
//! shootdown. The VM serialises all table updates under its own lock.

use super::{Access, Frame, HwFault, Machine, PhysMem, Pmap, PmapId};
use crate::sync::{Mutex, RwLock};
use crate::types::{VmAddr, VmProt, PAGE_SHIFT, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const MODIFIED: u8 = 1;
const REFERENCED: u8 = 2;

#[derive(Clone, Copy, Debug)]
struct Pte {
    frame: Frame,
    prot: VmProt,
}

#[derive(Default)]
struct PageTable {
    ptes: HashMap<u64, Pte>,
}

/// A software machine with `frame_count` physical pages.
#[allow(missing_debug_implementations)]
pub struct SoftMachine {
    frames: Vec<RwLock<Box<[u8]>>>,
    attrs: Vec<AtomicU8>,
    pmaps: RwLock<Vec<Option<RwLock<PageTable>>>>,
    pv: Mutex<HashMap<Frame, Vec<(PmapId, u64)>>>,
    /// Translations examined by range operations (see [`SoftMachine::pte_visits`]).
    pte_visits: AtomicU64,
    /// Reverse-map entries examined (see [`SoftMachine::pv_visits`]).
    pv_visits: AtomicU64,
}

impl SoftMachine {
    /// A machine with `frame_count` frames of physical memory. Frame
    /// storage is allocated on first use.
    pub fn new(frame_count: usize) -> SoftMachine {
        SoftMachine {
            frames: (0..frame_count).map(|_| RwLock::new(Box::default())).collect(),
            attrs: (0..frame_count).map(|_| AtomicU8::new(0)).collect(),
            pmaps: RwLock::new(Vec::new()),
            pv: Mutex::new(HashMap::new()),
            pte_visits: AtomicU64::new(0),
            pv_visits: AtomicU64::new(0),
        }
    }

    /// How many page-table slots `remove`, `protect`, `page_protect` and
    /// `destroy` have examined since the machine was made: each
    /// translation visited, or each page number looked up. An operation
    /// costs in proportion to this (for tests and benchmarks; single
    /// accesses, `enter` and `extract` are not counted).
    pub fn pte_visits(&self) -> u64 {
        self.pte_visits.load(Ordering::Relaxed)
    }

    /// How many reverse-map (frame to translations) entries have been
    /// examined, added or removed since the machine was made (for tests
    /// and benchmarks).
    pub fn pv_visits(&self) -> u64 {
        self.pv_visits.load(Ordering::Relaxed)
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

    fn pv_remove(&self, frame: Frame, pmap: PmapId, vpn: u64) {
        let mut pv = self.pv.lock();
        if let Some(list) = pv.get_mut(&frame) {
            self.count_pv(list.len());
            list.retain(|&(p, v)| !(p == pmap && v == vpn));
            if list.is_empty() {
                pv.remove(&frame);
            }
        }
    }

    /// The page numbers of `[start, end)`; empty if `end <= start`.
    fn range(start: VmAddr, end: VmAddr) -> std::ops::Range<u64> {
        let (s, e) = (start.0 >> PAGE_SHIFT, end.0.div_ceil(PAGE_SIZE));
        s..e.max(s)
    }

    /// How many translations the pmap holds (for reports and tests).
    pub fn resident_count(&self, pmap: PmapId) -> usize {
        self.with_table(pmap, |t| t.ptes.len()).unwrap_or(0)
    }
}

impl PhysMem for SoftMachine {
    fn frame_count(&self) -> usize {
        self.frames.len()
    }

    fn read(&self, frame: Frame, offset: usize, buf: &mut [u8]) {
        let f = self.frames[frame.0 as usize].read();
        if f.is_empty() {
            buf.fill(0);
        } else {
            buf.copy_from_slice(&f[offset..offset + buf.len()]);
        }
    }

    fn write(&self, frame: Frame, offset: usize, data: &[u8]) {
        let mut f = self.frames[frame.0 as usize].write();
        if f.is_empty() {
            *f = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
        }
        f[offset..offset + data.len()].copy_from_slice(data);
    }

    fn zero(&self, frame: Frame) {
        let mut f = self.frames[frame.0 as usize].write();
        if !f.is_empty() {
            f.fill(0);
        }
    }

    fn copy(&self, from: Frame, to: Frame) {
        if from == to {
            return;
        }
        let data = self.frames[from.0 as usize].read().clone();
        *self.frames[to.0 as usize].write() = data;
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
            let ptes = table.into_inner().ptes;
            self.count_pte(ptes.len());
            for (vpn, pte) in ptes {
                self.pv_remove(pte.frame, pmap, vpn);
            }
        }
    }

    fn enter(&self, pmap: PmapId, va: VmAddr, frame: Frame, prot: VmProt) {
        let vpn = va.0 >> PAGE_SHIFT;
        let old = self.with_table(pmap, |t| t.ptes.insert(vpn, Pte { frame, prot }));
        let Some(old) = old else { return };
        if let Some(old) = old {
            if old.frame == frame {
                return;
            }
            self.pv_remove(old.frame, pmap, vpn);
        }
        self.pv.lock().entry(frame).or_default().push((pmap, vpn));
        self.count_pv(1);
    }

    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) {
        let range = Self::range(start, end);
        let removed: Vec<(u64, Pte)> = self
            .with_table(pmap, |t| {
                if (range.end - range.start) as usize > t.ptes.len() {
                    self.count_pte(t.ptes.len());
                    let vpns: Vec<u64> = t.ptes.keys().copied().filter(|v| range.contains(v)).collect();
                    vpns.into_iter().filter_map(|v| t.ptes.remove(&v).map(|p| (v, p))).collect()
                } else {
                    self.count_pte((range.end - range.start) as usize);
                    range.clone().filter_map(|v| t.ptes.remove(&v).map(|p| (v, p))).collect()
                }
            })
            .unwrap_or_default();
        for (vpn, pte) in removed {
            self.pv_remove(pte.frame, pmap, vpn);
        }
    }

    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) {
        if prot.is_empty() {
            return self.remove(pmap, start, end);
        }
        let range = Self::range(start, end);
        self.with_table(pmap, |t| {
            self.count_pte(t.ptes.len());
            for (vpn, pte) in t.ptes.iter_mut() {
                if range.contains(vpn) {
                    pte.prot &= prot;
                }
            }
        });
    }

    fn page_protect(&self, frame: Frame, prot: VmProt) {
        let list = self.pv.lock().get(&frame).cloned().unwrap_or_default();
        self.count_pv(list.len());
        self.count_pte(list.len());
        for (pmap, vpn) in list {
            let removed = self
                .with_table(pmap, |t| match t.ptes.get_mut(&vpn) {
                    Some(pte) if pte.frame == frame => {
                        if prot.is_empty() {
                            t.ptes.remove(&vpn);
                            true
                        } else {
                            pte.prot &= prot;
                            false
                        }
                    }
                    _ => false,
                })
                .unwrap_or(false);
            if removed {
                self.pv_remove(frame, pmap, vpn);
            }
        }
    }

    fn is_modified(&self, frame: Frame) -> bool {
        self.attrs[frame.0 as usize].load(Ordering::Acquire) & MODIFIED != 0
    }

    fn clear_modify(&self, frame: Frame) {
        self.attrs[frame.0 as usize].fetch_and(!MODIFIED, Ordering::AcqRel);
    }

    fn is_referenced(&self, frame: Frame) -> bool {
        self.attrs[frame.0 as usize].load(Ordering::Acquire) & REFERENCED != 0
    }

    fn clear_reference(&self, frame: Frame) {
        self.attrs[frame.0 as usize].fetch_and(!REFERENCED, Ordering::AcqRel);
    }

    fn extract(&self, pmap: PmapId, va: VmAddr) -> Option<(Frame, VmProt)> {
        self.with_table(pmap, |t| t.ptes.get(&(va.0 >> PAGE_SHIFT)).map(|p| (p.frame, p.prot))).flatten()
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
        let pte = *table.ptes.get(&(va.0 >> PAGE_SHIFT)).ok_or(fault(false))?;
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
        m.enter(p, va, Frame(1), VmProt::READ);
        m.access(p, VmAddr(va.0 + 8), Access::Load(&mut buf)).unwrap();
        assert!(m.is_referenced(Frame(1)) && !m.is_modified(Frame(1)));
        let e = m.access(p, va, Access::Store(&[1, 2])).unwrap_err();
        assert!(e.protection && e.access == VmProt::WRITE);
        assert!(m.access(p, va, Access::Execute).unwrap_err().protection);
        m.enter(p, va, Frame(1), VmProt::DEFAULT);
        m.access(p, VmAddr(va.0 + 8), Access::Store(&[7, 7])).unwrap();
        assert!(m.is_modified(Frame(1)));
        m.access(p, VmAddr(va.0 + 7), Access::Load(&mut buf)).unwrap();
        assert_eq!(buf, [0, 7, 7, 0]);
    }

    #[test]
    fn page_protect_reaches_every_pmap() {
        let m = SoftMachine::new(4);
        let (a, b) = (m.create(), m.create());
        m.enter(a, VmAddr(0x1000), Frame(2), VmProt::ALL);
        m.enter(b, VmAddr(0x5000), Frame(2), VmProt::ALL);
        m.page_protect(Frame(2), VmProt::READ);
        assert_eq!(m.extract(a, VmAddr(0x1000)), Some((Frame(2), VmProt::READ)));
        assert_eq!(m.extract(b, VmAddr(0x5000)), Some((Frame(2), VmProt::READ)));
        m.page_protect(Frame(2), VmProt::NONE);
        assert_eq!(m.extract(a, VmAddr(0x1000)), None);
        assert_eq!(m.extract(b, VmAddr(0x5000)), None);
        assert!(m.pv.lock().is_empty());
    }

    #[test]
    fn remove_and_protect_ranges() {
        let m = SoftMachine::new(8);
        let p = m.create();
        for i in 0..4 {
            m.enter(p, VmAddr(i * PAGE_SIZE), Frame(i as u32), VmProt::ALL);
        }
        m.protect(p, VmAddr(PAGE_SIZE), VmAddr(3 * PAGE_SIZE), VmProt::READ);
        assert_eq!(m.extract(p, VmAddr(PAGE_SIZE)).unwrap().1, VmProt::READ);
        assert_eq!(m.extract(p, VmAddr(3 * PAGE_SIZE)).unwrap().1, VmProt::ALL);
        m.remove(p, VmAddr(0), VmAddr(2 * PAGE_SIZE));
        assert_eq!(m.resident_count(p), 2);
        m.destroy(p);
        assert!(m.pv.lock().is_empty());
    }
}
