//! `sqz_io`: the caller's platform as a table of callbacks, and the trampoline that makes it an
//! [`Io`] for the driver loop.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::driver::Io;
use crate::model::{Action, DomId, Domain, Host, Kib};
use crate::Error;

use super::error::{clear_last_error, invalid, last_error_text, sqz_status, Failure};
use super::guard::{self, panic_message};

/// One domain as the caller reports it. The field order is fixed; new fields are appended, and
/// functions taking a `sqz_domain` also take `sizeof(sqz_domain)` as the caller knows it.
/// All sizes are KiB.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct sqz_domain {
    /// Xen domain id (not negative).
    pub domid: i32,
    /// The guest runs a balloon driver that may be asked to move.
    pub can_balloon: bool,
    /// Lowest balloon target the policy may set (`memory/dynamic-min`).
    pub dynamic_min_kib: i64,
    /// Current balloon target (`memory/target`).
    pub target_kib: i64,
    /// Highest balloon target the policy may set (`memory/dynamic-max`).
    pub dynamic_max_kib: i64,
    /// Memory the domain really uses, with its calibrated offset removed.
    pub memory_actual_kib: i64,
    /// Xen's hard allocation limit (maxmem).
    pub memory_max_kib: i64,
    /// How far from the target still counts as having reached it (squeezed uses 4).
    pub inaccuracy_kib: i64,
}

/// `sqz_domain` as read from C: `can_balloon` as a byte, so a caller's stray value other than
/// 0 or 1 is read as "true" instead of being undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawDomain {
    domid: i32,
    can_balloon: u8,
    dynamic_min_kib: i64,
    target_kib: i64,
    dynamic_max_kib: i64,
    memory_actual_kib: i64,
    memory_max_kib: i64,
    inaccuracy_kib: i64,
}

const _: () = assert!(std::mem::size_of::<RawDomain>() == std::mem::size_of::<sqz_domain>());
const _: () = assert!(std::mem::align_of::<RawDomain>() == std::mem::align_of::<sqz_domain>());

crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_domain` layout; smaller sizes are refused.
    pub(crate) DOMAIN_SIZE_V1 = sqz_domain [56] {
        domid @ 0, can_balloon @ 4, dynamic_min_kib @ 8, target_kib @ 16, dynamic_max_kib @ 24,
        memory_actual_kib @ 32, memory_max_kib @ 40, inaccuracy_kib @ 48,
    }
);
crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_io` layout; smaller sizes are refused.
    pub(crate) IO_SIZE_V1 = sqz_io [72] {
        struct_size @ 0, ctx @ 8, make_host @ 16, set_maxmem @ 24, execute_action @ 32,
        wait @ 40, now @ 48, target_host_free_mem_kib @ 56, free_memory_tolerance_kib @ 64,
    }
);

impl From<Domain> for sqz_domain {
    fn from(d: Domain) -> Self {
        sqz_domain {
            domid: d.domid,
            can_balloon: d.can_balloon,
            dynamic_min_kib: d.dynamic_min_kib,
            target_kib: d.target_kib,
            dynamic_max_kib: d.dynamic_max_kib,
            memory_actual_kib: d.memory_actual_kib,
            memory_max_kib: d.memory_max_kib,
            inaccuracy_kib: d.inaccuracy_kib,
        }
    }
}

fn aligned<T>(p: *const T) -> bool {
    (p as usize).is_multiple_of(std::mem::align_of::<T>())
}

/// Reads and validates the `index`-th domain of an array whose elements are `domain_size` bytes.
///
/// # Safety
/// `base` is NULL or points to at least `index + 1` elements of `domain_size` bytes.
pub(crate) unsafe fn read_domain(
    base: *const sqz_domain,
    index: usize,
    domain_size: usize,
) -> Result<Domain, Failure> {
    if base.is_null() {
        return Err(invalid("domain pointer is NULL"));
    }
    check_domain_size(domain_size)?;
    // SAFETY: the caller promises `index + 1` elements of `domain_size` bytes each.
    let p = unsafe { base.cast::<u8>().add(index * domain_size) }.cast::<RawDomain>();
    if !aligned(p) {
        return Err(invalid("domain pointer is not aligned for sqz_domain"));
    }
    // SAFETY: aligned, and the caller's element holds at least DOMAIN_SIZE_V1 bytes.
    let raw = unsafe { p.read() };
    let d = Domain::new(
        raw.domid,
        raw.can_balloon != 0,
        raw.dynamic_min_kib,
        raw.target_kib,
        raw.dynamic_max_kib,
        raw.memory_actual_kib,
        raw.memory_max_kib,
        raw.inaccuracy_kib,
    );
    d.validate()?;
    Ok(d)
}

