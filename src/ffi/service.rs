//! `sqz_service`: the memory service (sessions and reservations, squeezed's `Memory_interface`)
//! over a platform: the fake host (`sqz_fake_host`, in `fake_host.rs`), or the caller's own
//! platform as a table of callbacks (`sqz_platform`, in `platform.rs`), or this host's Xen
//! (`sqz_service_new_xen`, when the library is built with the `xen` feature). Its settings are
//! in `service_config.rs`.

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use crate::platform::Platform;
use crate::service::Service;
use crate::Error;

use super::error::{invalid, sqz_status, Failure};
use super::fake_host::{fake, sqz_fake_host};
use super::guard;
use super::handle::{Handle, Tagged};
use super::ops::{need_out, write_out};
use super::platform::{in_platform_callback, sqz_platform, CPlatform};
use super::service_config::{config_or_default, sqz_service_config};

/// Bytes of the buffer a reservation id is written to: 36 characters of UUID text and a NUL.
pub const SQZ_RESERVATION_ID_SIZE: usize = 37;

// ---------------------------------------------------------------------------------------------
// Arguments

/// A required string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    // SAFETY: not NULL; the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| invalid(format!("{name} is not valid UTF-8")))
}

/// Writes `id` (36 characters) and a NUL to a caller buffer of `SQZ_RESERVATION_ID_SIZE` bytes.
///
/// # Safety
/// `out` is NULL or has room for `SQZ_RESERVATION_ID_SIZE` bytes.
pub(crate) unsafe fn write_id(out: *mut c_char, id: &str) -> Result<(), Failure> {
    need_out(out, "reservation_id_out")?;
    let bytes = id.as_bytes();
    if bytes.len() + 1 > SQZ_RESERVATION_ID_SIZE {
        return Err(Failure::Core(Error::Backend(format!(
            "reservation id {id:?} is longer than a UUID"
        ))));
    }
    // SAFETY: not NULL, and the caller's buffer holds SQZ_RESERVATION_ID_SIZE bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
        *out.add(bytes.len()) = 0;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The service

/// The memory service over one host: sessions and reservations. Opaque; created by
/// `sqz_service_new_fake` or `sqz_service_new_platform`, released by `sqz_service_free`.
/// Thread-safe: any number of threads (and processes using the same lock file) may call it at
/// once; decisions about host memory are serialised by a host-wide lock.
pub struct sqz_service {
    _opaque: [u8; 0],
}

struct ServiceState {
    service: Service,
}

impl Tagged for ServiceState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZv");
}

fn service_handle(s: *mut sqz_service) -> *mut Handle<ServiceState> {
    s.cast()
}

/// The service behind `s`, cloned (it is shared and thread-safe) so calls from several threads
/// proceed at once. Refused from inside a platform callback, which runs under the host lock.
///
/// # Safety
/// `s` is NULL or a live service.
pub(crate) unsafe fn service(s: *mut sqz_service) -> Result<Service, Failure> {
    if in_platform_callback() {
        return Err(invalid(
            "the service cannot be called from inside one of its platform or progress callbacks \
             (the host lock is held while they run)",
        ));
    }
    // SAFETY: forwarded from the caller.
    unsafe { Handle::with_shared(service_handle(s), "service", |st| st.service.clone()) }
}

fn new_service(
    platform: Platform,
    config: *const sqz_service_config,
    out: *mut *mut sqz_service,
) -> Result<(), Failure> {
    // SAFETY: the callers pass NULL or a live config.
    let config = unsafe { config_or_default(config) }?;
    let service = Service::new(platform, config)?;
    let h = Handle::into_raw(ServiceState { service });
    // SAFETY: the callers checked `out` is not NULL.
    unsafe { write_out(out, "out", h.cast::<sqz_service>()) }
}

/// Creates a service over the fake host `f` with settings `config` (NULL: defaults) and stores
/// it in `*out`. The service keeps the host alive; `f` may be freed first. Errors: a NULL
/// pointer → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_new_fake(
    f: *mut sqz_fake_host,
    config: *const sqz_service_config,
    out: *mut *mut sqz_service,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live fake host.
        let host = unsafe { fake(f) }?;
        new_service(host.platform(), config, out)
    })
}

