//! Status codes and the calling thread's last error.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::Error;

/// The result of every fallible call: `SQZ_OK` (0) or one of the `SQZ_ERR_*` codes. Values not
/// listed here may be added later; treat any unknown non-zero value as an error.
pub type sqz_status = i32;

/// Success.
pub const SQZ_OK: sqz_status = 0;
/// An argument is malformed: a NULL pointer, a struct size smaller than the first published
/// layout, a duplicate domid, an invalid time, a handle already in use.
pub const SQZ_ERR_INVALID_ARGUMENT: sqz_status = 1;
/// A memory value is negative or absurdly large (above 2^50 KiB), or a range has min > max.
pub const SQZ_ERR_INVALID_MEMORY_VALUE: sqz_status = 2;
/// Even with every balloonable domain at its dynamic-min the host cannot free the memory asked
/// for. `sqz_last_error_cannot_free` gives the amounts.
pub const SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY: sqz_status = 3;
/// Domains did not reach their balloon targets. `sqz_last_error_domids` lists them.
pub const SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE: sqz_status = 4;
/// No reservation has the given id (reserved for the memory service).
pub const SQZ_ERR_UNKNOWN_RESERVATION: sqz_status = 5;
/// The domain has no reservation (reserved for the memory service).
pub const SQZ_ERR_NO_RESERVATION: sqz_status = 6;
/// The platform failed: a callback returned non-zero, `now` returned a bad time, `make_host`
/// produced no usable snapshot, or the simulated host broke a safety rule.
pub const SQZ_ERR_BACKEND: sqz_status = 7;
/// The request needs something this build does not offer (for example an unknown fistpoint).
pub const SQZ_ERR_UNSUPPORTED: sqz_status = 8;
/// An output buffer is too small; the call wrote how many entries it needs and changed nothing.
pub const SQZ_ERR_BUFFER_TOO_SMALL: sqz_status = 9;
/// A bug inside squeeze (a caught panic). The message says where.
pub const SQZ_ERR_INTERNAL: sqz_status = 10;
/// The caller stopped the call before it finished: through `sqz_cancel_request`, or a
/// progress callback returning non-zero. Nothing was reserved.
pub const SQZ_ERR_CANCELLED: sqz_status = 11;
/// The caller's deadline cannot be met: the balloon rates the guests have shown predict the
/// memory free only after it (the message says when), or it passed. Nothing was reserved.
pub const SQZ_ERR_DEADLINE: sqz_status = 12;

/// Why a C call failed: a library error, or one of the two failures only the C layer has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An error reported by the library.
    Core(Error),
    /// An output buffer cannot hold the result.
    BufferTooSmall(String),
    /// A panic was caught.
    Internal(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Core(e)
    }
}

impl Failure {
    /// The status code for this failure.
    pub fn status(&self) -> sqz_status {
        match self {
            Failure::Core(e) => match e {
                Error::CannotFreeThisMuchMemory { .. } => SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY,
                Error::DomainsRefusedToCooperate { .. } => SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE,
                Error::InvalidArgument(_) => SQZ_ERR_INVALID_ARGUMENT,
                Error::InvalidMemoryValue(_) => SQZ_ERR_INVALID_MEMORY_VALUE,
                Error::Backend(_) => SQZ_ERR_BACKEND,
                Error::Unsupported(_) => SQZ_ERR_UNSUPPORTED,
                Error::UnknownReservation(_) => SQZ_ERR_UNKNOWN_RESERVATION,
                Error::NoReservation(_) => SQZ_ERR_NO_RESERVATION,
                Error::Cancelled => SQZ_ERR_CANCELLED,
                Error::DeadlineCannotBeMet { .. } => SQZ_ERR_DEADLINE,
            },
            Failure::BufferTooSmall(_) => SQZ_ERR_BUFFER_TOO_SMALL,
            Failure::Internal(_) => SQZ_ERR_INTERNAL,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            Failure::Core(e) => e.to_string(),
            Failure::BufferTooSmall(m) => format!("buffer too small: {m}"),
            Failure::Internal(m) => format!("internal error (a bug in squeeze): {m}"),
        }
    }
}

/// Shorthand for an [`Error::InvalidArgument`] failure.
pub(crate) fn invalid(msg: impl Into<String>) -> Failure {
    Failure::Core(Error::InvalidArgument(msg.into()))
}

