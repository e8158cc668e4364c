//! `sqz_options`: the squeezer's tunables.

use crate::adaptive::AdaptiveOptions;
use crate::squeezer::{Fistpoints, Options};
use crate::{Balancer, Error, Policy};

use super::error::{invalid, sqz_status, Failure};
use super::guard;

/// Options for the squeezer (policy, fistpoints, stuck-after time, deadline). Opaque; created by
/// `sqz_options_new`, released by `sqz_options_free`. Wherever a `const sqz_options *` is taken,
/// NULL means the defaults. Functions that take options copy them, so an options object may be
/// changed or freed as soon as the call returns. Not safe to change from two threads at once.
pub struct sqz_options {
    pub(crate) options: Options,
    pub(crate) policy: Policy,
    pub(crate) adaptive: AdaptiveOptions,
}

/// `sqz_options_set_policy`: squeezed's algorithm, decision for decision (the default).
pub const SQZ_POLICY_CLASSIC: i32 = 0;
/// `sqz_options_set_policy`: the adaptive squeezer (measured balloon rates, remembered limits,
/// a non-cooperation score, deadlines). Keeps its state through a `sqz_squeezer`.
pub const SQZ_POLICY_ADAPTIVE: i32 = 1;

/// Everything an options object says, copied out of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) options: Options,
    pub(crate) policy: Policy,
    pub(crate) adaptive: AdaptiveOptions,
}

impl Settings {
    /// A balancer with these settings.
    pub(crate) fn balancer(&self) -> Result<Balancer, Failure> {
        Ok(Balancer::new(self.policy, &self.options, self.adaptive)?)
    }
}

/// The settings behind `opts`, or the defaults for NULL.
///
/// # Safety
/// `opts` is NULL or a live options object.
pub(crate) unsafe fn settings_or_default(opts: *const sqz_options) -> Settings {
    // SAFETY: the caller promises NULL or a live object.
    unsafe { opts.as_ref() }
        .map(|o| Settings {
            options: o.options,
            policy: o.policy,
            adaptive: o.adaptive,
        })
        .unwrap_or_default()
}

/// `sqz_options_set_fistpoints` flag: set freeing and allocating targets in the same round
/// (squeezed's `DisableTwoPhaseTargetSets`). For tests of the safety mechanism only.
pub const SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS: u32 = 1;
/// `sqz_options_set_fistpoints` flag: do not hold back twice the balloon inaccuracy
/// (squeezed's `DisableInaccuracyCompensation`). For tests of the safety mechanism only.
pub const SQZ_FIST_DISABLE_INACCURACY_COMPENSATION: u32 = 2;

const KNOWN_FISTPOINTS: u32 =
    SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS | SQZ_FIST_DISABLE_INACCURACY_COMPENSATION;

/// The options behind `opts`, or the defaults for NULL.
///
/// # Safety
/// `opts` is NULL or a live options object.
pub(crate) unsafe fn options_or_default(opts: *const sqz_options) -> Options {
    // SAFETY: the caller promises NULL or a live object.
    unsafe { opts.as_ref() }
        .map(|o| o.options)
        .unwrap_or_default()
}

/// The options object behind `o`, or an error naming the NULL.
///
/// # Safety
/// `o` is NULL or a live options object.
unsafe fn options_mut<'a>(o: *mut sqz_options) -> Result<&'a mut sqz_options, Failure> {
    // SAFETY: the caller promises NULL or a live object.
    unsafe { o.as_mut() }.ok_or_else(|| invalid("options is NULL"))
}

/// Creates an options object holding the defaults (no fistpoints, stuck after 5 s) and stores
/// it in `*out`. The caller owns it and releases it with `sqz_options_free`.
/// Errors: `out` NULL → `SQZ_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_new(out: *mut *mut sqz_options) -> sqz_status {
    guard::status(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let o = Box::into_raw(Box::new(sqz_options {
            options: Options::default(),
            policy: Policy::default(),
            adaptive: AdaptiveOptions::default(),
        }));
        // SAFETY: `out` is not NULL and points to a pointer the caller owns.
        unsafe { *out = o };
        Ok(())
    })
}

/// Releases an options object. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_free(o: *mut sqz_options) {
    guard::value((), || {
        if !o.is_null() {
            // SAFETY: `o` came from sqz_options_new and the caller gives it up.
            drop(unsafe { Box::from_raw(o) });
        }
    })
}

