//! Everything the core takes from `std` for concurrency, in one place:
//! a mutex, a reader-writer lock and a condition variable, the primitives a
//! kernel also has, and the wait queue built on them ([`Event`]) that
//! faults and receives sleep on. A bare-metal port replaces this file.
//!
//! Poisoning is not part of the kernel's model: a panic while a lock is held
//! is a kernel bug, so the guards are taken through it.

use std::sync::{self, MutexGuard, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// A mutual-exclusion lock.
#[derive(Default, Debug)]
pub struct Mutex<T>(sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(v: T) -> Self {
        Mutex(sync::Mutex::new(v))
    }
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reader-writer lock.
#[derive(Default, Debug)]
pub struct RwLock<T>(sync::RwLock<T>);

impl<T> RwLock<T> {
    pub const fn new(v: T) -> Self {
        RwLock(sync::RwLock::new(v))
    }
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// A condition variable: the sleeping half of [`Event`], which is what
/// threads waiting on a pager or a message use.
#[derive(Default, Debug)]
pub struct Condvar(sync::Condvar);

impl Condvar {
    pub const fn new() -> Self {
        Condvar(sync::Condvar::new())
    }
    /// Releases `guard`, sleeps until woken, re-takes the lock.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
    /// As `wait`, giving up after `timeout`; the flag says whether it timed out.
    pub fn wait_timeout<'a, T>(&self, guard: MutexGuard<'a, T>, timeout: Duration) -> (MutexGuard<'a, T>, bool) {
        let (g, r) = self.0.wait_timeout(guard, timeout).unwrap_or_else(|e| e.into_inner());
        (g, r.timed_out())
    }
    pub fn notify_all(&self) {
        self.0.notify_all()
    }
}

pub use std::sync::{Arc, MutexGuard as Guard};

/// A wait queue with a generation count: sleepers note the generation
/// under the lock, and sleep only while it has not moved.
///
/// Waking a sleeping thread costs tens of microseconds on a loaded or
/// virtual machine — more than a pager takes to answer. So a waiter first
/// spins briefly (without the lock) for the generation to move, and only
/// then sleeps on the condition variable. The protocol:
///
/// 1. the waiter, holding the lock, reads [`Event::generation`];
/// 2. the waker, holding the lock, calls [`Event::bump`], and after
///    releasing it, [`Event::notify`];
/// 3. the waiter, having released the lock, calls [`Event::wait_unlocked`]
///    with the generation it read: a bump after step 1 is never missed,
///    whether it lands during the spin or the sleep (the sleeper re-reads
///    the generation under the lock before it sleeps).
#[derive(Debug, Default)]
pub struct Event {
    generation: std::sync::atomic::AtomicU64,
    /// Threads asleep on `cv` (changed with the lock held): a notify with
    /// nobody asleep costs no system call.
    sleepers: std::sync::atomic::AtomicU32,
    cv: Condvar,
}

/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(30);

impl Event {
    pub const fn new() -> Event {
        Event {
            generation: std::sync::atomic::AtomicU64::new(0),
            sleepers: std::sync::atomic::AtomicU32::new(0),
            cv: Condvar::new(),
        }
    }

    /// The current generation (read it with the lock held).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Something happened (call with the lock held).
    pub fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Wakes the sleepers (best after releasing the lock, so that they do
    /// not wake only to block on it).
    pub fn notify(&self) {
        // A sleeper counts itself with the lock held before it sleeps, and
        // the bump this notify follows was made with the lock held after:
        // it cannot be missed.
        if self.sleepers.load(std::sync::atomic::Ordering::Acquire) > 0 {
            self.cv.notify_all();
        }
    }

    /// Waits until the generation differs from `seen` (or `deadline`
    /// passes), spinning for up to `SPIN` (30 µs) before it sleeps. The
    /// caller does not hold `mutex` (the lock the wakers bump under); it is
    /// taken only to sleep, so a wake-up during the spin costs no lock at
    /// all. Spurious returns are possible: callers re-check their
    /// condition.
    pub fn wait_unlocked<T>(&self, mutex: &Mutex<T>, seen: u64, deadline: Option<std::time::Instant>) {
        if self.spin(seen) {
            return;
        }
        drop(self.sleep(mutex.lock(), seen, deadline));
    }

    /// Spins for up to `SPIN` while the generation is `seen`; whether it
    /// moved.
    fn spin(&self, seen: u64) -> bool {
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        while self.generation() == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins % 64 == 0 && start.elapsed() >= SPIN {
                return false;
            }
        }
        true
    }

    /// With the lock held: sleeps unless the generation moved past `seen`.
    fn sleep<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        seen: u64,
        deadline: Option<std::time::Instant>,
    ) -> MutexGuard<'a, T> {
        if self.generation() != seen {
            return guard;
        }
        use std::sync::atomic::Ordering::AcqRel;
        let now = std::time::Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return guard;
        }
        self.sleepers.fetch_add(1, AcqRel);
        let guard = match deadline {
            None => self.cv.wait(guard),
            Some(d) => self.cv.wait_timeout(guard, d - now).0,
        };
        self.sleepers.fetch_sub(1, AcqRel);
        guard
    }
}
