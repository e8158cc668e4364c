//! The driver functions over a caller's `sqz_io`, fresh per call or on a persistent squeezer.

use std::ffi::c_void;

use crate::adaptive::tracker::Concern;
use crate::Balancer;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::Handle;
use super::io::{sqz_io, sqz_success_fn, success_closure, CallbackIo};
use super::options::{options_or_default, settings_or_default, sqz_options};

/// A squeezer that keeps what it learns between calls (which balloon drivers are stuck; with
/// the adaptive policy also their speeds, limits and cooperation scores).
/// Opaque; created by `sqz_squeezer_new`, released by `sqz_squeezer_free`. One call at a time:
/// a second call on the same squeezer while one runs (from one of its callbacks, or from another
/// thread) is refused with `SQZ_ERR_INVALID_ARGUMENT`.
pub struct sqz_squeezer {
    _opaque: [u8; 0],
}

/// What a `sqz_squeezer` holds.
pub(crate) struct SqueezerState {
    pub(crate) balancer: Balancer,
    /// The `now` of the last `sqz_squeezer_step`, which may never go backwards.
    pub(crate) last_step_now: Option<f64>,
    /// The adaptive operation single steps are driving, if one is under way.
    pub(crate) adaptive_op: Option<crate::adaptive::Operation>,
}

impl super::handle::Tagged for SqueezerState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZs");
}

pub(crate) fn squeezer_handle(s: *mut sqz_squeezer) -> *mut Handle<SqueezerState> {
    s.cast()
}

/// Writes `value` to a required out-pointer.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, name: &str, value: T) -> Result<(), Failure> {
    // SAFETY: the caller promises NULL or a writable T.
    match unsafe { out.as_mut() } {
        Some(o) => {
            *o = value;
            Ok(())
        }
        None => Err(invalid(format!("{name} is NULL"))),
    }
}

/// Checks a required out-pointer before any work is done, so a NULL costs nothing.
pub(crate) fn need_out<T>(out: *mut T, name: &str) -> Result<(), Failure> {
    if out.is_null() {
        Err(invalid(format!("{name} is NULL")))
    } else {
        Ok(())
    }
}

/// Balloons domains until `ok(ok_ctx, host_free_mem_kib)` returns true, aiming for
/// `required_kib` KiB of host free memory (squeezed's `change_host_free_memory`), on a fresh
/// squeezer. `ok` NULL means "at least `required_kib` KiB free". `opts` NULL means defaults.
///
/// Errors: `io` NULL, a NULL callback in it or a `struct_size` too small →
/// `SQZ_ERR_INVALID_ARGUMENT`; `required_kib` negative or above 2^50 →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`; dynamic-mins too high → `SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY`
/// (see `sqz_last_error_cannot_free`); stuck balloon drivers →
/// `SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE` (see `sqz_last_error_domids`); a callback failure →
/// `SQZ_ERR_BACKEND`. Callbacks run on the calling thread during the call only.
#[no_mangle]
pub unsafe extern "C" fn sqz_change_host_free_memory(
    io: *const sqz_io,
    opts: *const sqz_options,
    required_kib: i64,
    ok: sqz_success_fn,
    ok_ctx: *mut c_void,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a valid sqz_io / options object.
        let (mut io, settings) = unsafe { (CallbackIo::from_ptr(io)?, settings_or_default(opts)?) };
        let mut success = success_closure(ok, ok_ctx, required_kib);
        settings
            .balancer()?
            .change_host_free_memory(&mut io, required_kib, &mut success)?;
        Ok(())
    })
}

