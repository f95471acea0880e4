//! The real-memory section of `machvm bench`: `machvmd`s on threads of
//! this process (`Daemon::boot`, `bind`, `serve`), whose pagers are
//! `machvm pager` child processes, serve a task process (`machvm
//! bench-task`, one per round: the fault server refuses a userfaultfd of
//! its own process) that attaches real memory (`RealMemory::attach`) and
//! touches its pages with real loads; each figure is a ratio to a Linux
//! baseline measured by that process in the same round (a plain memfd
//! mapping, `read(2)`, or a minimal userfaultfd handler thread).
//!
//! Every round boots fresh daemons and pagers; the contenders of a row
//! run one after the other in an order that alternates from round to
//! round, and a ratio is the median of the per-round ratios.

use machvm_client::memory::{RealMemory, Region};
use machvm_client::Connection;
use machvm_core::{Kernel, ProxyVersion, VmProt};
use machvm_daemon::Shared;
use machvm_host::uffd::{Event, Features, FillMode, Outcome, RegisterMode};
use machvm_host::{Mapping, ObjectMemory, PageRange, Prot, Userfaultfd};
use machvm_protocol::wire::Role;
use std::error::Error;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;
const P: u64 = machvm_protocol::PAGE_SIZE;

/// How big and how often.
#[derive(Clone, Copy, Debug)]
pub(super) struct RealSizes {
    pub reps: usize,
    /// Pages of a sequential first touch (and of the resident passes).
    pub pages: u64,
    /// Pages of the random single-page faults.
    pub random_pages: u64,
    /// Passes over resident pages.
    pub passes: u64,
    /// Processes of the sharing run, and the pages each touches.
    pub procs: usize,
    pub share_pages: u64,
}

impl RealSizes {
    pub(super) fn new(quick: bool) -> RealSizes {
        if quick {
            RealSizes { reps: 3, pages: 2048, random_pages: 1024, passes: 16, procs: 20, share_pages: 64 }
        } else {
            RealSizes { reps: 5, pages: 16384, random_pages: 4096, passes: 32, procs: 100, share_pages: 64 }
        }
    }
}

/// A `machvmd` on a thread of this process, with its pager processes.
struct Served {
    socket: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    serve: Option<JoinHandle<io::Result<()>>>,
    pagers: Vec<Child>,
}

impl Served {
    fn start(socket: PathBuf, version: ProxyVersion) -> Res<Served> {
        let phys_pages = 1 << 20;
        let (shared, stop, serve) = super::daemon::serve_in_thread(&socket, phys_pages, version)?;
        Ok(Served { socket, shared, stop, serve: Some(serve), pagers: Vec::new() })
    }

    fn kernel(&self) -> &Arc<Kernel> {
        &self.shared.kernel
    }

    /// Starts `machvm pager ARGS...` for this daemon.
    fn pager(&mut self, args: &[&str]) -> Res<()> {
        let exe = std::env::current_exe()?;
        let child = Command::new(&exe)
            .arg("--socket")
            .arg(&self.socket)
            .arg("pager")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {} pager: {e}", exe.display()))?;
        self.pagers.push(child);
        Ok(())
    }

    /// A task connection of this daemon (no real memory).
    fn conn(&self, name: &str) -> Res<Connection> {
        Ok(Connection::connect(&self.socket, Role::Task { child_token: None }, name)?)
    }

