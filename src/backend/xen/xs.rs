//! xenstore through libxenstore.
//!
//! libxenstore finds the daemon itself: `XENSTORED_PATH` names its Unix socket when set (tests
//! and non-standard setups use this), otherwise the standard socket under
//! `/var/run/xenstored/`, then the `/dev/xen/xenbus` device.
//!
//! Only the handful of calls squeeze needs are declared, by hand, below; libxenstore is
//! LGPL-2.1 and its interface has been stable for many releases.

use std::ffi::{c_char, c_uint, c_ulong, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// libxenstore's transaction id; [`XBT_NULL`] means "no transaction".
type XsTransaction = u32;
const XBT_NULL: XsTransaction = 0;
/// Index of the path in a watch event (`XS_WATCH_PATH`).
const XS_WATCH_PATH: usize = 0;
/// The longest absolute path xenstored accepts (`XENSTORE_ABS_PATH_MAX`).
const ABS_PATH_MAX: usize = 3072;
/// The largest value one request can carry (`XENSTORE_PAYLOAD_MAX`, less the path).
const PAYLOAD_MAX: usize = 4096;

#[repr(C)]
struct XsHandleRaw {
    _opaque: [u8; 0],
}

#[link(name = "xenstore")]
extern "C" {
    fn xs_open(flags: c_ulong) -> *mut XsHandleRaw;
    fn xs_close(h: *mut XsHandleRaw);
    fn xs_read(
        h: *mut XsHandleRaw,
        t: XsTransaction,
        path: *const c_char,
        len: *mut c_uint,
    ) -> *mut c_void;
    fn xs_write(
        h: *mut XsHandleRaw,
        t: XsTransaction,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    fn xs_rm(h: *mut XsHandleRaw, t: XsTransaction, path: *const c_char) -> bool;
    fn xs_directory(
        h: *mut XsHandleRaw,
        t: XsTransaction,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut *mut c_char;
    fn xs_transaction_start(h: *mut XsHandleRaw) -> XsTransaction;
    fn xs_transaction_end(h: *mut XsHandleRaw, t: XsTransaction, abort: bool) -> bool;
    fn xs_watch(h: *mut XsHandleRaw, path: *const c_char, token: *const c_char) -> bool;
    fn xs_unwatch(h: *mut XsHandleRaw, path: *const c_char, token: *const c_char) -> bool;
    fn xs_fileno(h: *mut XsHandleRaw) -> std::ffi::c_int;
    fn xs_read_watch(h: *mut XsHandleRaw, num: *mut c_uint) -> *mut *mut c_char;
}

extern "C" {
    // libxenstore hands out malloc'd results that the caller frees.
    fn free(p: *mut c_void);
}

/// A watch path: an absolute path, or one of xenstored's special paths for domains coming
/// and going.
fn c_watch_path(path: &str) -> Result<CString> {
    if path == crate::platform::INTRODUCE_DOMAIN || path == crate::platform::RELEASE_DOMAIN {
        return Ok(CString::new(path).expect("no NUL in a constant"));
    }
    c_path(path)
}

/// A path checked for what xenstored would refuse anyway, converted for C.
fn c_path(path: &str) -> Result<CString> {
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "xenstore path {path:?} is not absolute"
        )));
    }
    if path.len() > ABS_PATH_MAX {
        return Err(Error::InvalidArgument(format!(
            "xenstore path of {} bytes is longer than {ABS_PATH_MAX}",
            path.len()
        )));
    }
    CString::new(path)
        .map_err(|_| Error::InvalidArgument(format!("xenstore path {path:?} contains a NUL byte")))
}

fn os_error(what: &str, path: &str) -> Error {
    Error::Backend(format!(
        "xenstore {what} {path}: {}",
        std::io::Error::last_os_error()
    ))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The outcome of committing a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Everything written in the transaction is now visible.
    Committed,
    /// Another writer got in first; nothing was written and the transaction must be retried.
    Conflict,
}

