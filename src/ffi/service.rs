//! `sqz_service`: the memory service (sessions and reservations, squeezed's `Memory_interface`)
//! over a platform: the fake host (`sqz_fake_host`, for tests and demos), or the caller's own
//! platform as a table of callbacks (`sqz_platform`), or this host's Xen (`sqz_service_new_xen`,
//! when the library is built with the `xen` feature).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use crate::model::{kib, DomId, Kib};
use crate::platform::{Clock, DomainInfo, Hypervisor, PhysInfo, Platform, Store, StoreOps, Watch};
use crate::service::{Service, ServiceConfig};
use crate::Error;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::{Handle, Tagged};
use super::ops::{need_out, write_out};
use super::options::sqz_options;
use super::sim::{behaviour, sqz_behaviour};

/// Bytes of the buffer a reservation id is written to: 36 characters of UUID text and a NUL.
pub const SQZ_RESERVATION_ID_SIZE: usize = 37;

/// What a platform callback returns from `transaction_end` when the transaction conflicted with
/// another writer and must be run again (xenstore's `EAGAIN`). Any other non-zero value from a
/// platform callback is a failure.
pub const SQZ_PLATFORM_AGAIN: i32 = 11;

/// How many times a conflicting store transaction is retried before the call fails.
const MAX_TRANSACTION_ATTEMPTS: u32 = 100;

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

const FAKE_CONFIG_SIZE_V1: usize = std::mem::size_of::<sqz_fake_config>();
const FAKE_GUEST_SIZE_V1: usize = std::mem::size_of::<sqz_fake_guest>();

fn fake_handle(f: *mut sqz_fake_host) -> *mut Handle<FakeState> {
    f.cast()
}

/// The host behind `f`, cloned so the call runs without holding the handle.
///
/// # Safety
/// `f` is NULL or a live fake host.
unsafe fn fake(f: *mut sqz_fake_host) -> Result<FakeHost, Failure> {
    // SAFETY: forwarded from the caller.
    unsafe { Handle::with(fake_handle(f), "fake host", |s| Ok(s.host.clone())) }
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

/// Lets `seconds` of simulated time pass, moving every guest. Errors: `f` NULL, `seconds` NaN,
/// infinite or negative → `SQZ_ERR_INVALID_ARGUMENT`.
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

// ---------------------------------------------------------------------------------------------
// The caller's platform

/// One domain as the caller's hypervisor reports it (`xc_domain_getinfolist`). Pages are 4 KiB.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_domain_info {
    /// Domain id.
    pub domid: i32,
    /// The domain is being destroyed.
    pub dying: bool,
    /// The domain has shut down.
    pub shutdown: bool,
    /// The domain is paused.
    pub paused: bool,
    /// The domain is hardware-virtualised (its shadow allocation counts as memory).
    pub hvm: bool,
    /// Pages allocated.
    pub tot_pages: u64,
    /// The allocation limit, in pages.
    pub max_pages: u64,
    /// Pages claimed and not yet allocated.
    pub outstanding_pages: u64,
    /// Pages shared with other domains.
    pub shared_pages: u64,
}

/// `sqz_domain_info` as read from C, the flags as bytes so a stray value is not undefined
/// behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawDomainInfo {
    domid: i32,
    dying: u8,
    shutdown: u8,
    paused: u8,
    hvm: u8,
    tot_pages: u64,
    max_pages: u64,
    outstanding_pages: u64,
    shared_pages: u64,
}

const _: () =
    assert!(std::mem::size_of::<RawDomainInfo>() == std::mem::size_of::<sqz_domain_info>());
const DOMAIN_INFO_SIZE_V1: usize = std::mem::size_of::<sqz_domain_info>();

/// Host-wide memory figures (`xc_physinfo`), in 4 KiB pages.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_physinfo {
    /// All pages of the host.
    pub total_pages: u64,
    /// Pages free now.
    pub free_pages: u64,
    /// Freed pages waiting to be scrubbed.
    pub scrub_pages: u64,
    /// Pages promised to domains by claims.
    pub outstanding_pages: u64,
}

