//! The external memory management interface on the wire: message ids,
//! typed messages in both directions, and their encoding as message data.
//!
//! Kernel → pager messages go to the memory object port (the pager holds
//! its receive right); pager → kernel messages go to the control port (a
//! kernel object) the pager got in `init`. Replies (`lock_completed`,
//! `supply_completed`, `change_completed`, the `get_attributes` answer) go
//! to the reply port named in the request.
//!
//! Decoding is total: any byte string either decodes to a message whose
//! fields are in range or is `MIG_BAD_ARGUMENTS`; an unknown id is
//! `MIG_BAD_ID`. Nothing a pager sends can make the kernel panic.

use crate::types::{page_aligned, KernError, Result, VmProt, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// The most pages one `change_attributes` may ask per fault (and so the
/// longest `data_request` a pager can be sent).
pub const MAX_CLUSTER_PAGES: u32 = 256;

/// `memory_object_copy_strategy_t`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyStrategy {
    /// `MEMORY_OBJECT_COPY_NONE`: copies are made eagerly by the kernel,
    /// reading every page when the copy is made.
    None,
    /// `MEMORY_OBJECT_COPY_CALL`: not supported (the kernel never asks the
    /// pager to copy): `ready` and `change_attributes` refuse it
    /// with `KERN_INVALID_ARGUMENT`.
    Call,
    /// `MEMORY_OBJECT_COPY_DELAY`: copy-on-write through a copy object.
    Delay,
}

/// `memory_object_return_t`: which pages a `lock_request` sends back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReturnPolicy {
    /// `MEMORY_OBJECT_RETURN_NONE`
    None,
    /// `MEMORY_OBJECT_RETURN_DIRTY`
    Dirty,
    /// `MEMORY_OBJECT_RETURN_ALL` (dirty and precious)
    All,
}

/// Message ids, kernel → pager.
pub mod id {
    pub const INIT: u32 = 2200;
    pub const TERMINATE: u32 = 2201;
    pub const COPY: u32 = 2202;
    pub const DATA_REQUEST: u32 = 2203;
    pub const DATA_UNLOCK: u32 = 2204;
    pub const LOCK_COMPLETED: u32 = 2206;
    pub const SUPPLY_COMPLETED: u32 = 2207;
    pub const DATA_RETURN: u32 = 2208;
    pub const CHANGE_COMPLETED: u32 = 2209;
    /// `memory_object_create`, to the default pager.
    pub const CREATE: u32 = 2250;
    /// The answer to `get_attributes`.
    pub const ATTRIBUTES: u32 = 2290;

    // pager → kernel, on the control port
    pub const READY: u32 = 2093;
    pub const CHANGE_ATTRIBUTES: u32 = 2094;
    pub const DATA_SUPPLY: u32 = 2095;
    pub const DATA_UNAVAILABLE: u32 = 2096;
    pub const DATA_ERROR: u32 = 2097;
    pub const LOCK_REQUEST: u32 = 2098;
    pub const GET_ATTRIBUTES: u32 = 2099;
    pub const DESTROY: u32 = 2100;
    /// `data_supply` whose pages wait in the sender's staging area.
    pub const DATA_SUPPLY_STAGED: u32 = 2101;
}

/// A message from the kernel to a pager (or to the default pager).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelToPager {
    /// `memory_object_init`: the control port arrives as the message's
    /// first right.
    Init { page_size: u64 },
    /// `memory_object_terminate`
    Terminate,
    /// `memory_object_data_request`
    DataRequest { offset: u64, length: u64, access: VmProt },
    /// `memory_object_data_unlock`
    DataUnlock { offset: u64, length: u64, access: VmProt },
    /// `memory_object_data_return`
    DataReturn { offset: u64, data: Vec<u8>, dirty: bool, kernel_copy: bool },
    /// `memory_object_create` (default pager): rights are the new memory
    /// object's receive right, then the control port.
    Create { size: u64 },
}

