//! Memory objects: the kernel side of the EMMI, and proxy memory objects.
//! This layer has state of its own ([`MemoryObjects`]) and sits between
//! the kernel and the VM / IPC layers: it uses them, never the kernel.
//!
//! - [`emmi`]: the messages between kernel and pagers, and their encoding
//!   (from `machvm-protocol`, which pagers share).
//! - [`pager`]: bindings of pagers' memory object ports to VM objects, the
//!   default pager, and the delivery of the VM's requests to pagers
//!   (kernel → pager).
//! - [`control`]: what the kernel does with a pager's message on a control
//!   port (pager → kernel).
//! - [`proxy`]: proxy memory objects, both versions behind one interface.
//!
//! Every routine that needs the layers below takes a [`Ctx`]: the IPC
//! state, the VM, and the wait table, all under the kernel lock.

pub mod control;
pub use machvm_protocol::emmi;
pub mod pager;
pub mod proxy;

use crate::ipc::{Ipc, PortId};
use crate::vm::object::ObjectId;
use crate::vm::Vm;
use crate::wait::WaitTable;
use proxy::{ProxyId, ProxyTable};
use std::collections::{BTreeMap, HashMap};

/// The kernel objects this layer owns: ports whose receive right the
/// kernel holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoPort {
    /// A memory object's control port (pagers send EMMI calls here).
    Control(ObjectId),
    /// A proxy memory object.
    Proxy(ProxyId),
    /// The right to revoke a proxy.
    ProxyRevoke(ProxyId),
}

/// An external object's ports: the pager's memory object port (the kernel
/// holds one send right) and the kernel's control port for it; and the
/// messages exchanged about the object, which go with the binding.
#[derive(Clone, Debug)]
pub struct Binding {
    pub port: PortId,
    pub control: PortId,
    /// The object was handed to the default pager (`memory_object_create`)
    /// rather than mapped from a pager's port.
    pub default_pager: bool,
    pub messages: MessageCounts,
}

/// The EMMI messages about one object, by name, in each direction (kept
/// while it is bound: a few map entries per object, one look-up each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Kernel → pager messages.
    pub to_pager: BTreeMap<&'static str, u64>,
    /// Pager → kernel messages.
    pub from_pager: BTreeMap<&'static str, u64>,
}

/// Messages between the kernel and pagers, by EMMI name, and the work
/// proxy creation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmmiStats {
    /// Kernel → pager messages.
    pub to_pagers: BTreeMap<&'static str, u64>,
    /// Pager → kernel messages.
    pub from_pagers: BTreeMap<&'static str, u64>,
    /// Windows `memory_object_create_proxy` has looked at (see
    /// `KernelStats::proxy_windows_examined`).
    pub proxy_windows_examined: u64,
}

/// The memory-object layer's state (under the kernel lock).
#[derive(Debug)]
pub struct MemoryObjects {
    /// Control, proxy and revoke ports.
    pub ports: HashMap<PortId, MoPort>,
    /// Memory object port (a pager's) → its VM object.
    pub port_objects: HashMap<PortId, ObjectId>,
    /// External object → its ports.
    pub bindings: HashMap<ObjectId, Binding>,
    pub proxies: ProxyTable,
    /// The default pager's port (a send right the kernel holds).
    pub default_pager: Option<PortId>,
    pub stats: EmmiStats,
    /// Pages asked of a new pager per fault until it sets its own.
    pub cluster_pages: u32,
    /// The most live proxies one task may have made.
    pub max_proxies: usize,
}

/// The layers below, borrowed for one call.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub ipc: &'a mut Ipc,
    pub vm: &'a mut Vm,
    pub waits: &'a mut WaitTable,
}

impl MemoryObjects {
    /// An empty layer; new pagers are asked `cluster_pages` pages per
    /// fault; a task may have made at most `max_proxies` live proxies.
    pub fn new(cluster_pages: u32, max_proxies: usize) -> MemoryObjects {
        MemoryObjects {
            ports: HashMap::new(),
            port_objects: HashMap::new(),
            bindings: HashMap::new(),
            proxies: ProxyTable::default(),
            default_pager: None,
            stats: EmmiStats::default(),
            cluster_pages,
            max_proxies,
        }
    }

    /// What `port` is to this layer, if it is one of its kernel objects.
    pub fn port(&self, port: PortId) -> Option<MoPort> {
        self.ports.get(&port).copied()
    }

    /// Counts a kernel → pager message about `object`, in all and for the
    /// object.
    pub(crate) fn count_to(&mut self, object: ObjectId, kind: &'static str) {
        *self.stats.to_pagers.entry(kind).or_default() += 1;
        if let Some(b) = self.bindings.get_mut(&object) {
            *b.messages.to_pager.entry(kind).or_default() += 1;
        }
    }

    /// Counts a pager → kernel message about `object`, in all and for the
    /// object.
    pub(crate) fn count_from(&mut self, object: ObjectId, kind: &'static str) {
        *self.stats.from_pagers.entry(kind).or_default() += 1;
        if let Some(b) = self.bindings.get_mut(&object) {
            *b.messages.from_pager.entry(kind).or_default() += 1;
        }
    }
}
