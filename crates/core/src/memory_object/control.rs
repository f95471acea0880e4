//! The kernel side of the EMMI: what happens when a pager's message
//! arrives on a control port.
//!
//! 1. Decode the message (`emmi::PagerToKernel::decode`); a malformed one
//!    is refused with `MIG_BAD_ARGUMENTS` and changes nothing.
//! 2. Check ranges: offsets and sizes page-aligned, sums without overflow,
//!    data whole pages (`KERN_INVALID_ARGUMENT` otherwise). Of the copy
//!    strategies, `ready` and `change_attributes` take `NONE` (eager
//!    copies) and `DELAY` (copy-on-write); `CALL` is refused with
//!    `KERN_INVALID_ARGUMENT` and changes nothing (see `crate::vm::copy`).
//! 3. Apply it to the VM object page by page (`vm::paging`), then wake the
//!    faults that wait on the object.
//! 4. Answer on the reply port if the pager named one.

use super::pager::pager_died;
use super::{Ctx, MemoryObjects};
use crate::ipc::{KMessage, PortId, RightKind};
use crate::types::{page_aligned, KernError, Result, PAGE_SIZE};
use crate::vm::object::{CopyStrategy, ObjectId};
use crate::wait::WaitKey;
use machvm_protocol::emmi::{KernelReply, PagerToKernel};

pub use machvm_protocol::emmi::MAX_CLUSTER_PAGES;

fn check_range(offset: u64, size: u64) -> Result<()> {
    if !page_aligned(offset) || !page_aligned(size) || size == 0 {
        return Err(KernError::InvalidArgument);
    }
    offset.checked_add(size).map(|_| ()).ok_or(KernError::InvalidArgument)
}

