//! Pagers from the kernel's side: which VM object each memory object port
//! is bound to, the default pager, and the delivery of what the VM asks of
//! pagers (kernel → pager messages).
//!
//! 1. A task maps a memory object port: [`MemoryObjects::bind`] makes a VM
//!    object and a control port for it, and sends `memory_object_init`
//!    (carrying a send right to the control port) to the pager.
//! 2. The VM appends [`PagerOp`]s to its outbox while the kernel lock is
//!    held; when the call settles, [`MemoryObjects::deliver`] turns each
//!    into a message on the object's memory object port. A pager whose
//!    port is dead fails the object's waiting faults.
//! 3. An anonymous object paged out for the first time is handed to the
//!    default pager (`memory_object_create`), with a new memory object
//!    port whose receive right goes to the default pager.
//! 4. When an object ends, its pager gets `memory_object_terminate`
//!    (carrying the control port, as Mach's does) and the binding goes.
//!
//! A pager's port that dies ([`MemoryObjects::port_died`]) fails the
//! object for good; a proxy or revoke port that loses its last sender
//! ([`MemoryObjects::no_senders`]) lets the proxy go.

use super::{Binding, Ctx, MemoryObjects, MoPort};
use crate::ipc::{IpcEvent, KMessage, PortId, RightKind};
use crate::types::PAGE_SIZE;
use crate::vm::object::{ObjectId, Provider, VmObject};
use crate::vm::PagerOp;
use crate::wait::WaitKey;
use machvm_protocol::emmi::KernelToPager;

impl MemoryObjects {
    /// Sends a kernel → pager message on `object`'s memory object port;
    /// `false` if it could not be delivered (the pager is then dead).
    fn send_to_pager(&mut self, cx: &mut Ctx<'_>, object: ObjectId, m: KernelToPager, kind: &'static str) -> bool {
        let Some((port, control)) = self.bindings.get(&object).map(|b| (b.port, b.control)) else {
            return false;
        };
        let (id, data) = m.encode();
        // `terminate` carries the control port, as in Mach: a pager acts
        // only on a terminate naming the control right it already holds.
        let rights = if m == KernelToPager::Terminate {
            cx.ipc.kernel_make_send(control);
            vec![(control, RightKind::Send)]
        } else {
            Vec::new()
        };
        let msg = KMessage::from_kernel(port, id, data, rights);
        self.count_to(object, kind);
        if cx.ipc.kernel_send(msg).is_err() {
            pager_died(cx, object);
            return false;
        }
        true
    }

    /// Delivers one request of the VM (step 2).
    pub fn deliver(&mut self, cx: &mut Ctx<'_>, op: PagerOp) {
        match op {
            PagerOp::DataRequest { object, offset, length, access } => {
                self.send_to_pager(cx, object, KernelToPager::DataRequest { offset, length, access }, "data_request");
            }
            PagerOp::DataUnlock { object, offset, length, access } => {
                self.send_to_pager(cx, object, KernelToPager::DataUnlock { offset, length, access }, "data_unlock");
            }
            PagerOp::DataReturn { object, offset, data, dirty, kernel_copy } => {
                let m = KernelToPager::DataReturn { offset, data: data.clone(), dirty, kernel_copy };
                // A return the pager can no longer take (it died since the
                // page was given up) is the only copy: the page comes back.
                if !self.send_to_pager(cx, object, m, "data_return") && !kernel_copy {
                    cx.vm.page_restore(object, offset, &data);
                }
            }
            PagerOp::CreateDefault { object, size } => self.create_default(cx, object, size),
            PagerOp::Terminated { object, provider } => match provider {
                Provider::External => {
                    let _ = self.send_to_pager(cx, object, KernelToPager::Terminate, "terminate");
                    self.unbind(cx, object);
                    // Faults asleep on its pages (for an answer that will
                    // now go to a dead control port, or a `ready` that will
                    // never come) must wake and walk their maps again.
                    cx.waits.mark(WaitKey::Object(object));
                }
                Provider::View(proxy) => {
                    self.proxies.view_of.remove(&object);
                    if let Some(p) = self.proxies.proxies.get_mut(&proxy) {
                        p.view = None;
                    }
                    self.proxy_maybe_free(cx, proxy);
                }
                Provider::None => {}
            },
        }
    }

    /// Hands an anonymous object to the default pager
    /// (`memory_object_create`, step 3).
    fn create_default(&mut self, cx: &mut Ctx<'_>, object: ObjectId, size: u64) {
        let Some(dp) = self.default_pager else { return };
        let port = cx.ipc.port_allocate_in_transit();
        cx.ipc.kernel_make_send(port); // the kernel's reference
        let control = self.control_port(cx, object);
        cx.ipc.kernel_make_send(control); // the pager's
        self.bindings.insert(object, Binding { port, control, default_pager: true, messages: Default::default() });
        self.port_objects.insert(port, object);
        let (id, data) = KernelToPager::Create { size }.encode();
        let rights = vec![(port, RightKind::Receive), (control, RightKind::Send)];
        let msg = KMessage::from_kernel(dp, id, data, rights);
        self.count_to(object, "create");
        if cx.ipc.kernel_send(msg).is_err() {
            pager_died(cx, object);
        }
    }

    /// A new control port for `object` (a kernel object).
    fn control_port(&mut self, cx: &mut Ctx<'_>, object: ObjectId) -> PortId {
        let control = cx.ipc.port_allocate_kernel();
        self.ports.insert(control, MoPort::Control(object));
        control
    }

