//! Calls that may wait, made a step at a time.
//!
//! A call that must wait (a fault for its pager, a receive for a message,
//! a send for room in a queue, an eager copy for its pages) can stop, keep
//! what it has done, and go on when woken. Each such call has an *op*,
//! made by a `Kernel::*_op` constructor and driven by `poll` with a
//! [`Waker`]: `Ready` with the call's result, or `Pending` with the waker
//! registered on the keys that could change the answer (see
//! [`crate::wait`]). The daemon's event loop drives ops, so a waiting
//! client costs no thread; the in-process blocking calls run the very same
//! steps on the calling thread (`Kernel::block_on`), so the two cannot
//! disagree.
//!
//! An op holds the kernel (`Arc<Kernel>`). Dropped before its end, it
//! cancels its wait registrations and releases what it holds (half-made
//! eager copies): nothing leaks when a client goes in the middle of a
//! call. An op is not polled again once it was `Ready`.

use super::calls::{CopySource, MapRequest};
use super::{KState, Kernel, TaskId};
use crate::ipc::{PortName, ReceivedMessage, UserMessage};
use crate::pmap::Access;
use crate::sync::Arc;
use crate::types::{KernError, Result, VmAddr, VmProt, PAGE_SIZE};
use crate::vm::charge::Owner;
use crate::vm::copy::{CopyStep, EagerCopy};
use crate::wait::{Poll, Step, ThreadWaker, WaitBy, WaitKey, WaitTicket, Waker, MAX_KEYS};
use rustc_hash::FxHashSet;
use std::time::Instant;

/// How often `vm_write` faults its whole range in again when pageout keeps
/// taking pages before it can store.
const WRITE_ATTEMPTS: u32 = 3;

impl Kernel {
    /// Runs a call's steps to the end on the calling thread, sleeping on
    /// the thread's own waker between them.
    pub(crate) fn block_on<T>(&self, mut step: impl FnMut(&Arc<dyn Waker>) -> Result<Poll<T>>) -> Result<T> {
        let w = ThreadWaker::current();
        let waker: Arc<dyn Waker> = w.clone();
        loop {
            // Read before the step that may register: a wake-up after the
            // registration moves it, so none is missed (an earlier one
            // costs one more step).
            let seen = w.generation();
            match step(&waker)? {
                Poll::Ready(v) => return Ok(v),
                Poll::Pending(_) => w.wait(self.lock_cell(), seen, None),
            }
        }
    }

    /// Cancels registrations an op made and was not woken by.
    fn cancel_all(&self, tickets: &mut Vec<WaitTicket>) {
        if !tickets.is_empty() {
            self.with(|st| tickets.drain(..).for_each(|t| st.waits.cancel(t)));
        }
    }

    /// A load of `len` bytes from `addr` (the call `Kernel::read` makes).
    ///
    /// Errors: `KERN_INVALID_ADDRESS` if the range wraps; the rest as
    /// [`Kernel::read`], from `poll`.
    pub fn load_op(self: &Arc<Self>, task: TaskId, addr: VmAddr, len: usize) -> Result<AccessOp> {
        addr.checked_add(len as u64).map_err(|_| KernError::InvalidAddress)?;
        Ok(AccessOp::new(self, task, addr, AccessKind::Load(vec![0; len])))
    }

    /// A store of `data` at `addr` (the call `Kernel::write` makes).
    ///
    /// Errors: as [`Kernel::load_op`].
    pub fn store_op(self: &Arc<Self>, task: TaskId, addr: VmAddr, data: Vec<u8>) -> Result<AccessOp> {
        addr.checked_add(data.len() as u64).map_err(|_| KernError::InvalidAddress)?;
        Ok(AccessOp::new(self, task, addr, AccessKind::Store(data)))
    }

    /// An instruction fetch at `addr` (`Kernel::execute`).
    pub fn execute_op(self: &Arc<Self>, task: TaskId, addr: VmAddr) -> AccessOp {
        AccessOp::new(self, task, addr, AccessKind::Execute)
    }

    /// `vm_read` of `size` bytes from `address`: the range is checked now,
    /// the pages read by `poll`.
    ///
    /// Errors: as [`Kernel::vm_read`].
    pub fn vm_read_op(self: &Arc<Self>, task: TaskId, address: VmAddr, size: u64) -> Result<AccessOp> {
        let len = self.vm_read_check(task, address, size)?;
        Ok(AccessOp::new(self, task, address, AccessKind::Load(vec![0; len])))
    }

