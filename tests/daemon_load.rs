//! A load test of `machvmd`: 16 client processes (each one connection, so
//! one task) and 4 pager processes, for a bounded time, with every byte
//! checked; one pager is killed half way.
//!
//! Each client owns a slice of 8 pages in each pager's object and keeps a
//! model of what it stored there (a counter per page, in a pattern that
//! names the client, the pager and the page); it stores and loads back,
//! maps fresh windows onto its slice, allocates and frees anonymous
//! memory, touches pages no one has touched yet, and passes read-only
//! proxies (of a page of its slice that never changes, or of anonymous
//! memory it then frees) to other clients through their inbox ports,
//! found in the daemon's name table: the receiver must read the sender's
//! data and must not be able to write it.
//!
//! Half way, pager `z2` is killed. From then on a page of its object that
//! is not resident fails with `KERN_MEMORY_ERROR` (a page already resident
//! still reads as it was written), a new mapping of its dead name fails,
//! and nothing hangs; the other pagers' data stays correct.
//!
//! Afterwards: every client's data is checked again by a fresh connection
//! (it outlives the clients, in the surviving pagers' objects), the
//! daemon lists only the pagers and the probe as tasks, its anonymous
//! memory and objects are gone, and its resident set is back near where it
//! started (within 64 MiB).
//!
//! The clients are this test binary run again, with `MACHVM_LOAD_CLIENT`
//! set (see [`client_process`]). The run lasts about 3 s;
//! `MACHVM_LOAD_SECS=N` makes it N seconds. `MACHVM_LOAD_SEED` picks the
//! random choices (fixed by default; a failure prints it).

mod common;
use common::daemon::{
    client, daemon, pager, stat, threads_and_fds, wait_threads_and_fds_back, wait_until, Dir, Proc, Watchdog,
};
use machvm_client::{map_anywhere, ClientError, Connection};
use machvm_protocol::ipc::{Disposition, PortName};
use machvm_protocol::wire::{InspectWhat, MapArgs, Reply, Role};
use machvm_protocol::{KernError, VmAddr, VmOffset, VmProt, PAGE_SIZE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const P: u64 = PAGE_SIZE;
const CLIENTS: u64 = 16;
const PAGERS: u64 = 4;
/// The pager killed half way.
const VICTIM: u64 = 2;
/// Pages each client owns in each pager's object (one pager cluster).
const SLICE: u64 = 8;
/// Where in each object the pages no one touched before begin, and how
/// many each client may use, a cluster apart.
const FAR: u64 = 1 << 16;
const FAR_PAGES: u64 = 512;
const FAR_STRIDE: u64 = 8;
/// The most fresh pages a client touches (each costs a cluster of
/// resident pages in the daemon, for as long as the object lives).
const FAR_TOUCHES: usize = 24;
/// The counter of the page of each slice that never changes (the one
/// proxies show).
const FROZEN: u64 = 0x00f0_f0f0;
/// How long one call may take before a client calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64*, seeded through splitmix.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix(seed, 0x10ad) | 1)
    }
    fn u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.u64() % n.max(1)
    }
    fn coin(&mut self) -> bool {
        self.u64() & 1 == 1
    }
}

