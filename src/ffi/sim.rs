//! `sqz_sim`: the deterministic simulated host, so C and Python tests can build hosts without
//! writing callbacks. Drive it through its `sqz_io` view (`sqz_sim_io`, usable with any
//! `sqz_*` driver or squeezer function) or through the `sqz_sim_*` driver shortcuts.

use std::ffi::c_void;

use crate::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use crate::driver::Io;
use crate::model::{kib, Action, MAX_KIB};
use crate::Error;

use super::error::{invalid, set_last_error, sqz_status, Failure, SQZ_OK};
use super::guard;
use super::handle::Handle;
use super::io::{
    check_domain_size, read_domain, sqz_domain, sqz_host_builder, sqz_host_builder_add_domain,
    sqz_host_builder_set_free_mem, sqz_io, sqz_success_fn, success_closure, CallbackIo,
    DOMAIN_SIZE_V1, IO_SIZE_V1,
};
use super::ops::{need_out, write_out};
use super::options::{options_or_default, sqz_options};

/// A simulated host. Opaque; created by `sqz_sim_new`, released by `sqz_sim_free`. One call at
/// a time: a use while another call is using it (from another thread) is refused with
/// `SQZ_ERR_INVALID_ARGUMENT`.
pub struct sqz_sim {
    _opaque: [u8; 0],
}

/// Settings of a simulated host.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_sim_config {
    /// `sizeof(sqz_sim_config)` as the caller knows it.
    pub struct_size: u32,
    /// Host free memory at the start, in KiB.
    pub free_mem_kib: i64,
    /// The slush fund the host keeps free when balanced, in KiB (the io view's
    /// `target_host_free_mem_kib`).
    pub target_host_free_mem_kib: i64,
    /// How close to the slush counts as balanced, in KiB.
    pub free_memory_tolerance_kib: i64,
    /// 0: each wait advances the clock by the seconds asked for. Above 0: each wait advances by
    /// this fixed tick whatever was asked (squeezed's simulator ticks 0.1 s).
    pub fixed_tick_s: f64,
    /// Simulated seconds after which waits fail, so no scenario can run forever. 0 means the
    /// default of 3600 s; INFINITY means no limit.
    pub time_limit_s: f64,
}

/// How a simulated balloon driver behaves (`sqz_behaviour.kind`).
pub type sqz_behaviour_kind = i32;
/// Moves toward its target at `rate_kib_per_s`, stopping within its inaccuracy.
pub const SQZ_BEHAVIOUR_IDEAL: sqz_behaviour_kind = 0;
/// Like ideal, but never goes below `limit_kib`.
pub const SQZ_BEHAVIOUR_HIDDEN_FLOOR: sqz_behaviour_kind = 1;
/// Like ideal, but stays below `limit_kib`.
pub const SQZ_BEHAVIOUR_HIDDEN_CEILING: sqz_behaviour_kind = 2;
/// Never moves.
pub const SQZ_BEHAVIOUR_STUCK: sqz_behaviour_kind = 3;
/// Works for `seconds`, stalls for `seconds`, and so on.
pub const SQZ_BEHAVIOUR_INTERMITTENTLY_STUCK: sqz_behaviour_kind = 4;
/// Starts moving `seconds` after each target change, then at `rate_kib_per_s`.
pub const SQZ_BEHAVIOUR_SLUGGISH: sqz_behaviour_kind = 5;
/// No balloon driver: `can_balloon` is forced false and targets are never set.
pub const SQZ_BEHAVIOUR_NO_BALLOON_DRIVER: sqz_behaviour_kind = 6;
/// `sqz_behaviour.kind`: moves `limit_kib` toward its target once every `seconds`: alive, but
/// far too slow to be useful.
pub const SQZ_BEHAVIOUR_TRICKLE: sqz_behaviour_kind = 7;

