//! Basic VM types: protections, addresses, offsets, and the Mach error codes.
//!
//! Addresses and offsets are newtypes so that a task address can never be
//! passed where an object offset is meant. Every arithmetic helper is
//! checked: an overflow is an error (`KERN_INVALID_ARGUMENT`), never a wrap.
//!
//! Every type here that travels between processes is `Serialize` and
//! `Deserialize`, and decoding it is total: a protection keeps whatever
//! bits it was sent (the kernel refuses unknown ones with
//! `KERN_INVALID_ARGUMENT`, as it does for a local caller), and an error
//! code the decoder does not know reads as `KERN_FAILURE`.

use bitflags::bitflags;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The machine-independent page size, which the software MMU also uses as
/// its hardware page size (a hardware backend's pages must match it).
pub const PAGE_SIZE: u64 = 4096;

/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

bitflags! {
    /// `vm_prot_t`: what a mapping, a proxy window or a pager lock allows.
    ///
    /// It travels as its bits (a `u32`) in binary formats, unknown bits
    /// included; check it with [`VmProt::from_raw`] before trusting it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct VmProt: u32 {
        /// `VM_PROT_READ`
        const READ = 1;
        /// `VM_PROT_WRITE`
        const WRITE = 2;
        /// `VM_PROT_EXECUTE`
        const EXECUTE = 4;
        /// `VM_PROT_DEFAULT` (read and write)
        const DEFAULT = Self::READ.bits() | Self::WRITE.bits();
        /// `VM_PROT_ALL`
        const ALL = Self::READ.bits() | Self::WRITE.bits() | Self::EXECUTE.bits();
    }
}

impl VmProt {
    /// `VM_PROT_NONE`
    pub const NONE: VmProt = VmProt::empty();

    /// Decodes a protection received from a task or pager. Unknown bits are
    /// a `KERN_INVALID_ARGUMENT`, not silently dropped.
    pub fn from_raw(bits: u32) -> Result<VmProt> {
        VmProt::from_bits(bits).ok_or(KernError::InvalidArgument)
    }
}

/// `vm_inherit_t`: what a child task gets of a map entry at `task_create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmInherit {
    /// `VM_INHERIT_SHARE`: the child maps the same memory.
    Share,
    /// `VM_INHERIT_COPY`: the child gets a copy-on-write snapshot.
    Copy,
    /// `VM_INHERIT_NONE`: the child gets a hole.
    None,
}

impl VmInherit {
    /// Mach's default inheritance for new entries.
    pub const DEFAULT: VmInherit = VmInherit::Copy;
}

macro_rules! checked_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        ///
        /// It travels as its `u64`.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// `self + len`, or `KERN_INVALID_ARGUMENT` on overflow.
            pub fn checked_add(self, len: u64) -> Result<$name> {
                self.0.checked_add(len).map($name).ok_or(KernError::InvalidArgument)
            }
            /// `self - other`, or `KERN_INVALID_ARGUMENT` if `other > self`.
            pub fn checked_sub(self, other: $name) -> Result<u64> {
                self.0.checked_sub(other.0).ok_or(KernError::InvalidArgument)
            }
            /// Is this a multiple of the page size?
            pub fn is_page_aligned(self) -> bool {
                self.0 % PAGE_SIZE == 0
            }
            /// Rounded down to a page boundary.
            pub fn trunc_page(self) -> $name {
                $name(self.0 & !(PAGE_SIZE - 1))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }
    };
}

checked_newtype!(
    /// `vm_address_t`: an address in a task's address space.
    VmAddr
);
checked_newtype!(
    /// `vm_offset_t` used as a memory object offset.
    VmOffset
);

/// Rounds `len` up to whole pages; `KERN_INVALID_ARGUMENT` on overflow.
pub fn round_page(len: u64) -> Result<u64> {
    len.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1)).ok_or(KernError::InvalidArgument)
}

/// Is `v` a multiple of the page size?
pub fn page_aligned(v: u64) -> bool {
    v % PAGE_SIZE == 0
}