/// The page `page` of client `client`'s slice of pager `pager` after its
/// `counter`th store (all zeroes before the first).
fn pattern(client: u64, pager: u64, page: u64, counter: u64) -> Vec<u8> {
    if counter == 0 {
        return vec![0; P as usize];
    }
    let mut v = Vec::with_capacity(P as usize);
    v.extend_from_slice(&counter.to_le_bytes());
    v.extend_from_slice(&((client << 32) | (pager << 16) | page).to_le_bytes());
    let salt = (counter ^ client ^ (pager << 3) ^ (page << 5)) as u8;
    v.extend((16..P).map(|k| (k as u8).wrapping_mul(31) ^ salt));
    v
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn pager_name(p: u64) -> String {
    format!("z{p}")
}

fn inbox_name(c: u64) -> String {
    format!("inbox-{c}")
}

// ----- one client process -----

/// What a client process reports (to a file the parent reads).
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
struct Report {
    id: u64,
    pid: u32,
    ops: u64,
    /// The last counter stored in each page of each pager's slice.
    model: Vec<Vec<u64>>,
    /// Fresh pages stored: (pager, page of the far window, value).
    far: Vec<(u64, u64, u64)>,
    proxies_sent: u64,
    proxies_checked: u64,
    /// Calls on the killed pager's memory that failed as they should.
    memory_errors: u64,
    /// Errors mapping (or making proxies of) the killed pager's dead name.
    dead_name_errors: Vec<String>,
    /// Sends to an inbox whose client had gone already.
    late_sends: u64,
    anon_rounds: u64,
}

/// Is the kill of pager [`VICTIM`] under way (`killing`) or done, the
/// process reaped (`killed`)? The parent marks both with files.
struct Kill {
    dir: PathBuf,
}

impl Kill {
    fn killing(&self) -> bool {
        self.dir.join("killing").exists()
    }
    fn killed(&self) -> bool {
        self.dir.join("killed").exists()
    }
}

struct ClientProc {
    id: u64,
    c: Connection,
    r: Rng,
    kill: Kill,
    objs: Vec<PortName>,
    /// Each pager's object, mapped whole (every client's slice).
    main: Vec<VmAddr>,
    /// This client's window of fresh pages in each object.
    far: Vec<VmAddr>,
    far_next: Vec<u64>,
    inbox: PortName,
    peers: HashMap<u64, PortName>,
    /// Anonymous regions kept for a while: (address, pages, tag).
    anon: Vec<(VmAddr, u64, u64)>,
    /// Set once this client has seen the kill through.
    saw_kill: bool,
    rep: Report,
    /// What the client is doing, for its watchdog.
    doing: Arc<Mutex<String>>,
    since: Arc<AtomicU64>,
}

/// The outcome of a call on a pager's memory, judged by whether that
/// pager may be dead: `Ok(Some(v))` it worked, `Ok(None)` it failed as a
/// dead pager's memory may, `Err` it must not have failed (or failed the
/// wrong way).
type Judged<T> = Result<Option<T>, String>;

impl ClientProc {
    fn step(&self, what: impl Into<String>) {
        *self.doing.lock().unwrap() = what.into();
        self.since.store(now_ms(), Ordering::Relaxed);
    }

    /// Runs `f` on pager `p`'s memory. Before the kill it must work; once
    /// it started, a failure must be `KERN_MEMORY_ERROR` (or, with
    /// `dead_name`, the error of a dead name).
    fn on<T>(
        &mut self,
        p: u64,
        what: &str,
        dead_name: bool,
        f: impl FnOnce(&Connection) -> Result<T, ClientError>,
    ) -> Judged<T> {
        let res = f(&self.c);
        let during = p == VICTIM && self.kill.killing();
        match res {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Kern(KernError::MemoryError)) if during => {
                self.rep.memory_errors += 1;
                Ok(None)
            }
            Err(ClientError::Kern(e)) if during && dead_name => {
                let s = e.to_string();
                if !self.rep.dead_name_errors.contains(&s) {
                    self.rep.dead_name_errors.push(s);
                }
                match e {
                    // The object's name is a dead name now.
                    KernError::InvalidCapability => Ok(None),
                    other => Err(format!("{what} on the dead pager z{p}: {other}")),
                }
            }
            Err(e) => Err(format!("{what} on pager z{p} (kill started: {during}): {e}")),
        }
    }

    fn main_page(&self, p: u64, client: u64, page: u64) -> VmAddr {
        VmAddr(self.main[p as usize].0 + (client * SLICE + page) * P)
    }

    fn check_page(&mut self, p: u64, page: u64, via: VmAddr) -> Result<(), String> {
        let want = pattern(self.id, p, page, self.rep.model[p as usize][page as usize]);
        if let Some(got) = self.on(p, "load", false, |c| c.load(via, P as u32))? {
            if got != want {
                return Err(format!(
                    "pager z{p} page {page}: read counter {:?}, expected {}",
                    &got[..16],
                    self.rep.model[p as usize][page as usize]
                ));
            }
        }
        Ok(())
    }

    fn store_page(&mut self, p: u64, page: u64, via: VmAddr) -> Result<(), String> {
        let next = self.rep.model[p as usize][page as usize] + 1;
        let data = pattern(self.id, p, page, next);
        if self.on(p, "store", false, |c| c.store(via, &data))?.is_some() {
            self.rep.model[p as usize][page as usize] = next;
        }
        Ok(())
    }

    fn setup(&mut self) -> Result<(), String> {
        self.step("setup");
        for p in 0..PAGERS {
            let o = self.c.name_lookup(&pager_name(p)).map_err(|e| format!("looking up z{p}: {e}"))?;
            self.objs.push(o);
            let a = self.c.vm_map(map_anywhere(CLIENTS * SLICE * P, Some(o))).map_err(|e| format!("map z{p}: {e}"))?;
            self.main.push(a);
            let far =
                MapArgs { offset: VmOffset((FAR + self.id * FAR_PAGES) * P), ..map_anywhere(FAR_PAGES * P, Some(o)) };
            self.far.push(self.c.vm_map(far).map_err(|e| format!("map z{p}'s far window: {e}"))?);
            self.far_next.push(0);
            self.rep.model.push(vec![0; SLICE as usize]);
            // The page proxies show, written once.
            let at = self.main_page(p, self.id, 0);
            self.c.store(at, &pattern(self.id, p, 0, FROZEN)).map_err(|e| format!("store z{p}: {e}"))?;
            self.rep.model[p as usize][0] = FROZEN;
        }
        let inbox = self.c.port_allocate().map_err(|e| e.to_string())?;
        self.c.port_make_send(inbox).map_err(|e| e.to_string())?;
        self.c.name_register(&inbox_name(self.id), inbox).map_err(|e| format!("registering the inbox: {e}"))?;
        self.inbox = inbox;
        Ok(())
    }

    /// The first thing a client does once the kill is through. When the
    /// pager's name has left the name table, the daemon has terminated its
    /// task (the name goes after the task): a fresh page of its object
    /// must fail with `KERN_MEMORY_ERROR`, and a new mapping of its dead
    /// name with `KERN_INVALID_CAPABILITY`.
    fn after_kill(&mut self) -> Result<(), String> {
        self.saw_kill = true;
        self.step("after the kill");
        let victim = pager_name(VICTIM);
        wait_for(|| matches!(self.c.name_lookup(&victim), Err(ClientError::Kern(KernError::InvalidName))))
            .map_err(|()| format!("{victim} is still in the name table 10 s after its pager died"))?;
        let at = VmAddr(self.far[VICTIM as usize].0 + (FAR_PAGES - FAR_STRIDE) * P);
        match self.c.load(at, 8) {
            Err(ClientError::Kern(KernError::MemoryError)) => self.rep.memory_errors += 1,
            other => return Err(format!("a fresh page of the killed pager: {other:?}, not KERN_MEMORY_ERROR")),
        }
        let o = self.objs[VICTIM as usize];
        match self.c.vm_map(map_anywhere(SLICE * P, Some(o))) {
            Err(ClientError::Kern(KernError::InvalidCapability)) => {
                let e = KernError::InvalidCapability.to_string();
                if !self.rep.dead_name_errors.contains(&e) {
                    self.rep.dead_name_errors.push(e);
                }
                Ok(())
            }
            other => Err(format!("mapping the killed pager's dead name: {other:?}, not KERN_INVALID_CAPABILITY")),
        }
    }

    fn op(&mut self) -> Result<(), String> {
        if !self.saw_kill && self.kill.killed() {
            self.after_kill()?;
        }
        let p = self.r.below(PAGERS);
        let page = 1 + self.r.below(SLICE - 1);
        match self.r.below(100) {
            // Store a page of the slice, and load it back.
            0..=29 => {
                self.step(format!("store and load z{p} page {page}"));
                let at = self.main_page(p, self.id, page);
                self.store_page(p, page, at)?;
                self.check_page(p, page, at)?;
            }
            // Check a page of the slice.
            30..=44 => {
                let page = self.r.below(SLICE);
                self.step(format!("check z{p} page {page}"));
                let at = self.main_page(p, self.id, page);
                self.check_page(p, page, at)?;
            }
            // A fresh window onto the slice: the same data, both ways.
            45..=52 => {
                self.step(format!("window on z{p}"));
                let o = self.objs[p as usize];
                let args = MapArgs { offset: VmOffset(self.id * SLICE * P), ..map_anywhere(SLICE * P, Some(o)) };
                if let Some(w) = self.on(p, "vm_map", true, |c| c.vm_map(args))? {
                    for pg in 0..SLICE {
                        self.check_page(p, pg, VmAddr(w.0 + pg * P))?;
                    }
                    if self.r.coin() {
                        self.store_page(p, page, VmAddr(w.0 + page * P))?;
                        let at = self.main_page(p, self.id, page);
                        self.check_page(p, page, at)?;
                    }
                    self.c.vm_deallocate(w, SLICE * P).map_err(|e| format!("vm_deallocate: {e}"))?;
                }
            }
            // A page no one has touched.
            53..=56 if self.rep.far.len() < FAR_TOUCHES && self.far_next[p as usize] + FAR_STRIDE < FAR_PAGES => {
                self.step(format!("fresh page of z{p}"));
                let pg = self.far_next[p as usize];
                self.far_next[p as usize] += FAR_STRIDE;
                let at = VmAddr(self.far[p as usize].0 + pg * P);
                let dead = p == VICTIM && self.kill.killed();
                match self.on(p, "fresh load", false, |c| c.load(at, 8))? {
                    Some(_) if dead => return Err(format!("a fresh page of the dead pager z{p} read as data")),
                    Some(d) if d != [0; 8] => return Err(format!("a fresh page of z{p} read {d:?}")),
                    Some(_) => {
                        let v = (self.id << 40) | (p << 32) | pg;
                        if self.on(p, "fresh store", false, |c| c.store(at, &v.to_le_bytes()))?.is_some() {
                            self.rep.far.push((p, pg, v));
                        }
                    }
                    None => {}
                }
            }
            // Anonymous memory: allocate, fill, check, free (now or later).
            57..=69 => {
                let pages = 1 + self.r.below(16);
                self.step(format!("anonymous {pages} pages"));
                let tag = self.rep.ops;
                let a = self.c.vm_allocate(VmAddr(0), pages * P, true).map_err(|e| format!("vm_allocate: {e}"))?;
                for pg in 0..pages {
                    let data = pattern(self.id, 100, pg, tag + 1);
                    self.c.store(VmAddr(a.0 + pg * P), &data).map_err(|e| format!("anonymous store: {e}"))?;
                }
                self.check_anon(a, pages, tag)?;
                if self.r.coin() && self.anon.len() < 8 {
                    self.anon.push((a, pages, tag));
                } else {
                    self.free_anon(a, pages)?;
                }
                self.rep.anon_rounds += 1;
            }
            70..=74 if !self.anon.is_empty() => {
                self.step("anonymous check and free");
                let (a, pages, tag) = self.anon.swap_remove(self.r.below(self.anon.len() as u64) as usize);
                self.check_anon(a, pages, tag)?;
                self.free_anon(a, pages)?;
            }
            // A read-only proxy for another client.
            75..=84 => self.send_proxy(p)?,
            // Whatever is in the inbox.
            _ => self.receive(Some(0))?,
        }
        self.rep.ops += 1;
        Ok(())
    }

    fn check_anon(&mut self, a: VmAddr, pages: u64, tag: u64) -> Result<(), String> {
        for pg in 0..pages {
            let got = self.c.load(VmAddr(a.0 + pg * P), P as u32).map_err(|e| format!("anonymous load: {e}"))?;
            if got != pattern(self.id, 100, pg, tag + 1) {
                return Err(format!("anonymous page {pg} of {a:?} read {:?}", &got[..16]));
            }
        }
        Ok(())
    }

    fn free_anon(&mut self, a: VmAddr, pages: u64) -> Result<(), String> {
        self.c.vm_deallocate(a, pages * P).map_err(|e| format!("vm_deallocate: {e}"))?;
        match self.c.load(a, 1) {
            Err(ClientError::Kern(KernError::InvalidAddress)) => Ok(()),
            other => Err(format!("freed memory at {a:?} still answers: {other:?}")),
        }
    }

    fn send_proxy(&mut self, p: u64) -> Result<(), String> {
        let to = (self.id + 1 + self.r.below(CLIENTS - 1)) % CLIENTS;
        self.step(format!("proxy for client {to}"));
        let dest = match self.peers.get(&to) {
            Some(&d) => d,
            None => match self.c.name_lookup(&inbox_name(to)) {
                Ok(d) => {
                    self.peers.insert(to, d);
                    d
                }
                // Not registered yet, or gone already.
                Err(ClientError::Kern(KernError::InvalidName)) => return Ok(()),
                Err(e) => return Err(format!("looking up {}: {e}", inbox_name(to))),
            },
        };
        let (proxy, revoke, data, region) = if self.r.coin() {
            // The slice's frozen page of pager p.
            let o = self.objs[p as usize];
            let start = self.id * SLICE * P;
            let made =
                self.on(p, "proxy_create", true, |c| c.proxy_create(VmProt::READ, &[o], &[0], &[start], &[P], None))?;
            let Some((proxy, revoke)) = made else { return Ok(()) };
            let mut data = vec![1u8];
            data.extend_from_slice(&self.id.to_le_bytes());
            data.extend_from_slice(&p.to_le_bytes());
            (proxy, revoke, data, None)
        } else {
            // Two pages of anonymous memory, freed once the proxy is sent.
            let tag = self.rep.ops + 1;
            let a = self.c.vm_allocate(VmAddr(0), 2 * P, true).map_err(|e| format!("vm_allocate: {e}"))?;
            for pg in 0..2 {
                let d = pattern(self.id, 200, pg, tag);
                self.c.store(VmAddr(a.0 + pg * P), &d).map_err(|e| format!("store: {e}"))?;
            }
            let (proxy, revoke) =
                self.c.call_region_proxy(a, 2 * P).map_err(|e| format!("vm_region_create_proxy: {e}"))?;
            let mut data = vec![2u8];
            data.extend_from_slice(&self.id.to_le_bytes());
            data.extend_from_slice(&tag.to_le_bytes());
            (proxy, revoke, data, Some(a))
        };
        match self.c.send(dest, 7, data, vec![(proxy, Disposition::MoveSend)]) {
            Ok(()) => self.rep.proxies_sent += 1,
            // Its client has gone: the inbox is a dead name.
            Err(ClientError::Kern(KernError::SendInvalidDest)) => {
                self.rep.late_sends += 1;
                self.peers.remove(&to);
                let _ = self.c.port_deallocate(dest);
                let _ = self.c.port_deallocate(proxy);
            }
            // Its inbox is full (a port queues at most QLIMIT messages):
            // the send changed nothing, so the proxy is still ours.
            Err(ClientError::Kern(KernError::SendTimedOut)) => {
                self.rep.late_sends += 1;
                let _ = self.c.port_deallocate(proxy);
            }
            Err(e) => return Err(format!("sending a proxy to client {to}: {e}")),
        }
        self.c.port_deallocate(revoke).map_err(|e| format!("dropping the revoke right: {e}"))?;
        if let Some(a) = region {
            self.c.vm_deallocate(a, 2 * P).map_err(|e| format!("vm_deallocate: {e}"))?;
        }
        Ok(())
    }

    /// Takes the messages in the inbox; each proxy must read as its
    /// sender wrote, and refuse writes.
    fn receive(&mut self, timeout: Option<u64>) -> Result<(), String> {
        self.step("receive");
        let m = match self.c.msg_receive(self.inbox, timeout) {
            Ok(m) => m,
            Err(ClientError::Kern(KernError::RcvTimedOut)) => return Ok(()),
            Err(e) => return Err(format!("receive: {e}")),
        };
        if m.id != 7 || m.data.len() != 17 || m.rights.len() != 1 {
            return Err(format!("a message no client sent: id {} {:?} {:?}", m.id, m.data, m.rights));
        }
        let sender = u64::from_le_bytes(m.data[1..9].try_into().unwrap());
        let arg = u64::from_le_bytes(m.data[9..17].try_into().unwrap());
        let proxy = m.rights[0].0;
        let (pages, p, want): (u64, Option<u64>, Vec<Vec<u8>>) = match m.data[0] {
            1 => (1, Some(arg), vec![pattern(sender, arg, 0, FROZEN)]),
            _ => (2, None, (0..2).map(|pg| pattern(sender, 200, pg, arg)).collect()),
        };
        self.step(format!("proxy from client {sender} ({:?})", p));
        let map = |c: &Connection| c.vm_map(map_anywhere(pages * P, Some(proxy)));
        let mapped = match p {
            Some(p) => self.on(p, "vm_map of a proxy", true, map)?,
            None => Some(map(&self.c).map_err(|e| format!("mapping a proxy of anonymous memory: {e}"))?),
        };
        if let Some(a) = mapped {
            for (pg, want) in want.iter().enumerate() {
                let at = VmAddr(a.0 + pg as u64 * P);
                let got = match p {
                    Some(p) => self.on(p, "load through a proxy", false, |c| c.load(at, P as u32))?,
                    None => Some(self.c.load(at, P as u32).map_err(|e| format!("load through a proxy: {e}"))?),
                };
                if let Some(got) = got {
                    if &got != want {
                        return Err(format!("a proxy from client {sender} reads {:?}", &got[..16]));
                    }
                }
                match self.c.store(at, b"mine") {
                    Err(ClientError::Kern(KernError::ProtectionFailure)) => {}
                    other => return Err(format!("a store through a read-only proxy: {other:?}")),
                }
            }
            match self.c.vm_protect(a, pages * P, false, VmProt::DEFAULT) {
                Err(ClientError::Kern(KernError::ProtectionFailure)) => {}
                other => return Err(format!("making a read-only proxy's mapping writable: {other:?}")),
            }
            self.c.vm_deallocate(a, pages * P).map_err(|e| format!("vm_deallocate: {e}"))?;
            self.rep.proxies_checked += 1;
        }
        self.c.port_deallocate(proxy).map_err(|e| format!("dropping a proxy: {e}"))?;
        Ok(())
    }

    /// The end: the inbox drained, every page checked once more.
    fn finish(&mut self) -> Result<(), String> {
        loop {
            let before = self.rep.proxies_checked;
            self.receive(Some(50))?;
            if self.rep.proxies_checked == before {
                break;
            }
        }
        self.step("final checks");
        for p in 0..PAGERS {
            for page in 0..SLICE {
                let at = self.main_page(p, self.id, page);
                self.check_page(p, page, at)?;
            }
        }
        for (p, pg, v) in self.rep.far.clone() {
            let at = VmAddr(self.far[p as usize].0 + pg * P);
            if let Some(d) = self.on(p, "fresh page check", false, |c| c.load(at, 8))? {
                if d != v.to_le_bytes() {
                    return Err(format!("fresh page {pg} of z{p} reads {d:?}"));
                }
            }
        }
        for (a, pages, tag) in std::mem::take(&mut self.anon) {
            self.check_anon(a, pages, tag)?;
            self.free_anon(a, pages)?;
        }
        Ok(())
    }
}

