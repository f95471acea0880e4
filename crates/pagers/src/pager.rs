//! The trait a pager implements: one method per message the kernel sends
//! a memory object, with Mach's defaults where Mach has them, and the
//! loop that calls them ([`serve_pager`]). A pager author never sees the
//! messages' encoding, nor whether the kernel is in this process or
//! behind `machvmd`'s socket (see [`crate::link`]).
//!
//! ```
//! use machvm_core::{Kernel, KernelConfig, MapRequest, VmAddr, VmProt, PAGE_SIZE};
//! use machvm_core::ipc::PortName;
//! use machvm_pagers::{serve_pager, Answer, PagerConn, Pager};
//!
//! /// Every byte is its offset, modulo 251.
//! struct Pattern;
//!
//! impl Pager for Pattern {
//!     fn data_request(
//!         &mut self,
//!         _object: PortName,
//!         offset: u64,
//!         length: u64,
//!         _access: VmProt,
//!         answer: &mut dyn Answer,
//!     ) -> machvm_core::Result<()> {
//!         let data: Vec<u8> = (offset..offset + length).map(|b| (b % 251) as u8).collect();
//!         answer.supply(offset, &data)
//!     }
//! }
//!
//! # fn main() -> machvm_core::Result<()> {
//! let kernel = Kernel::new(KernelConfig::default());
//! let mut pager = PagerConn::new(kernel.clone())?;
//! let object = pager.new_object()?;
//! let client = kernel.task_create(None)?;
//! let name = pager.give(object, client)?;
//! std::thread::spawn(move || serve_pager(&mut pager, &mut Pattern));
//!
//! let at = kernel.vm_map(client, MapRequest::anywhere(PAGE_SIZE, Some(name)))?;
//! let mut byte = [0u8];
//! kernel.read(client, VmAddr(at.0 + 300), &mut byte)?;
//! assert_eq!(byte[0], (300 % 251) as u8);
//! # Ok(())
//! # }
//! ```

use crate::conn::PagerConn;
use crate::link::{KernelLink, Outgoing, Staging};
use machvm_core::ipc::PortName;
use machvm_core::{KernError, Result, VmProt};
use machvm_protocol::emmi::{CopyStrategy, KernelToPager, PagerToKernel, ReturnPolicy};

/// What a pager tells the kernel about a new object (`ready`, or
/// `change_attributes` when it picks a cluster size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// The kernel may keep the object's pages after its last mapping goes.
    pub may_cache: bool,
    /// How copies are made (`DELAY`, or `NONE` for data that changes
    /// behind the kernel's back).
    pub copy_strategy: CopyStrategy,
    /// Pages per `data_request` (`None`: the kernel's default).
    pub cluster_pages: Option<u32>,
}

impl Default for Attributes {
    /// Cacheable, delayed copy, the kernel's cluster size.
    fn default() -> Self {
        Attributes { may_cache: true, copy_strategy: CopyStrategy::Delay, cluster_pages: None }
    }
}