/// A message from a pager to the kernel, on the control port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PagerToKernel {
    /// `memory_object_ready`
    Ready { may_cache: bool, copy_strategy: CopyStrategy },
    /// `memory_object_change_attributes`
    ChangeAttributes { may_cache: bool, copy_strategy: CopyStrategy, cluster_pages: u32 },
    /// `memory_object_data_supply`: whole pages.
    DataSupply { offset: u64, data: Vec<u8>, lock: VmProt, precious: bool },
    /// `memory_object_data_supply` of the `length` bytes (whole pages)
    /// that the sender put in its staging area at `staging_offset`: a
    /// buffer shared with the kernel's host, which copies the pages from
    /// there into the object, so that they never travel in a message
    /// (machvm's own call; see `machvm_protocol::wire::Call::StagingAttach`).
    /// At most [`MAX_CLUSTER_PAGES`] pages at once.
    DataSupplyStaged { offset: u64, length: u64, staging_offset: u64, lock: VmProt, precious: bool },
    /// `memory_object_data_unavailable`
    DataUnavailable { offset: u64, size: u64 },
    /// `memory_object_data_error`
    DataError { offset: u64, size: u64, reason: KernError },
    /// `memory_object_lock_request`
    LockRequest { offset: u64, size: u64, should_return: ReturnPolicy, should_flush: bool, lock: VmProt },
    /// `memory_object_get_attributes` (needs a reply port)
    GetAttributes,
    /// `memory_object_destroy`
    Destroy { reason: KernError },
}

/// Replies from the kernel, to a reply port a pager named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelReply {
    /// `memory_object_lock_completed`
    LockCompleted { offset: u64, length: u64 },
    /// `memory_object_supply_completed`
    SupplyCompleted { offset: u64, length: u64, result: Option<KernError>, error_offset: u64 },
    /// `memory_object_change_completed`
    ChangeCompleted { may_cache: bool, copy_strategy: CopyStrategy },
    /// The answer to `get_attributes`.
    Attributes { ready: bool, may_cache: bool, copy_strategy: CopyStrategy, cluster_pages: u32 },
}

// ----- encoding -----

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn flag(mut self, v: bool) -> Self {
        self.0.push(v as u8);
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self = self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(KernError::MigBadArguments);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn flag(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(KernError::MigBadArguments),
        }
    }
    fn prot(&mut self) -> Result<VmProt> {
        VmProt::from_bits(self.u32()?).ok_or(KernError::MigBadArguments)
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = usize::try_from(self.u64()?).map_err(|_| KernError::MigBadArguments)?;
        Ok(self.take(n)?.to_vec())
    }
    fn strategy(&mut self) -> Result<CopyStrategy> {
        match self.u32()? {
            0 => Ok(CopyStrategy::None),
            1 => Ok(CopyStrategy::Call),
            2 => Ok(CopyStrategy::Delay),
            _ => Err(KernError::MigBadArguments),
        }
    }
    fn end(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(KernError::MigBadArguments)
        }
    }
}

fn strategy_code(s: CopyStrategy) -> u32 {
    match s {
        CopyStrategy::None => 0,
        CopyStrategy::Call => 1,
        CopyStrategy::Delay => 2,
    }
}

impl KernelToPager {
    /// `(msgh_id, data)`
    pub fn encode(&self) -> (u32, Vec<u8>) {
        match self {
            KernelToPager::Init { page_size } => (id::INIT, Enc::default().u64(*page_size).0),
            KernelToPager::Terminate => (id::TERMINATE, Vec::new()),
            KernelToPager::DataRequest { offset, length, access } => {
                (id::DATA_REQUEST, Enc::default().u64(*offset).u64(*length).u32(access.bits()).0)
            }
            KernelToPager::DataUnlock { offset, length, access } => {
                (id::DATA_UNLOCK, Enc::default().u64(*offset).u64(*length).u32(access.bits()).0)
            }
            KernelToPager::DataReturn { offset, data, dirty, kernel_copy } => {
                (id::DATA_RETURN, Enc::default().u64(*offset).flag(*dirty).flag(*kernel_copy).bytes(data).0)
            }
            KernelToPager::Create { size } => (id::CREATE, Enc::default().u64(*size).0),
        }
    }

