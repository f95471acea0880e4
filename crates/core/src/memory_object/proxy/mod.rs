//! Proxy memory objects: weaker capabilities to the same memory.
//!
//! A proxy is a list of **windows**. Window *i* says: `len` bytes of
//! `target` from `start` appear at `offset` in the proxy, and allow at most
//! `prot`.
//!
//! ```text
//!  proxy offsets   0        w0.offset      w0.offset+len   w1.offset
//!                  |  (no window)  |=== w0 ===|  (none)  |=== w1 ===|
//!                                    │                      │
//!  target objects          objA[start, start+len)    objB[start, ...)
//! ```
//!
//! Two versions sit behind one interface (`memory_object_create_proxy`):
//!
//! - **Mapping proxy** ([`ProxyVersion::Mapping`]): a kernel object no one
//!   can send to. `vm_map` validates the request against the windows and
//!   maps the *targets* directly, with protections masked by the windows.
//! - **Paging proxy** ([`ProxyVersion::Paging`]): a memory object whose
//!   pager is the kernel. `vm_map` maps its *view object*; each fault on the
//!   view is validated against the windows ([`ProxyTable`] implements the
//!   VM's `ViewResolver`) and forwarded to the target, whose page (one
//!   frame, asked of the real pager once) is then mapped. Revocation works
//!   because every access goes through the proxy.
//!
//! Composition (a proxy of a proxy) is decided here, once, at creation:
//! windows over a mapping proxy are translated to that proxy's targets;
//! windows over a paging proxy target its view (so its revocation still
//! bites). Either way the protection is the **intersection** along the
//! chain and the range must lie inside the inner proxy's windows: no chain
//! can grant more than its innermost object allows.
//!
//! Revocation is per window: each map entry records the paging proxies its
//! memory is reached through (`MapEntry::via`, computed by window when it
//! is mapped), so revoking one cuts exactly the entries that reach it; an
//! outer proxy's windows that do not reach it keep working.

mod calls;
pub mod compose;

use crate::ipc::PortId;
use crate::types::{KernError, Result, VmProt};
use crate::vm::object::ObjectId;
use crate::vm::ViewResolver;
use std::collections::{HashMap, HashSet};

pub use calls::{MapPiece, ProxyRights, ProxySpec, Target};

/// A piece of memory seen through paging-proxy views: `(relative start,
/// length, object, offset, allowed, via)` (see [`ProxyTable::flatten`]).
pub type FlatPiece = (u64, u64, ObjectId, u64, VmProt, Vec<u64>);
pub use compose::{compose, cover, Source, Window};

/// Which implementation backs a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyVersion {
    /// `vm_map` maps the underlying objects with reduced maximum protection.
    Mapping,
    /// The kernel pages the proxy, validating and forwarding every request.
    Paging,
}

/// Names a proxy.
pub type ProxyId = u64;

/// A live proxy.
#[derive(Debug)]
pub struct Proxy {
    pub version: ProxyVersion,
    /// The space of the task that made it (its creations are limited).
    pub creator: crate::ipc::SpaceId,
    /// Sorted by offset, never overlapping.
    pub windows: Vec<Window<ObjectId>>,
    /// Revoked through its revoke right (paging proxies only).
    pub revoked: bool,
    /// The proxy's own port (a kernel object).
    pub port: PortId,
    /// The revoke right's port (a kernel object).
    pub revoke_port: PortId,
    /// The paging proxy's view object.
    pub view: Option<ObjectId>,
    /// The proxy port lost its last sender.
    pub port_dead: bool,
    /// Paging proxies the windows' memory was reached through although no
    /// window targets their view (a region proxy of a copy mapping made
    /// through them, and proxies flattened from such a proxy): revoking
    /// any of them revokes this proxy too.
    pub via: Vec<ProxyId>,
}

/// What an introspection call reports about a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowInfo {
    pub offset: u64,
    pub len: u64,
    pub start: u64,
    pub prot: VmProt,
    /// The target is another (paging) proxy rather than a real object.
    pub target_is_proxy: bool,
}

/// `memory_object_proxy_info`: what a proxy grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    pub version: ProxyVersion,
    /// The union of what the windows allow.
    pub protection: VmProt,
    pub windows: Vec<WindowInfo>,
    /// The proxy, or a paging proxy one of its windows reaches, was
    /// revoked (the windows that reach no revoked proxy still work).
    pub revoked: bool,
}