/// Refuses a `domain_size` smaller than the first published layout.
pub(crate) fn check_domain_size(domain_size: usize) -> Result<(), Failure> {
    if domain_size < DOMAIN_SIZE_V1 {
        return Err(invalid(format!(
            "domain_size {domain_size} is smaller than sizeof(sqz_domain) = {DOMAIN_SIZE_V1}"
        )));
    }
    Ok(())
}

/// A host snapshot under construction, handed to the `make_host` callback. Opaque, and valid
/// only during the `make_host` call it was passed to: the library refuses it afterwards.
pub struct sqz_host_builder {
    domains: Vec<Domain>,
    seen: HashSet<DomId>,
    free_mem_kib: Option<Kib>,
    /// The first builder call that failed; the snapshot is then unusable.
    failure: Option<String>,
}

thread_local! {
    /// Builders whose `make_host` call is running on this thread (a stack: callbacks may
    /// re-enter the library and build another snapshot).
    static LIVE_BUILDERS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the builder behind `b` if it is live on this thread, recording a failure in it.
///
/// # Safety
/// `b` is any pointer; it is dereferenced only if it is a live builder.
unsafe fn with_builder(
    b: *mut sqz_host_builder,
    call: &str,
    f: impl FnOnce(&mut sqz_host_builder) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if b.is_null() {
        return Err(invalid(format!("{call}: builder is NULL")));
    }
    let live = LIVE_BUILDERS.with(|l| l.borrow().contains(&(b as usize)));
    if !live {
        return Err(invalid(format!(
            "{call}: builder is not live (it is valid only inside the make_host callback it was \
             passed to, on that thread)"
        )));
    }
    // SAFETY: live builders are owned by a make_host call running below us on this thread.
    let builder = unsafe { &mut *b };
    let result = f(builder);
    if let Err(e) = &result {
        builder
            .failure
            .get_or_insert_with(|| format!("{call}: {}", e.message()));
    }
    result
}

/// Sets the host's free memory in KiB, net of reservations (may be negative when more has been
/// promised than is free, down to -2^50). Must be called once in every `make_host`.
/// Errors: `b` NULL or not live → `SQZ_ERR_INVALID_ARGUMENT`; a value beyond ±2^50 →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`. A failed builder call makes the whole operation end with
/// `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_host_builder_set_free_mem(
    b: *mut sqz_host_builder,
    free_mem_kib: i64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: with_builder dereferences only live builders.
        unsafe {
            with_builder(b, "sqz_host_builder_set_free_mem", |b| {
                // Host::new applies the same bound; checking here names the failing call.
                if !(-crate::model::MAX_KIB..=crate::model::MAX_KIB).contains(&free_mem_kib) {
                    return Err(Error::InvalidMemoryValue(format!(
                        "host free memory {free_mem_kib} KiB is outside ±2^50 KiB"
                    ))
                    .into());
                }
                b.free_mem_kib = Some(free_mem_kib);
                Ok(())
            })
        }
    })
}

/// Adds one domain to the snapshot. `d` is copied; `domain_size` is `sizeof(sqz_domain)` as the
/// caller knows it. Errors: `b` or `d` NULL, `b` not live, `domain_size` smaller than the
/// first published layout, a negative domid, or a domid already added →
/// `SQZ_ERR_INVALID_ARGUMENT`; a negative size or one above 2^50 KiB →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`. A failed builder call makes the whole operation end with
/// `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_host_builder_add_domain(
    b: *mut sqz_host_builder,
    d: *const sqz_domain,
    domain_size: usize,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: with_builder dereferences only live builders; `d` is read by read_domain,
        // which checks NULL, size and alignment.
        unsafe {
            with_builder(b, "sqz_host_builder_add_domain", |b| {
                let dom = read_domain(d, 0, domain_size)?;
                if !b.seen.insert(dom.domid) {
                    return Err(invalid(format!(
                        "domain {} appears twice in one host snapshot",
                        dom.domid
                    )));
                }
                b.domains.push(dom);
                Ok(())
            })
        }
    })
}