/// A simulated balloon driver: `kind` plus the parameters it uses (others are ignored).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sqz_behaviour {
    /// One of `SQZ_BEHAVIOUR_*`.
    pub kind: sqz_behaviour_kind,
    /// Balloon speed in KiB per second (ideal, hidden floor/ceiling, intermittent, sluggish).
    pub rate_kib_per_s: i64,
    /// The hidden floor or ceiling, or the trickle's step, in KiB.
    pub limit_kib: i64,
    /// The working/stalled period (intermittent, above 0), the reaction delay (sluggish) or
    /// the time between steps (trickle, above 0).
    pub seconds: f64,
}

/// What the algorithm asked of a simulated host so far.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct sqz_sim_counters {
    /// Host snapshots taken.
    pub make_host: u64,
    /// Targets set (`execute_action` calls).
    pub actions: u64,
    /// Actions and maxmem settings that changed a target.
    pub target_changes: u64,
    /// `set_maxmem` calls.
    pub set_maxmem: u64,
    /// Waits.
    pub waits: u64,
}

/// What a `sqz_sim` holds.
pub(crate) struct SimState {
    sim: Simulator,
    /// A failure of the io view's `wait`, which has no way to report it: the next `now` or
    /// `make_host` reports it instead.
    pending: Option<String>,
}

impl super::handle::Tagged for SimState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZm");
}

fn handle(s: *mut sqz_sim) -> *mut Handle<SimState> {
    s.cast()
}

/// Runs `f` on the simulator behind `s`.
///
/// # Safety
/// `s` is NULL or a live simulator.
unsafe fn with_sim<R>(
    s: *mut sqz_sim,
    f: impl FnOnce(&mut SimState) -> Result<R, Failure>,
) -> Result<R, Failure> {
    // SAFETY: forwarded from the caller.
    unsafe { Handle::with(handle(s), "sim", f) }
}

fn seconds_arg(name: &str, s: f64) -> Result<f64, Failure> {
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err(invalid(format!(
            "{name} must be finite and not negative, not {s}"
        )))
    }
}

crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_sim_config`; smaller sizes are refused.
    SIM_CONFIG_SIZE_V1 = sqz_sim_config [48] {
        struct_size @ 0, free_mem_kib @ 8, target_host_free_mem_kib @ 16,
        free_memory_tolerance_kib @ 24, fixed_tick_s @ 32, time_limit_s @ 40,
    }
);

pub(crate) fn behaviour(b: &sqz_behaviour) -> Result<Behaviour, Failure> {
    let rate = || kib::check_size("rate_kib_per_s", b.rate_kib_per_s).map_err(Failure::from);
    let limit = || kib::check_size("limit_kib", b.limit_kib).map_err(Failure::from);
    Ok(match b.kind {
        SQZ_BEHAVIOUR_IDEAL => Behaviour::Ideal {
            rate_kib_per_s: rate()?,
        },
        SQZ_BEHAVIOUR_HIDDEN_FLOOR => Behaviour::HiddenFloor {
            rate_kib_per_s: rate()?,
            floor_kib: limit()?,
        },
        SQZ_BEHAVIOUR_HIDDEN_CEILING => Behaviour::HiddenCeiling {
            rate_kib_per_s: rate()?,
            ceiling_kib: limit()?,
        },
        SQZ_BEHAVIOUR_STUCK => Behaviour::Stuck,
        SQZ_BEHAVIOUR_INTERMITTENTLY_STUCK => {
            let period_s = seconds_arg("period", b.seconds)?;
            if period_s == 0.0 {
                return Err(invalid(
                    "an intermittently stuck guest needs a period above 0 s",
                ));
            }
            Behaviour::IntermittentlyStuck {
                rate_kib_per_s: rate()?,
                period_s,
            }
        }
        SQZ_BEHAVIOUR_SLUGGISH => Behaviour::Sluggish {
            rate_kib_per_s: rate()?,
            delay_s: seconds_arg("delay", b.seconds)?,
        },
        SQZ_BEHAVIOUR_NO_BALLOON_DRIVER => Behaviour::NoBalloonDriver,
        SQZ_BEHAVIOUR_TRICKLE => {
            let period_s = seconds_arg("period", b.seconds)?;
            if period_s == 0.0 {
                return Err(invalid("a trickling guest needs a period above 0 s"));
            }
            Behaviour::Trickle {
                chunk_kib: limit()?,
                period_s,
            }
        }
        k => return Err(invalid(format!("unknown behaviour kind {k}"))),
    })
}

/// Creates a simulated host from `*config` and stores it in `*out`; the caller releases it with
/// `sqz_sim_free`. Errors: `config` or `out` NULL, a `struct_size` too small, a negative or
/// non-finite tick or time limit → `SQZ_ERR_INVALID_ARGUMENT`; a bad memory value →
/// `SQZ_ERR_INVALID_MEMORY_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_new(
    config: *const sqz_sim_config,
    out: *mut *mut sqz_sim,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a valid config.
        let c = unsafe { config.as_ref() }.ok_or_else(|| invalid("config is NULL"))?;
        let min = SIM_CONFIG_SIZE_V1;
        if (c.struct_size as usize) < min {
            return Err(invalid(format!(
                "config->struct_size {} is smaller than sizeof(sqz_sim_config) = {min}",
                c.struct_size
            )));
        }
        if !(-MAX_KIB..=MAX_KIB).contains(&c.free_mem_kib) {
            return Err(Error::InvalidMemoryValue(format!(
                "free_mem_kib {} is outside ±2^50 KiB",
                c.free_mem_kib
            ))
            .into());
        }
        kib::check_size("target_host_free_mem_kib", c.target_host_free_mem_kib)?;
        kib::check_size("free_memory_tolerance_kib", c.free_memory_tolerance_kib)?;
        let tick = seconds_arg("fixed_tick_s", c.fixed_tick_s)?;
        let limit = if c.time_limit_s == f64::INFINITY {
            None
        } else if c.time_limit_s == 0.0 {
            SimConfig::default().time_limit_s
        } else {
            Some(seconds_arg("time_limit_s", c.time_limit_s)?)
        };
        let sim = Simulator::new(SimConfig {
            free_mem_kib: c.free_mem_kib,
            target_host_free_mem_kib: c.target_host_free_mem_kib,
            free_memory_tolerance_kib: c.free_memory_tolerance_kib,
            clock: if tick > 0.0 {
                ClockMode::FixedTick(tick)
            } else {
                ClockMode::FollowWait
            },
            time_limit_s: limit,
            // Long runs would grow the trace without bound; C callers query state instead.
            record_trace: false,
        });
        let h = Handle::into_raw(SimState { sim, pending: None });
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", h.cast::<sqz_sim>()) }
    })
}

/// Releases a simulated host. NULL is a no-op. Any `sqz_io` view of it becomes invalid.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_free(s: *mut sqz_sim) {
    // SAFETY: the caller passes NULL or a simulator it owns and gives up.
    guard::value((), || unsafe { Handle::free(handle(s)) })
}

/// Adds a guest (`*d`, copied; `domain_size` = `sizeof(sqz_domain)`) whose balloon driver
/// behaves as `*b`. Errors: a NULL pointer, a size too small, a duplicate or negative domid, an
/// unknown kind or a bad period/delay → `SQZ_ERR_INVALID_ARGUMENT`; a bad size, rate or limit
/// → `SQZ_ERR_INVALID_MEMORY_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_add_guest(
    s: *mut sqz_sim,
    d: *const sqz_domain,
    domain_size: usize,
    b: *const sqz_behaviour,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: read_domain checks NULL, size and alignment of the caller's domain.
        let dom = unsafe { read_domain(d, 0, domain_size) }?;
        // SAFETY: the caller passes NULL or a valid behaviour.
        let b = unsafe { b.as_ref() }.ok_or_else(|| invalid("behaviour is NULL"))?;
        let behaviour = behaviour(b)?;
        // SAFETY: the caller passes NULL or a live simulator.
        unsafe { with_sim(s, |st| Ok(st.sim.add_guest(dom, behaviour)?)) }
    })
}

