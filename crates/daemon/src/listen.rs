//! The daemon's socket: where it is, who may open it, and what to do with
//! one a previous daemon left.
//!
//! 1. The path is `--socket`, else `$MACHVM_SOCKET`, else
//!    `$XDG_RUNTIME_DIR/machvm.sock`, else `/run/machvm/machvm.sock`
//!    (`machvm_client::socket_path`, the one clients use).
//! 2. A socket file that answers a connection belongs to a live daemon:
//!    refuse to start. One that refuses connections was left by a daemon
//!    that died: remove it and bind anew. Anything else at the path (a
//!    regular file, a directory, a link) is refused and left alone.
//! 3. The socket is made mode 0600 (0660 with a group), so only its owner
//!    (and the group) can connect.

use rustix::fs::{chmod, chown, Gid, Mode};
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Why the daemon cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another machvmd is serving {0} (stop it first, or choose another --socket)")]
    InUse(String),
    #[error("{0} exists and is not a socket (not removing it; choose another --socket)")]
    NotASocket(String),
    #[error("{path}: {err}")]
    Io { path: String, err: io::Error },
}

fn io_err(path: &Path, err: impl Into<io::Error>) -> ListenError {
    ListenError::Io { path: path.display().to_string(), err: err.into() }
}

/// Binds the socket at `path` (steps 2 and 3); `group` opens it to a group.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ListenError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ever removed: a file that happens to be at the
        // path (a typo, a wrapper's mistake) is left alone.
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(ListenError::NotASocket(path.display().to_string()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.display().to_string())),
            // Nobody answers: a daemon that died left it.
            Err(_) => std::fs::remove_file(path).map_err(|e| io_err(path, e))?,
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    // Made with no access for group and others from the start (no window
    // between bind and chmod where the umask's mode applies).
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| io_err(path, e))?;
    let mode = match group {
        Some(gid) => {
            chown(path, None, Some(Gid::from_raw(gid))).map_err(|e| io_err(path, e))?;
            Mode::from_raw_mode(0o660)
        }
        None => Mode::from_raw_mode(0o600),
    };
    chmod(path, mode).map_err(|e| io_err(path, e))?;
    Ok(listener)
}
