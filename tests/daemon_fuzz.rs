//! A bounded fuzz run against a live `machvmd`: random and mutated frames
//! from many connections at once, each checked against what the protocol
//! promises, then the daemon checked for health and for leaks.
//!
//! What each connection may get back is worked out from the bytes it
//! sends, by cutting them into frames with the protocol's own
//! `FrameDecoder` (the framing the daemon applies): a call that decodes and
//! passes its checks gets a reply with its `seq` (a result or a Mach
//! error), a frame that does not decode, a second hello or a call over the
//! wire limits gets a `ProtocolError` and then a close; nothing else ever
//! comes, and nothing ever hangs: every read has a deadline, a call that
//! may legitimately wait (a receive with no message, a fault on memory no
//! pager serves) is given a short grace and then the peer half-closes,
//! after which the daemon must answer what is left and close.
//!
//! Afterwards the daemon must still be alive, serve a new client (an
//! anonymous round trip, a zero pager's object mapped and read), list only
//! the live connections as tasks, have dropped the names the fuzz
//! registered, and be back near its object and proxy counts; a bystander
//! client that worked throughout must have seen only correct data.
//!
//! The run is short in the normal suite; `MACHVM_FUZZ_SECS=N` runs each
//! test for N seconds. Every connection's bytes come from a seed derived
//! from the run's seed (`MACHVM_FUZZ_SEED`, fixed by default, random when
//! `MACHVM_FUZZ_SECS` is set); a failure names the connection's seed, and
//! `MACHVM_FUZZ_REPLAY=<seed>` replays that one connection alone
//! (`MACHVM_FUZZ_TRACE=1` prints each call and its result).
//!
//! The last tests, ignored, are defects this work found: each fails
//! against the daemon as it is, and says why.

mod common;
use common::daemon::{
    client, daemon, pager, stat, threads_and_fds, wait_threads_and_fds_back, wait_until, Dir, Proc, Watchdog,
};
use machvm_client::{map_anywhere, ClientError, Connection};
use machvm_protocol::emmi::{id as emmi_id, CopyStrategy, PagerToKernel, ReturnPolicy};
use machvm_protocol::frame::{encode_frame, FrameDecoder, FrameError, MAX_FRAME};
use machvm_protocol::ipc::{Disposition, PortName, RightKind};
use machvm_protocol::wire::{
    Call, Event, InspectWhat, MapArgs, NotifyKind, ProxyVersion, Reply, Request, Response, Role, SendArgs, MAX_DATA,
    MAX_NAME_LEN, MAX_PROXY_ENTRIES, MAX_RIGHTS, PROTOCOL_VERSION,
};
use machvm_protocol::{KernError, VmAddr, VmInherit, VmOffset, VmProt, PAGE_SIZE};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;
/// One past the highest user address.
const TOP: u64 = 1 << 47;
/// How long an answer may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a call that may legitimately wait gets before the peer gives up.
const GRACE: Duration = Duration::from_millis(150);
/// Fuzz connections running at once in each test.
const WORKERS: u64 = 3;

// ----- the run's settings -----

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// How long each test fuzzes: `MACHVM_FUZZ_SECS`, else `default`.
fn budget(default: Duration) -> Duration {
    match std::env::var("MACHVM_FUZZ_SECS").ok().and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(s) if s > 0.0 => Duration::from_secs_f64(s),
        _ => default,
    }
}

/// The run's seed: `MACHVM_FUZZ_SEED`; else random for a long run, fixed
/// for the normal suite (so that it fails the same way twice).
fn base_seed() -> u64 {
    if let Some(s) = env_u64("MACHVM_FUZZ_SEED") {
        return s;
    }
    if std::env::var_os("MACHVM_FUZZ_SECS").is_some() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return mix(t.as_nanos() as u64, u64::from(std::process::id()));
    }
    0x6d61_6368_766d_0001
}

/// `MACHVM_FUZZ_TRACE` prints every call answered and its result (for a
/// replay).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MACHVM_FUZZ_TRACE").is_some())
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ----- a small deterministic generator -----

