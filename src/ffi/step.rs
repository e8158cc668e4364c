//! One squeezer iteration at a time, for callers that drive everything from their own event
//! loop (libxl): host snapshot in, verdict, targets and maxmems out. The caller applies the
//! targets and maxmems, waits about a second (`SQZ_ITERATION_WAIT_SECONDS`), and steps again.
//! A classic squeezer runs squeezed's iteration; an adaptive one runs an adaptive round.

use std::ffi::c_void;

use crate::model::{kib, Host};
use crate::squeezer::Verdict;

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::Handle;
use super::io::{read_domain, sqz_domain, sqz_success_fn, success_closure};
use super::ops::{squeezer_handle, sqz_squeezer};

/// What an iteration decided (`sqz_step_result.verdict`).
pub type sqz_verdict = i32;
/// Targets are reached and stable and the success condition holds: the operation is done.
pub const SQZ_VERDICT_SUCCESS: sqz_verdict = 0;
/// Targets are reached and stable but the success condition does not hold. The blamed domids
/// (stuck domains that could balloon) are the ones that refused to cooperate; none (or only
/// domain 0) means the memory cannot be freed at all.
pub const SQZ_VERDICT_FAILED: sqz_verdict = 1;
/// Set the returned targets, then step again after about a second.
pub const SQZ_VERDICT_ADJUST_TARGETS: sqz_verdict = 2;

/// How long squeezed's loop waits between iterations, in seconds.
pub const SQZ_ITERATION_WAIT_SECONDS: f64 = 1.0;

/// A balloon target to set.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct sqz_action {
    /// The domain.
    pub domid: i32,
    /// Its new balloon target, in KiB.
    pub new_target_kib: i64,
}

/// A maxmem to set.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct sqz_maxmem {
    /// The domain.
    pub domid: i32,
    /// Its new maxmem, in KiB.
    pub maxmem_kib: i64,
}

/// Caller-owned buffers for `sqz_squeezer_step`. The caller sets `struct_size` and the three
/// buffers with their capacities (a buffer may be NULL with capacity 0); the call sets
/// `verdict` and the three `*_len` counts.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sqz_step_result {
    /// `sizeof(sqz_step_result)` as the caller knows it.
    pub struct_size: u32,
    /// Out: one of `SQZ_VERDICT_*`.
    pub verdict: sqz_verdict,
    /// Targets to set, in the order squeezed sets them: classic only with
    /// `SQZ_VERDICT_ADJUST_TARGETS`; adaptive with any verdict (set them whatever it is), at
    /// most one per domain.
    pub actions: *mut sqz_action,
    /// Capacity of `actions`, in entries.
    pub actions_cap: usize,
    /// Out: number of targets.
    pub actions_len: usize,
    /// maxmem to set for every domain of the snapshot, whatever the verdict (squeezed sets
    /// these before acting on the verdict).
    pub maxmem: *mut sqz_maxmem,
    /// Capacity of `maxmem`, in entries.
    pub maxmem_cap: usize,
    /// Out: number of maxmem settings (the number of domains).
    pub maxmem_len: usize,
    /// Domains blamed for a failure (only with `SQZ_VERDICT_FAILED`), descending.
    pub blamed_domids: *mut i32,
    /// Capacity of `blamed_domids`, in entries.
    pub blamed_cap: usize,
    /// Out: number of blamed domains.
    pub blamed_len: usize,
    /// The policy's judgement of each domain of the snapshot it has judged, after the step,
    /// in domid order (both policies; the classic one reports squeezed's stuck rule). NULL:
    /// not wanted (`judgements_len` still says how many there are). Added after the first
    /// layout: a caller passing the V1 `struct_size` gets none and nothing is written past it.
    pub judgements: *mut sqz_judgement,
    /// Capacity of `judgements`, in entries.
    pub judgements_cap: usize,
    /// Out: number of judgements.
    pub judgements_len: usize,
}

/// How one domain's balloon driver has been cooperating (`sqz_step_result.judgements`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct sqz_judgement {
    /// The domain.
    pub domid: i32,
    /// Its judgement.
    pub cooperation: super::ops::sqz_cooperation,
}

crate::ffi::abi::frozen_v1!(
    /// The size of the first published `sqz_step_result`; smaller sizes are refused.
    STEP_RESULT_SIZE_V1 = sqz_step_result [80] {
        struct_size @ 0, verdict @ 4, actions @ 8, actions_cap @ 16, actions_len @ 24,
        maxmem @ 32, maxmem_cap @ 40, maxmem_len @ 48, blamed_domids @ 56, blamed_cap @ 64,
        blamed_len @ 72,
    }
);