/// Sets the fistpoints: a bitwise OR of `SQZ_FIST_*` flags, replacing earlier ones (0 turns
/// them all off). Errors: `o` NULL → `SQZ_ERR_INVALID_ARGUMENT`; a bit this version does not
/// know → `SQZ_ERR_UNSUPPORTED`, options unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_set_fistpoints(o: *mut sqz_options, flags: u32) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live options object.
        let o = unsafe { options_mut(o) }?;
        let unknown = flags & !KNOWN_FISTPOINTS;
        if unknown != 0 {
            return Err(Error::Unsupported(format!("unknown fistpoint bits {unknown:#x}")).into());
        }
        o.options.fistpoints = Fistpoints {
            disable_two_phase_target_sets: flags & SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS != 0,
            disable_inaccuracy_compensation: flags & SQZ_FIST_DISABLE_INACCURACY_COMPENSATION != 0,
        };
        Ok(())
    })
}

/// Sets how many seconds a balloon driver with work to do may make no progress before it is
/// considered stuck (default 5). Errors: `o` NULL, or `seconds` NaN, infinite or negative →
/// `SQZ_ERR_INVALID_ARGUMENT`, options unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_set_stuck_after(
    o: *mut sqz_options,
    seconds: f64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live options object.
        let o = unsafe { options_mut(o) }?;
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(invalid(format!(
                "stuck-after time must be a finite number of seconds, not {seconds}"
            )));
        }
        o.options.stuck_after_seconds = seconds;
        Ok(())
    })
}

/// Chooses the algorithm: `SQZ_POLICY_CLASSIC` (default) or `SQZ_POLICY_ADAPTIVE`. The
/// stateless driver functions start from a fresh balancer of that policy on every call; a
/// `sqz_squeezer` keeps one. `sqz_squeezer_step` and `sqz_is_host_memory_unbalanced` are
/// squeezed's single iteration and always classic. Errors: `o` NULL →
/// `SQZ_ERR_INVALID_ARGUMENT`; a value this library does not know → `SQZ_ERR_UNSUPPORTED`,
/// options unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_set_policy(o: *mut sqz_options, policy: i32) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live options object.
        let o = unsafe { options_mut(o) }?;
        o.policy = match policy {
            SQZ_POLICY_CLASSIC => Policy::Classic,
            SQZ_POLICY_ADAPTIVE => Policy::Adaptive,
            other => {
                return Err(Error::Unsupported(format!("unknown policy {other}")).into());
            }
        };
        Ok(())
    })
}

/// Gives every freeing request of the adaptive policy a deadline, in seconds: it fails once the
/// deadline passes. By default there is none: a request lasts as long as the guests it counts
/// on make progress (see `docs/adaptive.md`). The classic policy, like squeezed, has no
/// deadline. Errors: `o` NULL, or `seconds` not a
/// finite positive number → `SQZ_ERR_INVALID_ARGUMENT`, options unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_set_deadline(o: *mut sqz_options, seconds: f64) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live options object.
        let o = unsafe { options_mut(o) }?;
        if !seconds.is_finite() || seconds <= 0.0 {
            return Err(invalid(format!(
                "deadline must be a finite positive number of seconds, not {seconds}"
            )));
        }
        o.adaptive.deadline_s = seconds;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{SQZ_ERR_INVALID_ARGUMENT, SQZ_ERR_UNSUPPORTED, SQZ_OK};

    #[test]
    fn fistpoint_flags_map_to_the_two_switches_and_unknown_bits_change_nothing() {
        let mut o = std::ptr::null_mut();
        // SAFETY: o is a local out-pointer, then a live handle until freed.
        unsafe {
            assert_eq!(sqz_options_new(&mut o), SQZ_OK);
            assert_eq!(sqz_options_set_fistpoints(o, 2), SQZ_OK);
            assert!((*o).options.fistpoints.disable_inaccuracy_compensation);
            assert!(!(*o).options.fistpoints.disable_two_phase_target_sets);
            assert_eq!(sqz_options_set_fistpoints(o, 4 | 1), SQZ_ERR_UNSUPPORTED);
            assert!(!(*o).options.fistpoints.disable_two_phase_target_sets);
            assert_eq!(
                sqz_options_set_stuck_after(o, f64::NAN),
                SQZ_ERR_INVALID_ARGUMENT
            );
            assert_eq!(sqz_options_set_stuck_after(o, 12.5), SQZ_OK);
            assert_eq!(options_or_default(o).stuck_after_seconds, 12.5);
            sqz_options_free(o);
            assert_eq!(options_or_default(std::ptr::null()), Options::default());
        }
    }
}
