//! The daemon section of `machvm bench`: what a task and a pager pay for
//! reaching the kernel through `machvmd`'s socket, each figure next to a
//! baseline measured in the same rounds.
//!
//! Setup, for every round (nothing is kept from one round to the next):
//!
//! 1. One `machvmd` per cluster size (1, 16 and 256 pages), each on a
//!    thread of this process (`Daemon::boot`, `bind`, `serve`) on a socket
//!    of its own in a temporary directory; each with one pager program,
//!    `machvm pager zero --cluster N`, a child process of this one; and a
//!    client, a `machvm_client::Connection` on this thread.
//! 2. An in-process zero-fill pager for each cluster size (the kernel core
//!    section's `PagerEnv`: a kernel of its own and `MemBacking` on a
//!    thread).
//! 3. The raw baselines: threads of this process joined by
//!    `UnixStream::pair()`, exchanging frames of the daemon's framing
//!    (4-byte little-endian length, body) with bodies of zeroes as long as
//!    the real frames' bodies, read through a `BufReader` and written with
//!    one `write_all` as the client and the daemon do; nothing is encoded
//!    or decoded.
//!
//! Everything started is stopped when its guard drops, whether the round
//! ends or fails: pager processes are killed and reaped, daemons stopped
//! and joined, baseline threads joined, the directory removed.
//!
//! Measurement as in the rest of `machvm bench`: the contenders of a table
//! take turns in rotating order (the order also rotates from round to
//! round), every figure is the median over rounds, and a ratio is the
//! median of the per-round ratios.

use super::{duration, interleave, median, rate, spread, spread_plain, PagerEnv, Region, Via, BLOCK, P};
use crate::remote::{self, PagerKind};
use machvm_client::{map_anywhere, Connection};
use machvm_core::{Kernel, KernelStats, TaskId, VmAddr, VmOffset, VmProt};
use machvm_daemon::dispatch::{dispatch, Caller};
use machvm_daemon::{Daemon, DaemonConfig, Shared};
use machvm_protocol::emmi::{id, KernelToPager, PagerToKernel};
use machvm_protocol::frame::{decode_body, encode_frame};
use machvm_protocol::ipc::{Disposition, PortName};
use machvm_protocol::wire::{Call, MessageWire, Reply, Request, Response, Role, SendArgs};
use std::error::Error;
use std::fmt::Write as _;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

/// The cluster sizes of the cluster table.
pub(super) const CLUSTERS: [u32; 3] = [1, 16, 256];
/// Pages of a turn in the cluster table: the largest cluster, so that a
/// turn covers whole clusters and leaves no request of its pager running
/// into the next contender's turn.
const TURN_PAGES: u64 = 256;
/// Bytes a `load` reads.
const LOAD_LEN: u32 = 8;
/// Where in an object the warm-up page is: far beyond every page a round
/// touches.
const WARM_OFFSET: u64 = 1 << 40;

/// How big and how often.
#[derive(Clone, Copy, Debug)]
pub(super) struct DaemonSizes {
    pub reps: usize,
    /// Operations of each round-trip contender per round.
    pub calls: u64,
    /// Pages of each cluster-table contender per round (a multiple of
    /// [`TURN_PAGES`]).
    pub pages: u64,
}

/// Where the pagers run.
#[derive(Clone, Debug)]
pub(super) enum PagerHost {
    /// `machvm pager zero` processes of this executable (the bench).
    Process(PathBuf),
    /// Threads of this process running the same code (`remote::pager`),
    /// for the tests, whose executable is not `machvm`.
    #[cfg_attr(not(test), allow(dead_code))]
    Thread,
}

/// A pager program serving one daemon.
enum PagerRun {
    Process(Child),
    Thread(JoinHandle<()>),
}

/// A daemon served on a thread: its shared state, its stop flag, the
/// serving thread.
pub(super) type InThread = (Arc<Shared>, Arc<AtomicBool>, JoinHandle<io::Result<()>>);

/// Boots a `machvmd` on `socket` and serves it on a thread of this
/// process: its shared state, its stop flag and the serving thread.
pub(super) fn serve_in_thread(
    socket: &Path,
    phys_pages: usize,
    proxy_version: machvm_core::ProxyVersion,
) -> Res<InThread> {
    let config = DaemonConfig {
        socket: socket.to_path_buf(),
        group: None,
        phys_pages,
        resident_limit: phys_pages,
        swap: None,
        host_priv_uid: None,
        limits: machvm_core::TaskLimits::default(),
        loops: machvm_daemon::default_loops(),
        max_conns_per_uid: usize::MAX,
        proxy_version,
        cluster_pages: machvm_core::KernelConfig::default().cluster_pages,
        memory: machvm_daemon::MemoryMode::Auto,
    };
    let daemon = Daemon::boot(config)?;
    let listener = daemon.bind()?;
    let shared = daemon.shared.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let serve = std::thread::Builder::new().name("machvmd".into()).spawn(move || daemon.serve(listener, &flag))?;
    Ok((shared, stop, serve))
}

/// `machvmd` on a thread of this process, on its own socket, with the
/// pagers serving it; all stopped on drop.
struct Served {
    socket: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    serve: Option<JoinHandle<io::Result<()>>>,
    pagers: Vec<PagerRun>,
}