/// The domain list under construction, handed to `sqz_platform.list_domains`. Opaque, valid
/// only during that callback, on its thread.
pub struct sqz_domain_list {
    domains: Vec<DomainInfo>,
    failure: Option<String>,
}

/// Strings under construction, handed to `sqz_platform.read` (one value, or none when the node
/// does not exist) and `sqz_platform.directory` (one per child). Opaque, valid only during that
/// callback, on its thread.
pub struct sqz_strings {
    items: Vec<String>,
    failure: Option<String>,
}

thread_local! {
    /// Sinks whose callback is running on this thread.
    static LIVE_SINKS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// Platform callbacks running on this thread: the service must not be re-entered from one
    /// (its host lock is held while they run).
    static IN_PLATFORM_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` on a sink if it is live on this thread, recording a failure in it.
///
/// # Safety
/// `p` is any pointer; it is dereferenced only if it is a live sink of type `T`.
unsafe fn with_sink<T>(
    p: *mut T,
    call: &str,
    failure: impl FnOnce(&mut T) -> &mut Option<String>,
    f: impl FnOnce(&mut T) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if p.is_null() {
        return Err(invalid(format!("{call}: list is NULL")));
    }
    if !LIVE_SINKS.with(|l| l.borrow().contains(&(p as usize))) {
        return Err(invalid(format!(
            "{call}: list is not live (it is valid only inside the callback it was passed to)"
        )));
    }
    // SAFETY: live sinks are owned by a platform call running below us on this thread.
    let sink = unsafe { &mut *p };
    let result = f(sink);
    if let Err(e) = &result {
        failure(sink).get_or_insert_with(|| format!("{call}: {}", e.message()));
    }
    result
}

/// Adds one domain to the list (`*d` is copied; `info_size` is `sizeof(sqz_domain_info)`).
/// Errors: a NULL pointer, a list not live, `info_size` too small, a negative or repeated domid
/// → `SQZ_ERR_INVALID_ARGUMENT`; a failed call makes the service's operation fail with
/// `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_domain_list_add(
    l: *mut sqz_domain_list,
    d: *const sqz_domain_info,
    info_size: usize,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: with_sink dereferences only live lists; `d` is checked before it is read.
        unsafe {
            with_sink(
                l,
                "sqz_domain_list_add",
                |l| &mut l.failure,
                |l| {
                    if d.is_null() {
                        return Err(invalid("domain info is NULL"));
                    }
                    if info_size < DOMAIN_INFO_SIZE_V1 {
                        return Err(invalid(format!(
                            "info_size {info_size} is smaller than sizeof(sqz_domain_info) = \
                             {DOMAIN_INFO_SIZE_V1}"
                        )));
                    }
                    let p = d.cast::<RawDomainInfo>();
                    if !(p as usize).is_multiple_of(std::mem::align_of::<RawDomainInfo>()) {
                        return Err(invalid("domain info is not aligned"));
                    }
                    // SAFETY: not NULL, aligned, and at least the first published layout.
                    let r = p.read();
                    if r.domid < 0 {
                        return Err(invalid(format!("domid {} is negative", r.domid)));
                    }
                    if l.domains.iter().any(|x| x.domid == r.domid) {
                        return Err(invalid(format!("domain {} is listed twice", r.domid)));
                    }
                    l.domains.push(DomainInfo {
                        domid: r.domid,
                        tot_pages: r.tot_pages,
                        max_pages: r.max_pages,
                        outstanding_pages: r.outstanding_pages,
                        shared_pages: r.shared_pages,
                        dying: r.dying != 0,
                        shutdown: r.shutdown != 0,
                        paused: r.paused != 0,
                        hvm: r.hvm != 0,
                    });
                    Ok(())
                },
            )
        }
    })
}

