//! Introspection: what the kernel holds, for people and tools (`machvm
//! vmmap`, `machvm objects`, `machvm proxies`).
//!
//! - [`Kernel::vm_map_info`]: one task's map entries.
//! - [`Kernel::objects_info`]: every VM object, with its pager.
//! - [`Kernel::proxies_info`]: every proxy, with its windows.
//!
//! Each call takes the kernel lock once and only reads under it (it is
//! given the state as `&KState`, so it cannot change anything, and it
//! settles nothing): what it reports is one consistent moment. Each costs
//! in proportion to what it reports, so that inspecting a busy kernel
//! holds the lock no longer than it must: no call walks pages, and none
//! asks the proxy layer the same question twice.
//!
//! These calls name no caller and check no right: they show every task's
//! memory. Whoever serves them to others (the daemon) decides who may ask.

use super::{KState, Kernel, TaskId};
use crate::ipc::SpaceId;
use crate::memory_object::proxy::{ProxyId, ProxyInfo};
use crate::memory_object::MessageCounts;
use crate::types::{Result, VmAddr, VmInherit, VmOffset, VmProt};
use crate::vm::object::{CopyStrategy, Provider};
use std::collections::HashMap;

/// One map entry, as [`Kernel::vm_map_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub start: VmAddr,
    /// One past the last address.
    pub end: VmAddr,
    pub cur: VmProt,
    pub max: VmProt,
    pub inherit: VmInherit,
    /// The VM object mapped (as in [`ObjectInfo::id`]); `None`: zero-fill
    /// memory not touched yet.
    pub object: Option<u64>,
    pub offset: VmOffset,
    /// The paging proxies the memory is reached through (as in
    /// [`ProxyRecord::id`]): revoking any of them cuts the entry.
    pub via: Vec<u64>,
    /// Others may map the same memory (Mach's `is_shared`).
    pub shared: bool,
    /// The object is shared copy-on-write: the first write makes a shadow.
    pub needs_copy: bool,
}

/// What an object is (see [`crate::vm::object`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// Served by a pager over the EMMI.
    External,
    /// Anonymous memory (served by the default pager once paged out).
    Temporary,
    /// A paging proxy's view: no pages of its own.
    View,
}

/// The pager of a bound object (one whose pages a pager provides), as
/// [`Kernel::objects_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagerInfo {
    /// The task whose IPC space holds the receive right of the memory
    /// object port: the pager. `None` if the port is dead, or in transit
    /// (a `memory_object_create` the default pager has not received yet).
    pub task: Option<TaskId>,
    /// The object was handed to the default pager (`memory_object_create`)
    /// rather than mapped from a pager's port.
    pub default_pager: bool,
    /// The pager said `ready`.
    pub ready: bool,
    /// The pager's port died, or the pager destroyed the object: its faults
    /// fail.
    pub dead: bool,
    /// The object and its pages may outlive its last reference.
    pub may_cache: bool,
    pub copy_strategy: CopyStrategy,
    /// Pages asked of the pager at once on a fault.
    pub cluster_pages: u32,
    /// The EMMI messages exchanged about the object since it was bound.
    pub messages: MessageCounts,
}

/// One VM object, as [`Kernel::objects_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's number (as in [`EntryInfo::object`]).
    pub id: u64,
    pub kind: ObjectKind,
    /// Size in bytes (an external object's is the whole offset space).
    pub size: u64,
    /// Pages holding data now.
    pub resident: usize,
    /// References (map entries, shadows, proxies); 0: only the object cache
    /// keeps it.
    pub refs: u32,
    /// The object behind this one (copy-on-write), and the offset into it.
    pub shadow: Option<(u64, u64)>,
    /// The newest copy object made of this one.
    pub copy: Option<u64>,
    /// The paging proxy a view belongs to.
    pub proxy: Option<ProxyId>,
    /// Its pager, if a pager provides its pages (anonymous memory only once
    /// handed to the default pager).
    pub pager: Option<PagerInfo>,
}

