//! `sqz_service_config`: the settings a memory service is opened with.

use std::ffi::c_char;
use std::path::PathBuf;

use crate::domain_zero::{DomainZeroAnswer, DomainZeroPolicy};
use crate::model::kib;
use crate::service::ServiceConfig;
use crate::Error;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::{Handle, Tagged};
use super::ops::{need_out, write_out};
use super::options::sqz_options;
use super::service::str_arg;

// ---------------------------------------------------------------------------------------------
// Service settings

/// Settings of a service (slush, lock file, where the boot-time free memory is recorded, the
/// squeezer's options). Opaque; created by `sqz_service_config_new`, released by
/// `sqz_service_config_free`. Wherever a `const sqz_service_config *` is taken, NULL means the
/// defaults; it is copied, so it may be changed or freed as soon as the call returns. Threads
/// using one settings object at once wait for each other. Anything else passed as a
/// `sqz_service_config *` (another kind of handle, a freed one) is refused with
/// `SQZ_ERR_INVALID_ARGUMENT`.
pub struct sqz_service_config {
    _opaque: [u8; 0],
}

struct ConfigState {
    config: ServiceConfig,
}

impl Tagged for ConfigState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZC");
}

fn handle(c: *const sqz_service_config) -> *mut Handle<ConfigState> {
    c.cast_mut().cast()
}

/// The settings behind `c`, copied (NULL: the defaults).
///
/// # Safety
/// `c` is NULL or a live config.
pub(crate) unsafe fn config_or_default(
    c: *const sqz_service_config,
) -> Result<ServiceConfig, Failure> {
    if c.is_null() {
        return Ok(ServiceConfig::default());
    }
    // SAFETY: the caller promises NULL or a live config.
    unsafe { Handle::with_shared(handle(c), "config", |st| st.config.clone()) }
}

/// Runs `f` on the settings behind `c`.
///
/// # Safety
/// `c` is NULL or a live config.
unsafe fn update(
    c: *mut sqz_service_config,
    f: impl FnOnce(&mut ServiceConfig) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if c.is_null() {
        return Err(invalid("config is NULL"));
    }
    // SAFETY: the caller promises NULL or a live config.
    unsafe { Handle::with_shared(handle(c), "config", |st| f(&mut st.config)) }?
}

/// A non-empty UTF-8 path argument, copied.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
unsafe fn path_arg(path: *const c_char) -> Result<PathBuf, Failure> {
    // SAFETY: the caller's promise, passed on.
    let path = unsafe { str_arg(path, "path") }?;
    if path.is_empty() {
        return Err(invalid("path is empty"));
    }
    Ok(PathBuf::from(path))
}

/// A duration setting: above 0 and at most a day.
fn seconds_arg(seconds: f64, what: &str) -> Result<f64, Failure> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(invalid(format!(
            "{what} must be above 0 and at most 86400 s, not {seconds}"
        )));
    }
    Ok(seconds)
}

/// Creates a settings object with the defaults (slush 72 MiB, lock file
/// `/run/squeeze/host.lock`, boot-time record `/run/squeeze/boot_time_memory`, the adaptive
/// policy; `sqz_service_config_set_policy` picks the classic one) and stores it in
/// `*out`. Errors: `out` NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_new(out: *mut *mut sqz_service_config) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        let c = Handle::into_raw(ConfigState {
            config: ServiceConfig::default(),
        });
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", c.cast::<sqz_service_config>()) }
    })
}

/// Releases a settings object. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_free(c: *mut sqz_service_config) {
    // SAFETY: the caller passes NULL or a config it gives up; another kind of handle is left
    // alone.
    guard::value((), || unsafe { Handle::free(handle(c)) })
}

/// Sets the memory kept free for Xen when the host is balanced, in KiB (squeezed's
/// host-reserved memory). Errors: `c` NULL → `SQZ_ERR_INVALID_ARGUMENT`; negative or above
/// 2^50 → `SQZ_ERR_INVALID_MEMORY_VALUE`, unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_slush(
    c: *mut sqz_service_config,
    slush_kib: i64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live config.
        unsafe {
            update(c, |c| {
                kib::check_size("slush", slush_kib)?;
                c.host.slush_kib = slush_kib;
                Ok(())
            })
        }
    })
}