/// Sets the weight of a domain already added to the snapshot in the proportional policy: its
/// share of the memory handed out is proportional to weight × dynamic range, within that range.
/// A domain whose weight is not set weighs 1; when all weights are equal the policy is
/// squeezed's to the KiB. Errors: `b` NULL or not live, a domid not added yet, or a weight
/// that is not a number between 0.001 and 1000 (zero, negative, NaN, infinite, absurd) →
/// `SQZ_ERR_INVALID_ARGUMENT`. A failed builder call makes the whole operation end with
/// `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_host_builder_set_weight(
    b: *mut sqz_host_builder,
    domid: i32,
    weight: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: with_builder dereferences only live builders.
        unsafe {
            with_builder(b, "sqz_host_builder_set_weight", |b| {
                let d = b
                    .domains
                    .iter_mut()
                    .find(|d| d.domid == domid)
                    .ok_or_else(|| {
                        invalid(format!(
                            "domain {domid} has not been added to this snapshot"
                        ))
                    })?;
                *d = d.with_weight(weight)?;
                Ok(())
            })
        }
    })
}

/// Asks the caller whether the host's free memory (KiB) is enough; `ctx` is the `ok_ctx` given
/// with it. Called on the calling thread, only while the call it was passed to runs.
pub type sqz_success_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, host_free_mem_kib: i64) -> bool>;

/// The caller's platform: squeezed's io record as callbacks. Every callback is required and
/// receives `ctx`. Callbacks run on the thread that called into the library, one at a time,
/// only during that call, and with no library lock held: they may call back into the library,
/// except with a handle the running call is using (refused with `SQZ_ERR_INVALID_ARGUMENT`).
/// The library copies this struct when a call starts.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sqz_io {
    /// `sizeof(sqz_io)` as the caller knows it; smaller than the first published layout is
    /// `SQZ_ERR_INVALID_ARGUMENT`. New fields will only be appended.
    pub struct_size: u32,
    /// Passed to every callback, never dereferenced by the library.
    pub ctx: *mut c_void,
    /// Fills `b` with a fresh snapshot of the host: `sqz_host_builder_set_free_mem` once and
    /// `sqz_host_builder_add_domain` per domain. Returns 0 on success.
    pub make_host: Option<unsafe extern "C" fn(ctx: *mut c_void, b: *mut sqz_host_builder) -> i32>,
    /// Sets Xen's maxmem of `domid` to `kib`. Returns 0 on success.
    pub set_maxmem: Option<unsafe extern "C" fn(ctx: *mut c_void, domid: i32, kib: i64) -> i32>,
    /// Sets the balloon target of `domid` (raising maxmem first when the target is above it).
    /// Returns 0 on success.
    pub execute_action:
        Option<unsafe extern "C" fn(ctx: *mut c_void, domid: i32, new_target_kib: i64) -> i32>,
    /// Lets `seconds` pass (sleeps, or advances a simulated clock).
    pub wait: Option<unsafe extern "C" fn(ctx: *mut c_void, seconds: f64)>,
    /// The current time in seconds: finite, not negative, never going backwards. Monotonic
    /// clock time is what a real platform should return.
    pub now: Option<unsafe extern "C" fn(ctx: *mut c_void) -> f64>,
    /// Memory the host keeps free when balanced (the slush fund), in KiB.
    pub target_host_free_mem_kib: i64,
    /// How close to the slush counts as balanced, in KiB.
    pub free_memory_tolerance_kib: i64,
}

type MakeHostFn = unsafe extern "C" fn(*mut c_void, *mut sqz_host_builder) -> i32;
type DomainFn = unsafe extern "C" fn(*mut c_void, i32, i64) -> i32;
type WaitFn = unsafe extern "C" fn(*mut c_void, f64);
type NowFn = unsafe extern "C" fn(*mut c_void) -> f64;

