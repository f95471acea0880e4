//! A software MMU that makes one race happen on demand: task threads store
//! through the MMU without the kernel lock, so a store may land at any
//! moment until a shootdown (`page_protect`) returns. This machine makes
//! the worst moment happen every time: right after the kernel reads a
//! frame's modified bit and finds it clean, a task store lands through the
//! translation that is still there.

use machvm_core::pmap::soft::SoftMachine;
use machvm_core::pmap::{Access, Frame, HwFault, Machine, ObjectId, PageStore, Pmap, PmapError, PmapId, StoreError};
use machvm_core::{VmAddr, VmProt, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A software MMU that, when armed, performs one task store through a
/// live writable translation of a frame just after `is_modified` reported
/// that frame clean.
pub struct RacingMachine {
    inner: SoftMachine,
    /// A writable translation of each frame, as entered.
    writable: Mutex<HashMap<Frame, (PmapId, VmAddr)>>,
    /// The value to store at the translation's first word.
    armed: Mutex<Option<u64>>,
    /// Where the racing store landed.
    landed: Mutex<Option<VmAddr>>,
}

impl RacingMachine {
    pub fn new(frames: usize) -> Arc<RacingMachine> {
        Arc::new(RacingMachine {
            inner: SoftMachine::new(frames),
            writable: Mutex::new(HashMap::new()),
            armed: Mutex::new(None),
            landed: Mutex::new(None),
        })
    }
    pub fn arm(&self, v: u64) {
        *self.armed.lock().unwrap() = Some(v);
    }
    /// Disarms; where the racing store landed, if it did.
    pub fn landed(&self) -> Option<VmAddr> {
        *self.armed.lock().unwrap() = None;
        *self.landed.lock().unwrap()
    }
}

impl PageStore for RacingMachine {
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn alloc(&self, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        self.inner.alloc(object, offset)
    }
    fn free(&self, page: Frame) {
        self.inner.free(page)
    }
    fn rename(&self, page: Frame, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        self.inner.rename(page, object, offset)
    }
    fn object_released(&self, object: ObjectId) {
        self.inner.object_released(object)
    }
    fn read(&self, frame: Frame, offset: usize, buf: &mut [u8]) {
        self.inner.read(frame, offset, buf)
    }
    fn write(&self, frame: Frame, offset: usize, data: &[u8]) {
        self.inner.write(frame, offset, data)
    }
    fn zero(&self, frame: Frame) {
        self.inner.zero(frame)
    }
    fn copy(&self, from: Frame, to: Frame) {
        self.inner.copy(from, to)
    }
}

impl Pmap for RacingMachine {
    fn create(&self) -> PmapId {
        self.inner.create()
    }
    fn destroy(&self, pmap: PmapId) {
        self.inner.destroy(pmap)
    }
    fn enter(&self, pmap: PmapId, va: VmAddr, pages: &[Frame], prot: VmProt) -> Result<(), PmapError> {
        if prot.contains(VmProt::WRITE) {
            let mut writable = self.writable.lock().unwrap();
            for (i, &frame) in pages.iter().enumerate() {
                writable.insert(frame, (pmap, VmAddr(va.0 + i as u64 * PAGE_SIZE)));
            }
        }
        self.inner.enter(pmap, va, pages, prot)
    }
    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) -> Result<(), PmapError> {
        self.inner.remove(pmap, start, end)
    }
    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) -> Result<(), PmapError> {
        self.inner.protect(pmap, start, end, prot)
    }
    fn page_remove(&self, page: Frame) -> Result<(), PmapError> {
        self.inner.page_remove(page)
    }
    fn page_protect(&self, frame: Frame, prot: VmProt) -> Result<(), PmapError> {
        self.inner.page_protect(frame, prot)
    }
    fn is_modified(&self, frame: Frame) -> bool {
        let modified = self.inner.is_modified(frame);
        if !modified {
            let target = self.writable.lock().unwrap().get(&frame).copied();
            if let Some((pmap, va)) = target {
                // Only through a translation that still maps this frame
                // writable: exactly what a running thread could use.
                let live = self.inner.extract(pmap, va).is_some_and(|(f, p)| f == frame && p.contains(VmProt::WRITE));
                let mut armed = self.armed.lock().unwrap();
                if let (true, Some(v)) = (live, *armed) {
                    let stored = self.inner.access(pmap, va, Access::Store(&v.to_le_bytes()));
                    assert!(stored.is_ok());
                    *armed = None;
                    *self.landed.lock().unwrap() = Some(va);
                }
            }
        }
        modified
    }
    fn clear_modify(&self, frame: Frame) {
        self.inner.clear_modify(frame)
    }
    fn is_referenced(&self, frame: Frame) -> bool {
        self.inner.is_referenced(frame)
    }
    fn clear_reference(&self, frame: Frame) {
        self.inner.clear_reference(frame)
    }
    fn extract(&self, pmap: PmapId, va: VmAddr) -> Option<(Frame, VmProt)> {
        self.inner.extract(pmap, va)
    }
}

impl Machine for RacingMachine {
    fn access(&self, pmap: PmapId, va: VmAddr, access: Access<'_>) -> std::result::Result<(), HwFault> {
        self.inner.access(pmap, va, access)
    }
}
