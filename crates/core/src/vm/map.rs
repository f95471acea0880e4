//! Address maps: the ordered set of entries of one task's address space.
//!
//! ```text
//!  min                                                           max
//!   |  hole  | entry [start,end) obj@off cur/max inh | hole | entry |  hole  |
//! ```
//!
//! Entries live in a `BTreeMap` keyed by start address, so the entry
//! containing an address is found in O(log n). Holes are indexed twice —
//! by address and by (size, address) — so `anywhere` allocation picks the
//! smallest hole that fits in O(log n) too (best fit), whatever the number
//! of live entries.
//!
//! This module knows nothing of objects beyond their ids: clipping an
//! entry duplicates its object reference, and the caller (the kernel) takes
//! the extra reference. Every routine here is pure bookkeeping.

use super::object::ObjectId;
#[cfg(test)]
use crate::types::PAGE_SIZE;
use crate::types::{KernError, Result, VmAddr, VmInherit, VmProt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The lowest address a map hands out (page zero stays unmapped).
pub const VM_MIN_ADDRESS: u64 = 0x1_0000;
/// One past the highest address a map hands out (47-bit user space).
pub const VM_MAX_ADDRESS: u64 = 1 << 47;

/// One map entry: `[start, end)` maps `object` from `offset`.
#[derive(Clone, Debug)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// `None`: anonymous zero-fill memory whose object is made on first fault.
    pub object: Option<ObjectId>,
    pub offset: u64,
    pub cur: VmProt,
    pub max: VmProt,
    pub inherit: VmInherit,
    /// The object is shared copy-on-write: the first write makes a shadow.
    pub needs_copy: bool,
    /// Others may map the same memory (a memory object or proxy mapped
    /// without copy, memory inherited shared, memory behind a region
    /// proxy): Mach's `is_shared`.
    pub shared: bool,
    /// Paging proxies this mapping was made through; revoking any of them
    /// takes the mapping's access away.
    pub via: Arc<[u64]>,
}

impl MapEntry {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// The object offset backing `addr` (which must be in the entry).
    pub fn offset_of(&self, addr: u64) -> u64 {
        self.offset + (addr - self.start)
    }
}

/// A task's address map.
#[derive(Debug)]
pub struct VmMap {
    entries: BTreeMap<u64, MapEntry>,
    holes_by_addr: BTreeMap<u64, u64>,
    holes_by_size: BTreeSet<(u64, u64)>,
    min: u64,
    max: u64,
}

impl Default for VmMap {
    fn default() -> Self {
        VmMap::new(VM_MIN_ADDRESS, VM_MAX_ADDRESS)
    }
}

impl VmMap {
    /// An empty map over `[min, max)`.
    pub fn new(min: u64, max: u64) -> VmMap {
        let mut m = VmMap {
            entries: BTreeMap::new(),
            holes_by_addr: BTreeMap::new(),
            holes_by_size: BTreeSet::new(),
            min,
            max,
        };
        m.add_hole(min, max);
        m
    }

    pub fn min(&self) -> u64 {
        self.min
    }
    pub fn max(&self) -> u64 {
        self.max
    }
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn add_hole(&mut self, start: u64, end: u64) {
        if start < end {
            self.holes_by_addr.insert(start, end);
            self.holes_by_size.insert((end - start, start));
        }
    }

    fn remove_hole(&mut self, start: u64) -> Option<u64> {
        let end = self.holes_by_addr.remove(&start)?;
        self.holes_by_size.remove(&(end - start, start));
        Some(end)
    }

