//! One call of a connection's task, from the wire to the kernel and back.
//!
//! Every call acts on the connection's own task: the wire names no task
//! (but introspection, which only reads), so a connection can reach only
//! itself and what its rights reach. The
//! kernel checks the arguments (and answers with the Mach error a local
//! caller would get); this file only converts.

use crate::Shared;
use machvm_core::ipc::{NotifyKind, ReceivedMessage, UserMessage};
use machvm_core::kernel::resume::{AccessOp, MapOp, ReceiveOp, SendOp, TaskCreateOp, WriteOp};
use machvm_core::wait::{Poll, ThreadWaker, Waker};
use machvm_core::{
    EntryInfo, KernError, MapRequest, ObjectInfo, ObjectKind, ProxyRecord, ProxyVersion, Result, TaskId, VmAddr,
};
use machvm_protocol::frame::{encode_frame, FrameError};
use machvm_protocol::wire::{
    self, Call, ChargeRow, EntryRow, ExceptionRow, InspectWhat, MessageWire, NameInfoWire, ObjectRow, PagerState,
    ProxyInfoWire, ProxyRow, RegionWire, Reply, Response, TaskRow, WindowWire,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The task a connection is, and its number among the daemon's
/// connections.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub conn: u64,
    pub task: TaskId,
}

fn version(v: wire::ProxyVersion) -> ProxyVersion {
    match v {
        wire::ProxyVersion::Mapping => ProxyVersion::Mapping,
        wire::ProxyVersion::Paging => ProxyVersion::Paging,
    }
}

/// What starting a call came to: its answer, or an op waiting for an
/// event (a pager's answer, a message, room in a queue, a deadline).
#[derive(Debug)]
pub enum Started {
    Done(Result<Reply>),
    Waiting(Pending),
}

/// A call that waits: the kernel's op, and how its result becomes a reply.
#[derive(Debug)]
pub enum Pending {
    /// `load` and `vm_read`: the bytes read.
    Data(AccessOp),
    /// `store` and `execute`.
    Access(AccessOp),
    /// `vm_write` and `vm_copy`.
    Write(WriteOp),
    Map(MapOp),
    /// `task_create`: the child's token.
    Child(TaskCreateOp),
    Send(SendOp),
    Receive(ReceiveOp),
    /// `mach_msg(SEND|RCV)`: the send (until it is done), then the
    /// receive.
    SendReceive(Option<SendOp>, ReceiveOp),
}

