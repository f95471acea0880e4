//! Waiting without a thread: wait keys, and the waiters registered on
//! them.
//!
//! A call that cannot finish yet (a fault waiting for its pager, a
//! receive waiting for a message, an eager copy waiting for a page) does
//! not sleep inside the kernel. It ends, holding the kernel lock, with the
//! keys whose events could change its answer; then:
//!
//! 1. the caller registers a [`Waker`] on those keys *in the same hold of
//!    the lock* (so no event can fall between its check and its
//!    registration) and gets a [`WaitTicket`];
//! 2. every state change marks the keys it affects ([`WaitTable::mark`]):
//!    a pager's answer marks its object, an unmap or a protection change
//!    marks the task, a queued message marks the receiver's space;
//! 3. when the lock is released, each waiter registered on a marked key is
//!    taken off every key it waited on and woken (`wake_locked` with the
//!    lock held, `wake` after it is dropped);
//! 4. the woken caller starts its call again from the top.
//!
//! A thread of the in-process API waits on a [`ThreadWaker`] (spinning
//! briefly, then sleeping); the daemon registers wakers that post to its
//! event loop, so a waiting client costs no thread. Keys are coarse (an
//! object, not a page): a spurious wake-up costs one retry, a missed one
//! would cost a hang, and every retry re-checks.

use crate::ipc::{PortId, SpaceId};
use crate::sync::{Arc, Event, Mutex};
use crate::vm::object::ObjectId;
use rustc_hash::FxHashMap;
use std::time::Instant;

/// Something a waiting call waits to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitKey {
    /// A VM object's pages or pager: a supply, an error, `ready`, an
    /// unlock, the pager's death, the object's end.
    Object(ObjectId),
    /// A task's map or life: unmap, protection, revocation, termination.
    Task(u32),
    /// The receive rights of an IPC space: a message queued on one of its
    /// ports, a port or set gone or moved.
    Space(SpaceId),
    /// Room in a port's queue (a message received), or the port's death:
    /// what a sender to a full queue waits for.
    Port(PortId),
}

/// Whoever must hear that a key it waits on changed.
pub trait Waker: Send + Sync {
    /// Called with the kernel lock held, before it is released: must be
    /// quick and must not take the kernel lock.
    fn wake_locked(&self) {}
    /// Called just after the kernel lock is released.
    fn wake(&self);
}

/// A registration on a set of keys, until one of them is marked or the
/// registration is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaitTicket(u64);

/// What a call that may wait came to.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Poll<T> {
    /// Finished.
    Ready(T),
    /// Not yet: the waker given is registered under this ticket, and will
    /// be woken when the call is worth starting again.
    Pending(WaitTicket),
}

/// Whose waker a call that must wait registers: its caller's, or, for the
/// in-process blocking calls, the calling thread's own (fetched only when
/// the call really waits, so a call that finishes at once pays nothing).
#[derive(Clone, Copy)]
pub(crate) enum WaitBy<'a> {
    Caller(&'a Arc<dyn Waker>),
    Thread,
}

/// A registration made for a call that waits: its ticket, and for a
/// blocking thread its waker and the generation to wait past.
pub(crate) struct Waiting {
    pub ticket: WaitTicket,
    pub thread: Option<(Arc<ThreadWaker>, u64)>,
}

impl Waiting {
    /// Sleeps (spinning first) until the blocking thread's waker moves.
    pub fn sleep<T>(&self, mutex: &Mutex<T>, deadline: Option<Instant>) {
        if let Some((w, seen)) = &self.thread {
            w.wait(mutex, *seen, deadline);
        }
    }
}

/// What a step of a call that may wait came to (inside the kernel).
pub(crate) enum Step<T> {
    Ready(T),
    Pending(Waiting),
}

impl<T> Step<T> {
    /// The public form.
    pub fn poll(self) -> Poll<T> {
        match self {
            Step::Ready(v) => Poll::Ready(v),
            Step::Pending(w) => Poll::Pending(w.ticket),
        }
    }
}