/// `vm_region_create_proxy` through the generic call.
trait RegionProxy {
    fn call_region_proxy(&self, address: VmAddr, len: u64) -> Result<(PortName, PortName), ClientError>;
}

impl RegionProxy for Connection {
    fn call_region_proxy(&self, address: VmAddr, len: u64) -> Result<(PortName, PortName), ClientError> {
        match self.call(machvm_protocol::wire::Call::RegionProxy { address, max: VmProt::READ, len })? {
            Reply::Names { proxy, revoke } => Ok((proxy, revoke)),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}

/// Polls `f` for up to [`PATIENCE`].
fn wait_for(mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(())
}

/// Not a test of its own (so ignored by the suite):
/// [`sixteen_clients_and_four_pagers_one_killed_keep_their_data`] runs
/// this test binary again as each of its client processes, with
/// `MACHVM_LOAD_CLIENT` set; without it this returns at once.
#[test]
#[ignore = "the body of the load test's client processes"]
fn client_process() {
    let Some(id) = env_u64("MACHVM_LOAD_CLIENT") else { return };
    let socket = PathBuf::from(std::env::var_os("MACHVM_LOAD_SOCKET").expect("MACHVM_LOAD_SOCKET"));
    let dir = PathBuf::from(std::env::var_os("MACHVM_LOAD_DIR").expect("MACHVM_LOAD_DIR"));
    let until = env_u64("MACHVM_LOAD_UNTIL").expect("MACHVM_LOAD_UNTIL");
    let seed = env_u64("MACHVM_LOAD_SEED").expect("MACHVM_LOAD_SEED");
    // A watchdog: a call that takes too long is a hang, reported as one.
    let doing = Arc::new(Mutex::new(String::from("connecting")));
    let since = Arc::new(AtomicU64::new(now_ms()));
    {
        let (doing, since) = (doing.clone(), since.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let t = since.load(Ordering::Relaxed);
            if now_ms().saturating_sub(t) > PATIENCE.as_millis() as u64 {
                eprintln!("client {id}: HUNG for {PATIENCE:?} in: {}", doing.lock().unwrap());
                std::process::exit(3);
            }
        });
    }
    let c = Connection::connect(&socket, Role::Task { child_token: None }, &format!("load client {id}"))
        .expect("connecting");
    let mut me = ClientProc {
        id,
        c,
        r: Rng::new(mix(seed, id)),
        kill: Kill { dir: dir.clone() },
        objs: Vec::new(),
        main: Vec::new(),
        far: Vec::new(),
        far_next: Vec::new(),
        inbox: PortName(0),
        peers: HashMap::new(),
        anon: Vec::new(),
        saw_kill: false,
        rep: Report { id, pid: std::process::id(), ..Report::default() },
        doing,
        since,
    };
    let run = |me: &mut ClientProc| -> Result<(), String> {
        me.setup()?;
        while now_ms() < until {
            me.op()?;
        }
        if !me.saw_kill && me.kill.killed() {
            me.after_kill()?;
        }
        me.finish()
    };
    if let Err(e) = run(&mut me) {
        panic!("client {id} (seed {seed:#x}), after {} ops: {e}", me.rep.ops);
    }
    let out = serde_json::to_string(&me.rep).unwrap();
    std::fs::write(dir.join(format!("report-{id}.json")), out).expect("writing the report");
}

// ----- the test -----

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's /proc status");
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn tasks(c: &Connection) -> Vec<(String, Option<u32>)> {
    match c.inspect(InspectWhat::Tasks).unwrap() {
        Reply::Tasks(rows) => {
            let mut v: Vec<(String, Option<u32>)> = rows.into_iter().map(|r| (r.name, r.pid)).collect();
            v.sort();
            v
        }
        other => panic!("{other:?}"),
    }
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn sixteen_clients_and_four_pagers_one_killed_keep_their_data() {
    let secs = std::env::var("MACHVM_LOAD_SECS").ok().and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(3.0);
    let seed = env_u64("MACHVM_LOAD_SEED").unwrap_or(0x6c6f_6164_0001);
    eprintln!("load seed {seed:#x} ({secs} s)");
    let dir = Dir::new("load");
    let socket = dir.socket();
    let mut d = daemon(&socket, &[]);
    let daemon_pid = d.0.id();
    let _watchdog = Watchdog::new(daemon_pid, Duration::from_secs_f64(secs) + Duration::from_secs(120));
    let mut pagers: Vec<Option<Proc>> =
        (0..PAGERS).map(|p| Some(pager(&socket, &["zero", "--name", &pager_name(p)], &pager_name(p)))).collect();
    let probe = client(&socket, "probe");
    let pager_tasks: Vec<String> = (0..PAGERS).map(|p| format!("pager zero {}", pager_name(p))).collect();
    wait_until("the pagers' probes to go", || {
        let mut want = pager_tasks.clone();
        want.push("probe".into());
        tasks(&probe).into_iter().map(|t| t.0).collect::<Vec<_>>() == want
    });
    std::thread::sleep(Duration::from_millis(50));
    let (base_threads, base_fds) = threads_and_fds(daemon_pid);
    let base_rss = rss_kib(daemon_pid);
    let base_objects = stat(&probe, "objects");
    let base_resident = stat(&probe, "resident");
    let started = Instant::now();
    let until = now_ms() + (secs * 1000.0) as u64;

    // The clients.
    let mut clients: Vec<Proc> = (0..CLIENTS)
        .map(|id| {
            let out = std::fs::File::create(dir.0.join(format!("client-{id}.out"))).unwrap();
            Proc(
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "client_process", "--ignored", "--nocapture", "--test-threads", "1"])
                    .env("MACHVM_LOAD_CLIENT", id.to_string())
                    .env("MACHVM_LOAD_SOCKET", &socket)
                    .env("MACHVM_LOAD_DIR", &dir.0)
                    .env("MACHVM_LOAD_UNTIL", until.to_string())
                    .env("MACHVM_LOAD_SEED", seed.to_string())
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .expect("starting a client process"),
            )
        })
        .collect();
    let pids: HashMap<u32, u64> = clients.iter().enumerate().map(|(i, c)| (c.0.id(), i as u64)).collect();
    let fail = |what: String| -> ! {
        let mut s = format!("{what} (seed {seed:#x}: MACHVM_LOAD_SEED={seed:#x} repeats the choices)");
        for id in 0..CLIENTS {
            let t = tail(&dir.0.join(format!("client-{id}.out")));
            if t.contains("panicked") || t.contains("HUNG") {
                s.push_str(&format!("\n--- client {id}:\n{t}"));
            }
        }
        panic!("{s}");
    };