/// Adds a string (NUL-terminated UTF-8, copied) to the list. Errors: a NULL pointer, a list not
/// live, or text that is not UTF-8 → `SQZ_ERR_INVALID_ARGUMENT`; a failed call makes the
/// service's operation fail with `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_strings_add(s: *mut sqz_strings, value: *const c_char) -> sqz_status {
    guard::status(|| {
        // SAFETY: with_sink dereferences only live lists; str_arg checks `value`.
        unsafe {
            with_sink(
                s,
                "sqz_strings_add",
                |s| &mut s.failure,
                |s| {
                    let v = str_arg(value, "value")?;
                    s.items.push(v.to_string());
                    Ok(())
                },
            )
        }
    })
}

/// The caller's platform: the hypervisor, a store with xenstore's semantics, and a clock, as
/// callbacks. Each returns 0 on success; any other value fails the service call that made it
/// with `SQZ_ERR_BACKEND` (except `SQZ_PLATFORM_AGAIN` from `transaction_end`). Callbacks
/// receive `ctx` and run on whichever thread calls the service, while the service holds its
/// host lock: they must be thread-safe, and must not call the service again (refused with
/// `SQZ_ERR_INVALID_ARGUMENT`). The library copies this struct when the service is created;
/// `ctx` must stay valid until `sqz_service_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sqz_platform {
    /// `sizeof(sqz_platform)` as the caller knows it. New fields will only be appended.
    pub struct_size: u32,
    /// Passed to every callback, never dereferenced by the library.
    pub ctx: *mut c_void,
    /// Every domain, dying ones included: `sqz_domain_list_add` once per domain. Required.
    pub list_domains:
        Option<unsafe extern "C" fn(ctx: *mut c_void, out: *mut sqz_domain_list) -> i32>,
    /// Host-wide figures. Required.
    pub physinfo: Option<unsafe extern "C" fn(ctx: *mut c_void, out: *mut sqz_physinfo) -> i32>,
    /// The shadow allocation of an HVM domain in MiB. NULL means 0 for every domain.
    pub shadow_allocation_mib:
        Option<unsafe extern "C" fn(ctx: *mut c_void, domid: i32, mib: *mut u64) -> i32>,
    /// Sets maxmem of a domain, in KiB. Required.
    pub set_maxmem_kib: Option<unsafe extern "C" fn(ctx: *mut c_void, domid: i32, kib: i64) -> i32>,
    /// Claims pages for a domain (0 cancels). NULL: claims are unsupported.
    pub claim_pages: Option<unsafe extern "C" fn(ctx: *mut c_void, domid: i32, pages: u64) -> i32>,
    /// Starts a store transaction and stores its id in `*tx`. Required.
    pub transaction_start: Option<unsafe extern "C" fn(ctx: *mut c_void, tx: *mut u32) -> i32>,
    /// Ends transaction `tx`: commits it, or with `abort` true discards it. Returns
    /// `SQZ_PLATFORM_AGAIN` when the commit conflicted (the library runs it again). Required.
    pub transaction_end:
        Option<unsafe extern "C" fn(ctx: *mut c_void, tx: u32, abort: bool) -> i32>,
    /// Reads `path` in `tx`: `sqz_strings_add` with its value, or nothing when the node does
    /// not exist. Required.
    pub read: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            tx: u32,
            path: *const c_char,
            out: *mut sqz_strings,
        ) -> i32,
    >,
    /// Writes `value` at `path` in `tx`, creating parents. Required.
    pub write: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            tx: u32,
            path: *const c_char,
            value: *const c_char,
        ) -> i32,
    >,
    /// Removes `path` and its subtree in `tx`; a missing node is not an error. Required.
    pub rm: Option<unsafe extern "C" fn(ctx: *mut c_void, tx: u32, path: *const c_char) -> i32>,
    /// Lists the children of `path` in `tx`: `sqz_strings_add` once per child name. Required.
    pub directory: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            tx: u32,
            path: *const c_char,
            out: *mut sqz_strings,
        ) -> i32,
    >,
    /// Seconds since an arbitrary origin, never going backwards (a bad value is ignored and the
    /// last good one used). Required.
    pub now: Option<unsafe extern "C" fn(ctx: *mut c_void) -> f64>,
    /// Lets `seconds` pass. Required.
    pub sleep: Option<unsafe extern "C" fn(ctx: *mut c_void, seconds: f64)>,
}