/// One proxy, as [`Kernel::proxies_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRecord {
    /// The proxy's number (as in [`EntryInfo::via`]).
    pub id: ProxyId,
    /// What it grants, as `memory_object_proxy_info` tells its holders.
    pub info: ProxyInfo,
    /// The VM object behind each window, in the order of `info.windows`
    /// (an inner paging proxy's view for a window over that proxy).
    pub targets: Vec<u64>,
    /// A paging proxy's view object, while it has one.
    pub view: Option<u64>,
    /// Nobody holds a send right to the proxy any more: it lives on for
    /// the mappings made through it, or for its revoke right.
    pub port_dead: bool,
    /// Paging proxies its memory is reached through although no window
    /// targets their view (see `Proxy::via`).
    pub via: Vec<ProxyId>,
}

impl Kernel {
    /// Runs `f` on the state under the kernel lock, read-only: nothing to
    /// settle, no one to wake.
    fn peek<T>(&self, f: impl FnOnce(&KState) -> T) -> T {
        let st = self.lock();
        f(&st)
    }

    /// The map entries of `task`, in address order. O(entries + their
    /// `via` lists).
    ///
    /// Errors: `KERN_INVALID_TASK`.
    pub fn vm_map_info(&self, task: TaskId) -> Result<Vec<EntryInfo>> {
        self.peek(|st| {
            Ok(st
                .task(task)?
                .map
                .iter()
                .map(|e| EntryInfo {
                    start: VmAddr(e.start),
                    end: VmAddr(e.end),
                    cur: e.cur,
                    max: e.max,
                    inherit: e.inherit,
                    object: e.object.map(|o| o.0),
                    offset: VmOffset(e.offset),
                    via: e.via.to_vec(),
                    shared: e.shared,
                    needs_copy: e.needs_copy,
                })
                .collect())
        })
    }

    /// Every VM object alive (cached ones and paging-proxy views included),
    /// by number. O(objects · log objects + tasks + the message kinds of
    /// each object): residency is counted as pages come and go, and a
    /// pager's task is found through one index of the tasks' spaces, made
    /// once.
    pub fn objects_info(&self) -> Vec<ObjectInfo> {
        self.peek(|st| {
            let mut tasks: Option<HashMap<SpaceId, TaskId>> = None;
            let mut out: Vec<ObjectInfo> = st
                .vm
                .objects
                .iter()
                .map(|(&id, o)| {
                    let kind = match o.provider {
                        Provider::View(_) => ObjectKind::View,
                        _ if o.temporary => ObjectKind::Temporary,
                        _ => ObjectKind::External,
                    };
                    let pager = st.mo.bindings.get(&id).map(|b| {
                        let task = st.ipc.receiver_space(b.port).and_then(|space| {
                            let tasks = tasks.get_or_insert_with(|| {
                                st.tasks.iter().map(|(&n, t)| (t.space, TaskId { id: n, pmap: t.pmap })).collect()
                            });
                            tasks.get(&space).copied()
                        });
                        PagerInfo {
                            task,
                            default_pager: b.default_pager,
                            ready: o.ready,
                            dead: o.pager_dead,
                            may_cache: o.may_cache,
                            copy_strategy: o.copy_strategy,
                            cluster_pages: o.cluster_pages,
                            messages: b.messages.clone(),
                        }
                    });
                    ObjectInfo {
                        id: id.0,
                        kind,
                        size: o.size,
                        resident: o.resident(),
                        refs: o.refs,
                        shadow: o.shadow.map(|(s, off)| (s.0, off)),
                        copy: o.copy.map(|c| c.0),
                        proxy: match o.provider {
                            Provider::View(p) => Some(p),
                            _ => None,
                        },
                        pager,
                    }
                })
                .collect();
            out.sort_unstable_by_key(|o| o.id);
            out
        })
    }

