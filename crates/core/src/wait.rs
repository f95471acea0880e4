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

use crate::ipc::SpaceId;
use crate::sync::{Arc, Event, Mutex};
use crate::vm::object::ObjectId;
use std::collections::HashMap;
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

/// The waiters, by key, and the keys marked since the lock was taken.
#[derive(Default)]
pub struct WaitTable {
    next: u64,
    by_key: HashMap<WaitKey, Vec<WaitTicket>>,
    waiters: HashMap<WaitTicket, (Arc<dyn Waker>, Vec<WaitKey>)>,
    marked: Vec<WaitKey>,
}

impl std::fmt::Debug for WaitTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitTable").field("waiters", &self.waiters.len()).field("marked", &self.marked).finish()
    }
}

impl WaitTable {
    /// Registers `waker` on `keys` (step 1).
    pub fn register(&mut self, keys: Vec<WaitKey>, waker: Arc<dyn Waker>) -> WaitTicket {
        self.next += 1;
        let t = WaitTicket(self.next);
        for &k in &keys {
            self.by_key.entry(k).or_default().push(t);
        }
        self.waiters.insert(t, (waker, keys));
        t
    }

    /// Forgets a registration that was not woken (a timeout, a caller that
    /// gave up). Cancelling one already woken does nothing.
    pub fn cancel(&mut self, t: WaitTicket) {
        if let Some((_, keys)) = self.waiters.remove(&t) {
            for k in keys {
                if let Some(list) = self.by_key.get_mut(&k) {
                    list.retain(|&x| x != t);
                    if list.is_empty() {
                        self.by_key.remove(&k);
                    }
                }
            }
        }
    }

    /// Something waiters on `key` wait for happened (step 2).
    pub fn mark(&mut self, key: WaitKey) {
        if self.by_key.contains_key(&key) {
            self.marked.push(key);
        }
    }

    /// Takes every waiter on a marked key off all its keys (step 3), having
    /// called its `wake_locked`; the caller calls `wake` once the lock is
    /// dropped.
    pub fn take_woken(&mut self) -> Vec<Arc<dyn Waker>> {
        let mut out = Vec::new();
        for key in std::mem::take(&mut self.marked) {
            for t in self.by_key.remove(&key).unwrap_or_default() {
                let Some((waker, keys)) = self.waiters.remove(&t) else { continue };
                for k in keys.into_iter().filter(|&k| k != key) {
                    if let Some(list) = self.by_key.get_mut(&k) {
                        list.retain(|&x| x != t);
                        if list.is_empty() {
                            self.by_key.remove(&k);
                        }
                    }
                }
                waker.wake_locked();
                out.push(waker);
            }
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

impl ThreadWaker {
    pub fn new() -> Arc<ThreadWaker> {
        Arc::new(ThreadWaker::default())
    }

    /// The generation to wait past (read before the call that may register
    /// this waker).
    pub fn generation(&self) -> u64 {
        self.event.generation()
    }

    /// Waits until woken after `seen` (or `deadline`), spinning briefly
    /// first; `mutex` is the kernel lock, not held by the caller.
    pub fn wait<T>(&self, mutex: &Mutex<T>, seen: u64, deadline: Option<Instant>) {
        drop(self.event.wait_from(mutex, seen, deadline));
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
        t.register(vec![a, b], c.clone());
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
        let ticket = t.register(vec![k], c.clone());
        t.cancel(ticket);
        t.cancel(ticket);
        t.mark(k);
        assert!(t.take_woken().is_empty());
        assert_eq!(c.0.load(Ordering::Relaxed), 0);
        assert!(t.by_key.is_empty() && t.waiters.is_empty());
    }
}