/// Sets the host-wide lock file every process using the host takes (`path` is copied). Every
/// process sharing a host must use the same path. Errors: a NULL pointer, `path` empty or not
/// UTF-8 → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_lock_path(
    c: *mut sqz_service_config,
    path: *const c_char,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers and live objects.
        unsafe {
            update(c, |c| {
                c.lock_path = path_arg(path)?;
                Ok(())
            })
        }
    })
}

/// Sets the file recording host free memory at boot (`path` is copied). Errors: a NULL
/// pointer, `path` empty or not UTF-8 → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_boot_time_record_path(
    c: *mut sqz_service_config,
    path: *const c_char,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers and live objects.
        unsafe {
            update(c, |c| {
                c.boot_time_record_path = path_arg(path)?;
                Ok(())
            })
        }
    })
}

/// Sets the seconds (real time) a call waits for the host lock before it fails with
/// `SQZ_ERR_BACKEND` naming the lock file (default 60): a process that hangs holding the lock
/// then blocks the others for at most this long. The lock is held for one round at a time
/// (milliseconds), never while balloon drivers work. Errors: `c` NULL, or `seconds` not
/// above 0, above 86400, NaN or infinite → `SQZ_ERR_INVALID_ARGUMENT`, unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_lock_timeout(
    c: *mut sqz_service_config,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live config.
        unsafe {
            update(c, |c| {
                c.lock_timeout_s = seconds_arg(seconds, "the lock timeout")?;
                Ok(())
            })
        }
    })
}

/// Sets the longest a reservation waits, in all, for memory that dying domains are giving
/// back before guests are ballooned for it (default 60; 0 never waits, as squeezed). The wait
/// ends sooner when the dying domains give less than 4 MiB back in 5 s. Errors: `c` NULL, or
/// `seconds` negative, above 86400, NaN or infinite → `SQZ_ERR_INVALID_ARGUMENT`, unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_dying_wait(
    c: *mut sqz_service_config,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live config.
        unsafe {
            update(c, |c| {
                if !(seconds.is_finite() && (0.0..=86_400.0).contains(&seconds)) {
                    return Err(invalid(format!(
                        "the wait for dying domains must be 0 to 86400 s, not {seconds}"
                    )));
                }
                c.dying_wait_s = seconds;
                Ok(())
            })
        }
    })
}

/// Sets the seconds between two checks of the background balancer (default 10). Errors: `c`
/// NULL, or `seconds` not above 0, above 86400, NaN or infinite → `SQZ_ERR_INVALID_ARGUMENT`,
/// unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_balance_interval(
    c: *mut sqz_service_config,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live config.
        unsafe {
            update(c, |c| {
                c.balance_interval_s = seconds_arg(seconds, "the balance interval")?;
                Ok(())
            })
        }
    })
}