    /// Every proxy whose record is alive, by number (a revoked proxy nobody
    /// can map through any more keeps nothing but its id, and is not
    /// listed). O(proxies · log proxies + windows + `via` lists): whether
    /// each is revoked is decided for all at once (see
    /// `ProxyTable::chains_revoked`).
    pub fn proxies_info(&self) -> Vec<ProxyRecord> {
        self.peek(|st| {
            let table = &st.mo.proxies;
            table
                .chains_revoked()
                .into_iter()
                .map(|(id, revoked)| {
                    let p = &table.proxies[&id];
                    ProxyRecord {
                        id,
                        info: table.info_of(p, revoked),
                        targets: p.windows.iter().map(|w| w.target.0).collect(),
                        view: p.view.map(|v| v.0),
                        port_dead: p.port_dead,
                        via: p.via.clone(),
                    }
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{Disposition, PortName, UserMessage};
    use crate::kernel::{KernelConfig, MapRequest};
    use crate::types::{KernError, PAGE_SIZE};
    use machvm_protocol::emmi::PagerToKernel;

    const P: u64 = PAGE_SIZE;

    /// A kernel, a pager task serving one memory object, and a client task
    /// holding a send right to it.
    struct Fixture {
        k: std::sync::Arc<Kernel>,
        pager: TaskId,
        port: PortName,
        client: TaskId,
        object: PortName,
    }

    fn fixture() -> Fixture {
        let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 64, ..KernelConfig::default() });
        let pager = k.task_create(None).unwrap();
        let port = k.port_allocate(pager).unwrap();
        k.port_make_send(pager, port).unwrap();
        let client = k.task_create(None).unwrap();
        let object = k.port_transfer(pager, port, Disposition::CopySend, client).unwrap();
        Fixture { k, pager, port, client, object }
    }

    impl Fixture {
        /// Takes the `init` the first mapping sent, answers `ready`, and
        /// supplies `pages` pages from offset 0 unasked; returns the
        /// control port's name in the pager.
        fn serve(&self, pages: u64) -> PortName {
            let init = self.k.msg_receive(self.pager, self.port, Some(std::time::Duration::ZERO)).unwrap();
            assert!(init.from_kernel);
            let control = init.rights[0].0;
            let send = |m: PagerToKernel| {
                let (id, data) = m.encode();
                self.k.msg_send(self.pager, UserMessage::new(control, id, data)).unwrap();
            };
            send(PagerToKernel::Ready { may_cache: false, copy_strategy: CopyStrategy::Delay });
            if pages > 0 {
                let data = vec![7u8; (pages * P) as usize];
                send(PagerToKernel::DataSupply { offset: 0, data, lock: VmProt::NONE, precious: false });
            }
            control
        }
    }

    #[test]
    fn vm_map_info_lists_the_entries_as_mapped_and_refuses_an_unknown_task() {
        let f = fixture();
        let a = f.k.vm_allocate(f.client, VmAddr(0), 2 * P, true).unwrap();
        let r = MapRequest::anywhere(3 * P, Some(f.object)).prot(VmProt::READ, VmProt::READ | VmProt::EXECUTE);
        let b = f.k.vm_map(f.client, r.offset(P).inherit(VmInherit::Share)).unwrap();
        f.k.vm_protect(f.client, a, P, false, VmProt::READ).unwrap();
        let e = f.k.vm_map_info(f.client).unwrap();
        assert_eq!(e.len(), 3, "{e:?}");
        let anon = |start: u64, cur| EntryInfo {
            start: VmAddr(start),
            end: VmAddr(start + P),
            cur,
            max: VmProt::ALL,
            inherit: VmInherit::Copy,
            object: None,
            offset: VmOffset(start - a.0),
            via: Vec::new(),
            shared: false,
            needs_copy: false,
        };
        assert_eq!(e[0], anon(a.0, VmProt::READ));
        assert_eq!(e[1], anon(a.0 + P, VmProt::DEFAULT));
        assert_eq!((e[2].start, e[2].end, e[2].offset), (b, VmAddr(b.0 + 3 * P), VmOffset(P)));
        assert_eq!(
            (e[2].cur, e[2].max, e[2].inherit),
            (VmProt::READ, VmProt::READ | VmProt::EXECUTE, VmInherit::Share)
        );
        assert!(e[2].object.is_some() && e[2].shared && !e[2].needs_copy);
        // The object the entry maps is the one the objects list shows.
        assert!(f.k.objects_info().iter().any(|o| Some(o.id) == e[2].object && o.kind == ObjectKind::External));
        f.k.task_terminate(f.client).unwrap();
        assert_eq!(f.k.vm_map_info(f.client), Err(KernError::InvalidTask));
    }

    #[test]
    fn objects_info_shows_the_pager_its_messages_and_the_resident_pages() {
        let f = fixture();
        let a = f.k.vm_map(f.client, MapRequest::anywhere(4 * P, Some(f.object))).unwrap();
        f.serve(2);
        assert_eq!(f.k.read_u64(f.client, a).unwrap(), u64::from_le_bytes([7; 8]));
        // Zero-fill memory, touched: an anonymous object with no pager.
        let z = f.k.vm_allocate(f.client, VmAddr(0), 3 * P, true).unwrap();
        f.k.write_u64(f.client, z, 1).unwrap();
        let objects = f.k.objects_info();
        assert_eq!(objects.len(), 2, "{objects:?}");
        let ext = objects.iter().find(|o| o.kind == ObjectKind::External).unwrap();
        assert_eq!((ext.resident, ext.refs, ext.shadow, ext.proxy), (2, 1, None, None));
        let pager = ext.pager.as_ref().expect("bound");
        assert_eq!(pager.task, Some(f.pager));
        assert!(pager.ready && !pager.dead && !pager.default_pager && !pager.may_cache);
        assert_eq!(pager.copy_strategy, CopyStrategy::Delay);
        let sent: Vec<_> = pager.messages.to_pager.iter().map(|(k, v)| (*k, *v)).collect();
        let received: Vec<_> = pager.messages.from_pager.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(sent, [("init", 1)]);
        assert_eq!(received, [("data_supply", 1), ("ready", 1)]);
        let anon = objects.iter().find(|o| o.kind == ObjectKind::Temporary).unwrap();
        assert_eq!((anon.resident, anon.size, anon.pager.is_none()), (1, 3 * P, true));
        // Every resident page belongs to one object.
        assert_eq!(objects.iter().map(|o| o.resident).sum::<usize>(), f.k.stats().resident);
        // The pager's port dies: the object's pager is dead, and has no task.
        f.k.port_destroy(f.pager, f.port).unwrap();
        let objects = f.k.objects_info();
        let pager = objects.iter().find(|o| o.kind == ObjectKind::External).unwrap().pager.clone().unwrap();
        assert!(pager.dead && pager.task.is_none(), "{pager:?}");
    }

    #[test]
    fn residency_follows_copies_pageout_and_unmapping() {
        let f = fixture();
        f.k.set_resident_limit(4);
        let a = f.k.vm_map(f.client, MapRequest::anywhere(4 * P, Some(f.object))).unwrap();
        f.serve(4);
        // A private copy: a shadow object gets a page as the copy is written.
        let c = f.k.vm_map(f.client, MapRequest::anywhere(4 * P, Some(f.object)).copy(true)).unwrap();
        f.k.write_u64(f.client, c, 9).unwrap();
        let z = f.k.vm_allocate(f.client, VmAddr(0), 8 * P, true).unwrap();
        for i in 0..8 {
            f.k.write_u64(f.client, VmAddr(z.0 + i * P), i).unwrap();
        }
        let check = || {
            let objects = f.k.objects_info();
            let resident = f.k.stats().resident;
            assert_eq!(objects.iter().map(|o| o.resident).sum::<usize>(), resident, "{objects:?}");
            // The counts kept as pages come and go are the pages' own.
            f.k.peek(|st| {
                for (id, o) in &st.vm.objects {
                    let frames = o.pages.values().filter(|p| p.frame.is_some()).count();
                    assert_eq!(o.resident(), frames, "object {id:?}");
                }
            });
            objects
        };
        let objects = check();
        assert!(objects.iter().any(|o| o.shadow.is_some() && o.resident == 1), "{objects:?}");
        assert!(f.k.stats().vm.pageouts > 0, "the limit made pageout run");
        f.k.vm_deallocate(f.client, z, 8 * P).unwrap();
        f.k.vm_deallocate(f.client, c, 4 * P).unwrap();
        check();
        f.k.vm_deallocate(f.client, a, 4 * P).unwrap();
        // The last reference went: the object is terminated, unless the
        // pager let the kernel cache it (this one did not).
        assert!(check().iter().all(|o| o.kind != ObjectKind::External));
    }

    #[test]
    fn proxies_info_shows_windows_views_and_revocation_through_a_chain() {
        let f = fixture();
        let k = &f.k;
        let t = f.client;
        let inner = k.memory_object_create_proxy(t, VmProt::READ, &[f.object], &[0], &[0], &[4 * P]).unwrap();
        let outer = k
            .memory_object_create_proxy(t, VmProt::ALL, &[inner.proxy, f.object], &[0, 8 * P], &[P, 0], &[P, P])
            .unwrap();
        let a = k.vm_map(t, MapRequest::anywhere(P, Some(outer.proxy)).prot(VmProt::READ, VmProt::READ)).unwrap();
        let list = k.proxies_info();
        assert_eq!(list.len(), 2, "{list:?}");
        let (i, o) = (&list[0], &list[1]);
        assert!(i.id < o.id);
        assert_eq!(i.info.protection, VmProt::READ);
        assert_eq!(i.info.windows.len(), 1);
        assert_eq!((i.info.windows[0].len, i.info.windows[0].target_is_proxy), (4 * P, false));
        assert_eq!(o.info.windows.len(), 2);
        let w = &o.info.windows;
        assert_eq!((w[0].offset, w[0].start, w[0].prot, w[0].target_is_proxy), (0, P, VmProt::READ, true));
        assert_eq!((w[1].offset, w[1].prot, w[1].target_is_proxy), (8 * P, VmProt::ALL, false));
        // The outer window over the inner proxy targets its view; the other,
        // the object itself.
        assert_eq!(Some(o.targets[0]), i.view);
        let entries = k.vm_map_info(t).unwrap();
        assert_eq!(entries[0].object, o.view);
        let mut via = entries[0].via.clone();
        via.sort_unstable();
        assert_eq!(via, vec![i.id, o.id]);
        assert!(!i.info.revoked && !o.info.revoked && !i.port_dead);
        // Each agrees with what the proxy's holder is told.
        assert_eq!(i.info, k.memory_object_proxy_info(t, inner.proxy).unwrap());
        assert_eq!(o.info, k.memory_object_proxy_info(t, outer.proxy).unwrap());
        // Revoking the inner one shows on both: the outer reaches it.
        k.memory_object_proxy_revoke(t, inner.revoke).unwrap();
        let list = k.proxies_info();
        assert!(list.iter().all(|p| p.info.revoked), "{list:?}");
        assert_eq!(list[1].info, k.memory_object_proxy_info(t, outer.proxy).unwrap());
        assert_eq!(k.read_u64(t, a), Err(KernError::MemoryError));
        // A proxy whose last send right goes is still listed while a
        // mapping holds it, with its port dead.
        k.port_deallocate(t, outer.proxy).unwrap();
        assert!(k.proxies_info().iter().any(|p| p.id == o.id && p.port_dead));
    }
}