    /// Decodes a message a pager received. Whoever holds a send right to a
    /// memory object can send its pager anything, so ranges must be as the
    /// kernel sends them: whole pages, no overflow, and requests of at most
    /// [`MAX_CLUSTER_PAGES`] pages (`MIG_BAD_ARGUMENTS` otherwise).
    pub fn decode(msg_id: u32, data: &[u8]) -> Result<KernelToPager> {
        let mut d = Dec(data);
        let m = match msg_id {
            id::INIT => KernelToPager::Init { page_size: d.u64()? },
            id::TERMINATE => KernelToPager::Terminate,
            id::DATA_REQUEST => KernelToPager::DataRequest { offset: d.u64()?, length: d.u64()?, access: d.prot()? },
            id::DATA_UNLOCK => KernelToPager::DataUnlock { offset: d.u64()?, length: d.u64()?, access: d.prot()? },
            id::DATA_RETURN => {
                let offset = d.u64()?;
                let dirty = d.flag()?;
                let kernel_copy = d.flag()?;
                KernelToPager::DataReturn { offset, dirty, kernel_copy, data: d.bytes()? }
            }
            id::CREATE => KernelToPager::Create { size: d.u64()? },
            _ => return Err(KernError::MigBadId),
        };
        d.end()?;
        match &m {
            KernelToPager::DataRequest { offset, length, .. } | KernelToPager::DataUnlock { offset, length, .. } => {
                whole_pages(*offset, *length, u64::from(MAX_CLUSTER_PAGES) * PAGE_SIZE)?
            }
            KernelToPager::DataReturn { offset, data, .. } => whole_pages(*offset, data.len() as u64, u64::MAX)?,
            _ => {}
        }
        Ok(m)
    }
}

/// Is `[offset, offset + len)` a nonempty run of whole pages of at most
/// `max` bytes, without overflow?
fn whole_pages(offset: u64, len: u64, max: u64) -> Result<()> {
    let ok = page_aligned(offset) && page_aligned(len) && len != 0 && len <= max && offset.checked_add(len).is_some();
    if ok {
        Ok(())
    } else {
        Err(KernError::MigBadArguments)
    }
}

impl PagerToKernel {
    /// `(msgh_id, data)`
    pub fn encode(&self) -> (u32, Vec<u8>) {
        match self {
            PagerToKernel::Ready { may_cache, copy_strategy } => {
                (id::READY, Enc::default().flag(*may_cache).u32(strategy_code(*copy_strategy)).0)
            }
            PagerToKernel::ChangeAttributes { may_cache, copy_strategy, cluster_pages } => (
                id::CHANGE_ATTRIBUTES,
                Enc::default().flag(*may_cache).u32(strategy_code(*copy_strategy)).u32(*cluster_pages).0,
            ),
            PagerToKernel::DataSupply { offset, data, lock, precious } => {
                (id::DATA_SUPPLY, Enc::default().u64(*offset).u32(lock.bits()).flag(*precious).bytes(data).0)
            }
            PagerToKernel::DataSupplyStaged { offset, length, staging_offset, lock, precious } => (
                id::DATA_SUPPLY_STAGED,
                Enc::default().u64(*offset).u64(*length).u64(*staging_offset).u32(lock.bits()).flag(*precious).0,
            ),
            PagerToKernel::DataUnavailable { offset, size } => {
                (id::DATA_UNAVAILABLE, Enc::default().u64(*offset).u64(*size).0)
            }
            PagerToKernel::DataError { offset, size, reason } => {
                (id::DATA_ERROR, Enc::default().u64(*offset).u64(*size).u32(reason.code()).0)
            }
            PagerToKernel::LockRequest { offset, size, should_return, should_flush, lock } => {
                let r = match should_return {
                    ReturnPolicy::None => 0,
                    ReturnPolicy::Dirty => 1,
                    ReturnPolicy::All => 2,
                };
                (id::LOCK_REQUEST, Enc::default().u64(*offset).u64(*size).u32(r).flag(*should_flush).u32(lock.bits()).0)
            }
            PagerToKernel::GetAttributes => (id::GET_ATTRIBUTES, Vec::new()),
            PagerToKernel::Destroy { reason } => (id::DESTROY, Enc::default().u32(reason.code()).0),
        }
    }

