//! `sqz_fake_host`: a fake host for tests and demos (a store with xenstore's semantics and a
//! simulated hypervisor whose guests run balloon drivers).

use std::ffi::c_char;
use std::path::Path;

use crate::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use crate::model::kib;
use crate::platform::Hypervisor;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::{Handle, Tagged};
use super::ops::{need_out, write_out};
use super::service::str_arg;
use super::sim::{behaviour, sqz_behaviour};

// ---------------------------------------------------------------------------------------------
// The fake host

/// A fake host for tests: a store with xenstore's semantics and a simulated hypervisor whose
/// guests run balloon drivers, in this process or in a directory that several processes share.
/// Time is simulated: the service's waits advance it. Opaque; created by `sqz_fake_host_new`,
/// `sqz_fake_host_create` or `sqz_fake_host_open`, released by `sqz_fake_host_free`. Safe to
/// use from several threads at once.
pub struct sqz_fake_host {
    _opaque: [u8; 0],
}

struct FakeState {
    host: FakeHost,
}

impl Tagged for FakeState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZf");
}

/// The shape of a fake host. All sizes in KiB.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_fake_config {
    /// `sizeof(sqz_fake_config)` as the caller knows it.
    pub struct_size: u32,
    /// All memory of the host.
    pub total_kib: i64,
    /// Memory Xen itself keeps, never free.
    pub xen_kib: i64,
    /// Memory domain 0 holds (it has no balloon driver in the fake).
    pub dom0_kib: i64,
    /// Seconds between unpausing a guest and its balloon driver starting.
    pub boot_delay_s: f64,
}

/// A guest to create on a fake host. All sizes in KiB.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_fake_guest {
    /// `sizeof(sqz_fake_guest)` as the caller knows it.
    pub struct_size: u32,
    /// `memory/target` written at creation.
    pub target_kib: i64,
    /// `memory/dynamic-min`.
    pub dynamic_min_kib: i64,
    /// `memory/dynamic-max`.
    pub dynamic_max_kib: i64,
    /// Memory the guest holds beyond its target once settled (firmware, video RAM).
    pub offset_kib: i64,
    /// How its balloon driver behaves once booted.
    pub behaviour: sqz_behaviour,
}

/// One domain of a fake host as the hypervisor reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_fake_domain {
    /// Memory the domain has allocated, in KiB.
    pub tot_kib: i64,
    /// Its allocation limit (maxmem), in KiB.
    pub max_kib: i64,
    /// Whether it has booted (advertised its balloon driver).
    pub booted: bool,
}

crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_fake_config`; smaller sizes are refused.
    FAKE_CONFIG_SIZE_V1 = sqz_fake_config [40] {
        struct_size @ 0, total_kib @ 8, xen_kib @ 16, dom0_kib @ 24, boot_delay_s @ 32,
    }
);
crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_fake_guest`; smaller sizes are refused.
    FAKE_GUEST_SIZE_V1 = sqz_fake_guest [72] {
        struct_size @ 0, target_kib @ 8, dynamic_min_kib @ 16, dynamic_max_kib @ 24,
        offset_kib @ 32, behaviour @ 40,
    }
);

fn fake_handle(f: *mut sqz_fake_host) -> *mut Handle<FakeState> {
    f.cast()
}

/// The host behind `f`, cloned so the call runs without holding the handle.
///
/// # Safety
/// `f` is NULL or a live fake host.
pub(crate) unsafe fn fake(f: *mut sqz_fake_host) -> Result<FakeHost, Failure> {
    // SAFETY: forwarded from the caller.
    unsafe { Handle::with_shared(fake_handle(f), "fake host", |s| s.host.clone()) }
}

