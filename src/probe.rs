//! `machvm probe`: a task process with real memory that follows a small
//! script, for the end-to-end suites and the tour. Each step is a few
//! words; the steps run in order, and the process exits 0 once all have
//! succeeded, 3 if a check fails, 4 if a wait times out (a signal such as
//! `SIGSEGV` or `SIGBUS` ends it otherwise, as it would any program).
//!
//! Regions are numbered in the order they are made (0, 1, ...):
//!
//! | step | what it does |
//! |---|---|
//! | `alloc PAGES` | `vm_allocate` a region |
//! | `map NAME PAGES` / `copy NAME PAGES` | map a registered object, shared / as a copy |
//! | `put R PAGE TEXT` / `expect R PAGE TEXT` | store / check text at the start of a page |
//! | `fill R SEED` / `check R SEED` | store / check a pattern over every page |
//! | `churn R SEED STORES` | random word stores over the region, then every word checked against a model (of what it held before, and the stores) |
//! | `touch-pages R` / `read-pages R` | one store / load per page, timed: prints the nanoseconds per page |
//! | `free R` | `vm_deallocate` of a region (the last region takes its number) |
//! | `stray` | a load where no entry maps: the last region freed, else the arena's last page (the process must die of `SIGSEGV`) |
//! | `mprotect R rw` | the process's own `mprotect` of the whole region |
//! | `loop R` | loads the region's pages round and round, for ever |
//! | `proxy R read NAME` | a proxy of the region (`read` or `rw`), registered as NAME |
//! | `revoke` | revokes the last proxy made |
//! | `child STEPS... ;` | a child task (`task_create`) running the steps up to `;`, waited for (it must exit 0) |
//! | `touch PATH` / `await PATH` | make a file / wait (10 s at most) for one |
//! | `sleep MS` | sleep |
//! | `inherit R share` | `vm_inherit` of the region (`share`, `copy`, `none`) |

use machvm_client::memory::{RealMemory, Region};
use machvm_protocol::wire::{Call, Reply};
use machvm_protocol::{VmInherit, VmProt, PAGE_SIZE};
use std::time::{Duration, Instant};

/// What ended a script early.
#[derive(Debug)]
pub enum Stop {
    /// A check failed (exit 3).
    Check(String),
    /// A wait timed out (exit 4).
    Timeout(String),
    /// A call or argument failed (exit 1).
    Error(String),
}

impl From<machvm_client::ClientError> for Stop {
    fn from(e: machvm_client::ClientError) -> Self {
        Stop::Error(e.to_string())
    }
}

/// Runs `steps` as a task process (see the module comment).
pub fn probe(steps: &[String]) -> Result<(), Stop> {
    let mem = RealMemory::from_env("probe")?;
    let mut st = State { mem: &mem, regions: Vec::new(), revoke: None, freed: None };
    // A child task starts with its parent's regions (inherited).
    if let Ok(list) = std::env::var("MACHVM_PROBE_REGIONS") {
        for r in list.split(',').filter(|r| !r.is_empty()) {
            let (a, l) = r.split_once(':').ok_or_else(|| Stop::Error(format!("bad region {r:?}")))?;
            let parse = |v: &str| u64::from_str_radix(v, 16).map_err(|_| Stop::Error(format!("bad region {r:?}")));
            st.regions.push(mem.region(machvm_protocol::VmAddr(parse(a)?), parse(l)?)?);
        }
    }
    st.run(steps)
}

struct State<'a> {
    mem: &'a RealMemory,
    regions: Vec<Region<'a>>,
    revoke: Option<machvm_protocol::ipc::PortName>,
    /// The address of the last region given back (`free`).
    freed: Option<u64>,
}

fn num(s: Option<&String>, what: &str) -> Result<u64, Stop> {
    s.and_then(|s| s.parse().ok()).ok_or_else(|| Stop::Error(format!("{what}: a number expected")))
}

fn word(seed: u64, page: u64, i: u64) -> u64 {
    let mut x = seed ^ (page << 20) ^ i;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 29)
}

