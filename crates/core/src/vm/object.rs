//! VM objects and their resident pages.
//!
//! An object is a cache of a memory object's pages. Three kinds:
//!
//! 1. **External**: served by a pager over the EMMI (a file, the default
//!    pager once an anonymous object has been paged out).
//! 2. **Temporary**: anonymous memory; zero-filled until paged out, then
//!    served by the default pager for the offsets it holds (`paged_out`).
//! 3. **View**: a paging proxy. It holds no pages of its own: every offset
//!    translates, through the proxy's windows, to a page of another object
//!    (one physical page for both, never a copy).
//!
//! Copy-on-write uses Mach's two tools: *shadow* objects (a private object
//! in front of a shared one: the first write copies the page up) and *copy*
//! objects (a snapshot: before a page of the original changes, its old
//! contents are pushed into the copy).
//!
//! Page state machine (one resident page):
//!
//! ```text
//!  (none) --data_request--> busy+absent --data_supply--> resident
//!                               |  \--data_unavailable--> resident (zeroes)
//!                               \--data_error / pager death--> error
//!  resident --lock_request(lock)--> locked --data_unlock + answer--> resident
//!  resident --pageout / flush--> (none)      [dirty or precious: data_return first]
//!  error    --lock_request(flush)--> (none)  [the next fault asks again]
//! ```

use super::charge::Owner;
use crate::pmap::Frame;
pub use crate::pmap::ObjectId;
use crate::types::VmProt;
use std::collections::{BTreeMap, BTreeSet};

/// Who provides an object's pages. The VM knows providers only by opaque
/// keys; the memory-object layer turns them into ports and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Anonymous memory not (yet) known to the default pager.
    None,
    /// An external pager (the memory-object layer knows its port).
    External,
    /// A paging proxy (the kernel is the pager), by proxy id.
    View(u64),
}

pub use machvm_protocol::emmi::CopyStrategy;

/// One resident (or requested) page of an object.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// `None` while the data is still absent.
    pub frame: Option<Frame>,
    /// A request is outstanding; faults wait.
    pub busy: bool,
    /// The pager failed the page (or died): faults get `KERN_MEMORY_ERROR`.
    pub error: bool,
    /// Modified since the pager last saw it.
    pub dirty: bool,
    /// The pager wants it back even if clean.
    pub precious: bool,
    /// Accesses the pager has locked (`lock_value`).
    pub lock: VmProt,
    /// Accesses a `data_unlock` has already been sent for.
    pub unlock_pending: VmProt,
    /// The task this page (or placeholder) is charged to (see
    /// [`super::charge`]); `None`: nobody.
    pub owner: Option<Owner>,
}

impl Page {
    /// A placeholder for a page requested from the pager.
    pub fn requested() -> Page {
        Page { busy: true, ..Page::default() }
    }
    /// A page holding data in `frame`.
    pub fn resident(frame: Frame) -> Page {
        Page { frame: Some(frame), ..Page::default() }
    }
}

/// A VM object.
#[derive(Debug)]
pub struct VmObject {
    /// Size in bytes (the extent a pager may be asked for).
    pub size: u64,
    /// Resident pages by offset.
    pub pages: BTreeMap<u64, Page>,
    /// How many of `pages` hold a frame (kept by `Vm::page_insert` and
    /// `Vm::page_evict`, the only ways a page with a frame comes or goes):
    /// see [`VmObject::resident`].
    pub(super) resident: usize,
    /// The object behind this one (copy-on-write), and the offset into it.
    pub shadow: Option<(ObjectId, u64)>,
    /// The newest copy object made of this one.
    pub copy: Option<ObjectId>,
    pub provider: Provider,
    /// Anonymous memory (a default-pager object once paged out).
    pub temporary: bool,
    /// The pager said `ready` (always true without an external pager).
    pub ready: bool,
    /// The pager's port died, or the pager destroyed the object.
    pub pager_dead: bool,
    /// Offsets the default pager holds (temporary objects only).
    pub paged_out: BTreeSet<u64>,
    /// References: map entries, shadows, proxies.
    pub refs: u32,
    /// The pager lets the kernel keep the object, and its pages, after the
    /// last reference goes (the object cache, see `Vm::object_deallocate`).
    pub may_cache: bool,
    pub copy_strategy: CopyStrategy,
    /// Pages asked of the pager at once on a fault.
    pub cluster_pages: u32,
}

impl VmObject {
    /// A fresh anonymous object.
    pub fn temporary(size: u64) -> VmObject {
        VmObject {
            size,
            pages: BTreeMap::new(),
            resident: 0,
            shadow: None,
            copy: None,
            provider: Provider::None,
            temporary: true,
            ready: true,
            pager_dead: false,
            paged_out: BTreeSet::new(),
            refs: 1,
            may_cache: false,
            copy_strategy: CopyStrategy::Delay,
            cluster_pages: 1,
        }
    }

    /// An object served by an external pager, not yet ready.
    pub fn external(cluster_pages: u32) -> VmObject {
        VmObject {
            provider: Provider::External,
            temporary: false,
            ready: false,
            size: !(crate::types::PAGE_SIZE - 1),
            cluster_pages,
            ..VmObject::temporary(0)
        }
    }

    /// A paging proxy's view object.
    pub fn view(proxy: u64, size: u64) -> VmObject {
        VmObject { provider: Provider::View(proxy), temporary: false, ..VmObject::temporary(size) }
    }

    /// Pages holding data now (placeholders for pages asked of the pager
    /// and failed pages are not counted), in O(1).
    pub fn resident(&self) -> usize {
        self.resident
    }

    /// Must a fault ask the provider for the page at `offset`?
    pub fn pager_has(&self, offset: u64) -> bool {
        match self.provider {
            Provider::External => !self.temporary || self.paged_out.contains(&offset),
            Provider::None | Provider::View(_) => false,
        }
    }
}
