//! Panic guards: every exported function runs its body through one of these, so no panic ever
//! unwinds into C (which would abort the caller's process, or worse).
//!
//! A test (`tests/ffi_surface.rs`) parses `src/ffi` and fails when an `extern "C"` function's
//! body is anything other than a single call to `status` or `value`.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{clear_last_error, set_last_error, sqz_status, Failure, SQZ_OK};

/// Runs a fallible call: clears this thread's last error, runs `f`, and turns its error or a
/// panic into a status code with the last error recorded.
pub(crate) fn status(f: impl FnOnce() -> Result<(), Failure>) -> sqz_status {
    clear_last_error();
    // A handle in use when a panic unwinds is poisoned (see `handle`), so half-updated state
    // is never observed afterwards; asserting unwind safety is therefore sound.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            // Callbacks may have called into the library and failed; that is not this call's
            // error.
            clear_last_error();
            SQZ_OK
        }
        Ok(Err(failure)) => set_last_error(&failure),
        Err(panic) => set_last_error(&Failure::Internal(panic_message(&*panic))),
    }
}

/// Runs an infallible call (a getter, a free function) without touching the last error; a
/// panic yields `fallback`.
pub(crate) fn value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{last_error_text, SQZ_ERR_INTERNAL};

    #[test]
    fn a_panic_becomes_an_internal_error_carrying_its_message() {
        let s = status(|| panic!("index 7 out of range"));
        assert_eq!(s, SQZ_ERR_INTERNAL);
        let text = last_error_text().unwrap();
        assert!(text.contains("index 7 out of range"), "{text}");
        // The next successful call clears the record.
        assert_eq!(status(|| Ok(())), SQZ_OK);
        assert_eq!(last_error_text(), None);
    }

    #[test]
    fn a_panicking_getter_returns_its_fallback() {
        assert_eq!(value(42, || -> i32 { panic!("boom") }), 42);
    }
}