/// xorshift64*, seeded through splitmix. `sane` asks the argument
/// generators for plausible values (known addresses, small aligned sizes,
/// valid protections and rights), to get past the kernel's first checks.
struct Rng {
    x: u64,
    sane: bool,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng { x: mix(seed, 0x5eed) | 1, sane: false }
    }
    fn u64(&mut self) -> u64 {
        let mut x = self.x;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.x = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }
    /// `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.u64() % n
        }
    }
    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64 + 1) as usize
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn coin(&mut self) -> bool {
        self.u64() & 1 == 1
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

// ----- what a fuzz connection knows about its task -----

#[derive(Default, Clone)]
struct State {
    /// Names the task has been given (any right).
    names: Vec<PortName>,
    /// Receive rights it allocated.
    receive: Vec<PortName>,
    /// Memory objects served by a live pager (the zero pager's object, and
    /// proxies over only such objects).
    served: BTreeSet<PortName>,
    /// Control ports received in an `init` (the task pages an object of
    /// its own).
    controls: Vec<PortName>,
    /// Addresses the kernel returned.
    addrs: Vec<VmAddr>,
    /// Proxies and revoke rights the kernel made.
    proxies: Vec<PortName>,
    revokes: Vec<PortName>,
    /// Child tokens from `task_create`.
    tokens: Vec<u64>,
    host_priv: Option<PortName>,
    /// The task maps memory no live pager serves: its accesses may wait.
    tainted: bool,
}

impl State {
    fn learn(&mut self, n: PortName) {
        if !self.names.contains(&n) && self.names.len() < 256 {
            self.names.push(n);
        }
    }
    /// A name whose right may have gone (or been renamed): no longer known
    /// to be served.
    fn forget(&mut self, n: PortName) {
        self.served.remove(&n);
    }
}

// ----- random arguments -----

fn addr(r: &mut Rng, st: &State) -> VmAddr {
    if r.sane && !st.addrs.is_empty() {
        return VmAddr(r.pick(&st.addrs).0 + r.below(8) * P);
    }
    match r.below(12) {
        0..=4 if !st.addrs.is_empty() => {
            let a = r.pick(&st.addrs).0;
            let off = match r.below(4) {
                0 => 0,
                1 => r.below(16) * P,
                2 => r.below(64 * P),
                _ => r.pick(&[1, P - 1, P + 1]),
            };
            VmAddr(a.wrapping_add(off))
        }
        5 | 6 => VmAddr(r.pick(&[
            0,
            1,
            P - 1,
            P,
            0x1_0000,
            0x1_0001,
            TOP - P,
            TOP - 1,
            TOP,
            TOP + P,
            u64::MAX,
            u64::MAX - P + 1,
            1 << 63,
        ])),
        7 => VmAddr(r.u64()),
        8 => VmAddr(r.below(TOP / P) * P),
        9 => VmAddr(r.below(TOP)),
        _ => VmAddr(0x1_0000 + r.below(1 << 18) * P),
    }
}

fn size(r: &mut Rng) -> u64 {
    if r.sane {
        return (1 + r.below(8)) * P;
    }
    match r.below(14) {
        0 => 0,
        1 => r.pick(&[1, P - 1, P + 1, 2 * P - 1]),
        2..=5 => (1 + r.below(16)) * P,
        6 => MAX_DATA as u64,
        7 => MAX_DATA as u64 + r.pick(&[1, P]),
        8 => r.pick(&[TOP, TOP - P, TOP + P]),
        9 => r.pick(&[u64::MAX, u64::MAX - P + 1, u64::MAX / 2 + 1, 1 << 63]),
        10 => r.u64(),
        11 => r.below(1 << 28) * P,
        _ => r.below(1 << 20),
    }
}

/// A length for a read, a load or data: mostly small, sometimes at or
/// just over the wire limit.
fn len(r: &mut Rng) -> usize {
    if r.sane {
        return r.pick(&[1, 8, 100, P as usize, 3 * P as usize]);
    }
    match r.below(20) {
        0 => 0,
        1 => MAX_DATA,
        2 => MAX_DATA + 1,
        3 => MAX_DATA - r.upto(P as usize),
        4..=7 => r.pick(&[P as usize, 2 * P as usize, 1, 8]),
        8 => r.upto(64 << 10),
        _ => r.upto(128),
    }
}

fn data(r: &mut Rng) -> Vec<u8> {
    let n = len(r);
    if r.coin() {
        vec![r.u32() as u8; n]
    } else {
        r.bytes(n)
    }
}

fn name(r: &mut Rng, st: &State) -> PortName {
    if r.sane && !st.names.is_empty() {
        return r.pick(&st.names);
    }
    match r.below(10) {
        0..=5 if !st.names.is_empty() => r.pick(&st.names),
        6 => PortName(r.pick(&[0, 1, u32::MAX, u32::MAX - 1, 1 << 31])),
        7 => PortName(r.u32()),
        _ => PortName(r.below(64) as u32),
    }
}

fn object(r: &mut Rng, st: &State) -> Option<PortName> {
    let served: Vec<PortName> = st.served.iter().copied().collect();
    match r.below(8) {
        0 => None,
        1..=4 if !served.is_empty() => Some(r.pick(&served)),
        _ => Some(name(r, st)),
    }
}

fn prot(r: &mut Rng) -> VmProt {
    if r.sane {
        return r.pick(&[VmProt::READ, VmProt::DEFAULT, VmProt::ALL, VmProt::READ | VmProt::EXECUTE]);
    }
    match r.below(8) {
        0 => VmProt::from_bits_retain(r.u32()),
        1 => VmProt::from_bits_retain(8 << r.below(28)),
        _ => VmProt::from_bits_retain(r.below(8) as u32),
    }
}

fn inherit(r: &mut Rng) -> VmInherit {
    r.pick(&[VmInherit::Share, VmInherit::Copy, VmInherit::None])
}

fn disposition(r: &mut Rng) -> Disposition {
    r.pick(&[
        Disposition::MoveReceive,
        Disposition::MoveSend,
        Disposition::MoveSendOnce,
        Disposition::CopySend,
        Disposition::MakeSend,
        Disposition::MakeSendOnce,
    ])
}

fn timeout(r: &mut Rng) -> Option<u64> {
    if r.sane {
        return Some(r.below(3));
    }
    match r.below(12) {
        0 => None,
        1 => Some(u64::MAX),
        2 => Some(r.u64()),
        3..=6 => Some(0),
        _ => Some(r.below(20)),
    }
}

fn text(r: &mut Rng) -> String {
    match r.below(10) {
        0 => String::new(),
        1 => "zero".into(),
        2 => "n".repeat(MAX_NAME_LEN),
        3 => "n".repeat(MAX_NAME_LEN + 1),
        4 => "\u{e9}".repeat(MAX_NAME_LEN.div_ceil(2)),
        5 => "\u{0}\u{7f}\u{ffff}\u{10ffff}".into(),
        6 | 7 => {
            let n = 1 + r.upto(15);
            let s: String = (0..n).map(|_| (b'a' + r.below(26) as u8) as char).collect();
            format!("fz-{s}")
        }
        _ => (0..1 + r.upto(40)).filter_map(|_| char::from_u32(r.u32() % 0x11_0000)).collect(),
    }
}

fn kern_error(r: &mut Rng) -> KernError {
    let any = r.u32();
    KernError::from_code(r.pick(&[1, 2, 5, 9, 10, 14, 37, any]))
}

/// A pager → kernel message, valid or mangled, for a control port.
fn emmi(r: &mut Rng) -> (u32, Vec<u8>) {
    let strategy = |r: &mut Rng| r.pick(&[CopyStrategy::None, CopyStrategy::Call, CopyStrategy::Delay]);
    let m = match r.below(8) {
        0 => PagerToKernel::Ready { may_cache: r.coin(), copy_strategy: strategy(r) },
        1 => PagerToKernel::ChangeAttributes {
            may_cache: r.coin(),
            copy_strategy: strategy(r),
            cluster_pages: r.pick(&[0, 1, 16, 256, 257, u32::MAX]),
        },
        2 => {
            let n = r.pick(&[0, 1, P as usize - 1, P as usize, 2 * P as usize, 16 * P as usize]);
            PagerToKernel::DataSupply {
                offset: if r.coin() { r.below(32) * P } else { size(r) },
                data: vec![r.u32() as u8; n],
                lock: prot(r),
                precious: r.coin(),
            }
        }
        3 => PagerToKernel::DataUnavailable { offset: size(r), size: size(r) },
        4 => PagerToKernel::DataError { offset: size(r), size: size(r), reason: kern_error(r) },
        5 => PagerToKernel::LockRequest {
            offset: size(r),
            size: size(r),
            should_return: r.pick(&[ReturnPolicy::None, ReturnPolicy::Dirty, ReturnPolicy::All]),
            should_flush: r.coin(),
            lock: prot(r),
        },
        6 => PagerToKernel::GetAttributes,
        _ => PagerToKernel::Destroy { reason: kern_error(r) },
    };
    let (mut id, mut data) = m.encode();
    match r.below(10) {
        0 => data.truncate(r.upto(data.len())),
        1 => {
            let n = 1 + r.upto(8);
            data.extend(r.bytes(n));
        }
        2 if !data.is_empty() => {
            let i = r.below(data.len() as u64) as usize;
            data[i] ^= 1 << r.below(8);
        }
        3 => {
            let any = r.u32();
            id = r.pick(&[emmi_id::READY - 1, emmi_id::DESTROY + 1, emmi_id::INIT, emmi_id::DATA_REQUEST, any]);
        }
        _ => {}
    }
    (id, data)
}

fn send_args(r: &mut Rng, st: &State) -> SendArgs {
    if r.sane && !st.receive.is_empty() {
        // A message to one of its own ports, carrying rights it holds.
        let dest = r.pick(&st.receive);
        let mut rights = Vec::new();
        for _ in 0..r.upto(3) {
            let right = match r.below(4) {
                0 => (r.pick(&st.receive), Disposition::MakeSend),
                1 => (r.pick(&st.receive), Disposition::MakeSendOnce),
                2 if !st.proxies.is_empty() => (r.pick(&st.proxies), Disposition::CopySend),
                _ => match st.served.iter().next() {
                    Some(&n) => (n, Disposition::CopySend),
                    None => (dest, Disposition::MakeSend),
                },
            };
            rights.push(right);
        }
        let data = data(r);
        return SendArgs {
            dest,
            dest_disposition: Disposition::MakeSend,
            reply: if r.coin() { Some((r.pick(&st.receive), Disposition::MakeSendOnce)) } else { None },
            id: r.u32() % 1000,
            data,
            rights,
            timeout_ms: Some(0),
        };
    }
    let to_control = !st.controls.is_empty() && r.coin();
    let dest = if to_control { r.pick(&st.controls) } else { name(r, st) };
    let (id, data) = if to_control || r.one_in(4) { emmi(r) } else { (r.u32(), data(r)) };
    let nrights = match r.below(10) {
        0 => MAX_RIGHTS,
        1 => MAX_RIGHTS + 1,
        2..=4 => 1 + r.upto(3),
        _ => 0,
    };
    let rights = (0..nrights).map(|_| (name(r, st), disposition(r))).collect();
    let reply = match r.below(3) {
        0 => None,
        1 if !st.receive.is_empty() => Some((r.pick(&st.receive), Disposition::MakeSendOnce)),
        _ => Some((name(r, st), disposition(r))),
    };
    SendArgs {
        dest,
        dest_disposition: if r.one_in(3) { disposition(r) } else { Disposition::CopySend },
        reply,
        id,
        data,
        rights,
        timeout_ms: timeout(r),
    }
}

fn proxy_create(r: &mut Rng, st: &State) -> Call {
    let served: Vec<PortName> = st.served.iter().copied().collect();
    if r.sane && !served.is_empty() {
        let n = 1 + r.upto(2) as u64;
        return Call::ProxyCreate {
            max: prot(r),
            objects: (0..n).map(|_| r.pick(&served)).collect(),
            offsets: (0..n).map(|i| i * 4 * P).collect(),
            starts: (0..n).map(|_| r.below(4) * P).collect(),
            lens: (0..n).map(|_| (1 + r.below(4)) * P).collect(),
            version: r.pick(&[None, Some(ProxyVersion::Mapping), Some(ProxyVersion::Paging)]),
        };
    }
    let n = match r.below(16) {
        0 => 0,
        1 => 4096 + r.upto(1),
        2 => MAX_PROXY_ENTRIES + r.upto(1),
        3 => r.upto(300),
        _ => 1 + r.upto(3),
    };
    let big = n > 16;
    let mut objects = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut lens = Vec::with_capacity(n);
    for i in 0..n as u64 {
        if big {
            // Regular windows, to reach the kernel's window limit.
            objects.push(object(r, st).unwrap_or(PortName(1)));
            offsets.push(i * P);
            starts.push(0);
            lens.push(P);
        } else if r.one_in(3) {
            objects.push(name(r, st));
            offsets.push(size(r));
            starts.push(size(r));
            lens.push(size(r));
        } else {
            objects.push(object(r, st).unwrap_or(PortName(1)));
            offsets.push(i * 4 * P + r.below(2) * P);
            starts.push(r.below(8) * P);
            lens.push((1 + r.below(4)) * P);
        }
    }
    // Arrays of different lengths are the kernel's to refuse.
    if r.one_in(8) {
        match r.below(4) {
            0 => objects.truncate(r.upto(n)),
            1 => offsets.push(0),
            2 => starts.truncate(r.upto(n)),
            _ => lens.push(P),
        }
    }
    let version = r.pick(&[None, None, Some(ProxyVersion::Mapping), Some(ProxyVersion::Paging)]);
    Call::ProxyCreate { max: prot(r), objects, offsets, starts, lens, version }
}

/// The number of [`Call`] variants; [`gen_call`] picks each by its index.
const VARIANTS: u64 = 35;

fn variant(call: &Call) -> u64 {
    match call {
        Call::VmAllocate { .. } => 0,
        Call::VmMap(_) => 1,
        Call::VmDeallocate { .. } => 2,
        Call::VmProtect { .. } => 3,
        Call::VmInherit { .. } => 4,
        Call::VmRegion { .. } => 5,
        Call::VmRead { .. } => 6,
        Call::VmWrite { .. } => 7,
        Call::VmCopy { .. } => 8,
        Call::Load { .. } => 9,
        Call::Store { .. } => 10,
        Call::Execute { .. } => 11,
        Call::TaskCreate { .. } => 12,
        Call::PortAllocate => 13,
        Call::PortSetAllocate => 14,
        Call::PortMoveMember { .. } => 15,
        Call::PortMakeSend { .. } => 16,
        Call::PortDeallocate { .. } => 17,
        Call::PortDestroy { .. } => 18,
        Call::PortModRefs { .. } => 19,
        Call::PortLookup { .. } => 20,
        Call::PortRequestNotification { .. } => 21,
        Call::MsgSend(_) => 22,
        Call::MsgReceive { .. } => 23,
        Call::ProxyCreate { .. } => 24,
        Call::RegionProxy { .. } => 25,
        Call::ProxyRevoke { .. } => 26,
        Call::ProxyInfo { .. } => 27,
        Call::SetDefaultMemoryManager { .. } => 28,
        Call::NameRegister { .. } => 29,
        Call::NameLookup { .. } => 30,
        Call::Inspect(_) => 31,
        Call::MsgSendReceive { .. } => 32,
        Call::MemoryAttach { .. } => 33,
        Call::StagingAttach { .. } => 34,
    }
}

/// A call of variant `v` with random, often extreme, arguments.
fn gen_call(r: &mut Rng, st: &State, v: u64) -> Call {
    match v {
        0 => Call::VmAllocate { address: addr(r, st), size: size(r), anywhere: r.coin() },
        1 if r.sane => Call::VmMap(MapArgs {
            object: object(r, st),
            copy: r.one_in(4),
            cur: prot(r),
            inherit: inherit(r),
            ..map_anywhere(size(r), None)
        }),
        1 => Call::VmMap(MapArgs {
            address: addr(r, st),
            size: size(r),
            mask: {
                let any = r.u64();
                r.pick(&[0, 0, P - 1, (1 << 20) - 1, u64::MAX, any])
            },
            anywhere: !r.one_in(4),
            object: object(r, st),
            offset: VmOffset(if r.coin() { r.below(16) * P } else { size(r) }),
            copy: r.one_in(4),
            cur: prot(r),
            max: prot(r),
            inherit: inherit(r),
        }),
        2 => Call::VmDeallocate { address: addr(r, st), size: size(r) },
        3 => Call::VmProtect { address: addr(r, st), size: size(r), set_max: r.coin(), prot: prot(r) },
        4 => Call::VmInherit { address: addr(r, st), size: size(r), inherit: inherit(r) },
        5 => Call::VmRegion { address: addr(r, st) },
        6 => Call::VmRead { address: addr(r, st), size: if r.one_in(8) { size(r) } else { len(r) as u64 } },
        7 => Call::VmWrite { address: addr(r, st), data: data(r) },
        8 => Call::VmCopy { source: addr(r, st), size: size(r), dest: addr(r, st) },
        9 => Call::Load { address: addr(r, st), len: if r.one_in(10) { r.u32() } else { len(r) as u32 } },
        10 => Call::Store { address: addr(r, st), data: data(r) },
        11 => Call::Execute { address: addr(r, st) },
        12 => Call::TaskCreate { inherit_memory: r.coin() },
        13 => Call::PortAllocate,
        14 => Call::PortSetAllocate,
        15 => Call::PortMoveMember { member: name(r, st), set: if r.one_in(3) { None } else { Some(name(r, st)) } },
        16 => Call::PortMakeSend { name: name(r, st) },
        17 => Call::PortDeallocate { name: name(r, st) },
        18 => Call::PortDestroy { name: name(r, st) },
        19 => Call::PortModRefs {
            name: name(r, st),
            right: r.pick(&[RightKind::Receive, RightKind::Send, RightKind::SendOnce, RightKind::DeadName]),
            delta: {
                let any = r.u32() as i32;
                r.pick(&[0, 1, -1, 2, i32::MAX, i32::MIN, any])
            },
        },
        20 => Call::PortLookup { name: name(r, st) },
        21 => Call::PortRequestNotification {
            name: name(r, st),
            kind: r.pick(&[NotifyKind::NoSenders, NotifyKind::DeadName]),
            notify: name(r, st),
        },
        22 => Call::MsgSend(send_args(r, st)),
        23 => Call::MsgReceive {
            name: if !st.receive.is_empty() && r.coin() { r.pick(&st.receive) } else { name(r, st) },
            timeout_ms: timeout(r),
        },
        24 => proxy_create(r, st),
        25 => Call::RegionProxy { address: addr(r, st), max: prot(r), len: size(r) },
        26 => Call::ProxyRevoke {
            revoke: if !st.revokes.is_empty() && r.coin() { r.pick(&st.revokes) } else { name(r, st) },
        },
        27 => Call::ProxyInfo {
            proxy: if !st.proxies.is_empty() && r.coin() { r.pick(&st.proxies) } else { name(r, st) },
        },
        28 => Call::SetDefaultMemoryManager {
            host_priv: match st.host_priv {
                Some(h) if r.coin() => h,
                _ => name(r, st),
            },
            manager: name(r, st),
        },
        29 => Call::NameRegister { name: text(r), object: name(r, st) },
        30 => Call::NameLookup { name: if r.coin() { "zero".into() } else { text(r) } },
        32 => Call::MsgSendReceive {
            send: send_args(r, st),
            name: if !st.receive.is_empty() && r.coin() { r.pick(&st.receive) } else { name(r, st) },
            timeout_ms: timeout(r),
        },
        33 => Call::MemoryAttach {
            uffd: r.below(64) as i32 - 8,
            channel: r.below(64) as i32 - 8,
            arena_start: addr(r, st),
            arena_len: size(r),
        },
        34 => Call::StagingAttach { memfd: r.below(64) as i32 - 8, len: size(r) },
        _ => Call::Inspect(match r.below(6) {
            0 => InspectWhat::Tasks,
            1 => InspectWhat::Stats,
            2 => InspectWhat::Objects,
            3 => InspectWhat::Proxies,
            4 => InspectWhat::Charges,
            _ => InspectWhat::VmMap { task: r.u32() },
        }),
    }
}

fn any_call(r: &mut Rng, st: &State) -> Call {
    let v = r.below(VARIANTS);
    r.sane = r.coin();
    let c = gen_call(r, st, v);
    r.sane = false;
    c
}

/// Could the call wait for something that never comes while the
/// connection stays open (so that no answer is no hang)?
fn may_block(call: &Call, st: &State) -> bool {
    match call {
        Call::MsgReceive { timeout_ms, .. } | Call::MsgSendReceive { timeout_ms, .. } => {
            timeout_ms.is_none_or(|t| t > 50)
        }
        // A copy reads the object's pages when it is made.
        Call::VmMap(m) => m.copy && (st.tainted || m.object.is_some_and(|o| !st.served.contains(&o))),
        Call::Load { .. }
        | Call::Store { .. }
        | Call::Execute { .. }
        | Call::VmRead { .. }
        | Call::VmWrite { .. }
        | Call::VmCopy { .. }
        | Call::RegionProxy { .. }
        | Call::TaskCreate { .. } => st.tainted,
        _ => false,
    }
}

/// A short account of a call for failure reports (no megabytes of data).
fn describe(call: &Call) -> String {
    let s = match call {
        Call::VmWrite { address, data } => format!("VmWrite {{ address: {address:?}, data: {} bytes }}", data.len()),
        Call::Store { address, data } => format!("Store {{ address: {address:?}, data: {} bytes }}", data.len()),
        Call::MsgSend(a) => format!(
            "MsgSend {{ dest: {:?}, disp: {:?}, reply: {:?}, id: {}, data: {} bytes, rights: {} {:?}, timeout: {:?} }}",
            a.dest,
            a.dest_disposition,
            a.reply,
            a.id,
            a.data.len(),
            a.rights.len(),
            a.rights.iter().take(3).collect::<Vec<_>>(),
            a.timeout_ms
        ),
        Call::MsgSendReceive { send, name, timeout_ms } => format!(
            "MsgSendReceive {{ dest: {:?}, id: {}, data: {} bytes, rights: {}, name: {name:?}, timeout: {timeout_ms:?} }}",
            send.dest,
            send.id,
            send.data.len(),
            send.rights.len()
        ),
        Call::ProxyCreate { max, objects, offsets, starts, lens, version } => format!(
            "ProxyCreate {{ max: {max:?}, objects: {} {:?}, offsets: {} {:?}, starts: {} {:?}, lens: {} {:?}, {version:?} }}",
            objects.len(),
            &objects[..objects.len().min(3)],
            offsets.len(),
            &offsets[..offsets.len().min(3)],
            starts.len(),
            &starts[..starts.len().min(3)],
            lens.len(),
            &lens[..lens.len().min(3)],
        ),
        other => format!("{other:?}"),
    };
    clip(s)
}

fn clip(mut s: String) -> String {
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn describe_response(r: &Response) -> String {
    match r {
        Response::Reply { seq, result: Ok(Reply::Data(d)) } => {
            format!("Reply {{ seq: {seq}, Data({} bytes) }}", d.len())
        }
        other => clip(format!("{other:?}")),
    }
}

/// Is `reply` the kind of answer `call` gets on success?
fn fits(call: &Call, reply: &Reply) -> Result<(), String> {
    let ok = match (call, reply) {
        (Call::VmAllocate { .. } | Call::VmMap(_), Reply::Addr(a)) => a.0 % P == 0,
        (
            Call::VmDeallocate { .. }
            | Call::VmProtect { .. }
            | Call::VmInherit { .. }
            | Call::VmWrite { .. }
            | Call::VmCopy { .. }
            | Call::Store { .. }
            | Call::Execute { .. }
            | Call::PortMoveMember { .. }
            | Call::PortMakeSend { .. }
            | Call::PortDeallocate { .. }
            | Call::PortDestroy { .. }
            | Call::PortModRefs { .. }
            | Call::PortRequestNotification { .. }
            | Call::MsgSend(_)
            | Call::ProxyRevoke { .. }
            | Call::SetDefaultMemoryManager { .. }
            | Call::NameRegister { .. },
            Reply::Unit,
        ) => true,
        (Call::VmRegion { .. }, Reply::Region(_)) => true,
        (Call::VmRead { size, .. }, Reply::Data(d)) => d.len() as u64 == *size,
        (Call::Load { len, .. }, Reply::Data(d)) => d.len() as u64 == u64::from(*len),
        (Call::TaskCreate { .. }, Reply::ChildToken(_)) => true,
        (Call::PortAllocate | Call::PortSetAllocate | Call::NameLookup { .. }, Reply::Name(_)) => true,
        (Call::PortLookup { .. }, Reply::NameInfo(_)) => true,
        (Call::MsgReceive { .. } | Call::MsgSendReceive { .. }, Reply::Message(_)) => true,
        (Call::ProxyCreate { .. } | Call::RegionProxy { .. }, Reply::Names { .. }) => true,
        (Call::ProxyInfo { .. }, Reply::ProxyInfo(_)) => true,
        (Call::Inspect(InspectWhat::Tasks), Reply::Tasks(_)) => true,
        (Call::Inspect(InspectWhat::Stats), Reply::Stats(_)) => true,
        (Call::Inspect(InspectWhat::VmMap { .. }), Reply::VmMap(_)) => true,
        (Call::Inspect(InspectWhat::Objects), Reply::Objects(_)) => true,
        (Call::Inspect(InspectWhat::Proxies), Reply::Proxies(_)) => true,
        (Call::Inspect(InspectWhat::Charges), Reply::Charges(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} answered with {}", describe(call), clip(format!("{reply:?}"))))
    }
}

/// What a successful (or failed) call teaches the task's state.
fn learn(st: &mut State, call: &Call, result: &Result<Reply, KernError>, registered: &Mutex<Vec<String>>) {
    // Rights that may have gone with the call.
    match call {
        Call::PortDeallocate { name }
        | Call::PortDestroy { name }
        | Call::PortModRefs { name, .. }
        | Call::PortMoveMember { member: name, .. } => st.forget(*name),
        Call::MsgSend(a) | Call::MsgSendReceive { send: a, .. } => {
            st.forget(a.dest);
            for (n, _) in &a.rights {
                st.forget(*n);
            }
            if let Some((n, _)) = a.reply {
                st.forget(n);
            }
        }
        _ => {}
    }
    let Ok(reply) = result else { return };
    match (call, reply) {
        (Call::VmAllocate { .. }, Reply::Addr(a)) => st.addrs.push(*a),
        (Call::VmMap(m), Reply::Addr(a)) => {
            st.addrs.push(*a);
            if m.object.is_some_and(|o| !st.served.contains(&o)) {
                st.tainted = true;
            }
        }
        (Call::PortAllocate, Reply::Name(n)) => {
            st.learn(*n);
            st.receive.push(*n);
        }
        (Call::PortSetAllocate, Reply::Name(n)) => st.learn(*n),
        (Call::NameLookup { name }, Reply::Name(n)) => {
            st.learn(*n);
            if name == "zero" {
                st.served.insert(*n);
            } else {
                st.forget(*n);
            }
        }
        (Call::NameRegister { name, .. }, Reply::Unit) => registered.lock().unwrap().push(name.clone()),
        (Call::ProxyCreate { objects, .. }, Reply::Names { proxy, revoke }) => {
            st.learn(*proxy);
            st.learn(*revoke);
            st.proxies.push(*proxy);
            st.revokes.push(*revoke);
            if objects.iter().all(|o| st.served.contains(o)) {
                st.served.insert(*proxy);
            } else {
                st.forget(*proxy);
            }
        }
        (Call::RegionProxy { .. }, Reply::Names { proxy, revoke }) => {
            st.learn(*proxy);
            st.learn(*revoke);
            st.proxies.push(*proxy);
            st.revokes.push(*revoke);
            if st.tainted {
                st.forget(*proxy);
            } else {
                st.served.insert(*proxy);
            }
        }
        (Call::MsgReceive { .. } | Call::MsgSendReceive { .. }, Reply::Message(m)) => {
            for &(n, _) in &m.rights {
                st.learn(n);
                st.forget(n);
            }
            if let Some(n) = m.reply {
                st.learn(n);
                st.forget(n);
            }
            if m.id == emmi_id::INIT && m.from_kernel {
                if let Some(&(control, _)) = m.rights.first() {
                    st.controls.push(control);
                }
            }
        }
        (Call::TaskCreate { .. }, Reply::ChildToken(t)) => st.tokens.push(*t),
        _ => {}
    }
    if st.addrs.len() > 64 {
        st.addrs.remove(0);
    }
}

// ----- frames -----

fn hello(role: Role, name: &str) -> Vec<u8> {
    encode_frame(&Request::Hello { version: PROTOCOL_VERSION, role, name: name.into() }).unwrap()
}

/// The frame of a request; a request too big for a frame becomes a bare
/// header claiming its size (which the daemon must refuse unread).
fn frame(req: &Request) -> Vec<u8> {
    match encode_frame(req) {
        Ok(f) => f,
        Err(FrameError::Oversized { len, .. }) => u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes().to_vec(),
        Err(e) => panic!("encoding {req:?}: {e}"),
    }
}

/// Damages a frame: bit flips, cuts, length headers that lie, huge
/// lengths, spliced garbage, overlong varints.
fn mutate(r: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    let body = f.len() - 4;
    let set_len = |f: &mut Vec<u8>, n: u32| f[..4].copy_from_slice(&n.to_le_bytes());
    match r.below(11) {
        0 | 1 => {
            for _ in 0..1 + r.below(4) {
                let i = 4 + r.below(body.max(1) as u64) as usize;
                if i < f.len() {
                    f[i] ^= 1 << r.below(8);
                }
            }
        }
        2 => {
            let i = r.below(f.len() as u64) as usize;
            f[i] ^= 1 << r.below(8);
        }
        3 => {
            // Cut, with the header telling the truth.
            let keep = r.upto(body);
            f.truncate(4 + keep);
            set_len(&mut f, keep as u32);
        }
        4 => {
            // Cut, with the header still claiming the whole body.
            f.truncate(4 + r.upto(body.saturating_sub(1)));
        }
        5 => {
            // The header claims more than follows.
            let n = body as u32 + 1 + r.below(64) as u32;
            set_len(&mut f, n);
        }
        6 => {
            // The header claims less: the rest reads as the next frame.
            let n = r.upto(body) as u32;
            set_len(&mut f, n);
        }
        7 => {
            let any = r.u32();
            let n = r.pick(&[u32::MAX, MAX_FRAME as u32 + 1, MAX_FRAME as u32, 1 << 31, any]);
            set_len(&mut f, n);
        }
        8 => {
            // Trailing bytes inside the frame.
            let n = 1 + r.upto(16);
            let extra = r.bytes(n);
            f.extend_from_slice(&extra);
            let n = (f.len() - 4) as u32;
            set_len(&mut f, n);
        }
        9 if body > 0 => {
            // Garbage spliced over part of the body.
            let at = 4 + r.below(body as u64) as usize;
            let n = r.upto(f.len() - at);
            let junk = r.bytes(n);
            f[at..at + n].copy_from_slice(&junk);
        }
        _ if body > 0 => {
            // An overlong varint: continuation bits that never stop.
            let at = 4 + r.below(body as u64) as usize;
            let n = (1 + r.upto(12)).min(f.len() - at);
            for b in &mut f[at..at + n] {
                *b |= 0x80;
            }
        }
        _ => {}
    }
    f
}

/// A body of random postcard: an enum tag, then varints, lengths and bytes.
fn random_postcard(r: &mut Rng) -> Vec<u8> {
    let mut b = vec![r.pick(&[0, 1, 1, 2, 0x80, 0xff])];
    for _ in 0..r.upto(12) {
        match r.below(4) {
            0 => b.push(r.below(40) as u8),
            1 => {
                let mut v = r.u64() >> r.below(64);
                loop {
                    let byte = (v & 0x7f) as u8;
                    v >>= 7;
                    if v == 0 {
                        b.push(byte);
                        break;
                    }
                    b.push(byte | 0x80);
                }
            }
            2 => {
                let n = r.upto(20);
                b.push(n as u8);
                b.extend(r.bytes(n));
            }
            _ => {
                let n = 1 + r.upto(4);
                b.extend(r.bytes(n));
            }
        }
    }
    b
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

// ----- what the daemon must answer -----

/// How a byte stream sent after the welcome ends, as the daemon reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// Between frames: the connection stays open.
    Open,
    /// Inside a frame: the daemon waits for the rest, and closes (a
    /// protocol error allowed) once the peer half-closes.
    Cut,
    /// At a frame the daemon refuses: a protocol error, then a close.
    Error,
}

struct Expect {
    /// The calls the daemon must answer, in order sent.
    calls: Vec<(u64, Call)>,
    end: End,
}

/// Cuts `bytes` into requests as the daemon does.
fn expect(bytes: &[u8]) -> Expect {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    let mut calls = Vec::new();
    loop {
        match d.next::<Request>() {
            Ok(Some(Request::Call { seq, call })) => {
                if call.check().is_err() {
                    return Expect { calls, end: End::Error };
                }
                calls.push((seq, call));
            }
            Ok(Some(Request::Hello { .. })) | Err(_) => return Expect { calls, end: End::Error },
            Ok(None) => {
                let end = if d.finish().is_ok() { End::Open } else { End::Cut };
                return Expect { calls, end };
            }
        }
    }
}

/// What the daemon must do with a first frame.
#[derive(Debug)]
enum HelloExpect {
    /// A welcome; the bytes after the hello are read as calls.
    Welcome {
        rest: usize,
    },
    Refused,
    /// A protocol error (a frame cut short may also just close).
    Error {
        cut: bool,
    },
    /// Nothing was sent: a close.
    Close,
}

fn expect_hello(bytes: &[u8]) -> HelloExpect {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    match d.next::<Request>() {
        Ok(Some(Request::Hello { version, role, name })) => {
            if name.len() > MAX_NAME_LEN {
                HelloExpect::Error { cut: false }
            } else if version != PROTOCOL_VERSION || matches!(role, Role::Task { child_token: Some(_) }) {
                HelloExpect::Refused
            } else {
                let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
                HelloExpect::Welcome { rest: 4 + len }
            }
        }
        Ok(Some(Request::Call { .. })) | Err(_) => HelloExpect::Error { cut: false },
        Ok(None) if bytes.is_empty() => HelloExpect::Close,
        Ok(None) => HelloExpect::Error { cut: true },
    }
}

// ----- one fuzz connection -----

/// What came back.
enum Got {
    Resp(Response),
    Closed,
    Timeout,
    Broken(String),
}

#[derive(Default, Clone, Debug)]
struct Tally {
    connections: u64,
    frames: u64,
    bytes: u64,
    replies_ok: u64,
    kern_errors: u64,
    protocol_errors: u64,
    refused: u64,
    /// Calls answered, by variant (a bit per [`variant`]).
    answered: u64,
    /// Calls answered with success, by variant.
    succeeded: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.connections += o.connections;
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.replies_ok += o.replies_ok;
        self.kern_errors += o.kern_errors;
        self.protocol_errors += o.protocol_errors;
        self.refused += o.refused;
        self.answered |= o.answered;
        self.succeeded |= o.succeeded;
    }
}

/// What the workers of one test share.
struct Ctx {
    socket: PathBuf,
    /// Names fuzz connections registered (they must go with them).
    registered: Mutex<Vec<String>>,
}

struct Wire {
    s: UnixStream,
    log: Vec<String>,
    tally: Tally,
    written_all: bool,
    /// What the daemon sent, cut into frames.
    dec: FrameDecoder,
}

impl Wire {
    fn connect(socket: &Path) -> Result<Wire, String> {
        let s = UnixStream::connect(socket).map_err(|e| format!("connecting: {e}"))?;
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        let tally = Tally { connections: 1, ..Tally::default() };
        Ok(Wire { s, log: Vec::new(), tally, written_all: true, dec: FrameDecoder::new() })
    }

    fn note(&mut self, what: String) {
        if self.log.len() >= 24 {
            self.log.remove(0);
        }
        self.log.push(what);
    }

    fn fail(&self, why: impl std::fmt::Display) -> String {
        let mut s = format!("{why}\n  last steps of the connection:");
        for l in &self.log {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }

    /// Writes `b` (in random pieces when `r` says so); `false` if the
    /// daemon had closed its end.
    fn send(&mut self, r: &mut Rng, b: &[u8], frames: u64) -> bool {
        self.tally.frames += frames;
        self.tally.bytes += b.len() as u64;
        let ok = if b.len() > 1 && r.one_in(6) {
            let mut at = 0;
            let mut ok = true;
            while at < b.len() && ok {
                // Tiny pieces through the headers, then big ones.
                let n = if at < 512 { 1 + r.upto(64) } else { 1 + r.upto(256 << 10) };
                let n = n.min(b.len() - at);
                ok = self.s.write_all(&b[at..at + n]).is_ok();
                at += n;
                if r.one_in(8) {
                    std::thread::yield_now();
                }
            }
            ok
        } else {
            self.s.write_all(b).is_ok()
        };
        self.written_all &= ok;
        ok
    }

    fn half_close(&mut self) {
        self.note("half-close".into());
        let _ = self.s.shutdown(std::net::Shutdown::Write);
    }

    /// The next response (skipping `Waiting` events), within `wait`. A
    /// response cut by the timeout stays buffered for the next call.
    fn answer(&mut self, wait: Duration) -> Got {
        let end = Instant::now() + wait;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.dec.next::<Response>() {
                Ok(Some(Response::Event(Event::Waiting { .. }))) => continue,
                Ok(Some(r)) => {
                    self.note(format!("<- {}", describe_response(&r)));
                    match &r {
                        Response::Reply { result: Ok(_), .. } => self.tally.replies_ok += 1,
                        Response::Reply { result: Err(_), .. } => self.tally.kern_errors += 1,
                        Response::ProtocolError { .. } => self.tally.protocol_errors += 1,
                        Response::Refused { .. } => self.tally.refused += 1,
                        _ => {}
                    }
                    return Got::Resp(r);
                }
                Ok(None) => {}
                Err(e) => return Got::Broken(format!("the daemon sent a bad frame: {e}")),
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            match std::io::Read::read(&mut self.s, &mut buf) {
                Ok(0) => {
                    return match self.dec.finish() {
                        Ok(()) => Got::Closed,
                        Err(e) => Got::Broken(format!("the daemon's last frame: {e}")),
                    }
                }
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Got::Timeout
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
                    return Got::Closed
                }
                Err(e) => return Got::Broken(format!("reading: {e}")),
            }
        }
    }

    /// After a protocol error or a refusal: nothing more, then a close.
    fn expect_close(&mut self) -> Result<(), String> {
        match self.answer(PATIENCE) {
            Got::Closed => Ok(()),
            Got::Resp(r) => Err(self.fail(format!("expected a close, got {}", describe_response(&r)))),
            Got::Timeout => Err(self.fail("the daemon did not close the connection within 10 s")),
            Got::Broken(e) => Err(self.fail(e)),
        }
    }

    /// Waits for the welcome.
    fn welcome(&mut self, st: &mut State) -> Result<(), String> {
        match self.answer(PATIENCE) {
            Got::Resp(Response::Welcome { version, host_priv, .. }) if version == PROTOCOL_VERSION => {
                if let Some(h) = host_priv {
                    st.host_priv = Some(h);
                    st.learn(h);
                }
                Ok(())
            }
            Got::Resp(r) => Err(self.fail(format!("expected a welcome, got {}", describe_response(&r)))),
            Got::Closed => Err(self.fail("closed instead of a welcome")),
            Got::Timeout => Err(self.fail("no welcome within 10 s")),
            Got::Broken(e) => Err(self.fail(e)),
        }
    }

    /// One answer: a reply to a call not answered yet (marked, checked,
    /// learnt from), a protocol error, or a close.
    fn take(
        &mut self,
        pending: &mut [(u64, Call, bool)],
        st: &mut State,
        ctx: &Ctx,
        wait: Duration,
    ) -> Result<Ans, String> {
        let left = pending.iter().filter(|p| !p.2).count();
        match self.answer(wait) {
            Got::Resp(Response::Reply { seq, result }) => {
                let Some(slot) = pending.iter_mut().find(|(s, _, done)| *s == seq && !*done) else {
                    return Err(self.fail(format!("a reply to seq {seq}, which is no call waiting")));
                };
                slot.2 = true;
                let call = &slot.1;
                self.tally.answered |= 1 << variant(call);
                if let Ok(reply) = &result {
                    self.tally.succeeded |= 1 << variant(call);
                    if let Err(e) = fits(call, reply) {
                        return Err(self.fail(e));
                    }
                }
                if trace() {
                    let r = result.as_ref().map(|r| clip(format!("{r:?}")));
                    eprintln!("{} => {}", describe(call), clip(format!("{r:?}")));
                }
                learn(st, call, &result, &ctx.registered);
                Ok(Ans::Reply)
            }
            Got::Resp(Response::ProtocolError { what }) => Ok(Ans::ProtocolError(what)),
            Got::Closed => Ok(Ans::Closed),
            Got::Resp(r) => Err(self.fail(format!("unexpected {} ({left} calls unanswered)", describe_response(&r)))),
            Got::Timeout if wait < PATIENCE => Ok(Ans::Timeout),
            Got::Timeout => Err(self.fail(format!("no answer within {wait:?}: a hang ({left} calls unanswered)"))),
            Got::Broken(e) => Err(self.fail(e)),
        }
    }

    /// The daemon's answers to bytes it read after the welcome. While the
    /// connection is open, every call up to the first that may wait is
    /// answered, and a refused frame with no call before it waiting is
    /// refused; if `keep_open` and the stream ended cleanly with nothing
    /// left, returns `Ok(true)`. Otherwise the peer half-closes, and the
    /// daemon must answer the rest (a call left waiting fails when the
    /// task terminates) and close: `Ok(false)`.
    fn answers(&mut self, e: Expect, st: &mut State, ctx: &Ctx, keep_open: bool) -> Result<bool, String> {
        let end = e.end;
        let mut pending: Vec<(u64, Call, bool)> = e.calls.into_iter().map(|(s, c)| (s, c, false)).collect();
        let all_done = |p: &[(u64, Call, bool)]| p.iter().all(|x| x.2);
        let mut refused = false;
        // Open: earlier replies teach the state that says whether a later
        // call may wait.
        loop {
            let mut wait = PATIENCE;
            match pending.iter().find(|p| !p.2) {
                // It may wait for good: give it a moment.
                Some((_, c, _)) if may_block(c, st) => wait = GRACE,
                None if end != End::Error || refused => break,
                _ => {}
            }
            match self.take(&mut pending, st, ctx, wait)? {
                Ans::Timeout => break,
                Ans::Reply => {}
                Ans::ProtocolError(_) if all_done(&pending) && end == End::Error => refused = true,
                // More calls behind a waiting one than the daemon keeps:
                // the connection is closed, its calls unanswered.
                Ans::ProtocolError(what) if flooded(&what, &pending) => return self.expect_close().map(|()| false),
                other => {
                    let left = pending.iter().filter(|p| !p.2).count();
                    return Err(self.fail(format!("{other:?} with {left} calls unanswered (stream ends {end:?})")));
                }
            }
        }
        if refused {
            return self.expect_close().map(|()| false);
        }
        if keep_open && all_done(&pending) && end == End::Open && self.written_all {
            return Ok(true);
        }
        // Half-closed: the rest is answered, then the connection closes.
        self.half_close();
        loop {
            match self.take(&mut pending, st, ctx, PATIENCE)? {
                Ans::Reply => {}
                Ans::ProtocolError(_) if all_done(&pending) && end != End::Open => {
                    return self.expect_close().map(|()| false);
                }
                Ans::ProtocolError(what) if flooded(&what, &pending) => return self.expect_close().map(|()| false),
                Ans::Closed if all_done(&pending) && end != End::Error => return Ok(false),
                other => {
                    let left = pending.iter().filter(|p| !p.2).count();
                    return Err(self.fail(format!(
                        "{other:?} after the half-close with {left} calls unanswered (stream ends {end:?})"
                    )));
                }
            }
        }
    }
}

/// Is `what` the daemon's refusal of more calls than it keeps waiting
/// (`conn::CALLS_QUEUED`, 16), and were there that many?
fn flooded(what: &str, pending: &[(u64, Call, bool)]) -> bool {
    what.contains("calls waiting for their replies") && pending.len() > 16
}

#[derive(Debug)]
enum Ans {
    Reply,
    ProtocolError(String),
    Closed,
    /// Nothing yet (only when waiting for less than [`PATIENCE`]).
    Timeout,
}

/// Sends one call and reads its answer. `Ok(None)`: the connection ended
/// as it should (a refused call, a call left waiting when the peer went).
fn call(w: &mut Wire, r: &mut Rng, st: &mut State, ctx: &Ctx, seq: u64, c: Call) -> Result<Option<()>, String> {
    w.note(format!("-> seq {seq} {}", describe(&c)));
    let bytes = frame(&Request::Call { seq, call: c });
    let e = expect(&bytes);
    if !w.send(r, &bytes, 1) && e.end != End::Error {
        return Err(w.fail("the daemon closed the connection while a valid call was being written"));
    }
    match w.answers(e, st, ctx, true)? {
        true => Ok(Some(())),
        false => Ok(None),
    }
}

/// A random hello: mostly valid, sometimes another version, a child token
/// nobody made, or a name over the limit.
fn random_hello(r: &mut Rng) -> Vec<u8> {
    let role = match r.below(6) {
        0 => Role::Pager,
        1 => Role::Task { child_token: Some(r.u64()) },
        _ => Role::Task { child_token: None },
    };
    let version = if r.one_in(6) { r.pick(&[0, 2, 999, u32::MAX]) } else { PROTOCOL_VERSION };
    let name = if r.one_in(5) { text(r) } else { format!("fuzz {}", r.below(1000)) };
    frame(&Request::Hello { version, role, name })
}

/// Frames after a hello: valid calls, mutated calls, random postcard,
/// random bytes.
fn random_frames(r: &mut Rng, st: &State, seq: &mut u64, n: usize, mutate_pct: u64) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut frames = 0;
    for _ in 0..n {
        frames += 1;
        match r.below(100) {
            x if x < mutate_pct => {
                *seq = seq.wrapping_add(1);
                let f = frame(&Request::Call { seq: *seq, call: any_call(r, st) });
                out.extend(mutate(r, f));
            }
            x if x < mutate_pct + 5 => out.extend(framed(&random_postcard(r))),
            x if x < mutate_pct + 7 => {
                let n = 1 + r.upto(16);
                out.extend(r.bytes(n));
            }
            x if x < mutate_pct + 8 => out.extend(random_hello(r)),
            _ => {
                *seq = if r.one_in(20) { r.pick(&[0, u64::MAX, *seq]) } else { seq.wrapping_add(1) };
                out.extend(frame(&Request::Call { seq: *seq, call: any_call(r, st) }));
            }
        }
    }
    (out, frames)
}

/// A first frame (and perhaps more) from a stranger: random bytes, a
/// random or damaged hello, a call before any hello, a bare header.
fn fuzz_first_frame(ctx: &Ctx, seed: u64) -> Result<Tally, String> {
    let mut r = Rng::new(seed);
    let mut st = State::default();
    let mut seq = 0;
    let bytes = match r.below(10) {
        0 => {
            let n = r.upto(48);
            r.bytes(n)
        }
        1 => {
            let n = r.upto(300);
            let mut b = (n as u32).to_le_bytes().to_vec();
            let m = if r.coin() { n } else { r.upto(n + 8) };
            b.extend(r.bytes(m));
            b
        }
        2 | 3 => mutate(&mut r, random_hello(&mut Rng::new(seed ^ 1))),
        4 => {
            let mut b = random_hello(&mut r);
            let n = 1 + r.upto(6);
            let (more, _) = random_frames(&mut r, &st, &mut seq, n, 50);
            b.extend(more);
            b
        }
        5 => frame(&Request::Call { seq: 1, call: any_call(&mut r, &st) }),
        6 => Vec::new(),
        7 => r.pick(&[u32::MAX, MAX_FRAME as u32 + 1, MAX_FRAME as u32, 0, 1]).to_le_bytes().to_vec(),
        8 => framed(&random_postcard(&mut r)),
        _ => {
            let mut b = vec![0u8];
            b.extend(random_postcard(&mut r));
            framed(&b)
        }
    };
    let mut w = Wire::connect(&ctx.socket)?;
    w.note(format!("first bytes ({}): {:02x?}", bytes.len(), &bytes[..bytes.len().min(48)]));
    let ex = expect_hello(&bytes);
    w.note(format!("expecting {ex:?}"));
    w.send(&mut r, &bytes, 1);
    match ex {
        HelloExpect::Welcome { rest } => {
            w.welcome(&mut st)?;
            let e = expect(&bytes[rest..]);
            w.answers(e, &mut st, ctx, false)?;
        }
        HelloExpect::Refused => {
            match w.answer(PATIENCE) {
                Got::Resp(Response::Refused { version, .. }) if version == PROTOCOL_VERSION => {}
                Got::Resp(r) => return Err(w.fail(format!("expected a refusal, got {}", describe_response(&r)))),
                Got::Closed => return Err(w.fail("closed instead of refusing")),
                Got::Timeout => return Err(w.fail("no refusal within 10 s")),
                Got::Broken(e) => return Err(w.fail(e)),
            }
            w.expect_close()?;
        }
        HelloExpect::Error { cut } => {
            if cut {
                w.half_close();
            }
            match w.answer(PATIENCE) {
                Got::Resp(Response::ProtocolError { .. }) => w.expect_close()?,
                Got::Closed if cut => {}
                Got::Resp(r) => return Err(w.fail(format!("expected a protocol error, got {}", describe_response(&r)))),
                Got::Closed => return Err(w.fail("closed without a protocol error")),
                Got::Timeout => return Err(w.fail("no protocol error within 10 s: a hang")),
                Got::Broken(e) => return Err(w.fail(e)),
            }
        }
        HelloExpect::Close => {
            w.half_close();
            w.expect_close()?;
        }
    }
    Ok(w.tally)
}

/// A peer that goes away at a bad moment: mid-frame, mid-hello, with a
/// call waiting, with replies unread, with calls still queued.
fn fuzz_vanish(ctx: &Ctx, seed: u64) -> Result<Tally, String> {
    let mut r = Rng::new(seed);
    let mut st = State::default();
    let mut w = Wire::connect(&ctx.socket)?;
    match r.below(7) {
        0 => {}
        1 => {
            let h = hello(Role::Task { child_token: None }, "vanishes in its hello");
            let cut = 1 + r.upto(h.len() - 2);
            w.send(&mut r, &h[..cut], 1);
        }
        kind => {
            w.send(&mut r, &hello(Role::Task { child_token: None }, "vanishes"), 1);
            w.welcome(&mut st)?;
            match kind {
                2 => {
                    let f = frame(&Request::Call { seq: 1, call: any_call(&mut r, &st) });
                    let cut = r.upto(f.len() - 1);
                    w.send(&mut r, &f[..cut], 1);
                }
                3 => {
                    // A receive that waits for good.
                    let ctx2 = Ctx { socket: ctx.socket.clone(), registered: Mutex::default() };
                    if call(&mut w, &mut r, &mut st, &ctx2, 1, Call::PortAllocate)?.is_none() {
                        return Ok(w.tally);
                    }
                    let port = st.receive.first().copied().unwrap_or(PortName(1));
                    let mut b =
                        frame(&Request::Call { seq: 2, call: Call::MsgReceive { name: port, timeout_ms: None } });
                    b.extend(frame(&Request::Call { seq: 3, call: Call::PortDestroy { name: port } }));
                    w.send(&mut r, &b, 2);
                    std::thread::sleep(Duration::from_millis(r.below(20)));
                }
                4 => {
                    // Big replies nobody reads.
                    let mut b = frame(&Request::Call {
                        seq: 1,
                        call: Call::VmAllocate { address: VmAddr(0), size: MAX_DATA as u64, anywhere: true },
                    });
                    for i in 0..4 {
                        let call = Call::Load { address: VmAddr(0x1_0000), len: MAX_DATA as u32 };
                        b.extend(frame(&Request::Call { seq: 2 + i, call }));
                    }
                    w.send(&mut r, &b, 5);
                }
                5 => {
                    // A burst of calls, gone before they are made.
                    let mut seq = 0;
                    let k = 4 + r.upto(30);
                    let (b, n) = random_frames(&mut r, &st, &mut seq, k, 10);
                    w.send(&mut r, &b, n);
                }
                _ => {
                    // A fault on memory nobody will ever supply: the task
                    // maps a port of its own as a memory object.
                    let ctx2 = Ctx { socket: ctx.socket.clone(), registered: Mutex::default() };
                    if call(&mut w, &mut r, &mut st, &ctx2, 1, Call::PortAllocate)?.is_none() {
                        return Ok(w.tally);
                    }
                    let port = st.receive.first().copied().unwrap_or(PortName(1));
                    for (seq, c) in
                        [(2, Call::PortMakeSend { name: port }), (3, Call::VmMap(map_anywhere(4 * P, Some(port))))]
                    {
                        if call(&mut w, &mut r, &mut st, &ctx2, seq, c)?.is_none() {
                            return Ok(w.tally);
                        }
                    }
                    let at = st.addrs.last().copied().unwrap_or(VmAddr(0x1_0000));
                    let f = frame(&Request::Call { seq: 4, call: Call::Load { address: VmAddr(at.0 + P), len: 8 } });
                    w.send(&mut r, &f, 1);
                    std::thread::sleep(Duration::from_millis(r.below(20)));
                }
            }
        }
    }
    if r.coin() {
        let _ = w.s.shutdown(std::net::Shutdown::Both);
    }
    Ok(w.tally)
}

/// Some state to aim at: memory, a port, the zero pager's object mapped.
/// `Ok(false)`: the connection ended.
fn prelude(w: &mut Wire, r: &mut Rng, st: &mut State, ctx: &Ctx, seq: &mut u64) -> Result<bool, String> {
    for c in [
        Call::VmAllocate { address: VmAddr(0), size: (1 + r.below(32)) * P, anywhere: true },
        Call::PortAllocate,
        Call::NameLookup { name: "zero".into() },
    ] {
        *seq += 1;
        if call(w, r, st, ctx, *seq, c)?.is_none() {
            return Ok(false);
        }
    }
    if let Some(&z) = st.served.iter().next() {
        *seq += 1;
        let size = (1 + r.below(32)) * P;
        let map = MapArgs { cur: VmProt::ALL, ..map_anywhere(size, Some(z)) };
        if call(w, r, st, ctx, *seq, Call::VmMap(map))?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Bursts of valid and damaged call frames after a valid hello; a burst
/// that ends cleanly keeps the connection for the next one.
fn fuzz_mutated(ctx: &Ctx, seed: u64) -> Result<Tally, String> {
    let mut r = Rng::new(seed);
    let mut st = State::default();
    let mut w = Wire::connect(&ctx.socket)?;
    let role = if r.one_in(4) { Role::Pager } else { Role::Task { child_token: None } };
    w.send(&mut r, &hello(role, "fuzz mutated"), 1);
    w.welcome(&mut st)?;
    let mut seq = 0;
    if !prelude(&mut w, &mut r, &mut st, ctx, &mut seq)? {
        return Ok(w.tally);
    }
    for _ in 0..1 + r.below(12) {
        let k = 1 + r.upto(5);
        let (bytes, n) = random_frames(&mut r, &st, &mut seq, k, 35);
        let e = expect(&bytes);
        w.note(format!(
            "-> burst of {n} frames, {} bytes: calls {:?}, ends {:?}",
            bytes.len(),
            e.calls
                .iter()
                .map(|(s, c)| format!("{s}:{}", clip(describe(c)).chars().take(60).collect::<String>()))
                .collect::<Vec<_>>(),
            e.end
        ));
        if !w.send(&mut r, &bytes, n) && e.end != End::Error {
            return Err(w.fail("the daemon closed while valid frames were being written"));
        }
        if !w.answers(e, &mut st, ctx, true)? {
            return Ok(w.tally);
        }
    }
    w.half_close();
    w.expect_close()?;
    Ok(w.tally)
}

/// The call variant a connection of [`fuzz_calls`] makes first (a few
/// times), from the low bits of its seed: none for half the seeds.
fn focus(seed: u64) -> Option<u64> {
    Some(seed & 63).filter(|&v| v < VARIANTS)
}

/// Interactive calls of every kind with random and extreme arguments,
/// feeding on what the replies hand out: names, addresses, control ports,
/// child tokens (claimed by a second connection).
fn fuzz_calls(ctx: &Ctx, seed: u64) -> Result<Tally, String> {
    let mut r = Rng::new(seed);
    let mut st = State::default();
    let mut w = Wire::connect(&ctx.socket)?;
    let role = if r.one_in(4) { Role::Pager } else { Role::Task { child_token: None } };
    w.send(&mut r, &hello(role, "fuzz calls"), 1);
    w.welcome(&mut st)?;
    let mut tally = Tally::default();
    let mut seq = 0;
    if !r.one_in(8) && !prelude(&mut w, &mut r, &mut st, ctx, &mut seq)? {
        tally.add(&w.tally);
        return Ok(tally);
    }
    // A focused connection is short: the coverage it is for comes first.
    let focused = if focus(seed).is_some() { 3 } else { 0 };
    let steps = if focused > 0 { focused + r.below(4) } else { 4 + r.below(40) };
    for i in 0..steps {
        let seq = if r.one_in(30) { r.u64() } else { seq + i + 1 };
        let c = match r.below(40) {
            _ if i < focused => {
                r.sane = i > 0;
                let c = gen_call(&mut r, &st, focus(seed).unwrap());
                r.sane = false;
                c
            }
            // Aim at an object the task pages itself: map its own port,
            // take the init, then speak EMMI to the control port.
            0 => {
                let Some(&port) = st.receive.last() else { continue };
                let mut plan = vec![
                    Call::PortMakeSend { name: port },
                    Call::VmMap(map_anywhere((1 + r.below(8)) * P, Some(port))),
                    Call::MsgReceive { name: port, timeout_ms: Some(20) },
                ];
                let last = plan.pop().unwrap();
                for c in plan {
                    if call(&mut w, &mut r, &mut st, ctx, seq, c)?.is_none() {
                        tally.add(&w.tally);
                        return Ok(tally);
                    }
                }
                last
            }
            // Claim a child task in a connection of its own.
            1 if !st.tokens.is_empty() => {
                let token = st.tokens.swap_remove(r.below(st.tokens.len() as u64) as usize);
                tally.add(&claim_child(ctx, &mut r, token, &st)?);
                continue;
            }
            2 => Call::NameLookup { name: "zero".into() },
            3 => Call::PortAllocate,
            _ => any_call(&mut r, &st),
        };
        if call(&mut w, &mut r, &mut st, ctx, seq, c)?.is_none() {
            tally.add(&w.tally);
            return Ok(tally);
        }
    }
    match r.below(4) {
        0 => {}
        1 => {
            // A last frame that breaks the protocol.
            let junk = mutate(&mut r, hello(Role::Pager, "again"));
            w.send(&mut r, &junk, 1);
            let e = expect(&junk);
            w.answers(e, &mut st, ctx, false)?;
        }
        _ => {
            w.half_close();
            w.expect_close()?;
        }
    }
    tally.add(&w.tally);
    Ok(tally)
}

/// A second connection claims a child task: welcomed once, refused the
/// second time, and it can make calls.
fn claim_child(ctx: &Ctx, r: &mut Rng, token: u64, parent: &State) -> Result<Tally, String> {
    let mut st = State { tainted: parent.tainted, ..State::default() };
    let mut w = Wire::connect(&ctx.socket)?;
    w.note(format!("claiming child token {token:#x}"));
    w.send(r, &hello(Role::Task { child_token: Some(token) }, "fuzz child"), 1);
    w.welcome(&mut st)?;
    let mut again = Wire::connect(&ctx.socket)?;
    again.send(r, &hello(Role::Task { child_token: Some(token) }, "fuzz child again"), 1);
    match again.answer(PATIENCE) {
        Got::Resp(Response::Refused { .. }) => again.expect_close()?,
        Got::Resp(other) => return Err(again.fail(format!("a claimed token again: {}", describe_response(&other)))),
        _ => return Err(again.fail("a claimed token again: no refusal")),
    }
    for i in 0..r.below(8) {
        let c = any_call(r, &st);
        if call(&mut w, r, &mut st, ctx, i, c)?.is_none() {
            break;
        }
    }
    let mut t = w.tally;
    t.add(&again.tally);
    Ok(t)
}

// ----- the daemon under test, and what must hold afterwards -----

struct Harness {
    /// First, so that it is disarmed before the daemon is killed.
    _watchdog: Watchdog,
    dir: Dir,
    daemon: Proc,
    zero: Proc,
    quiet: Proc,
    /// Objects and proxies in the kernel, threads and open files in the
    /// daemon's process, with the pagers and one client connected.
    baseline: (u64, u64, u64, u64),
}

fn task_names(c: &Connection) -> Vec<String> {
    match c.inspect(InspectWhat::Tasks).unwrap() {
        Reply::Tasks(rows) => {
            let mut v: Vec<String> = rows.into_iter().map(|r| r.name).collect();
            v.sort();
            v
        }
        other => panic!("{other:?}"),
    }
}

impl Harness {
    fn start(tag: &str, args: &[&str]) -> Harness {
        let dir = Dir::new(tag);
        let daemon = daemon(&dir.socket(), args);
        let zero = pager(&dir.socket(), &["zero", "--name", "zero"], "zero");
        let quiet = pager(&dir.socket(), &["zero", "--name", "quiet"], "quiet");
        let probe = client(&dir.socket(), "baseline");
        let want = vec!["baseline".to_string(), "pager zero quiet".into(), "pager zero zero".into()];
        wait_until("the pagers' probes to go", || task_names(&probe) == want);
        std::thread::sleep(Duration::from_millis(50));
        let (threads, fds) = threads_and_fds(daemon.0.id());
        let baseline = (stat(&probe, "objects"), stat(&probe, "proxies"), threads, fds);
        // The longest a run may take: its budget, the time it may go on
        // for coverage, and the checks.
        let limit = budget(Duration::from_secs(2)) + Duration::from_secs(90);
        Harness { _watchdog: Watchdog::new(daemon.0.id(), limit), dir, daemon, zero, quiet, baseline }
    }

    fn socket(&self) -> PathBuf {
        self.dir.socket()
    }

    /// Runs `f` on fresh connections from [`WORKERS`] threads for the
    /// test's budget, with a bystander client working throughout; then
    /// checks the daemon. Returns the summed tally.
    /// It goes on past the budget (for at most 20 s more) until `enough`
    /// says the fuzz has covered what it must.
    fn run(
        &mut self,
        test: &str,
        f: fn(&Ctx, u64) -> Result<Tally, String>,
        default: Duration,
        enough: fn(&Tally) -> bool,
    ) -> Tally {
        let ctx = Arc::new(Ctx { socket: self.socket(), registered: Mutex::default() });
        let seed = base_seed();
        let replay = env_u64("MACHVM_FUZZ_REPLAY");
        let how = format!(
            "(run seed {seed:#x}: MACHVM_FUZZ_SEED={seed:#x} repeats the run; \
             MACHVM_FUZZ_REPLAY=<connection seed> cargo test --release --test daemon_fuzz {test} replays one connection)"
        );
        eprintln!("{test}: fuzz seed {seed:#x}");
        let stop = Arc::new(AtomicBool::new(false));
        let bystander = bystander(&self.socket(), stop.clone());
        let started = Instant::now();
        let total = Arc::new(Mutex::new(Tally::default()));
        if let Some(one) = replay {
            match f(&ctx, one) {
                Ok(t) => total.lock().unwrap().add(&t),
                Err(e) => panic!("connection seed {one:#x}: {e}"),
            }
        } else {
            let until = Instant::now() + budget(default);
            let last = until + Duration::from_secs(20);
            let tag = test.bytes().fold(seed, |h, b| mix(h, u64::from(b)));
            let workers: Vec<_> = (0..WORKERS)
                .map(|wk| {
                    let (ctx, total) = (ctx.clone(), total.clone());
                    std::thread::spawn(move || {
                        let mut i = 0u64;
                        loop {
                            let now = Instant::now();
                            if now >= last || (now >= until && enough(&total.lock().unwrap())) {
                                return Ok(());
                            }
                            let mut s = mix(tag ^ wk, i);
                            // The first connections each aim at one call
                            // variant ([`focus`]), for quick coverage.
                            if wk + WORKERS * i < VARIANTS {
                                s = (s & !63) | (wk + WORKERS * i);
                            }
                            i += 1;
                            match f(&ctx, s) {
                                Ok(one) => total.lock().unwrap().add(&one),
                                Err(e) => return Err(format!("connection seed {s:#x}: {e}")),
                            }
                        }
                    })
                })
                .collect();
            for h in workers {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("{e}\n{how}"),
                    Err(_) => panic!("a fuzz worker panicked {how}"),
                }
            }
        }
        let total = total.lock().unwrap().clone();
        stop.store(true, Ordering::Relaxed);
        let rounds = match bystander.recv_timeout(PATIENCE) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("the bystander client saw: {e} {how}"),
            Err(_) => panic!("the bystander client hung {how}"),
        };
        eprintln!(
            "{test}: {:?}: {} connections, {} frames ({} KiB), {} replies, {} Mach errors, {} protocol errors, \
             {} refusals; bystander {rounds} rounds",
            started.elapsed(),
            total.connections,
            total.frames,
            total.bytes >> 10,
            total.replies_ok,
            total.kern_errors,
            total.protocol_errors,
            total.refused
        );
        assert!(rounds > 0, "the bystander made no progress");
        self.check(&ctx, &how);
        total
    }

    /// The daemon survived: alive, serving, no leaked tasks or names.
    fn check(&mut self, ctx: &Ctx, how: &str) {
        assert!(self.daemon.0.try_wait().unwrap().is_none(), "the daemon died {how}");
        assert!(self.zero.0.try_wait().unwrap().is_none(), "the zero pager died {how}");
        assert!(self.quiet.0.try_wait().unwrap().is_none(), "the quiet pager died {how}");
        let s = self.socket();
        let c = client(&s, "health");
        // Anonymous memory, round trip.
        let a = c.vm_allocate(VmAddr(0), 4 * P, true).unwrap();
        c.store(VmAddr(a.0 + P + 3), b"still serving").unwrap();
        assert_eq!(c.load(VmAddr(a.0 + P + 3), 13).unwrap(), b"still serving");
        assert_eq!(c.load(VmAddr(a.0 + 3 * P), 4).unwrap(), vec![0; 4]);
        c.vm_deallocate(a, 4 * P).unwrap();
        assert!(matches!(c.load(a, 1), Err(ClientError::Kern(KernError::InvalidAddress))));
        // The zero pager's object maps and reads; a second task shares it.
        let z = c.name_lookup("zero").unwrap();
        let m = c.vm_map(map_anywhere(64 * P, Some(z))).unwrap();
        assert_eq!(c.load(VmAddr(m.0 + 63 * P), 16).unwrap().len(), 16);
        c.store(VmAddr(m.0 + 40 * P), b"zero pager ok").unwrap();
        let c2 = client(&s, "health 2");
        let z2 = c2.name_lookup("zero").unwrap();
        let m2 = c2.vm_map(map_anywhere(64 * P, Some(z2))).unwrap();
        assert_eq!(c2.load(VmAddr(m2.0 + 40 * P), 13).unwrap(), b"zero pager ok");
        drop(c2);
        // Only the live connections are tasks.
        let want = vec!["health".to_string(), "pager zero quiet".into(), "pager zero zero".into()];
        let end = Instant::now() + PATIENCE;
        loop {
            let names = task_names(&c);
            if names == want {
                break;
            }
            assert!(Instant::now() < end, "leaked tasks: the daemon lists {names:?} {how}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The names the fuzz registered went with their connections.
        for n in ctx.registered.lock().unwrap().iter() {
            assert!(
                matches!(c.name_lookup(n), Err(ClientError::Kern(KernError::InvalidName))),
                "the name {n:?} outlived the connection that registered it {how}"
            );
        }
        // Objects and proxies the fuzz made are gone (cached objects
        // aside); so are the threads and sockets of its connections.
        let (objects, proxies, threads, fds) = self.baseline;
        wait_until("the fuzz's proxies to go", || stat(&c, "proxies") <= proxies);
        let now = stat(&c, "objects");
        assert!(now <= objects + 64 + 8, "objects: {objects} before the fuzz, {now} after {how}");
        let pid = self.daemon.0.id();
        wait_threads_and_fds_back(pid, (threads, fds), &format!("before the fuzz {how}"));
    }
}

/// A well-behaved client working while the fuzz runs: its own object of
/// the quiet pager (whose name the fuzz never uses) and anonymous memory,
/// every byte checked. Sends the rounds it made, or what went wrong.
fn bystander(socket: &Path, stop: Arc<AtomicBool>) -> mpsc::Receiver<Result<u64, String>> {
    let (tx, rx) = mpsc::channel();
    let c = client(socket, "bystander");
    std::thread::spawn(move || {
        let run = || -> Result<u64, String> {
            let q = c.name_lookup("quiet").map_err(|e| e.to_string())?;
            let m = c.vm_map(map_anywhere(8 * P, Some(q))).map_err(|e| e.to_string())?;
            let mut model = [0u64; 8];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let page = (n % 8) as usize;
                let at = VmAddr(m.0 + page as u64 * P + 8 * (n % 500));
                c.store(at, &n.to_le_bytes()).map_err(|e| format!("store: {e}"))?;
                model[page] = n;
                let back = c.load(at, 8).map_err(|e| format!("load: {e}"))?;
                if back != n.to_le_bytes() {
                    return Err(format!("round {n}: read {back:?} back"));
                }
                let a = c.vm_allocate(VmAddr(0), 2 * P, true).map_err(|e| format!("vm_allocate: {e}"))?;
                c.store(VmAddr(a.0 + P), &[n as u8; 64]).map_err(|e| format!("store: {e}"))?;
                let back = c.load(VmAddr(a.0 + P - 8), 72).map_err(|e| format!("load: {e}"))?;
                if back[..8] != [0; 8] || back[8..] != [n as u8; 64] {
                    return Err(format!("round {n}: anonymous memory read {back:?}"));
                }
                c.vm_deallocate(a, 2 * P).map_err(|e| format!("vm_deallocate: {e}"))?;
            }
            // The object still holds the last word of each page.
            for (page, &v) in model.iter().enumerate() {
                if v == 0 {
                    continue;
                }
                let at = VmAddr(m.0 + page as u64 * P + 8 * (v % 500));
                let back = c.load(at, 8).map_err(|e| format!("final load: {e}"))?;
                if back != v.to_le_bytes() {
                    return Err(format!("page {page} lost its data: {back:?}, not {v}"));
                }
            }
            Ok(n)
        };
        let _ = tx.send(run());
    });
    rx
}

// ----- the tests -----

#[test]
fn random_first_frames_and_vanishing_peers_leave_the_daemon_serving() {
    let mut h = Harness::start("fuzz-first", &[]);
    fn first_or_vanish(ctx: &Ctx, seed: u64) -> Result<Tally, String> {
        if seed % 3 == 0 {
            fuzz_vanish(ctx, seed)
        } else {
            fuzz_first_frame(ctx, seed)
        }
    }
    let t = h.run("random_first_frames_and_vanishing_peers_leave_the_daemon_serving", first_or_vanish, ms(900), |t| {
        t.protocol_errors > 0 && t.refused > 0
    });
    assert!(replaying() || (t.protocol_errors > 0 && t.refused > 0), "{t:?}");
}

#[test]
fn mutated_call_frames_get_a_reply_or_a_protocol_error_and_never_hang() {
    let mut h = Harness::start("fuzz-mutated", &[]);
    let t = h.run("mutated_call_frames_get_a_reply_or_a_protocol_error_and_never_hang", fuzz_mutated, ms(1200), |t| {
        t.protocol_errors > 0 && t.replies_ok > 0 && t.kern_errors > 0
    });
    assert!(replaying() || (t.protocol_errors > 0 && t.replies_ok > 0 && t.kern_errors > 0), "{t:?}");
}

#[test]
fn every_call_with_extreme_arguments_gets_an_answer() {
    let mut h = Harness::start("fuzz-calls", &[]);
    let every = |t: &Tally| t.answered == (1 << VARIANTS) - 1;
    let t = h.run("every_call_with_extreme_arguments_gets_an_answer", fuzz_calls, ms(1200), every);
    if !replaying() {
        let missing: Vec<u64> = (0..VARIANTS).filter(|v| t.answered & (1 << v) == 0).collect();
        assert!(missing.is_empty(), "call variants never answered: {missing:?}");
        let never_ok: Vec<u64> = (0..VARIANTS).filter(|v| t.succeeded & (1 << v) == 0).collect();
        eprintln!("variants that never succeeded: {never_ok:?}");
    }
}

fn replaying() -> bool {
    env_u64("MACHVM_FUZZ_REPLAY").is_some()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ----- memory a client can make the daemon hold -----

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's /proc status");
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS").split_whitespace().next().unwrap().parse().unwrap()
}

/// While one of its calls waits (a receive with no timeout, a legitimate
/// call), a connection cannot make the daemon hold any amount of memory
/// by pipelining calls behind it: at most 16 calls wait for their replies
/// (`conn::CALLS_QUEUED`), and a connection that sends more is closed with
/// a protocol error. (Found by this suite: the reader once queued every
/// frame for the worker without a bound; 128 frames of 2 MiB grew the
/// daemon by about 256 MiB.)
#[test]
fn a_connection_whose_call_waits_cannot_make_the_daemon_buffer_without_bound() {
    let dir = Dir::new("fuzz-backlog");
    let mut d = daemon(&dir.socket(), &[]);
    let pid = d.0.id();
    let _watchdog = Watchdog::new(pid, Duration::from_secs(60));
    let ctx = Ctx { socket: dir.socket(), registered: Mutex::default() };
    let mut w = Wire::connect(&dir.socket()).unwrap();
    let (mut r, mut st) = (Rng::new(1), State::default());
    w.send(&mut r, &hello(Role::Task { child_token: None }, "pipelines"), 1);
    w.welcome(&mut st).unwrap();
    call(&mut w, &mut r, &mut st, &ctx, 1, Call::PortAllocate).unwrap().expect("a port");
    let port = st.receive[0];
    // The worker waits for good.
    w.s.write_all(&frame(&Request::Call { seq: 2, call: Call::MsgReceive { name: port, timeout_ms: None } })).unwrap();
    let before = rss_kib(pid);
    let write = Call::VmWrite { address: VmAddr(0x1_0000), data: vec![7; MAX_DATA] };
    let f = frame(&Request::Call { seq: 3, call: write });
    w.s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut accepted = 0;
    while accepted < 128 && w.s.write_all(&f).is_ok() {
        accepted += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(d.0.try_wait().unwrap().is_none(), "the daemon died");
    assert!(
        grown < 64 << 10,
        "{accepted} frames of 2 MiB were taken in while a call waited: the daemon grew by {} MiB",
        grown >> 10
    );
}

/// A task cannot queue any amount of data on a port nobody receives
/// from: a port's queue holds at most `QLIMIT` messages, and a send that
/// cannot be queued within its timeout (0 here) fails with
/// `MACH_SEND_TIMED_OUT`. (Found by this suite: queues were once
/// unbounded and the send's timeout was dropped; 128 messages of 2 MiB
/// grew the daemon by about 256 MiB, each answered `KERN_SUCCESS`.)
#[test]
fn a_port_queue_nobody_receives_from_cannot_grow_without_bound() {
    let dir = Dir::new("fuzz-queue");
    let mut d = daemon(&dir.socket(), &[]);
    let pid = d.0.id();
    let _watchdog = Watchdog::new(pid, Duration::from_secs(60));
    let c = client(&dir.socket(), "queues");
    let port = c.port_allocate().unwrap();
    let before = rss_kib(pid);
    let mut queued = 0;
    for _ in 0..128 {
        let m = SendArgs {
            dest: port,
            dest_disposition: Disposition::MakeSend,
            reply: None,
            id: 1,
            data: vec![5; MAX_DATA],
            rights: Vec::new(),
            timeout_ms: Some(0),
        };
        match c.msg_send(m) {
            Ok(()) => queued += 1,
            Err(e) => {
                assert_eq!(e.kern(), KernError::SendTimedOut);
                break;
            }
        }
    }
    assert_eq!(queued, machvm_core::ipc::QLIMIT);
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(d.0.try_wait().unwrap().is_none(), "the daemon died");
    assert!(
        grown < 64 << 10,
        "{queued} messages of 2 MiB queued on a port nobody receives from (timeout 0): the daemon grew by {} MiB",
        grown >> 10
    );
}