/// Whom a mark wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    All,
    One,
}

/// The waiters on one key: almost always one, so one needs no allocation.
#[derive(Debug)]
enum Tickets {
    One(WaitTicket),
    Many(Vec<WaitTicket>),
}

impl Tickets {
    fn push(&mut self, t: WaitTicket) {
        match self {
            Tickets::One(a) => *self = Tickets::Many(vec![*a, t]),
            Tickets::Many(v) => v.push(t),
        }
    }
    /// Removes `t`; whether none is left.
    fn remove(&mut self, t: WaitTicket) -> bool {
        match self {
            Tickets::One(a) => *a == t,
            Tickets::Many(v) => {
                v.retain(|&x| x != t);
                v.is_empty()
            }
        }
    }
    fn each(self, mut f: impl FnMut(WaitTicket)) {
        match self {
            Tickets::One(a) => f(a),
            Tickets::Many(v) => v.into_iter().for_each(f),
        }
    }
}

/// One registration: its waker and the keys it waits on (at most
/// [`MAX_KEYS`]).
struct Waiter {
    waker: Arc<dyn Waker>,
    keys: [Option<WaitKey>; MAX_KEYS],
}

/// The most keys one registration waits on.
pub const MAX_KEYS: usize = 3;

/// The waiters, by key, and the keys marked since the lock was taken.
/// Keys and tickets are the kernel's own numbers, never a task's choice,
/// so the maps use a fast hasher.
#[derive(Default)]
pub struct WaitTable {
    next: u64,
    by_key: FxHashMap<WaitKey, Tickets>,
    waiters: FxHashMap<WaitTicket, Waiter>,
    marked: Vec<(WaitKey, Wake)>,
}

impl std::fmt::Debug for WaitTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitTable").field("waiters", &self.waiters.len()).field("marked", &self.marked).finish()
    }
}

impl WaitTable {
    /// Registers `waker` on `keys` (step 1; at most [`MAX_KEYS`], the rest
    /// are ignored).
    pub fn register(&mut self, keys: &[WaitKey], waker: Arc<dyn Waker>) -> WaitTicket {
        debug_assert!(keys.len() <= MAX_KEYS);
        self.next += 1;
        let t = WaitTicket(self.next);
        let mut held = [None; MAX_KEYS];
        for (slot, &k) in held.iter_mut().zip(keys) {
            *slot = Some(k);
            match self.by_key.get_mut(&k) {
                Some(list) => list.push(t),
                None => {
                    self.by_key.insert(k, Tickets::One(t));
                }
            }
        }
        self.waiters.insert(t, Waiter { waker, keys: held });
        t
    }

    /// Takes `t` off `key`'s list.
    fn unlink(&mut self, key: WaitKey, t: WaitTicket) {
        if self.by_key.get_mut(&key).is_some_and(|list| list.remove(t)) {
            self.by_key.remove(&key);
        }
    }

    /// Forgets a registration that was not woken (a timeout, a caller that
    /// gave up). Cancelling one already woken does nothing.
    pub fn cancel(&mut self, t: WaitTicket) {
        if let Some(w) = self.waiters.remove(&t) {
            for k in w.keys.into_iter().flatten() {
                self.unlink(k, t);
            }
        }
    }

    /// Something waiters on `key` wait for happened (step 2): all of them
    /// are woken.
    pub fn mark(&mut self, key: WaitKey) {
        if self.by_key.contains_key(&key) {
            self.marked.push((key, Wake::All));
        }
    }

    /// Something only one waiter on `key` can use happened (room for one
    /// message): the one that waited longest is woken. A woken waiter that
    /// does not use it must mark the key again, or the others sleep on.
    pub fn mark_one(&mut self, key: WaitKey) {
        if self.by_key.contains_key(&key) {
            self.marked.push((key, Wake::One));
        }
    }