/// Frees memory for a new domain whose size may lie in `min_kib..=max_kib` and stores in
/// `*reserved_kib_out` how much it may have (squeezed's `free_memory_range`), on a fresh
/// squeezer. `opts` NULL means defaults.
///
/// Errors: `io` or `reserved_kib_out` NULL → `SQZ_ERR_INVALID_ARGUMENT`; a negative or absurd
/// size, or `min_kib > max_kib` → `SQZ_ERR_INVALID_MEMORY_VALUE`; otherwise as
/// `sqz_change_host_free_memory`. `*reserved_kib_out` is written only on success.
#[no_mangle]
pub unsafe extern "C" fn sqz_free_memory_range(
    io: *const sqz_io,
    opts: *const sqz_options,
    min_kib: i64,
    max_kib: i64,
    reserved_kib_out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(reserved_kib_out, "reserved_kib_out")?;
        // SAFETY: the caller passes NULL or a valid sqz_io / options object.
        let (mut io, settings) = unsafe { (CallbackIo::from_ptr(io)?, settings_or_default(opts)?) };
        let got = settings
            .balancer()?
            .free_memory_range(&mut io, min_kib, max_kib)?;
        // SAFETY: checked non-NULL above; the caller owns the int64_t.
        unsafe { write_out(reserved_kib_out, "reserved_kib_out", got) }
    })
}

/// Hands free memory back to the domains until only the slush is free (squeezed's
/// `balance_memory`), on a fresh squeezer. Ends with `SQZ_OK` when memory cannot be balanced
/// further; reports only invalid arguments (`SQZ_ERR_INVALID_ARGUMENT`,
/// `SQZ_ERR_INVALID_MEMORY_VALUE`) and callback failures (`SQZ_ERR_BACKEND`).
#[no_mangle]
pub unsafe extern "C" fn sqz_balance_memory(
    io: *const sqz_io,
    opts: *const sqz_options,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a valid sqz_io / options object.
        let (mut io, settings) = unsafe { (CallbackIo::from_ptr(io)?, settings_or_default(opts)?) };
        settings.balancer()?.balance_memory(&mut io)?;
        Ok(())
    })
}

/// Stores in `*out` whether a balancing pass would change any domain's target now. Calls
/// `make_host` and `now` once; sets nothing. Errors: `io` or `out` NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`; callback failures → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_is_host_memory_unbalanced(
    io: *const sqz_io,
    opts: *const sqz_options,
    out: *mut bool,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a valid sqz_io / options object.
        let (mut io, options) = unsafe { (CallbackIo::from_ptr(io)?, options_or_default(opts)?) };
        let unbalanced = crate::driver::is_host_memory_unbalanced(&mut io, &options)?;
        // SAFETY: checked non-NULL above; the caller owns the bool.
        unsafe { write_out(out, "out", unbalanced) }
    })
}

/// Creates a squeezer with `opts` (copied; NULL means defaults) and stores it in `*out`. The
/// caller owns it and releases it with `sqz_squeezer_free`. Errors: `out` NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_new(
    opts: *const sqz_options,
    out: *mut *mut sqz_squeezer,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live options object.
        let balancer = unsafe { settings_or_default(opts)? }.balancer()?;
        let h = Handle::into_raw(SqueezerState {
            balancer,
            last_step_now: None,
            adaptive_op: None,
        });
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", h.cast::<sqz_squeezer>()) }
    })
}

/// Releases a squeezer. NULL is a no-op. Called from inside one of the squeezer's own callbacks,
/// the release happens when the running call returns.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_free(s: *mut sqz_squeezer) {
    // SAFETY: the caller passes NULL or a squeezer it owns and gives up.
    guard::value((), || unsafe { Handle::free(squeezer_handle(s)) })
}

/// `sqz_change_host_free_memory` on a persistent squeezer, which remembers stuck domains.
/// Errors as `sqz_change_host_free_memory`, plus `s` NULL or busy → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_change_host_free_memory(
    s: *mut sqz_squeezer,
    io: *const sqz_io,
    required_kib: i64,
    ok: sqz_success_fn,
    ok_ctx: *mut c_void,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a valid sqz_io.
        let mut io = unsafe { CallbackIo::from_ptr(io)? };
        let mut success = success_closure(ok, ok_ctx, required_kib);
        // SAFETY: the caller passes NULL or a live squeezer.
        unsafe {
            Handle::with(squeezer_handle(s), "squeezer", |st| {
                st.balancer
                    .change_host_free_memory(&mut io, required_kib, &mut success)
                    .map_err(Failure::from)
            })
        }
    })
}

