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

use machvm_protocol::emmi::{KernelReply, PagerToKernel};
use crate::ipc::{KMessage, PortId, RightKind};
use crate::wait::WaitKey;
use crate::kernel::KState;
use crate::types::{page_aligned, KernError, Result, PAGE_SIZE};
use crate::vm::object::{CopyStrategy, ObjectId};

pub use machvm_protocol::emmi::MAX_CLUSTER_PAGES;

fn check_range(offset: u64, size: u64) -> Result<()> {
    if !page_aligned(offset) || !page_aligned(size) || size == 0 {
        return Err(KernError::InvalidArgument);
    }
    offset.checked_add(size).map(|_| ()).ok_or(KernError::InvalidArgument)
}

impl KState {
    /// Handles one message sent to `object`'s control port.
    pub(crate) fn control_message(&mut self, object: ObjectId, kmsg: KMessage) -> Result<()> {
        let reply = kmsg.reply;
        let decoded = PagerToKernel::decode(kmsg.id, &kmsg.data);
        // The rights in the body are not used by any EMMI call.
        let body = KMessage { reply: None, ..kmsg };
        self.ipc.destroy_message(body);
        let m = match decoded {
            Ok(m) => m,
            Err(e) => {
                self.drop_reply(reply);
                return Err(e);
            }
        };
        if !self.vm.objects.contains_key(&object) {
            self.drop_reply(reply);
            return Err(KernError::InvalidArgument);
        }
        self.waits.mark(WaitKey::Object(object));
        match m {
            PagerToKernel::Ready { may_cache, copy_strategy } => {
                self.count_from("ready");
                if copy_strategy == CopyStrategy::Call {
                    self.drop_reply(reply);
                    return Err(KernError::InvalidArgument);
                }
                let o = self.vm.object_mut(object);
                o.ready = true;
                o.may_cache = may_cache;
                o.copy_strategy = copy_strategy;
                self.drop_reply(reply);
                Ok(())
            }
            PagerToKernel::ChangeAttributes { may_cache, copy_strategy, cluster_pages } => {
                self.count_from("change_attributes");
                if cluster_pages == 0 || cluster_pages > MAX_CLUSTER_PAGES || copy_strategy == CopyStrategy::Call {
                    self.drop_reply(reply);
                    return Err(KernError::InvalidArgument);
                }
                let o = self.vm.object_mut(object);
                o.ready = true;
                o.may_cache = may_cache;
                o.copy_strategy = copy_strategy;
                o.cluster_pages = cluster_pages;
                self.reply(reply, KernelReply::ChangeCompleted { may_cache, copy_strategy });
                Ok(())
            }
            PagerToKernel::DataSupply { offset, data, lock, precious } => {
                self.count_from("data_supply");
                let length = data.len() as u64;
                if let Err(e) = check_range(offset, length) {
                    self.reply(
                        reply,
                        KernelReply::SupplyCompleted { offset, length, result: Some(e), error_offset: offset },
                    );
                    return Err(e);
                }
                let mut result = None;
                let mut error_offset = 0;
                for (i, page) in data.chunks_exact(PAGE_SIZE as usize).enumerate() {
                    let off = offset + i as u64 * PAGE_SIZE;
                    if let Err(e) = self.vm.data_supply(object, off, page, lock, precious) {
                        result = Some(e);
                        error_offset = off;
                        self.fail_awaited(object, off, offset + length - off);
                        break;
                    }
                }
                self.reply(reply, KernelReply::SupplyCompleted { offset, length, result, error_offset });
                result.map_or(Ok(()), Err)
            }
            PagerToKernel::DataUnavailable { offset, size } => {
                self.count_from("data_unavailable");
                self.drop_reply(reply);
                check_range(offset, size)?;
                for off in self.awaited(object, offset, size) {
                    if let Err(e) = self.vm.data_unavailable(object, off) {
                        self.fail_awaited(object, off, offset + size - off);
                        return Err(e);
                    }
                }
                Ok(())
            }
            PagerToKernel::DataError { offset, size, reason: _ } => {
                self.count_from("data_error");
                self.drop_reply(reply);
                check_range(offset, size)?;
                for off in self.awaited(object, offset, size) {
                    self.vm.data_error(object, off);
                }
                Ok(())
            }
            PagerToKernel::LockRequest { offset, size, should_return, should_flush, lock } => {
                self.count_from("lock_request");
                if let Err(e) = check_range(offset, size) {
                    self.drop_reply(reply);
                    return Err(e);
                }
                self.vm.lock_request(object, offset, size, should_return, should_flush, lock);
                self.reply(reply, KernelReply::LockCompleted { offset, length: size });
                Ok(())
            }
            PagerToKernel::GetAttributes => {
                self.count_from("get_attributes");
                if reply.is_none() {
                    return Err(KernError::SendInvalidReply);
                }
                let o = self.vm.object(object);
                let a = KernelReply::Attributes {
                    ready: o.ready,
                    may_cache: o.may_cache,
                    copy_strategy: o.copy_strategy,
                    cluster_pages: o.cluster_pages,
                };
                self.reply(reply, a);
                Ok(())
            }
            PagerToKernel::Destroy { reason: _ } => {
                self.count_from("destroy");
                self.drop_reply(reply);
                // Every page goes, data included: the pager destroyed the
                // object. Faults waiting on it, and later ones on pages
                // the pager held, fail as on a dead pager (and a cached
                // object goes: its pages first, so none is returned).
                let offsets: Vec<u64> = self.vm.object(object).pages.keys().copied().collect();
                for off in offsets {
                    self.vm.page_evict(object, off, false);
                }
                self.pager_died(object);
                Ok(())
            }
        }
    }

    /// Pages in `[offset, offset + size)` still waiting for their data.
    /// Walks the object's pages, not the range: a pager may name a huge
    /// range, and the kernel lock is held.
    fn awaited(&self, object: ObjectId, offset: u64, size: u64) -> Vec<u64> {
        let pages = &self.vm.object(object).pages;
        pages.range(offset..offset + size).filter(|(_, p)| p.busy && p.frame.is_none()).map(|(&off, _)| off).collect()
    }

    /// Fails the pages in `[offset, offset + size)` still waiting for their
    /// data. An answer the kernel could not take whole (no free frame) fails
    /// the rest of its range with the page it stopped at: no fault may wait
    /// for a page the pager believes it has answered.
    fn fail_awaited(&mut self, object: ObjectId, offset: u64, size: u64) {
        for off in self.awaited(object, offset, size) {
            self.vm.data_error(object, off);
        }
    }

    fn reply(&mut self, reply: Option<(PortId, RightKind)>, m: KernelReply) {
        let Some((port, kind)) = reply else { return };
        let (id, data) = m.encode();
        let msg = KMessage { dest_right: Some(kind), ..KMessage::from_kernel(port, id, data, Vec::new()) };
        let _ = self.ipc.kernel_send(msg);
    }

    fn drop_reply(&mut self, reply: Option<(PortId, RightKind)>) {
        if let Some((port, kind)) = reply {
            self.ipc.release_right(port, kind);
        }
    }
}