    /// Takes the waiters on marked keys off all their keys (step 3), having
    /// called their `wake_locked`; the caller calls `wake` once the lock is
    /// dropped.
    pub fn take_woken(&mut self) -> Vec<Arc<dyn Waker>> {
        let mut out = Vec::new();
        for (key, how) in std::mem::take(&mut self.marked) {
            let woken = match (how, self.by_key.remove(&key)) {
                (_, None) => continue,
                (Wake::All, Some(list)) => list,
                (Wake::One, Some(Tickets::One(t))) => Tickets::One(t),
                (Wake::One, Some(Tickets::Many(mut v))) => {
                    let first = v.remove(0);
                    if !v.is_empty() {
                        self.by_key.insert(key, Tickets::Many(v));
                    }
                    Tickets::One(first)
                }
            };
            woken.each(|t| {
                let Some(w) = self.waiters.remove(&t) else { return };
                for k in w.keys.into_iter().flatten().filter(|&k| k != key) {
                    if self.by_key.get_mut(&k).is_some_and(|list| list.remove(t)) {
                        self.by_key.remove(&k);
                    }
                }
                w.waker.wake_locked();
                out.push(w.waker);
            });
        }
        out
    }

    /// How many waiters are registered (for reports and leak checks).
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

/// A thread of the in-process API waiting for a key: the generation of its
/// [`Event`] moves when it is woken.
#[derive(Debug, Default)]
pub struct ThreadWaker {
    event: Event,
}

std::thread_local! {
    static CURRENT: Arc<ThreadWaker> = Arc::new(ThreadWaker::default());
}

impl ThreadWaker {
    pub fn new() -> Arc<ThreadWaker> {
        Arc::new(ThreadWaker::default())
    }

    /// The calling thread's own waker, made once per thread (a kernel
    /// thread's wait structure): a blocking call leaves it registered
    /// nowhere when it returns, so the next call can use it again.
    pub fn current() -> Arc<ThreadWaker> {
        CURRENT.with(Arc::clone)
    }

    /// The generation to wait past (read before the call that may register
    /// this waker).
    pub fn generation(&self) -> u64 {
        self.event.generation()
    }

    /// Waits until woken after `seen` (or `deadline`), spinning briefly
    /// first; `mutex` is the kernel lock, not held by the caller.
    pub fn wait<T>(&self, mutex: &Mutex<T>, seen: u64, deadline: Option<Instant>) {
        self.event.wait_unlocked(mutex, seen, deadline);
    }
}

impl Waker for ThreadWaker {
    fn wake_locked(&self) {
        self.event.bump();
    }
    fn wake(&self) {
        self.event.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Count(AtomicU32, AtomicU32);
    impl Waker for Count {
        fn wake_locked(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake(&self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_waiter_is_woken_once_by_any_of_its_keys_and_then_forgotten() {
        let mut t = WaitTable::default();
        let c = Arc::new(Count::default());
        let (a, b) = (WaitKey::Task(1), WaitKey::Object(ObjectId(7)));
        t.register(&[a, b], c.clone());
        t.mark(WaitKey::Task(2)); // nobody waits there
        assert!(t.take_woken().is_empty());
        t.mark(b);
        t.mark(a);
        let woken = t.take_woken();
        assert_eq!(woken.len(), 1, "one wake for two marked keys");
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
        assert_eq!(t.waiting(), 0);
        assert!(t.by_key.is_empty(), "off every key it waited on");
    }

    #[test]
    fn a_cancelled_waiter_is_never_woken() {
        let mut t = WaitTable::default();
        let c = Arc::new(Count::default());
        let k = WaitKey::Space(SpaceId(3));
        let ticket = t.register(&[k], c.clone());
        t.cancel(ticket);
        t.cancel(ticket);
        t.mark(k);
        assert!(t.take_woken().is_empty());
        assert_eq!(c.0.load(Ordering::Relaxed), 0);
        assert!(t.by_key.is_empty() && t.waiters.is_empty());
    }
}
