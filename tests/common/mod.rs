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
//!
//! Both run in-process or over `machvmd`'s socket ([`link`]): each rule is
//! written once against [`Task`]s and instantiated on both transports
//! ([`both!`], [`transports!`]).
#![allow(dead_code, unused_macros, unused_imports)]

pub mod daemon;
pub mod link;
pub mod racing;
pub mod workload;

pub use link::{die, Host, Running, Task, TaskLink, Transport};
use machvm_core::ipc::{Disposition, PortName};
use machvm_core::pmap::Machine;
use machvm_core::*;
use machvm_pagers::{MemBacking, PagerConn};
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

/// A kernel with a pager serving memory objects and the tasks of a rule,
/// in-process or over `machvmd`'s socket ([`Transport`]).
#[derive(Debug)]
pub struct World {
    /// Serves the objects (dropped first: it stops before the kernel).
    pub pager: Running,
    pub k: Arc<Kernel>,
    pub version: ProxyVersion,
    /// Holds send rights to the objects, makes the proxies.
    pub owner: Task,
    /// The objects, named in the owner's space.
    pub objs: Vec<PortName>,
    /// Direct shared mappings of the objects in the owner (filled worlds).
    pub direct: Vec<VmAddr>,
    pub host: Host,
}

impl World {
    /// Two objects of [`OBJ_PAGES`] pages, filled with [`word`].
    pub fn new(version: ProxyVersion, via: Transport) -> World {
        World::with_objects(version, via, 2, true)
    }

    /// `n` objects; filled or left to the pager (zeroes).
    pub fn with_objects(version: ProxyVersion, via: Transport, n: usize, fill: bool) -> World {
        World::on(Host::boot(via, config(version)), version, n, fill)
    }

    /// As [`World::with_objects`] in-process, on a machine of the caller's
    /// (to read its counters, or to make races happen).
    pub fn on_machine(version: ProxyVersion, n: usize, fill: bool, machine: Arc<dyn Machine>) -> World {
        World::on(Host::on_machine(config(version), machine), version, n, fill)
    }

    fn on(host: Host, version: ProxyVersion, n: usize, fill: bool) -> World {
        let owner = host.task();
        let mut conn = host.pager();
        let mut objs = Vec::new();
        for _ in 0..n {
            let o = conn.new_object().unwrap();
            objs.push(host.transfer(conn.link.id(), o, Disposition::MakeSend, owner.id()).unwrap());
        }
        let pager = host.run_pager(conn, MemBacking::default());
        let mut w = World { pager, k: host.k.clone(), version, owner, objs, direct: Vec::new(), host };
        if fill {
            for i in 0..n {
                let a = w.owner.vm_map(MapRequest::anywhere(OBJ_PAGES * P, Some(w.objs[i]))).unwrap();
                let data: Vec<u8> = (0..OBJ_PAGES * P).step_by(8).flat_map(|off| word(i, off).to_le_bytes()).collect();
                w.owner.vm_write(a, &data).unwrap();
                w.direct.push(a);
            }
        }
        w
    }

    /// A new task with nothing in it.
    pub fn task(&self) -> Task {
        self.host.task()
    }

    /// A proxy made by the owner with the kernel's configured version.
    /// Each window is `(object name, offset, start, len)`.
    pub fn proxy(&self, max: VmProt, windows: &[(PortName, u64, u64, u64)]) -> Result<ProxyRights> {
        let (o, off, s, l) = unzip(windows);
        self.owner.memory_object_create_proxy(max, &o, &off, &s, &l)
    }

    /// As [`World::proxy`], made by `task` from names in its space.
    pub fn proxy_from(&self, task: &Task, windows: &[(PortName, u64, u64, u64)]) -> Result<ProxyRights> {
        let (o, off, s, l) = unzip(windows);
        task.memory_object_create_proxy(VmProt::ALL, &o, &off, &s, &l)
    }

    /// As [`World::proxy`] with a chosen version.
    pub fn proxy_v(
        &self,
        version: ProxyVersion,
        max: VmProt,
        windows: &[(PortName, u64, u64, u64)],
    ) -> Result<ProxyRights> {
        let (o, off, s, l) = unzip(windows);
        self.owner.memory_object_create_proxy_version(max, &o, &off, &s, &l, version)
    }