const PLATFORM_SIZE_V1: usize = std::mem::size_of::<sqz_platform>();

type ListFn = unsafe extern "C" fn(*mut c_void, *mut sqz_domain_list) -> i32;
type PhysFn = unsafe extern "C" fn(*mut c_void, *mut sqz_physinfo) -> i32;
type ShadowFn = unsafe extern "C" fn(*mut c_void, i32, *mut u64) -> i32;
type MaxmemFn = unsafe extern "C" fn(*mut c_void, i32, i64) -> i32;
type ClaimFn = unsafe extern "C" fn(*mut c_void, i32, u64) -> i32;
type TxStartFn = unsafe extern "C" fn(*mut c_void, *mut u32) -> i32;
type TxEndFn = unsafe extern "C" fn(*mut c_void, u32, bool) -> i32;
type StringsFn = unsafe extern "C" fn(*mut c_void, u32, *const c_char, *mut sqz_strings) -> i32;
type WriteFn = unsafe extern "C" fn(*mut c_void, u32, *const c_char, *const c_char) -> i32;
type RmFn = unsafe extern "C" fn(*mut c_void, u32, *const c_char) -> i32;
type NowFn = unsafe extern "C" fn(*mut c_void) -> f64;
type SleepFn = unsafe extern "C" fn(*mut c_void, f64);

/// The caller's table, checked.
struct CPlatform {
    ctx: *mut c_void,
    list_domains: ListFn,
    physinfo: PhysFn,
    shadow_allocation_mib: Option<ShadowFn>,
    set_maxmem_kib: MaxmemFn,
    claim_pages: Option<ClaimFn>,
    transaction_start: TxStartFn,
    transaction_end: TxEndFn,
    read: StringsFn,
    write: WriteFn,
    rm: RmFn,
    directory: StringsFn,
    now: NowFn,
    sleep: SleepFn,
    /// The last good `now`, as f64 bits.
    last_now: AtomicU64,
}

// SAFETY: the caller promises (see `sqz_platform`) that its callbacks and `ctx` may be used
// from any thread that calls the service.
unsafe impl Send for CPlatform {}
// SAFETY: as above.
unsafe impl Sync for CPlatform {}

/// Marks this thread as inside a platform callback while it lives.
pub(crate) struct InCallback;

impl InCallback {
    pub(crate) fn enter() -> Self {
        IN_PLATFORM_CALLBACK.with(|c| c.set(c.get() + 1));
        InCallback
    }
}

