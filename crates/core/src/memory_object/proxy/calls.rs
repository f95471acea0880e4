//! The proxy calls: `memory_object_create_proxy`,
//! `vm_region_create_proxy`, `memory_object_proxy_revoke`,
//! `memory_object_proxy_info`, and the `vm_map` half that turns a mapping
//! of a proxy into map entries.

use super::compose::{cover, Composer, Request, Source, Window};
use super::{Proxy, ProxyId, ProxyInfo, ProxyVersion};
use crate::ipc::{PortId, PortName, RightKind, SpaceId};
use crate::kernel::calls::Piece;
use crate::wait::WaitKey;
use crate::kernel::{KObject, KState, Kernel, TaskId};
use crate::types::{KernError, Result, VmAddr, VmProt};
use crate::vm::map::nonzero_pages;
use crate::vm::object::{ObjectId, VmObject};
use crate::vm::ViewResolver;
use std::collections::{BTreeSet, HashSet};

/// The rights a proxy's creator gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyRights {
    /// A send right to the proxy: pass it on, `vm_map` it.
    pub proxy: PortName,
    /// A send right that revokes the proxy (paging proxies).
    pub revoke: PortName,
}

/// A window target before the call has committed: a memory object port
/// not bound yet, or an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Port(PortId),
    Object(ObjectId),
}

impl From<ObjectId> for Target {
    fn from(o: ObjectId) -> Target {
        Target::Object(o)
    }
}

impl Kernel {
    /// `memory_object_create_proxy(task, max_protection, objects, offsets,
    /// starts, lens)`: a proxy showing bytes `[starts[i], starts[i] +
    /// lens[i])` of `objects[i]` at `offsets[i]`, granting at most
    /// `max_protection`. Objects may be proxies; protections intersect
    /// along the chain. Uses the kernel's configured version.
    ///
    /// A window whose end is exactly the last byte of the offset space (the
    /// larger of `offsets[i] + lens[i]` and `starts[i] + lens[i]` is
    /// 2^64 − 1, and neither wraps) runs *to the end*, as libpager's
    /// `pager_create_ro_port` and tmpfs ask with offset 0, start 0 and
    /// `len = ~0`. It is kept rounded down to its last whole page, `2^64 −
    /// PAGE_SIZE − max(offset, start)`, and is from then on exactly the
    /// window of that page-aligned length: `vm_map`, nested proxies and
    /// [`Kernel::memory_object_proxy_info`] see that length (see
    /// [`super::compose::window_len`]).
    ///
    /// The entries are checked in order, and the windows each will make
    /// are counted (by binary search over an inner proxy's windows) as it
    /// is checked: the call is refused at the entry that takes the count
    /// past [`super::compose::MAX_PROXY_WINDOWS`], before any window is
    /// built, so a refused call costs work in proportion to its entries up
    /// to the limit, never to the windows of the proxies they name.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (array lengths differ or are zero,
    /// unaligned windows (other than a window to the end), zero-length
    /// windows (a window to the end from the last page included), a sum
    /// that wraps, overlapping windows, a range outside an inner proxy's
    /// windows, a port that is no memory object, unknown protection bits),
    /// `KERN_INVALID_NAME` / `KERN_INVALID_RIGHT` (an object name; a
    /// send-once right is not a memory object, and is left untouched),
    /// `KERN_INVALID_CAPABILITY` (an inner proxy, or a paging proxy it
    /// reaches, was revoked; or an object name is a dead name),
    /// `KERN_RESOURCE_SHORTAGE` (more than
    /// [`super::compose::MAX_PROXY_WINDOWS`] windows; decided before the
    /// ranges are walked, so it is the answer even if a range also runs
    /// across a gap in an inner proxy), `KERN_INVALID_TASK`.
    pub fn memory_object_create_proxy(
        &self,
        task: TaskId,
        max_protection: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
    ) -> Result<ProxyRights> {
        let version = self.with(|st| st.config.proxy_version);
        self.memory_object_create_proxy_version(task, max_protection, objects, offsets, starts, lens, version)
    }