/// Sets the squeezer's options (copied; NULL restores the defaults). Errors: `c` NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_options(
    c: *mut sqz_service_config,
    opts: *const sqz_options,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers and live objects.
        unsafe {
            update(c, |c| {
                let o = super::options::options_or_default(opts)?;
                c.options = o;
                Ok(())
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The policy of a service

/// Sets which algorithm the service decides with: `SQZ_POLICY_ADAPTIVE` (the default: one
/// adaptive squeezer for the service's life, learning balloon rates and limits; its
/// non-cooperation score sets `memory/uncooperative`) or `SQZ_POLICY_CLASSIC` (squeezed's, a
/// fresh squeezer per call). Errors: `c` NULL → `SQZ_ERR_INVALID_ARGUMENT`; a value this
/// library does not know → `SQZ_ERR_UNSUPPORTED`, unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_policy(
    c: *mut sqz_service_config,
    policy: i32,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live config.
        unsafe {
            update(c, |c| {
                c.policy = match policy {
                    super::options::SQZ_POLICY_CLASSIC => crate::Policy::Classic,
                    super::options::SQZ_POLICY_ADAPTIVE => crate::Policy::Adaptive,
                    other => {
                        return Err(Error::Unsupported(format!("unknown policy {other}")).into())
                    }
                };
                Ok(())
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Domain 0

/// `sqz_service_config_set_domain_zero`: domain 0 is never ballooned (the default).
pub const SQZ_DOMAIN_ZERO_FIXED: i32 = 0;
/// `sqz_service_config_set_domain_zero`: domain 0 is ballooned between two sizes.
pub const SQZ_DOMAIN_ZERO_BALLOON: i32 = 1;

/// Sets how domain 0's memory is managed: `SQZ_DOMAIN_ZERO_FIXED` (the default, as squeezed's:
/// left out of the balancing, the sizes are ignored) or `SQZ_DOMAIN_ZERO_BALLOON` (balanced
/// like a guest between `dynamic_min_kib` and `dynamic_max_kib`, written to the store when the
/// service opens; `dynamic_max_kib` 0 means what domain 0 holds when the first service of this
/// boot opens, squeezed's `auto`). Errors: `c` NULL → `SQZ_ERR_INVALID_ARGUMENT`; a size
/// negative or above 2^50, or the minimum above the maximum → `SQZ_ERR_INVALID_MEMORY_VALUE`;
/// an unknown `policy` → `SQZ_ERR_UNSUPPORTED`; unchanged on error.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_domain_zero(
    c: *mut sqz_service_config,
    policy: i32,
    dynamic_min_kib: i64,
    dynamic_max_kib: i64,
) -> sqz_status {
    guard::status(|| {
        let p = match policy {
            SQZ_DOMAIN_ZERO_FIXED => DomainZeroPolicy::Fixed,
            SQZ_DOMAIN_ZERO_BALLOON => DomainZeroPolicy::Balloon {
                dynamic_min_kib,
                dynamic_max_kib: (dynamic_max_kib != 0).then_some(dynamic_max_kib),
            },
            other => {
                return Err(Error::Unsupported(format!("unknown domain 0 policy {other}")).into())
            }
        };
        // SAFETY: the caller passes NULL or a live config.
        unsafe {
            update(c, |c| {
                p.validate()?;
                c.domain_zero = p;
                Ok(())
            })
        }
    })
}

/// Stores how domain 0's memory is managed, as xapi asks at start-up (`get_domain_zero_policy`;
/// KiB, squeezed answers bytes): `SQZ_DOMAIN_ZERO_FIXED` with what domain 0 holds in both
/// sizes, or `SQZ_DOMAIN_ZERO_BALLOON` with its range. Errors: a NULL pointer →
/// `SQZ_ERR_INVALID_ARGUMENT`; the hypervisor or store cannot be read → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_get_domain_zero_policy(
    s: *mut super::service::sqz_service,
    policy_out: *mut i32,
    dynamic_min_kib_out: *mut i64,
    dynamic_max_kib_out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(policy_out, "policy_out")?;
        need_out(dynamic_min_kib_out, "dynamic_min_kib_out")?;
        need_out(dynamic_max_kib_out, "dynamic_max_kib_out")?;
        // SAFETY: the caller passes NULL or a live service.
        let answer = unsafe { super::service::service(s) }?.get_domain_zero_policy()?;
        let (p, min, max) = match answer {
            DomainZeroAnswer::FixedSize(k) => (SQZ_DOMAIN_ZERO_FIXED, k, k),
            DomainZeroAnswer::AutoBalloon(min, max) => (SQZ_DOMAIN_ZERO_BALLOON, min, max),
        };
        // SAFETY: all three checked non-NULL above.
        unsafe {
            write_out(policy_out, "policy_out", p)?;
            write_out(dynamic_min_kib_out, "dynamic_min_kib_out", min)?;
            write_out(dynamic_max_kib_out, "dynamic_max_kib_out", max)
        }
    })
}
