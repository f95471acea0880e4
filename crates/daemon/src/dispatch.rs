//! One call of a connection's task, from the wire to the kernel and back.
//!
//! Every call acts on the connection's own task: the wire names no task,
//! so a connection can reach only itself and what its rights reach. The
//! kernel checks the arguments (and answers with the Mach error a local
//! caller would get); this file only converts.

use crate::Shared;
use machvm_core::ipc::{NotifyKind, UserMessage};
use machvm_core::{KernError, MapRequest, ProxyVersion, Result, TaskId};
use machvm_protocol::ipc::Disposition;
use machvm_protocol::wire::{
    self, Call, InspectWhat, MessageWire, NameInfoWire, ProxyInfoWire, RegionWire, Reply, TaskRow, WindowWire,
};
use std::time::Duration;

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

/// Makes `call` for `caller`.
pub fn dispatch(sh: &Shared, caller: Caller, call: Call) -> Result<Reply> {
    let k = &sh.kernel;
    let t = caller.task;
    Ok(match call {
        Call::VmAllocate { address, size, anywhere } => Reply::Addr(k.vm_allocate(t, address, size, anywhere)?),
        Call::VmMap(a) => Reply::Addr(k.vm_map(
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
        )?),
        Call::VmDeallocate { address, size } => unit(k.vm_deallocate(t, address, size))?,
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
        Call::VmRead { address, size } => Reply::Data(k.vm_read(t, address, size)?),
        Call::VmWrite { address, data } => unit(k.vm_write(t, address, &data))?,
        Call::VmCopy { source, size, dest } => unit(k.vm_copy(t, source, size, dest))?,
        Call::Load { address, len } => {
            let mut buf = vec![0u8; len as usize];
            k.read(t, address, &mut buf)?;
            Reply::Data(buf)
        }
        Call::Store { address, data } => unit(k.write(t, address, &data))?,
        Call::Execute { address } => unit(k.execute(t, address))?,
        Call::TaskCreate { inherit_memory } => {
            let child = k.task_create(inherit_memory.then_some(t))?;
            Reply::ChildToken(sh.child_made(caller.conn, child))
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
        Call::MsgSend(a) => {
            let msg = UserMessage {
                dest: a.dest,
                dest_disposition: a.dest_disposition,
                reply: a.reply,
                id: a.id,
                data: a.data,
                rights: a.rights,
            };
            unit(k.msg_send_timeout(t, msg, a.timeout_ms.map(Duration::from_millis)))?
        }
        Call::MsgReceive { name, timeout_ms } => {
            let m = k.msg_receive(t, name, timeout_ms.map(Duration::from_millis))?;
            Reply::Message(MessageWire {
                local: m.local,
                id: m.id,
                data: m.data,
                reply: m.reply,
                rights: m.rights,
                from_kernel: m.from_kernel,
            })
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
                version: match i.version {
                    ProxyVersion::Mapping => wire::ProxyVersion::Mapping,
                    ProxyVersion::Paging => wire::ProxyVersion::Paging,
                },
                protection: i.protection,
                windows: i
                    .windows
                    .iter()
                    .map(|w| WindowWire {
                        offset: w.offset,
                        len: w.len,
                        start: w.start,
                        prot: w.prot,
                        target_is_proxy: w.target_is_proxy,
                    })
                    .collect(),
                revoked: i.revoked,
            })
        }
        Call::SetDefaultMemoryManager { host_priv, manager } => {
            unit(k.set_default_memory_manager(t, host_priv, manager))?
        }
        Call::NameRegister { name, object } => unit(sh.name_register(caller, &name, object))?,
        Call::NameLookup { name } => Reply::Name(sh.name_lookup(caller, &name)?),
        Call::Inspect(what) => inspect(sh, what)?,
    })
}

fn unit(r: Result<()>) -> Result<Reply> {
    r.map(|()| Reply::Unit)
}

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
            Ok(Reply::Tasks(rows))
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
                ("objects".into(), s.objects as u64),
                ("proxies".into(), s.proxies as u64),
                ("connections".into(), sh.connections().len() as u64),
            ];
            rows.extend(s.to_pagers.iter().map(|(k, v)| (format!("sent {k}"), *v)));
            rows.extend(s.from_pagers.iter().map(|(k, v)| (format!("received {k}"), *v)));
            Ok(Reply::Stats(rows))
        }
        // Not served yet.
        InspectWhat::VmMap { .. } | InspectWhat::Objects | InspectWhat::Proxies => Err(KernError::NotSupported),
    }
}

/// A right carried to the name table keeps the disposition Mach gives a
/// copied send right.
pub const NAME_RIGHT: Disposition = Disposition::CopySend;