    /// Decodes a message that arrived on a control port.
    pub fn decode(msg_id: u32, data: &[u8]) -> Result<PagerToKernel> {
        let mut d = Dec(data);
        let m = match msg_id {
            id::READY => PagerToKernel::Ready { may_cache: d.flag()?, copy_strategy: d.strategy()? },
            id::CHANGE_ATTRIBUTES => PagerToKernel::ChangeAttributes {
                may_cache: d.flag()?,
                copy_strategy: d.strategy()?,
                cluster_pages: d.u32()?,
            },
            id::DATA_SUPPLY => {
                let offset = d.u64()?;
                let lock = d.prot()?;
                let precious = d.flag()?;
                PagerToKernel::DataSupply { offset, lock, precious, data: d.bytes()? }
            }
            id::DATA_SUPPLY_STAGED => PagerToKernel::DataSupplyStaged {
                offset: d.u64()?,
                length: d.u64()?,
                staging_offset: d.u64()?,
                lock: d.prot()?,
                precious: d.flag()?,
            },
            id::DATA_UNAVAILABLE => PagerToKernel::DataUnavailable { offset: d.u64()?, size: d.u64()? },
            id::DATA_ERROR => {
                PagerToKernel::DataError { offset: d.u64()?, size: d.u64()?, reason: KernError::from_code(d.u32()?) }
            }
            id::LOCK_REQUEST => {
                let offset = d.u64()?;
                let size = d.u64()?;
                let should_return = match d.u32()? {
                    0 => ReturnPolicy::None,
                    1 => ReturnPolicy::Dirty,
                    2 => ReturnPolicy::All,
                    _ => return Err(KernError::MigBadArguments),
                };
                PagerToKernel::LockRequest { offset, size, should_return, should_flush: d.flag()?, lock: d.prot()? }
            }
            id::GET_ATTRIBUTES => PagerToKernel::GetAttributes,
            id::DESTROY => PagerToKernel::Destroy { reason: KernError::from_code(d.u32()?) },
            _ => return Err(KernError::MigBadId),
        };
        d.end()?;
        Ok(m)
    }
}

impl KernelReply {
    /// `(msgh_id, data)`
    pub fn encode(&self) -> (u32, Vec<u8>) {
        match self {
            KernelReply::LockCompleted { offset, length } => {
                (id::LOCK_COMPLETED, Enc::default().u64(*offset).u64(*length).0)
            }
            KernelReply::SupplyCompleted { offset, length, result, error_offset } => (
                id::SUPPLY_COMPLETED,
                Enc::default().u64(*offset).u64(*length).u32(result.map_or(0, |e| e.code())).u64(*error_offset).0,
            ),
            KernelReply::ChangeCompleted { may_cache, copy_strategy } => {
                (id::CHANGE_COMPLETED, Enc::default().flag(*may_cache).u32(strategy_code(*copy_strategy)).0)
            }
            KernelReply::Attributes { ready, may_cache, copy_strategy, cluster_pages } => (
                id::ATTRIBUTES,
                Enc::default().flag(*ready).flag(*may_cache).u32(strategy_code(*copy_strategy)).u32(*cluster_pages).0,
            ),
        }
    }

