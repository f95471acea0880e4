//! One connection, as its event loop ([`crate::reactor`]) drives it: a
//! hello, then calls, until the peer goes. Nothing here blocks: bytes are
//! read and written as the socket allows, and a call that must wait is an
//! op the loop polls again when the kernel wakes it.
//!
//! 1. The first frame must be a hello of this protocol version, whole
//!    within [`HELLO_TIMEOUT`] however slowly its bytes come; otherwise a
//!    refusal (another version) or a protocol error, and the connection
//!    closes.
//! 2. The connection becomes a task: a new one, or the child task its
//!    hello claims. The peer's credentials (`SO_PEERCRED`) are recorded;
//!    a peer of the host-privilege uid gets a send right to the host port.
//! 3. Calls are started in the order they come, each answered with its
//!    sequence number when it is done: a call that waits (a fault on a
//!    slow pager, a receive) does not hold up the calls after it, as one
//!    thread of a task does not hold up another. At most [`CALLS_QUEUED`]
//!    calls are being made at once, and as many more may wait to start: a
//!    client that sends more before its answers come breaks the protocol.
//!    A frame that does not decode, a second hello, or a call that fails
//!    its checks is answered in its turn (once the calls before it are)
//!    with a protocol error naming what was wrong, and the connection
//!    closes.
//! 4. When the peer's stream ends (a half-close), the calls it sent before
//!    the end are made and answered while it may still read (for at most
//!    one second, `LINGER`); then the connection closes. If one of them must wait,
//!    the task ends instead: the calls waiting fail.
//! 5. When the peer goes (its stream ends with nothing left to make, an
//!    error, a hang-up), the task terminates at once: its rights go, a
//!    call of it still waiting is dropped (its registrations cancelled),
//!    its names leave the table.

use crate::dispatch::{start, Caller, Pending, Started};
use crate::{ConnInfo, Shared};
use machvm_core::wait::{Poll, Waker};
use machvm_protocol::frame::{encode_frame, FrameDecoder, FrameError};
use machvm_protocol::wire::{Request, Response, Role, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls of one connection read and not yet made.
pub const CALLS_QUEUED: usize = 16;

/// Replies waiting to be written past which no further call of the
/// connection is made until the peer reads.
const OUT_HIGH: usize = 4 << 20;

/// How long a closing connection's last reply may take to be written.
const LINGER: Duration = Duration::from_secs(1);

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// The most reply buffer an idle connection keeps (a larger one, grown
/// for a large reply, is given back once written).
const OUT_KEEP: usize = 64 << 10;

/// Where a connection is.
#[derive(Debug)]
enum Phase {
    /// Waiting for its hello until the deadline.
    Hello { deadline: Instant },
    /// A task (or a pager's task).
    Task { caller: Caller },
    /// Its last reply is being written (until the deadline); then it
    /// closes (and its task, if it became one, terminates).
    Closing { deadline: Instant, caller: Option<Caller> },
}

/// A call being made: its sequence number and its op.
#[derive(Debug)]
struct Running {
    seq: u64,
    pending: Pending,
}

/// What the loop watches a connection's socket for, on the reading side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Its bytes (and its end).
    Data,
    /// Only its end: nothing more is taken from it (after a bad frame,
    /// while closing), so a peer that keeps sending costs no work.
    End,
    /// Nothing: its stream has ended.
    No,
}

/// What the loop must do with a connection after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Keep it; these are its wants.
    Keep { read: Reading, write: bool, deadline: Option<Instant> },
    /// Close it now.
    Close,
}

/// One connection.
pub struct Conn {
    pub stream: UnixStream,
    decoder: FrameDecoder,
    phase: Phase,
    /// Calls read and not yet made (a bad frame in its turn as an `Err`).
    queue: VecDeque<Result<Request, String>>,
    /// The calls being made (each a thread of the task, as it were): at
    /// most [`CALLS_QUEUED`].
    running: Vec<Running>,
    /// Replies encoded and not yet written, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// A bad frame was read: nothing after it is.
    stop_reading: bool,
    /// The socket took less than was written: wait until it is writable.
    blocked: bool,
    /// The peer's stream ended; until when its last replies may take.
    eof: Option<Instant>,
    /// The task was terminated because a call after the end of the stream
    /// had to wait (step 4).
    ended: bool,
    waker: Arc<dyn Waker>,
    pid: u32,
    uid: u32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("phase", &self.phase)
            .field("queued", &self.queue.len())
            .field("running", &self.running)
            .field("unwritten", &(self.out.len() - self.out_at))
            .finish()
    }
}

