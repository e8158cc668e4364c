//! The driver loop: repeats squeezer iterations against a platform until the host has the free
//! memory asked for, or until it is clear that it cannot.
//!
//! Everything outside the algorithm comes in through [`Io`]: the host snapshot, setting maxmem
//! and balloon targets, waiting, and the clock. With a simulated [`Io`] a whole scenario replays
//! deterministically.
//!
//! The free functions ([`change_host_free_memory`], [`free_memory_range`], [`balance_memory`],
//! [`is_host_memory_unbalanced`]) start from a fresh [`Squeezer`] each call, exactly as squeezed
//! does. The methods on [`Squeezer`] keep what was learnt (which domains are stuck) from one call
//! to the next.

use log::{debug, warn};

use crate::engine::ClassicRound;
use crate::error::{Error, Result};
use crate::model::{kib, Action, DomId, Domain, Host, Kib};
use crate::policy;
use crate::squeezer::{Options, Squeezer, Verdict};

/// How long the driver waits between iterations, in seconds (squeezed's value).
pub const ITERATION_WAIT_SECONDS: f64 = 1.0;

/// The platform the driver works on: squeezed's `io` record as a trait.
///
/// A method that fails ends the operation with its error (normally [`Error::Backend`]); the
/// driver never retries behind the caller's back.
///
/// Every method is required, so a wrapper (the service's progress watcher, a recorder) cannot
/// silently drop one. What a squeezer judges about the domains does not travel through here:
/// it is data the squeezer returns ([`crate::balancer::Balancer::judgements`]), which the
/// caller hands to whatever publishes it.
pub trait Io {
    /// A fresh snapshot of the host.
    fn make_host(&mut self) -> Result<Host>;
    /// Sets Xen's maxmem for `domid`, in KiB.
    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> Result<()>;
    /// Sets a new balloon target (and whatever maxmem that needs, in the safe order).
    fn execute_action(&mut self, action: Action) -> Result<()>;
    /// Lets `seconds` pass (or the platform's idea of one tick).
    fn wait(&mut self, seconds: f64) -> Result<()>;
    /// The current time in seconds; finite, not negative, never going backwards.
    fn now(&mut self) -> Result<f64>;
    /// How much memory the host keeps free when balanced (the slush fund), in KiB.
    fn target_host_free_mem_kib(&self) -> Kib;
    /// How close to the slush counts as balanced, in KiB.
    fn free_memory_tolerance_kib(&self) -> Kib;
}

/// Rounds in a row in which nothing on the host moves (no balloon driver, no free memory)
/// after which an operation gives up, whichever the policy. With a clock that advances, both
/// end long before: squeezed's rule declares a domain stuck after 20 s (20 rounds of 1 s, or
/// 200 of the 0.1 s tick of squeezed's simulator) and the adaptive stall rule gives up after
/// 30 s. So this only ends an operation whose platform clock does not advance, which would
/// otherwise wait forever.
pub const MAX_ROUNDS_WITHOUT_MOVEMENT: u32 = 1000;

/// Counts rounds in which nothing on the host moved (see [`MAX_ROUNDS_WITHOUT_MOVEMENT`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Stillness {
    last: Option<Vec<(DomId, Kib)>>,
    free_kib: Kib,
    rounds: u32,
    since: f64,
}