/// A static "" for getters that must never return NULL.
const EMPTY: &[u8] = b"\0";

/// The last failure recorded on this thread.
#[derive(Debug, Default)]
struct LastError {
    status: sqz_status,
    message: CString,
    cannot_free: Option<(i64, i64)>,
    domids: Vec<i32>,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError::default());
}

/// Forgets this thread's last error.
pub(crate) fn clear_last_error() {
    // try_with: a call made while this thread's locals are being destroyed (from another
    // library's thread-exit hook) must not panic outside the guard.
    let _ = LAST_ERROR.try_with(|l| *l.borrow_mut() = LastError::default());
}

/// Records `failure` as this thread's last error and returns its status.
pub(crate) fn set_last_error(failure: &Failure) -> sqz_status {
    let status = failure.status();
    // Messages are ours, but may quote text that came from a callback: never let a NUL cut one.
    let message = CString::new(failure.message().replace('\0', "\u{FFFD}"))
        .unwrap_or_else(|_| CString::default());
    let (cannot_free, domids) = match failure {
        Failure::Core(Error::CannotFreeThisMuchMemory {
            required_kib,
            free_kib,
        }) => (Some((*required_kib, *free_kib)), Vec::new()),
        Failure::Core(Error::DomainsRefusedToCooperate { domids }) => (None, domids.clone()),
        _ => (None, Vec::new()),
    };
    let _ = LAST_ERROR.try_with(|l| {
        *l.borrow_mut() = LastError {
            status,
            message,
            cannot_free,
            domids,
        }
    });
    status
}

/// This thread's last error message, if a failure was recorded since the last clear; used to
/// explain why a callback that called back into the library failed.
pub(crate) fn last_error_text() -> Option<String> {
    LAST_ERROR.with(|l| {
        let l = l.borrow();
        (l.status != SQZ_OK).then(|| l.message.to_string_lossy().into_owned())
    })
}

/// The message of the last error on the calling thread, or "" when the last fallible call
/// succeeded.
///
/// Ownership: the string belongs to the library and stays valid until the next `sqz_` call on
/// this thread (other than the `sqz_last_error_*` getters, which change nothing); copy it to
/// keep it. Never NULL. Threading: each thread has its own last error.
#[no_mangle]
pub extern "C" fn sqz_last_error_message() -> *const c_char {
    guard::value(EMPTY.as_ptr().cast(), || {
        LAST_ERROR.with(|l| l.borrow().message.as_ptr())
    })
}

/// The status of the last fallible call on the calling thread (`SQZ_OK` if it succeeded).
#[no_mangle]
pub extern "C" fn sqz_last_error_status() -> sqz_status {
    guard::value(SQZ_ERR_INTERNAL, || LAST_ERROR.with(|l| l.borrow().status))
}

/// The details of a `SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY` failure: how much free memory was
/// asked for and how much the host had when the squeezer gave up, in KiB.
///
/// Returns `SQZ_OK` and fills both out-parameters when the calling thread's last error has
/// status 3; otherwise returns `SQZ_ERR_INVALID_ARGUMENT` and writes nothing. Either pointer
/// may be NULL to skip that value. Does not clear or change the last error.
#[no_mangle]
pub unsafe extern "C" fn sqz_last_error_cannot_free(
    required_kib: *mut i64,
    free_kib: *mut i64,
) -> sqz_status {
    guard::value(SQZ_ERR_INTERNAL, || {
        let details = LAST_ERROR.with(|l| l.borrow().cannot_free);
        match details {
            Some((required, free)) => {
                // SAFETY: the caller passes NULL or a pointer to an int64_t it owns.
                unsafe {
                    if let Some(r) = required_kib.as_mut() {
                        *r = required;
                    }
                    if let Some(f) = free_kib.as_mut() {
                        *f = free;
                    }
                }
                SQZ_OK
            }
            None => SQZ_ERR_INVALID_ARGUMENT,
        }
    })
}