/// The caller's `sqz_io` as an [`Io`]: every callback failure, bad value or panic becomes an
/// [`Error::Backend`] naming the callback (and the domain, where there is one).
pub(crate) struct CallbackIo {
    ctx: *mut c_void,
    make_host: MakeHostFn,
    set_maxmem: DomainFn,
    execute_action: DomainFn,
    wait: WaitFn,
    now: NowFn,
    target_host_free_mem_kib: Kib,
    free_memory_tolerance_kib: Kib,
    last_now: Option<f64>,
}

impl CallbackIo {
    /// Copies and checks the caller's table.
    ///
    /// # Safety
    /// `io` is NULL or points to a `sqz_io` of at least the size its `struct_size` claims.
    pub(crate) unsafe fn from_ptr(io: *const sqz_io) -> Result<CallbackIo, Failure> {
        if io.is_null() {
            return Err(invalid("io is NULL"));
        }
        if !aligned(io) {
            return Err(invalid("io is not aligned for sqz_io"));
        }
        // SAFETY: not NULL and aligned; struct_size is the first field of every layout.
        let size = unsafe { std::ptr::addr_of!((*io).struct_size).read() } as usize;
        if size < IO_SIZE_V1 {
            return Err(invalid(format!(
                "io->struct_size {size} is smaller than sizeof(sqz_io) = {IO_SIZE_V1}"
            )));
        }
        // SAFETY: the caller's struct holds at least the first published layout.
        let t = unsafe { io.read() };
        let need = |name: &str| invalid(format!("io->{name} is NULL"));
        Ok(CallbackIo {
            ctx: t.ctx,
            make_host: t.make_host.ok_or_else(|| need("make_host"))?,
            set_maxmem: t.set_maxmem.ok_or_else(|| need("set_maxmem"))?,
            execute_action: t.execute_action.ok_or_else(|| need("execute_action"))?,
            wait: t.wait.ok_or_else(|| need("wait"))?,
            now: t.now.ok_or_else(|| need("now"))?,
            target_host_free_mem_kib: t.target_host_free_mem_kib,
            free_memory_tolerance_kib: t.free_memory_tolerance_kib,
            last_now: None,
        })
    }

    fn domain_call(
        &mut self,
        name: &str,
        f: DomainFn,
        domid: DomId,
        kib: Kib,
    ) -> crate::Result<()> {
        let ctx = self.ctx;
        let rc = callback(name, Some(domid), || {
            clear_last_error();
            // SAFETY: a non-NULL callback from the caller's table, with the caller's ctx.
            unsafe { f(ctx, domid, kib) }
        })?;
        if rc != 0 {
            return Err(Error::Backend(format!(
                "callback {name} failed for domain {domid} (new value {kib} KiB): returned \
                 {rc}{}",
                cause()
            )));
        }
        Ok(())
    }
}

/// Runs the Rust side of one callback, turning a panic into a backend error naming it.
fn callback<R>(name: &str, domid: Option<DomId>, f: impl FnOnce() -> R) -> crate::Result<R> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let dom = domid
            .map(|d| format!(" for domain {d}"))
            .unwrap_or_default();
        Error::Backend(format!(
            "callback {name}{dom} panicked: {}",
            panic_message(&*p)
        ))
    })
}

