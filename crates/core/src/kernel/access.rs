//! Task threads touching memory: loads, stores and instruction fetches go
//! through the MMU exactly as hardware accesses would, and a miss becomes a
//! call to the fault path.
//!
//! ```text
//!  read/write/execute ──► Machine::access ──ok──► done
//!                              │ HwFault
//!                              ▼
//!                        vm_fault (kernel lock) ──Done──► retry the access
//!                              │ Wait: deliver data_request, sleep (lock released)
//!                              └──────────────────────────► fault again
//! ```

use super::{Kernel, TaskId};
use crate::pmap::Access;
use crate::sync::Arc;
use crate::types::{KernError, Result, VmAddr, VmProt, PAGE_SIZE};
use crate::vm::charge::Owner;
use crate::vm::fault::{fault_locked, FaultOutcome};
use crate::wait::{Poll, Step, WaitBy, WaitKey, WaitTicket, Waker};

/// After this many faults that each claimed success, an access that still
/// misses gives up with `KERN_MEMORY_FAILURE` (the page is being stolen
/// faster than it can be used).
const ACCESS_RETRIES: u32 = 10_000;

impl Kernel {
    /// `vm_fault`: makes the page at `va` accessible for `access`, waiting
    /// for its pager if need be.
    ///
    /// Errors: `KERN_INVALID_ADDRESS` (no entry), `KERN_PROTECTION_FAILURE`
    /// (the entry or the proxy forbids the access), `KERN_MEMORY_ERROR`
    /// (the pager failed the page or died, or the proxy was revoked),
    /// `KERN_RESOURCE_SHORTAGE` (no free frame, and none could be
    /// reclaimed; or the task is at its
    /// [`crate::TaskLimits::resident_pages`] and none of its own pages can
    /// be reclaimed or is on its way), `KERN_INVALID_TASK`.
    pub fn vm_fault(&self, task: TaskId, va: VmAddr, access: VmProt) -> Result<()> {
        let mut pending = None;
        loop {
            match self.fault_step(task, va, access, WaitBy::Thread, pending.take())? {
                Step::Ready(()) => return Ok(()),
                Step::Pending(w) => {
                    w.sleep(self.lock_cell(), None);
                    pending = Some(w.ticket);
                }
            }
        }
    }

    /// `vm_fault` without waiting: [`Poll::Pending`] when a provider has
    /// been asked (or is being asked) for the page, or the task is at its
    /// resident limit with pages on their way to it, with `waker`
    /// registered to be woken when the fault is worth making again.
    ///
    /// Errors: as [`Kernel::vm_fault`].
    pub fn vm_fault_poll(&self, task: TaskId, va: VmAddr, access: VmProt, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        Ok(self.fault_step(task, va, access, WaitBy::Caller(waker), None)?.poll())
    }

    /// Fault-around after a fault at `va` that is done: enters pages after
    /// it that are resident already and need only a translation, and
    /// zero-fills new anonymous memory ahead of a sequential run (see
    /// `crate::vm::fault::fault_around`). Returns how many pages it
    /// entered (0 for a task that is gone).
    pub fn vm_fault_around(&self, task: TaskId, va: VmAddr, around: crate::vm::fault::Around) -> usize {
        let mut st = self.lock();
        let s = &mut *st;
        let n = match s.tasks.get(&task.id) {
            Some(t) => {
                crate::vm::fault::fault_around(&mut s.vm, &t.map, t.pmap, Owner(task.id), &s.mo.proxies, va.0, around)
            }
            None => 0,
        };
        self.unlock(st);
        n
    }

    /// One walk of the fault path; `previous` is a registration to cancel.
    fn fault_step(
        &self,
        task: TaskId,
        va: VmAddr,
        access: VmProt,
        by: WaitBy<'_>,
        previous: Option<WaitTicket>,
    ) -> Result<Step<()>> {
        let mut st = self.lock();
        if let Some(t) = previous {
            st.waits.cancel(t);
        }
        let s = &mut *st;
        let Some(t) = s.tasks.get_mut(&task.id) else {
            self.unlock(st);
            return Err(KernError::InvalidTask);
        };
        match fault_locked(&mut s.vm, &mut t.map, t.pmap, Owner(task.id), &s.mo.proxies, va.0, access) {
            FaultOutcome::Done => {
                self.unlock(st);
                Ok(Step::Ready(()))
            }
            FaultOutcome::Error(e) => {
                self.unlock(st);
                Err(e)
            }
            FaultOutcome::Wait(object) => {
                let keys = [WaitKey::Object(object), WaitKey::Task(task.id)];
                Ok(Step::Pending(self.unlock_waiting(st, &keys, by)))
            }
            // Woken when the task's pages on their way land (or fail).
            FaultOutcome::WaitRoom => Ok(Step::Pending(self.unlock_waiting(st, &[WaitKey::Task(task.id)], by))),
        }
    }