/// Every proxy in the kernel.
#[derive(Debug, Default)]
pub struct ProxyTable {
    pub proxies: HashMap<ProxyId, Proxy>,
    next: ProxyId,
    /// The proxy whose view each view object is.
    pub view_of: HashMap<ObjectId, ProxyId>,
    /// Revoked proxies whose records are gone (nobody can map through them
    /// any more): just their ids, so that mappings and proxies made through
    /// them before stay dead.
    pub revoked_gone: HashSet<ProxyId>,
    /// Live proxy records by the space that made them.
    by_creator: HashMap<crate::ipc::SpaceId, usize>,
}

impl ProxyTable {
    /// The id the next `insert` will return.
    pub fn next_id(&self) -> ProxyId {
        self.next + 1
    }

    pub fn insert(&mut self, p: Proxy) -> ProxyId {
        *self.by_creator.entry(p.creator).or_default() += 1;
        self.next += 1;
        if let Some(v) = p.view {
            self.view_of.insert(v, self.next);
        }
        self.proxies.insert(self.next, p);
        self.next
    }

    /// Forgets a proxy's record.
    pub fn remove(&mut self, id: ProxyId) -> Option<Proxy> {
        let p = self.proxies.remove(&id)?;
        if let Some(n) = self.by_creator.get_mut(&p.creator) {
            *n -= 1;
            if *n == 0 {
                self.by_creator.remove(&p.creator);
            }
        }
        Some(p)
    }

    /// How many live proxy records `space` made.
    pub fn made_by(&self, space: crate::ipc::SpaceId) -> usize {
        self.by_creator.get(&space).copied().unwrap_or(0)
    }

    pub fn get(&self, id: ProxyId) -> Result<&Proxy> {
        self.proxies.get(&id).ok_or(KernError::InvalidArgument)
    }

    /// Is this proxy, or any paging proxy it reaches, revoked?
    pub fn chain_revoked(&self, id: ProxyId) -> bool {
        self.chain(id).iter().any(|&p| self.is_revoked(p))
    }

    /// As [`ProxyTable::chain_revoked`] for each of many proxies in turn,
    /// sharing `seen`: a proxy in it is not walked again (an earlier walk
    /// of the same call found nothing revoked behind it, and nothing
    /// changes while the kernel lock is held), and those walked now are
    /// added. So a call naming one proxy in many entries, or many proxies
    /// over one shared inner proxy, walks each proxy once. Each window
    /// walked is added to `examined`.
    pub fn chain_revoked_sharing(&self, id: ProxyId, seen: &mut HashSet<ProxyId>, examined: &mut u64) -> bool {
        let mut revoked = false;
        self.walk(id, seen, examined, |p| revoked |= self.is_revoked(p));
        revoked
    }

    /// Was this proxy revoked (whether or not its record is still here)?
    pub fn is_revoked(&self, id: ProxyId) -> bool {
        self.revoked_gone.contains(&id) || self.proxies.get(&id).is_some_and(|p| p.revoked)
    }

    /// The paging proxies reachable from `id` (itself included if paging),
    /// through its windows and its `via`. Each is visited once: a chain may
    /// reach one proxy by many paths (two windows over the same inner proxy
    /// at every level double them), and the kernel lock is held.
    pub fn chain(&self, id: ProxyId) -> Vec<ProxyId> {
        let mut out = Vec::new();
        self.walk(id, &mut HashSet::new(), &mut 0, |p| out.push(p));
        out
    }

    /// Calls `found` on each paging proxy reachable from `id` (itself
    /// included if paging), and on each revoked one whose record is gone,
    /// skipping the proxies in `seen` and adding those it visits. Each
    /// window walked is added to `examined`.
    fn walk(&self, id: ProxyId, seen: &mut HashSet<ProxyId>, examined: &mut u64, mut found: impl FnMut(ProxyId)) {
        let mut todo = vec![id];
        while let Some(p) = todo.pop() {
            if !seen.insert(p) {
                continue;
            }
            let Some(px) = self.proxies.get(&p) else {
                if self.revoked_gone.contains(&p) {
                    found(p);
                }
                continue;
            };
            if px.version == ProxyVersion::Paging {
                found(p);
            }
            *examined += px.windows.len() as u64;
            for w in &px.windows {
                if let Some(&inner) = self.view_of.get(&w.target) {
                    todo.push(inner);
                }
            }
            todo.extend(px.via.iter().copied());
        }
    }