    /// Waits until `name` is registered (its pager is up).
    fn wait_name(&mut self, name: &str) -> Res<()> {
        let conn = Connection::connect(&self.socket, Role::Task { child_token: None }, "bench-wait")?;
        let end = Instant::now() + Duration::from_secs(10);
        while conn.name_lookup(name).is_err() {
            for c in &mut self.pagers {
                if let Some(status) = c.try_wait()? {
                    return Err(format!("a pager process exited ({status}) before {name:?} was registered").into());
                }
            }
            if Instant::now() > end {
                return Err(format!("nothing registered {name:?} within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        for c in &mut self.pagers {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.serve.take() {
            let _ = t.join();
        }
    }
}

/// Loads one word of each page of `r`, in `order` (page numbers); seconds.
fn touch_region(r: &Region, order: &[u64]) -> Res<f64> {
    let t = Instant::now();
    let mut sum = 0u64;
    for &p in order {
        sum = sum.wrapping_add(r.load_u64(p * P)?);
    }
    std::hint::black_box(sum);
    Ok(t.elapsed().as_secs_f64())
}

/// The same for a plain mapping.
fn touch_mapping(m: &Mapping, order: &[u64]) -> Res<f64> {
    let t = Instant::now();
    let mut b = [0u8; 8];
    let mut sum = 0u64;
    for &p in order {
        m.read((p * P) as usize, &mut b)?;
        sum = sum.wrapping_add(u64::from_ne_bytes(b));
    }
    std::hint::black_box(sum);
    Ok(t.elapsed().as_secs_f64())
}

/// A fresh memfd of `pages` pages, mapped shared read/write.
fn memfd_mapping(pages: u64) -> Res<(ObjectMemory, Mapping)> {
    let obj = ObjectMemory::new("bench-baseline", pages * P)?;
    let m = Mapping::of(&obj, PageRange::pages(0, pages)?, Prot::READ | Prot::WRITE)?;
    Ok((obj, m))
}

/// The minimal userfaultfd handler: a memfd mapping registered MISSING, a
/// handler thread that COPYs one page per fault, and the toucher (this
/// thread) faulting `order`; seconds of the touches.
fn uffd_baseline(pages: u64, order: &[u64]) -> Res<f64> {
    let (_obj, m) = memfd_mapping(pages)?;
    let m = Arc::new(m);
    let u = Arc::new(Userfaultfd::open(Features::MISSING_SHMEM)?);
    u.register_mapping(&m, RegisterMode::MISSING)?;
    let n = order.len() as u64;
    let h = {
        let u = u.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let src = vec![0u8; P as usize];
            let mut events = Vec::new();
            let mut served = 0;
            while served < n {
                u.wait_readable(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
                events.clear();
                u.read_events(&mut events, 64).map_err(|e| e.to_string())?;
                for e in &events {
                    let Event::PageFault(f) = e else { continue };
                    match u.copy(f.page().start(), &src, FillMode::empty()).map_err(|e| e.to_string())? {
                        Outcome::Done | Outcome::Exists => served += 1,
                        other => return Err(format!("UFFDIO_COPY: {other:?}")),
                    }
                }
            }
            Ok(())
        })
    };
    let secs = touch_mapping(&m, order)?;
    h.join().map_err(|_| "the handler thread panicked")??;
    Ok(secs)
}

/// A permutation of `0..n` (xorshift-driven Fisher–Yates).
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Maps `pages` of `object` (or a new proxy, registered as `via`, of the
/// `pages` after them: pages no one has touched).
fn map<'a>(mem: &'a RealMemory, object: &str, via: Option<&str>, pages: u64) -> Res<Region<'a>> {
    let conn = mem.connection();
    let name = match via {
        None => object,
        Some(proxy_name) => {
            let obj = conn.name_lookup(object)?;
            let (proxy, _revoke) = conn
                .proxy_create(VmProt::READ | VmProt::WRITE, &[obj], &[0], &[pages * P], &[pages * P], None)
                .map_err(|e| format!("memory_object_create_proxy of {object}: {e}"))?;
            conn.name_register(proxy_name, proxy)?;
            proxy_name
        }
    };
    Ok(mem.map_name(name, pages * P, false).map_err(|e| format!("mapping {name}: {e}"))?)
}

/// One row: our seconds and the baseline's, per round.
#[derive(Default, Debug)]
struct Row {
    ours: Vec<f64>,
    base: Vec<f64>,
}

impl Row {
    fn push(&mut self, ours: f64, base: f64) {
        self.ours.push(ours);
        self.base.push(base);
    }
    fn ratios(&self) -> Vec<f64> {
        self.ours.iter().zip(&self.base).map(|(o, b)| o / b).collect()
    }
}

/// Everything the section measured.
#[derive(Debug)]
pub(super) struct RealFigures {
    z: RealSizes,
    secs: f64,
    rows: Vec<(String, Row, f64, String)>,
    share: Option<Share>,
    /// `data_request`s of the paging daemon, per round.
    requests_per_page: Vec<f64>,
}

#[derive(Debug)]
struct Share {
    procs: usize,
    pages: u64,
    requests: u64,
    resident: i64,
    secs: f64,
}

const NAMES: [&str; 10] = [
    "first touch, zero-fill pager (cluster 256) vs empty memfd",
    "first touch, file pager (cluster 256, pages staged) vs read(2) + touch",
    "random single-page faults, zero-fill pager (cluster 1) vs minimal uffd handler (COPY)",
    "resident access vs plain memfd mapping",
    "first touch through a mapping proxy vs direct",
    "resident access through a mapping proxy vs direct",
    "first touch through a paging proxy vs direct",
    "resident access through a paging proxy vs direct",
    "first touch, file pager (cluster 256, pages in messages) vs read(2) + touch",
    "first touch, file pager: pages staged vs pages in messages",
];
const GOALS: [f64; 10] = [1.0, 1.5, 1.2, 1.0, 1.1, 1.0, 1.1, 1.0, 1.5, 1.0];

/// Measures the section; `Err` with a reason when real memory cannot run.
pub(super) fn measure(z: RealSizes) -> Res<Result<RealFigures, String>> {
    if let Some(why) = machvm_daemon::memory::unavailable() {
        return Ok(Err(why));
    }
    let started = Instant::now();
    let mut rows: Vec<Row> = NAMES.iter().map(|_| Row::default()).collect();
    let mut requests_per_page = Vec::new();
    let exe = std::env::current_exe()?;
    for rep in 0..z.reps {
        let dir = crate::util::TempDir::new("bench-real")?;
        let file = dir.0.join("data");
        let mut bytes = vec![0u8; (z.pages * P) as usize];
        for (i, c) in bytes.chunks_mut(P as usize).enumerate() {
            c[..8].copy_from_slice(&(i as u64).to_ne_bytes());
        }
        std::fs::write(&file, &bytes)?;
        drop(bytes);
        let (sa, sb) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
        let mut a = Served::start(sa.clone(), ProxyVersion::Paging)?;
        let mut b = Served::start(sb.clone(), ProxyVersion::Mapping)?;
        a.pager(&["zero", "--name", "z256", "--cluster", "256"])?;
        a.pager(&["zero", "--name", "z1", "--cluster", "1"])?;
        a.pager(&["file", "--name", "f", "--cluster", "256", &file.to_string_lossy()])?;
        a.pager(&["--data-in-message", "file", "--name", "g", "--cluster", "256", &file.to_string_lossy()])?;
        b.pager(&["zero", "--name", "z256", "--cluster", "256"])?;
        for n in ["z256", "z1", "f", "g"] {
            a.wait_name(n)?;
        }
        b.wait_name("z256")?;
        let s0 = a.kernel().stats();
        let out = Command::new(&exe)
            .arg("bench-task")
            .arg("--")
            .arg(&sa)
            .arg(&sb)
            .arg(&file)
            .args([z.pages, z.random_pages, z.passes, rep as u64].map(|n| n.to_string()))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("the bench task process failed ({})", out.status).into());
        }
        let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|x| x.parse::<f64>())
            .collect::<Result<_, _>>()?;
        if v.len() != 2 * NAMES.len() {
            return Err(format!("the bench task printed {} figures, not {}", v.len(), 2 * NAMES.len()).into());
        }
        for (i, r) in rows.iter_mut().enumerate() {
            r.push(v[2 * i], v[2 * i + 1]);
        }
        let s1 = a.kernel().stats();
        // Every request of daemon a: the zero-fill and file touches (256-page
        // clusters, 2 x pages), the random faults (1-page), the paging proxy's.
        requests_per_page.push((s1.sent("data_request") - s0.sent("data_request")) as f64);
        drop((a, b));
    }
    let share = sharing(z)?;
    let rows = NAMES.iter().zip(GOALS).zip(rows).map(|((n, g), r)| (n.to_string(), r, g, String::new())).collect();
    Ok(Ok(RealFigures { z, secs: started.elapsed().as_secs_f64(), rows, share: Some(share), requests_per_page }))
}