    /// One access within one page, faulting (and retrying) until the MMU
    /// lets it through.
    fn access_page(&self, task: TaskId, va: VmAddr, mut access: Access<'_>) -> Result<()> {
        for _ in 0..ACCESS_RETRIES {
            let again = match &mut access {
                Access::Load(b) => Access::Load(b),
                Access::Store(d) => Access::Store(d),
                Access::Execute => Access::Execute,
            };
            match self.machine.access(task.pmap, va, again) {
                Ok(()) => return Ok(()),
                Err(fault) => self.vm_fault(task, fault.va, fault.access)?,
            }
        }
        Err(KernError::MemoryFailure)
    }

    /// One access within one page without waiting: [`Poll::Pending`] when
    /// its fault waits for a provider, with `waker` registered (the access
    /// is then made again from the start). `access` must not cross a page.
    ///
    /// Errors: as [`Kernel::read`].
    pub fn access_poll(
        &self,
        task: TaskId,
        va: VmAddr,
        mut access: Access<'_>,
        waker: &Arc<dyn Waker>,
    ) -> Result<Poll<()>> {
        for _ in 0..ACCESS_RETRIES {
            let again = match &mut access {
                Access::Load(b) => Access::Load(b),
                Access::Store(d) => Access::Store(d),
                Access::Execute => Access::Execute,
            };
            match self.machine.access(task.pmap, va, again) {
                Ok(()) => return Ok(Poll::Ready(())),
                Err(fault) => {
                    if let Poll::Pending(t) = self.vm_fault_poll(task, fault.va, fault.access, waker)? {
                        return Ok(Poll::Pending(t));
                    }
                }
            }
        }
        Err(KernError::MemoryFailure)
    }

    /// A task thread loads `buf.len()` bytes from `addr`.
    ///
    /// Errors: as [`Kernel::vm_fault`]; bytes before the failing page have
    /// been read, as on hardware. `KERN_INVALID_ADDRESS` if the range wraps;
    /// `KERN_MEMORY_FAILURE` if a page was taken away again after each of
    /// `ACCESS_RETRIES` (10,000) faults that brought it in.
    pub fn read(&self, task: TaskId, addr: VmAddr, buf: &mut [u8]) -> Result<()> {
        addr.checked_add(buf.len() as u64).map_err(|_| KernError::InvalidAddress)?;
        let mut at = addr.0;
        let mut rest = buf;
        while !rest.is_empty() {
            let n = page_chunk(at, rest.len());
            let (chunk, tail) = rest.split_at_mut(n);
            self.access_page(task, VmAddr(at), Access::Load(chunk))?;
            rest = tail;
            at += n as u64;
        }
        Ok(())
    }

    /// A task thread stores `data` at `addr`.
    ///
    /// Errors: as [`Kernel::read`]; bytes before the failing page have been
    /// stored.
    pub fn write(&self, task: TaskId, addr: VmAddr, data: &[u8]) -> Result<()> {
        addr.checked_add(data.len() as u64).map_err(|_| KernError::InvalidAddress)?;
        let mut at = addr.0;
        let mut rest = data;
        while !rest.is_empty() {
            let n = page_chunk(at, rest.len());
            self.access_page(task, VmAddr(at), Access::Store(&rest[..n]))?;
            rest = &rest[n..];
            at += n as u64;
        }
        Ok(())
    }

    /// A task thread fetches an instruction at `addr` (checks execute
    /// permission, faulting the page in).
    ///
    /// Errors: as [`Kernel::read`].
    pub fn execute(&self, task: TaskId, addr: VmAddr) -> Result<()> {
        self.access_page(task, addr, Access::Execute)
    }

    /// Reads a little-endian `u64` (convenience for workloads and tests).
    ///
    /// Errors: as [`Kernel::read`].
    pub fn read_u64(&self, task: TaskId, addr: VmAddr) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(task, addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64`.
    ///
    /// Errors: as [`Kernel::write`].
    pub fn write_u64(&self, task: TaskId, addr: VmAddr, v: u64) -> Result<()> {
        self.write(task, addr, &v.to_le_bytes())
    }
}

/// How many of `len` bytes from `addr` lie in `addr`'s page.
pub(crate) fn page_chunk(addr: u64, len: usize) -> usize {
    ((PAGE_SIZE - addr % PAGE_SIZE) as usize).min(len)
}
