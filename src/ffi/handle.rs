//! Handles that refuse overlapping use instead of locking.
//!
//! A handle is marked busy while a call uses it. A second use while it is busy (a callback
//! re-entering the library with the same handle, or two threads sharing one) is refused with
//! `SQZ_ERR_INVALID_ARGUMENT`; nothing ever waits, so nothing can deadlock, and no lock is held
//! while a callback runs. Handles documented as shared between threads (the service, the fake
//! host) are only busy while their shared value is cloned, so they wait for each other instead
//! ([`Handle::with_shared`]). Freeing a busy handle (from inside one of its own callbacks) is
//! deferred until the call that is using it returns. A panic while a handle is in use (a bug)
//! poisons it: its contents may be half-updated, so later uses are refused with
//! `SQZ_ERR_INTERNAL` and only freeing it remains possible.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU8, Ordering};

use super::error::{invalid, Failure};

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const BUSY_FREE_PENDING: u8 = 2;
const POISONED: u8 = 3;

/// What a handle holds, with a tag that tells handle kinds apart: a squeezer passed where a
/// simulator is expected (or a handle already freed, while its memory is not yet reused) is
/// refused instead of misread.
pub trait Tagged {
    /// A value unique to this kind of handle, never 0.
    const TAG: u32;
}

/// The tag of a freed handle.
const DEAD: u32 = 0;

/// A heap value shared with C through a raw pointer.
#[repr(C)]
pub struct Handle<T> {
    tag: std::sync::atomic::AtomicU32,
    state: AtomicU8,
    value: UnsafeCell<T>,
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.tag.store(DEAD, Ordering::Release);
    }
}

/// Marks the handle idle again when a call ends, normally or by a panic, and performs a free
/// that was requested meanwhile.
struct Release<T> {
    ptr: *mut Handle<T>,
}