impl Served {
    fn start(socket: PathBuf, phys_pages: usize) -> Res<Served> {
        let (shared, stop, serve) = serve_in_thread(&socket, phys_pages, machvm_core::ProxyVersion::Paging)?;
        Ok(Served { socket, shared, stop, serve: Some(serve), pagers: Vec::new() })
    }

    fn kernel(&self) -> &Arc<Kernel> {
        &self.shared.kernel
    }

    /// Starts `machvm pager zero --name NAME --cluster N` for this daemon.
    fn start_pager(&mut self, host: &PagerHost, name: &str, cluster: u32) -> Res<()> {
        let run = match host {
            PagerHost::Process(exe) => PagerRun::Process(
                Command::new(exe)
                    .arg("--socket")
                    .arg(&self.socket)
                    .args(["pager", "zero", "--name", name, "--cluster", &cluster.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("starting {} pager zero: {e}", exe.display()))?,
            ),
            PagerHost::Thread => {
                let (socket, name) = (self.socket.clone(), name.to_string());
                PagerRun::Thread(std::thread::spawn(move || {
                    let kind = PagerKind::Zero { name, delay_ms: 0, cluster: Some(cluster) };
                    let _ = remote::pager(Some(&socket), kind, true);
                }))
            }
        };
        self.pagers.push(run);
        Ok(())
    }

    /// A client connection (a task of this daemon).
    fn client(&self, name: &str) -> Res<Connection> {
        Ok(Connection::connect(&self.socket, Role::Task { child_token: None }, name)?)
    }

    /// A send right (in `conn`'s space) to what a pager registered as
    /// `name`, once it has; an error if a pager process exits first or
    /// nothing is registered within 10 s.
    fn lookup(&mut self, conn: &Connection, name: &str) -> Res<PortName> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(n) = conn.name_lookup(name) {
                return Ok(n);
            }
            for p in &mut self.pagers {
                if let PagerRun::Process(c) = p {
                    if let Some(status) = c.try_wait()? {
                        return Err(format!("the pager process exited ({status}) before registering {name:?}").into());
                    }
                }
            }
            if Instant::now() >= end {
                return Err(format!("no pager registered {name:?} within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The kernel's task behind `conn`.
    fn task_of(&self, conn: &Connection) -> Res<TaskId> {
        let c = self.shared.connections().into_iter().find(|c| c.task.number() == conn.task());
        Ok(c.ok_or("the client's connection is not in the daemon's table")?.task)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        for p in &mut self.pagers {
            if let PagerRun::Process(c) = p {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.serve.take() {
            let _ = t.join();
        }
        // Thread pagers return once the daemon has closed their connections.
        for p in self.pagers.drain(..) {
            if let PagerRun::Thread(t) = p {
                let _ = t.join();
            }
        }
    }
}

/// A frame of `len` bytes in all (header included) with a body of zeroes.
fn raw_frame(len: usize) -> Vec<u8> {
    let body = len.saturating_sub(4);
    let mut f = (body as u32).to_le_bytes().to_vec();
    f.resize(4 + body, 0);
    f
}

/// One end of a raw exchange.
struct RawEnd {
    r: BufReader<UnixStream>,
    w: UnixStream,
    body: Vec<u8>,
}

impl RawEnd {
    fn pair() -> io::Result<(RawEnd, RawEnd)> {
        let (a, b) = UnixStream::pair()?;
        Ok((RawEnd::new(a)?, RawEnd::new(b)?))
    }

    fn new(s: UnixStream) -> io::Result<RawEnd> {
        Ok(RawEnd { r: BufReader::new(s.try_clone()?), w: s, body: Vec::new() })
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.w.write_all(frame)
    }

    /// One frame; `false` at the end of the stream.
    fn recv(&mut self) -> io::Result<bool> {
        let mut h = [0u8; 4];
        if let Err(e) = self.r.read_exact(&mut h) {
            return if e.kind() == io::ErrorKind::UnexpectedEof { Ok(false) } else { Err(e) };
        }
        self.body.resize(u32::from_le_bytes(h) as usize, 0);
        self.r.read_exact(&mut self.body)?;
        Ok(true)
    }
}

/// A raw baseline: this thread's end, and the threads at the other ends.
struct Raw {
    end: RawEnd,
    request: Vec<u8>,
    threads: Vec<JoinHandle<()>>,
}

impl Raw {
    /// A ping-pong with an echo thread: `request` bytes there, `reply`
    /// bytes back.
    fn ping_pong(request: usize, reply: usize) -> io::Result<Raw> {
        let (end, mut far) = RawEnd::pair()?;
        let reply = raw_frame(reply);
        let echo = std::thread::spawn(move || {
            while let Ok(true) = far.recv() {
                if far.send(&reply).is_err() {
                    break;
                }
            }
        });
        Ok(Raw { end, request: raw_frame(request), threads: vec![echo] })
    }

    /// Two ping-pongs in a chain, the hops of a pager round trip: this
    /// thread sends `s[0]` bytes to a relay thread, which sends `s[1]` to
    /// an echo thread, which answers `s[2]`; the relay then answers this
    /// thread `s[3]`.
    fn chain(s: [usize; 4]) -> io::Result<Raw> {
        let (end, mut up) = RawEnd::pair()?;
        let (mut down, mut far) = RawEnd::pair()?;
        let (to_far, from_far, back) = (raw_frame(s[1]), raw_frame(s[2]), raw_frame(s[3]));
        let echo = std::thread::spawn(move || {
            while let Ok(true) = far.recv() {
                if far.send(&from_far).is_err() {
                    break;
                }
            }
        });
        let relay = std::thread::spawn(move || {
            while let Ok(true) = up.recv() {
                let ok = down.send(&to_far).is_ok() && matches!(down.recv(), Ok(true)) && up.send(&back).is_ok();
                if !ok {
                    break;
                }
            }
            // Dropping `down` ends the echo thread.
        });
        Ok(Raw { end, request: raw_frame(s[0]), threads: vec![relay, echo] })
    }

    fn exchange(&mut self) -> io::Result<()> {
        self.end.send(&self.request)?;
        if self.end.recv()? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.end.w.shutdown(std::net::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The sizes (header included) of the frames on a pager round trip and a
/// `vm_region` call, encoded as the client, the daemon and the pager
/// encode them, with this run's addresses.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FrameSizes {
    /// The client's `load` call, and its reply (8 bytes of data).
    pub load_call: usize,
    pub load_reply: usize,
    /// The reply to the pager's pending receive carrying the
    /// `data_request`, and the pager's `mach_msg(send|receive)` of
    /// `data_unavailable` (its answer and its wait for the next request).
    pub to_pager: usize,
    pub from_pager: usize,
    /// `vm_region` and its reply.
    pub region_call: usize,
    pub region_reply: usize,
}

/// A sequence number as a connection has after a few thousand calls (its
/// varint is two bytes).
const SEQ: u64 = 1000;

fn frame_len(msg: &impl serde::Serialize) -> Res<usize> {
    Ok(encode_frame(msg)?.len())
}

impl FrameSizes {
    /// `page`: a page's address in the client; `offset`: its offset in the
    /// object; `region`: a `vm_region` reply as the daemon gave it.
    fn new(page: VmAddr, offset: u64, region: &Reply) -> Res<FrameSizes> {
        let reply = |result| Response::Reply { seq: SEQ, result };
        // Names in the pager's space are small numbers (a byte as varints).
        let (object, control) = (PortName(3), PortName(7));
        let request = KernelToPager::DataRequest { offset, length: P, access: VmProt::READ }.encode();
        let message = MessageWire {
            local: object,
            id: request.0,
            data: request.1,
            reply: None,
            rights: Vec::new(),
            from_kernel: true,
        };
        let unavailable = PagerToKernel::DataUnavailable { offset, size: P }.encode();
        debug_assert_eq!(unavailable.0, id::DATA_UNAVAILABLE);
        let send = SendArgs {
            dest: control,
            dest_disposition: Disposition::CopySend,
            reply: None,
            id: unavailable.0,
            data: unavailable.1,
            rights: Vec::new(),
            timeout_ms: None,
        };
        Ok(FrameSizes {
            load_call: frame_len(&Request::Call { seq: SEQ, call: Call::Load { address: page, len: LOAD_LEN } })?,
            load_reply: frame_len(&reply(Ok(Reply::Data(vec![0; LOAD_LEN as usize]))))?,
            to_pager: frame_len(&reply(Ok(Reply::Message(message))))?,
            from_pager: frame_len(&Request::Call {
                seq: SEQ,
                call: Call::MsgSendReceive { send, name: PortName(5), timeout_ms: None },
            })?,
            region_call: frame_len(&Request::Call { seq: SEQ, call: Call::VmRegion { address: page } })?,
            region_reply: frame_len(&reply(Ok(region.clone())))?,
        })
    }

    fn chain(&self) -> [usize; 4] {
        [self.load_call, self.to_pager, self.from_pager, self.load_reply]
    }
}

/// The round-trip contenders, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// First-touch `load` over the socket, out-of-process pager, 1-page
    /// clusters.
    FaultSocket,
    /// Its baseline: two raw ping-pongs in a chain.
    RawChain,
    /// `vm_region` over the socket.
    Region,
    /// Its baseline: a raw ping-pong.
    RawPingPong,
    /// The daemon's code for a `vm_region` call alone, on this thread.
    RegionWork,
    /// `load` of a resident page over the socket.
    LoadResident,
    /// First touch of the same out-of-process pager's pages by this thread
    /// calling the daemon's kernel directly (no client socket).
    FaultInDaemon,
    /// First touch with the in-process pager, 1-page clusters.
    FaultInProcess,
}

const OPS: [Op; 8] = [
    Op::FaultSocket,
    Op::RawChain,
    Op::Region,
    Op::RawPingPong,
    Op::RegionWork,
    Op::LoadResident,
    Op::FaultInDaemon,
    Op::FaultInProcess,
];

impl Op {
    fn label(self, f: &FrameSizes) -> String {
        match self {
            Op::FaultSocket => {
                "first-touch `load` of a new page, out-of-process `machvm pager zero --cluster 1`".into()
            }
            Op::RawChain => format!(
                "raw chain: {} B → relay thread → {} B → echo thread → {} B → relay → {} B back",
                f.load_call, f.to_pager, f.from_pager, f.load_reply
            ),
            Op::Region => "`vm_region` call".into(),
            Op::RawPingPong => format!("raw ping-pong: {} B → echo thread → {} B back", f.region_call, f.region_reply),
            Op::RegionWork => "the daemon's code for a `vm_region` call, without sockets or threads".into(),
            Op::LoadResident => "`load` of a resident page (a call, no fault)".into(),
            Op::FaultInDaemon => {
                "first touch by a thread calling the daemon's kernel directly, same out-of-process pager".into()
            }
            Op::FaultInProcess => "first touch, in-process `MemBacking` pager thread, 1-page requests".into(),
        }
    }

    fn notes(self) -> &'static str {
        match self {
            Op::FaultSocket => "client → daemon → pager process → daemon → client",
            Op::RawChain => "the baseline of the pager round trip: the same four socket hops, nothing else",
            Op::Region => "a call the kernel answers at once",
            Op::RawPingPong => "the baseline of a call: the same two socket hops",
            Op::RegionWork => {
                "decode the request frame, `check`, `dispatch` (the kernel's `vm_region`), encode the reply"
            }
            Op::LoadResident => "the client's socket leg of a first touch, without the fault",
            Op::FaultInDaemon => "`Kernel::read_u64` on the client's task: the pager leg alone",
            Op::FaultInProcess => "a kernel of its own (the kernel core section's setup)",
        }
    }
}

/// A cluster size's first-touch figures.
#[derive(Debug, Default)]
pub(super) struct ClusterRows {
    pub cluster: u32,
    /// Pages per second, one figure per round: the in-process pager, the
    /// out-of-process pager touched by this thread calling the daemon's
    /// kernel directly, and the out-of-process pager through a client's
    /// `load`s.
    pub local: Vec<f64>,
    pub in_daemon: Vec<f64>,
    pub socket: Vec<f64>,
    /// Per-round time ratios to the in-process pager.
    pub in_daemon_ratio: Vec<f64>,
    pub socket_ratio: Vec<f64>,
    /// Per page: `data_request`s the kernels sent, and messages the
    /// out-of-process pager sent back.
    pub local_requests: Vec<f64>,
    pub remote_requests: Vec<f64>,
    pub remote_answers: Vec<f64>,
}

/// Everything the section reports.
#[derive(Debug, Default)]
pub(super) struct DaemonFigures {
    pub sizes: Option<DaemonSizes>,
    pub frames: FrameSizes,
    /// Seconds per operation of each [`Op`], one figure per round.
    ops: Vec<Vec<f64>>,
    /// Per round: pager round trip / raw chain, `vm_region` / raw
    /// ping-pong.
    pub fault_ratio: Vec<f64>,
    pub region_ratio: Vec<f64>,
    /// Per round, seconds: the client's leg (socket fault − fault in the
    /// daemon), the pager process's cost over the in-process pager (fault
    /// in the daemon − in-process fault), the daemon's overhead per call
    /// (`vm_region` − raw ping-pong).
    pub client_leg: Vec<f64>,
    pub pager_leg: Vec<f64>,
    pub call_overhead: Vec<f64>,
    pub clusters: Vec<ClusterRows>,
    pub secs: f64,
    /// CPUs' worth of time the rest of the machine (other processes, and
    /// the hypervisor's steal) was busy during the section, on average.
    pub others_cpus: Option<f64>,
}

impl DaemonFigures {
    fn op(&self, op: Op) -> &[f64] {
        let i = OPS.iter().position(|&o| o == op).unwrap_or(0);
        &self.ops[i]
    }
}

/// [`interleave`] with the contenders rotated by `rep` first, so that the
/// order of the turns also changes from round to round; the seconds come
/// back in the contenders' order.
fn interleave_round(rep: usize, steps: u64, contenders: &mut [&mut dyn FnMut(u64) -> Res<()>]) -> Res<Vec<f64>> {
    let n = contenders.len();
    let shift = rep % n.max(1);
    contenders.rotate_left(shift);
    let secs = interleave(steps, contenders);
    contenders.rotate_right(shift);
    let mut secs = secs?;
    secs.rotate_right(shift);
    Ok(secs)
}

/// A client's mapping of `pages` pages of `object` from page `first`.
fn map_pages(conn: &Connection, object: PortName, first: u64, pages: u64) -> Res<VmAddr> {
    let mut args = map_anywhere(pages * P, Some(object));
    args.offset = VmOffset(first * P);
    Ok(conn.vm_map(args)?)
}

/// One daemon with its pager, its client and the client's mappings.
struct Remote {
    served: Served,
    conn: Connection,
    task: TaskId,
    object: PortName,
}

impl Remote {
    fn start(host: &PagerHost, dir: &Path, cluster: u32, phys_pages: usize) -> Res<Remote> {
        let mut served = Served::start(dir.join(format!("c{cluster}.sock")), phys_pages)?;
        let name = format!("zero-{cluster}");
        served.start_pager(host, &name, cluster)?;
        let conn = served.client("bench client")?;
        let object = served.lookup(&conn, &name)?;
        let task = served.task_of(&conn)?;
        // Bind the object and wait for the pager's attributes outside
        // every timed turn.
        let warm = map_pages(&conn, object, WARM_OFFSET / P, 1)?;
        conn.load(warm, LOAD_LEN)?;
        Ok(Remote { served, conn, task, object })
    }

    fn stats(&self) -> KernelStats {
        self.served.kernel().stats()
    }
}

/// First touch through a client's `load`s of pages `range` of a mapping.
fn load_pages(conn: &Connection, base: VmAddr, range: std::ops::Range<u64>) -> Res<()> {
    for p in range {
        conn.load(VmAddr(base.0 + p * P), LOAD_LEN)?;
    }
    Ok(())
}

/// First touch by this thread, in `k`, of pages `range` of a mapping.
fn read_pages(k: &Kernel, task: TaskId, base: VmAddr, range: std::ops::Range<u64>) -> Res<()> {
    for p in range {
        k.read_u64(task, VmAddr(base.0 + p * P))?;
    }
    Ok(())
}

fn region_call(conn: &Connection, at: VmAddr) -> Res<Reply> {
    Ok(conn.call(Call::VmRegion { address: at })?)
}

/// The daemon's work for one call whose request frame is `frame`, made on
/// this thread: what a connection's event loop does between its `read`
/// and its `write`.
fn daemon_work(sh: &Shared, caller: Caller, frame: &[u8]) -> Res<()> {
    let Request::Call { seq, call } = decode_body::<Request>(&frame[4..])? else {
        return Err("not a call".into());
    };
    call.check()?;
    let result = dispatch(sh, caller, call);
    std::hint::black_box(encode_frame(&Response::Reply { seq, result })?);
    Ok(())
}

/// The per-page rate of `n` pages in `secs`.
fn per_sec(n: u64, secs: f64) -> f64 {
    n as f64 / secs
}

/// Runs the section: `sizes.reps` rounds, each with fresh daemons, pagers
/// and baselines.
pub(super) fn measure(sizes: DaemonSizes, host: &PagerHost) -> Res<DaemonFigures> {
    assert!(sizes.pages % TURN_PAGES == 0 && sizes.calls % BLOCK == 0, "sizes must be whole turns");
    let started = Instant::now();
    let dir = crate::util::TempDir::new("bench")?;
    let mut f = DaemonFigures {
        sizes: Some(sizes),
        ops: vec![Vec::new(); OPS.len()],
        clusters: CLUSTERS.iter().map(|&cluster| ClusterRows { cluster, ..ClusterRows::default() }).collect(),
        ..DaemonFigures::default()
    };
    let cpu_before = cpu_ticks();
    for rep in 0..sizes.reps {
        round(sizes, host, &dir.0, rep, &mut f)?;
    }
    f.secs = started.elapsed().as_secs_f64();
    f.others_cpus = cpu_before.zip(cpu_ticks()).map(|(b, a)| a.others_since(&b));
    Ok(f)
}

/// CPU time in clock ticks: the machine's busy time and all its time,
/// summed over its CPUs (`/proc/stat`), and this process's own with its
/// reaped children (`/proc/self/stat`).
#[derive(Clone, Copy, Debug)]
struct CpuTicks {
    busy: u64,
    total: u64,
    own: u64,
    cpus: usize,
}

fn cpu_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let t: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = t.iter().sum();
    let idle = t.get(3)? + t.get(4)?;
    let cpus = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields 14 to 17 (utime, stime, cutime, cstime), counted from the
    // state (field 3), which follows the command's closing parenthesis.
    let f: Vec<&str> = me.rsplit_once(')')?.1.split_whitespace().collect();
    let own = (14..=17).map(|n| f.get(n - 3).and_then(|x| x.parse::<u64>().ok())).sum::<Option<u64>>()?;
    Some(CpuTicks { busy: total - idle, total, own, cpus })
}

impl CpuTicks {
    /// CPUs' worth of busy time not this process's since `before`.
    fn others_since(&self, before: &CpuTicks) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let others = (self.busy.saturating_sub(before.busy)).saturating_sub(self.own.saturating_sub(before.own));
        others as f64 / total * self.cpus as f64
    }
}

fn round(z: DaemonSizes, host: &PagerHost, dir: &Path, rep: usize, f: &mut DaemonFigures) -> Res<()> {
    // Object pages of the round-trip table (in the 1-page pagers only),
    // then those of the cluster table, from a cluster boundary so that no
    // cluster reaches past them: what each kernel needs, with the warm-up
    // cluster, and no pageout.
    let (remote_b, local_b) = ((2 * z.calls).next_multiple_of(TURN_PAGES), z.calls.next_multiple_of(TURN_PAGES));
    let phys = (remote_b + 2 * z.pages + 2 * TURN_PAGES) as usize;
    let mut remotes = Vec::new();
    for &c in &CLUSTERS {
        remotes.push(Remote::start(host, dir, c, phys)?);
    }
    let mut locals = Vec::new();
    for &c in &CLUSTERS {
        locals.push(PagerEnv::new(local_b + z.pages, c)?);
    }

    // The round-trip table: the 1-page daemon and in-process pager.
    {
        let (r1, l1) = (&remotes[0], &locals[0]);
        let k1 = r1.served.kernel().clone();
        let socket_pages = map_pages(&r1.conn, r1.object, 0, z.calls)?;
        let daemon_pages = map_pages(&r1.conn, r1.object, z.calls, z.calls)?;
        let resident = r1.conn.vm_allocate(VmAddr(0), P, true)?;
        r1.conn.store(resident, &[1])?;
        let local = l1.client(Via::Direct, 0, z.calls)?;
        let region = region_call(&r1.conn, resident)?;
        f.frames = FrameSizes::new(socket_pages, 0, &region)?;
        let mut chain = Raw::chain(f.frames.chain())?;
        let mut ping = Raw::ping_pong(f.frames.region_call, f.frames.region_reply)?;
        let region_frame = encode_frame(&Request::Call { seq: SEQ, call: Call::VmRegion { address: resident } })?;
        // The connection's number matters only to the name table and child
        // tasks, not to `vm_region`.
        let caller = Caller { conn: 0, task: r1.task };
        let turn = |s: u64| s * BLOCK..(s + 1) * BLOCK;
        let conn = &r1.conn;
        let shared = &r1.served.shared;
        // The contenders in the order of `OPS`.
        let secs = interleave_round(
            rep,
            z.calls / BLOCK,
            &mut [
                &mut |s| load_pages(conn, socket_pages, turn(s)),
                &mut |_| (0..BLOCK).try_for_each(|_| chain.exchange()).map_err(Into::into),
                &mut |_| (0..BLOCK).try_for_each(|_| region_call(conn, resident).map(drop)),
                &mut |_| (0..BLOCK).try_for_each(|_| ping.exchange()).map_err(Into::into),
                &mut |_| (0..BLOCK).try_for_each(|_| daemon_work(shared, caller, &region_frame)),
                &mut |_| (0..BLOCK).try_for_each(|_| conn.load(resident, LOAD_LEN).map(drop).map_err(Into::into)),
                &mut |s| read_pages(&k1, r1.task, daemon_pages, turn(s)),
                &mut |s| local_touch(&local, turn(s)),
            ],
        )?;
        let per_op: Vec<f64> = secs.iter().map(|s| s / z.calls as f64).collect();
        for (i, t) in per_op.iter().enumerate() {
            f.ops[i].push(*t);
        }
        let at = |op: Op| per_op[OPS.iter().position(|&o| o == op).unwrap_or(0)];
        f.fault_ratio.push(at(Op::FaultSocket) / at(Op::RawChain));
        f.region_ratio.push(at(Op::Region) / at(Op::RawPingPong));
        f.client_leg.push(at(Op::FaultSocket) - at(Op::FaultInDaemon));
        f.pager_leg.push(at(Op::FaultInDaemon) - at(Op::FaultInProcess));
        f.call_overhead.push(at(Op::Region) - at(Op::RawPingPong));
    }

    // The cluster table: for each size, the in-process pager, this thread
    // calling the daemon's kernel, and the client over the socket.
    let mut socket_maps = Vec::new();
    let mut daemon_maps = Vec::new();
    let mut local_maps = Vec::new();
    for (r, l) in remotes.iter().zip(&locals) {
        socket_maps.push(map_pages(&r.conn, r.object, remote_b, z.pages)?);
        daemon_maps.push(map_pages(&r.conn, r.object, remote_b + z.pages, z.pages)?);
        local_maps.push(l.client(Via::Direct, local_b, z.pages)?);
    }
    let remote_before: Vec<KernelStats> = remotes.iter().map(Remote::stats).collect();
    let local_before: Vec<KernelStats> = locals.iter().map(|l| l.k.stats()).collect();
    let turn = |s: u64| s * TURN_PAGES..(s + 1) * TURN_PAGES;
    let kernels: Vec<Arc<Kernel>> = remotes.iter().map(|r| r.served.kernel().clone()).collect();
    let mut fs: Vec<Box<dyn FnMut(u64) -> Res<()> + '_>> = Vec::new();
    for i in 0..CLUSTERS.len() {
        let (r, k) = (&remotes[i], &kernels[i]);
        let (sm, dm, lm) = (socket_maps[i], daemon_maps[i], &local_maps[i]);
        fs.push(Box::new(move |s| local_touch(lm, turn(s))));
        fs.push(Box::new(move |s| read_pages(k, r.task, dm, turn(s))));
        fs.push(Box::new(move |s| load_pages(&r.conn, sm, turn(s))));
    }
    let mut dyns: Vec<&mut dyn FnMut(u64) -> Res<()>> =
        fs.iter_mut().map(|b| b.as_mut() as &mut dyn FnMut(u64) -> Res<()>).collect();
    let secs = interleave_round(rep, z.pages / TURN_PAGES, &mut dyns)?;
    drop(dyns);
    drop(fs);
    for (i, rows) in f.clusters.iter_mut().enumerate() {
        let (local, in_daemon, socket) = (secs[3 * i], secs[3 * i + 1], secs[3 * i + 2]);
        rows.local.push(per_sec(z.pages, local));
        rows.in_daemon.push(per_sec(z.pages, in_daemon));
        rows.socket.push(per_sec(z.pages, socket));
        rows.in_daemon_ratio.push(in_daemon / local);
        rows.socket_ratio.push(socket / local);
        let (ra, rb) = (remotes[i].stats(), &remote_before[i]);
        let (la, lb) = (locals[i].k.stats(), &local_before[i]);
        let per_page = |n: u64, pages: u64| n as f64 / pages as f64;
        rows.local_requests.push(per_page(la.sent("data_request") - lb.sent("data_request"), z.pages));
        rows.remote_requests.push(per_page(ra.sent("data_request") - rb.sent("data_request"), 2 * z.pages));
        let answers = |s: &KernelStats| s.from_pagers.values().sum::<u64>();
        rows.remote_answers.push(per_page(answers(&ra) - answers(rb), 2 * z.pages));
    }
    for l in locals {
        l.pager.stop();
    }
    drop(remotes);
    Ok(())
}

fn local_touch(r: &Region, range: std::ops::Range<u64>) -> Res<()> {
    read_pages(&r.k, r.task, r.addr, range)
}

/// `0.000012` seconds as `12.0 µs`, and a range of them.
fn spread_secs(v: &[f64]) -> String {
    let (lo, hi) = super::min_max(v);
    format!("{}–{}", duration(lo), duration(hi))
}

/// Appends the section to the report.
pub(super) fn report(w: &mut String, f: &DaemonFigures) -> std::fmt::Result {
    let Some(z) = f.sizes else { return Ok(()) };
    let fr = &f.frames;
    writeln!(w)?;
    writeln!(w, "## Daemon")?;
    writeln!(w)?;
    writeln!(
        w,
        "The kernel through `machvmd`'s socket ({:.0} s of the run{}). Every round boots, for each cluster size \
         (1, 16, 256 pages), a `machvmd` on a thread of the bench process (`Daemon::boot`, `bind`, `serve`) on \
         a socket of its own, a `machvm pager zero --cluster N` child process serving it (zero-filled memory, \
         `MemBacking`), and a client `Connection` on the bench's thread; all are stopped at the end of the \
         round. Each figure is the median of {} rounds; in a round the contenders of a table take turns ({BLOCK} \
         operations, or {TURN_PAGES} pages in the cluster table) in rotating order, the order rotating from \
         round to round too, and each ratio is the median of the per-round ratios.",
        f.secs,
        f.others_cpus.map_or(String::new(), |c| format!(
            "; meanwhile other processes kept {c:.1} CPUs busy on average, from `/proc/stat` less this process \
             and its pagers"
        )),
        z.reps
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "The raw baselines are threads of the bench process joined by `UnixStream::pair()`, exchanging frames of \
         the daemon's framing (4-byte length, then a body of zeroes as long as the real body), read through a \
         `BufReader` and written with one `write_all` each, as the client and the daemon do; nothing is encoded, \
         decoded or dispatched. The sizes are those of the real frames, encoded with this run's addresses: a \
         `load` call {} B and its reply {} B; the `data_request` the daemon gives the pager (the reply to its \
         pending receive) {} B and the pager's `mach_msg(send|receive)` of `data_unavailable` {} B; `vm_region` {} B and \
         its reply {} B (all with the 4-byte header).",
        fr.load_call, fr.load_reply, fr.to_pager, fr.from_pager, fr.region_call, fr.region_reply
    )?;
    writeln!(w)?;
    writeln!(w, "### Round trips ({} operations of each per round)", z.calls)?;
    writeln!(w)?;
    writeln!(w, "| operation | time per operation | range over rounds | notes |")?;
    writeln!(w, "|---|---:|---:|---|")?;
    for op in OPS {
        let v = f.op(op);
        writeln!(w, "| {} | {} | {} | {} |", op.label(fr), duration(median(v)), spread_secs(v), op.notes())?;
    }
    writeln!(w)?;
    writeln!(w, "| ratio | median | range over rounds | goal |")?;
    writeln!(w, "|---|---:|---:|---|")?;
    let fault = median(&f.fault_ratio);
    writeln!(
        w,
        "| pager round trip (first-touch `load`, 1-page clusters) / raw chain of two ping-pongs | {fault:.2} | {} | \
         within 1.5: {} |",
        spread_plain(&f.fault_ratio),
        if fault <= 1.5 { "met" } else { "not met" }
    )?;
    writeln!(
        w,
        "| `vm_region` call / raw ping-pong | {:.2} | {} | — |",
        median(&f.region_ratio),
        spread_plain(&f.region_ratio)
    )?;
    writeln!(w)?;
    writeln!(w, "Where a first touch's time goes (medians of the per-round differences):")?;
    writeln!(w)?;
    writeln!(
        w,
        "- the client's socket leg (socket `load` − the same fault made by calling the daemon's kernel directly): {}; a \
         `load` of a resident page, a call with no fault, takes {}.",
        duration(median(&f.client_leg)),
        duration(median(f.op(Op::LoadResident)))
    )?;
    writeln!(
        w,
        "- the pager leg: a fault answered by the pager process takes {} when made by calling the daemon's kernel, \
         {} more than with the in-process pager thread ({}). On that leg the daemon gives the pager the request \
         (the reply to its pending receive), and the pager answers `data_unavailable` and waits for the next \
         request in one call (`mach_msg(send|receive)`, as a Mach server loop does), which wakes the faulting \
         thread.",
        duration(median(f.op(Op::FaultInDaemon))),
        duration(median(&f.pager_leg)),
        duration(median(f.op(Op::FaultInProcess)))
    )?;
    writeln!(
        w,
        "- the daemon's own cost per call (`vm_region` − raw ping-pong): {}, of which the daemon's code for \
         the call (decoding, checking, the kernel's `vm_region`, encoding) takes {} on one thread; the rest is \
         its event loop's system calls (`epoll_wait`, `read`, `write`) against the echo thread's `read` and \
         `write`.",
        duration(median(&f.call_overhead)),
        duration(median(f.op(Op::RegionWork)))
    )?;
    writeln!(
        w,
        "- thread wake-ups on the way (from the code, with the daemon's default of one event loop on this \
         machine): a call is 2 (the daemon's loop, the client), as the ping-pong's; a pager round trip is 4 (the \
         loop, by the client's `load`; the pager process, by the reply to its waiting receive; the loop, \
         by the pager's `data_unavailable`; the client), as the chain's 4. The pager is a process and the \
         chain's relay and echo are threads of one process."
    )?;
    writeln!(w)?;
    writeln!(w, "### First touch by cluster size ({} pages of each per round)", z.pages)?;
    writeln!(w)?;
    writeln!(
        w,
        "The same zero-fill pager in-process (`MemBacking` on a thread of the kernel's process, the kernel core \
         section's setup) and out of process (`machvm pager zero --cluster N` through `machvmd`), the latter \
         touched by the bench's thread calling the daemon's kernel directly (`Kernel::read_u64` on the client's task: the pager over \
         the socket, no client socket) and by the client over the socket (one `load` per page). Time ratios: \
         how many times longer than in-process."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| cluster | in-process pager | range | out of process, calling the daemon's kernel | range | time ratio | out of \
         process, client over the socket | range | time ratio | `data_request`s per page (in-process / out) | \
         pager answers per page (out) |"
    )?;
    writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for c in &f.clusters {
        writeln!(
            w,
            "| {} | {}/s | {} | {}/s | {} | {:.1} | {}/s | {} | {:.1} | {:.3} / {:.3} | {:.2} |",
            c.cluster,
            rate(median(&c.local)),
            spread(&c.local),
            rate(median(&c.in_daemon)),
            spread(&c.in_daemon),
            median(&c.in_daemon_ratio),
            rate(median(&c.socket)),
            spread(&c.socket),
            median(&c.socket_ratio),
            median(&c.local_requests),
            median(&c.remote_requests),
            median(&c.remote_answers)
        )?;
    }
    writeln!(w)?;
    writeln!(w, "### Reading the daemon figures")?;
    writeln!(w)?;
    writeln!(
        w,
        "- The serve loop answers a request with one `data_supply` per run of pages it has and one \
         `data_unavailable` per run of pages it has not (the *pager answers per page* column): a zero-fill pager \
         answers a whole cluster in one call, so out of process a larger cluster saves socket round trips as \
         well as `data_request`s."
    )?;
    writeln!(
        w,
        "- The daemon runs on threads of the bench process and the raw baselines are threads too, while the \
         pager is a process of its own: whatever a switch between processes costs beyond one between threads \
         is in the pager leg and not in the chain."
    )?;
    let pager_wait = median(f.op(Op::FaultInDaemon));
    let local = f.op(Op::FaultInProcess);
    let (lo, hi) = super::min_max(local);
    writeln!(
        w,
        "- A waiting thread spins for up to 30 µs before it sleeps (`sync::Event`). A fault answered over the \
         socket takes longer than that ({} from a thread calling the daemon's kernel), so the faulting thread's \
         spin is spent and it is woken anyway; while it spins it holds a CPU the threads and the process it \
         waits for may need. This machine has {} CPUs{}.",
        duration(pager_wait),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        f.others_cpus
            .map_or(String::new(), |c| format!(", and other processes kept {c:.1} of them busy during the section"))
    )?;
    writeln!(
        w,
        "- The in-process pager's hand-offs are quick only while its thread and the faulting thread run on \
         different CPUs and catch each other spinning; on one CPU each hand-off costs a spin and a wake-up. \
         Whether the scheduler keeps the two apart varies from round to round and run to run (and with what \
         else the machine runs): its 1-page first touch ranges from {} to {} per page over these rounds, and \
         the ratios to it move with it.",
        duration(lo),
        duration(hi)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_have_the_daemon_framing() {
        let f = raw_frame(10);
        assert_eq!(f.len(), 10);
        assert_eq!(&f[..4], &6u32.to_le_bytes());
    }

    #[test]
    fn raw_baselines_exchange_and_stop() {
        let mut chain = Raw::chain([12, 40, 30, 16]).unwrap();
        let mut ping = Raw::ping_pong(12, 30).unwrap();
        for _ in 0..10 {
            chain.exchange().unwrap();
            assert_eq!(chain.end.body.len(), 12);
            ping.exchange().unwrap();
            assert_eq!(ping.end.body.len(), 26);
        }
        drop((chain, ping));
    }

    #[test]
    fn rotated_rounds_report_in_contender_order() {
        let (mut a, mut b, mut c) = (0, 0, 0);
        let secs = interleave_round(
            1,
            2,
            &mut [
                &mut |_| {
                    a += 1;
                    Ok(())
                },
                &mut |_| {
                    b += 1;
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(())
                },
                &mut |_| {
                    c += 1;
                    Ok(())
                },
            ],
        )
        .unwrap();
        assert_eq!((a, b, c), (2, 2, 2));
        assert!(secs[1] > secs[0] && secs[1] > secs[2], "{secs:?}");
    }

    /// One small round with the pagers on threads (the test executable is
    /// not `machvm`): every figure is there, and the pagers asked for the
    /// clusters they were started with.
    #[test]
    fn a_small_round_measures_every_figure() {
        let z = DaemonSizes { reps: 1, calls: BLOCK, pages: TURN_PAGES };
        let f = measure(z, &PagerHost::Thread).unwrap();
        assert!(f.ops.iter().all(|v| v.len() == 1 && v[0] > 0.0), "{:?}", f.ops);
        assert!(f.frames.load_call > 4 && f.frames.to_pager > f.frames.load_call);
        for c in &f.clusters {
            let want = 1.0 / f64::from(c.cluster);
            assert_eq!((c.local_requests[0], c.remote_requests[0]), (want, want), "cluster {}", c.cluster);
            // One data_unavailable per request: the whole cluster at once.
            assert_eq!(c.remote_answers[0], want, "cluster {}", c.cluster);
        }
        let mut md = String::new();
        report(&mut md, &f).unwrap();
        assert!(md.contains("## Daemon") && md.contains("| 256 |"), "{md}");
    }
}
