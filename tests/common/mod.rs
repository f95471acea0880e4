//! Shared fixtures for the integration suites (mostly the proxy suites).
//!
//! A [`World`] is a kernel with a running in-memory pager serving a few
//! memory objects, an owner task holding send rights to them, and (for
//! content tests) a direct shared mapping of each object in the owner with
//! every 8-byte word filled with [`word`]`(object, offset)`. Whatever a
//! proxy mapping reads can then be traced back to the exact object and
//! offset it came from.
//!
//! [`Scripted`] is the same with a scripted pager instead: the test answers
//! each `data_request` itself.
#![allow(dead_code, unused_macros)]

pub mod daemon;
pub mod racing;

use machvm_core::ipc::PortName;
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::pmap::Machine;
use machvm_core::*;
use machvm_pagers::{MemBacking, PagerConn, RunningPager};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub const P: u64 = PAGE_SIZE;

/// The highest page-aligned offset.
pub const TOP: u64 = !(P - 1);

/// Pages in each object of a [`World`].
pub const OBJ_PAGES: u64 = 16;

/// How long a scripted pager waits for the kernel.
pub const WAIT: Duration = Duration::from_secs(5);

/// The word stored at `offset` (8-aligned) of object number `obj`.
pub fn word(obj: usize, offset: u64) -> u64 {
    ((obj as u64 + 1) << 48) | offset
}

/// Kernel settings for the suites: one page per pager request so that
/// request counts are exact.
pub fn config(version: ProxyVersion) -> KernelConfig {
    KernelConfig {
        phys_pages: 4096,
        resident_limit: 4096,
        proxy_version: version,
        cluster_pages: 1,
        ..KernelConfig::default()
    }
}

/// Protections by their three bits.
pub fn prot(bits: u32) -> VmProt {
    VmProt::from_bits_truncate(bits)
}

/// Every protection, `NONE` to `ALL`.
pub fn all_prots() -> impl Iterator<Item = VmProt> {
    (0..8).map(prot)
}

#[derive(Debug)]
pub struct World {
    pub k: Arc<Kernel>,
    pub version: ProxyVersion,
    /// Holds send rights to the objects, makes the proxies.
    pub owner: TaskId,
    /// The objects, named in the owner's space.
    pub objs: Vec<PortName>,
    /// Direct shared mappings of the objects in the owner (filled worlds).
    pub direct: Vec<VmAddr>,
    pub pager: RunningPager,
}

impl World {
    /// Two objects of [`OBJ_PAGES`] pages, filled with [`word`].
    pub fn new(version: ProxyVersion) -> World {
        World::with_objects(version, 2, true)
    }

    /// `n` objects; filled or left to the pager (zeroes).
    pub fn with_objects(version: ProxyVersion, n: usize, fill: bool) -> World {
        World::on_machine(version, n, fill, Arc::new(SoftMachine::new(config(version).phys_pages)))
    }

    /// As [`World::with_objects`], on a machine of the caller's (to read
    /// its counters, or to make races happen).
    pub fn on_machine(version: ProxyVersion, n: usize, fill: bool, machine: Arc<dyn Machine>) -> World {
        let k = Kernel::with_machine(config(version), machine);
        let owner = k.task_create(None).unwrap();
        let mut conn = PagerConn::new(k.clone()).unwrap();
        let mut objs = Vec::new();
        for _ in 0..n {
            let o = conn.new_object().unwrap();
            objs.push(conn.give(o, owner).unwrap());
        }
        let pager = RunningPager::spawn(conn, MemBacking::default());
        let mut w = World { k, version, owner, objs, direct: Vec::new(), pager };
        if fill {
            for i in 0..n {
                let a = w.k.vm_map(owner, MapRequest::anywhere(OBJ_PAGES * P, Some(w.objs[i]))).unwrap();
                let data: Vec<u8> = (0..OBJ_PAGES * P).step_by(8).flat_map(|off| word(i, off).to_le_bytes()).collect();
                w.k.vm_write(owner, a, &data).unwrap();
                w.direct.push(a);
            }
        }
        w
    }

    /// A new task with nothing in it.
    pub fn task(&self) -> TaskId {
        self.k.task_create(None).unwrap()
    }

    /// A proxy made by the owner with the kernel's configured version.
    /// Each window is `(object name, offset, start, len)`.
    pub fn proxy(&self, max: VmProt, windows: &[(PortName, u64, u64, u64)]) -> Result<ProxyRights> {
        let (o, off, s, l) = unzip(windows);
        self.k.memory_object_create_proxy(self.owner, max, &o, &off, &s, &l)
    }

    /// As [`World::proxy`], made by `task` from names in its space.
    pub fn proxy_from(&self, task: TaskId, windows: &[(PortName, u64, u64, u64)]) -> Result<ProxyRights> {
        let (o, off, s, l) = unzip(windows);
        self.k.memory_object_create_proxy(task, VmProt::ALL, &o, &off, &s, &l)
    }

    /// As [`World::proxy`] with a chosen version.
    pub fn proxy_v(
        &self,
        version: ProxyVersion,
        max: VmProt,
        windows: &[(PortName, u64, u64, u64)],
    ) -> Result<ProxyRights> {
        let (o, off, s, l) = unzip(windows);
        self.k.memory_object_create_proxy_version(self.owner, max, &o, &off, &s, &l, version)
    }