    /// As [`Kernel::memory_object_create_proxy`], choosing the version.
    #[allow(clippy::too_many_arguments)]
    pub fn memory_object_create_proxy_version(
        &self,
        task: TaskId,
        max_protection: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        version: ProxyVersion,
    ) -> Result<ProxyRights> {
        self.with(|st| {
            let space = st.task(task)?.space;
            let mut examined = 0;
            let decoded = st.create_proxy_decode(space, max_protection, objects, offsets, starts, lens, &mut examined);
            st.stats.proxy_windows_examined += examined;
            let (windows, via) = decoded?;
            // Invoke: every window holds a reference on its target.
            let windows = windows
                .into_iter()
                .map(|w| {
                    let target = match w.target {
                        Target::Port(p) => st.bind(p),
                        Target::Object(o) => {
                            st.vm.object_reference(o);
                            o
                        }
                    };
                    w.with_target(target)
                })
                .collect();
            Ok(st.proxy_create(space, version, windows, via))
        })
    }

    /// `vm_region_create_proxy(task, address, max_protection, len)`: a
    /// proxy of the memory mapped at `[address, address + len)` in `task`,
    /// granting at most `max_protection` and never more than each entry's
    /// maximum. Holes become gaps between windows; partial entries give
    /// partial windows; anonymous memory not yet touched gets its object
    /// now; a copy-on-write entry gets its private copy now, so the proxy
    /// and the task see the same memory from then on. Memory the task
    /// mapped through paging proxies stays subject to their revocation.
    /// Uses the kernel's configured version; the proxy has one window per
    /// entry, at most [`super::compose::MAX_PROXY_WINDOWS`].
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (unaligned, zero, overflow, unknown
    /// protection bits), `KERN_INVALID_ADDRESS` (nothing mapped in the
    /// range, or outside the map), `KERN_PROTECTION_FAILURE` (no entry
    /// grants any of `max_protection`), `KERN_RESOURCE_SHORTAGE` (more
    /// entries than a proxy may have windows), `KERN_INVALID_TASK`.
    pub fn vm_region_create_proxy(
        &self,
        task: TaskId,
        address: VmAddr,
        max_protection: VmProt,
        len: u64,
    ) -> Result<ProxyRights> {
        self.with(|st| {
            let t = st.task(task)?;
            let space = t.space;
            VmProt::from_raw(max_protection.bits())?;
            let end = t.map.check_range(address, nonzero_pages(len)?)?;
            // `(entry start, span start, span end)` of each entry granting
            // something. Memory reached through paging proxies stays
            // subject to their revocation (a copy made through one has no
            // view to target): the proxy inherits the entries' `via`.
            let (mut spans, mut via, mut mapped) = (Vec::new(), Vec::new(), false);
            for e in t.map.overlapping(address.0, end) {
                mapped = true;
                if !(max_protection & e.max).is_empty() {
                    spans.push((e.start, e.start.max(address.0), e.end.min(end)));
                    via.extend(e.via.iter().copied());
                }
            }
            if !mapped {
                return Err(KernError::InvalidAddress);
            }
            if spans.is_empty() {
                return Err(KernError::ProtectionFailure);
            }
            if spans.len() > super::compose::MAX_PROXY_WINDOWS {
                return Err(KernError::ResourceShortage);
            }
            let mut windows = Vec::with_capacity(spans.len());
            for (entry_start, s, e) in spans {
                let object = st.share_entry(task, entry_start);
                st.vm.object_reference(object);
                let entry = st.task(task).expect("checked").map.lookup(s).expect("exists");
                windows.push(Window {
                    offset: s - address.0,
                    len: e - s,
                    target: object,
                    start: entry.offset_of(s),
                    prot: max_protection & entry.max,
                });
            }
            let version = st.config.proxy_version;
            Ok(st.proxy_create(space, version, windows, via))
        })
    }

    /// `memory_object_proxy_revoke(revoke_right)`: every mapping made
    /// through the proxy (or through a window of another proxy that reaches
    /// it) loses its translations at once, and its later faults fail with
    /// `KERN_MEMORY_ERROR`; new `vm_map`s of it, or of windows reaching it,
    /// and new proxies built on it fail with `KERN_INVALID_CAPABILITY`.
    /// Windows of an outer proxy that do not reach it keep working.
    /// Revoking twice is harmless.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (not a revoke right),
    /// `KERN_NOT_SUPPORTED` (a mapping proxy: its mappings are ordinary
    /// mappings of the underlying objects, so only a paging proxy can be
    /// revoked), `KERN_INVALID_NAME` / `KERN_INVALID_RIGHT`,
    /// `KERN_INVALID_CAPABILITY` (a dead name), `KERN_INVALID_TASK`.
    pub fn memory_object_proxy_revoke(&self, task: TaskId, revoke: PortName) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            let port = st.ipc.send_port_of(space, revoke)?;
            let Some(KObject::ProxyRevoke(p)) = st.kobject(port) else {
                return Err(KernError::InvalidArgument);
            };
            let Some(px) = st.proxies.proxies.get_mut(&p) else {
                // Revoked before, and nothing is left of it but its id.
                return if st.proxies.revoked_gone.contains(&p) { Ok(()) } else { Err(KernError::InvalidArgument) };
            };
            if px.version == ProxyVersion::Mapping {
                return Err(KernError::NotSupported);
            }
            px.revoked = true;
            for (&id, t) in &st.tasks {
                let mut cut = false;
                for e in t.map.iter().filter(|e| e.via.contains(&p)) {
                    st.vm.machine.remove(t.pmap, VmAddr(e.start), VmAddr(e.end));
                    cut = true;
                }
                // Its faults asleep through the proxy must fail now.
                if cut {
                    st.waits.mark(WaitKey::Task(id));
                }
            }
            st.proxy_maybe_free(p);
            Ok(())
        })
    }

    /// `memory_object_proxy_info`: what the proxy named `proxy` grants.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (not a proxy), `KERN_INVALID_NAME`,
    /// `KERN_INVALID_RIGHT`, `KERN_INVALID_CAPABILITY` (a dead name),
    /// `KERN_INVALID_TASK`.
    pub fn memory_object_proxy_info(&self, task: TaskId, proxy: PortName) -> Result<ProxyInfo> {
        self.with(|st| {
            let space = st.task(task)?.space;
            let port = st.ipc.send_port_of(space, proxy)?;
            match st.kobject(port) {
                Some(KObject::Proxy(p)) => st.proxies.info(p),
                _ => Err(KernError::InvalidArgument),
            }
        })
    }
}