/// Creates a service over the caller's platform (`*platform` is copied; its `ctx` must stay
/// valid until `sqz_service_free`) with settings `config` (NULL: defaults) and stores it in
/// `*out`. Errors: a NULL pointer, a `struct_size` too small or a required callback NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_new_platform(
    platform: *const sqz_platform,
    config: *const sqz_service_config,
    out: *mut *mut sqz_service,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a valid table.
        let p = Arc::new(unsafe { CPlatform::from_ptr(platform) }?);
        let platform = Platform {
            hypervisor: p.clone(),
            store: p.clone(),
            clock: p,
        };
        new_service(platform, config, out)
    })
}

/// Creates a service over this host's Xen (libxenctrl and xenstored) with settings `config`
/// (NULL: defaults) and stores it in `*out`. Errors: `out` NULL → `SQZ_ERR_INVALID_ARGUMENT`;
/// a library built without Xen support (cargo feature `xen`) → `SQZ_ERR_UNSUPPORTED`; no
/// hypervisor (no `/dev/xen/privcmd`), or libxenctrl or xenstored refusing → `SQZ_ERR_BACKEND`
/// with their reason. Fails at once on a machine without Xen; never waits for one.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_new_xen(
    config: *const sqz_service_config,
    out: *mut *mut sqz_service,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        new_service(xen_platform()?, config, out)
    })
}

/// This host's Xen platform. A library built with Xen support that finds no Xen here is a
/// backend failure, so callers can tell it from a library that cannot use Xen at all.
#[cfg(feature = "xen")]
fn xen_platform() -> Result<Platform, Failure> {
    crate::backend::xen::platform().map_err(|e| match e {
        Error::Unsupported(why) => Error::Backend(why).into(),
        e => e.into(),
    })
}

#[cfg(not(feature = "xen"))]
fn xen_platform() -> Result<Platform, Failure> {
    Err(Error::Unsupported(
        "this libsqueeze was built without Xen support (cargo feature `xen`)".into(),
    )
    .into())
}

/// Releases a service. NULL is a no-op. The background balancer is stopped first and a pass
/// it is in finishes before this returns, so the balancer makes no platform callback after
/// it. Calls the caller is still making on other threads finish (they hold their own
/// reference); the platform's `ctx` is not used once they have. Called from inside one of the
/// service's own callbacks, it cannot wait for the call in progress (which waits for it): that
/// call and a balancing pass in progress still finish with the same `ctx`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_free(s: *mut sqz_service) {
    guard::value((), || {
        // The balancer thread holds only a weak reference; during a pass it holds a strong one,
        // so dropping the handle alone would let that pass go on calling the platform.
        // SAFETY: the caller passes NULL or a service it owns and gives up.
        let live =
            unsafe { Handle::with_shared(service_handle(s), "service", |st| st.service.clone()) };
        if let Ok(svc) = live {
            if in_platform_callback() {
                svc.request_balancer_stop();
            } else {
                svc.stop_balancer();
            }
        }
        // SAFETY: as above.
        unsafe { Handle::free(service_handle(s)) }
    })
}

/// Starts a session for the service named `service_name` (1 to 128 characters from
/// `A-Z a-z 0-9 - _ @`, what xenstored accepts); the session id to pass to the other calls is
/// the name itself, as in squeezed. Reservations that service made before and never
/// transferred are dropped: a restarted client has forgotten their ids. Errors: a NULL pointer
/// or an invalid name → `SQZ_ERR_INVALID_ARGUMENT`; a platform failure → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_login(s: *mut sqz_service, service_name: *const c_char) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, name) = unsafe { (service(s)?, str_arg(service_name, "service_name")?) };
        svc.login(name)?;
        Ok(())
    })
}

/// Frees `kib` KiB (ballooning domains down if needed) and sets it aside under a new
/// reservation id, written NUL-terminated to `reservation_id_out` (`SQZ_RESERVATION_ID_SIZE`
/// bytes). Errors: a NULL pointer or an invalid session → `SQZ_ERR_INVALID_ARGUMENT`; `kib`
/// negative or absurd → `SQZ_ERR_INVALID_MEMORY_VALUE`; not enough memory even with every
/// domain at its dynamic-min → `SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY` (amounts net of the
/// slush); stuck balloon drivers → `SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE`. Nothing is reserved
/// on failure.
#[no_mangle]
pub unsafe extern "C" fn sqz_reserve_memory(
    s: *mut sqz_service,
    session: *const c_char,
    kib: i64,
    reservation_id_out: *mut c_char,
) -> sqz_status {
    guard::status(|| {
        need_out(reservation_id_out, "reservation_id_out")?;
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session) = unsafe { (service(s)?, str_arg(session, "session")?) };
        let id = svc.reserve_memory(session, kib)?;
        // SAFETY: the caller's buffer holds SQZ_RESERVATION_ID_SIZE bytes.
        unsafe { write_id(reservation_id_out, &id) }
    })
}