    /// `vm_write` of `data` at `address`, all or nothing (see
    /// [`Kernel::vm_write`]): the range is checked now.
    ///
    /// Errors: as [`Kernel::vm_write`].
    pub fn vm_write_op(self: &Arc<Self>, task: TaskId, address: VmAddr, data: Vec<u8>) -> Result<WriteOp> {
        self.check_access(task, address, data.len() as u64, VmProt::WRITE)?;
        Ok(WriteOp { kernel: self.clone(), state: WriteState::store(task, address, data) })
    }

    /// `vm_copy` of `size` bytes from `source` to `dest` (see
    /// [`Kernel::vm_copy`]): both ranges are checked now; `poll` reads the
    /// source, then stores as `vm_write` does.
    ///
    /// Errors: as [`Kernel::vm_copy`].
    pub fn vm_copy_op(self: &Arc<Self>, task: TaskId, source: VmAddr, size: u64, dest: VmAddr) -> Result<WriteOp> {
        self.check_access(task, dest, size, VmProt::WRITE)?;
        let len = self.vm_read_check(task, source, size)?;
        Ok(WriteOp { kernel: self.clone(), state: WriteState::copy(task, source, len, dest) })
    }

    /// `vm_map` (see [`Kernel::vm_map`]): a copy of memory whose pager asks
    /// for eager copies waits for its pages in `poll`.
    pub fn vm_map_op(self: &Arc<Self>, task: TaskId, r: MapRequest) -> MapOp {
        MapOp { kernel: self.clone(), task, r, copies: Copies::default() }
    }

    /// `task_create` (see [`Kernel::task_create`]): eager copies of the
    /// parent's memory wait for their pages in `poll`.
    pub fn task_create_op(self: &Arc<Self>, parent: Option<TaskId>) -> TaskCreateOp {
        TaskCreateOp { kernel: self.clone(), parent, copies: Copies::default() }
    }

    /// `mach_msg(MACH_SEND_MSG | MACH_SEND_TIMEOUT)` (see
    /// [`Kernel::msg_send_timeout`]): a send to a full queue waits for room
    /// until `deadline` (`None`: for good), then fails with
    /// `MACH_SEND_TIMED_OUT`. The caller polls again once the deadline
    /// passes.
    pub fn msg_send_op(self: &Arc<Self>, task: TaskId, msg: UserMessage, deadline: Option<Instant>) -> SendOp {
        SendOp { kernel: self.clone(), task, msg: Some(msg), deadline, tickets: Vec::new() }
    }

    /// `mach_msg(MACH_RCV_MSG | MACH_RCV_TIMEOUT)` on `name` until
    /// `deadline` (`None`: for good), then `MACH_RCV_TIMED_OUT`. The caller
    /// polls again once the deadline passes.
    pub fn msg_receive_op(self: &Arc<Self>, task: TaskId, name: PortName, deadline: Option<Instant>) -> ReceiveOp {
        ReceiveOp { kernel: self.clone(), task, name, deadline, tickets: Vec::new() }
    }
}

/// What an [`AccessOp`] does, and the bytes it carries.
#[derive(Debug)]
enum AccessKind {
    Load(Vec<u8>),
    Store(Vec<u8>),
    Execute,
}

/// A load, store or instruction fetch over a range, page by page: stopped
/// where a page's fault must wait, it goes on from that page. As on
/// hardware, when a page fails the bytes before it have been accessed.
#[derive(Debug)]
pub struct AccessOp {
    kernel: Arc<Kernel>,
    state: AccessState,
}

impl AccessOp {
    fn new(k: &Arc<Kernel>, task: TaskId, addr: VmAddr, kind: AccessKind) -> AccessOp {
        AccessOp { kernel: k.clone(), state: AccessState::new(task, addr, kind) }
    }

    /// Goes on with the access. Errors: as [`Kernel::read`].
    pub fn poll(&mut self, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        self.state.step(&self.kernel, waker)
    }

    /// Takes the bytes a load read (empty for a store or a fetch).
    pub fn take_data(&mut self) -> Vec<u8> {
        self.state.take_data()
    }
}

impl Drop for AccessOp {
    fn drop(&mut self) {
        self.kernel.cancel_all(&mut self.state.tickets);
    }
}

/// The state of an access (see [`AccessOp`]).
#[derive(Debug)]
pub(crate) struct AccessState {
    task: TaskId,
    addr: u64,
    /// Bytes accessed so far.
    done: usize,
    kind: AccessKind,
    tickets: Vec<WaitTicket>,
}