    /// Fixture only: a copy of the owner's send right `name`, given to
    /// `to` (as a message would carry it).
    pub fn give(&self, name: PortName, to: &Task) -> PortName {
        self.host.give(&self.owner, name, to)
    }

    /// Fixture only: a copy of `from`'s send right `name`, given to `to`.
    pub fn give_from(&self, from: &Task, name: PortName, to: &Task) -> PortName {
        self.host.give(from, name, to)
    }

    /// Maps `size` bytes of `name` from `offset` anywhere in `task`,
    /// asking for `READ|WRITE` / `ALL` as glibc's mmap does.
    pub fn map(&self, task: &Task, name: PortName, offset: u64, size: u64) -> Result<VmAddr> {
        task.vm_map(MapRequest::anywhere(size, Some(name)).offset(offset))
    }

    /// Asserts that the `pages` pages at `addr` in `task` show object
    /// `obj` from `start` (first and last word of each page).
    #[track_caller]
    pub fn assert_shows(&self, task: &Task, addr: VmAddr, pages: u64, obj: usize, start: u64) {
        for i in 0..pages {
            for w in [0, P - 8] {
                let got = task.read_u64(VmAddr(addr.0 + i * P + w));
                assert_eq!(got, Ok(word(obj, start + i * P + w)), "page {i} word {w:#x}");
            }
        }
    }

    /// The word the owner's direct mapping shows at `offset` of object `obj`.
    pub fn direct_word(&self, obj: usize, offset: u64) -> u64 {
        self.owner.read_u64(VmAddr(self.direct[obj].0 + offset)).unwrap()
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
    pub pager: PagerConn<Task>,
    /// The object, named in the pager's space.
    pub obj: PortName,
    pub client: Task,
    /// The object, named in the client's space.
    pub name: PortName,
    pub k: Arc<Kernel>,
    pub host: Host,
}

impl Scripted {
    pub fn new(version: ProxyVersion, via: Transport) -> Scripted {
        let host = Host::boot(via, config(version));
        let client = host.task();
        let mut pager = host.pager();
        let obj = pager.new_object().unwrap();
        let name = host.transfer(pager.link.id(), obj, Disposition::MakeSend, client.id()).unwrap();
        Scripted { pager, obj, client, name, k: host.k.clone(), host }
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
pub fn spawn_read(task: &Task, addr: VmAddr) -> JoinHandle<Result<u64>> {
    let task = task.clone();
    std::thread::spawn(move || task.read_u64(addr))
}

/// Joins a thread, failing the test if it does not finish in time.
#[track_caller]
pub fn join<T>(h: JoinHandle<T>) -> T {
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

/// Instantiates each rule (a `fn(ProxyVersion, Transport)`) once per
/// proxy version and transport, in modules `mapping::local`,
/// `mapping::socket`, `paging::local` and `paging::socket`.
macro_rules! both {
    ($($rule:ident),* $(,)?) => {
        mod mapping {
            mod local {
                $(#[test] fn $rule() {
                    super::super::$rule(machvm_core::ProxyVersion::Mapping, $crate::common::Transport::Local)
                })*
            }
            mod socket {
                $(#[test] fn $rule() {
                    super::super::$rule(machvm_core::ProxyVersion::Mapping, $crate::common::Transport::Socket)
                })*
            }
        }
        mod paging {
            mod local {
                $(#[test] fn $rule() {
                    super::super::$rule(machvm_core::ProxyVersion::Paging, $crate::common::Transport::Local)
                })*
            }
            mod socket {
                $(#[test] fn $rule() {
                    super::super::$rule(machvm_core::ProxyVersion::Paging, $crate::common::Transport::Socket)
                })*
            }
        }
    };
}

/// Instantiates each rule (a `fn(Transport)`) once per transport, in
/// modules `local` and `socket`.
macro_rules! transports {
    ($($rule:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $rule() { super::$rule($crate::common::Transport::Local) })*
        }
        mod socket {
            $(#[test] fn $rule() { super::$rule($crate::common::Transport::Socket) })*
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