/// The domains named by the calling thread's last error (those that refused to cooperate, for
/// `SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE`), in the order squeezed reports them.
///
/// Returns how many there are and copies the first `min(count, cap)` of them to `out`; `out`
/// may be NULL when `cap` is 0, which asks only for the count. Returns 0 when the last error
/// names no domains. Does not clear or change the last error.
#[no_mangle]
pub unsafe extern "C" fn sqz_last_error_domids(out: *mut i32, cap: usize) -> usize {
    guard::value(0, || {
        LAST_ERROR.with(|l| {
            let l = l.borrow();
            let n = l.domids.len().min(cap);
            if n > 0 && !out.is_null() {
                // SAFETY: the caller promises `out` has room for `cap` entries, and n <= cap.
                unsafe { std::ptr::copy_nonoverlapping(l.domids.as_ptr(), out, n) };
            }
            l.domids.len()
        })
    })
}

/// The constant's name for a status code ("SQZ_OK", "SQZ_ERR_BACKEND", ...), or
/// "SQZ_ERR_UNKNOWN" for a value this version does not know. The string is static.
#[no_mangle]
pub extern "C" fn sqz_status_name(status: sqz_status) -> *const c_char {
    guard::value(c"SQZ_ERR_UNKNOWN".as_ptr(), || {
        let name: &'static std::ffi::CStr = match status {
            SQZ_OK => c"SQZ_OK",
            SQZ_ERR_INVALID_ARGUMENT => c"SQZ_ERR_INVALID_ARGUMENT",
            SQZ_ERR_INVALID_MEMORY_VALUE => c"SQZ_ERR_INVALID_MEMORY_VALUE",
            SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY => c"SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY",
            SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE => c"SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE",
            SQZ_ERR_UNKNOWN_RESERVATION => c"SQZ_ERR_UNKNOWN_RESERVATION",
            SQZ_ERR_NO_RESERVATION => c"SQZ_ERR_NO_RESERVATION",
            SQZ_ERR_BACKEND => c"SQZ_ERR_BACKEND",
            SQZ_ERR_UNSUPPORTED => c"SQZ_ERR_UNSUPPORTED",
            SQZ_ERR_BUFFER_TOO_SMALL => c"SQZ_ERR_BUFFER_TOO_SMALL",
            SQZ_ERR_INTERNAL => c"SQZ_ERR_INTERNAL",
            SQZ_ERR_CANCELLED => c"SQZ_ERR_CANCELLED",
            SQZ_ERR_DEADLINE => c"SQZ_ERR_DEADLINE",
            _ => c"SQZ_ERR_UNKNOWN",
        };
        name.as_ptr()
    })
}

use super::guard;

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn message() -> String {
        // SAFETY: the pointer is valid until the next sqz_ call on this thread.
        unsafe { CStr::from_ptr(sqz_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn cannot_free_details_survive_reading_and_other_errors_refuse_them() {
        let status = set_last_error(&Failure::Core(Error::CannotFreeThisMuchMemory {
            required_kib: 6 << 30,
            free_kib: 5 << 30,
        }));
        assert_eq!(status, SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY);
        let (mut r, mut f) = (0, 0);
        for _ in 0..2 {
            // SAFETY: both pointers are to locals.
            assert_eq!(
                unsafe { sqz_last_error_cannot_free(&mut r, &mut f) },
                SQZ_OK
            );
            assert_eq!(
                (r, f),
                (6 << 30, 5 << 30),
                "values above 2^32 KiB pass intact"
            );
        }
        assert!(message().contains("6442450944"));

        set_last_error(&invalid("bad"));
        // SAFETY: NULL pointers are allowed.
        let s = unsafe { sqz_last_error_cannot_free(std::ptr::null_mut(), std::ptr::null_mut()) };
        assert_eq!(s, SQZ_ERR_INVALID_ARGUMENT);
        clear_last_error();
        assert_eq!(message(), "");
    }

    #[test]
    fn domids_are_counted_and_copied_up_to_the_capacity() {
        set_last_error(&Failure::Core(Error::DomainsRefusedToCooperate {
            domids: vec![9, 4, 2],
        }));
        let mut out = [0i32; 2];
        // SAFETY: out has room for 2.
        assert_eq!(unsafe { sqz_last_error_domids(out.as_mut_ptr(), 2) }, 3);
        assert_eq!(out, [9, 4]);
        // SAFETY: cap 0 with NULL asks only for the count.
        assert_eq!(unsafe { sqz_last_error_domids(std::ptr::null_mut(), 0) }, 3);
    }

    #[test]
    fn a_nul_inside_a_message_does_not_lose_it() {
        set_last_error(&Failure::Core(Error::Backend("a\0b".into())));
        assert_eq!(message(), "backend failure: a\u{FFFD}b");
    }
}