/// One connection to xenstored.
///
/// libxenstore serialises requests on one connection internally, so a handle can be shared
/// between threads.
pub struct XsHandle {
    h: NonNull<XsHandleRaw>,
    // Requests sent to xenstored over this handle (and the handles sharing its count), for
    // measuring how much a caller reads.
    requests: Arc<AtomicU64>,
}

// SAFETY: libxenstore protects each handle with its own mutexes (requests, replies and the
// watch list), so calls from several threads on one handle are allowed.
unsafe impl Send for XsHandle {}
// SAFETY: as above.
unsafe impl Sync for XsHandle {}

impl std::fmt::Debug for XsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XsHandle { .. }")
    }
}

impl Drop for XsHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from xs_open and is closed once, here.
        unsafe { xs_close(self.h.as_ptr()) };
    }
}

impl XsHandle {
    /// Connects to xenstored (see the module documentation for where it is looked for).
    pub fn open() -> Result<Self> {
        Self::open_counting(Arc::default())
    }

    /// Another connection to xenstored whose requests count toward this handle's
    /// [`requests`](XsHandle::requests) (for watches on connections of their own).
    pub fn open_sharing_count(&self) -> Result<Self> {
        Self::open_counting(self.requests.clone())
    }

    fn open_counting(requests: Arc<AtomicU64>) -> Result<Self> {
        // SAFETY: 0 asks for a read-write connection, socket first, then the xenbus device.
        let h = unsafe { xs_open(0) };
        NonNull::new(h)
            .map(|h| XsHandle { h, requests })
            .ok_or_else(|| {
                let err = std::io::Error::last_os_error();
                let socket = std::env::var("XENSTORED_PATH")
                    .unwrap_or_else(|_| "/var/run/xenstored/socket".into());
                Error::Backend(format!(
                    "cannot connect to xenstored (socket {socket}, then /dev/xen/xenbus): {err}"
                ))
            })
    }

    /// The connection, counting one request sent through it.
    fn raw(&self) -> *mut XsHandleRaw {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.h.as_ptr()
    }