/// The Mach return codes a call can fail with. `KERN_SUCCESS` is `Ok`.
///
/// Each variant displays as its Mach name, so a Hurd developer reading a
/// log sees `KERN_PROTECTION_FAILURE`, not a Rust path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum KernError {
    #[error("KERN_INVALID_ADDRESS")]
    InvalidAddress,
    #[error("KERN_PROTECTION_FAILURE")]
    ProtectionFailure,
    #[error("KERN_NO_SPACE")]
    NoSpace,
    #[error("KERN_INVALID_ARGUMENT")]
    InvalidArgument,
    #[error("KERN_FAILURE")]
    Failure,
    #[error("KERN_RESOURCE_SHORTAGE")]
    ResourceShortage,
    #[error("KERN_NOT_RECEIVER")]
    NotReceiver,
    #[error("KERN_NO_ACCESS")]
    NoAccess,
    #[error("KERN_MEMORY_FAILURE")]
    MemoryFailure,
    #[error("KERN_MEMORY_ERROR")]
    MemoryError,
    #[error("KERN_NOT_IN_SET")]
    NotInSet,
    #[error("KERN_NAME_EXISTS")]
    NameExists,
    #[error("KERN_ABORTED")]
    Aborted,
    #[error("KERN_INVALID_NAME")]
    InvalidName,
    #[error("KERN_INVALID_TASK")]
    InvalidTask,
    #[error("KERN_INVALID_RIGHT")]
    InvalidRight,
    #[error("KERN_INVALID_VALUE")]
    InvalidValue,
    #[error("KERN_UREFS_OVERFLOW")]
    UrefsOverflow,
    #[error("KERN_INVALID_CAPABILITY")]
    InvalidCapability,
    #[error("KERN_NOT_SUPPORTED")]
    NotSupported,
    #[error("KERN_INVALID_HOST")]
    InvalidHost,
    #[error("KERN_TERMINATED")]
    Terminated,
    #[error("MACH_SEND_INVALID_DEST")]
    SendInvalidDest,
    #[error("MACH_SEND_INVALID_RIGHT")]
    SendInvalidRight,
    #[error("MACH_SEND_INVALID_REPLY")]
    SendInvalidReply,
    #[error("MACH_SEND_TIMED_OUT")]
    SendTimedOut,
    #[error("MACH_RCV_INVALID_NAME")]
    RcvInvalidName,
    #[error("MACH_RCV_PORT_DIED")]
    RcvPortDied,
    #[error("MACH_RCV_TIMED_OUT")]
    RcvTimedOut,
    #[error("MIG_BAD_ID")]
    MigBadId,
    #[error("MIG_BAD_ARGUMENTS")]
    MigBadArguments,
}

impl KernError {
    /// The Mach name, e.g. `"KERN_PROTECTION_FAILURE"`.
    pub fn mach_name(&self) -> String {
        self.to_string()
    }

    /// Mach's numeric `kern_return_t` for the error (as carried in a
    /// message such as `data_error` or `supply_completed`).
    pub fn code(&self) -> u32 {
        use KernError::*;
        match self {
            InvalidAddress => 1,
            ProtectionFailure => 2,
            NoSpace => 3,
            InvalidArgument => 4,
            Failure => 5,
            ResourceShortage => 6,
            NotReceiver => 7,
            NoAccess => 8,
            MemoryFailure => 9,
            MemoryError => 10,
            NotInSet => 12,
            NameExists => 13,
            Aborted => 14,
            InvalidName => 15,
            InvalidTask => 16,
            InvalidRight => 17,
            InvalidValue => 18,
            UrefsOverflow => 19,
            InvalidCapability => 20,
            NotSupported => 46,
            InvalidHost => 22,
            Terminated => 37,
            SendInvalidDest => 0x1000_0003,
            SendInvalidRight => 0x1000_0007,
            SendInvalidReply => 0x1000_0009,
            SendTimedOut => 0x1000_0004,
            RcvInvalidName => 0x1000_4002,
            RcvPortDied => 0x1000_4009,
            RcvTimedOut => 0x1000_4003,
            MigBadId => 303u32.wrapping_neg(),
            MigBadArguments => 304u32.wrapping_neg(),
        }
    }