impl<'a> State<'a> {
    fn region(&self, s: Option<&String>) -> Result<&Region<'a>, Stop> {
        let i = num(s, "region")? as usize;
        self.regions.get(i).ok_or_else(|| Stop::Error(format!("no region {i}")))
    }

    fn run(&mut self, steps: &[String]) -> Result<(), Stop> {
        let mut i = 0;
        while i < steps.len() {
            let op = steps[i].as_str();
            let arg = |k: usize| steps.get(i + k);
            let used = match op {
                "alloc" => {
                    let r = self.mem.vm_allocate(num(arg(1), "pages")? * PAGE_SIZE)?;
                    self.regions.push(r);
                    2
                }
                "map" | "copy" => {
                    let name = arg(1).ok_or_else(|| Stop::Error("map: a name expected".into()))?;
                    let r = self.mem.map_name(name, num(arg(2), "pages")? * PAGE_SIZE, op == "copy")?;
                    self.regions.push(r);
                    3
                }
                "put" | "expect" => {
                    let r = self.region(arg(1))?;
                    let off = num(arg(2), "page")? * PAGE_SIZE;
                    let text = arg(3).ok_or_else(|| Stop::Error("a text expected".into()))?.as_bytes();
                    if op == "put" {
                        r.write(off, text)?;
                    } else {
                        let mut got = vec![0u8; text.len()];
                        r.read(off, &mut got)?;
                        if got != text {
                            return Err(Stop::Check(format!(
                                "page {}: {:?}, not {:?}",
                                off / PAGE_SIZE,
                                String::from_utf8_lossy(&got),
                                String::from_utf8_lossy(text)
                            )));
                        }
                    }
                    4
                }
                "fill" | "check" => {
                    let r = self.region(arg(1))?;
                    let seed = num(arg(2), "seed")?;
                    for p in 0..r.len() / PAGE_SIZE {
                        for w in 0..PAGE_SIZE / 8 {
                            let at = p * PAGE_SIZE + w * 8;
                            if op == "fill" {
                                r.store_u64(at, word(seed, p, w))?;
                            } else if r.load_u64(at)? != word(seed, p, w) {
                                return Err(Stop::Check(format!("page {p} word {w} is not the pattern")));
                            }
                        }
                    }
                    3
                }
                "churn" => {
                    let r = self.region(arg(1))?;
                    let seed = num(arg(2), "seed")?;
                    let stores = num(arg(3), "stores")?;
                    let words = r.len() / 8;
                    // The model starts from what the region holds now.
                    let mut model = std::collections::HashMap::new();
                    for w in 0..words {
                        model.insert(w * 8, r.load_u64(w * 8)?);
                    }
                    let mut x = seed | 1;
                    for n in 0..stores {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let at = (x % words) * 8;
                        r.store_u64(at, n ^ seed)?;
                        model.insert(at, n ^ seed);
                    }
                    for w in 0..words {
                        let want = model[&(w * 8)];
                        if r.load_u64(w * 8)? != want {
                            return Err(Stop::Check(format!("word {w} lost its last store")));
                        }
                    }
                    4
                }
                "touch-pages" => {
                    // One store per page, timed (printed on stdout in ns per page).
                    let r = self.region(arg(1))?;
                    let pages = r.len() / PAGE_SIZE;
                    let t = Instant::now();
                    for p in 0..pages {
                        r.store_u64(p * PAGE_SIZE, p)?;
                    }
                    println!("{:.0}", t.elapsed().as_nanos() as f64 / pages as f64);
                    2
                }
                "read-pages" => {
                    // One load per page, timed (as touch-pages).
                    let r = self.region(arg(1))?;
                    let pages = r.len() / PAGE_SIZE;
                    let t = Instant::now();
                    let mut sum = 0u64;
                    for p in 0..pages {
                        sum = sum.wrapping_add(r.load_u64(p * PAGE_SIZE)?);
                    }
                    std::hint::black_box(sum);
                    println!("{:.0}", t.elapsed().as_nanos() as f64 / pages as f64);
                    2
                }
                "free" => {
                    let i = num(arg(1), "region")? as usize;
                    if i >= self.regions.len() {
                        return Err(Stop::Error(format!("no region {i}")));
                    }
                    // Later regions keep their numbers: the last takes its place.
                    let r = self.regions.swap_remove(i);
                    self.freed = Some(r.addr().0);
                    r.deallocate()?;
                    2
                }
                "stray" => {
                    // A load where no entry maps: the last region given
                    // back, else the arena's last page.
                    let at = self.freed.unwrap_or(self.mem.arena().range().end() - 8);
                    let mut b = [0u8; 8];
                    self.mem.arena().read(at, &mut b).map_err(|e| Stop::Error(e.to_string()))?;
                    return Err(Stop::Check(format!("a stray load read {b:?} instead of faulting")));
                }
                "mprotect" => {
                    let r = self.region(arg(1))?;
                    let range = machvm_host::PageRange::new(r.addr().0, r.len()).expect("a region's range");
                    let prot = machvm_host::Prot::READ | machvm_host::Prot::WRITE;
                    self.mem.arena().protect(range, prot).map_err(|e| Stop::Error(e.to_string()))?;
                    3
                }
                "loop" => {
                    let r = self.region(arg(1))?;
                    let pages = r.len() / PAGE_SIZE;
                    let mut sum = 0u64;
                    let mut p = 0;
                    loop {
                        sum = sum.wrapping_add(r.load_u64(p * PAGE_SIZE)?);
                        p = (p + 1) % pages;
                        std::hint::black_box(sum);
                    }
                }
                "proxy" => {
                    let r = self.region(arg(1))?;
                    let max = match arg(2).map(String::as_str) {
                        Some("read") => VmProt::READ,
                        Some("rw") => VmProt::READ | VmProt::WRITE,
                        _ => return Err(Stop::Error("proxy: read or rw expected".into())),
                    };
                    let name = arg(3).ok_or_else(|| Stop::Error("proxy: a name expected".into()))?;
                    let conn = self.mem.connection();
                    match conn.call(Call::RegionProxy { address: r.addr(), max, len: r.len() })? {
                        Reply::Names { proxy, revoke } => {
                            conn.name_register(name, proxy)?;
                            self.revoke = Some(revoke);
                        }
                        other => return Err(Stop::Error(format!("region proxy: {other:?}"))),
                    }
                    4
                }
                "revoke" => {
                    let revoke = self.revoke.ok_or_else(|| Stop::Error("revoke: no proxy made".into()))?;
                    self.mem.connection().proxy_revoke(revoke)?;
                    1
                }
                "inherit" => {
                    let r = self.region(arg(1))?;
                    let inherit = match arg(2).map(String::as_str) {
                        Some("share") => VmInherit::Share,
                        Some("copy") => VmInherit::Copy,
                        Some("none") => VmInherit::None,
                        _ => return Err(Stop::Error("inherit: share, copy or none expected".into())),
                    };
                    self.mem.connection().call(Call::VmInherit { address: r.addr(), size: r.len(), inherit })?;
                    3
                }
                "child" => {
                    let end = steps[i..].iter().position(|s| s == ";").map_or(steps.len(), |p| i + p);
                    let mut cmd =
                        std::process::Command::new(std::env::current_exe().map_err(|e| Stop::Error(e.to_string()))?);
                    cmd.arg("probe").arg("--").args(&steps[i + 1..end]);
                    let regions: Vec<String> =
                        self.regions.iter().map(|r| format!("{:x}:{:x}", r.addr().0, r.len())).collect();
                    cmd.env("MACHVM_PROBE_REGIONS", regions.join(","));
                    let mut child = self.mem.spawn_child(cmd)?;
                    let status = child.wait().map_err(|e| Stop::Error(e.to_string()))?;
                    if !status.success() {
                        return Err(Stop::Check(format!("the child task's process ended with {status}")));
                    }
                    end + 1 - i
                }
                "touch" => {
                    let p = arg(1).ok_or_else(|| Stop::Error("touch: a path expected".into()))?;
                    std::fs::write(p, b"").map_err(|e| Stop::Error(e.to_string()))?;
                    2
                }
                "await" => {
                    let p = arg(1).ok_or_else(|| Stop::Error("await: a path expected".into()))?;
                    let end = Instant::now() + Duration::from_secs(10);
                    while !std::path::Path::new(p).exists() {
                        if Instant::now() > end {
                            return Err(Stop::Timeout(format!("no {p} after 10 s")));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    2
                }
                "sleep" => {
                    std::thread::sleep(Duration::from_millis(num(arg(1), "ms")?));
                    2
                }
                other => return Err(Stop::Error(format!("unknown step {other:?}"))),
            };
            i += used;
        }
        Ok(())
    }
}
