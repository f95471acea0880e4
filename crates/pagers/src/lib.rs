//! User-space pagers for machvm: independent actors (threads) that own
//! memory object ports and speak the EMMI with the kernel.
//!
//! - [`conn::PagerConn`]: a pager's connection, also the scripted test pager.
//! - [`serve::serve`] with a [`serve::Backing`]: the server loop.
//! - Backings: [`serve::FileBacking`] (the file pager),
//!   [`serve::SwapBacking`] (the default pager's swap file),
//!   [`serve::MemBacking`] (the in-process zero-fill pager).
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod conn;
pub mod serve;

pub use conn::{PagerConn, Request};
pub use serve::{serve, Backing, FileBacking, MemBacking, PagerStats, SwapBacking};

use machvm_core::ipc::PortName;
use machvm_core::{Kernel, Result, TaskId};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A pager running on its own thread.
#[derive(Debug)]
pub struct RunningPager {
    pub kernel: Arc<Kernel>,
    pub task: TaskId,
    pub stats: Arc<PagerStats>,
    join: Option<JoinHandle<()>>,
}

impl RunningPager {
    /// Starts serving `conn`'s objects from `backing` on a new thread.
    pub fn spawn(mut conn: PagerConn, mut backing: impl Backing + 'static) -> RunningPager {
        let stats = Arc::new(PagerStats::default());
        let (kernel, task) = (conn.kernel.clone(), conn.task);
        let s = stats.clone();
        let join = std::thread::Builder::new()
            .name("pager".into())
            .spawn(move || serve(&mut conn, &mut backing, &s))
            .expect("spawning a pager thread");
        RunningPager { kernel, task, stats, join: Some(join) }
    }

    /// Stops the pager: its task ends, so its ports die (waiting faults
    /// fail with `KERN_MEMORY_ERROR`) and its thread returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(j) = self.join.take() {
            let _ = self.kernel.task_terminate(self.task);
            let _ = j.join();
        }
    }
}

impl Drop for RunningPager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a default pager with a swap file and registers it with the
/// kernel (`vm_set_default_memory_manager`).
pub fn start_default_pager(kernel: &Arc<Kernel>, swap: std::fs::File) -> Result<RunningPager> {
    let mut conn = PagerConn::new(kernel.clone())?;
    let port: PortName = conn.new_object()?;
    kernel.set_default_memory_manager(conn.task, port)?;
    Ok(RunningPager::spawn(conn, SwapBacking::new(swap)))
}
