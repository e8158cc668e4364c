//! `sqz_service_config`: the settings a memory service is opened with.

use std::ffi::c_char;
use std::path::PathBuf;

use crate::model::kib;
use crate::service::ServiceConfig;
use crate::Error;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::ops::{need_out, write_out};
use super::options::sqz_options;
use super::service::str_arg;

// ---------------------------------------------------------------------------------------------
// Service settings

/// Settings of a service (slush, lock file, where the boot-time free memory is recorded, the
/// squeezer's options). Opaque; created by `sqz_service_config_new`, released by
/// `sqz_service_config_free`. Wherever a `const sqz_service_config *` is taken, NULL means the
/// defaults; it is copied, so it may be changed or freed as soon as the call returns.
pub struct sqz_service_config {
    pub(crate) config: ServiceConfig,
}

/// # Safety
/// `c` is NULL or a live config.
unsafe fn config_mut<'a>(c: *mut sqz_service_config) -> Result<&'a mut ServiceConfig, Failure> {
    // SAFETY: the caller promises NULL or a live config.
    unsafe { c.as_mut() }
        .map(|c| &mut c.config)
        .ok_or_else(|| invalid("config is NULL"))
}

/// Creates a settings object with the defaults (slush 72 MiB, lock file
/// `/run/squeeze/host.lock`, boot-time record `/run/squeeze/boot_time_memory`, the adaptive
/// policy; `sqz_service_config_set_policy` picks the classic one) and stores it in
/// `*out`. Errors: `out` NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_new(out: *mut *mut sqz_service_config) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        let c = Box::into_raw(Box::new(sqz_service_config {
            config: ServiceConfig::default(),
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", c) }
    })
}

/// Releases a settings object. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_free(c: *mut sqz_service_config) {
    guard::value((), || {
        if !c.is_null() {
            // SAFETY: `c` came from sqz_service_config_new and the caller gives it up.
            drop(unsafe { Box::from_raw(c) });
        }
    })
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
        let c = unsafe { config_mut(c) }?;
        kib::check_size("slush", slush_kib)?;
        c.host.slush_kib = slush_kib;
        Ok(())
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
        // SAFETY: the caller passes NULL or valid pointers.
        let (c, path) = unsafe { (config_mut(c)?, str_arg(path, "path")?) };
        if path.is_empty() {
            return Err(invalid("path is empty"));
        }
        c.lock_path = PathBuf::from(path);
        Ok(())
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
        // SAFETY: the caller passes NULL or valid pointers.
        let (c, path) = unsafe { (config_mut(c)?, str_arg(path, "path")?) };
        if path.is_empty() {
            return Err(invalid("path is empty"));
        }
        c.boot_time_record_path = PathBuf::from(path);
        Ok(())
    })
}

/// Sets the seconds (real time) a call waits for the host lock before it fails with
/// `SQZ_ERR_BACKEND` naming the lock file (default 600): a process that hangs holding the lock
/// then blocks the others for at most this long. A reservation holds the lock while it waits
/// for ballooning, so keep it above the longest reservation. Errors: `c` NULL, or `seconds` not
/// above 0, above 86400, NaN or infinite → `SQZ_ERR_INVALID_ARGUMENT`, unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_config_set_lock_timeout(
    c: *mut sqz_service_config,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live config.
        let c = unsafe { config_mut(c) }?;
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
            return Err(invalid(format!(
                "the lock timeout must be above 0 and at most 86400 s, not {seconds}"
            )));
        }
        c.lock_timeout_s = seconds;
        Ok(())
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
        let c = unsafe { config_mut(c) }?;
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
            return Err(invalid(format!(
                "the balance interval must be above 0 and at most 86400 s, not {seconds}"
            )));
        }
        c.balance_interval_s = seconds;
        Ok(())
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
        // SAFETY: the caller passes NULL or live objects.
        let (c, o) = unsafe { (config_mut(c)?, super::options::options_or_default(opts)) };
        c.options = o;
        Ok(())
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
        let c = unsafe { config_mut(c) }?;
        c.policy = match policy {
            super::options::SQZ_POLICY_CLASSIC => crate::Policy::Classic,
            super::options::SQZ_POLICY_ADAPTIVE => crate::Policy::Adaptive,
            other => return Err(Error::Unsupported(format!("unknown policy {other}")).into()),
        };
        Ok(())
    })
}