impl AccessState {
    fn new(task: TaskId, addr: VmAddr, kind: AccessKind) -> AccessState {
        AccessState { task, addr: addr.0, done: 0, kind, tickets: Vec::new() }
    }

    fn step(&mut self, k: &Kernel, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        k.cancel_all(&mut self.tickets);
        let len = match &self.kind {
            AccessKind::Load(b) | AccessKind::Store(b) => b.len(),
            AccessKind::Execute => 0,
        };
        if len == 0 && !matches!(self.kind, AccessKind::Execute) {
            // An empty access touches no page, wherever it points.
            return Ok(Poll::Ready(()));
        }
        loop {
            let at = VmAddr(self.addr + self.done as u64);
            let n = super::access::page_chunk(at.0, len - self.done);
            let access = match &mut self.kind {
                AccessKind::Load(b) => Access::Load(&mut b[self.done..self.done + n]),
                AccessKind::Store(d) => Access::Store(&d[self.done..self.done + n]),
                AccessKind::Execute => Access::Execute,
            };
            if let Poll::Pending(t) = k.access_poll(self.task, at, access, waker)? {
                self.tickets.push(t);
                return Ok(Poll::Pending(t));
            }
            self.done += n;
            if self.done == len {
                return Ok(Poll::Ready(()));
            }
        }
    }

    fn take_data(&mut self) -> Vec<u8> {
        match &mut self.kind {
            AccessKind::Load(b) => std::mem::take(b),
            _ => Vec::new(),
        }
    }
}

/// Where a [`WriteOp`] is.
#[derive(Debug)]
enum WritePhase {
    /// `vm_copy`: reading the source.
    Read(AccessState),
    /// Faulting every page of the range in for writing, from `page`, on
    /// attempt `attempt`; then storing it all under one hold of the lock.
    Whole { data: Vec<u8>, page: u64, attempt: u32 },
    /// The range could not be resident all at once: storing page by page.
    ByPage(AccessState),
}

/// `vm_write` or `vm_copy`: stores all or nothing (see
/// [`Kernel::vm_write`]).
#[derive(Debug)]
pub struct WriteOp {
    kernel: Arc<Kernel>,
    state: WriteState,
}

impl WriteOp {
    /// Goes on with the call. Errors: as [`Kernel::vm_write`].
    pub fn poll(&mut self, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        self.state.step(&self.kernel, waker)
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        self.state.cancel(&self.kernel);
    }
}

/// The state of a `vm_write` or `vm_copy` (see [`WriteOp`]).
#[derive(Debug)]
pub(crate) struct WriteState {
    task: TaskId,
    address: VmAddr,
    phase: WritePhase,
    tickets: Vec<WaitTicket>,
}

impl WriteState {
    /// Stores `data` at `address` (the range was checked).
    pub(crate) fn store(task: TaskId, address: VmAddr, data: Vec<u8>) -> WriteState {
        let phase = WritePhase::Whole { data, page: address.trunc_page().0, attempt: 0 };
        WriteState { task, address, phase, tickets: Vec::new() }
    }

    /// Copies `size` bytes from `source` to `dest` (both ranges were
    /// checked; `size` fits in memory).
    pub(crate) fn copy(task: TaskId, source: VmAddr, len: usize, dest: VmAddr) -> WriteState {
        let read = AccessState::new(task, source, AccessKind::Load(vec![0; len]));
        WriteState { task, address: dest, phase: WritePhase::Read(read), tickets: Vec::new() }
    }

