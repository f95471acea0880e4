//! The event loops: a few threads serve every connection, however many
//! wait.
//!
//! Each loop owns the connections given to it ([`Conn`]) and an epoll set
//! of their sockets, plus an eventfd other threads kick it through. A
//! call that must wait leaves its op with the connection and a waker
//! registered in the kernel; the waker names the connection, so when the
//! kernel marks one of its keys the loop polls that op again. A waiting
//! client costs no thread, and a slow pager delays only the calls that
//! wait for it.
//!
//! 1. The acceptor ([`Loops::give`]) hands a new connection to a loop, in
//!    turn, through the loop's inbox, and kicks it.
//! 2. A loop waits for its sockets, its eventfd and the nearest deadline
//!    (hellos, receive and send timeouts, closing connections).
//! 3. Socket events read frames and make calls ([`Conn::readable`]) or
//!    write replies ([`Conn::writable`]).
//! 4. Wake-ups: a waker pushes its connection onto its loop's inbox while
//!    the kernel lock is held (`wake_locked`) and, from another thread,
//!    kicks the eventfd after it is released (`wake`); a wake-up on the
//!    loop's own thread needs no kick, since the loop drains its inbox
//!    after every event before it sleeps.
//! 5. On stop, each loop closes the connections it still has.

use crate::conn::{After, Conn, Reading};
use crate::Shared;
use machvm_core::wait::Waker;
use rustix::event::epoll;
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::OwnedFd;
use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// What other threads give a loop.
#[derive(Debug)]
struct Inbox {
    kick: OwnedFd,
    /// The eventfd was written and the loop has not read it yet.
    kicked: AtomicBool,
    conns: Mutex<Vec<UnixStream>>,
    /// Connections whose waiting call was woken.
    woken: Mutex<Vec<u64>>,
    /// Connections (by their number in the daemon) to close.
    close: Mutex<Vec<u64>>,
    stop: AtomicBool,
}

