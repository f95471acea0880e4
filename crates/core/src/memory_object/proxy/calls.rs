//! The memory-object half of the proxy calls (the kernel's entry points
//! are in `crate::kernel`): decoding and making a proxy
//! (`memory_object_create_proxy`, the windows of `vm_region_create_proxy`),
//! and planning the map entries of a `vm_map` of a proxy.

use super::compose::{cover, Composer, Request, Source, Window};
use super::{Proxy, ProxyId, ProxyVersion};
use crate::ipc::{Ipc, PortId, PortName, RightKind, SpaceId};
use crate::memory_object::{Ctx, MemoryObjects, MoPort};
use crate::types::{KernError, Result, VmProt};
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

/// The arguments of `memory_object_create_proxy`, as a task passes them:
/// entry *i* shows `[starts[i], starts[i] + lens[i])` of `objects[i]` at
/// `offsets[i]`, granting at most `max_protection`.
#[derive(Clone, Copy, Debug)]
pub struct ProxySpec<'a> {
    pub max_protection: VmProt,
    pub objects: &'a [PortName],
    pub offsets: &'a [u64],
    pub starts: &'a [u64],
    pub lens: &'a [u64],
}

/// One entry `vm_map` will insert, relative to the mapped address.
#[derive(Debug)]
pub struct MapPiece {
    pub rel: u64,
    pub len: u64,
    pub object: Option<ObjectId>,
    pub offset: u64,
    pub cur: VmProt,
    pub max: VmProt,
    pub needs_copy: bool,
    /// The paging proxies the entry's memory is reached through.
    pub via: Vec<u64>,
}

/// A window target before the call has committed: a memory object port
/// not bound yet, or an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Port(PortId),
    Object(ObjectId),
}

impl From<ObjectId> for Target {
    fn from(o: ObjectId) -> Target {
        Target::Object(o)
    }
}

impl MemoryObjects {
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
    pub fn create_proxy_decode(
        &self,
        ipc: &Ipc,
        space: SpaceId,
        spec: &ProxySpec<'_>,
        examined: &mut u64,
    ) -> Result<(Vec<Window<Target>>, Vec<ProxyId>)> {
        let ProxySpec { max_protection, objects, offsets, starts, lens } = *spec;
        if self.proxies.made_by(space) >= self.max_proxies {
            return Err(KernError::ResourceShortage);
        }
        VmProt::from_raw(max_protection.bits())?;
        let n = objects.len();
        if n == 0 || offsets.len() != n || starts.len() != n || lens.len() != n {
            return Err(KernError::InvalidArgument);
        }
        let mut composer = Composer::new(max_protection);
        let (mut named, mut walked, mut via) = (HashSet::new(), HashSet::new(), BTreeSet::new());
        for i in 0..n {
            let port = ipc.send_port_of(space, objects[i])?;
            let source = match self.port(port) {
                Some(MoPort::Proxy(p)) => {
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
                // Other kernel objects (control ports, revoke rights, the
                // host port) are no memory objects.
                Some(_) => return Err(KernError::InvalidArgument),
                None if ipc.is_kernel_port(port) => return Err(KernError::InvalidArgument),
                None => Source::Object(Target::Port(port)),
            };
            composer.push(Request { source, offset: offsets[i], start: starts[i], len: lens[i] }, examined)?;
        }
        Ok((composer.finish(examined)?, via.into_iter().collect()))
    }

    /// Makes the proxy's ports and (paging) view; the windows' references
    /// are already taken. `via`: see [`Proxy::via`]. Cannot fail.
    pub fn proxy_create(
        &mut self,
        cx: &mut Ctx<'_>,
        space: SpaceId,
        version: ProxyVersion,
        windows: Vec<Window<ObjectId>>,
        mut via: Vec<ProxyId>,
    ) -> ProxyRights {
        via.sort_unstable();
        via.dedup();
        let port = cx.ipc.port_allocate_kernel();
        let revoke_port = cx.ipc.port_allocate_kernel();
        let size = windows.last().map_or(0, |w| w.end());
        let next = self.proxies.next_id();
        let view = (version == ProxyVersion::Paging).then(|| cx.vm.object_insert(VmObject::view(next, size)));
        let p = self.proxies.insert(Proxy {
            version,
            creator: space,
            windows,
            revoked: false,
            port,
            revoke_port,
            view,
            port_dead: false,
            via,
        });
        debug_assert_eq!(p, next);
        self.ports.insert(port, MoPort::Proxy(p));
        self.ports.insert(revoke_port, MoPort::ProxyRevoke(p));
        cx.ipc.kernel_make_send(port);
        cx.ipc.kernel_make_send(revoke_port);
        let proxy = cx.ipc.copyout(space, port, RightKind::Send).expect("space checked by caller");
        let revoke = cx.ipc.copyout(space, revoke_port, RightKind::Send).expect("space checked by caller");
        ProxyRights { proxy, revoke }
    }

    /// The entries a `vm_map` of `[offset, offset + size)` of proxy `p`
    /// makes, with the objects they will map or copy; checks everything
    /// and takes no reference (the kernel does, once its own checks pass).
    pub fn proxy_plan(
        &self,
        p: ProxyId,
        offset: u64,
        size: u64,
        copy: bool,
        cur: VmProt,
        max: VmProt,
    ) -> Result<Vec<MapPiece>> {
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
                pieces.push(MapPiece { rel, len, object: Some(object), offset: off, cur, max, needs_copy: false, via });
                rel += len;
                continue;
            }
            // A copy needs read permission only; the copy itself is
            // private, so it may be written.
            if !w.prot.contains(VmProt::READ) {
                return Err(KernError::ProtectionFailure);
            }
            let allowed = w.prot | VmProt::WRITE;
            for (_, flen, fobj, foff, _, fvia) in self.proxies.flatten(object, off, len)? {
                let mut v = via.clone();
                v.extend(fvia.into_iter().filter(|x| !via.contains(x)));
                pieces.push(MapPiece {
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

    /// `memory_object_create_proxy` in `space`: decodes (counting the
    /// windows examined), then binds the windows' memory objects and makes
    /// the proxy. A failed call has changed nothing.
    pub fn create_proxy(
        &mut self,
        cx: &mut Ctx<'_>,
        space: SpaceId,
        spec: &ProxySpec<'_>,
        version: ProxyVersion,
    ) -> Result<ProxyRights> {
        let mut examined = 0;
        let decoded = self.create_proxy_decode(cx.ipc, space, spec, &mut examined);
        self.stats.proxy_windows_examined += examined;
        let (windows, via) = decoded?;
        // Invoke: every window holds a reference on its target.
        let windows = windows
            .into_iter()
            .map(|w| {
                let target = match w.target {
                    Target::Port(p) => self.bind(cx, p),
                    Target::Object(o) => {
                        cx.vm.object_reference(o);
                        o
                    }
                };
                w.with_target(target)
            })
            .collect();
        Ok(self.proxy_create(cx, space, version, windows, via))
    }
}