fn what(e: &FrameError) -> String {
    format!("bad frame: {e}")
}

impl Conn {
    /// A new connection saying hello; `waker` wakes its loop for it.
    pub fn new(stream: UnixStream, waker: Arc<dyn Waker>) -> Conn {
        let cred = rustix::net::sockopt::socket_peercred(&stream).ok();
        let (pid, uid) = cred.map_or((0, u32::MAX), |c| (c.pid.as_raw_nonzero().get() as u32, c.uid.as_raw()));
        Conn {
            stream,
            decoder: FrameDecoder::new(),
            phase: Phase::Hello { deadline: Instant::now() + HELLO_TIMEOUT },
            queue: VecDeque::new(),
            running: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            stop_reading: false,
            blocked: false,
            eof: None,
            ended: false,
            waker,
            pid,
            uid,
        }
    }

    /// The task, once the hello is done.
    pub fn caller(&self) -> Option<Caller> {
        match self.phase {
            Phase::Task { caller } => Some(caller),
            _ => None,
        }
    }

    /// The socket is readable (or hung up): reads what is there, and makes
    /// what calls it can.
    pub fn readable(&mut self, sh: &Shared) -> After {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match (&self.stream).read(&mut buf) {
                // The peer sent its last call: the calls it sent are made
                // and answered while it may still read (for at most
                // `LINGER`), and a call that must wait ends the task
                // (step 4). A second end of stream is a hang-up.
                Ok(0) => match self.phase {
                    Phase::Task { .. } if self.eof.is_none() => {
                        self.eof = Some(Instant::now() + LINGER);
                        break;
                    }
                    _ => return After::Close,
                },
                // Nothing more is taken after a bad frame, or from a
                // closing connection; only its end matters.
                Ok(_) if self.stop_reading || matches!(self.phase, Phase::Closing { .. }) => {}
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    if let Err(what) = self.take_frames(sh) {
                        self.refuse(Response::ProtocolError { what });
                    }
                    if n < buf.len() {
                        // All there was (epoll says when more comes): no
                        // read just to hear it would block.
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return After::Close,
            }
        }
        self.run(sh);
        self.after()
    }

    /// Cuts the frames read into the queue, saying hello first. `Err` is a
    /// flood: more calls than [`CALLS_QUEUED`] waiting.
    fn take_frames(&mut self, sh: &Shared) -> Result<(), String> {
        while !self.stop_reading && !matches!(self.phase, Phase::Closing { .. }) {
            let item = match self.decoder.next::<Request>() {
                Ok(Some(r)) => Ok(r),
                Ok(None) => return Ok(()),
                Err(e) => Err(what(&e)),
            };
            if let Phase::Hello { .. } = self.phase {
                self.hello(sh, item);
                continue;
            }
            if self.queue.len() >= CALLS_QUEUED {
                return Err(format!("more than {CALLS_QUEUED} calls waiting for their replies"));
            }
            // A bad frame is answered in its turn, after the calls before
            // it; nothing after it is read.
            self.stop_reading = item.is_err();
            self.queue.push_back(item);
            self.run(sh);
        }
        Ok(())
    }