impl MemoryObjects {
    /// Handles one message the task numbered `sender` sent to `object`'s
    /// control port (a staged supply reads that task's staging area).
    pub fn control_message(&mut self, cx: &mut Ctx<'_>, object: ObjectId, kmsg: KMessage, sender: u64) -> Result<()> {
        let reply = kmsg.reply;
        let decoded = PagerToKernel::decode(kmsg.id, &kmsg.data);
        // The rights in the body are not used by any EMMI call.
        let body = KMessage { reply: None, ..kmsg };
        cx.ipc.destroy_message(body);
        // Destroying them may have killed a port (even the pager's own):
        // what that means must hold before the message is applied, so that
        // no page is handed to a dead pager.
        self.ipc_events_now(cx);
        let m = match decoded {
            Ok(m) => m,
            Err(e) => {
                drop_reply(cx, reply);
                return Err(e);
            }
        };
        if !cx.vm.objects.contains_key(&object) {
            drop_reply(cx, reply);
            return Err(KernError::InvalidArgument);
        }
        cx.waits.mark(WaitKey::Object(object));
        match m {
            PagerToKernel::Ready { may_cache, copy_strategy } => {
                self.count_from(object, "ready");
                if copy_strategy == CopyStrategy::Call {
                    drop_reply(cx, reply);
                    return Err(KernError::InvalidArgument);
                }
                let o = cx.vm.object_mut(object);
                o.ready = true;
                o.may_cache = may_cache;
                o.copy_strategy = copy_strategy;
                drop_reply(cx, reply);
                Ok(())
            }
            PagerToKernel::ChangeAttributes { may_cache, copy_strategy, cluster_pages } => {
                self.count_from(object, "change_attributes");
                if cluster_pages == 0 || cluster_pages > MAX_CLUSTER_PAGES || copy_strategy == CopyStrategy::Call {
                    drop_reply(cx, reply);
                    return Err(KernError::InvalidArgument);
                }
                let o = cx.vm.object_mut(object);
                o.ready = true;
                o.may_cache = may_cache;
                o.copy_strategy = copy_strategy;
                o.cluster_pages = cluster_pages;
                reply_to(cx, reply, KernelReply::ChangeCompleted { may_cache, copy_strategy });
                Ok(())
            }
            PagerToKernel::DataSupply { offset, data, lock, precious } => {
                self.count_from(object, "data_supply");
                let length = data.len() as u64;
                if let Err(e) = check_range(offset, length) {
                    reply_to(
                        cx,
                        reply,
                        KernelReply::SupplyCompleted { offset, length, result: Some(e), error_offset: offset },
                    );
                    return Err(e);
                }
                let mut result = None;
                let mut error_offset = 0;
                for (i, page) in data.chunks_exact(PAGE_SIZE as usize).enumerate() {
                    let off = offset + i as u64 * PAGE_SIZE;
                    if let Err(e) = cx.vm.data_supply(object, off, page, lock, precious) {
                        result = Some(e);
                        error_offset = off;
                        fail_awaited(cx, object, off, offset + length - off);
                        break;
                    }
                }
                reply_to(cx, reply, KernelReply::SupplyCompleted { offset, length, result, error_offset });
                result.map_or(Ok(()), Err)
            }
            PagerToKernel::DataSupplyStaged { offset, length, staging_offset, lock, precious } => {
                self.count_from(object, "data_supply_staged");
                // All of it must be in the sender's staging area before
                // any page is taken: a bad supply changes nothing.
                // At most a cluster at once (the kernel lock is held over it).
                let staged = check_range(offset, length).and_then(|()| {
                    let end = staging_offset.checked_add(length).ok_or(KernError::InvalidArgument)?;
                    let inside = page_aligned(staging_offset) && end <= cx.vm.machine.staging_len(sender);
                    let short = length <= u64::from(MAX_CLUSTER_PAGES) * PAGE_SIZE;
                    (inside && short).then_some(()).ok_or(KernError::InvalidArgument)
                });
                if let Err(e) = staged {
                    reply_to(
                        cx,
                        reply,
                        KernelReply::SupplyCompleted { offset, length, result: Some(e), error_offset: offset },
                    );
                    return Err(e);
                }
                let (mut result, mut error_offset) = (None, 0);
                let supplied =
                    cx.vm.data_supply_staged(object, (offset, length), (sender, staging_offset), lock, precious);
                if let Err((e, off)) = supplied {
                    (result, error_offset) = (Some(e), off);
                    fail_awaited(cx, object, off, offset + length - off);
                }
                reply_to(cx, reply, KernelReply::SupplyCompleted { offset, length, result, error_offset });
                result.map_or(Ok(()), Err)
            }
            PagerToKernel::DataUnavailable { offset, size } => {
                self.count_from(object, "data_unavailable");
                drop_reply(cx, reply);
                check_range(offset, size)?;
                let waiting = awaited(cx, object, offset, size);
                if let Err((e, off)) = cx.vm.data_unavailable_at(object, &waiting) {
                    fail_awaited(cx, object, off, offset + size - off);
                    return Err(e);
                }
                Ok(())
            }
            PagerToKernel::DataError { offset, size, reason: _ } => {
                self.count_from(object, "data_error");
                drop_reply(cx, reply);
                check_range(offset, size)?;
                for off in awaited(cx, object, offset, size) {
                    cx.vm.data_error(object, off);
                }
                Ok(())
            }
            PagerToKernel::LockRequest { offset, size, should_return, should_flush, lock } => {
                self.count_from(object, "lock_request");
                if let Err(e) = check_range(offset, size) {
                    drop_reply(cx, reply);
                    return Err(e);
                }
                cx.vm.lock_request(object, offset, size, should_return, should_flush, lock);
                reply_to(cx, reply, KernelReply::LockCompleted { offset, length: size });
                Ok(())
            }
            PagerToKernel::GetAttributes => {
                self.count_from(object, "get_attributes");
                if reply.is_none() {
                    return Err(KernError::SendInvalidReply);
                }
                let o = cx.vm.object(object);
                let a = KernelReply::Attributes {
                    ready: o.ready,
                    may_cache: o.may_cache,
                    copy_strategy: o.copy_strategy,
                    cluster_pages: o.cluster_pages,
                };
                reply_to(cx, reply, a);
                Ok(())
            }
            PagerToKernel::Destroy { reason: _ } => {
                self.count_from(object, "destroy");
                drop_reply(cx, reply);
                // Every page goes, data included: the pager destroyed the
                // object. Faults waiting on it, and later ones on pages
                // the pager held, fail as on a dead pager (and a cached
                // object goes: its pages first, so none is returned).
                let offsets: Vec<u64> = cx.vm.object(object).pages.keys().copied().collect();
                for off in offsets {
                    cx.vm.page_evict(object, off, false);
                }
                pager_died(cx, object);
                Ok(())
            }
        }
    }
}

/// Pages in `[offset, offset + size)` still waiting for their data.
/// Walks the object's pages, not the range: a pager may name a huge
/// range, and the kernel lock is held.
fn awaited(cx: &Ctx<'_>, object: ObjectId, offset: u64, size: u64) -> Vec<u64> {
    let pages = &cx.vm.object(object).pages;
    pages.range(offset..offset + size).filter(|(_, p)| p.busy && p.frame.is_none()).map(|(&off, _)| off).collect()
}

/// Fails the pages in `[offset, offset + size)` still waiting for their
/// data. An answer the kernel could not take whole (no free frame) fails
/// the rest of its range with the page it stopped at: no fault may wait
/// for a page the pager believes it has answered.
fn fail_awaited(cx: &mut Ctx<'_>, object: ObjectId, offset: u64, size: u64) {
    for off in awaited(cx, object, offset, size) {
        cx.vm.data_error(object, off);
    }
}

fn reply_to(cx: &mut Ctx<'_>, reply: Option<(PortId, RightKind)>, m: KernelReply) {
    let Some((port, kind)) = reply else { return };
    let (id, data) = m.encode();
    let msg = KMessage { dest_right: Some(kind), ..KMessage::from_kernel(port, id, data, Vec::new()) };
    let _ = cx.ipc.kernel_send(msg);
}

fn drop_reply(cx: &mut Ctx<'_>, reply: Option<(PortId, RightKind)>) {
    if let Some((port, kind)) = reply {
        cx.ipc.release_right(port, kind);
    }
}
