//! The proxy calls tasks make: `memory_object_create_proxy`,
//! `vm_region_create_proxy`, `memory_object_proxy_revoke` and
//! `memory_object_proxy_info`. They check the task's side (its space, its
//! map) and leave the proxies themselves to `crate::memory_object::proxy`.

use super::{KObject, Kernel, TaskId};
use crate::ipc::PortName;
use crate::memory_object::proxy::compose::{Window, MAX_PROXY_WINDOWS};
use crate::memory_object::proxy::{ProxyInfo, ProxyRights, ProxySpec, ProxyVersion};
use crate::types::{KernError, Result, VmAddr, VmProt};
use crate::vm::map::nonzero_pages;
use crate::wait::WaitKey;

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
    /// [`crate::memory_object::proxy::compose::window_len`]).
    ///
    /// The entries are checked in order, and the windows each will make
    /// are counted (by binary search over an inner proxy's windows) as it
    /// is checked: the call is refused at the entry that takes the count
    /// past [`MAX_PROXY_WINDOWS`], before any window is
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
    /// [`MAX_PROXY_WINDOWS`] windows; decided before the
    /// ranges are walked, so it is the answer even if a range also runs
    /// across a gap in an inner proxy; or the task has made
    /// [`crate::TaskLimits::proxies`] live proxies), `KERN_INVALID_TASK`.
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
            let (mo, mut cx) = st.split();
            let spec = ProxySpec { max_protection, objects, offsets, starts, lens };
            mo.create_proxy(&mut cx, space, &spec, version)
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
    /// entry, at most [`MAX_PROXY_WINDOWS`].
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (unaligned, zero, overflow, unknown
    /// protection bits), `KERN_INVALID_ADDRESS` (nothing mapped in the
    /// range, or outside the map), `KERN_PROTECTION_FAILURE` (no entry
    /// grants any of `max_protection`), `KERN_RESOURCE_SHORTAGE` (more
    /// entries than a proxy may have windows, or the task has made
    /// [`crate::TaskLimits::proxies`] live proxies), `KERN_INVALID_TASK`.
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
            if spans.len() > MAX_PROXY_WINDOWS || st.mo.proxies.made_by(space) >= st.mo.max_proxies {
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
            let (mo, mut cx) = st.split();
            Ok(mo.proxy_create(&mut cx, space, version, windows, via))
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
            let Some(px) = st.mo.proxies.proxies.get_mut(&p) else {
                // Revoked before, and nothing is left of it but its id.
                return if st.mo.proxies.revoked_gone.contains(&p) { Ok(()) } else { Err(KernError::InvalidArgument) };
            };
            if px.version == ProxyVersion::Mapping {
                return Err(KernError::NotSupported);
            }
            px.revoked = true;
            for (&id, t) in &st.tasks {
                let mut cut = false;
                for e in t.map.iter().filter(|e| e.via.contains(&p)) {
                    st.vm.pmap_remove_range(t.pmap, e.start, e.end);
                    cut = true;
                }
                // Its faults asleep through the proxy must fail now.
                if cut {
                    st.waits.mark(WaitKey::Task(id));
                }
            }
            let (mo, mut cx) = st.split();
            mo.proxy_maybe_free(&mut cx, p);
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
                Some(KObject::Proxy(p)) => st.mo.proxies.info(p),
                _ => Err(KernError::InvalidArgument),
            }
        })
    }
}