    /// The error for a numeric code; unknown codes read as `KERN_FAILURE`.
    pub fn from_code(code: u32) -> KernError {
        use KernError::*;
        [
            InvalidAddress,
            ProtectionFailure,
            NoSpace,
            InvalidArgument,
            Failure,
            ResourceShortage,
            NotReceiver,
            NoAccess,
            MemoryFailure,
            MemoryError,
            NotInSet,
            NameExists,
            Aborted,
            InvalidName,
            InvalidTask,
            InvalidRight,
            InvalidValue,
            UrefsOverflow,
            InvalidCapability,
            NotSupported,
            InvalidHost,
            Terminated,
            SendInvalidDest,
            SendInvalidRight,
            SendInvalidReply,
            SendTimedOut,
            RcvInvalidName,
            RcvPortDied,
            RcvTimedOut,
            MigBadId,
            MigBadArguments,
        ]
        .into_iter()
        .find(|e| e.code() == code)
        .unwrap_or(Failure)
    }
}

/// A `KernError` travels as its numeric code ([`KernError::code`]), as a
/// `kern_return_t` does in a Mach message.
impl Serialize for KernError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.code())
    }
}

/// Decoding is total: a code this side does not know (a newer peer's, or
/// garbage) reads as `KERN_FAILURE` ([`KernError::from_code`]).
impl<'de> Deserialize<'de> for KernError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KernError, D::Error> {
        u32::deserialize(d).map(KernError::from_code)
    }
}

/// `kern_return_t` as a Rust result.
pub type Result<T, E = KernError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic_never_wraps() {
        assert_eq!(VmAddr(u64::MAX).checked_add(1), Err(KernError::InvalidArgument));
        assert_eq!(VmOffset(5).checked_sub(VmOffset(6)), Err(KernError::InvalidArgument));
        assert_eq!(round_page(u64::MAX), Err(KernError::InvalidArgument));
        assert_eq!(round_page(1), Ok(PAGE_SIZE));
        assert_eq!(VmProt::from_raw(8), Err(KernError::InvalidArgument));
        assert_eq!(KernError::ProtectionFailure.mach_name(), "KERN_PROTECTION_FAILURE");
    }

    #[test]
    fn errors_travel_as_codes_and_decode_totally() {
        for code in (0..64).chain([0x1000_0003, 0x1000_4003, 303u32.wrapping_neg(), u32::MAX]) {
            let e = KernError::from_code(code);
            let bytes = postcard::to_stdvec(&e).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&e.code()).unwrap(), "{e} travels as its code");
            assert_eq!(postcard::from_bytes::<KernError>(&bytes).unwrap(), e);
            // Any code decodes: unknown ones as KERN_FAILURE.
            let raw = postcard::to_stdvec(&code).unwrap();
            assert_eq!(postcard::from_bytes::<KernError>(&raw).unwrap(), e);
        }
        assert_eq!(KernError::from_code(11), KernError::Failure);
    }

    #[test]
    fn protections_addresses_and_inheritance_travel_as_numbers() {
        let p = VmProt::READ | VmProt::EXECUTE;
        assert_eq!(postcard::to_stdvec(&p).unwrap(), postcard::to_stdvec(&5u32).unwrap());
        // Unknown bits are carried for the kernel to refuse, not dropped.
        let odd: VmProt = postcard::from_bytes(&postcard::to_stdvec(&9u32).unwrap()).unwrap();
        assert_eq!(odd.bits(), 9);
        assert_eq!(VmProt::from_raw(odd.bits()), Err(KernError::InvalidArgument));
        let a = VmAddr(0xdead_b000);
        assert_eq!(postcard::to_stdvec(&a).unwrap(), postcard::to_stdvec(&a.0).unwrap());
        assert_eq!(postcard::from_bytes::<VmOffset>(&postcard::to_stdvec(&7u64).unwrap()).unwrap(), VmOffset(7));
        for i in [VmInherit::Share, VmInherit::Copy, VmInherit::None] {
            assert_eq!(postcard::from_bytes::<VmInherit>(&postcard::to_stdvec(&i).unwrap()).unwrap(), i);
        }
        assert!(postcard::from_bytes::<VmInherit>(&[3]).is_err());
    }
}