    /// How many requests (reads, writes, listings, removals, transaction starts and ends,
    /// watch changes) were sent over this connection and those opened with
    /// [`open_sharing_count`](XsHandle::open_sharing_count).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The value at `path` (in transaction `t`), or `None` when there is no such node.
    fn read_in(&self, t: XsTransaction, path: &str) -> Result<Option<String>> {
        let p = c_path(path)?;
        let mut len: c_uint = 0;
        // SAFETY: `p` is a C string and `len` a valid out-parameter.
        let v = unsafe { xs_read(self.raw(), t, p.as_ptr(), &mut len) };
        if v.is_null() {
            return if errno() == libc::ENOENT {
                Ok(None)
            } else {
                Err(os_error("read", path))
            };
        }
        // SAFETY: xs_read returned `len` readable bytes (plus a terminator) that we now own.
        let bytes = unsafe { std::slice::from_raw_parts(v as *const u8, len as usize) }.to_vec();
        // SAFETY: `v` was malloc'd by libxenstore and is freed once.
        unsafe { free(v) };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::Backend(format!("xenstore value at {path} is not valid UTF-8")))
    }

    fn write_in(&self, t: XsTransaction, path: &str, value: &str) -> Result<()> {
        let p = c_path(path)?;
        if value.len() > PAYLOAD_MAX - path.len() - 1 {
            return Err(Error::InvalidArgument(format!(
                "a value of {} bytes does not fit one xenstore request",
                value.len()
            )));
        }
        // SAFETY: `value` is valid for `value.len()` bytes, which fits c_uint (checked above).
        let ok = unsafe {
            xs_write(
                self.raw(),
                t,
                p.as_ptr(),
                value.as_ptr() as *const c_void,
                value.len() as c_uint,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(os_error("write", path))
        }
    }

    fn rm_in(&self, t: XsTransaction, path: &str) -> Result<()> {
        let p = c_path(path)?;
        // SAFETY: `p` is a C string.
        if unsafe { xs_rm(self.raw(), t, p.as_ptr()) } || errno() == libc::ENOENT {
            Ok(())
        } else {
            Err(os_error("rm", path))
        }
    }

    fn directory_in(&self, t: XsTransaction, path: &str) -> Result<Vec<String>> {
        let p = c_path(path)?;
        let mut num: c_uint = 0;
        // SAFETY: `p` is a C string and `num` a valid out-parameter.
        let v = unsafe { xs_directory(self.raw(), t, p.as_ptr(), &mut num) };
        if v.is_null() {
            return if errno() == libc::ENOENT {
                Ok(Vec::new())
            } else {
                Err(os_error("directory", path))
            };
        }
        // SAFETY: xs_directory returned `num` C strings, all inside one malloc'd block.
        let names = unsafe { c_strings(v, num as usize) };
        // SAFETY: the block is freed once, after its strings were copied.
        unsafe { free(v as *mut c_void) };
        names.map_err(|_| Error::Backend(format!("xenstore child of {path} is not valid UTF-8")))
    }

    /// The value at `path`, or `None` when there is no such node.
    pub fn read(&self, path: &str) -> Result<Option<String>> {
        self.read_in(XBT_NULL, path)
    }

    /// Writes `value` at `path`; xenstored creates missing parents.
    pub fn write(&self, path: &str, value: &str) -> Result<()> {
        self.write_in(XBT_NULL, path, value)
    }

    /// Removes `path` and its subtree; a missing node is not an error.
    pub fn rm(&self, path: &str) -> Result<()> {
        self.rm_in(XBT_NULL, path)
    }

    /// The names of the children of `path` (empty when it has none or does not exist).
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        self.directory_in(XBT_NULL, path)
    }

    /// Starts a transaction on this connection.
    pub fn transaction(&self) -> Result<XsTxn<'_>> {
        // SAFETY: the handle is open.
        let t = unsafe { xs_transaction_start(self.raw()) };
        if t == XBT_NULL {
            return Err(os_error("transaction start", "/"));
        }
        Ok(XsTxn {
            xs: self,
            t,
            open: true,
        })
    }

    /// Runs `body` in a transaction, retrying it from the start whenever another writer
    /// conflicts, until it commits. An error from `body` aborts the transaction.
    pub fn with_transaction<T>(&self, mut body: impl FnMut(&XsTxn<'_>) -> Result<T>) -> Result<T> {
        loop {
            let txn = self.transaction()?;
            let out = body(&txn)?;
            if txn.commit()? == Commit::Committed {
                return Ok(out);
            }
            log::debug!(target: "squeeze::xen", "xenstore transaction conflicted; retrying");
        }
    }

    /// Watches `path` and its subtree on this connection; events arrive through
    /// [`XsHandle::pending_events`]. xenstored fires one event for `path` as soon as the watch
    /// is set.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        let p = c_watch_path(path)?;
        let tok = CString::new(token)
            .map_err(|_| Error::InvalidArgument("watch token contains a NUL byte".into()))?;
        // SAFETY: both are C strings.
        if unsafe { xs_watch(self.raw(), p.as_ptr(), tok.as_ptr()) } {
            Ok(())
        } else {
            Err(os_error("watch", path))
        }
    }

    /// Removes a watch set with [`XsHandle::watch`].
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let p = c_watch_path(path)?;
        let tok = CString::new(token)
            .map_err(|_| Error::InvalidArgument("watch token contains a NUL byte".into()))?;
        // SAFETY: both are C strings.
        if unsafe { xs_unwatch(self.raw(), p.as_ptr(), tok.as_ptr()) } {
            Ok(())
        } else {
            Err(os_error("unwatch", path))
        }
    }

    /// Waits up to `timeout_ms` milliseconds (0: do not wait, negative: forever) for watch
    /// events and returns the paths of every event pending, in arrival order.
    pub fn pending_events(&self, timeout_ms: i32) -> Result<Vec<String>> {
        // SAFETY: the handle is open; the descriptor stays owned by libxenstore.
        let fd = unsafe { xs_fileno(self.h.as_ptr()) };
        if fd < 0 {
            return Err(os_error("fileno", "/"));
        }
        let mut out = Vec::new();
        let mut timeout = timeout_ms;
        loop {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err(os_error("poll", "/"));
            }
            if n == 0 {
                return Ok(out);
            }
            if pfd.revents & libc::POLLIN == 0 {
                // Hung up or invalid: no event will ever come through this connection again,
                // which its owner must hear about rather than wait forever.
                return Err(Error::Backend("xenstore watch connection lost".to_string()));
            }
            // The descriptor is readable exactly while events are queued, so this does not
            // block.
            let mut num: c_uint = 0;
            // SAFETY: `num` is a valid out-parameter.
            let v = unsafe { xs_read_watch(self.h.as_ptr(), &mut num) };
            if v.is_null() {
                return Err(os_error("read watch", "/"));
            }
            // SAFETY: an event is an array of `num` C strings (path, token) in one block.
            let fields = unsafe { c_strings(v, num as usize) };
            // SAFETY: freed once, after copying.
            unsafe { free(v as *mut c_void) };
            let fields = fields
                .map_err(|_| Error::Backend("xenstore watch path is not valid UTF-8".into()))?;
            if let Some(path) = fields.into_iter().nth(XS_WATCH_PATH) {
                out.push(path);
            }
            timeout = 0;
        }
    }
}