impl Stillness {
    /// Records a look at `host` at `now`; fails once nothing has moved for
    /// [`MAX_ROUNDS_WITHOUT_MOVEMENT`] rounds.
    pub(crate) fn look(&mut self, host: &Host, now: f64) -> Result<()> {
        // Compared and kept in place: on a big host a fresh copy every round is a fresh
        // allocation of tens of KiB.
        let domains = host.domains();
        let still = self.free_kib == host.free_mem_kib
            && self.last.as_ref().is_some_and(|last| {
                last.len() == domains.len()
                    && last.iter().zip(domains).all(|(&(domid, actual), d)| {
                        domid == d.domid && actual == d.memory_actual_kib
                    })
            });
        if still {
            self.rounds += 1;
        } else {
            self.rounds = 0;
            self.since = now;
            let last = self.last.get_or_insert_with(Vec::new);
            last.clear();
            last.extend(domains.iter().map(|d| (d.domid, d.memory_actual_kib)));
            self.free_kib = host.free_mem_kib;
        }
        if self.rounds >= MAX_ROUNDS_WITHOUT_MOVEMENT {
            return Err(Error::Backend(format!(
                "nothing on the host moved in {} rounds while the platform's clock went from \
                 {} s to {now} s; giving up (a clock that does not advance cannot time out a \
                 stuck balloon driver)",
                self.rounds, self.since
            )));
        }
        Ok(())
    }
}

/// Guards a platform's clock: rejects NaN, infinite, negative and backward-moving times.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    last: Option<f64>,
}

impl Clock {
    pub(crate) fn now(&mut self, io: &mut dyn Io) -> Result<f64> {
        let t = io.now()?;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::Backend(format!(
                "now() returned an invalid time ({t})"
            )));
        }
        if let Some(last) = self.last {
            if t < last {
                return Err(Error::Backend(format!(
                    "now() went backwards (from {last} to {t})"
                )));
            }
        }
        self.last = Some(t);
        Ok(t)
    }
}

pub(crate) fn settings(io: &dyn Io) -> Result<(Kib, Kib)> {
    let target = kib::check_size("target host free memory", io.target_host_free_mem_kib())?;
    let tolerance = kib::check_size("free memory tolerance", io.free_memory_tolerance_kib())?;
    Ok((target, tolerance))
}

/// squeezed's balance test: free memory within the tolerance above the slush.
pub fn is_balanced(free_kib: Kib, target_kib: Kib, tolerance_kib: Kib) -> bool {
    free_kib - target_kib < tolerance_kib
}

/// Whether squeezed's `change_host_free_memory` has nothing to do on `host`: `required_kib` is
/// already free and every balloon driver is at rest. A balance (`required_kib == slush_kib`)
/// always looks, since it may have memory to hand out.
pub fn nothing_to_free(host: &Host, required_kib: Kib, slush_kib: Kib) -> bool {
    let at_rest = host
        .domains()
        .iter()
        .filter(|d| d.can_balloon)
        .all(Domain::has_hit_target);
    required_kib != slush_kib && required_kib <= host.free_mem_kib && at_rest
}

/// maxmem for each domain of `host`, by squeezed's rule: a domain declared inactive in this
/// iteration may shrink but not grow (`clamp(min(target, actual), dynamic_min, dynamic_max)`);
/// every other domain gets its new target if it has one, else its current target.
fn maxmem_plan(host: &Host, verdict: &Verdict, declared_inactive: &[DomId]) -> Vec<(DomId, Kib)> {
    let mut new_targets: Vec<(DomId, Kib)> = match verdict {
        Verdict::AdjustTargets(actions) => actions
            .iter()
            .map(|a| (a.domid, a.new_target_kib))
            .collect(),
        _ => Vec::new(),
    };
    new_targets.sort_unstable_by_key(|&(domid, _)| domid);
    // The domains, the new targets and the inactive list are all in domid order: walked
    // together, not searched once per domain (a round on a big host sets thousands).
    let (mut targets, mut inactive) = (new_targets.iter().peekable(), declared_inactive.iter());
    let mut next_inactive = inactive.next();
    let mut lookup = |domid: DomId| {
        while targets.next_if(|&&(d, _)| d < domid).is_some() {}
        targets.next_if(|&&(d, _)| d == domid).map(|&(_, kib)| kib)
    };
    let mut is_inactive = |domid: DomId| {
        while next_inactive.is_some_and(|&d| d < domid) {
            next_inactive = inactive.next();
        }
        next_inactive == Some(&domid)
    };
    host.domains()
        .iter()
        .map(|d: &Domain| {
            let mem = if is_inactive(d.domid) {
                d.target_kib
                    .min(d.memory_actual_kib)
                    .max(d.dynamic_min_kib)
                    .min(d.dynamic_max_kib)
            } else {
                lookup(d.domid).unwrap_or(d.target_kib)
            };
            (d.domid, mem)
        })
        .collect()
}