impl<T> Drop for Release<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Handle::into_raw` and is busy, so nobody freed it yet.
        let handle = unsafe { &*self.ptr };
        let after = if std::thread::panicking() {
            POISONED
        } else {
            IDLE
        };
        if handle
            .state
            .compare_exchange(BUSY, after, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: the free was deferred to us; no reference into the handle remains.
            drop(unsafe { Box::from_raw(self.ptr) });
        }
    }
}

impl<T: Tagged> Handle<T> {
    /// Moves `value` to the heap and returns the pointer handed to C.
    pub fn into_raw(value: T) -> *mut Handle<T> {
        Box::into_raw(Box::new(Handle {
            tag: std::sync::atomic::AtomicU32::new(T::TAG),
            state: AtomicU8::new(IDLE),
            value: UnsafeCell::new(value),
        }))
    }

    /// Runs `f` with exclusive access to the value behind `ptr`.
    ///
    /// # Safety
    /// `ptr` is NULL or came from [`Handle::into_raw`] and has not been freed.
    pub unsafe fn with<R>(
        ptr: *mut Handle<T>,
        what: &str,
        f: impl FnOnce(&mut T) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        // SAFETY: NULL is checked; otherwise the caller promises a live handle.
        let handle = unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))?;
        if handle.tag.load(Ordering::Acquire) != T::TAG {
            return Err(invalid(format!(
                "{what} is not a live {what} handle (freed, or another kind of handle)"
            )));
        }
        if let Err(state) =
            handle
                .state
                .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
        {
            if state == POISONED {
                return Err(Failure::Internal(format!(
                    "{what} was left inconsistent by an earlier internal error; free it"
                )));
            }
            return Err(invalid(format!(
                "{what} is already in use (called from one of its own callbacks, or from two \
                 threads at once)"
            )));
        }
        let _release = Release { ptr };
        // SAFETY: the BUSY flag gives this call the only access to the value until release.
        f(unsafe { &mut *handle.value.get() })
    }

    /// Runs `f` with access to the value behind `ptr` for a handle many threads may share (the
    /// service, the fake host, settings, a cancel handle). Another thread using the handle at
    /// the same moment is waited for, never refused: such a use is `f` itself, which must be
    /// short and must not call the caller's code (it copies, clones or sets a value), so the
    /// wait lasts that long and cannot deadlock.
    /// Re-entrant use from a callback therefore never meets a busy handle; the objects refuse it
    /// themselves where it would deadlock.
    ///
    /// # Safety
    /// `ptr` is NULL or came from [`Handle::into_raw`] and has not been freed.
    pub unsafe fn with_shared<R>(
        ptr: *mut Handle<T>,
        what: &str,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, Failure> {
        // SAFETY: NULL is checked; otherwise the caller promises a live handle.
        let handle = unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))?;
        let mut spins = 0u32;
        loop {
            if handle.tag.load(Ordering::Acquire) != T::TAG {
                return Err(invalid(format!(
                    "{what} is not a live {what} handle (freed, or another kind of handle)"
                )));
            }
            match handle
                .state
                .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(POISONED) => {
                    return Err(Failure::Internal(format!(
                        "{what} was left inconsistent by an earlier internal error; free it"
                    )))
                }
                Err(BUSY_FREE_PENDING) => {
                    return Err(invalid(format!("{what} is being freed")));
                }
                Err(_) => {
                    // Another thread is cloning: a few spins, then let it run.
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let _release = Release { ptr };
        // SAFETY: the BUSY flag gives this call the only access to the value until release.
        Ok(f(unsafe { &mut *handle.value.get() }))
    }

    /// Frees the handle now, or when the call using it returns.
    ///
    /// # Safety
    /// `ptr` is NULL or came from [`Handle::into_raw`] and has not been freed.
    pub unsafe fn free(ptr: *mut Handle<T>) {
        // SAFETY: NULL is checked; otherwise the caller promises a live handle.
        let Some(handle) = (unsafe { ptr.as_ref() }) else {
            return;
        };
        if handle.tag.load(Ordering::Acquire) != T::TAG {
            // Not ours to free (another kind of handle, or already freed).
            return;
        }
        // A poisoned handle is as free of users as an idle one: release it too.
        let unused = [IDLE, POISONED].into_iter().any(|from| {
            handle
                .state
                .compare_exchange(from, BUSY_FREE_PENDING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        match unused {
            // SAFETY: idle or poisoned, so no call holds a reference; we own it from here.
            true => drop(unsafe { Box::from_raw(ptr) }),
            false => {
                // Busy: the running call frees it on return. A second free while pending is
                // harmless.
                let _ = handle.state.compare_exchange(
                    BUSY,
                    BUSY_FREE_PENDING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tagged for i32 {
        const TAG: u32 = 0x7e57_0001;
    }
    impl Tagged for Vec<i32> {
        const TAG: u32 = 0x7e57_0002;
    }
    impl Tagged for Vec<u8> {
        const TAG: u32 = 0x7e57_0003;
    }
    impl Tagged for u8 {
        const TAG: u32 = 0x7e57_0004;
    }

    #[test]
    fn a_handle_of_another_kind_is_refused_and_not_freed() {
        let h = Handle::into_raw(5i32);
        let wrong = h.cast::<Handle<u8>>();
        // SAFETY: h is live; reading through the wrong type stops at the common header.
        unsafe {
            let r = Handle::with(wrong, "sim", |_| Ok(()));
            assert!(
                matches!(r, Err(Failure::Core(crate::Error::InvalidArgument(ref m))) if m.contains("another kind"))
            );
            Handle::free(wrong);
            assert_eq!(Handle::with(h, "squeezer", |v| Ok(*v)), Ok(5));
            Handle::free(h);
        }
    }

    #[test]
    fn a_busy_handle_refuses_a_second_use_instead_of_waiting() {
        let h = Handle::into_raw(5i32);
        // SAFETY: h is live until the free below.
        let r = unsafe {
            Handle::with(h, "thing", |v| {
                *v += 1;
                let inner = Handle::with(h, "thing", |_| Ok(()));
                assert!(
                    matches!(inner, Err(Failure::Core(crate::Error::InvalidArgument(ref m))) if m.contains("already in use"))
                );
                Ok(*v)
            })
        };
        assert_eq!(r, Ok(6));
        // SAFETY: h is live and idle again.
        let again = unsafe { Handle::with(h, "thing", |v| Ok(*v)) };
        assert_eq!(again, Ok(6));
        // SAFETY: h is live.
        unsafe { Handle::free(h) };
    }

    #[test]
    fn a_shared_handle_busy_on_another_thread_is_waited_for_not_refused() {
        use std::sync::mpsc;
        let h = Handle::into_raw(5i32);
        let addr = h as usize;
        let (entered_tx, entered_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            // SAFETY: h is live until the free below, after both threads are done.
            unsafe {
                Handle::with_shared(addr as *mut Handle<i32>, "thing", |v| {
                    entered_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    *v
                })
            }
        });
        entered_rx.recv().unwrap();
        let waiter = std::thread::spawn(move || {
            // SAFETY: as above.
            unsafe { Handle::with_shared(addr as *mut Handle<i32>, "thing", |v| *v + 1) }
        });
        go_tx.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), Ok(5));
        assert_eq!(waiter.join().unwrap(), Ok(6));
        // SAFETY: h is live and idle.
        unsafe { Handle::free(h) };
    }

    #[test]
    fn freeing_a_handle_from_inside_its_own_call_is_deferred() {
        let h = Handle::into_raw(vec![1, 2, 3]);
        // SAFETY: h is live; the free inside is deferred until `with` returns.
        let len = unsafe {
            Handle::with(h, "thing", |v| {
                Handle::free(h);
                Ok(v.len())
            })
        };
        assert_eq!(len, Ok(3));
    }

    impl Tagged for std::sync::Arc<u8> {
        const TAG: u32 = 0x7e57_0005;
    }

    #[test]
    fn freeing_a_poisoned_handle_releases_what_it_holds() {
        let shared = std::sync::Arc::new(7u8);
        let h = Handle::into_raw(shared.clone());
        assert_eq!(std::sync::Arc::strong_count(&shared), 2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: h is live.
            let _ =
                unsafe { Handle::with(h, "thing", |_| -> Result<(), Failure> { panic!("a bug") }) };
        }));
        assert!(caught.is_err());
        // SAFETY: h is live (poisoned).
        unsafe { Handle::free(h) };
        assert_eq!(
            std::sync::Arc::strong_count(&shared),
            1,
            "the poisoned handle's value was not dropped"
        );
    }

    #[test]
    fn a_panic_while_in_use_poisons_the_handle_until_it_is_freed() {
        let h = Handle::into_raw(vec![1u8]);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: h is live.
            let _ = unsafe {
                Handle::with(h, "thing", |v: &mut Vec<u8>| -> Result<(), Failure> {
                    v.push(2);
                    panic!("half-way through an update");
                })
            };
        }));
        assert!(caught.is_err());
        // SAFETY: h is live (poisoned, not freed).
        let later = unsafe { Handle::with(h, "thing", |v| Ok(v.len())) };
        assert!(matches!(later, Err(Failure::Internal(ref m)) if m.contains("inconsistent")));
        // SAFETY: h is live; freeing a poisoned handle releases it.
        unsafe { Handle::free(h) };
    }

    #[test]
    fn null_is_refused_and_freeing_null_does_nothing() {
        // SAFETY: NULL is allowed in both.
        unsafe {
            assert!(Handle::<u8>::with(std::ptr::null_mut(), "s", |_| Ok(())).is_err());
            Handle::<u8>::free(std::ptr::null_mut());
        }
    }
}