/// # Safety
/// `c` is NULL or points to a config of the size its `struct_size` claims.
unsafe fn fake_config(c: *const sqz_fake_config) -> Result<FakeConfig, Failure> {
    // SAFETY: the caller promises NULL or a valid config.
    let c = unsafe { c.as_ref() }.ok_or_else(|| invalid("config is NULL"))?;
    if (c.struct_size as usize) < FAKE_CONFIG_SIZE_V1 {
        return Err(invalid(format!(
            "config->struct_size {} is smaller than sizeof(sqz_fake_config) = {FAKE_CONFIG_SIZE_V1}",
            c.struct_size
        )));
    }
    kib::check_size("total_kib", c.total_kib)?;
    kib::check_size("xen_kib", c.xen_kib)?;
    kib::check_size("dom0_kib", c.dom0_kib)?;
    if !c.boot_delay_s.is_finite() || c.boot_delay_s < 0.0 {
        return Err(invalid(format!(
            "boot_delay_s must be finite and not negative, not {}",
            c.boot_delay_s
        )));
    }
    Ok(FakeConfig {
        total_kib: c.total_kib,
        xen_kib: c.xen_kib,
        dom0_kib: c.dom0_kib,
        boot_delay_s: c.boot_delay_s,
        referee_slush_kib: None,
    })
}

fn new_fake(host: FakeHost, out: *mut *mut sqz_fake_host) -> Result<(), Failure> {
    let h = Handle::into_raw(FakeState { host });
    // SAFETY: the callers checked `out` is not NULL.
    unsafe { write_out(out, "out", h.cast::<sqz_fake_host>()) }
}

/// Creates a fake host living in this process only and stores it in `*out`. Errors: a NULL
/// pointer, a `struct_size` too small or a bad boot delay → `SQZ_ERR_INVALID_ARGUMENT`; a
/// negative or absurd size, or more memory for Xen and domain 0 than the host has →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_new(
    config: *const sqz_fake_config,
    out: *mut *mut sqz_fake_host,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a valid config.
        let config = unsafe { fake_config(config) }?;
        new_fake(FakeHost::in_memory(config)?, out)
    })
}

/// Creates (or resets) a fake host in directory `dir` (created if missing), which other
/// processes can open with `sqz_fake_host_open`, and stores it in `*out`. Errors as
/// `sqz_fake_host_new`, plus `dir` NULL or not UTF-8 → `SQZ_ERR_INVALID_ARGUMENT`, and a
/// directory that cannot be written → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_create(
    dir: *const c_char,
    config: *const sqz_fake_config,
    out: *mut *mut sqz_fake_host,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or valid pointers.
        let (dir, config) = unsafe { (str_arg(dir, "dir")?, fake_config(config)?) };
        new_fake(FakeHost::create(Path::new(dir), config)?, out)
    })
}

/// Opens the fake host another process created in `dir` and stores it in `*out`. Errors: a
/// NULL pointer or `dir` not UTF-8 → `SQZ_ERR_INVALID_ARGUMENT`; no fake host there →
/// `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_open(
    dir: *const c_char,
    out: *mut *mut sqz_fake_host,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let dir = unsafe { str_arg(dir, "dir") }?;
        new_fake(FakeHost::open(Path::new(dir))?, out)
    })
}

/// Releases a fake host handle. NULL is a no-op. Services created over it keep the host alive.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_free(f: *mut sqz_fake_host) {
    // SAFETY: the caller passes NULL or a handle it owns and gives up.
    guard::value((), || unsafe { Handle::free(fake_handle(f)) })
}

/// Creates a paused PV domain with no memory yet and writes what a toolstack writes for it
/// (`memory/{target,dynamic-min,dynamic-max}`); stores its domid in `*domid_out`. Its maxmem
/// starts at dynamic-max plus its offset. Errors: a NULL pointer, `guest_size` too small or a
/// bad behaviour → `SQZ_ERR_INVALID_ARGUMENT`; a negative or absurd size →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_create_domain(
    f: *mut sqz_fake_host,
    guest: *const sqz_fake_guest,
    guest_size: usize,
    domid_out: *mut i32,
) -> sqz_status {
    guard::status(|| {
        need_out(domid_out, "domid_out")?;
        if guest_size < FAKE_GUEST_SIZE_V1 {
            return Err(invalid(format!(
                "guest_size {guest_size} is smaller than sizeof(sqz_fake_guest) = {FAKE_GUEST_SIZE_V1}"
            )));
        }
        // SAFETY: the caller passes NULL or a guest of `guest_size` bytes.
        let g = unsafe { guest.as_ref() }.ok_or_else(|| invalid("guest is NULL"))?;
        let spec = GuestSpec {
            target_kib: g.target_kib,
            dynamic_min_kib: g.dynamic_min_kib,
            dynamic_max_kib: g.dynamic_max_kib,
            offset_kib: g.offset_kib,
            behaviour: behaviour(&g.behaviour)?,
            ..GuestSpec::fixed(g.target_kib)
        };
        // SAFETY: the caller passes NULL or a live fake host.
        let domid = unsafe { fake(f) }?.create_domain(spec)?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(domid_out, "domid_out", domid) }
    })
}

