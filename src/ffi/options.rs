//! `sqz_options`: the squeezer's tunables.

use crate::adaptive::AdaptiveOptions;
use crate::squeezer::{Fistpoints, Options};
use crate::{Balancer, Error, Policy};

use super::error::{invalid, sqz_status, Failure};
use super::guard;
use super::handle::{Handle, Tagged};

/// Options for the squeezer (policy, fistpoints, stuck-after time, deadline). Opaque; created by
/// `sqz_options_new`, released by `sqz_options_free`. Wherever a `const sqz_options *` is taken,
/// NULL means the defaults. Functions that take options copy them, so an options object may be
/// changed or freed as soon as the call returns. Threads using one options object at once
/// wait for each other. Anything else passed as a `sqz_options *` (another kind of handle, a
/// freed one) is refused with `SQZ_ERR_INVALID_ARGUMENT`.
pub struct sqz_options {
    _opaque: [u8; 0],
}

struct OptionsState {
    settings: Settings,
}

impl Tagged for OptionsState {
    const TAG: u32 = u32::from_be_bytes(*b"SQZo");
}

fn handle(o: *const sqz_options) -> *mut Handle<OptionsState> {
    o.cast_mut().cast()
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
pub(crate) unsafe fn settings_or_default(opts: *const sqz_options) -> Result<Settings, Failure> {
    if opts.is_null() {
        return Ok(Settings::default());
    }
    // SAFETY: the caller promises NULL or a live object.
    unsafe { Handle::with_shared(handle(opts), "options", |o| o.settings) }
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
pub(crate) unsafe fn options_or_default(opts: *const sqz_options) -> Result<Options, Failure> {
    // SAFETY: forwarded from the caller.
    Ok(unsafe { settings_or_default(opts) }?.options)
}

/// The options object behind `o`, or an error naming the NULL.
///
/// # Safety
/// `o` is NULL or a live options object.
unsafe fn update(
    o: *mut sqz_options,
    f: impl FnOnce(&mut Settings) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if o.is_null() {
        return Err(invalid("options is NULL"));
    }
    // SAFETY: the caller promises NULL or a live object.
    unsafe { Handle::with_shared(handle(o), "options", |st| f(&mut st.settings)) }?
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
        let o = Handle::into_raw(OptionsState {
            settings: Settings::default(),
        });
        // SAFETY: `out` is not NULL and points to a pointer the caller owns.
        unsafe { *out = o.cast::<sqz_options>() };
        Ok(())
    })
}

/// Releases an options object. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_free(o: *mut sqz_options) {
    // SAFETY: the caller passes NULL or an options object it gives up; another kind of
    // handle is left alone.
    guard::value((), || unsafe { Handle::free(handle(o)) })
}

/// Sets the fistpoints: a bitwise OR of `SQZ_FIST_*` flags, replacing earlier ones (0 turns
/// them all off). Errors: `o` NULL → `SQZ_ERR_INVALID_ARGUMENT`; a bit this version does not
/// know → `SQZ_ERR_UNSUPPORTED`, options unchanged.
#[no_mangle]
pub unsafe extern "C" fn sqz_options_set_fistpoints(o: *mut sqz_options, flags: u32) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or a live options object.
        unsafe {
            update(o, |o| {
                let unknown = flags & !KNOWN_FISTPOINTS;
                if unknown != 0 {
                    return Err(
                        Error::Unsupported(format!("unknown fistpoint bits {unknown:#x}")).into(),
                    );
                }
                o.options.fistpoints = Fistpoints {
                    disable_two_phase_target_sets: flags & SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS
                        != 0,
                    disable_inaccuracy_compensation: flags
                        & SQZ_FIST_DISABLE_INACCURACY_COMPENSATION
                        != 0,
                };
                Ok(())
            })
        }
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
        unsafe {
            update(o, |o| {
                if !seconds.is_finite() || seconds < 0.0 {
                    return Err(invalid(format!(
                        "stuck-after time must be a finite number of seconds, not {seconds}"
                    )));
                }
                o.options.stuck_after_seconds = seconds;
                Ok(())
            })
        }
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
        unsafe {
            update(o, |o| {
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
        unsafe {
            update(o, |o| {
                if !seconds.is_finite() || seconds <= 0.0 {
                    return Err(invalid(format!(
                        "deadline must be a finite positive number of seconds, not {seconds}"
                    )));
                }
                o.adaptive.deadline_s = seconds;
                Ok(())
            })
        }
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
            let fist = |o| options_or_default(o).unwrap().fistpoints;
            assert!(fist(o).disable_inaccuracy_compensation);
            assert!(!fist(o).disable_two_phase_target_sets);
            assert_eq!(sqz_options_set_fistpoints(o, 4 | 1), SQZ_ERR_UNSUPPORTED);
            assert!(!fist(o).disable_two_phase_target_sets);
            assert_eq!(
                sqz_options_set_stuck_after(o, f64::NAN),
                SQZ_ERR_INVALID_ARGUMENT
            );
            assert_eq!(sqz_options_set_stuck_after(o, 12.5), SQZ_OK);
            assert_eq!(options_or_default(o).unwrap().stuck_after_seconds, 12.5);
            sqz_options_free(o);
            assert_eq!(options_or_default(std::ptr::null()), Ok(Options::default()));
        }
    }
}