/// Removes a guest, as if it was destroyed: its memory returns to the host. Errors: `s` NULL or
/// an unknown domid → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_remove_guest(s: *mut sqz_sim, domid: i32) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live simulator.
        unsafe {
            with_sim(s, |st| {
                if st.sim.guest(domid).is_none() {
                    return Err(invalid(format!("no simulated guest has domid {domid}")));
                }
                st.sim.remove_guest(domid)?;
                Ok(())
            })
        }
    })
}

/// Changes host free memory by `delta_kib` behind the algorithm's back (a domain was built, or
/// something else allocated). Errors: `s` NULL → `SQZ_ERR_INVALID_ARGUMENT`; a result beyond
/// ±2^50 KiB → `SQZ_ERR_INVALID_MEMORY_VALUE`, nothing changed.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_adjust_free_mem(s: *mut sqz_sim, delta_kib: i64) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live simulator.
        unsafe {
            with_sim(s, |st| {
                let new = kib::add(st.sim.free_mem_kib(), delta_kib, "adjusted free memory")?;
                if !(-MAX_KIB..=MAX_KIB).contains(&new) {
                    return Err(Error::InvalidMemoryValue(format!(
                        "free memory would become {new} KiB, outside ±2^50 KiB"
                    ))
                    .into());
                }
                st.sim.adjust_free_mem(delta_kib);
                Ok(())
            })
        }
    })
}

/// Lets `seconds` of simulated time pass, moving every guest. Errors: `s` NULL, `seconds` NaN,
/// infinite or negative → `SQZ_ERR_INVALID_ARGUMENT`; a safety rule broken by the algorithm
/// (a guest allocating memory the host does not have) → `SQZ_ERR_BACKEND`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_advance(s: *mut sqz_sim, seconds: f64) -> sqz_status {
    guard::status(|| {
        let seconds = seconds_arg("seconds", seconds)?;
        // SAFETY: the caller passes NULL or a live simulator.
        unsafe { with_sim(s, |st| Ok(st.sim.advance(seconds)?)) }
    })
}

/// Stores the host's free memory in KiB in `*out`. Errors: a NULL pointer →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_free_mem(s: *mut sqz_sim, out: *mut i64) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live simulator; `out` is not NULL.
        unsafe {
            let v = with_sim(s, |st| Ok(st.sim.free_mem_kib()))?;
            write_out(out, "out", v)
        }
    })
}

/// Stores the simulated time in seconds in `*out`. Errors: a NULL pointer →
/// `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_time(s: *mut sqz_sim, out: *mut f64) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live simulator; `out` is not NULL.
        unsafe {
            let v = with_sim(s, |st| Ok(st.sim.time()))?;
            write_out(out, "out", v)
        }
    })
}

/// Copies guest `domid` as the algorithm would see it now into `*out`, which holds
/// `domain_size` bytes (`sizeof(sqz_domain)`; only the fields this version knows are written).
/// Errors: a NULL pointer, a size too small or an unknown domid → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_guest(
    s: *mut sqz_sim,
    domid: i32,
    out: *mut sqz_domain,
    domain_size: usize,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        check_domain_size(domain_size)?;
        // SAFETY: the caller passes NULL or a live simulator.
        let d = unsafe {
            with_sim(s, |st| {
                st.sim
                    .guest(domid)
                    .copied()
                    .ok_or_else(|| invalid(format!("no simulated guest has domid {domid}")))
            })
        }?;
        // SAFETY: not NULL, and the caller's buffer holds at least DOMAIN_SIZE_V1 bytes.
        unsafe { write_out(out, "out", sqz_domain::from(d)) }
    })
}

/// Stores in `*out` what the algorithm has asked of the simulated host so far. Errors: a NULL
/// pointer → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_get_counters(
    s: *mut sqz_sim,
    out: *mut sqz_sim_counters,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live simulator.
        let c = unsafe { with_sim(s, |st| Ok(st.sim.counters())) }?;
        let c = sqz_sim_counters {
            make_host: c.make_host,
            actions: c.actions,
            target_changes: c.target_changes,
            set_maxmem: c.set_maxmem,
            waits: c.waits,
        };
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", c) }
    })
}