    /// Goes on with the call.
    ///
    /// `Whole`: every page is faulted in for writing, then the stores are
    /// made holding the kernel lock, so no pageout or flush can take a
    /// page between the check and the store (translations change only
    /// under that lock). If a page was taken after its fault, start over.
    /// A fault that fails (a pager error) fails the call before any byte
    /// is stored. A range larger than the resident limit can never be
    /// resident all at once: after `WRITE_ATTEMPTS` attempts the stores go
    /// page by page (`ByPage`), each faulting its page in again if need be
    /// (so a pager that fails a page it served moments before could then
    /// leave the range partly written).
    pub(crate) fn step(&mut self, k: &Kernel, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        k.cancel_all(&mut self.tickets);
        loop {
            match &mut self.phase {
                WritePhase::Read(read) => {
                    if let Poll::Pending(t) = read.step(k, waker)? {
                        return Ok(Poll::Pending(t));
                    }
                    let data = read.take_data();
                    self.phase = WritePhase::Whole { data, page: self.address.trunc_page().0, attempt: 0 };
                }
                WritePhase::ByPage(store) => return store.step(k, waker),
                WritePhase::Whole { data, page, attempt } => {
                    if data.is_empty() {
                        // Not even the page `address` is in is touched.
                        return Ok(Poll::Ready(()));
                    }
                    let end = self.address.0 + data.len() as u64;
                    while *page < end {
                        if let Poll::Pending(t) = k.vm_fault_poll(self.task, VmAddr(*page), VmProt::WRITE, waker)? {
                            self.tickets.push(t);
                            return Ok(Poll::Pending(t));
                        }
                        *page += PAGE_SIZE;
                    }
                    if let Some(r) = k.store_if_resident(self.task, self.address, data) {
                        return r.map(Poll::Ready);
                    }
                    *attempt += 1;
                    *page = self.address.trunc_page().0;
                    if *attempt == WRITE_ATTEMPTS {
                        let store = AccessState::new(self.task, self.address, AccessKind::Store(std::mem::take(data)));
                        self.phase = WritePhase::ByPage(store);
                    }
                }
            }
        }
    }

    /// Cancels the registrations of a call given up.
    pub(crate) fn cancel(&mut self, k: &Kernel) {
        k.cancel_all(&mut self.tickets);
        if let WritePhase::Read(a) | WritePhase::ByPage(a) = &mut self.phase {
            k.cancel_all(&mut a.tickets);
        }
    }
}

/// The eager copies a call waits for (`MEMORY_OBJECT_COPY_NONE`, see
/// `crate::vm::copy`), with the registrations of its last wait.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    jobs: Vec<EagerCopy>,
    tickets: Vec<WaitTicket>,
}

impl Copies {
    /// One step of a call that makes eager copies:
    ///
    /// 1. `plan` lists the copies `call` will ask `KState::copy_of` for,
    ///    checking only what `call` checks too (if it fails, `call` runs
    ///    and fails with its own error).
    /// 2. Each eager copy among them is stepped; one waiting for its pager
    ///    makes the call wait, keeping what was copied (the next step
    ///    starts again from 1); one that fails fails the call, which has
    ///    changed nothing.
    /// 3. With every copy complete, in the same hold of the lock, the
    ///    copies go to `KState::eager` and `call` runs; what it did not
    ///    take is released.
    ///
    /// An object whose pager has not said `ready` has the default
    /// strategy, `DELAY` (as a new object has in Mach): nothing waits for
    /// a pager that never answers unless it asked for eager copies.
    pub(crate) fn step<T>(
        &mut self,
        k: &Kernel,
        task: Option<TaskId>,
        waker: &Arc<dyn Waker>,
        plan: impl Fn(&KState) -> Result<Vec<CopySource>>,
        call: impl FnOnce(&mut KState) -> Result<T>,
    ) -> Result<Poll<T>> {
        let mut st = k.lock();
        for t in self.tickets.drain(..) {
            st.waits.cancel(t);
        }
        let result = 'made: {
            let Ok(wanted) = plan(&st) else {
                break 'made call(&mut st);
            };
            match st.step_copies(&wanted, &mut self.jobs, task.map(|t| Owner(t.id))) {
                CopyStep::Wait => {
                    // Woken by the pages being copied, or the task's map:
                    // each key once (many copies may read one object).
                    let mut seen = FxHashSet::default();
                    let objects = self.jobs.iter().map(|j| WaitKey::Object(j.source));
                    let keys: Vec<WaitKey> =
                        objects.chain(task.map(|t| WaitKey::Task(t.id))).filter(|&k| seen.insert(k)).collect();
                    self.tickets = keys.chunks(MAX_KEYS).map(|c| st.waits.register(c, waker.clone())).collect();
                    let first = self.tickets[0];
                    k.unlock(st);
                    return Ok(Poll::Pending(first));
                }
                CopyStep::Error(e) => break 'made Err(e),
                CopyStep::Done => {}
            }
            let wanted: FxHashSet<CopySource> = wanted.into_iter().collect();
            for job in self.jobs.drain(..) {
                let key = (job.source, job.offset, job.len);
                let dest = st.vm.eager_copy_finish(job);
                if wanted.contains(&key) {
                    st.eager.insert(key, dest);
                } else {
                    st.vm.object_deallocate(dest);
                }
            }
            let r = call(&mut st);
            for (_, dest) in std::mem::take(&mut st.eager) {
                st.vm.object_deallocate(dest);
            }
            r
        };
        release_jobs(&mut st, &mut self.jobs);
        k.unlock(st);
        result.map(Poll::Ready)
    }

    /// Cancels the registrations and releases the half-made copies of a
    /// call given up.
    pub(crate) fn release(&mut self, k: &Kernel) {
        if self.jobs.is_empty() && self.tickets.is_empty() {
            return;
        }
        k.with(|st| {
            for t in self.tickets.drain(..) {
                st.waits.cancel(t);
            }
            release_jobs(st, &mut self.jobs);
        });
    }
}