impl Drop for InCallback {
    fn drop(&mut self) {
        IN_PLATFORM_CALLBACK.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Registers a sink as live on this thread while it lives.
struct LiveSink(usize);

impl LiveSink {
    fn new<T>(p: *mut T) -> Self {
        LIVE_SINKS.with(|l| l.borrow_mut().push(p as usize));
        LiveSink(p as usize)
    }
}

impl Drop for LiveSink {
    fn drop(&mut self) {
        LIVE_SINKS.with(|l| l.borrow_mut().retain(|&x| x != self.0));
    }
}

fn failed(name: &str, rc: i32, about: &str) -> Error {
    Error::Backend(format!("platform callback {name}{about} failed with {rc}"))
}

fn c_path(path: &str) -> crate::Result<CString> {
    CString::new(path)
        .map_err(|_| Error::InvalidArgument(format!("store path {path:?} holds a NUL")))
}

impl CPlatform {
    /// # Safety
    /// `p` is NULL or points to a table of the size its `struct_size` claims.
    unsafe fn from_ptr(p: *const sqz_platform) -> Result<CPlatform, Failure> {
        if p.is_null() {
            return Err(invalid("platform is NULL"));
        }
        if !(p as usize).is_multiple_of(std::mem::align_of::<sqz_platform>()) {
            return Err(invalid("platform is not aligned for sqz_platform"));
        }
        // SAFETY: not NULL and aligned; struct_size is the first field.
        let size = unsafe { std::ptr::addr_of!((*p).struct_size).read() } as usize;
        if size < PLATFORM_SIZE_V1 {
            return Err(invalid(format!(
                "platform->struct_size {size} is smaller than sizeof(sqz_platform) = {PLATFORM_SIZE_V1}"
            )));
        }
        // SAFETY: the caller's struct holds at least the first published layout.
        let t = unsafe { p.read() };
        let need = |name: &str| invalid(format!("platform->{name} is NULL"));
        Ok(CPlatform {
            ctx: t.ctx,
            list_domains: t.list_domains.ok_or_else(|| need("list_domains"))?,
            physinfo: t.physinfo.ok_or_else(|| need("physinfo"))?,
            shadow_allocation_mib: t.shadow_allocation_mib,
            set_maxmem_kib: t.set_maxmem_kib.ok_or_else(|| need("set_maxmem_kib"))?,
            claim_pages: t.claim_pages,
            transaction_start: t
                .transaction_start
                .ok_or_else(|| need("transaction_start"))?,
            transaction_end: t.transaction_end.ok_or_else(|| need("transaction_end"))?,
            read: t.read.ok_or_else(|| need("read"))?,
            write: t.write.ok_or_else(|| need("write"))?,
            rm: t.rm.ok_or_else(|| need("rm"))?,
            directory: t.directory.ok_or_else(|| need("directory"))?,
            now: t.now.ok_or_else(|| need("now"))?,
            sleep: t.sleep.ok_or_else(|| need("sleep"))?,
            last_now: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// Calls a callback that fills a string list.
    fn strings(&self, name: &str, f: StringsFn, tx: u32, path: &str) -> crate::Result<Vec<String>> {
        let cpath = c_path(path)?;
        let mut sink = sqz_strings {
            items: Vec::new(),
            failure: None,
        };
        let rc = {
            let _live = LiveSink::new(&mut sink as *mut sqz_strings);
            let _in = InCallback::enter();
            // SAFETY: the caller's callback, with its ctx and a sink live for the call.
            unsafe { f(self.ctx, tx, cpath.as_ptr(), &mut sink) }
        };
        if let Some(why) = sink.failure {
            return Err(Error::Backend(format!(
                "platform callback {name}({path}): {why}"
            )));
        }
        if rc != 0 {
            return Err(failed(name, rc, &format!("({path})")));
        }
        Ok(sink.items)
    }
}

struct CTransaction<'a> {
    p: &'a CPlatform,
    tx: u32,
}

impl StoreOps for CTransaction<'_> {
    fn read(&mut self, path: &str) -> crate::Result<Option<String>> {
        let mut items = self.p.strings("read", self.p.read, self.tx, path)?;
        if items.len() > 1 {
            return Err(Error::Backend(format!(
                "platform callback read({path}) gave {} values, not one",
                items.len()
            )));
        }
        Ok(items.pop())
    }

    fn write(&mut self, path: &str, value: &str) -> crate::Result<()> {
        let (cpath, cvalue) = (c_path(path)?, c_path(value)?);
        let _in = InCallback::enter();
        // SAFETY: the caller's callback with its ctx and two strings live for the call.
        let rc = unsafe { (self.p.write)(self.p.ctx, self.tx, cpath.as_ptr(), cvalue.as_ptr()) };
        if rc != 0 {
            return Err(failed("write", rc, &format!("({path})")));
        }
        Ok(())
    }

    fn rm(&mut self, path: &str) -> crate::Result<()> {
        let cpath = c_path(path)?;
        let _in = InCallback::enter();
        // SAFETY: the caller's callback with its ctx and a string live for the call.
        let rc = unsafe { (self.p.rm)(self.p.ctx, self.tx, cpath.as_ptr()) };
        if rc != 0 {
            return Err(failed("rm", rc, &format!("({path})")));
        }
        Ok(())
    }

    fn directory(&mut self, path: &str) -> crate::Result<Vec<String>> {
        self.p.strings("directory", self.p.directory, self.tx, path)
    }
}

impl Store for CPlatform {
    fn transaction(
        &self,
        body: &mut dyn FnMut(&mut dyn StoreOps) -> crate::Result<()>,
    ) -> crate::Result<()> {
        for _ in 0..MAX_TRANSACTION_ATTEMPTS {
            let mut tx = 0u32;
            let rc = {
                let _in = InCallback::enter();
                // SAFETY: the caller's callback with its ctx and a local out-parameter.
                unsafe { (self.transaction_start)(self.ctx, &mut tx) }
            };
            if rc != 0 {
                return Err(failed("transaction_start", rc, ""));
            }
            let result = body(&mut CTransaction { p: self, tx });
            let abort = result.is_err();
            let rc = {
                let _in = InCallback::enter();
                // SAFETY: the caller's callback with its ctx.
                unsafe { (self.transaction_end)(self.ctx, tx, abort) }
            };
            result?;
            match rc {
                0 => return Ok(()),
                SQZ_PLATFORM_AGAIN => continue,
                rc => return Err(failed("transaction_end", rc, "")),
            }
        }
        Err(Error::Backend(format!(
            "store transaction conflicted {MAX_TRANSACTION_ATTEMPTS} times in a row"
        )))
    }

    fn watch(&self, path: &str) -> crate::Result<Box<dyn Watch>> {
        Ok(Box::new(CoarseWatch {
            path: path.to_string(),
        }))
    }
}

/// A C platform offers no watches: every poll reports "something under here may have changed",
/// which the [`Watch`] contract allows.
struct CoarseWatch {
    path: String,
}

impl Watch for CoarseWatch {
    fn poll(&mut self) -> crate::Result<Vec<String>> {
        Ok(vec![self.path.clone()])
    }
}

impl Hypervisor for CPlatform {
    fn domains(&self) -> crate::Result<Vec<DomainInfo>> {
        let mut sink = sqz_domain_list {
            domains: Vec::new(),
            failure: None,
        };
        let rc = {
            let _live = LiveSink::new(&mut sink as *mut sqz_domain_list);
            let _in = InCallback::enter();
            // SAFETY: the caller's callback with its ctx and a sink live for the call.
            unsafe { (self.list_domains)(self.ctx, &mut sink) }
        };
        if let Some(why) = sink.failure {
            return Err(Error::Backend(format!(
                "platform callback list_domains: {why}"
            )));
        }
        if rc != 0 {
            return Err(failed("list_domains", rc, ""));
        }
        Ok(sink.domains)
    }

    fn domain(&self, domid: DomId) -> crate::Result<Option<DomainInfo>> {
        Ok(self.domains()?.into_iter().find(|d| d.domid == domid))
    }

    fn physinfo(&self) -> crate::Result<PhysInfo> {
        let mut p = sqz_physinfo::default();
        let rc = {
            let _in = InCallback::enter();
            // SAFETY: the caller's callback with its ctx and a local out-parameter.
            unsafe { (self.physinfo)(self.ctx, &mut p) }
        };
        if rc != 0 {
            return Err(failed("physinfo", rc, ""));
        }
        Ok(PhysInfo {
            total_pages: p.total_pages,
            free_pages: p.free_pages,
            scrub_pages: p.scrub_pages,
            outstanding_pages: p.outstanding_pages,
        })
    }

    fn shadow_allocation_mib(&self, domid: DomId) -> crate::Result<u64> {
        let Some(f) = self.shadow_allocation_mib else {
            return Ok(0);
        };
        let mut mib = 0u64;
        let rc = {
            let _in = InCallback::enter();
            // SAFETY: the caller's callback with its ctx and a local out-parameter.
            unsafe { f(self.ctx, domid, &mut mib) }
        };
        if rc != 0 {
            return Err(failed(
                "shadow_allocation_mib",
                rc,
                &format!(" for domain {domid}"),
            ));
        }
        Ok(mib)
    }

    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> crate::Result<()> {
        let rc = {
            let _in = InCallback::enter();
            // SAFETY: the caller's callback with its ctx.
            unsafe { (self.set_maxmem_kib)(self.ctx, domid, kib) }
        };
        if rc != 0 {
            return Err(failed(
                "set_maxmem_kib",
                rc,
                &format!(" for domain {domid}"),
            ));
        }
        Ok(())
    }

    fn claim_pages(&self, domid: DomId, pages: u64) -> crate::Result<()> {
        let Some(f) = self.claim_pages else {
            return Err(Error::Unsupported(
                "the platform offers no claim_pages callback".into(),
            ));
        };
        let rc = {
            let _in = InCallback::enter();
            // SAFETY: the caller's callback with its ctx.
            unsafe { f(self.ctx, domid, pages) }
        };
        if rc != 0 {
            return Err(failed("claim_pages", rc, &format!(" for domain {domid}")));
        }
        Ok(())
    }
}

impl Clock for CPlatform {
    fn now(&self) -> f64 {
        let t = {
            let _in = InCallback::enter();
            // SAFETY: the caller's callback with its ctx.
            unsafe { (self.now)(self.ctx) }
        };
        let last = f64::from_bits(self.last_now.load(Ordering::Acquire));
        // The trait cannot report a failure; a bad or backward time keeps the last good one,
        // which at worst makes stuck-domain detection slower.
        if t.is_finite() && t >= last {
            self.last_now.store(t.to_bits(), Ordering::Release);
            t
        } else {
            last
        }
    }

    fn sleep(&self, seconds: f64) {
        let _in = InCallback::enter();
        // SAFETY: the caller's callback with its ctx.
        unsafe { (self.sleep)(self.ctx, seconds) }
    }
}

// ---------------------------------------------------------------------------------------------
// Service settings

/// Settings of a service (slush, lock file, where the boot-time free memory is recorded, the
/// squeezer's options). Opaque; created by `sqz_service_config_new`, released by
/// `sqz_service_config_free`. Wherever a `const sqz_service_config *` is taken, NULL means the
/// defaults; it is copied, so it may be changed or freed as soon as the call returns.
pub struct sqz_service_config {
    config: ServiceConfig,
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
    if IN_PLATFORM_CALLBACK.with(|c| c.get()) > 0 {
        return Err(invalid(
            "the service cannot be called from inside one of its platform or progress callbacks \
             (the host lock is held while they run)",
        ));
    }
    // SAFETY: forwarded from the caller.
    unsafe { Handle::with(service_handle(s), "service", |st| Ok(st.service.clone())) }
}

fn new_service(
    platform: Platform,
    config: *const sqz_service_config,
    out: *mut *mut sqz_service,
) -> Result<(), Failure> {
    // SAFETY: the callers pass NULL or a live config.
    let config = unsafe { config.as_ref() }
        .map(|c| c.config.clone())
        .unwrap_or_default();
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

/// Releases a service. NULL is a no-op. Calls running on other threads finish first (they hold
/// their own reference); the platform's `ctx` is not used once they have.
#[no_mangle]
pub unsafe extern "C" fn sqz_service_free(s: *mut sqz_service) {
    // SAFETY: the caller passes NULL or a service it owns and gives up.
    guard::value((), || unsafe { Handle::free(service_handle(s)) })
}

/// Starts a session for the service named `service_name` (1 to 128 characters from
/// `A-Z a-z 0-9 . _ : @ + -`); the session id to pass to the other calls is the name itself,
/// as in squeezed. Reservations that service made before and never transferred are dropped: a
/// restarted client has forgotten their ids. Errors: a NULL pointer or an invalid name →
/// `SQZ_ERR_INVALID_ARGUMENT`; a platform failure → `SQZ_ERR_BACKEND`.
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

/// Hands reservation `reservation_id` of `session` to domain `domid`, which must exist: it
/// becomes the domain's initial reservation and its maxmem. When the domain dies the
/// reservation is released. Errors: a NULL pointer, an invalid session, a negative domid or a
/// domain that does not exist → `SQZ_ERR_INVALID_ARGUMENT`; an id this session does not hold →
/// `SQZ_ERR_UNKNOWN_RESERVATION`.
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