    /// Decodes a reply a pager received.
    pub fn decode(msg_id: u32, data: &[u8]) -> Result<KernelReply> {
        let mut d = Dec(data);
        let m = match msg_id {
            id::LOCK_COMPLETED => KernelReply::LockCompleted { offset: d.u64()?, length: d.u64()? },
            id::SUPPLY_COMPLETED => {
                let offset = d.u64()?;
                let length = d.u64()?;
                let code = d.u32()?;
                KernelReply::SupplyCompleted {
                    offset,
                    length,
                    result: (code != 0).then(|| KernError::from_code(code)),
                    error_offset: d.u64()?,
                }
            }
            id::CHANGE_COMPLETED => KernelReply::ChangeCompleted { may_cache: d.flag()?, copy_strategy: d.strategy()? },
            id::ATTRIBUTES => KernelReply::Attributes {
                ready: d.flag()?,
                may_cache: d.flag()?,
                copy_strategy: d.strategy()?,
                cluster_pages: d.u32()?,
            },
            _ => return Err(KernError::MigBadId),
        };
        d.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let k = [
            KernelToPager::Init { page_size: 4096 },
            KernelToPager::Terminate,
            KernelToPager::DataRequest { offset: 8192, length: 4096, access: VmProt::READ },
            KernelToPager::DataUnlock { offset: 0, length: 4096, access: VmProt::WRITE },
            KernelToPager::DataReturn { offset: 4096, data: vec![7; 4096], dirty: true, kernel_copy: false },
            KernelToPager::Create { size: 1 << 20 },
        ];
        for m in k {
            let (i, d) = m.encode();
            assert_eq!(KernelToPager::decode(i, &d), Ok(m));
        }
        let p = [
            PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Delay },
            PagerToKernel::ChangeAttributes { may_cache: false, copy_strategy: CopyStrategy::None, cluster_pages: 16 },
            PagerToKernel::DataSupply { offset: 0, data: vec![1; 8192], lock: VmProt::WRITE, precious: true },
            PagerToKernel::DataSupplyStaged {
                offset: 1 << 20,
                length: 8192,
                staging_offset: 4096,
                lock: VmProt::READ,
                precious: false,
            },
            PagerToKernel::DataUnavailable { offset: 4096, size: 4096 },
            PagerToKernel::DataError { offset: 0, size: 4096, reason: KernError::MemoryError },
            PagerToKernel::LockRequest {
                offset: 0,
                size: 1 << 16,
                should_return: ReturnPolicy::Dirty,
                should_flush: true,
                lock: VmProt::NONE,
            },
            PagerToKernel::GetAttributes,
            PagerToKernel::Destroy { reason: KernError::Terminated },
        ];
        for m in p {
            let (i, d) = m.encode();
            assert_eq!(PagerToKernel::decode(i, &d), Ok(m));
        }
        let r = [
            KernelReply::LockCompleted { offset: 0, length: 4096 },
            KernelReply::SupplyCompleted {
                offset: 0,
                length: 4096,
                result: Some(KernError::InvalidArgument),
                error_offset: 0,
            },
            KernelReply::ChangeCompleted { may_cache: true, copy_strategy: CopyStrategy::Call },
            KernelReply::Attributes {
                ready: true,
                may_cache: false,
                copy_strategy: CopyStrategy::Delay,
                cluster_pages: 4,
            },
        ];
        for m in r {
            let (i, d) = m.encode();
            assert_eq!(KernelReply::decode(i, &d), Ok(m));
        }
    }

    #[test]
    fn malformed_messages_are_refused_not_trusted() {
        let (i, d) =
            PagerToKernel::DataSupply { offset: 0, data: vec![1; 4096], lock: VmProt::NONE, precious: false }.encode();
        for cut in [0, 5, 12, d.len() - 1] {
            assert_eq!(PagerToKernel::decode(i, &d[..cut]), Err(KernError::MigBadArguments));
        }
        let mut long = d.clone();
        long.push(0);
        assert_eq!(PagerToKernel::decode(i, &long), Err(KernError::MigBadArguments));
        // A length field claiming more than the message holds.
        let mut lie = d.clone();
        lie[13..21].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(PagerToKernel::decode(i, &lie), Err(KernError::MigBadArguments));
        // Unknown protection bits, bad flags, unknown ids.
        let (i2, mut d2) = PagerToKernel::LockRequest {
            offset: 0,
            size: 1,
            should_return: ReturnPolicy::None,
            should_flush: false,
            lock: VmProt::NONE,
        }
        .encode();
        d2[20] = 9;
        assert_eq!(PagerToKernel::decode(i2, &d2), Err(KernError::MigBadArguments));
        assert_eq!(PagerToKernel::decode(9999, &[]), Err(KernError::MigBadId));
    }
}