    /// Binds a pager's memory object port to a VM object, creating it and
    /// sending `memory_object_init` the first time (step 1). Takes an
    /// object reference for the caller.
    pub fn bind(&mut self, cx: &mut Ctx<'_>, port: PortId) -> ObjectId {
        if let Some(&o) = self.port_objects.get(&port) {
            cx.vm.object_reference(o);
            return o;
        }
        let object = cx.vm.object_insert(VmObject::external(self.cluster_pages));
        let control = self.control_port(cx, object);
        cx.ipc.kernel_make_send(control); // travels in init
        cx.ipc.kernel_copy_send(port); // the kernel's reference
        self.bindings.insert(object, Binding { port, control, default_pager: false, messages: Default::default() });
        self.port_objects.insert(port, object);
        let (id, data) = KernelToPager::Init { page_size: PAGE_SIZE }.encode();
        let msg = KMessage::from_kernel(port, id, data, vec![(control, RightKind::Send)]);
        self.count_to(object, "init");
        if cx.ipc.kernel_send(msg).is_err() {
            pager_died(cx, object);
        }
        object
    }

    fn unbind(&mut self, cx: &mut Ctx<'_>, object: ObjectId) {
        let Some(b) = self.bindings.remove(&object) else {
            return;
        };
        self.port_objects.remove(&b.port);
        cx.ipc.release_send(b.port);
        self.ports.remove(&b.control);
        cx.ipc.port_destroy(b.control);
    }

    /// Makes `port` (a send right the kernel now holds) the default pager,
    /// releasing the one it replaces.
    pub fn set_default_pager(&mut self, cx: &mut Ctx<'_>, port: PortId) {
        if let Some(old) = self.default_pager.replace(port) {
            cx.ipc.release_send(old);
        }
        cx.vm.default_pager_registered();
    }

    /// Reacts to what the IPC layer reports: a queued message wakes its
    /// receivers, a dead port may fail an object or unregister the default
    /// pager, a kernel port without senders may let a proxy go.
    pub fn ipc_event(&mut self, cx: &mut Ctx<'_>, e: IpcEvent) {
        match e {
            IpcEvent::Queued(port) => {
                if let Some(space) = cx.ipc.receiver_space(port) {
                    cx.waits.mark(WaitKey::Space(space));
                }
            }
            IpcEvent::PortDied(port) => {
                // Its receivers destroyed it (and marked their space); its
                // senders waiting for room must see it gone.
                cx.waits.mark(WaitKey::Port(port));
                self.port_died(cx, port);
                cx.ipc.reap(port);
            }
            IpcEvent::NoSenders(port) => self.no_senders(cx, port),
        }
    }

    /// Handles the IPC events pending now, before anything else depends on
    /// them (a pager's port that died in this very call).
    pub fn ipc_events_now(&mut self, cx: &mut Ctx<'_>) {
        for e in cx.ipc.drain_events() {
            self.ipc_event(cx, e);
        }
    }

    /// A port died: a pager's memory object port fails its object; the
    /// default pager's port unregisters it.
    pub fn port_died(&mut self, cx: &mut Ctx<'_>, port: PortId) {
        if let Some(&object) = self.port_objects.get(&port) {
            if self.bindings.get(&object).is_some_and(|b| b.port == port) {
                pager_died(cx, object);
            }
        }
        if self.default_pager == Some(port) {
            self.default_pager = None;
            cx.vm.default_pager = false;
            cx.ipc.release_send(port);
        }
    }

    /// A kernel-held port lost its last sender: a proxy (or its revoke
    /// right) may go.
    pub fn no_senders(&mut self, cx: &mut Ctx<'_>, port: PortId) {
        match self.ports.get(&port).copied() {
            Some(MoPort::Proxy(p)) => {
                self.ports.remove(&port);
                cx.ipc.port_destroy(port);
                let mut view = None;
                if let Some(px) = self.proxies.proxies.get_mut(&p) {
                    px.port_dead = true;
                    view = px.view;
                }
                // The proxy's own reference on its view: mappings keep the
                // view (and so the proxy) alive past this point.
                if let Some(v) = view {
                    cx.vm.object_deallocate(v);
                }
                self.proxy_maybe_free(cx, p);
            }
            Some(MoPort::ProxyRevoke(p)) => {
                self.ports.remove(&port);
                cx.ipc.port_destroy(port);
                self.proxy_maybe_free(cx, p);
            }
            Some(MoPort::Control(_)) | None => {}
        }
    }

    /// Lets go of what a proxy holds once nobody can map through it any
    /// more (its port is dead and its view, if any, is gone: no mapping and
    /// no other proxy's window holds it): the references on its windows'
    /// objects are released at once. The record itself stays while the
    /// revoke right lives (revoking must still reach copy mappings made
    /// through it); once revoked, only its id is kept (so that those
    /// mappings stay dead).
    pub fn proxy_maybe_free(&mut self, cx: &mut Ctx<'_>, p: u64) {
        let Some(px) = self.proxies.proxies.get_mut(&p) else {
            return;
        };
        if !px.port_dead || px.view.is_some() {
            return;
        }
        for w in std::mem::take(&mut px.windows) {
            cx.vm.object_deallocate(w.target);
        }
        let (revoke_port, revoked) = (px.revoke_port, px.revoked);
        if revoked {
            self.proxies.revoked_gone.insert(p);
            self.proxies.remove(p);
        } else if !self.ports.contains_key(&revoke_port) {
            self.proxies.remove(p);
        }
    }
}

/// The pager of `object` is gone (or refused delivery): its waiting
/// faults fail, and wake to find out.
pub fn pager_died(cx: &mut Ctx<'_>, object: ObjectId) {
    cx.vm.pager_died(object);
    cx.waits.mark(WaitKey::Object(object));
}