    /// A copy of the owner's send right `name`, given to `to`.
    pub fn give(&self, name: PortName, to: TaskId) -> PortName {
        self.k.port_transfer(self.owner, name, machvm_core::ipc::Disposition::CopySend, to).unwrap()
    }

    /// A copy of `from`'s send right `name`, given to `to`.
    pub fn give_from(&self, from: TaskId, name: PortName, to: TaskId) -> PortName {
        self.k.port_transfer(from, name, machvm_core::ipc::Disposition::CopySend, to).unwrap()
    }

    /// Maps `size` bytes of `name` from `offset` anywhere in `task`,
    /// asking for `READ|WRITE` / `ALL` as glibc's mmap does.
    pub fn map(&self, task: TaskId, name: PortName, offset: u64, size: u64) -> Result<VmAddr> {
        self.k.vm_map(task, MapRequest::anywhere(size, Some(name)).offset(offset))
    }

    /// Asserts that the `pages` pages at `addr` in `task` show object
    /// `obj` from `start` (first and last word of each page).
    #[track_caller]
    pub fn assert_shows(&self, task: TaskId, addr: VmAddr, pages: u64, obj: usize, start: u64) {
        for i in 0..pages {
            for w in [0, P - 8] {
                let got = self.k.read_u64(task, VmAddr(addr.0 + i * P + w));
                assert_eq!(got, Ok(word(obj, start + i * P + w)), "page {i} word {w:#x}");
            }
        }
    }

    /// The word the owner's direct mapping shows at `offset` of object `obj`.
    pub fn direct_word(&self, obj: usize, offset: u64) -> u64 {
        self.k.read_u64(self.owner, VmAddr(self.direct[obj].0 + offset)).unwrap()
    }
}

pub fn unzip(windows: &[(PortName, u64, u64, u64)]) -> (Vec<PortName>, Vec<u64>, Vec<u64>, Vec<u64>) {
    (
        windows.iter().map(|w| w.0).collect(),
        windows.iter().map(|w| w.1).collect(),
        windows.iter().map(|w| w.2).collect(),
        windows.iter().map(|w| w.3).collect(),
    )
}

/// A kernel, a scripted pager serving one object, and a client task that
/// holds a send right to it.
#[derive(Debug)]
pub struct Scripted {
    pub k: Arc<Kernel>,
    pub pager: PagerConn,
    /// The object, named in the pager's space.
    pub obj: PortName,
    pub client: TaskId,
    /// The object, named in the client's space.
    pub name: PortName,
}

impl Scripted {
    pub fn new(version: ProxyVersion) -> Scripted {
        let k = Kernel::new(config(version));
        let client = k.task_create(None).unwrap();
        let mut pager = PagerConn::new(k.clone()).unwrap();
        let obj = pager.new_object().unwrap();
        let name = pager.give(obj, client).unwrap();
        Scripted { k, pager, obj, client, name }
    }

    /// Waits for the next `data_request` and checks it is for one page at
    /// `offset` of the object.
    #[track_caller]
    pub fn expect(&mut self, offset: u64) {
        let (o, off, len, _) = self.pager.expect_request(WAIT).expect("a data_request");
        assert_eq!((o, off, len), (self.obj, offset, P));
    }

    /// Supplies one page whose first word is `v`.
    pub fn supply(&self, offset: u64, v: u64) {
        let mut data = vec![0u8; P as usize];
        data[..8].copy_from_slice(&v.to_le_bytes());
        self.pager.supply(self.obj, offset, &data).unwrap();
    }
}

/// Reads a word on another thread (a task thread that may block on a pager).
pub fn spawn_read(k: &Arc<Kernel>, task: TaskId, addr: VmAddr) -> JoinHandle<Result<u64>> {
    let k = k.clone();
    std::thread::spawn(move || k.read_u64(task, addr))
}

/// Joins a reader, failing the test if it does not finish in time.
#[track_caller]
pub fn join(h: JoinHandle<Result<u64>>) -> Result<u64> {
    let deadline = std::time::Instant::now() + WAIT;
    while !h.is_finished() {
        assert!(std::time::Instant::now() < deadline, "a faulting thread hangs");
        std::thread::sleep(Duration::from_millis(1));
    }
    h.join().unwrap()
}

/// `addr + bytes`, for tests.
pub trait Plus {
    fn plus(self, bytes: u64) -> VmAddr;
}

impl Plus for VmAddr {
    fn plus(self, bytes: u64) -> VmAddr {
        VmAddr(self.0 + bytes)
    }
}

/// Instantiates each rule (a `fn(ProxyVersion)`) once per proxy version, in
/// modules `mapping` and `paging`.
macro_rules! both {
    ($($rule:ident),* $(,)?) => {
        mod mapping {
            $(#[test] fn $rule() { super::$rule(machvm_core::ProxyVersion::Mapping) })*
        }
        mod paging {
            $(#[test] fn $rule() { super::$rule(machvm_core::ProxyVersion::Paging) })*
        }
    };
}

/// A file in the temporary directory, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, contents: &[u8]) -> TempFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("machvm-test-{}-{tag}-{n}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
    pub fn open(&self) -> std::fs::File {
        std::fs::OpenOptions::new().read(true).write(true).open(&self.0).unwrap()
    }
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