/// The task process of a round (`machvm bench-task -- SOCKET_A SOCKET_B
/// FILE PAGES RANDOM_PAGES PASSES ROUND`): attaches real memory to both
/// daemons, measures every row against its baseline, and prints the
/// seconds (ours, baseline for each row) on one line.
pub(super) fn task_main(args: &[String]) -> Res<()> {
    let [sa, sb, file, pages, random_pages, passes, rep] = args else {
        return Err("bench-task: SOCKET_A SOCKET_B FILE PAGES RANDOM_PAGES PASSES ROUND expected".into());
    };
    let n = |s: &String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let (pages, random_pages, passes, rep) = (n(pages)?, n(random_pages)?, n(passes)?, n(rep)?);
    let file = PathBuf::from(file);
    let task = |sock: &String, name: &str| -> Res<RealMemory> {
        let conn = Connection::connect(Path::new(sock), Role::Task { child_token: None }, name)?;
        Ok(RealMemory::attach(conn, 4 << 30).map_err(|e| format!("attaching real memory: {e}"))?)
    };
    let ma = task(sa, "bench-a")?;
    let mb = task(sb, "bench-b")?;
    let flip = rep % 2 == 1;
    let seq: Vec<u64> = (0..pages).collect();
    let mut out = [0.0f64; 2 * NAMES.len()];

    // 1 and 4: zero fill, cluster 256, vs an empty memfd.
    let direct = map(&ma, "z256", None, pages)?;
    let (_o, plain) = memfd_mapping(pages)?;
    let (ours, base) = if flip {
        let b = touch_mapping(&plain, &seq)?;
        (touch_region(&direct, &seq)?, b)
    } else {
        let o = touch_region(&direct, &seq)?;
        (o, touch_mapping(&plain, &seq)?)
    };
    (out[0], out[1]) = (ours, base);
    let (mut ro, mut rb) = (0.0, 0.0);
    for pass in 0..passes {
        if (pass % 2 == 1) ^ flip {
            rb += touch_mapping(&plain, &seq)?;
            ro += touch_region(&direct, &seq)?;
        } else {
            ro += touch_region(&direct, &seq)?;
            rb += touch_mapping(&plain, &seq)?;
        }
    }
    (out[6], out[7]) = (ro, rb);

    // 2: the file pager vs read(2) of the file and a touch of the buffer.
    let fr = map(&ma, "f", None, pages)?;
    let read_touch = || -> Res<f64> {
        let t = Instant::now();
        let buf = std::fs::read(&file)?;
        let mut sum = 0u64;
        for p in 0..pages as usize {
            sum = sum.wrapping_add(buf[p * P as usize] as u64);
        }
        std::hint::black_box(sum);
        Ok(t.elapsed().as_secs_f64())
    };
    // The same file through a pager sending its pages in messages.
    let gr = map(&ma, "g", None, pages)?;
    let (staged, read, in_messages) = if flip {
        let m = touch_region(&gr, &seq)?;
        let r = read_touch()?;
        (touch_region(&fr, &seq)?, r, m)
    } else {
        let s = touch_region(&fr, &seq)?;
        let r = read_touch()?;
        (s, r, touch_region(&gr, &seq)?)
    };
    (out[2], out[3]) = (staged, read);
    (out[16], out[17]) = (in_messages, read);
    (out[18], out[19]) = (staged, in_messages);

    // 3: random single-page faults vs the minimal handler.
    let order = shuffled(random_pages, 0x9e37_79b9 + rep);
    let rr = map(&ma, "z1", None, random_pages)?;
    let (ours, base) = if flip {
        let b = uffd_baseline(random_pages, &order)?;
        (touch_region(&rr, &order)?, b)
    } else {
        let o = touch_region(&rr, &order)?;
        (o, uffd_baseline(random_pages, &order)?)
    };
    (out[4], out[5]) = (ours, base);

    // 5: a proxy of untouched pages of the same object (a mapping proxy in
    // daemon b, a paging proxy in daemon a) vs this round's direct figures.
    for (k, mem) in [&mb, &ma].into_iter().enumerate() {
        let pr = map(mem, "z256", Some("proxy"), pages)?;
        let first = touch_region(&pr, &seq)?;
        // Resident: the proxy's passes and the direct mapping's, in turns.
        let (mut res, mut res_direct) = (0.0, 0.0);
        for pass in 0..passes {
            if (pass % 2 == 1) ^ flip {
                res_direct += touch_region(&direct, &seq)?;
                res += touch_region(&pr, &seq)?;
            } else {
                res += touch_region(&pr, &seq)?;
                res_direct += touch_region(&direct, &seq)?;
            }
        }
        let row = 4 + 2 * k;
        (out[2 * row], out[2 * row + 1]) = (first, out[0]);
        (out[2 * row + 2], out[2 * row + 3]) = (res, res_direct);
    }
    let line: Vec<String> = out.iter().map(|s| format!("{s:e}")).collect();
    println!("{}", line.join(" "));
    Ok(())
}