/// Builds domain `domid`: allocates `kib` KiB to it, as the domain builder does. Errors: `f`
/// NULL → `SQZ_ERR_INVALID_ARGUMENT`; a bad size → `SQZ_ERR_INVALID_MEMORY_VALUE`; an unknown
/// domid, or beyond its maxmem or the host's free memory → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_build_domain(
    f: *mut sqz_fake_host,
    domid: i32,
    kib: i64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live fake host.
        unsafe { fake(f) }?.build_domain(domid, kib)?;
        Ok(())
    })
}

/// Unpauses domain `domid`: it boots after the configured delay of simulated time. Errors: `f`
/// NULL → `SQZ_ERR_INVALID_ARGUMENT`; an unknown domid → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_unpause(f: *mut sqz_fake_host, domid: i32) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live fake host.
        unsafe { fake(f) }?.unpause(domid)?;
        Ok(())
    })
}

/// Destroys domain `domid`: its memory returns to the host. Errors: `f` NULL or domain 0 →
/// `SQZ_ERR_INVALID_ARGUMENT`; an unknown domid → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_destroy_domain(
    f: *mut sqz_fake_host,
    domid: i32,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live fake host.
        unsafe { fake(f) }?.destroy_domain(domid)?;
        Ok(())
    })
}

/// Destroys domain `domid` as Xen does on a loaded host: it is dying at once (its store
/// directory goes) but gives its pages back to the host evenly over `seconds` of simulated
/// time; 0 is `sqz_fake_host_destroy_domain`, `INFINITY` a domain stuck dying. Errors: `f` NULL,
/// domain 0, a domain already dying, or `seconds` NaN or negative →
/// `SQZ_ERR_INVALID_ARGUMENT`; an unknown domid → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_destroy_domain_over(
    f: *mut sqz_fake_host,
    domid: i32,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live fake host.
        unsafe { fake(f) }?.destroy_domain_over(domid, seconds)?;
        Ok(())
    })
}

/// Hands `kib` KiB of free memory to Xen's scrubber, as Xen does with a destroyed domain's
/// pages: reported as pages to scrub, allocatable by nothing, and returned to the free pool
/// evenly over `seconds` of simulated time (`INFINITY`: a scrubber that never finishes; 0: at
/// once). Errors: `f` NULL, `seconds` NaN or negative, or more than is free →
/// `SQZ_ERR_INVALID_ARGUMENT`; a bad size → `SQZ_ERR_INVALID_MEMORY_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_scrub_over(
    f: *mut sqz_fake_host,
    kib: i64,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live fake host.
        unsafe { fake(f) }?.scrub_over(kib, seconds)?;
        Ok(())
    })
}

/// Lets `seconds` of simulated time pass, moving every guest. Errors: `f` NULL, `seconds` NaN,
/// infinite or negative, or taking the clock past 10^12 s → `SQZ_ERR_INVALID_ARGUMENT` (the
/// clock is left as it was).
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_advance(f: *mut sqz_fake_host, seconds: f64) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live fake host.
        unsafe { fake(f) }?.advance(seconds)?;
        Ok(())
    })
}

/// Stores what the hypervisor reports of domain `domid` in `*out`. Errors: a NULL pointer or
/// an unknown domid → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_domain(
    f: *mut sqz_fake_host,
    domid: i32,
    out: *mut sqz_fake_domain,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live fake host.
        let d = unsafe { fake(f) }?
            .domain(domid)?
            .ok_or_else(|| invalid(format!("the fake host has no domain {domid}")))?;
        let view = sqz_fake_domain {
            tot_kib: d.tot_kib(),
            max_kib: d.max_kib(),
            booted: d.booted,
        };
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", view) }
    })
}

/// Stores the host's free memory in KiB in `*out`. Errors: a NULL pointer →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_fake_host_free_mem(
    f: *mut sqz_fake_host,
    out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live fake host.
        let free = unsafe { fake(f) }?.physinfo()?.free_pages;
        let free = crate::platform::pages::to_kib(free)?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", free) }
    })
}