/// How a pager answers a request: the pager → kernel calls on the
/// object's control port.
pub trait Answer {
    /// `memory_object_data_supply` of whole pages at `offset`.
    fn supply(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// `memory_object_data_unavailable`: zero fill.
    fn unavailable(&mut self, offset: u64, size: u64) -> Result<()>;
    /// `memory_object_data_error`: faults on the range fail.
    fn error(&mut self, offset: u64, size: u64) -> Result<()>;
    /// `memory_object_lock_request` clearing the lock on the range (the
    /// answer to a `data_unlock` that grants it).
    fn unlock(&mut self, offset: u64, size: u64) -> Result<()>;
    /// Room for the request's pages where the kernel's host copies them
    /// from itself (the pager's staging area, see
    /// [`crate::PagerConn::attach_staging`]), if there is one: page `i`
    /// of the request (at `offset + i * PAGE_SIZE`) goes at byte
    /// `i * PAGE_SIZE`. Pages written there are supplied with
    /// [`Answer::supply_staged`], without travelling in a message.
    fn staging(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// `memory_object_data_supply_staged` of the request's pages in
    /// `[offset, offset + size)`, from where [`Answer::staging`] has them.
    /// `KERN_INVALID_ARGUMENT` without a staging area, or for pages
    /// outside the request.
    fn supply_staged(&mut self, offset: u64, size: u64) -> Result<()> {
        let _ = (offset, size);
        Err(KernError::InvalidArgument)
    }
}

/// A pager: one method per kernel → pager message. Only `data_request`
/// must be written; the rest do what Mach's defaults do.
pub trait Pager {
    /// `memory_object_init`: the kernel bound `object`; the attributes are
    /// the answer (`ready`).
    fn init(&mut self, _object: PortName) -> Attributes {
        Attributes::default()
    }
    /// `memory_object_data_request`: supply `[offset, offset + length)`
    /// (or say it is unavailable, or fail it) through `answer`.
    fn data_request(
        &mut self,
        object: PortName,
        offset: u64,
        length: u64,
        access: VmProt,
        answer: &mut dyn Answer,
    ) -> Result<()>;
    /// `memory_object_data_unlock`: a fault wants `access` to pages the
    /// pager locked. Granted by default.
    fn data_unlock(
        &mut self,
        _object: PortName,
        offset: u64,
        length: u64,
        _access: VmProt,
        answer: &mut dyn Answer,
    ) -> Result<()> {
        answer.unlock(offset, length)
    }
    /// `memory_object_data_return`: the kernel gives pages back (dirty:
    /// modified since the pager saw them; `kernel_copy`: the kernel keeps
    /// them resident too). Dropped by default.
    fn data_return(&mut self, _object: PortName, _offset: u64, _data: &[u8], _dirty: bool, _kernel_copy: bool) {}
    /// `memory_object_terminate`: the kernel is done with `object`.
    fn terminate(&mut self, _object: PortName) {}
    /// `memory_object_create` (a default pager): the kernel hands over a
    /// new anonymous object of `size` bytes.
    fn create(&mut self, _object: PortName, _size: u64) {}
}

/// An [`Answer`] for one object, over a pager's connection.
/// A pager's answers to one request. The last answer is held back and
/// sent with the wait for the next request, in one call
/// ([`PagerConn::recv_after`]): a request answered in one message costs
/// one round trip to the kernel, as in Mach's server loop.
struct Answering<'a, L: KernelLink> {
    conn: &'a PagerConn<L>,
    object: PortName,
    held: &'a mut Option<Outgoing>,
    /// The staging area, and the request it holds pages of (offset,
    /// length).
    staging: Option<(&'a mut Staging, u64, u64)>,
}

impl<L: KernelLink> Answering<'_, L> {
    /// Holds `m` back, sending the answer held before it.
    fn answer(&mut self, m: PagerToKernel) -> Result<()> {
        let out = self.conn.outgoing(self.object, m)?;
        match self.held.replace(out) {
            Some(earlier) => self.conn.send(earlier),
            None => Ok(()),
        }
    }
}

impl<L: KernelLink> Answer for Answering<'_, L> {
    fn supply(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let (lock, precious) = (VmProt::NONE, false);
        self.answer(PagerToKernel::DataSupply { offset, data: data.to_vec(), lock, precious })
    }
    fn unavailable(&mut self, offset: u64, size: u64) -> Result<()> {
        self.answer(PagerToKernel::DataUnavailable { offset, size })
    }
    fn error(&mut self, offset: u64, size: u64) -> Result<()> {
        self.answer(PagerToKernel::DataError { offset, size, reason: KernError::MemoryError })
    }
    fn unlock(&mut self, offset: u64, size: u64) -> Result<()> {
        // Its reply is waited for: what is held goes first, in order.
        if let Some(earlier) = self.held.take() {
            self.conn.send(earlier)?;
        }
        self.conn.lock_request(self.object, offset, size, ReturnPolicy::None, false, VmProt::NONE)
    }
    fn staging(&mut self) -> Option<&mut [u8]> {
        let (staging, _, length) = self.staging.as_mut()?;
        let length = usize::try_from(*length).ok()?;
        staging.bytes_mut().get_mut(..length)
    }
    fn supply_staged(&mut self, offset: u64, size: u64) -> Result<()> {
        let &mut Some((_, base, length)) = &mut self.staging else { return Err(KernError::InvalidArgument) };
        let at = offset.checked_sub(base).filter(|at| at.checked_add(size).is_some_and(|end| end <= length));
        let staging_offset = at.ok_or(KernError::InvalidArgument)?;
        let (lock, precious) = (VmProt::NONE, false);
        // The kernel has copied the pages by the time the pager's next
        // request arrives (a held answer goes before the receive): the
        // area is free for that request's pages.
        self.answer(PagerToKernel::DataSupplyStaged { offset, length: size, staging_offset, lock, precious })
    }
}

/// Serves kernel messages to `pager` until the pager's task is gone (its
/// receive fails). Malformed or forged messages are skipped; an answer
/// that fails (the object ended meanwhile) is not the pager's problem.
pub fn serve_pager<L: KernelLink>(conn: &mut PagerConn<L>, pager: &mut dyn Pager) {
    let mut held = None;
    let mut staging = conn.staging.take();
    serve_with(conn, pager, &mut held, staging.as_mut());
    conn.staging = staging;
}

fn serve_with<L: KernelLink>(
    conn: &mut PagerConn<L>,
    pager: &mut dyn Pager,
    held: &mut Option<Outgoing>,
    mut staging: Option<&mut Staging>,
) {
    loop {
        let r = match conn.recv_after(held.take(), None) {
            Ok(r) => r,
            Err(KernError::MigBadId) | Err(KernError::MigBadArguments) => continue,
            Err(_) => return,
        };
        let object = r.object;
        let _ = match r.msg {
            KernelToPager::Init { .. } => {
                let a = pager.init(object);
                let (may_cache, copy_strategy) = (a.may_cache, a.copy_strategy);
                let m = match a.cluster_pages {
                    Some(cluster_pages) => PagerToKernel::ChangeAttributes { may_cache, copy_strategy, cluster_pages },
                    None => PagerToKernel::Ready { may_cache, copy_strategy },
                };
                conn.call(object, m)
            }
            KernelToPager::Create { size } => {
                pager.create(object, size);
                Ok(())
            }
            KernelToPager::DataRequest { offset, length, access } => {
                let staging = staging.as_deref_mut().map(|s| (s, offset, length));
                let mut answering = Answering { conn, object, held, staging };
                pager.data_request(object, offset, length, access, &mut answering)
            }
            KernelToPager::DataUnlock { offset, length, access } => {
                let mut answering = Answering { conn, object, held, staging: None };
                pager.data_unlock(object, offset, length, access, &mut answering)
            }
            KernelToPager::DataReturn { offset, data, dirty, kernel_copy } => {
                pager.data_return(object, offset, &data, dirty, kernel_copy);
                Ok(())
            }
            KernelToPager::Terminate => {
                pager.terminate(object);
                Ok(())
            }
        };
    }
}
