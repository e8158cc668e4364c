//! Advisory locks on files (`flock(2)`), shared by every process of a host.
//!
//! Each acquisition opens the file afresh: `flock` locks belong to an open file description, so
//! two threads of one process holding separate descriptors exclude each other just as two
//! processes do. The lock is released when the guard is dropped, or by the kernel when the
//! process dies, which is what makes a killed process harmless.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, Result};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

/// Takes an exclusive (`shared == false`) or shared lock on `path`, creating the file and its
/// directory when missing, and blocking until the lock is free.
pub(crate) fn lock(path: &Path, shared: bool) -> Result<FileLock> {
    let file = open(path)?;
    let op = if shared {
        FlockOperation::LockShared
    } else {
        FlockOperation::LockExclusive
    };
    loop {
        match flock(&file, op) {
            Ok(()) => return Ok(FileLock { _file: file }),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_error("lock", path, e.into())),
        }
    }
}

/// Takes an exclusive lock on `path` as [`lock`] does, but while another holder keeps it asks
/// `keep_waiting` every few milliseconds (at most [`MAX_POLL`]) whether to go on; its error
/// ends the wait. `flock` cannot be interrupted otherwise, and a holder may be a hung process.
pub(crate) fn lock_polling(
    path: &Path,
    keep_waiting: &mut dyn FnMut() -> Result<()>,
) -> Result<FileLock> {
    let file = open(path)?;
    let mut pause = Duration::from_millis(1);
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(FileLock { _file: file }),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) => {
                keep_waiting()?;
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_POLL);
            }
            Err(e) => return Err(io_error("lock", path, e.into())),
        }
    }
}

/// The longest pause between two attempts of [`lock_polling`]: a cancel is seen within it.
pub(crate) const MAX_POLL: Duration = Duration::from_millis(20);

/// Opens (creating when missing) a lock file that only this user can use. `flock` works on a
/// read-only descriptor, so a lock file other users can open lets any of them hold the host
/// lock: a directory created here is 0700, the file 0600, an existing file readable by others
/// is narrowed to 0600, and a file owned by another user (or a symbolic link) is refused.
fn open(path: &Path) -> Result<File> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error("create the directory of", path, e))?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    let meta = file.metadata().map_err(|e| io_error("inspect", path, e))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Backend(format!(
            "refusing to use the lock file {}: it belongs to user {}, not to this process's \
             user {me}, who could then be kept from the host by its owner",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("make private", path, e))?;
    }
    Ok(file)
}

/// Replaces the contents of `path` atomically: a reader, or a process started after a crash,
/// sees either the old contents or the new, never a mixture.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    // A per-process counter keeps concurrent writers apart. (Not the thread's id: asking for
    // it allocates a handle for the calling thread that a C program's main thread never frees,
    // which leak checkers report.)
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = PathBuf::from(format!(
        "{}.tmp.{}.{}",
        path.display(),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, contents).map_err(|e| io_error("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error("rename into place", path, e)
    })
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Backend(format!("cannot {what} {}: {e}", path.display()))
}