    /// The entry containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&MapEntry> {
        self.entries.range(..=addr).next_back().map(|(_, e)| e).filter(|e| addr < e.end)
    }

    /// The entry containing `addr`, mutably.
    pub fn lookup_mut(&mut self, addr: u64) -> Option<&mut MapEntry> {
        self.entries.range_mut(..=addr).next_back().map(|(_, e)| e).filter(|e| addr < e.end)
    }

    /// The entry containing `addr`, or failing that the first one after it.
    pub fn lookup_or_next(&self, addr: u64) -> Option<&MapEntry> {
        self.lookup(addr).or_else(|| self.entries.range(addr..).next().map(|(_, e)| e))
    }

    /// Entries overlapping `[start, end)`, in address order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &MapEntry> {
        let first = self.lookup(start).map_or(start, |e| e.start);
        self.entries.range(first..end).map(|(_, e)| e)
    }

    /// Every entry, in address order.
    pub fn iter(&self) -> impl Iterator<Item = &MapEntry> {
        self.entries.values()
    }

    /// Is all of `[start, end)` free?
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        start >= self.min
            && end <= self.max
            && start < end
            && self.holes_by_addr.range(..=start).next_back().is_some_and(|(&_s, &e)| end <= e)
    }

    /// Is all of `[start, end)` covered by entries, with no hole?
    pub fn is_covered(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for e in self.overlapping(start, end) {
            if e.start > at {
                return false;
            }
            at = e.end;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// Finds space for `size` bytes aligned to `mask + 1` (best fit).
    pub fn find_space(&self, size: u64, mask: u64) -> Result<u64> {
        let align = |a: u64| a.checked_add(mask).map(|v| v & !mask);
        for &(hsize, hstart) in self.holes_by_size.range((size, 0)..) {
            let Some(start) = align(hstart) else { continue };
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end <= hstart + hsize {
                return Ok(start);
            }
        }
        Err(KernError::NoSpace)
    }

    /// Inserts an entry over free space (checked by the caller with
    /// `is_free`).
    pub fn insert(&mut self, e: MapEntry) {
        debug_assert!(self.is_free(e.start, e.end));
        let (hs, he) =
            self.holes_by_addr.range(..=e.start).next_back().map(|(&s, &en)| (s, en)).expect("insert over free space");
        self.remove_hole(hs);
        self.add_hole(hs, e.start);
        self.add_hole(e.end, he);
        self.entries.insert(e.start, e);
    }

    /// Splits entries so that `addr` is an entry boundary. Returns the
    /// object of the entry that was split (its reference is now held twice).
    pub fn clip(&mut self, addr: u64) -> Option<ObjectId> {
        let e = self.lookup(addr)?;
        if e.start == addr {
            return None;
        }
        let start = e.start;
        let e = self.entries.get_mut(&start).expect("found above");
        let mut tail = e.clone();
        e.end = addr;
        tail.offset += addr - start;
        tail.start = addr;
        let obj = tail.object;
        self.entries.insert(addr, tail);
        obj
    }

    /// Removes every entry inside `[start, end)` (clipped by the caller)
    /// and returns them; the space becomes a hole.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<MapEntry> {
        let keys: Vec<u64> = self.entries.range(start..end).map(|(&k, _)| k).collect();
        let removed: Vec<MapEntry> = keys.iter().filter_map(|k| self.entries.remove(k)).collect();
        for e in &removed {
            self.free_space(e.start, e.end);
        }
        removed
    }

    fn free_space(&mut self, mut start: u64, mut end: u64) {
        if let Some((&ps, &pe)) = self.holes_by_addr.range(..start).next_back() {
            if pe == start {
                self.remove_hole(ps);
                start = ps;
            }
        }
        if let Some(ne) = self.holes_by_addr.get(&end).copied() {
            self.remove_hole(end);
            end = ne;
        }
        self.add_hole(start, end);
    }

    /// Applies `f` to every entry in `[start, end)` (clipped by the caller).
    pub fn for_each_in_mut(&mut self, start: u64, end: u64, mut f: impl FnMut(&mut MapEntry)) {
        for (_, e) in self.entries.range_mut(start..end) {
            f(e);
        }
    }

    /// Checks a task-supplied `[addr, addr + size)` claim: page-aligned
    /// start (`KERN_INVALID_ARGUMENT`), size rounded up to pages without
    /// overflow (`KERN_INVALID_ARGUMENT`), inside the map
    /// (`KERN_INVALID_ADDRESS`). Returns the end. A zero size is the
    /// caller's to refuse or allow.
    pub fn check_range(&self, addr: VmAddr, size: u64) -> Result<u64> {
        if !addr.is_page_aligned() {
            return Err(KernError::InvalidArgument);
        }
        let size = crate::types::round_page(size)?;
        let end = addr.checked_add(size)?.0;
        if addr.0 < self.min || end > self.max {
            return Err(KernError::InvalidAddress);
        }
        Ok(end)
    }
}

/// Page-rounds a task-supplied size; zero is `KERN_INVALID_ARGUMENT`.
pub fn nonzero_pages(size: u64) -> Result<u64> {
    if size == 0 {
        return Err(KernError::InvalidArgument);
    }
    crate::types::round_page(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64) -> MapEntry {
        MapEntry {
            start,
            end,
            object: None,
            offset: 0,
            cur: VmProt::DEFAULT,
            max: VmProt::ALL,
            inherit: VmInherit::Copy,
            needs_copy: false,
            shared: false,
            via: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn holes_track_insert_clip_and_remove() {
        let mut m = VmMap::new(0x10000, 0x100000);
        let a = m.find_space(0x4000, PAGE_SIZE - 1).unwrap();
        m.insert(entry(a, a + 0x4000));
        assert!(!m.is_free(a, a + PAGE_SIZE));
        assert!(m.lookup(a + 0x3fff).is_some() && m.lookup(a + 0x4000).is_none());
        m.clip(a + 0x1000);
        m.clip(a + 0x3000);
        assert_eq!(m.entry_count(), 3);
        let removed = m.remove_range(a + 0x1000, a + 0x3000);
        assert_eq!(removed.len(), 1);
        assert!(m.is_free(a + 0x1000, a + 0x3000));
        assert!(!m.is_covered(a, a + 0x4000));
        m.clip(a);
        m.remove_range(a, a + 0x4000);
        assert!(m.is_free(0x10000, 0x100000));
        assert_eq!(m.holes_by_addr.len(), 1);
    }

    #[test]
    fn find_space_honours_alignment_and_fails_when_full() {
        let mut m = VmMap::new(0x10000, 0x20000);
        m.insert(entry(0x10000, 0x11000));
        let a = m.find_space(0x1000, 0x3fff).unwrap();
        assert_eq!(a % 0x4000, 0);
        assert_eq!(m.find_space(0x10000, PAGE_SIZE - 1), Err(KernError::NoSpace));
    }
}
