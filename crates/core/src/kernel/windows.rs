//! Windows: where a task whose memory is real (a host process touching
//! it with loads and stores) maps each object's memory.
//!
//! On a machine whose windows are fixed ([`crate::pmap::Machine::windows_fixed`]),
//! a process maps every range of its address space as a window of one
//! object's memory at that object's offsets (a `MAP_SHARED` window of the
//! object's memfd), and the machine can show there only that object's
//! pages. So before a range is mapped, [`Kernel::vm_windows`] settles what
//! the window's object is, for good:
//!
//! - anonymous memory gets its object now, not on its first fault;
//! - a copy-on-write entry gets its private object now, not on its first
//!   write (the fault path does the same on such a machine, and copies up
//!   the pages it finds below, even to read them);
//! - memory seen through a paging proxy is a window of the real object
//!   behind the proxy's windows (one window per proxy window: the same
//!   pages, never copied), with what the proxy allows there.
//!
//! [`Kernel::vm_set_bounds`] puts a task's whole address space where its
//! process has reserved room for it, so that the kernel's addresses are
//! the process's own.

use super::{Kernel, TaskId};
use crate::pmap::ObjectId;
use crate::types::{KernError, Result, VmAddr, VmProt};
use crate::vm::map::VmMap;
use crate::vm::object::{Provider, VmObject};

/// One window of a task's address space: `[start, start + len)` shows
/// `object`'s memory from `offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: VmAddr,
    pub len: u64,
    /// A real object (never a paging proxy's view).
    pub object: ObjectId,
    pub offset: u64,
    /// The entry's current protection, narrowed by the proxies it was
    /// mapped through (what the process may do there without a fault
    /// being refused).
    pub prot: VmProt,
    /// The most `prot` can ever become there: the entry's maximum,
    /// narrowed the same way. Without `WRITE`, no store will ever be
    /// allowed in the window, so a host may map it read-only for good.
    pub max: VmProt,
}

impl Kernel {
    /// The windows that make up `[address, address + size)` of `task`,
    /// each object settled for good (see the module comment). A range with
    /// no entry has no window.
    ///
    /// Errors: `KERN_INVALID_TASK`; `KERN_INVALID_ARGUMENT` (a range that
    /// wraps or is not page-aligned); `KERN_MEMORY_ERROR` (memory behind a
    /// revoked paging proxy: it has no window, and its faults fail).
    pub fn vm_windows(&self, task: TaskId, address: VmAddr, size: u64) -> Result<Vec<Window>> {
        self.with(|st| {
            let t = st.task(task)?;
            if size == 0 {
                return Ok(Vec::new());
            }
            let end = t.map.check_range(address, size)?;
            let starts: Vec<u64> = t.map.overlapping(address.0, end).map(|e| e.start).collect();
            // Whole entries are settled (an object is the entry's), but only
            // the part in the range is reported.
            let mut out = Vec::new();
            for start in starts {
                let s = &mut *st;
                let t = s.tasks.get_mut(&task.id).expect("checked");
                let e = t.map.lookup_mut(start).expect("listed");
                let object = match e.object {
                    Some(o) => o,
                    None => {
                        let o = s.vm.object_insert(VmObject::temporary(e.offset + e.len()));
                        e.object = Some(o);
                        o
                    }
                };
                if e.needs_copy {
                    let mut shadow = VmObject::temporary(e.len());
                    shadow.shadow = Some((object, e.offset)); // takes over the entry's reference
                    e.object = Some(s.vm.object_insert(shadow));
                    e.offset = 0;
                    e.needs_copy = false;
                }
                let e = e.clone();
                let object = e.object.expect("set above");
                let lo = e.start.max(address.0);
                let hi = e.end.min(end);
                let off = e.offset_of(lo);
                if matches!(s.vm.object(object).provider, Provider::View(_)) {
                    for (rel, len, real, roff, allowed, _via) in s.mo.proxies.flatten(object, off, hi - lo)? {
                        out.push(Window {
                            start: VmAddr(lo + rel),
                            len,
                            object: real,
                            offset: roff,
                            prot: e.cur & allowed,
                            max: e.max & allowed,
                        });
                    }
                } else {
                    out.push(Window { start: VmAddr(lo), len: hi - lo, object, offset: off, prot: e.cur, max: e.max });
                }
            }
            Ok(out)
        })
    }

    /// Puts `task`'s address space at `[min, max)` (where its process has
    /// reserved room): every address the kernel hands out from now on lies
    /// there. The task's entries must lie there already (a child task's
    /// are its parent's, at the parent's addresses: its process reserves
    /// the same range).
    ///
    /// Errors: `KERN_INVALID_TASK`; `KERN_INVALID_ARGUMENT` (an empty,
    /// unaligned or wrapping range, or one outside the kernel's own
    /// bounds); `KERN_FAILURE` (the task has memory mapped outside it).
    pub fn vm_set_bounds(&self, task: TaskId, min: VmAddr, max: VmAddr) -> Result<()> {
        use crate::vm::map::{VM_MAX_ADDRESS, VM_MIN_ADDRESS};
        let aligned = |a: u64| a % crate::PAGE_SIZE == 0;
        if !(aligned(min.0) && aligned(max.0) && VM_MIN_ADDRESS <= min.0 && min.0 < max.0 && max.0 <= VM_MAX_ADDRESS) {
            return Err(KernError::InvalidArgument);
        }
        self.with(|st| {
            let t = st.task_mut(task)?;
            if t.map.iter().any(|e| e.start < min.0 || e.end > max.0) {
                return Err(KernError::Failure);
            }
            let mut map = VmMap::new(min.0, max.0);
            for e in t.map.iter() {
                map.insert(e.clone());
            }
            t.map = map;
            Ok(())
        })
    }
}