/// Stores in `*out` how many safety rules the algorithm has broken on this host (a guest
/// allocating memory the host did not have, a target outside the dynamic range). A correct
/// squeezer keeps this at 0. Errors: a NULL pointer → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_violations(s: *mut sqz_sim, out: *mut usize) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or a live simulator.
        let n = unsafe { with_sim(s, |st| Ok(st.sim.violations().len())) }?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", n) }
    })
}

unsafe extern "C" fn sim_make_host(ctx: *mut c_void, b: *mut sqz_host_builder) -> i32 {
    guard::status(|| {
        // SAFETY: ctx is the simulator the view was made from, alive while the view is used.
        let host = unsafe {
            with_sim(ctx.cast(), |st| match st.pending.take() {
                Some(p) => Err(Error::Backend(p).into()),
                None => Ok(st.sim.make_host()?),
            })
        }?;
        // SAFETY: `b` is the live builder this callback was given.
        unsafe {
            for d in host.domains() {
                let d = sqz_domain::from(*d);
                let rc = sqz_host_builder_add_domain(b, &d, DOMAIN_SIZE_V1);
                if rc != SQZ_OK {
                    return Err(invalid(format!("adding domain {} failed", d.domid)));
                }
            }
            let rc = sqz_host_builder_set_free_mem(b, host.free_mem_kib);
            if rc != SQZ_OK {
                return Err(invalid("setting free memory failed"));
            }
        }
        Ok(())
    })
}

unsafe extern "C" fn sim_set_maxmem(ctx: *mut c_void, domid: i32, kib: i64) -> i32 {
    guard::status(|| {
        // SAFETY: ctx is the simulator the view was made from.
        unsafe { with_sim(ctx.cast(), |st| Ok(st.sim.set_maxmem(domid, kib)?)) }
    })
}

unsafe extern "C" fn sim_execute_action(ctx: *mut c_void, domid: i32, new_target_kib: i64) -> i32 {
    guard::status(|| {
        // SAFETY: ctx is the simulator the view was made from.
        unsafe {
            with_sim(ctx.cast(), |st| {
                Ok(st.sim.execute_action(Action {
                    domid,
                    new_target_kib,
                })?)
            })
        }
    })
}

unsafe extern "C" fn sim_wait(ctx: *mut c_void, seconds: f64) {
    guard::value((), || {
        // SAFETY: ctx is the simulator the view was made from.
        let r = unsafe {
            with_sim(ctx.cast(), |st| {
                if let Err(e) = st.sim.wait(seconds) {
                    st.pending.get_or_insert(e.to_string());
                }
                Ok(())
            })
        };
        if let Err(e) = r {
            set_last_error(&e);
        }
    })
}

unsafe extern "C" fn sim_now(ctx: *mut c_void) -> f64 {
    guard::value(f64::NAN, || {
        // SAFETY: ctx is the simulator the view was made from.
        let r = unsafe {
            with_sim(ctx.cast(), |st| match st.pending.take() {
                Some(p) => Err(Error::Backend(p).into()),
                None => Ok(st.sim.time()),
            })
        };
        r.unwrap_or_else(|e| {
            // The trampoline quotes this message when it reports the NaN.
            set_last_error(&e);
            f64::NAN
        })
    })
}

/// The io view of the simulator behind `s` (which must be live and not busy).
///
/// # Safety
/// `s` is NULL or a live simulator.
unsafe fn io_view(s: *mut sqz_sim) -> Result<sqz_io, Failure> {
    // SAFETY: forwarded from the caller.
    let (slush, tolerance) = unsafe {
        with_sim(s, |st| {
            Ok((
                st.sim.target_host_free_mem_kib(),
                st.sim.free_memory_tolerance_kib(),
            ))
        })
    }?;
    Ok(sqz_io {
        struct_size: IO_SIZE_V1 as u32,
        ctx: s.cast(),
        make_host: Some(sim_make_host),
        set_maxmem: Some(sim_set_maxmem),
        execute_action: Some(sim_execute_action),
        wait: Some(sim_wait),
        now: Some(sim_now),
        target_host_free_mem_kib: slush,
        free_memory_tolerance_kib: tolerance,
    })
}

