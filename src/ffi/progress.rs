//! Reservations that report progress and can be cancelled: `sqz_reserve_memory_with`,
//! `sqz_reserve_memory_range_with`, `sqz_cancel_*`.

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;

use crate::progress::{CancelToken, Progress, ReserveOptions};

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::{Handle, Tagged};
use super::ops::{need_out, write_out};
use super::platform::InCallback;
use super::service::{service, sqz_service, str_arg, write_id};

/// A cancel handle: `sqz_cancel_request` on it, from any thread, stops every reservation that
/// was given it. Opaque; created by `sqz_cancel_new`, released by `sqz_cancel_free` (a
/// reservation using it keeps what it needs, so it may be freed while one runs). Once
/// requested it stays requested: use a fresh handle for the next reservation.
pub struct sqz_cancel {
    _opaque: [u8; 0],
}

struct CancelState {
    token: CancelToken,
}

impl Tagged for CancelState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZc");
}

fn cancel_handle(c: *mut sqz_cancel) -> *mut Handle<CancelState> {
    c.cast()
}

/// How far a reservation that waits for ballooning has got. Valid only during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_progress {
    /// How much host free memory has grown since the call started, in KiB.
    pub freed_kib: i64,
    /// How much it had to grow when the call started, in KiB (the amount asked for, the slush
    /// included, minus what was already free).
    pub needed_kib: i64,
    /// Seconds since the call started, on the platform's clock.
    pub elapsed_s: f64,
    /// Seconds still to wait at the speed seen so far; negative while unknown (nothing freed
    /// yet).
    pub eta_s: f64,
}

/// Receives a progress report before each wait for the balloon drivers, on the thread that
/// called the reservation, between two rounds (the host lock is not held, but the call is
/// still in progress: it must not call the service; such a call fails with
/// `SQZ_ERR_INVALID_ARGUMENT`). Returns 0 to go on; any other value stops the
/// reservation, which then fails with `SQZ_ERR_CANCELLED`.
pub type sqz_progress_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, progress: *const sqz_progress) -> i32>;

/// Extras of `sqz_reserve_memory_with` and `sqz_reserve_memory_range_with`. Zero-initialise
/// it and set `struct_size`: NULL members mean "none".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sqz_reserve_options {
    /// `sizeof(sqz_reserve_options)` as the caller knows it.
    pub struct_size: u32,
    /// Called before each wait for the balloon drivers, or NULL.
    pub progress: sqz_progress_fn,
    /// Passed to `progress`.
    pub ctx: *mut c_void,
    /// Stops the reservation when requested, or NULL.
    pub cancel: *mut sqz_cancel,
    /// A deadline in seconds from the start of the call; 0 for none. Under the adaptive
    /// policy the reservation fails with `SQZ_ERR_DEADLINE` as soon as the guests' measured
    /// balloon rates predict it cannot be met (the message says when the memory would be
    /// free); under the classic policy when it passes. Added after the first layout: read
    /// only when `struct_size` covers it.
    pub deadline_s: f64,
}

crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_reserve_options` (everything before `deadline_s`):
    /// callers built against it pass this size and get no deadline; smaller sizes are refused.
    RESERVE_OPTIONS_SIZE_V1 = sqz_reserve_options [32] {
        struct_size @ 0, progress @ 8, ctx @ 16, cancel @ 24,
    }
);

/// Creates a cancel handle and stores it in `*out`. Errors: `out` NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_cancel_new(out: *mut *mut sqz_cancel) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        let h = Handle::into_raw(CancelState {
            token: CancelToken::new(),
        });
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", h.cast::<sqz_cancel>()) }
    })
}

/// The token behind `c`.
///
/// # Safety
/// `c` is NULL or a live cancel handle.
unsafe fn token(c: *mut sqz_cancel) -> Result<CancelToken, Failure> {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { Handle::with_shared(cancel_handle(c), "cancel", |st| st.token.clone()) }
}

/// Asks every reservation given `c` to stop: a waiting one returns `SQZ_ERR_CANCELLED` within
/// about a tenth of a second (or one step of simulated time), having reserved nothing. Safe to
/// call from any thread, any number of times, and from a progress callback. Errors: `c` NULL
/// or not a cancel handle → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_cancel_request(c: *mut sqz_cancel) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { token(c) }?.cancel();
        Ok(())
    })
}

/// Releases a cancel handle. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sqz_cancel_free(c: *mut sqz_cancel) {
    // SAFETY: the caller passes NULL or a handle it gives up; another kind is left alone.
    guard::value((), || unsafe { Handle::free(cancel_handle(c)) })
}

/// The fields of the first published layout of `sqz_reserve_options`.
struct V1 {
    progress: sqz_progress_fn,
    ctx: *mut c_void,
    cancel: *mut sqz_cancel,
}

/// Runs `f` with the Rust options `opts` describes (NULL: none).
///
/// # Safety
/// `opts` is NULL or points to options of the size its `struct_size` claims, whose `cancel` is
/// NULL or live and whose `progress` and `ctx` may be called on this thread.
unsafe fn with_options<T>(
    opts: *const sqz_reserve_options,
    f: impl FnOnce(ReserveOptions<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    if opts.is_null() {
        return f(ReserveOptions::default());
    }
    if !(opts as usize).is_multiple_of(std::mem::align_of::<sqz_reserve_options>()) {
        return Err(invalid("options is not aligned for sqz_reserve_options"));
    }
    // Fields are read one by one: a caller built against the first layout has a shorter
    // struct, so no reference to the whole of it may be made.
    // SAFETY: not NULL and aligned; struct_size is the first field of every layout.
    let struct_size = unsafe { std::ptr::addr_of!((*opts).struct_size).read() } as usize;
    if struct_size < RESERVE_OPTIONS_SIZE_V1 {
        return Err(invalid(format!(
            "options->struct_size {struct_size} is smaller than the first published \
             sizeof(sqz_reserve_options) = {RESERVE_OPTIONS_SIZE_V1}"
        )));
    }
    // SAFETY: the first layout is there (checked above).
    let o = unsafe {
        V1 {
            progress: std::ptr::addr_of!((*opts).progress).read(),
            ctx: std::ptr::addr_of!((*opts).ctx).read(),
            cancel: std::ptr::addr_of!((*opts).cancel).read(),
        }
    };
    let mut options = ReserveOptions::default();
    if struct_size >= std::mem::offset_of!(sqz_reserve_options, deadline_s) + 8 {
        // SAFETY: the caller's struct_size says the field is there.
        let d = unsafe { std::ptr::addr_of!((*opts).deadline_s).read() };
        if d != 0.0 {
            if !(d.is_finite() && d > 0.0) {
                return Err(invalid(format!(
                    "options->deadline_s must be 0 (none) or a positive number of seconds, \
                     not {d}"
                )));
            }
            options.deadline_s = Some(d);
        }
    }
    if !o.cancel.is_null() {
        // SAFETY: not NULL; the caller promises a live handle.
        options.cancel = Some(unsafe { token(o.cancel) }?);
    }
    if let Some(cb) = o.progress {
        let ctx = o.ctx;
        options.progress = Some(Box::new(move |p: &Progress| {
            let report = sqz_progress {
                freed_kib: p.freed_kib,
                needed_kib: p.needed_kib,
                elapsed_s: p.elapsed_s,
                eta_s: p.eta_s.unwrap_or(-1.0),
            };
            // The host lock is held: a call back into the service must fail, not deadlock.
            let _inside = InCallback::enter();
            // SAFETY: the caller registered `cb` with `ctx` for this call; `report` outlives it.
            match unsafe { cb(ctx, &report) } {
                0 => ControlFlow::Continue(()),
                _ => ControlFlow::Break(()),
            }
        }));
    }
    f(options)
}

/// `sqz_reserve_memory` with a progress callback and a cancel handle (`options` NULL: neither).
/// Errors as `sqz_reserve_memory`, plus: `options->struct_size` too small or `options->cancel`
/// not a cancel handle → `SQZ_ERR_INVALID_ARGUMENT`; cancelled, or the callback returned
/// non-zero → `SQZ_ERR_CANCELLED`. Nothing is reserved on failure.
#[no_mangle]
pub unsafe extern "C" fn sqz_reserve_memory_with(
    s: *mut sqz_service,
    session: *const c_char,
    kib: i64,
    options: *const sqz_reserve_options,
    reservation_id_out: *mut c_char,
) -> sqz_status {
    guard::status(|| {
        need_out(reservation_id_out, "reservation_id_out")?;
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session) = unsafe { (service(s)?, str_arg(session, "session")?) };
        // SAFETY: forwarded from the caller.
        let id =
            unsafe { with_options(options, |o| Ok(svc.reserve_memory_with(session, kib, o)?)) }?;
        // SAFETY: the caller's buffer holds SQZ_RESERVATION_ID_SIZE bytes.
        unsafe { write_id(reservation_id_out, &id) }
    })
}

/// `sqz_reserve_memory_range` with a progress callback and a cancel handle (`options` NULL:
/// neither); progress is measured toward the policy's size for the new domain. Errors as
/// `sqz_reserve_memory_range` and `sqz_reserve_memory_with`.
#[no_mangle]
pub unsafe extern "C" fn sqz_reserve_memory_range_with(
    s: *mut sqz_service,
    session: *const c_char,
    min_kib: i64,
    max_kib: i64,
    options: *const sqz_reserve_options,
    reservation_id_out: *mut c_char,
    reserved_kib_out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(reservation_id_out, "reservation_id_out")?;
        need_out(reserved_kib_out, "reserved_kib_out")?;
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session) = unsafe { (service(s)?, str_arg(session, "session")?) };
        // SAFETY: forwarded from the caller.
        let (id, amount) = unsafe {
            with_options(options, |o| {
                Ok(svc.reserve_memory_range_with(session, min_kib, max_kib, o)?)
            })
        }?;
        // SAFETY: both out-pointers are not NULL and sized by the caller's contract.
        unsafe {
            write_id(reservation_id_out, &id)?;
            write_out(reserved_kib_out, "reserved_kib_out", amount)
        }
    })
}