    /// The paging proxies a mapping of `object` goes through.
    pub fn via_object(&self, object: ObjectId) -> Vec<ProxyId> {
        self.view_of.get(&object).map_or_else(Vec::new, |&p| self.chain(p))
    }

    /// Splits `[offset, offset + len)` of `object` through paging-proxy
    /// views down to real objects: `(relative start, length, object,
    /// offset, allowed, via)` pieces. `KERN_MEMORY_ERROR` if a view is
    /// revoked or has a gap.
    pub fn flatten(&self, object: ObjectId, offset: u64, len: u64) -> Result<Vec<FlatPiece>> {
        let mut out = Vec::new();
        let mut todo = vec![(0u64, len, object, offset, VmProt::ALL, Vec::new())];
        while let Some((rel, len, obj, off, prot, via)) = todo.pop() {
            let Some(&proxy) = self.view_of.get(&obj) else {
                out.push((rel, len, obj, off, prot, via));
                continue;
            };
            let px = self.get(proxy)?;
            let pieces = cover(&px.windows, off, len).map_err(|_| KernError::MemoryError)?;
            let mut at = rel;
            for (w, within, plen) in pieces {
                let mut v = via.clone();
                v.push(proxy);
                let (inner, ioff, _) = self.resolve(proxy, w.offset + within)?;
                todo.push((at, plen, inner, ioff, prot & w.prot, v));
                at += plen;
            }
        }
        out.sort_by_key(|p| p.0);
        Ok(out)
    }

    /// Introspection.
    pub fn info(&self, id: ProxyId) -> Result<ProxyInfo> {
        Ok(self.info_of(self.get(id)?, self.chain_revoked(id)))
    }

    /// What `p` grants, its revocation (see [`ProxyInfo::revoked`]) found
    /// by the caller: O(windows).
    pub fn info_of(&self, p: &Proxy, revoked: bool) -> ProxyInfo {
        ProxyInfo {
            version: p.version,
            protection: p.windows.iter().fold(VmProt::NONE, |a, w| a | w.prot),
            windows: p
                .windows
                .iter()
                .map(|w| WindowInfo {
                    offset: w.offset,
                    len: w.len,
                    start: w.start,
                    prot: w.prot,
                    target_is_proxy: self.view_of.contains_key(&w.target),
                })
                .collect(),
            revoked,
        }
    }

    /// [`ProxyTable::chain_revoked`] of every proxy at once, in id order.
    /// A proxy reaches only proxies older than itself (its windows and
    /// `via` name proxies that existed when it was made), so in id order
    /// each inner proxy's answer is known before it is needed: each proxy's
    /// windows and `via` are looked at once, O(proxies · log proxies +
    /// windows), where asking each proxy alone would walk shared inner
    /// proxies again for every outer one.
    pub fn chains_revoked(&self) -> Vec<(ProxyId, bool)> {
        let mut ids: Vec<ProxyId> = self.proxies.keys().copied().collect();
        ids.sort_unstable();
        let mut known: HashMap<ProxyId, bool> = HashMap::with_capacity(ids.len());
        for &id in &ids {
            let px = &self.proxies[&id];
            let inner = px.windows.iter().filter_map(|w| self.view_of.get(&w.target).copied());
            let revoked = self.is_revoked(id)
                || inner.chain(px.via.iter().copied()).any(|p| match known.get(&p) {
                    Some(&r) => r,
                    // Not older than `id` (no path makes one such, but
                    // the answer must not depend on it), or gone.
                    None => self.chain_revoked(p),
                });
            known.insert(id, revoked);
        }
        ids.into_iter().map(|id| (id, known[&id])).collect()
    }
}

impl ViewResolver for ProxyTable {
    fn resolve(&self, view: u64, offset: u64) -> Result<(ObjectId, u64, VmProt)> {
        let p = self.proxies.get(&view).ok_or(KernError::MemoryError)?;
        if p.revoked {
            return Err(KernError::MemoryError);
        }
        let w = compose::window_at(&p.windows, offset).ok_or(KernError::MemoryError)?;
        Ok((w.target, w.start + (offset - w.offset), w.prot))
    }

    fn revoked(&self, proxy: u64) -> bool {
        self.is_revoked(proxy)
    }
}