    /// The hello (step 1) and the task (step 2).
    fn hello(&mut self, sh: &Shared, item: Result<Request, String>) {
        if sh.stopping.load(Ordering::Relaxed) {
            let reason = "machvmd is stopping".to_string();
            return self.refuse(Response::Refused { version: PROTOCOL_VERSION, reason });
        }
        let hello = match item {
            Ok(r) => r,
            Err(what) => return self.refuse(Response::ProtocolError { what }),
        };
        if let Err(what) = hello.check() {
            return self.refuse(Response::ProtocolError { what });
        }
        let (role, name) = match hello {
            Request::Hello { version, role, name } if version == PROTOCOL_VERSION => (role, name),
            Request::Hello { version, .. } => {
                let reason = format!("protocol version {version} is not {PROTOCOL_VERSION}");
                return self.refuse(Response::Refused { version: PROTOCOL_VERSION, reason });
            }
            Request::Call { .. } => {
                return self.refuse(Response::ProtocolError { what: "a call before the hello".into() });
            }
        };
        let k = &sh.kernel;
        let made = match role {
            Role::Task { child_token: Some(token) } => match sh.child_claim(token) {
                Some(t) => Ok((t, false)),
                None => Err("no such child task (unknown token, or claimed already)"),
            },
            Role::Task { child_token: None } => k.task_create(None).map(|t| (t, false)).map_err(|_| "no task"),
            Role::Pager => k.task_create(None).map(|t| (t, true)).map_err(|_| "no task"),
        };
        let (task, pager) = match made {
            Ok(m) => m,
            Err(reason) => {
                return self.refuse(Response::Refused { version: PROTOCOL_VERSION, reason: reason.into() });
            }
        };
        let host_priv = (self.uid == sh.host_priv_uid)
            .then(|| k.port_transfer(sh.own, sh.host_priv, machvm_protocol::ipc::Disposition::CopySend, task).ok())
            .flatten();
        let info = ConnInfo { task, pid: self.pid, uid: self.uid, name: name.clone(), pager };
        let id = match sh.conn_add(info) {
            Ok(id) => id,
            Err(held) => {
                let _ = k.task_terminate(task);
                let reason = format!(
                    "uid {} has {held} connections, the most one uid may have (machvmd --max-conns-per-uid)",
                    self.uid
                );
                return self.refuse(Response::Refused { version: PROTOCOL_VERSION, reason });
            }
        };
        tracing::info!(conn = id, task = task.number(), pid = self.pid, uid = self.uid, name = %name, pager, "connected");
        self.phase = Phase::Task { caller: Caller { conn: id, task } };
        self.send(&Response::Welcome { version: PROTOCOL_VERSION, task: task.number(), host_priv });
    }

    /// Answers with `r` and closes once it is written (or [`LINGER`] has
    /// passed).
    fn refuse(&mut self, r: Response) {
        self.queue.clear();
        self.running.clear();
        self.decoder = FrameDecoder::new();
        self.send(&r);
        self.closing(Instant::now() + LINGER);
    }

    /// Enters `Closing` (keeping the earlier deadline of a connection
    /// already closing).
    fn closing(&mut self, deadline: Instant) {
        self.phase = match self.phase {
            Phase::Closing { deadline: d, caller } => Phase::Closing { deadline: d.min(deadline), caller },
            Phase::Task { caller } => Phase::Closing { deadline, caller: Some(caller) },
            Phase::Hello { .. } => Phase::Closing { deadline, caller: None },
        };
    }

    /// Encodes `r` for the loop to write.
    fn send(&mut self, r: &Response) {
        match encode_frame(r) {
            // Nothing waiting: the frame is the buffer (no copy).
            Ok(frame) if self.out.is_empty() => self.out = frame,
            Ok(frame) => self.out.extend_from_slice(&frame),
            Err(e) => {
                // A reply too large for a frame (the calls keep theirs
                // under it): the connection cannot carry it.
                tracing::warn!("reply not sent: {e}");
                self.closing(Instant::now());
            }
        }
    }

    /// Replies are waiting to be written (the loop writes them once it has
    /// made every call it can, see [`crate::reactor`]).
    pub fn has_output(&self) -> bool {
        self.out_at < self.out.len()
    }

    /// Writes what the socket takes of the replies; false if it broke.
    fn flush(&mut self) -> bool {
        self.blocked = false;
        while self.out_at < self.out.len() {
            match (&self.stream).write(&self.out[self.out_at..]) {
                Ok(0) => return false,
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.blocked = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.out = Vec::new();
                    self.out_at = 0;
                    return false;
                }
            }
        }
        if self.out_at == self.out.len() {
            if self.out.capacity() > OUT_KEEP {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
            self.out_at = 0;
        } else if self.out_at > (1 << 20) {
            self.out.drain(..self.out_at);
            self.out_at = 0;
        }
        true
    }

    /// The socket is writable again.
    pub fn writable(&mut self, sh: &Shared) -> After {
        if !self.flush() {
            return After::Close;
        }
        self.run(sh);
        self.after()
    }