/// Frees as much memory as the policy gives a new domain that may have anything in
/// `min_kib..=max_kib` (at least `min_kib`), sets it aside under a new reservation id (written
/// to `reservation_id_out`, `SQZ_RESERVATION_ID_SIZE` bytes) and stores the amount in
/// `*reserved_kib_out`. Errors as `sqz_reserve_memory`, plus `min_kib > max_kib` →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn sqz_reserve_memory_range(
    s: *mut sqz_service,
    session: *const c_char,
    min_kib: i64,
    max_kib: i64,
    reservation_id_out: *mut c_char,
    reserved_kib_out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(reservation_id_out, "reservation_id_out")?;
        need_out(reserved_kib_out, "reserved_kib_out")?;
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session) = unsafe { (service(s)?, str_arg(session, "session")?) };
        let (id, amount) = svc.reserve_memory_range(session, min_kib, max_kib)?;
        // SAFETY: both out-pointers are not NULL and sized by the caller's contract.
        unsafe {
            write_id(reservation_id_out, &id)?;
            write_out(reserved_kib_out, "reserved_kib_out", amount)
        }
    })
}

/// Hands reservation `reservation_id` of `session` to domain `domid`, which must exist and be
/// being built: it becomes the domain's initial reservation and its maxmem. When the domain dies
/// the reservation is released. Errors: a NULL pointer, an invalid session, a negative domid, a
/// domain that does not exist, domain 0, a domain that has booted or one that already holds a
/// reservation → `SQZ_ERR_INVALID_ARGUMENT` (the message says why); an id this session does not
/// hold → `SQZ_ERR_UNKNOWN_RESERVATION`.
#[no_mangle]
pub unsafe extern "C" fn sqz_transfer_reservation_to_domain(
    s: *mut sqz_service,
    session: *const c_char,
    reservation_id: *const c_char,
    domid: i32,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session, id) = unsafe {
            (
                service(s)?,
                str_arg(session, "session")?,
                str_arg(reservation_id, "reservation_id")?,
            )
        };
        svc.transfer_reservation_to_domain(session, id, domid)?;
        Ok(())
    })
}

/// Deletes reservation `reservation_id` of `session`, transferred or not. Errors: a NULL
/// pointer or an invalid session → `SQZ_ERR_INVALID_ARGUMENT`; an id this session does not
/// hold → `SQZ_ERR_UNKNOWN_RESERVATION`.
#[no_mangle]
pub unsafe extern "C" fn sqz_delete_reservation(
    s: *mut sqz_service,
    session: *const c_char,
    reservation_id: *const c_char,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session, id) = unsafe {
            (
                service(s)?,
                str_arg(session, "session")?,
                str_arg(reservation_id, "reservation_id")?,
            )
        };
        svc.delete_reservation(session, id)?;
        Ok(())
    })
}

/// Writes the id of the reservation transferred to domain `domid` to `reservation_id_out`
/// (`SQZ_RESERVATION_ID_SIZE` bytes). Errors: a NULL pointer, an invalid session or a negative
/// domid → `SQZ_ERR_INVALID_ARGUMENT`; the domain holds none → `SQZ_ERR_NO_RESERVATION`.
#[no_mangle]
pub unsafe extern "C" fn sqz_query_reservation_of_domain(
    s: *mut sqz_service,
    session: *const c_char,
    domid: i32,
    reservation_id_out: *mut c_char,
) -> sqz_status {
    guard::status(|| {
        need_out(reservation_id_out, "reservation_id_out")?;
        // SAFETY: the caller passes NULL or valid pointers.
        let (svc, session) = unsafe { (service(s)?, str_arg(session, "session")?) };
        let id = svc.query_reservation_of_domain(session, domid)?;
        // SAFETY: not NULL; the caller's buffer holds SQZ_RESERVATION_ID_SIZE bytes.
        unsafe { write_id(reservation_id_out, &id) }
    })
}

