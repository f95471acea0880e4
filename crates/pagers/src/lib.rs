//! User-space pagers for machvm: independent actors (threads) that own
//! memory object ports and speak the EMMI with the kernel.
//!
//! - [`pager::Pager`]: the trait a pager implements, one method per
//!   kernel message, and [`pager::serve_pager`], the loop that calls it.
//! - [`conn::PagerConn`]: a pager's connection, also the scripted test pager;
//!   over a [`link::KernelLink`], in-process or a socket to `machvmd`.
//! - [`serve::serve`] with a [`serve::Backing`]: the server loop.
//! - Backings: [`serve::FileBacking`] (the file pager),
//!   [`serve::SwapBacking`] (the default pager's swap file),
//!   [`serve::MemBacking`] (the in-process zero-fill pager).
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod conn;
pub mod link;
pub mod pager;
pub mod serve;

pub use conn::{PagerConn, Request, STAGING_SIZE};
pub use link::{KernelLink, Local, Outgoing, Staging};
pub use pager::{serve_pager, Answer, Attributes, Pager};
pub use serve::{serve, Backing, FileBacking, MemBacking, PagerStats, SwapBacking};

use machvm_core::ipc::{Disposition, PortName};
use machvm_core::{KernError, Kernel, Result, TaskId};
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
        let (kernel, task) = (conn.link.kernel.clone(), conn.link.task);
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
/// kernel (`vm_set_default_memory_manager`). `holder` holds the
/// host-privilege right as `host_priv` (see `Kernel::boot_host_priv`); the
/// pager task gets a copy of it for the call.
///
/// Errors: `KERN_INVALID_HOST` (no host privilege), and those of the calls
/// that make the pager's task and port.
pub fn start_default_pager(
    kernel: &Arc<Kernel>,
    holder: TaskId,
    host_priv: PortName,
    swap: std::fs::File,
) -> Result<RunningPager> {
    let mut conn = PagerConn::new(kernel.clone())?;
    let port: PortName = conn.new_object()?;
    let registered = kernel
        .port_transfer(holder, host_priv, Disposition::CopySend, conn.link.task)
        .map_err(|_| KernError::InvalidHost)
        .and_then(|priv_name| kernel.set_default_memory_manager(conn.link.task, priv_name, port));
    if let Err(e) = registered {
        let _ = conn.die();
        return Err(e);
    }
    Ok(RunningPager::spawn(conn, SwapBacking::new(swap)))
}

/// What a kernel's booter does when it wants nothing else of the host
/// privilege: takes it (`Kernel::boot_host_priv`) into a task of its own
/// and starts the default pager with it ([`start_default_pager`]).
///
/// Errors: `KERN_NO_ACCESS` (the host privilege was handed out already),
/// and those of [`start_default_pager`].
pub fn boot_default_pager(kernel: &Arc<Kernel>, swap: std::fs::File) -> Result<RunningPager> {
    let booter = kernel.task_create(None)?;
    let host_priv = kernel.boot_host_priv(booter)?;
    start_default_pager(kernel, booter, host_priv, swap)
}