fn release_jobs(st: &mut KState, jobs: &mut Vec<EagerCopy>) {
    for job in jobs.drain(..) {
        let dest = st.vm.eager_copy_finish(job);
        st.vm.object_deallocate(dest);
    }
}

/// `vm_map`, waiting for the pages of eager copies.
#[derive(Debug)]
pub struct MapOp {
    kernel: Arc<Kernel>,
    task: TaskId,
    r: MapRequest,
    copies: Copies,
}

impl MapOp {
    /// Goes on with the call. Errors: as [`Kernel::vm_map`].
    pub fn poll(&mut self, waker: &Arc<dyn Waker>) -> Result<Poll<VmAddr>> {
        self.kernel.vm_map_step(self.task, &self.r, &mut self.copies, waker)
    }
}

impl Drop for MapOp {
    fn drop(&mut self) {
        self.copies.release(&self.kernel);
    }
}

/// `task_create`, waiting for the pages of eager copies.
#[derive(Debug)]
pub struct TaskCreateOp {
    kernel: Arc<Kernel>,
    parent: Option<TaskId>,
    copies: Copies,
}

impl TaskCreateOp {
    /// Goes on with the call. Errors: as [`Kernel::task_create`].
    pub fn poll(&mut self, waker: &Arc<dyn Waker>) -> Result<Poll<TaskId>> {
        self.kernel.task_create_step(self.parent, &mut self.copies, waker)
    }
}

impl Drop for TaskCreateOp {
    fn drop(&mut self) {
        self.copies.release(&self.kernel);
    }
}

/// A send that waits for room in a full queue until its deadline.
#[derive(Debug)]
pub struct SendOp {
    kernel: Arc<Kernel>,
    task: TaskId,
    msg: Option<UserMessage>,
    deadline: Option<Instant>,
    tickets: Vec<WaitTicket>,
}

impl SendOp {
    /// When the caller must poll again if nothing wakes it first.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Tries the send again. Errors: as [`Kernel::msg_send_timeout`].
    pub fn poll(&mut self, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        let expired = self.deadline.is_some_and(|d| Instant::now() >= d);
        let by = (!expired).then_some(WaitBy::Caller(waker));
        let step = self.kernel.send_step(self.task, &mut self.msg, by, self.tickets.pop())?;
        Ok(pending_into(step, &mut self.tickets))
    }
}

impl Drop for SendOp {
    fn drop(&mut self) {
        self.kernel.cancel_all(&mut self.tickets);
        if let Some(m) = &self.msg {
            // It may have been woken for room it will not use.
            self.kernel.send_abandoned(self.task, m.dest);
        }
    }
}

/// A receive that waits for a message until its deadline.
#[derive(Debug)]
pub struct ReceiveOp {
    kernel: Arc<Kernel>,
    task: TaskId,
    name: PortName,
    deadline: Option<Instant>,
    tickets: Vec<WaitTicket>,
}

impl ReceiveOp {
    /// When the caller must poll again if nothing wakes it first.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Tries the receive again. Errors: as [`Kernel::msg_receive`].
    pub fn poll(&mut self, waker: &Arc<dyn Waker>) -> Result<Poll<ReceivedMessage>> {
        let expired = self.deadline.is_some_and(|d| Instant::now() >= d);
        let by = (!expired).then_some(WaitBy::Caller(waker));
        let step = self.kernel.receive_step(self.task, self.name, by, self.tickets.pop())?;
        Ok(pending_into(step, &mut self.tickets))
    }
}

/// The public form of a step, keeping its registration to cancel.
fn pending_into<T>(step: Step<T>, tickets: &mut Vec<WaitTicket>) -> Poll<T> {
    match step {
        Step::Ready(v) => Poll::Ready(v),
        Step::Pending(w) => {
            tickets.push(w.ticket);
            Poll::Pending(w.ticket)
        }
    }
}

impl Drop for ReceiveOp {
    fn drop(&mut self) {
        self.kernel.cancel_all(&mut self.tickets);
    }
}