std::thread_local! {
    /// The inbox of the loop running on this thread (null elsewhere).
    static HOME: std::cell::Cell<*const Inbox> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl Inbox {
    fn kick(&self) {
        if !self.kicked.swap(true, Ordering::AcqRel) {
            let _ = rustix::io::write(&self.kick, &1u64.to_ne_bytes());
        }
    }

    fn is_home(&self) -> bool {
        HOME.with(|h| std::ptr::eq(h.get(), self))
    }
}

/// Wakes one connection's loop for its waiting call.
#[derive(Debug)]
struct ConnWaker {
    inbox: Arc<Inbox>,
    token: u64,
}

impl Waker for ConnWaker {
    fn wake_locked(&self) {
        self.inbox.woken.lock().unwrap_or_else(|e| e.into_inner()).push(self.token);
    }
    fn wake(&self) {
        if !self.inbox.is_home() {
            self.inbox.kick();
        }
    }
}

/// The event loops, as the acceptor sees them.
#[derive(Debug)]
pub struct Loops {
    inboxes: Vec<Arc<Inbox>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

/// The token of a loop's eventfd (connections count from 1).
const KICK: u64 = 0;

impl Loops {
    /// Starts `n` loops (at least one).
    pub fn start(sh: &Arc<Shared>, n: usize) -> std::io::Result<Loops> {
        let mut inboxes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let inbox = Arc::new(Inbox {
                kick: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
                kicked: AtomicBool::new(false),
                conns: Mutex::default(),
                woken: Mutex::default(),
                close: Mutex::default(),
                stop: AtomicBool::new(false),
            });
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            epoll::add(&epoll, &inbox.kick, epoll::EventData::new_u64(KICK), epoll::EventFlags::IN)?;
            let lp = Loop {
                sh: sh.clone(),
                inbox: inbox.clone(),
                epoll,
                conns: HashMap::new(),
                timers: BTreeSet::new(),
                dirty: Vec::new(),
                next: 1,
            };
            let t = std::thread::Builder::new().name(format!("machvmd-loop-{i}")).spawn(move || lp.run())?;
            inboxes.push(inbox);
            threads.push(t);
        }
        Ok(Loops { inboxes, threads, next: AtomicUsize::new(0) })
    }

    /// Gives a new connection to the next loop (step 1).
    pub fn give(&self, stream: UnixStream) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        let inbox = &self.inboxes[i];
        inbox.conns.lock().unwrap_or_else(|e| e.into_inner()).push(stream);
        inbox.kick();
    }

    /// Closes the connections numbered `ids` (their loops close them at
    /// once; the caller waits for them to be gone).
    pub fn close(&self, ids: &[u64]) {
        for inbox in &self.inboxes {
            inbox.close.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(ids);
            inbox.kick();
        }
    }

    /// Stops every loop (its connections close) and joins them.
    pub fn stop(self) {
        for inbox in &self.inboxes {
            inbox.stop.store(true, Ordering::Release);
            inbox.kick();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One loop and the connections it owns.
struct Loop {
    sh: Arc<Shared>,
    inbox: Arc<Inbox>,
    epoll: OwnedFd,
    conns: HashMap<u64, Slot>,
    /// Deadlines: (when, connection).
    timers: BTreeSet<(Instant, u64)>,
    /// Connections with replies to write, in the order they were made.
    dirty: Vec<u64>,
    next: u64,
}

/// A connection with what the loop watches for it.
struct Slot {
    conn: Conn,
    /// The epoll interest: reading, writing.
    watch: (Reading, bool),
    deadline: Option<Instant>,
}

impl Loop {
    fn run(mut self) {
        HOME.with(|h| h.set(Arc::as_ptr(&self.inbox)));
        let mut events = Vec::with_capacity(256);
        while !self.inbox.stop.load(Ordering::Acquire) {
            let timeout = self.timers.first().map(|&(when, _)| until(when));
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!("epoll_wait: {e}");
                    break;
                }
            }
            for ev in events.drain(..) {
                let token = ev.data.u64();
                if token == KICK {
                    let mut b = [0u8; 8];
                    let _ = rustix::io::read(&self.inbox.kick, &mut b);
                    self.inbox.kicked.store(false, Ordering::Release);
                    continue;
                }
                let f = ev.flags;
                if f.intersects(
                    epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR | epoll::EventFlags::RDHUP,
                ) {
                    self.event(token, |c, sh| c.readable(sh));
                }
                if f.contains(epoll::EventFlags::OUT) {
                    self.event(token, |c, sh| c.writable(sh));
                }
            }
            self.expire();
            self.flush();
        }
        let all: Vec<u64> = self.conns.keys().copied().collect();
        for token in all {
            self.close(token);
        }
    }

    /// Runs `f` on a connection and applies what it asks for; a
    /// connection with replies to write is noted for [`Loop::flush`].
    fn event(&mut self, token: u64, f: impl FnOnce(&mut Conn, &Shared) -> After) {
        let Some(slot) = self.conns.get_mut(&token) else { return };
        let after = f(&mut slot.conn, &self.sh);
        if slot.conn.has_output() && !self.dirty.contains(&token) {
            self.dirty.push(token);
        }
        self.apply(token, after);
    }

    /// Writes the replies made, once every call the loop could make is
    /// made; the latest first, so that the reply a pager's answer
    /// completes goes out before the pager's own acknowledgement. Writing
    /// may let more calls be made (a connection held back by a full
    /// socket): they are made and written too.
    fn flush(&mut self) {
        loop {
            self.drain();
            let Some(token) = self.dirty.pop() else { return };
            self.event(token, |c, sh| c.writable(sh));
        }
    }

    fn apply(&mut self, token: u64, after: After) {
        let Some(slot) = self.conns.get_mut(&token) else { return };
        match after {
            After::Close => self.close(token),
            After::Keep { read, write, deadline } => {
                if (read, write) != slot.watch {
                    slot.watch = (read, write);
                    let data = epoll::EventData::new_u64(token);
                    let _ = epoll::modify(&self.epoll, slot.conn.stream.as_fd(), data, flags(read, write));
                }
                if deadline != slot.deadline {
                    if let Some(d) = slot.deadline {
                        self.timers.remove(&(d, token));
                    }
                    if let Some(d) = deadline {
                        self.timers.insert((d, token));
                    }
                    slot.deadline = deadline;
                }
            }
        }
    }

    fn close(&mut self, token: u64) {
        let Some(slot) = self.conns.remove(&token) else { return };
        if let Some(d) = slot.deadline {
            self.timers.remove(&(d, token));
        }
        let _ = epoll::delete(&self.epoll, slot.conn.stream.as_fd());
        slot.conn.close(&self.sh);
    }

    /// Deadlines that passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(when, token)) = self.timers.first() {
            if when > now {
                break;
            }
            self.timers.remove(&(when, token));
            if let Some(slot) = self.conns.get_mut(&token) {
                slot.deadline = None;
            }
            self.event(token, |c, sh| c.expired(sh, now));
        }
    }

    /// New connections and wake-ups, until none is left (step 4).
    fn drain(&mut self) {
        loop {
            let streams = std::mem::take(&mut *self.inbox.conns.lock().unwrap_or_else(|e| e.into_inner()));
            let mut woken = std::mem::take(&mut *self.inbox.woken.lock().unwrap_or_else(|e| e.into_inner()));
            // An op registered on several keys is woken once per key
            // marked; one poll makes it start again from the top.
            woken.sort_unstable();
            woken.dedup();
            let close = std::mem::take(&mut *self.inbox.close.lock().unwrap_or_else(|e| e.into_inner()));
            if streams.is_empty() && woken.is_empty() && close.is_empty() {
                return;
            }
            if !close.is_empty() {
                let doomed: Vec<u64> = (self.conns.iter())
                    .filter(|(_, s)| s.conn.caller().is_some_and(|c| close.contains(&c.conn)))
                    .map(|(&t, _)| t)
                    .collect();
                for token in doomed {
                    self.close(token);
                }
            }
            for stream in streams {
                self.adopt(stream);
            }
            for token in woken {
                self.event(token, |c, sh| c.woken(sh));
            }
        }
    }

    fn adopt(&mut self, stream: UnixStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let token = self.next;
        self.next += 1;
        let waker: Arc<dyn Waker> = Arc::new(ConnWaker { inbox: self.inbox.clone(), token });
        let conn = Conn::new(stream, waker);
        if epoll::add(&self.epoll, conn.stream.as_fd(), epoll::EventData::new_u64(token), flags(Reading::Data, false))
            .is_err()
        {
            return;
        }
        self.conns.insert(token, Slot { conn, watch: (Reading::Data, false), deadline: None });
        // The hello may be there already, and its deadline starts now.
        self.event(token, |c, sh| c.readable(sh));
    }
}

/// The epoll interest for reading and writing (hang-ups and errors are
/// always reported).
fn flags(read: Reading, write: bool) -> epoll::EventFlags {
    let mut f = match read {
        Reading::Data => epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        Reading::End => epoll::EventFlags::RDHUP,
        Reading::No => epoll::EventFlags::empty(),
    };
    if write {
        f |= epoll::EventFlags::OUT;
    }
    f
}

/// The time left until `when`, rounded up to a whole millisecond (so that
/// a deadline is never looked at early, whatever epoll's granularity).
fn until(when: Instant) -> rustix::time::Timespec {
    let ms = when.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000);
    let ms = i64::try_from(ms).unwrap_or(i64::MAX / 1_000_000);
    rustix::time::Timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 }
}
