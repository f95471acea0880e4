//! Everything the core takes from `std` for concurrency, in one place:
//! a mutex, a reader-writer lock and a condition variable, the primitives a
//! kernel also has. A bare-metal port replaces this file.
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

/// A wait/wake primitive: threads that wait on a pager or a message sleep
/// here, with their lock released while they sleep.
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
    pub fn notify_one(&self) {
        self.0.notify_one()
    }
}

pub use std::sync::{Arc, MutexGuard as Guard};