impl KState {
    /// The decode half of `memory_object_create_proxy`: the new proxy's
    /// windows over targets not bound yet, and its `via`. Changes nothing;
    /// adds the windows it looks at to `examined`.
    ///
    /// Its cost is bounded by the call, not by the proxies it names: each
    /// entry's windows are counted by binary search and the call refused
    /// as soon as they pass the limit, before anything is built (so at most
    /// one entry past the limit is looked at, and at most the limit's
    /// windows are ever held); the inner proxies' windows are borrowed,
    /// never copied; and each proxy named, or reached through those named,
    /// is walked once for revocation and gives its `via` once, however many
    /// entries name it.
    #[allow(clippy::too_many_arguments)]
    fn create_proxy_decode(
        &self,
        space: SpaceId,
        max_protection: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        examined: &mut u64,
    ) -> Result<(Vec<Window<Target>>, Vec<ProxyId>)> {
        VmProt::from_raw(max_protection.bits())?;
        let n = objects.len();
        if n == 0 || offsets.len() != n || starts.len() != n || lens.len() != n {
            return Err(KernError::InvalidArgument);
        }
        let mut composer = Composer::new(max_protection);
        let (mut named, mut walked, mut via) = (HashSet::new(), HashSet::new(), BTreeSet::new());
        for i in 0..n {
            let port = self.ipc.send_port_of(space, objects[i])?;
            let source = match self.kobject(port) {
                Some(KObject::Proxy(p)) => {
                    let first = named.insert(p);
                    if first && self.proxies.chain_revoked_sharing(p, &mut walked, examined) {
                        return Err(KernError::InvalidCapability);
                    }
                    let px = self.proxies.get(p)?;
                    if first {
                        via.extend(px.via.iter().copied());
                    }
                    Source::Proxy { version: px.version, windows: &px.windows, view: px.view }
                }
                Some(_) => return Err(KernError::InvalidArgument),
                None => Source::Object(Target::Port(port)),
            };
            composer.push(Request { source, offset: offsets[i], start: starts[i], len: lens[i] }, examined)?;
        }
        Ok((composer.finish(examined)?, via.into_iter().collect()))
    }