/// `sqz_free_memory_range` on a persistent squeezer. Errors as `sqz_free_memory_range`, plus
/// `s` NULL or busy → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_free_memory_range(
    s: *mut sqz_squeezer,
    io: *const sqz_io,
    min_kib: i64,
    max_kib: i64,
    reserved_kib_out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(reserved_kib_out, "reserved_kib_out")?;
        // SAFETY: the caller passes NULL or a valid sqz_io.
        let mut io = unsafe { CallbackIo::from_ptr(io)? };
        // SAFETY: the caller passes NULL or a live squeezer.
        let got = unsafe {
            Handle::with(squeezer_handle(s), "squeezer", |st| {
                st.balancer
                    .free_memory_range(&mut io, min_kib, max_kib)
                    .map_err(Failure::from)
            })
        }?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(reserved_kib_out, "reserved_kib_out", got) }
    })
}

/// `sqz_balance_memory` on a persistent squeezer. Errors as `sqz_balance_memory`, plus `s` NULL
/// or busy → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_balance_memory(
    s: *mut sqz_squeezer,
    io: *const sqz_io,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a valid sqz_io.
        let mut io = unsafe { CallbackIo::from_ptr(io)? };
        // SAFETY: the caller passes NULL or a live squeezer.
        unsafe {
            Handle::with(squeezer_handle(s), "squeezer", |st| {
                st.balancer.balance_memory(&mut io).map_err(Failure::from)
            })
        }
    })
}

/// How a domain's balloon driver has been cooperating, as a squeezer has seen it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct sqz_cooperation {
    /// Seconds of asked-for work the driver did not do, leaking away over time (adaptive); the
    /// classic policy reports its stuck threshold for a stuck domain and 0 otherwise.
    pub score_s: f64,
    /// Whether the domain is flagged uncooperative.
    pub uncooperative: bool,
    /// What most recently counted against it: one of the `SQZ_CONCERN_*` values.
    pub concern: i32,
}

impl From<crate::adaptive::Cooperation> for sqz_cooperation {
    fn from(c: crate::adaptive::Cooperation) -> Self {
        let concern = match c.concern {
            None => SQZ_CONCERN_NONE,
            Some(Concern::TooSlow) => SQZ_CONCERN_TOO_SLOW,
            Some(Concern::NotMoving) => SQZ_CONCERN_NOT_MOVING,
            Some(Concern::StalledAndResumed) => SQZ_CONCERN_STALLED_AND_RESUMED,
        };
        sqz_cooperation {
            score_s: c.score_s,
            uncooperative: c.uncooperative,
            concern,
        }
    }
}

/// `sqz_cooperation.concern`: nothing.
pub const SQZ_CONCERN_NONE: i32 = 0;
/// `sqz_cooperation.concern`: the driver moves, but slower than the minimum acceptable rate.
pub const SQZ_CONCERN_TOO_SLOW: i32 = 1;
/// `sqz_cooperation.concern`: the driver does not move at all while it has work to do.
pub const SQZ_CONCERN_NOT_MOVING: i32 = 2;
/// `sqz_cooperation.concern`: the driver stopped as if at a limit, then moved past it.
pub const SQZ_CONCERN_STALLED_AND_RESUMED: i32 = 3;

/// Stores in `*out` how `domid`'s balloon driver has been cooperating, as squeezer `s` has seen
/// it. Errors: `s` or `out` NULL, `s` busy, or a domain the squeezer has not seen (or has
/// forgotten because it disappeared) → `SQZ_ERR_INVALID_ARGUMENT`, `*out` unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_cooperation(
    s: *mut sqz_squeezer,
    domid: i32,
    out: *mut sqz_cooperation,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live squeezer.
        let c = unsafe {
            Handle::with(squeezer_handle(s), "squeezer", |st| {
                st.balancer
                    .cooperation(domid)
                    .ok_or_else(|| invalid(format!("the squeezer has not seen domain {domid}")))
            })
        }?;
        let value = sqz_cooperation::from(c);
        // SAFETY: checked non-NULL above; the caller owns the struct.
        unsafe { write_out(out, "out", value) }
    })
}