/// Fills `*out` (of `io_size` bytes, `sizeof(sqz_io)`) with callbacks that run on the simulated
/// host `s`, so it can be passed to any function taking a `sqz_io`. The view is valid while
/// `s` is; its `wait` advances simulated time, and a `wait` past the time limit makes the next
/// `now` fail. Errors: a NULL pointer or `io_size` too small → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_io(
    s: *mut sqz_sim,
    out: *mut sqz_io,
    io_size: usize,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        if io_size < IO_SIZE_V1 {
            return Err(invalid(format!(
                "io_size {io_size} is smaller than sizeof(sqz_io) = {IO_SIZE_V1}"
            )));
        }
        // SAFETY: the caller passes NULL or a live simulator.
        let view = unsafe { io_view(s) }?;
        // SAFETY: not NULL and at least IO_SIZE_V1 bytes.
        unsafe { write_out(out, "out", view) }
    })
}

/// The io view of `s` as the driver's [`Io`].
///
/// # Safety
/// `s` is NULL or a live simulator.
unsafe fn driver_io(s: *mut sqz_sim) -> Result<CallbackIo, Failure> {
    // SAFETY: forwarded; the view lives on our stack for the duration of the copy.
    unsafe {
        let view = io_view(s)?;
        CallbackIo::from_ptr(&view)
    }
}

/// `sqz_change_host_free_memory` on the simulated host's io view. Errors as that function, plus
/// `s` NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_change_host_free_memory(
    s: *mut sqz_sim,
    opts: *const sqz_options,
    required_kib: i64,
    ok: sqz_success_fn,
    ok_ctx: *mut c_void,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or live objects.
        let (mut io, options) = unsafe { (driver_io(s)?, options_or_default(opts)?) };
        let mut success = success_closure(ok, ok_ctx, required_kib);
        crate::driver::change_host_free_memory(&mut io, &options, required_kib, &mut success)?;
        Ok(())
    })
}

/// `sqz_free_memory_range` on the simulated host's io view. Errors as that function, plus `s`
/// NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_free_memory_range(
    s: *mut sqz_sim,
    opts: *const sqz_options,
    min_kib: i64,
    max_kib: i64,
    reserved_kib_out: *mut i64,
) -> sqz_status {
    guard::status(|| {
        need_out(reserved_kib_out, "reserved_kib_out")?;
        // SAFETY: the caller passes NULL or live objects.
        let (mut io, options) = unsafe { (driver_io(s)?, options_or_default(opts)?) };
        let got = crate::driver::free_memory_range(&mut io, &options, min_kib, max_kib)?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(reserved_kib_out, "reserved_kib_out", got) }
    })
}

/// `sqz_balance_memory` on the simulated host's io view. Errors as that function, plus `s`
/// NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_balance_memory(
    s: *mut sqz_sim,
    opts: *const sqz_options,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or live objects.
        let (mut io, options) = unsafe { (driver_io(s)?, options_or_default(opts)?) };
        crate::driver::balance_memory(&mut io, &options)?;
        Ok(())
    })
}

/// `sqz_is_host_memory_unbalanced` on the simulated host's io view. Errors as that function,
/// plus `s` NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_sim_is_host_memory_unbalanced(
    s: *mut sqz_sim,
    opts: *const sqz_options,
    out: *mut bool,
) -> sqz_status {
    guard::status(|| {
        need_out(out, "out")?;
        // SAFETY: the caller passes NULL or live objects.
        let (mut io, options) = unsafe { (driver_io(s)?, options_or_default(opts)?) };
        let v = crate::driver::is_host_memory_unbalanced(&mut io, &options)?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, "out", v) }
    })
}