    // Every client is a task of its own, with its own pid.
    let end = Instant::now() + PATIENCE;
    while tasks(&probe).iter().filter(|(n, _)| n.starts_with("load client ")).count() < CLIENTS as usize {
        if Instant::now() > end {
            fail("the clients did not all connect within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, pid) in tasks(&probe).into_iter().filter(|(n, _)| n.starts_with("load client ")) {
        let id: u64 = name["load client ".len()..].parse().unwrap();
        assert_eq!(pid.and_then(|p| pids.get(&p)), Some(&id), "{name} has pid {pid:?}");
    }

    // Half way: the victim pager dies.
    let half = Duration::from_secs_f64(secs / 2.0);
    std::thread::sleep(half.saturating_sub(started.elapsed()));
    std::fs::write(dir.0.join("killing"), b"").unwrap();
    pagers[VICTIM as usize].take().unwrap().kill();
    std::fs::write(dir.0.join("killed"), b"").unwrap();
    let killed_at = started.elapsed();

    // Every client finishes, with its report.
    let end = Instant::now() + Duration::from_secs_f64(secs) + Duration::from_secs(30);
    let mut reports = Vec::new();
    for (id, c) in clients.iter_mut().enumerate() {
        let left = end.saturating_duration_since(Instant::now());
        match c.wait_exit(left) {
            Some(s) if s.success() => {}
            Some(s) => fail(format!("client {id} failed ({s})")),
            None => fail(format!("client {id} did not finish in time")),
        }
        let text = std::fs::read_to_string(dir.0.join(format!("report-{id}.json")))
            .unwrap_or_else(|_| fail(format!("client {id} wrote no report")));
        reports.push(serde_json::from_str::<Report>(&text).unwrap());
    }
    let elapsed = started.elapsed();
    let ops: u64 = reports.iter().map(|r| r.ops).sum();
    let sent: u64 = reports.iter().map(|r| r.proxies_sent).sum();
    let checked: u64 = reports.iter().map(|r| r.proxies_checked).sum();
    let memory_errors: u64 = reports.iter().map(|r| r.memory_errors).sum();
    let mut dead: Vec<String> = reports.iter().flat_map(|r| r.dead_name_errors.clone()).collect();
    dead.sort();
    dead.dedup();
    eprintln!(
        "load: {elapsed:?} ({ops} ops, {:.0}/s), z{VICTIM} killed at {killed_at:?}; proxies sent {sent}, checked \
         {checked}; {memory_errors} KERN_MEMORY_ERRORs on the dead pager; dead-name errors {dead:?}; late sends {}",
        ops as f64 / elapsed.as_secs_f64(),
        reports.iter().map(|r| r.late_sends).sum::<u64>()
    );
    assert!(checked > 0, "no proxy was received and checked");
    assert!(memory_errors >= CLIENTS, "every client must have seen the dead pager fail: {memory_errors}");

    // The clients' data outlives them, in the surviving pagers' objects.
    let checker = client(&socket, "checker");
    for p in (0..PAGERS).filter(|&p| p != VICTIM) {
        let o = checker.name_lookup(&pager_name(p)).unwrap();
        let all = checker.vm_map(map_anywhere(CLIENTS * SLICE * P, Some(o))).unwrap();
        for r in &reports {
            for page in 0..SLICE {
                let at = VmAddr(all.0 + (r.id * SLICE + page) * P);
                let got = checker.load(at, P as u32).unwrap();
                let want = pattern(r.id, p, page, r.model[p as usize][page as usize]);
                assert!(got == want, "client {}'s page {page} of z{p} reads {:?} afterwards", r.id, &got[..16]);
            }
            for &(fp, pg, v) in r.far.iter().filter(|f| f.0 == p) {
                let args = MapArgs { offset: VmOffset((FAR + r.id * FAR_PAGES + pg) * P), ..map_anywhere(P, Some(o)) };
                let a = checker.vm_map(args).unwrap();
                assert_eq!(checker.load(a, 8).unwrap(), v.to_le_bytes(), "client {}'s fresh page {pg} of z{fp}", r.id);
                checker.vm_deallocate(a, P).unwrap();
            }
        }
        checker.vm_deallocate(all, CLIENTS * SLICE * P).unwrap();
    }
    assert!(matches!(checker.name_lookup("z2"), Err(ClientError::Kern(KernError::InvalidName))));
    drop(checker);

    // No task outlives its connection.
    let want: Vec<String> =
        vec!["pager zero z0".into(), "pager zero z1".into(), "pager zero z3".into(), "probe".into()];
    let end = Instant::now() + PATIENCE;
    loop {
        let names: Vec<String> = tasks(&probe).into_iter().map(|t| t.0).collect();
        if names == want {
            break;
        }
        assert!(Instant::now() < end, "leaked tasks: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Nor do their threads and sockets in the daemon (one pager fewer).
    wait_threads_and_fds_back(daemon_pid, (base_threads, base_fds), "before the clients");

    // What the clients held is gone: their anonymous memory, the dead
    // pager's object; what stays is the surviving objects' pages.
    let objects = stat(&probe, "objects");
    let resident = stat(&probe, "resident");
    let far_touched: u64 = reports.iter().map(|r| r.far.iter().filter(|f| f.0 != VICTIM).count() as u64).sum();
    // Each slice is one cluster; each fresh page brings one in.
    let cached = (PAGERS - 1) * CLIENTS * SLICE + far_touched * FAR_STRIDE + 64;
    let rss = rss_kib(daemon_pid);
    eprintln!(
        "daemon afterwards: objects {base_objects} -> {objects}, resident pages {base_resident} -> {resident} \
         (at most {cached} cached expected), VmRSS {base_rss} KiB -> {rss} KiB"
    );
    let surviving = PAGERS - 1;
    assert!(objects <= base_objects + surviving, "objects: {base_objects} before, {objects} after");
    assert!(resident <= base_resident + cached, "resident pages: {base_resident} before, {resident} after");
    wait_until("the daemon's resident set to come back near its baseline", || {
        rss_kib(daemon_pid) < base_rss + (64 << 10)
    });
    assert!(d.0.try_wait().unwrap().is_none(), "the daemon died");
    drop(pagers);
}