impl Squeezer {
    /// Balloons domains until `success` holds for host free memory, aiming for `required_kib`
    /// free (squeezed's `change_host_free_memory`).
    ///
    /// Fails with [`Error::CannotFreeThisMuchMemory`] when dynamic-mins are too high, or
    /// [`Error::DomainsRefusedToCooperate`] naming the stuck domains that could have helped.
    pub fn change_host_free_memory(
        &mut self,
        io: &mut dyn Io,
        required_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<()> {
        kib::check_size("required free memory", required_kib)?;
        let (host_target_kib, _) = settings(io)?;
        let mut clock = Clock::default();

        // Nothing to do when the memory is already there and every balloon driver is at rest;
        // balancing (required == slush) always looks, since it may have memory to hand out.
        let host = io.make_host()?;
        debug!(
            "change_host_free_memory: required {required_kib} KiB, slush {host_target_kib} KiB, \
             free {} KiB",
            host.free_mem_kib
        );
        if nothing_to_free(&host, required_kib, host_target_kib) {
            return Ok(());
        }

        let start = clock.now(io)?;
        self.begin_call(start);
        let mut engine = ClassicRound::new(self, required_kib, host_target_kib);
        crate::engine::run_from(io, &mut clock, Some(start), &mut engine, success)
    }

    /// Frees memory for a new domain whose size may lie anywhere in `min_kib..=max_kib`, and
    /// returns how much it may have (squeezed's `free_memory_range`).
    ///
    /// The policy first decides what a phantom domain with that range would get if it were
    /// already running; that much is freed, and the call succeeds as long as at least `min_kib`
    /// is free above the slush.
    pub fn free_memory_range(
        &mut self,
        io: &mut dyn Io,
        min_kib: Kib,
        max_kib: Kib,
    ) -> Result<Kib> {
        let RangeRequest {
            slush,
            required,
            enough,
        } = range_request(io, min_kib, max_kib)?;
        self.change_host_free_memory(io, required, &mut |free| free >= enough)?;

        let host = io.make_host()?;
        let usable = host.free_mem_kib - slush;
        if usable < min_kib {
            warn!(
                "usable free memory ({usable} KiB) is below the minimum ({min_kib} KiB) by {} KiB",
                min_kib - usable
            );
        }
        Ok(usable.min(max_kib).max(min_kib))
    }

    /// Hands free memory back to the domains until only the slush is free
    /// (squeezed's `balance_memory`).
    ///
    /// When memory cannot be balanced further (every domain at its dynamic-max, or stuck) this
    /// is not an error: only invalid settings and platform failures are reported.
    pub fn balance_memory(&mut self, io: &mut dyn Io) -> Result<()> {
        let (slush, tolerance) = settings(io)?;
        match self
            .change_host_free_memory(io, slush, &mut |free| is_balanced(free, slush, tolerance))
        {
            Ok(()) => Ok(()),
            Err(Error::CannotFreeThisMuchMemory { free_kib, .. }) => {
                debug!("balanced as far as possible: {free_kib} KiB free");
                Ok(())
            }
            Err(Error::DomainsRefusedToCooperate { domids }) => {
                debug!("balanced as far as possible: domains {domids:?} are not cooperating");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// What the proportional policy would give a new domain with range `min_kib..=max_kib` if it
/// were already running on `host`: squeezed offers the phantom's share against every domain,
/// balloonable or not.
pub(crate) fn phantom_share(host: &Host, min_kib: Kib, max_kib: Kib, slush: Kib) -> Result<Kib> {
    let phantom = Domain::new(-1, true, min_kib, min_kib, max_kib, 0, 0, 4);
    let everyone = host.domains().iter().chain(std::iter::once(&phantom));
    let allocation = policy::proportional(everyone.clone(), host.free_mem_kib, slush, true)?;
    Ok(allocation.target_for(&phantom))
}

/// What freeing memory for a new domain of `min..=max` asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRequest {
    /// The slush fund, KiB.
    pub slush: Kib,
    /// Host free memory to aim for: the policy's share for the new domain plus the slush.
    pub required: Kib,
    /// Host free memory that is enough: the minimum plus the slush.
    pub enough: Kib,
}

/// Checks a range request and sizes it with the proportional policy, as squeezed does (both
/// policies' `free_memory_range` start here).
pub fn range_request(io: &mut dyn Io, min_kib: Kib, max_kib: Kib) -> Result<RangeRequest> {
    check_range(min_kib, max_kib)?;
    let (slush, _) = settings(io)?;
    let host = io.make_host()?;
    let target = phantom_share(&host, min_kib, max_kib, slush)?;
    debug!("free_memory_range({min_kib}, {max_kib}): ideal size {target} KiB");
    Ok(RangeRequest {
        slush,
        required: kib::add(target, slush, "memory to free")?,
        enough: kib::add(min_kib, slush, "minimum free memory")?,
    })
}

/// Checks a requested range: both ends valid sizes and `min_kib <= max_kib`.
pub(crate) fn check_range(min_kib: Kib, max_kib: Kib) -> Result<()> {
    kib::check_size("minimum", min_kib)?;
    kib::check_size("maximum", max_kib)?;
    if min_kib > max_kib {
        return Err(Error::InvalidMemoryValue(format!(
            "minimum {min_kib} KiB is above maximum {max_kib} KiB"
        )));
    }
    Ok(())
}

/// [`Squeezer::change_host_free_memory`] on a fresh squeezer.
pub fn change_host_free_memory(
    io: &mut dyn Io,
    options: &Options,
    required_kib: Kib,
    success: &mut dyn FnMut(Kib) -> bool,
) -> Result<()> {
    Squeezer::new(*options).change_host_free_memory(io, required_kib, success)
}

/// [`Squeezer::free_memory_range`] on a fresh squeezer.
pub fn free_memory_range(
    io: &mut dyn Io,
    options: &Options,
    min_kib: Kib,
    max_kib: Kib,
) -> Result<Kib> {
    Squeezer::new(*options).free_memory_range(io, min_kib, max_kib)
}

/// [`Squeezer::balance_memory`] on a fresh squeezer.
pub fn balance_memory(io: &mut dyn Io, options: &Options) -> Result<()> {
    Squeezer::new(*options).balance_memory(io)
}

/// Whether a balancing pass would change any domain's target right now.
pub fn is_host_memory_unbalanced(io: &mut dyn Io, options: &Options) -> Result<bool> {
    let (slush, tolerance) = settings(io)?;
    let host = io.make_host()?;
    let now = Clock::default().now(io)?;
    let it = Squeezer::new(*options).one_iteration(
        &host,
        slush,
        &mut |free| is_balanced(free, slush, tolerance),
        now,
    )?;
    Ok(match it.verdict {
        Verdict::AdjustTargets(actions) => actions
            .iter()
            .any(|a| host.domain(a.domid).map(|d| d.target_kib) != Some(a.new_target_kib)),
        _ => false,
    })
}

/// The maxmem the driver loop sets for each domain of `host` after `iteration` (squeezed's
/// rule, see [`Squeezer::change_host_free_memory`]), for callers that run iterations from
/// their own event loop.
pub fn maxmem_after(host: &Host, iteration: &crate::squeezer::Iteration) -> Vec<(DomId, Kib)> {
    maxmem_plan(host, &iteration.verdict, &iteration.declared_inactive)
}