/// Measure 6: `procs` processes (`machvm probe`), each mapping its own
/// paging proxy of one object (cluster 1) and loading every word of the
/// same pages.
fn sharing(z: RealSizes) -> Res<Share> {
    let dir = crate::util::TempDir::new("bench-real")?;
    let socket = dir.0.join("s.sock");
    let mut s = Served::start(socket.clone(), ProxyVersion::Paging)?;
    s.pager(&["zero", "--name", "shared", "--cluster", "1"])?;
    s.wait_name("shared")?;
    let conn = s.conn("bench-share")?;
    let obj = conn.name_lookup("shared")?;
    for i in 0..z.procs {
        let (proxy, _) = conn.proxy_create(VmProt::READ, &[obj], &[0], &[0], &[z.share_pages * P], None)?;
        conn.name_register(&format!("p{i}"), proxy)?;
    }
    let s0 = s.kernel().stats();
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let mut kids = Vec::new();
    for i in 0..z.procs {
        kids.push(
            Command::new(&exe)
                .env("MACHVM_SOCKET", &socket)
                .env("MACHVM_ARENA_MIB", "64")
                .args(["probe", "--", "map", &format!("p{i}"), &z.share_pages.to_string(), "churn", "0", "1", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let mut failed = 0;
    for mut k in kids {
        if !k.wait()?.success() {
            failed += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if failed > 0 {
        return Err(format!("{failed} of {} probe processes failed", z.procs).into());
    }
    let s1 = s.kernel().stats();
    Ok(Share {
        procs: z.procs,
        pages: z.share_pages,
        requests: s1.sent("data_request") - s0.sent("data_request"),
        resident: s1.resident as i64 - s0.resident as i64,
        secs,
    })
}

/// `median (min–max)` of ratios.
fn ratio_cell(v: &[f64]) -> (f64, String) {
    let m = super::median(v);
    (m, format!("{m:.2} ({})", super::spread_plain(v)))
}

/// Writes the section (or why it was skipped).
pub(super) fn report(w: &mut String, f: &Result<RealFigures, String>, command: &str) -> std::fmt::Result {
    writeln!(w)?;
    writeln!(w, "## Real memory")?;
    writeln!(w)?;
    let f = match f {
        Err(why) => return writeln!(w, "Skipped: {why}."),
        Ok(f) => f,
    };
    writeln!(
        w,
        "Produced by `{command}` ({:.0} s of the run, {} rounds). `machvmd`s run on threads of the bench \
         process (`Daemon::boot`, `bind`, `serve`; one with `--proxy-version paging`, one with `mapping`), their \
         pagers are `machvm pager zero|file` child processes, and a task process (`machvm bench-task`, one per \
         round: the fault server refuses a userfaultfd of its own process) attaches real memory \
         (`RealMemory::attach`) to both and loads one `u64` of each page with `Region::load_u64` (real loads, \
         faulting to the daemon through userfaultfd). Baselines run in that \
         process in the same round (order alternating): a fresh \
         memfd mapped `MAP_SHARED` (`machvm_host::Mapping`), `std::fs::read` of the same file then a load per \
         page, and a handler thread doing one `UFFDIO_COPY` per MISSING fault of a memfd mapping. Sequential \
         touches cover {} pages ({} MiB); random faults {} pages in a shuffled order; resident figures are {} \
         passes. *ours* and *baseline* are medians of the per-round times; the ratio is the median of the \
         per-round ratios (range in brackets). The proxy rows' baseline is the direct mapping of the same round (its first touch above; for resident access, passes over the direct mapping taken in turns with the proxy's).",
        f.secs,
        f.z.reps,
        f.z.pages,
        (f.z.pages * P) >> 20,
        f.z.random_pages,
        f.z.passes
    )?;
    writeln!(w)?;
    writeln!(w, "| measure | ours | baseline | ratio (range) | goal | met? |")?;
    writeln!(w, "|---|---:|---:|---:|---:|---|")?;
    for (name, row, goal, _) in &f.rows {
        let (m, cell) = ratio_cell(&row.ratios());
        let ms = |v: &[f64]| format!("{:.2} ms", super::median(v) * 1e3);
        writeln!(
            w,
            "| {name} | {} | {} | {cell} | ≤ {goal:.1}× | {} |",
            ms(&row.ours),
            ms(&row.base),
            if m <= *goal { "yes" } else { "no" }
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "`data_request`s the paging daemon sent per round: {:.0} (median); one per cluster would be {} (four \
         sequential touches of {} pages in 256-page clusters, and {} single-page random faults).",
        super::median(&f.requests_per_page),
        4 * f.z.pages.div_ceil(256) + f.z.random_pages,
        f.z.pages,
        f.z.random_pages
    )?;
    if let Some(s) = &f.share {
        writeln!(w)?;
        writeln!(
            w,
            "### {} processes, each its own paging proxy of one object\n\n{} `machvm probe` processes (started \
             together), each mapping its own paging proxy of the same {} pages (zero-fill pager, cluster 1) and \
             loading every word of them ({:.0} ms in all):\n",
            s.procs,
            s.procs,
            s.pages,
            s.secs * 1e3
        )?;
        writeln!(w, "| counter | value | per distinct page | goal | met? |")?;
        writeln!(w, "|---|---:|---:|---:|---|")?;
        let pages = s.pages as f64;
        writeln!(
            w,
            "| `data_request`s sent to the pager | {} | {:.2} | 1 | {} |",
            s.requests,
            s.requests as f64 / pages,
            if s.requests == s.pages { "yes" } else { "no" }
        )?;
        writeln!(
            w,
            "| pages made resident | {} | {:.2} | 1 | {} |",
            s.resident,
            s.resident as f64 / pages,
            if s.resident == s.pages as i64 { "yes" } else { "no" }
        )?;
    }
    Ok(())
}