    /// Makes the proxy's ports and (paging) view; the windows' references
    /// are already taken. `via`: see [`Proxy::via`]. Cannot fail.
    fn proxy_create(
        &mut self,
        space: SpaceId,
        version: ProxyVersion,
        windows: Vec<Window<ObjectId>>,
        mut via: Vec<ProxyId>,
    ) -> ProxyRights {
        via.sort_unstable();
        via.dedup();
        let port = self.ipc.port_allocate_kernel();
        let revoke_port = self.ipc.port_allocate_kernel();
        let size = windows.last().map_or(0, |w| w.end());
        let next = self.proxies.next_id();
        let view = (version == ProxyVersion::Paging).then(|| self.vm.object_insert(VmObject::view(next, size)));
        let p = self.proxies.insert(Proxy {
            version,
            windows,
            revoked: false,
            port,
            revoke_port,
            view,
            port_dead: false,
            via,
        });
        debug_assert_eq!(p, next);
        self.kobjects.insert(port, KObject::Proxy(p));
        self.kobjects.insert(revoke_port, KObject::ProxyRevoke(p));
        self.ipc.kernel_make_send(port);
        self.ipc.kernel_make_send(revoke_port);
        let proxy = self.ipc.copyout(space, port, RightKind::Send).expect("space checked by caller");
        let revoke = self.ipc.copyout(space, revoke_port, RightKind::Send).expect("space checked by caller");
        ProxyRights { proxy, revoke }
    }

    /// The entries `vm_map` makes for `[offset, offset + size)` of proxy
    /// `p`: checked completely first ([`KState::proxy_plan`]), then
    /// references taken.
    pub(crate) fn proxy_pieces(
        &mut self,
        p: ProxyId,
        offset: u64,
        size: u64,
        copy: bool,
        cur: VmProt,
        max: VmProt,
    ) -> Result<Vec<Piece>> {
        let mut pieces = self.proxy_plan(p, offset, size, copy, cur, max)?;
        // Invoke: each entry holds a reference on its object; a copy's
        // object is a fresh copy.
        for piece in &mut pieces {
            let object = piece.object.expect("every piece has an object");
            self.vm.object_reference(object);
            if piece.needs_copy {
                piece.object = Some(self.copy_of(object, piece.offset, piece.len));
            }
        }
        Ok(pieces)
    }

    /// The decode half of [`KState::proxy_pieces`]: the entries, with the
    /// objects they will map or copy, and no reference taken.
    pub(crate) fn proxy_plan(
        &self,
        p: ProxyId,
        offset: u64,
        size: u64,
        copy: bool,
        cur: VmProt,
        max: VmProt,
    ) -> Result<Vec<Piece>> {
        let px = self.proxies.get(p)?;
        if px.revoked {
            return Err(KernError::InvalidCapability);
        }
        let (mut pieces, mut rel) = (Vec::new(), 0);
        for (w, within, len) in cover(&px.windows, offset, size)? {
            // The paging proxies this window reaches: revoking any of them
            // cuts the entry; the proxy's other windows are not affected.
            let mut via = self.proxies.via_object(w.target);
            via.extend(px.via.iter().copied());
            let (object, off) = match (px.version, px.view) {
                (ProxyVersion::Paging, Some(view)) => {
                    via.push(p);
                    (view, w.offset + within)
                }
                _ => (w.target, w.start + within),
            };
            via.sort_unstable();
            via.dedup();
            if via.iter().any(|&v| self.proxies.revoked(v)) {
                return Err(KernError::InvalidCapability);
            }
            if !copy {
                let (cur, max) = (cur & w.prot, max & w.prot);
                pieces.push(Piece { rel, len, object: Some(object), offset: off, cur, max, needs_copy: false, via });
                rel += len;
                continue;
            }
            // A copy needs read permission only; the copy itself is
            // private, so it may be written.
            if !w.prot.contains(VmProt::READ) {
                return Err(KernError::ProtectionFailure);
            }
            let allowed = w.prot | VmProt::WRITE;
            for (_, flen, fobj, foff, _, fvia) in self.flatten(object, off, len)? {
                let mut v = via.clone();
                v.extend(fvia.into_iter().filter(|x| !via.contains(x)));
                pieces.push(Piece {
                    rel,
                    len: flen,
                    object: Some(fobj),
                    offset: foff,
                    cur: cur & allowed,
                    max: max & allowed,
                    needs_copy: true,
                    via: v,
                });
                rel += flen;
            }
        }
        Ok(pieces)
    }
}