/// ": <message>" when the callback left an error of its own on this thread (it called into the
/// library and that failed), so the final message says why.
fn cause() -> String {
    last_error_text()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl Io for CallbackIo {
    fn make_host(&mut self) -> crate::Result<Host> {
        let (ctx, f) = (self.ctx, self.make_host);
        let mut builder = Box::new(sqz_host_builder {
            domains: Vec::new(),
            seen: HashSet::new(),
            free_mem_kib: None,
            failure: None,
        });
        let ptr: *mut sqz_host_builder = &mut *builder;
        LIVE_BUILDERS.with(|l| l.borrow_mut().push(ptr as usize));
        let rc = callback("make_host", None, || {
            clear_last_error();
            // SAFETY: a non-NULL callback with the caller's ctx; the builder outlives the call.
            unsafe { f(ctx, ptr) }
        });
        LIVE_BUILDERS.with(|l| l.borrow_mut().retain(|&p| p != ptr as usize));
        let rc = rc?;
        if rc != 0 {
            return Err(Error::Backend(format!(
                "callback make_host failed: returned {rc}{}",
                cause()
            )));
        }
        if let Some(f) = builder.failure.take() {
            return Err(Error::Backend(format!(
                "callback make_host: a builder call failed: {f}"
            )));
        }
        let free = builder.free_mem_kib.ok_or_else(|| {
            Error::Backend(
                "callback make_host returned 0 without calling sqz_host_builder_set_free_mem"
                    .into(),
            )
        })?;
        Host::new(std::mem::take(&mut builder.domains), free)
            .map_err(|e| Error::Backend(format!("callback make_host: {e}")))
    }

    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> crate::Result<()> {
        self.domain_call("set_maxmem", self.set_maxmem, domid, kib)
    }

    fn execute_action(&mut self, action: Action) -> crate::Result<()> {
        self.domain_call(
            "execute_action",
            self.execute_action,
            action.domid,
            action.new_target_kib,
        )
    }

    fn wait(&mut self, seconds: f64) -> crate::Result<()> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(Error::Backend(format!(
                "refusing to call wait with {seconds} seconds"
            )));
        }
        let (ctx, f) = (self.ctx, self.wait);
        callback("wait", None, || {
            // SAFETY: a non-NULL callback with the caller's ctx.
            unsafe { f(ctx, seconds) }
        })
    }

    fn now(&mut self) -> crate::Result<f64> {
        let (ctx, f) = (self.ctx, self.now);
        let t = callback("now", None, || {
            clear_last_error();
            // SAFETY: a non-NULL callback with the caller's ctx.
            unsafe { f(ctx) }
        })?;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::Backend(format!(
                "callback now returned an invalid time ({t}){}",
                cause()
            )));
        }
        if let Some(last) = self.last_now {
            if t < last {
                return Err(Error::Backend(format!(
                    "callback now went backwards (from {last} to {t})"
                )));
            }
        }
        self.last_now = Some(t);
        Ok(t)
    }

    fn target_host_free_mem_kib(&self) -> Kib {
        self.target_host_free_mem_kib
    }

    fn free_memory_tolerance_kib(&self) -> Kib {
        self.free_memory_tolerance_kib
    }
}

/// The caller's success test as a closure: NULL means "at least `required_kib` free".
pub(crate) fn success_closure(
    ok: sqz_success_fn,
    ok_ctx: *mut c_void,
    required_kib: Kib,
) -> impl FnMut(Kib) -> bool {
    move |free| match ok {
        // SAFETY: a non-NULL callback with the caller's ctx. A panic cannot come out of a C
        // function; the whole call runs inside the entry point's guard regardless.
        Some(f) => unsafe { f(ok_ctx, free) },
        None => free >= required_kib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_rust_side_of_a_callback_is_a_backend_error_naming_it() {
        let r: crate::Result<()> = callback("set_maxmem", Some(3), || panic!("bad conversion"));
        match r {
            Err(Error::Backend(m)) => {
                assert!(
                    m.contains("set_maxmem")
                        && m.contains("domain 3")
                        && m.contains("bad conversion"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stray_can_balloon_byte_reads_as_true_and_sizes_pass_intact() {
        let mut raw = [0u64; 7];
        let p = raw.as_mut_ptr().cast::<u8>();
        // SAFETY: raw is 56 bytes, 8-aligned, the size of sqz_domain.
        let d = unsafe {
            p.cast::<i32>().write(7);
            p.add(4).write(0x5a);
            for (i, v) in [1i64 << 33, 3 << 33, 4 << 33, 3 << 33, 3 << 33, 4]
                .iter()
                .enumerate()
            {
                p.add(8 + 8 * i).cast::<i64>().write(*v);
            }
            read_domain(p.cast(), 0, 56).unwrap()
        };
        assert!(d.can_balloon);
        assert_eq!(d.domid, 7);
        assert_eq!(d.dynamic_max_kib, 4 << 33);
        // SAFETY: as above; a size too small is refused before any read.
        let short = unsafe { read_domain(p.cast(), 0, 55) };
        assert_eq!(short.unwrap_err().status(), 1);
    }
}
