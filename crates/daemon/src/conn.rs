//! One connection: the hello, then calls, until the peer goes.
//!
//! 1. The first frame must be a hello of this protocol version, within
//!    [`HELLO_TIMEOUT`]; otherwise a refusal (another version) or a
//!    protocol error, and the connection closes.
//! 2. The connection becomes a task: a new one, or the child task its
//!    hello claims. The peer's credentials (`SO_PEERCRED`) are recorded;
//!    a peer of the host-privilege uid gets a send right to the host port.
//! 3. A reader thread reads frames and hands calls to the worker (this
//!    thread), which makes them in order and answers each. A frame that
//!    does not decode, a second hello, or a call that fails its checks is
//!    a protocol error naming what was wrong; the connection closes.
//! 4. When the peer goes (end of stream, an error, a protocol error), the
//!    reader terminates the task at once, which wakes a call waiting in
//!    the worker; the worker then cleans up (`Shared::conn_gone`).

use crate::dispatch::{dispatch, Caller};
use crate::{ConnInfo, Shared};
use machvm_protocol::frame::{read_frame, write_frame, FrameError};
use machvm_protocol::wire::{Request, Response, Role, PROTOCOL_VERSION};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls of one connection read and not yet made.
pub const CALLS_QUEUED: usize = 16;

fn send(w: &mut BufWriter<UnixStream>, r: &Response) -> bool {
    write_frame(w, r).is_ok() && w.flush().is_ok()
}

fn what(e: &FrameError) -> String {
    format!("bad frame: {e}")
}

/// A reader that fails once `end` has passed, however its bytes trickle.
struct Deadline<'a> {
    stream: &'a UnixStream,
    end: Instant,
}

impl std::io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

/// Serves one connection until it goes.
pub fn serve(sh: Arc<Shared>, stream: UnixStream) {
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let Ok(write_half) = stream.try_clone() else { return };
    let mut writer = BufWriter::new(write_half);
    let cred = rustix::net::sockopt::socket_peercred(&stream).ok();
    let (pid, uid) = cred.map_or((0, u32::MAX), |c| (c.pid.as_raw_nonzero().get() as u32, c.uid.as_raw()));

    // 1. The hello, whole within HELLO_TIMEOUT (however slowly its bytes
    // come), read unbuffered so that nothing after it is taken.
    let hello = read_frame::<Request>(&mut Deadline { stream: &stream, end: Instant::now() + HELLO_TIMEOUT });
    let _ = stream.set_read_timeout(None);
    if sh.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        send(&mut writer, &Response::Refused { version: PROTOCOL_VERSION, reason: "machvmd is stopping".into() });
        return;
    }
    let hello = match hello {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            send(&mut writer, &Response::ProtocolError { what: what(&e) });
            return;
        }
    };
    if let Err(what) = hello.check() {
        send(&mut writer, &Response::ProtocolError { what });
        return;
    }
    let (role, name) = match hello {
        Request::Hello { version, role, name } if version == PROTOCOL_VERSION => (role, name),
        Request::Hello { version, .. } => {
            let reason = format!("protocol version {version} is not {PROTOCOL_VERSION}");
            send(&mut writer, &Response::Refused { version: PROTOCOL_VERSION, reason });
            return;
        }
        Request::Call { .. } => {
            send(&mut writer, &Response::ProtocolError { what: "a call before the hello".into() });
            return;
        }
    };

    // 2. The task.
    let k = &sh.kernel;
    let (task, pager) = match role {
        Role::Task { child_token: Some(token) } => match sh.child_claim(token) {
            Some(t) => (t, false),
            None => {
                let reason = "no such child task (unknown token, or claimed already)".to_string();
                send(&mut writer, &Response::Refused { version: PROTOCOL_VERSION, reason });
                return;
            }
        },
        Role::Task { child_token: None } => match k.task_create(None) {
            Ok(t) => (t, false),
            Err(_) => return,
        },
        Role::Pager => match k.task_create(None) {
            Ok(t) => (t, true),
            Err(_) => return,
        },
    };
    let host_priv = (uid == sh.host_priv_uid)
        .then(|| k.port_transfer(sh.own, sh.host_priv, machvm_protocol::ipc::Disposition::CopySend, task).ok())
        .flatten();
    let id = sh.conn_add(ConnInfo { task, pid, uid, name: name.clone(), pager }, &stream);
    tracing::info!(conn = id, task = task.number(), pid, uid, name = %name, pager, "connected");
    if !send(&mut writer, &Response::Welcome { version: PROTOCOL_VERSION, task: task.number(), host_priv }) {
        sh.conn_gone(id, task);
        return;
    }

    // 3. The reader. At most CALLS_QUEUED calls wait to be made: a client
    // that sends more before its answers come breaks the protocol (the
    // client library makes one call at a time), so the daemon never holds
    // more of it than that, and never stops reading (it must see the
    // peer go).
    let writer = Arc::new(std::sync::Mutex::new(writer));
    let (tx, rx) = mpsc::sync_channel::<Result<Request, String>>(CALLS_QUEUED);
    let reader_sh = sh.clone();
    let reader_stream = stream.try_clone().ok();
    let reader_writer = writer.clone();
    let reader_thread = std::thread::spawn(move || {
        let refuse = |what: String| {
            send(&mut reader_writer.lock().unwrap_or_else(|e| e.into_inner()), &Response::ProtocolError { what });
        };
        loop {
            // A bad frame is answered in its turn, after the calls before
            // it; only a flood is refused at once.
            let item = match read_frame::<Request>(&mut reader) {
                Ok(Some(r)) => Ok(r),
                Ok(None) | Err(FrameError::Io(_)) | Err(FrameError::Truncated { .. }) => break,
                Err(e) => Err(what(&e)),
            };
            let bad = item.is_err();
            match tx.try_send(item) {
                Ok(()) if bad => break,
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => {
                    refuse(format!("more than {CALLS_QUEUED} calls waiting for their replies"));
                    break;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => break,
            }
        }
        // 4. The peer is gone (or broke the protocol): the task ends now,
        // waking any call of it still waiting.
        drop(tx);
        let _ = reader_sh.kernel.task_terminate(task);
        if let Some(s) = reader_stream {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
    });

    let caller = Caller { conn: id, task };
    let reply = |r: &Response| send(&mut writer.lock().unwrap_or_else(|e| e.into_inner()), r);
    for req in rx {
        let (seq, call) = match req {
            Err(what) => {
                reply(&Response::ProtocolError { what });
                break;
            }
            Ok(Request::Call { seq, call }) => match call.check() {
                Ok(()) => (seq, call),
                Err(what) => {
                    reply(&Response::ProtocolError { what });
                    break;
                }
            },
            Ok(Request::Hello { .. }) => {
                reply(&Response::ProtocolError { what: "a second hello".into() });
                break;
            }
        };
        tracing::debug!(conn = id, seq, call = call.name(), "call");
        let result = dispatch(&sh, caller, call);
        if !reply(&Response::Reply { seq, result }) {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = reader_thread.join();
    sh.conn_gone(id, task);
    tracing::info!(conn = id, task = task.number(), "disconnected");
}