    /// The kernel woke a call being made (or a deadline passed): each
    /// waiting call is polled, and those done are answered.
    pub fn woken(&mut self, sh: &Shared) -> After {
        if let Phase::Task { caller } = self.phase {
            let mut i = 0;
            while i < self.running.len() {
                match self.running[i].pending.poll(sh, caller, &self.waker) {
                    Poll::Ready(result) => {
                        let seq = self.running.swap_remove(i).seq;
                        self.send(&Response::Reply { seq, result });
                    }
                    Poll::Pending(_) => i += 1,
                }
            }
        }
        self.run(sh);
        self.after()
    }

    /// A deadline passed: the hello's, a closing connection's, or a
    /// waiting call's.
    pub fn expired(&mut self, sh: &Shared, now: Instant) -> After {
        match self.phase {
            Phase::Hello { deadline } | Phase::Closing { deadline, .. } if now >= deadline => After::Close,
            _ if self.eof.is_some_and(|d| now >= d) => After::Close,
            _ => self.woken(sh),
        }
    }

    /// Starts the calls read (see [`Conn::make_calls`]); after the end of
    /// the peer's stream, a call that waits ends the task (step 4), so
    /// that it fails at once.
    fn run(&mut self, sh: &Shared) {
        self.make_calls(sh);
        let Phase::Task { caller } = self.phase else { return };
        if self.eof.is_some() && !self.running.is_empty() && !self.ended {
            self.ended = true;
            let _ = sh.kernel.task_terminate(caller.task);
        }
    }

    /// Starts the calls read, in order: each is answered when it is done,
    /// so one that waits does not hold up the next (as two threads of a
    /// task). A call that breaks the protocol is answered in its turn,
    /// once the calls before it are: then the connection closes.
    fn make_calls(&mut self, sh: &Shared) {
        let Phase::Task { caller } = self.phase else { return };
        while self.running.len() < CALLS_QUEUED && self.out.len() - self.out_at < OUT_HIGH {
            let Some(front) = self.queue.front() else { return };
            let breaks = match front {
                Err(what) => Some(what.clone()),
                Ok(Request::Call { call, .. }) => call.check().err(),
                Ok(Request::Hello { .. }) => Some("a second hello".into()),
            };
            if let Some(what) = breaks {
                if self.running.is_empty() {
                    self.refuse(Response::ProtocolError { what });
                }
                return;
            }
            let Some(Ok(Request::Call { seq, call })) = self.queue.pop_front() else { return };
            tracing::debug!(conn = caller.conn, seq, call = call.name(), "call");
            match start(sh, caller, call, &self.waker) {
                Started::Done(result) => self.send(&Response::Reply { seq, result }),
                Started::Waiting(pending) => self.running.push(Running { seq, pending }),
            }
        }
    }

    /// What the loop must watch for.
    fn after(&self) -> After {
        // Written by the loop, or when the socket takes more if it was
        // full.
        let writing = self.has_output();
        let write = writing && self.blocked;
        let read = if self.eof.is_some() {
            Reading::No
        } else if self.stop_reading || matches!(self.phase, Phase::Closing { .. }) {
            Reading::End
        } else {
            Reading::Data
        };
        match self.phase {
            Phase::Closing { .. } if !writing => After::Close,
            Phase::Closing { deadline, .. } | Phase::Hello { deadline } => {
                After::Keep { read, write, deadline: Some(deadline) }
            }
            Phase::Task { .. } => match self.eof {
                Some(_) if !writing && self.running.is_empty() && self.queue.is_empty() => After::Close,
                Some(linger) => After::Keep { read, write, deadline: Some(linger) },
                None => {
                    let deadline = self.running.iter().filter_map(|r| r.pending.deadline()).min();
                    After::Keep { read, write, deadline }
                }
            },
        }
    }

    /// Ends the connection: its task terminates (step 4).
    pub fn close(mut self, sh: &Shared) {
        // The waiting calls go first, cancelling their registrations.
        self.running.clear();
        let _ = self.flush();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Phase::Task { caller } | Phase::Closing { caller: Some(caller), .. } = self.phase {
            sh.conn_gone(caller.conn, caller.task);
            tracing::info!(conn = caller.conn, task = caller.task.number(), "disconnected");
        }
    }
}
