//! `sqz_platform`: the caller's own platform, as a table of callbacks (hypervisor, store,
//! clock), and the types its callbacks fill in.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CString};

use crate::model::{DomId, Kib};
use crate::platform::{
    Clock, DomainInfo, Hypervisor, PhysInfo, SteadyTime, Store, StoreOps, Watch,
};
use crate::Error;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::service::str_arg;

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
crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_domain_info`; smaller sizes are refused.
    DOMAIN_INFO_SIZE_V1 = sqz_domain_info [40] {
        domid @ 0, dying @ 4, shutdown @ 5, paused @ 6, hvm @ 7, tot_pages @ 8, max_pages @ 16,
        outstanding_pages @ 24, shared_pages @ 32,
    }
);

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

/// What a platform callback returns from `transaction_end` when the transaction conflicted with
/// another writer and must be run again (xenstore's `EAGAIN`). Any other non-zero value from a
/// platform callback is a failure.
pub const SQZ_PLATFORM_AGAIN: i32 = 11;

/// How many times a conflicting store transaction is retried before the call fails.
const MAX_TRANSACTION_ATTEMPTS: u32 = 100;

thread_local! {
    /// Sinks whose callback is running on this thread.
    static LIVE_SINKS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// Platform callbacks running on this thread: the service must not be re-entered from one
    /// (its host lock is held while they run).
    static IN_PLATFORM_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

/// Whether a platform callback is running on this thread.
pub(crate) fn in_platform_callback() -> bool {
    IN_PLATFORM_CALLBACK.with(|c| c.get()) > 0
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
    /// Seconds since an arbitrary origin, never going backwards (a value that is not finite is
    /// ignored; a step back counts as no time passing, and time carries on from there).
    /// Required.
    pub now: Option<unsafe extern "C" fn(ctx: *mut c_void) -> f64>,
    /// Lets `seconds` pass. Required.
    pub sleep: Option<unsafe extern "C" fn(ctx: *mut c_void, seconds: f64)>,
}

crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_platform`; smaller sizes are refused.
    PLATFORM_SIZE_V1 = sqz_platform [120] {
        struct_size @ 0, ctx @ 8, list_domains @ 16, physinfo @ 24, shadow_allocation_mib @ 32,
        set_maxmem_kib @ 40, claim_pages @ 48, transaction_start @ 56, transaction_end @ 64,
        read @ 72, write @ 80, rm @ 88, directory @ 96, now @ 104, sleep @ 112,
    }
);

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
pub(crate) struct CPlatform {
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
    /// The caller's clock made steady (see [`SteadyTime`]).
    steady: parking_lot::Mutex<SteadyTime>,
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
    pub(crate) unsafe fn from_ptr(p: *const sqz_platform) -> Result<CPlatform, Failure> {
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
            steady: parking_lot::Mutex::new(SteadyTime::new()),
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
        // The trait cannot report a failure: a bad reading is ignored, and a step back counts
        // as no time passing (keeping the last reading would freeze time for the whole step).
        self.steady.lock().read(t)
    }

    fn sleep(&self, seconds: f64) {
        let _in = InCallback::enter();
        // SAFETY: the caller's callback with its ctx.
        unsafe { (self.sleep)(self.ctx, seconds) }
    }
}