/// Hands free memory above the slush back to the domains (squeezed's `balance_memory`; named
/// apart from `sqz_balance_memory`, which drives a caller's `sqz_io`). Errors: `s` NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`; a platform failure → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_balance_memory(s: *mut sqz_service) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live service.
        unsafe { service(s) }?.balance_memory()?;
        Ok(())
    })
}

/// Starts the background balancer: a thread that, every balance interval (real time), balances
/// the host when a pass would change a target (squeezed's periodic check). Starting it twice is
/// harmless. Over a `sqz_platform`, the callbacks then also run on that thread. Errors: `s`
/// NULL → `SQZ_ERR_INVALID_ARGUMENT`; the thread cannot be started → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_start_balancer(s: *mut sqz_service) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live service.
        unsafe { service(s) }?.start_balancer()?;
        Ok(())
    })
}

/// Stops the background balancer and waits for its thread (at most one balancing pass);
/// stopping it when it does not run is harmless. `sqz_service_free` stops it too. Errors: `s`
/// NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_stop_balancer(s: *mut sqz_service) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live service.
        unsafe { service(s) }?.stop_balancer();
        Ok(())
    })
}

/// Stores the memory the host keeps for Xen (the slush), in KiB, in `*out`. Errors: a NULL
/// pointer → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_get_host_reserved_memory(
    s: *mut sqz_service,
    out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live service.
        let v = unsafe { service(s) }?.get_host_reserved_memory();
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", v) }
    })
}

/// Stores host free memory at boot, in KiB, in `*out` (squeezed reports bytes), recording it
/// first if no process has. Errors: a NULL pointer → `SQZ_ERR_INVALID_ARGUMENT`; the record
/// cannot be read or written → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_get_host_initial_free_memory(
    s: *mut sqz_service,
    out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live service.
        let v = unsafe { service(s) }?.get_host_initial_free_memory()?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", v) }
    })
}

/// Writes a JSON document describing the host (every domain as the balancer sees it), the
/// reservation ledger and the settings, NUL-terminated, to `buf` (`cap` bytes), and stores the
/// bytes it takes, NUL included, in `*size_out`. When `cap` is too small nothing is written to
/// `buf`, `*size_out` is still set and the status is `SQZ_ERR_BUFFER_TOO_SMALL`; `buf` may be
/// NULL when `cap` is 0, to ask for the size. Errors: `s` or `size_out` NULL, or `buf` NULL with
/// `cap` above 0 → `SQZ_ERR_INVALID_ARGUMENT`; a platform failure → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_get_diagnostics(
    s: *mut sqz_service,
    buf: *mut c_char,
    cap: usize,
    size_out: *mut usize,
) -> sqz_status {
    guard::status(|| {
        need_out(size_out, "size_out")?;
        if buf.is_null() && cap > 0 {
            return Err(invalid("buf is NULL but cap is not 0"));
        }
        // SAFETY: the caller passes NULL or a live service.
        let doc = unsafe { service(s) }?.get_diagnostics()?;
        let need = doc.len() + 1;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(size_out, "size_out", need) }?;
        if cap < need {
            return Err(Failure::BufferTooSmall(format!(
                "the diagnostics take {need} bytes, the buffer has {cap}"
            )));
        }
        // SAFETY: `buf` is not NULL (cap >= need > 0) and holds `cap` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(doc.as_ptr(), buf.cast::<u8>(), doc.len());
            *buf.add(doc.len()) = 0;
        }
        Ok(())
    })
}

/// Stores in `*out` how `domid`'s balloon driver has been cooperating, as the service's
/// adaptive squeezer has seen it. Errors: `s` or `out` NULL, a service with the classic policy
/// (which forgets between calls), or a domain the squeezer has not seen →
/// `SQZ_ERR_INVALID_ARGUMENT`, `*out` unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_cooperation(
    s: *mut sqz_service,
    domid: i32,
    out: *mut super::ops::sqz_cooperation,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live service.
        let service = unsafe { service(s) }?;
        if service.config().policy != crate::Policy::Adaptive {
            return Err(invalid(
                "the service uses the classic policy, which keeps no cooperation scores",
            ));
        }
        let c = service
            .cooperation(domid)
            .ok_or_else(|| invalid(format!("the service has not seen domain {domid}")))?;
        // SAFETY: checked non-NULL above; the caller owns the struct.
        unsafe { write_out(out, "out", super::ops::sqz_cooperation::from(c)) }
    })
}