/// Copies `items` to a caller buffer already known to be large enough.
///
/// # Safety
/// `out` has room for `items.len()` entries when `items` is not empty.
unsafe fn copy_out<T: Copy>(items: &[T], out: *mut T) {
    if !items.is_empty() {
        // SAFETY: the caller checked the capacity, and buffers with capacity are not NULL.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len()) };
    }
}

/// Runs one iteration of the squeezer `s` on a host snapshot: `n_domains` domains of
/// `domain_size` bytes each (`sizeof(sqz_domain)`) and `free_mem_kib` free, aiming for
/// `host_target_kib` free, at time `now` (seconds; finite, not negative, never below the
/// previous step's). `ok(ok_ctx, free)` judges success; NULL means "at least `host_target_kib`
/// free". Results go to the caller's buffers in `*result`.
///
/// Errors: `s` or `result` NULL, `domains` NULL with `n_domains` > 0, a size smaller than the
/// first published layout, a duplicate or negative domid, or a bad `now` →
/// `SQZ_ERR_INVALID_ARGUMENT`; a bad memory value → `SQZ_ERR_INVALID_MEMORY_VALUE`; a buffer
/// too small → `SQZ_ERR_BUFFER_TOO_SMALL` with the three `*_len` set to what is needed and the
/// squeezer unchanged (so the same step can be retried with larger buffers). With the adaptive
/// policy, an operation that ends without blaming a domain for not moving (a deadline, a host
/// where nothing moves) is that error's status, with the verdict `SQZ_VERDICT_FAILED`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sqz_squeezer_step(
    s: *mut sqz_squeezer,
    domains: *const sqz_domain,
    n_domains: usize,
    domain_size: usize,
    free_mem_kib: i64,
    host_target_kib: i64,
    now: f64,
    ok: sqz_success_fn,
    ok_ctx: *mut c_void,
    result: *mut sqz_step_result,
) -> sqz_status {
    guard::status(|| {
        if result.is_null() {
            return Err(invalid("result is NULL"));
        }
        if !(result as usize).is_multiple_of(std::mem::align_of::<sqz_step_result>()) {
            return Err(invalid("result is not aligned for sqz_step_result"));
        }
        // SAFETY: not NULL and aligned; struct_size is the first field.
        let size = unsafe { std::ptr::addr_of!((*result).struct_size).read() } as usize;
        if size < STEP_RESULT_SIZE_V1 {
            return Err(invalid(format!(
                "result->struct_size {size} is smaller than sizeof(sqz_step_result) = \
                 {STEP_RESULT_SIZE_V1}"
            )));
        }
        // Read only as much as the caller's struct holds: fields it does not know stay absent
        // (NULL buffers of capacity 0).
        let known = size.min(std::mem::size_of::<sqz_step_result>());
        // SAFETY: all-zero is a valid sqz_step_result (integers and NULL pointers).
        let mut r: sqz_step_result = unsafe { std::mem::zeroed() };
        // SAFETY: the caller's struct holds `size` >= `known` bytes, and `r` holds `known`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                result.cast::<u8>(),
                std::ptr::addr_of_mut!(r).cast::<u8>(),
                known,
            )
        };
        if domains.is_null() && n_domains > 0 {
            return Err(invalid("domains is NULL"));
        }
        super::io::check_domain_size(domain_size)?;
        if n_domains
            .checked_mul(domain_size)
            .is_none_or(|bytes| bytes > isize::MAX as usize)
        {
            return Err(invalid(format!(
                "{n_domains} domains of {domain_size} bytes cannot be an array"
            )));
        }
        let list = (0..n_domains)
            // SAFETY: the caller promises n_domains elements of domain_size bytes.
            .map(|i| unsafe { read_domain(domains, i, domain_size) })
            .collect::<Result<Vec<_>, _>>()?;
        let host = Host::new(list, free_mem_kib)?;
        kib::check_size("host target free memory", host_target_kib)?;
        if !now.is_finite() || now < 0.0 {
            return Err(invalid(format!(
                "now must be finite and not negative, not {now}"
            )));
        }
        let mut success = success_closure(ok, ok_ctx, host_target_kib);

        let step = |st: &mut super::ops::SqueezerState| {
            if let Some(last) = st.last_step_now {
                if now < last {
                    return Err(invalid(format!(
                        "now went backwards (from {last} to {now})"
                    )));
                }
            }
            // Work on a copy so that a buffer too small leaves the squeezer as it was.
            let mut decided = if st.balancer.adaptive().is_some() {
                adaptive_step(st, &host, host_target_kib, &mut success, now)?
            } else {
                let mut next = classic(st)?.clone();
                let it = next.one_iteration(&host, host_target_kib, &mut success, now)?;
                let maxmem = crate::driver::maxmem_after(&host, &it);
                let (verdict, actions, blamed) = match &it.verdict {
                    Verdict::Success => (SQZ_VERDICT_SUCCESS, Vec::new(), Vec::new()),
                    Verdict::Failed(d) => (SQZ_VERDICT_FAILED, Vec::new(), d.clone()),
                    Verdict::AdjustTargets(a) => {
                        (SQZ_VERDICT_ADJUST_TARGETS, a.clone(), Vec::new())
                    }
                };
                Decided {
                    verdict,
                    actions,
                    maxmem,
                    blamed,
                    next: Next::Classic(Box::new(next)),
                    error: None,
                }
            };
            let verdict = decided.verdict;
            let actions: Vec<sqz_action> = decided
                .actions
                .iter()
                .map(|a| sqz_action {
                    domid: a.domid,
                    new_target_kib: a.new_target_kib,
                })
                .collect();
            let maxmem: Vec<sqz_maxmem> = decided
                .maxmem
                .iter()
                .map(|&(domid, maxmem_kib)| sqz_maxmem { domid, maxmem_kib })
                .collect();
            let blamed = std::mem::take(&mut decided.blamed);
            // Judgements travel only to callers that know the field.
            let with_judgements = size >= std::mem::size_of::<sqz_step_result>();
            let judgements: Vec<sqz_judgement> = if with_judgements {
                host.domains()
                    .iter()
                    .filter_map(|d| {
                        let c = match &decided.next {
                            Next::Classic(next) => {
                                crate::balancer::classic_cooperation(next, d.domid)
                            }
                            Next::Adaptive(next, _) => next.cooperation(d.domid),
                        }?;
                        Some(sqz_judgement {
                            domid: d.domid,
                            cooperation: c.into(),
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            r.verdict = verdict;
            r.actions_len = actions.len();
            r.maxmem_len = maxmem.len();
            r.blamed_len = blamed.len();
            let fits = |len: usize, cap: usize, null: bool| len == 0 || (len <= cap && !null);
            let all_fit = fits(actions.len(), r.actions_cap, r.actions.is_null())
                && fits(maxmem.len(), r.maxmem_cap, r.maxmem.is_null())
                && fits(blamed.len(), r.blamed_cap, r.blamed_domids.is_null())
                && (r.judgements.is_null() || fits(judgements.len(), r.judgements_cap, false));
            // SAFETY: `result` was checked above; only the output fields change.
            unsafe {
                (*result).verdict = r.verdict;
                (*result).actions_len = r.actions_len;
                (*result).maxmem_len = r.maxmem_len;
                (*result).blamed_len = r.blamed_len;
                if with_judgements {
                    (*result).judgements_len = judgements.len();
                }
            }
            if !all_fit {
                return Err(Failure::BufferTooSmall(format!(
                    "step needs {} action(s), {} maxmem(s), {} blamed domid(s), {} \
                         judgement(s); capacities are {}, {}, {}, {}",
                    r.actions_len,
                    r.maxmem_len,
                    r.blamed_len,
                    judgements.len(),
                    r.actions_cap,
                    r.maxmem_cap,
                    r.blamed_cap,
                    if with_judgements { r.judgements_cap } else { 0 }
                )));
            }
            // SAFETY: each buffer was checked to hold its entries.
            unsafe {
                copy_out(&actions, r.actions);
                copy_out(&maxmem, r.maxmem);
                copy_out(&blamed, r.blamed_domids);
                if !r.judgements.is_null() {
                    copy_out(&judgements, r.judgements);
                }
            }
            match decided.next {
                Next::Classic(next) => *classic(st)? = *next,
                Next::Adaptive(next, op) => {
                    if let Some(a) = st.balancer.adaptive() {
                        *a = *next;
                    }
                    st.adaptive_op = op;
                }
            }
            st.last_step_now = Some(now);
            match decided.error {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        };
        // SAFETY: the caller passes NULL or a live squeezer.
        unsafe { Handle::with(squeezer_handle(s), "squeezer", step) }
    })
}

/// Tells the squeezer `s` that a new operation starts at `now` (seconds): balloon drivers that
/// are not stuck get a fresh no-progress clock, so time spent idle between operations does not
/// count against them. The driver functions do this themselves; event-loop callers call it
/// before the first `sqz_squeezer_step` of each operation (an adaptive squeezer then starts a
/// fresh operation at its next step). Errors: `s` NULL or busy, or `now`
/// not finite or negative → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_squeezer_begin_operation(
    s: *mut sqz_squeezer,
    now: f64,
) -> sqz_status {
    guard::status(|| {
        if !now.is_finite() || now < 0.0 {
            return Err(invalid(format!(
                "now must be finite and not negative, not {now}"
            )));
        }
        // SAFETY: the caller passes NULL or a live squeezer.
        unsafe {
            Handle::with(squeezer_handle(s), "squeezer", |st| {
                if st.balancer.adaptive().is_some() {
                    // The next step starts a fresh operation.
                    st.adaptive_op = None;
                    return Ok(());
                }
                classic(st)?.begin_call(now);
                Ok(())
            })
        }
    })
}

/// What one step decided, before it is copied out and kept.
struct Decided {
    verdict: sqz_verdict,
    actions: Vec<crate::model::Action>,
    maxmem: Vec<(crate::model::DomId, crate::model::Kib)>,
    blamed: Vec<crate::model::DomId>,
    next: Next,
    /// The step's error, reported once its state is kept (an adaptive operation that ended
    /// otherwise than done or blamed, e.g. a caller's deadline).
    error: Option<crate::Error>,
}

/// The squeezer state after the step.
enum Next {
    Classic(Box<crate::Squeezer>),
    Adaptive(
        Box<crate::adaptive::Adaptive>,
        Option<crate::adaptive::Operation>,
    ),
}

/// One adaptive round, on copies of the squeezer and of its operation under way (a step with a
/// new goal, or after `sqz_squeezer_begin_operation` or the end of the last one, starts one).
/// Targets may come with any verdict (a growth request withdrawn as the operation ends), one
/// per domain; maxmem follows each domain's target.
fn adaptive_step(
    st: &mut super::ops::SqueezerState,
    host: &Host,
    host_target_kib: crate::model::Kib,
    success: &mut dyn FnMut(crate::model::Kib) -> bool,
    now: f64,
) -> Result<Decided, Failure> {
    use crate::adaptive::{Goal, Outcome};
    let goal = Goal::Free {
        required_kib: host_target_kib,
    };
    let op = st.adaptive_op.clone().filter(|op| op.goal() == goal);
    let Some(a) = st.balancer.adaptive() else {
        return Err(invalid("not an adaptive squeezer"));
    };
    let mut next = a.clone();
    let mut op = match op {
        Some(op) => op,
        None => next.begin(goal)?,
    };
    let round = next.step(&mut op, host, now, success)?;
    // The last target written for a domain is the one that counts.
    let mut actions: Vec<crate::model::Action> = Vec::new();
    for w in round.writes {
        actions.retain(|a| a.domid != w.domid);
        actions.push(w);
    }
    let maxmem = host
        .domains()
        .iter()
        .map(|d| {
            let target = actions
                .iter()
                .find(|a| a.domid == d.domid)
                .map_or(d.target_kib, |a| a.new_target_kib);
            (d.domid, target)
        })
        .collect();
    let (verdict, blamed, error, op) = match round.outcome {
        Outcome::Continue => (SQZ_VERDICT_ADJUST_TARGETS, Vec::new(), None, Some(op)),
        Outcome::Done => (SQZ_VERDICT_SUCCESS, Vec::new(), None, None),
        Outcome::Failed(crate::Error::DomainsRefusedToCooperate { domids }) => {
            (SQZ_VERDICT_FAILED, domids, None, None)
        }
        Outcome::Failed(crate::Error::CannotFreeThisMuchMemory { .. }) => {
            (SQZ_VERDICT_FAILED, Vec::new(), None, None)
        }
        Outcome::Failed(e) => (SQZ_VERDICT_FAILED, Vec::new(), Some(e), None),
    };
    Ok(Decided {
        verdict,
        actions,
        maxmem,
        blamed,
        next: Next::Adaptive(Box::new(next), op),
        error,
    })
}

/// The classic squeezer of `st`: single steps are squeezed's iteration.
fn classic(st: &mut super::ops::SqueezerState) -> Result<&mut crate::Squeezer, Failure> {
    st.balancer.classic().ok_or_else(|| {
        crate::Error::Unsupported(
            "single steps are squeezed's iteration and need the classic policy".into(),
        )
        .into()
    })
}