/// Copies `n` C strings out of a libxenstore result array.
///
/// # Safety
/// `v` must point to at least `n` valid, NUL-terminated C strings.
unsafe fn c_strings(
    v: *mut *mut c_char,
    n: usize,
) -> std::result::Result<Vec<String>, std::str::Utf8Error> {
    (0..n)
        // SAFETY: guaranteed by the caller.
        .map(|i| {
            unsafe { CStr::from_ptr(*v.add(i)) }
                .to_str()
                .map(str::to_owned)
        })
        .collect()
}

/// An open transaction. Dropping it without committing abandons it.
pub struct XsTxn<'a> {
    xs: &'a XsHandle,
    t: XsTransaction,
    open: bool,
}

impl std::fmt::Debug for XsTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XsTxn({})", self.t)
    }
}

impl XsTxn<'_> {
    /// The value at `path` as this transaction sees it.
    pub fn read(&self, path: &str) -> Result<Option<String>> {
        self.xs.read_in(self.t, path)
    }
    /// Writes `value` at `path` inside the transaction.
    pub fn write(&self, path: &str, value: &str) -> Result<()> {
        self.xs.write_in(self.t, path, value)
    }
    /// Removes `path` and its subtree inside the transaction; a missing node is not an error.
    pub fn rm(&self, path: &str) -> Result<()> {
        self.xs.rm_in(self.t, path)
    }
    /// The children of `path` as this transaction sees them.
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        self.xs.directory_in(self.t, path)
    }

    /// Commits the transaction.
    pub fn commit(mut self) -> Result<Commit> {
        self.open = false;
        // SAFETY: `t` is an open transaction on this handle, ended once.
        if unsafe { xs_transaction_end(self.xs.raw(), self.t, false) } {
            Ok(Commit::Committed)
        } else if errno() == libc::EAGAIN {
            Ok(Commit::Conflict)
        } else {
            Err(os_error("transaction commit", "/"))
        }
    }
}

impl Drop for XsTxn<'_> {
    fn drop(&mut self) {
        if self.open {
            // SAFETY: `t` is still open on this handle; abandoning it writes nothing. A
            // failure leaves nothing to clean up (xenstored drops it with the connection).
            unsafe { xs_transaction_end(self.xs.raw(), self.t, true) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_and_nul_bytes_are_refused_before_reaching_xenstored() {
        assert!(matches!(
            c_path("local/domain/0"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            c_path("/local/\0domain"),
            Err(Error::InvalidArgument(_))
        ));
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert!(matches!(c_path(&long), Err(Error::InvalidArgument(_))));
        assert_eq!(
            c_path("/local/domain/3/memory/target")
                .unwrap()
                .as_bytes()
                .len(),
            29
        );
    }
}