impl Pending {
    /// When to poll again if nothing wakes it first.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Pending::Send(op) | Pending::SendReceive(Some(op), _) => op.deadline(),
            Pending::Receive(op) | Pending::SendReceive(None, op) => op.deadline(),
            _ => None,
        }
    }

    /// Goes on with the call; its reply once it is done.
    pub fn poll(&mut self, sh: &Shared, caller: Caller, waker: &Arc<dyn Waker>) -> Poll<Result<Reply>> {
        fn then<T>(r: Result<Poll<T>>, f: impl FnOnce(T) -> Result<Reply>) -> Poll<Result<Reply>> {
            match r {
                Ok(Poll::Ready(v)) => Poll::Ready(f(v)),
                Ok(Poll::Pending(t)) => Poll::Pending(t),
                Err(e) => Poll::Ready(Err(e)),
            }
        }
        match self {
            Pending::Data(op) => then(op.poll(waker), |()| Ok(Reply::Data(op.take_data()))),
            Pending::Access(op) => then(op.poll(waker), |()| Ok(Reply::Unit)),
            Pending::Write(op) => then(op.poll(waker), |()| Ok(Reply::Unit)),
            Pending::Map(op) => then(op.poll(waker), |a| Ok(Reply::Addr(a))),
            Pending::Child(op) => {
                then(op.poll(waker), |child| Ok(Reply::ChildToken(sh.child_made(caller.conn, child))))
            }
            Pending::Send(op) => then(op.poll(waker), |()| Ok(Reply::Unit)),
            Pending::Receive(op) => then(op.poll(waker), message),
            Pending::SendReceive(send, receive) => {
                if let Some(op) = send {
                    match op.poll(waker) {
                        Ok(Poll::Ready(())) => *send = None,
                        Ok(Poll::Pending(t)) => return Poll::Pending(t),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                then(receive.poll(waker), message)
            }
        }
    }
}

fn message(m: ReceivedMessage) -> Result<Reply> {
    Ok(Reply::Message(MessageWire {
        local: m.local,
        id: m.id,
        data: m.data,
        reply: m.reply,
        rights: m.rights,
        from_kernel: m.from_kernel,
    }))
}

/// A deadline `ms` milliseconds from now (`None`: none, also past the end
/// of the clock).
fn deadline(ms: Option<u64>) -> Option<Instant> {
    ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

/// The op of a call that may wait (`Err(call)` back for one the kernel
/// answers at once).
fn op(sh: &Shared, caller: Caller, call: Call) -> std::result::Result<Result<Pending>, Call> {
    let k = &sh.kernel;
    let t = caller.task;
    Ok(match call {
        Call::VmMap(a) => Ok(Pending::Map(k.vm_map_op(
            t,
            MapRequest {
                address: a.address,
                size: a.size,
                mask: a.mask,
                anywhere: a.anywhere,
                object: a.object,
                offset: a.offset,
                copy: a.copy,
                cur: a.cur,
                max: a.max,
                inherit: a.inherit,
            },
        ))),
        Call::VmRead { address, size } => k.vm_read_op(t, address, size).map(Pending::Data),
        Call::VmWrite { address, data } => k.vm_write_op(t, address, data).map(Pending::Write),
        Call::VmCopy { source, size, dest } => k.vm_copy_op(t, source, size, dest).map(Pending::Write),
        Call::Load { address, len } => k.load_op(t, address, len as usize).map(Pending::Data),
        Call::Store { address, data } => k.store_op(t, address, data).map(Pending::Access),
        Call::Execute { address } => Ok(Pending::Access(k.execute_op(t, address))),
        Call::TaskCreate { inherit_memory } => {
            // Children wait, unclaimed, until their parent goes: a
            // connection may keep only so many.
            if sh.unclaimed_children(caller.conn) >= crate::MAX_UNCLAIMED_CHILDREN {
                Err(KernError::ResourceShortage)
            } else {
                Ok(Pending::Child(k.task_create_op(inherit_memory.then_some(t))))
            }
        }
        Call::MsgSend(a) => {
            let timeout = a.timeout_ms;
            Ok(Pending::Send(k.msg_send_op(t, user_message(a), deadline(timeout))))
        }
        Call::MsgSendReceive { send, name, timeout_ms } => {
            let timeout = send.timeout_ms;
            let send = k.msg_send_op(t, user_message(send), deadline(timeout));
            Ok(Pending::SendReceive(Some(send), k.msg_receive_op(t, name, deadline(timeout_ms))))
        }
        Call::MsgReceive { name, timeout_ms } => Ok(Pending::Receive(k.msg_receive_op(t, name, deadline(timeout_ms)))),
        other => return Err(other),
    })
}

fn user_message(a: wire::SendArgs) -> UserMessage {
    UserMessage {
        dest: a.dest,
        dest_disposition: a.dest_disposition,
        reply: a.reply,
        id: a.id,
        data: a.data,
        rights: a.rights,
    }
}

/// Starts `call` for `caller`: a call that may wait is polled once with
/// `waker`, and returned waiting if it must.
pub fn start(sh: &Shared, caller: Caller, call: Call, waker: &Arc<dyn Waker>) -> Started {
    match op(sh, caller, call) {
        Err(call) => Started::Done(answer(sh, caller, call)),
        Ok(Err(e)) => Started::Done(Err(e)),
        Ok(Ok(mut pending)) => match pending.poll(sh, caller, waker) {
            Poll::Ready(r) => Started::Done(r),
            Poll::Pending(_) => Started::Waiting(pending),
        },
    }
}

/// Makes `call` for `caller` to its end on this thread (a call that waits
/// sleeps here, polling): the daemon's code for one call without its
/// loops, for measurements.
pub fn dispatch(sh: &Shared, caller: Caller, call: Call) -> Result<Reply> {
    let w = ThreadWaker::current();
    let waker: Arc<dyn Waker> = w.clone();
    let mut seen = w.generation();
    let mut pending = match start(sh, caller, call, &waker) {
        Started::Done(r) => return r,
        Started::Waiting(p) => p,
    };
    loop {
        let deadline = pending.deadline();
        while w.generation() == seen && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(Duration::from_micros(50));
        }
        seen = w.generation();
        if let Poll::Ready(r) = pending.poll(sh, caller, &waker) {
            return r;
        }
    }
}

/// A call the kernel answers at once (every call but those [`op`] takes).
fn answer(sh: &Shared, caller: Caller, call: Call) -> Result<Reply> {
    let k = &sh.kernel;
    let t = caller.task;
    Ok(match call {
        Call::MemoryAttach { uffd, channel, arena_start, arena_len } => {
            let real = sh.real.as_ref().ok_or(KernError::NotSupported)?;
            let pid = sh.pid_of(caller.conn).ok_or(KernError::NotSupported)?;
            unit(real.attach(k, t, pid, (uffd, channel), (arena_start, arena_len)))?
        }
        Call::StagingAttach { memfd, len } => {
            let real = sh.real.as_ref().ok_or(KernError::NotSupported)?;
            let pid = sh.pid_of(caller.conn).ok_or(KernError::NotSupported)?;
            unit(real.staging_attach(t, pid, memfd, len))?
        }
        Call::VmAllocate { address, size, anywhere } => Reply::Addr(k.vm_allocate(t, address, size, anywhere)?),
        Call::VmDeallocate { address, size } => {
            k.vm_deallocate(t, address, size)?;
            // A process's windows there show nothing any more.
            if let Some(real) = &sh.real {
                let page = machvm_core::PAGE_SIZE;
                let end = address.0.saturating_add(size).div_ceil(page).saturating_mul(page);
                let start = address.0 & !(page - 1);
                real.machine.forget_windows(t.pmap(), start, end);
                // A hole again: its accesses are the VM's to refuse.
                if let Ok(range) = machvm_host::PageRange::new(start, end - start) {
                    let _ = real.machine.register_hole(t.pmap(), range);
                }
            }
            Reply::Unit
        }
        Call::VmProtect { address, size, set_max, prot } => unit(k.vm_protect(t, address, size, set_max, prot))?,
        Call::VmInherit { address, size, inherit } => unit(k.vm_inherit(t, address, size, inherit))?,
        Call::VmRegion { address } => {
            let r = k.vm_region(t, address)?;
            Reply::Region(RegionWire {
                start: r.start,
                size: r.size,
                cur: r.cur,
                max: r.max,
                inherit: r.inherit,
                offset: r.offset,
                shared: r.shared,
            })
        }
        Call::PortAllocate => Reply::Name(k.port_allocate(t)?),
        Call::PortSetAllocate => Reply::Name(k.port_set_allocate(t)?),
        Call::PortMoveMember { member, set } => unit(k.port_move_member(t, member, set))?,
        Call::PortMakeSend { name } => unit(k.port_make_send(t, name))?,
        Call::PortDeallocate { name } => unit(k.port_deallocate(t, name))?,
        Call::PortDestroy { name } => unit(k.port_destroy(t, name))?,
        Call::PortModRefs { name, right, delta } => unit(k.port_mod_refs(t, name, right, delta))?,
        Call::PortLookup { name } => {
            let i = k.port_lookup(t, name)?;
            Reply::NameInfo(NameInfoWire {
                receive: i.receive,
                send_urefs: i.send_urefs,
                send_once: i.send_once,
                dead_urefs: i.dead_urefs,
                port_set: i.port_set,
            })
        }
        Call::PortRequestNotification { name, kind, notify } => {
            let kind = match kind {
                wire::NotifyKind::NoSenders => NotifyKind::NoSenders,
                wire::NotifyKind::DeadName => NotifyKind::DeadName,
            };
            unit(k.port_request_notification(t, name, kind, notify))?
        }
        Call::ProxyCreate { max, objects, offsets, starts, lens, version: v } => {
            let r = match v {
                Some(v) => {
                    k.memory_object_create_proxy_version(t, max, &objects, &offsets, &starts, &lens, version(v))?
                }
                None => k.memory_object_create_proxy(t, max, &objects, &offsets, &starts, &lens)?,
            };
            Reply::Names { proxy: r.proxy, revoke: r.revoke }
        }
        Call::RegionProxy { address, max, len } => {
            let r = k.vm_region_create_proxy(t, address, max, len)?;
            Reply::Names { proxy: r.proxy, revoke: r.revoke }
        }
        Call::ProxyRevoke { revoke } => unit(k.memory_object_proxy_revoke(t, revoke))?,
        Call::ProxyInfo { proxy } => {
            let i = k.memory_object_proxy_info(t, proxy)?;
            Reply::ProxyInfo(ProxyInfoWire {
                version: wire_version(i.version),
                protection: i.protection,
                windows: wire_windows(&i),
                revoked: i.revoked,
            })
        }
        Call::SetDefaultMemoryManager { host_priv, manager } => {
            unit(k.set_default_memory_manager(t, host_priv, manager))?
        }
        Call::NameRegister { name, object } => unit(sh.name_register(caller, &name, object))?,
        Call::NameLookup { name } => Reply::Name(sh.name_lookup(caller, &name)?),
        Call::Inspect(what) => inspect(sh, what)?,
        // The calls that may wait are ops (`op` takes every one of them).
        Call::VmMap(_)
        | Call::VmRead { .. }
        | Call::VmWrite { .. }
        | Call::VmCopy { .. }
        | Call::Load { .. }
        | Call::Store { .. }
        | Call::Execute { .. }
        | Call::TaskCreate { .. }
        | Call::MsgSend(_)
        | Call::MsgReceive { .. }
        | Call::MsgSendReceive { .. } => return Err(KernError::Failure),
    })
}

fn wire_version(v: ProxyVersion) -> wire::ProxyVersion {
    match v {
        ProxyVersion::Mapping => wire::ProxyVersion::Mapping,
        ProxyVersion::Paging => wire::ProxyVersion::Paging,
    }
}

fn wire_windows(i: &machvm_core::ProxyInfo) -> Vec<WindowWire> {
    i.windows
        .iter()
        .map(|w| WindowWire {
            offset: w.offset,
            len: w.len,
            start: w.start,
            prot: w.prot,
            target_is_proxy: w.target_is_proxy,
        })
        .collect()
}

fn unit(r: Result<()>) -> Result<Reply> {
    r.map(|()| Reply::Unit)
}

/// The daemon's introspection: every connection may look at every task,
/// object and proxy (it changes nothing). A task in `VmMap` is the number
/// of a live connection's task (`KERN_INVALID_TASK` otherwise); a listing
/// too large for one frame is `KERN_RESOURCE_SHORTAGE`.
fn inspect(sh: &Shared, what: InspectWhat) -> Result<Reply> {
    match what {
        InspectWhat::Tasks => {
            let rows = sh
                .connections()
                .into_iter()
                .map(|c| {
                    let info = sh.kernel.task_info(c.task);
                    TaskRow {
                        task: c.task.number(),
                        pid: Some(c.pid),
                        uid: Some(c.uid),
                        name: c.name,
                        entries: info.map_or(0, |i| i.entries as u64),
                        resident: info.map_or(0, |i| i.resident as u64),
                    }
                })
                .collect();
            fits(Reply::Tasks(rows))
        }
        InspectWhat::Stats => {
            let s = sh.kernel.stats();
            let mut rows: Vec<(String, u64)> = vec![
                ("faults".into(), s.vm.faults),
                ("zero_fills".into(), s.vm.zero_fills),
                ("pageouts".into(), s.vm.pageouts),
                ("pages_returned".into(), s.vm.pages_returned),
                ("resident".into(), s.resident as u64),
                ("resident_limit".into(), s.resident_limit as u64),
                ("charged".into(), s.charged as u64),
                ("task_reclaims".into(), s.vm.task_reclaims),
                ("pmap_failures".into(), s.vm.pmap_failures),
                ("objects".into(), s.objects as u64),
                ("proxies".into(), s.proxies as u64),
                ("connections".into(), sh.connections().len() as u64),
                ("waiters".into(), s.waiters as u64),
            ];
            if let Some(real) = &sh.real {
                let h = real.machine.host_stats();
                rows.extend([
                    ("host_resolved".into(), h.resolved),
                    ("host_continued".into(), h.continued),
                    ("host_zapped".into(), h.zapped),
                    ("host_failures".into(), h.host_failures),
                ]);
            }
            rows.extend(s.to_pagers.iter().map(|(k, v)| (format!("sent {k}"), *v)));
            rows.extend(s.from_pagers.iter().map(|(k, v)| (format!("received {k}"), *v)));
            Ok(Reply::Stats(rows))
        }
        InspectWhat::VmMap { task } => {
            let task = sh.connections().into_iter().find(|c| c.task.number() == task).ok_or(KernError::InvalidTask)?;
            let rows = sh.kernel.vm_map_info(task.task)?.into_iter().map(entry_row).collect();
            fits(Reply::VmMap(rows))
        }
        InspectWhat::Objects => {
            let names: HashMap<u32, String> = sh.connections().into_iter().map(|c| (c.task.number(), c.name)).collect();
            let rows = sh.kernel.objects_info().into_iter().map(|o| object_row(sh, &names, o)).collect();
            fits(Reply::Objects(rows))
        }
        InspectWhat::Proxies => fits(Reply::Proxies(sh.kernel.proxies_info().into_iter().map(proxy_row).collect())),
        InspectWhat::Charges => {
            let rows = sh
                .connections()
                .into_iter()
                .filter_map(|c| {
                    // A task that ended since the listing is left out.
                    let i = sh.kernel.task_info(c.task).ok()?;
                    let limit = (i.resident_limit != usize::MAX).then_some(i.resident_limit as u64);
                    Some(ChargeRow { task: c.task.number(), charged: i.charged as u64, limit })
                })
                .collect();
            fits(Reply::Charges(rows))
        }
        InspectWhat::Exceptions => {
            let mut rows: Vec<ExceptionRow> = sh
                .real
                .as_ref()
                .map(|r| r.exceptions())
                .unwrap_or_default()
                .into_iter()
                .map(|(task, e)| ExceptionRow {
                    task,
                    pid: e.pid,
                    count: e.count,
                    addr: VmAddr(e.last.addr),
                    access: e.last.access,
                    error: e.last.error,
                })
                .collect();
            rows.sort_by_key(|r| r.task);
            fits(Reply::Exceptions(rows))
        }
    }
}

/// `reply` if its frame fits [`MAX_FRAME`](machvm_protocol::frame::MAX_FRAME)
/// (with the largest `seq`);
/// `KERN_RESOURCE_SHORTAGE` rather than a reply the connection could not
/// carry. Costs one encoding of the reply.
fn fits(reply: Reply) -> Result<Reply> {
    let response = Response::Reply { seq: u64::MAX, result: Ok(reply) };
    let fits = !matches!(encode_frame(&response), Err(FrameError::Oversized { .. }));
    match response {
        Response::Reply { result: Ok(reply), .. } if fits => Ok(reply),
        _ => Err(KernError::ResourceShortage),
    }
}

fn entry_row(e: EntryInfo) -> EntryRow {
    EntryRow {
        start: e.start,
        end: e.end,
        cur: e.cur,
        max: e.max,
        inherit: e.inherit,
        object: e.object,
        offset: e.offset,
        via: e.via,
        shared: e.shared,
        needs_copy: e.needs_copy,
    }
}

/// Who pages an object, for a person: a connection's task and name, the
/// daemon itself, the default pager, or the kernel for a proxy's view.
fn pager_label(sh: &Shared, names: &HashMap<u32, String>, o: &ObjectInfo) -> Option<String> {
    if let Some(p) = o.proxy {
        return Some(format!("kernel (proxy {p})"));
    }
    let pager = o.pager.as_ref()?;
    let task = pager.task?;
    let n = task.number();
    Some(match names.get(&n) {
        Some(name) => format!("task {n} ({name})"),
        None if task == sh.own => format!("task {n} (machvmd)"),
        None if pager.default_pager => format!("task {n} (default pager)"),
        None => format!("task {n}"),
    })
}

fn counts(m: &std::collections::BTreeMap<&'static str, u64>) -> Vec<(String, u64)> {
    m.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

fn object_row(sh: &Shared, names: &HashMap<u32, String>, o: ObjectInfo) -> ObjectRow {
    let pager = pager_label(sh, names, &o);
    let p = o.pager.as_ref();
    ObjectRow {
        object: o.id,
        kind: match o.kind {
            ObjectKind::External => wire::ObjectKind::External,
            ObjectKind::Temporary => wire::ObjectKind::Temporary,
            ObjectKind::View => wire::ObjectKind::View,
        },
        pager,
        pager_task: p.and_then(|p| p.task).map(|t| t.number()),
        pager_state: p.map(|p| PagerState {
            default_pager: p.default_pager,
            ready: p.ready,
            dead: p.dead,
            may_cache: p.may_cache,
            copy_strategy: p.copy_strategy,
            cluster_pages: p.cluster_pages,
        }),
        resident: o.resident as u64,
        size: o.size,
        refs: o.refs,
        shadow: o.shadow,
        copy: o.copy,
        proxy: o.proxy,
        sent: p.map_or_else(Vec::new, |p| counts(&p.messages.to_pager)),
        received: p.map_or_else(Vec::new, |p| counts(&p.messages.from_pager)),
    }
}

fn proxy_row(p: ProxyRecord) -> ProxyRow {
    ProxyRow {
        proxy: p.id,
        version: wire_version(p.info.version),
        windows: wire_windows(&p.info),
        protection: p.info.protection,
        revoked: p.info.revoked,
        targets: p.targets,
        view: p.view,
        port_dead: p.port_dead,
        via: p.via,
    }
}
