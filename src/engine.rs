//! One engine shape for both policies.
//!
//! A round is a pure function of the host snapshot, the time, the goal in force and the
//! engine's own state: it does no I/O and reads no clock, and returns a [`Plan`] (the maxmem
//! and balloon targets to write, how the goal stands, and when to look again). [`run`] is the
//! one loop that drives either policy: the platform ([`Io`]) only looks, writes and waits.
//!
//! - [`ClassicRound`]: squeezed's iteration ([`Squeezer::one_iteration`]) toward an amount of
//!   host free memory, decision for decision squeezed's.
//! - [`AdaptiveRound`]: an operation of the adaptive squeezer ([`Adaptive::step`]).
//!
//! What an engine judges about each domain is [`Engine::judgements`], for the caller to
//! publish whatever the outcome.

use log::{debug, info, warn};

use crate::adaptive::{Adaptive, Cooperation, Operation, Outcome};
use crate::driver::{maxmem_after, Clock, Io, Stillness, ITERATION_WAIT_SECONDS};
use crate::error::{Error, Result};
use crate::model::{Action, DomId, Host, Kib};
use crate::squeezer::{Options, Squeezer, Verdict};

/// The log target of squeezed's rounds: they log as the driver always has, so that log
/// filters keep working.
const DRIVER_LOG: &str = "squeeze::driver";

/// What one round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// maxmem to set first, in KiB (the classic policy sets one for every domain, by
    /// squeezed's rule; the adaptive one leaves maxmem to each target write).
    pub maxmem: Vec<(DomId, Kib)>,
    /// Balloon targets to set next, in order, each with whatever maxmem it needs
    /// ([`Io::execute_action`]).
    pub targets: Vec<Action>,
    /// How the goal stands: done, failed with the error (and the domains it blames), or to
    /// be continued after a wait.
    pub outcome: Outcome,
    /// Seconds to wait before the next look, while the outcome is [`Outcome::Continue`].
    pub next_look_s: f64,
}

/// A policy as a round function (see the module documentation).
pub trait Engine {
    /// One round on `host` as seen at `now`; `success` judges host free memory. No I/O.
    fn round(
        &mut self,
        host: &Host,
        now: f64,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<Plan>;

    /// How the engine judges each domain it has seen, for the caller to publish (empty when
    /// the judgement is left to the host model, as squeezed's 20 s rule is).
    fn judgements(&self) -> Vec<(DomId, Cooperation)>;
}

/// Drives `engine` on `io` until its goal is done (`Ok`) or has failed (its error): look,
/// round, write, wait.
pub fn run(
    io: &mut dyn Io,
    engine: &mut dyn Engine,
    success: &mut dyn FnMut(Kib) -> bool,
) -> Result<()> {
    run_from(io, &mut Clock::default(), None, engine, success)
}

/// [`run`] with the caller's clock guard, and the time of the first look when the caller has
/// already read it.
pub(crate) fn run_from(
    io: &mut dyn Io,
    clock: &mut Clock,
    mut first_now: Option<f64>,
    engine: &mut dyn Engine,
    success: &mut dyn FnMut(Kib) -> bool,
) -> Result<()> {
    loop {
        let now = match first_now.take() {
            Some(t) => t,
            None => clock.now(io)?,
        };
        let host = io.make_host()?;
        let plan = engine.round(&host, now, success)?;
        for (domid, kib) in plan.maxmem {
            io.set_maxmem(domid, kib)?;
        }
        for a in plan.targets {
            io.execute_action(a)?;
        }
        match plan.outcome {
            Outcome::Done => return Ok(()),
            Outcome::Failed(e) => return Err(e),
            Outcome::Continue => io.wait(plan.next_look_s)?,
        }
    }
}

/// squeezed's iteration as an [`Engine`]: rounds toward `required_kib` of host free memory.
#[derive(Debug)]
pub struct ClassicRound<'a> {
    squeezer: Held<'a>,
    required_kib: Kib,
    /// The slush fund, only to say why a target changed (balancing or freeing).
    slush_kib: Kib,
    stillness: Stillness,
}

impl<'a> ClassicRound<'a> {
    /// Rounds of `squeezer` toward `required_kib` free, on a host whose slush is `slush_kib`.
    pub fn new(squeezer: &'a mut Squeezer, required_kib: Kib, slush_kib: Kib) -> Self {
        ClassicRound {
            squeezer: Held::Borrowed(squeezer),
            required_kib,
            slush_kib,
            stillness: Stillness::default(),
        }
    }

    /// Aims the coming rounds at `required_kib` of host free memory (the service plans for
    /// every pending reservation at once, so the goal moves as they come and go).
    pub(crate) fn set_required(&mut self, required_kib: Kib) {
        self.required_kib = required_kib;
    }

    /// Starts a call of the squeezer at `now` (see [`Squeezer::change_host_free_memory`]).
    pub(crate) fn begin_call(&mut self, now: f64) {
        self.squeezer.get().begin_call(now);
    }
}

impl ClassicRound<'static> {
    /// Rounds of a squeezer of its own, fresh as squeezed's is for every call, toward
    /// `required_kib` free: for a caller that keeps an operation between rounds (a scenario
    /// runner interleaving it with other events).
    pub fn fresh(options: &Options, required_kib: Kib, slush_kib: Kib) -> Self {
        ClassicRound {
            squeezer: Held::Owned(Box::new(Squeezer::new(*options))),
            required_kib,
            slush_kib,
            stillness: Stillness::default(),
        }
    }
}

/// The squeezer a [`ClassicRound`] decides with: the caller's, or one of its own.
#[derive(Debug)]
enum Held<'a> {
    Borrowed(&'a mut Squeezer),
    Owned(Box<Squeezer>),
}

impl Held<'_> {
    fn get(&mut self) -> &mut Squeezer {
        match self {
            Held::Borrowed(s) => s,
            Held::Owned(s) => s,
        }
    }
}

impl Engine for ClassicRound<'_> {
    fn round(
        &mut self,
        host: &Host,
        now: f64,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<Plan> {
        let required_kib = self.required_kib;
        self.stillness.look(host, now)?;
        let it = self
            .squeezer
            .get()
            .one_iteration(host, required_kib, success, now)?;
        for domid in &it.declared_inactive {
            debug!(target: DRIVER_LOG, "domain {domid} declared inactive");
        }
        for domid in &it.declared_active {
            debug!(target: DRIVER_LOG, "domain {domid} declared active");
        }
        debug!(target: DRIVER_LOG,
            "free {} KiB (aiming for {required_kib} KiB); γ = {:.4}; {:?} phase; {}",
            host.free_mem_kib,
            it.allocation.gamma,
            it.phase,
            match &it.verdict {
                Verdict::Success => "success".to_string(),
                Verdict::Failed(d) => format!("failed, stuck: {d:?}"),
                Verdict::AdjustTargets(a) => format!("{} target(s) to set", a.len()),
            }
        );
        let maxmem = maxmem_after(host, &it);
        let (targets, outcome) = match it.verdict {
            Verdict::Success => (Vec::new(), Outcome::Done),
            Verdict::Failed(domids) if domids.is_empty() || domids == [0] => {
                if host.free_mem_kib >= required_kib {
                    // Not a failure to free: nobody can take the memory that is free.
                    debug!(target: DRIVER_LOG,
                        "{} KiB free is at least the {required_kib} KiB asked for, but the \
                         success condition does not hold and no domain can absorb more",
                        host.free_mem_kib
                    );
                } else if domids == [0] {
                    warn!(target: DRIVER_LOG, "cannot free {required_kib} KiB: domain 0 has not met its memory target");
                } else {
                    debug!(target: DRIVER_LOG,
                        "cannot free {required_kib} KiB within the dynamic-min limits of the \
                         balloonable domains"
                    );
                }
                let e = Error::CannotFreeThisMuchMemory {
                    required_kib,
                    free_kib: host.free_mem_kib,
                };
                (Vec::new(), Outcome::Failed(e))
            }
            Verdict::Failed(domids) => {
                debug!(target: DRIVER_LOG,
                    "cannot free {required_kib} KiB: domains {domids:?} did not meet their targets"
                );
                let e = Error::DomainsRefusedToCooperate { domids };
                (Vec::new(), Outcome::Failed(e))
            }
            Verdict::AdjustTargets(actions) => {
                let reason = if required_kib == self.slush_kib {
                    "rebalance"
                } else {
                    "free memory"
                };
                // squeezed re-sends unchanged targets; only real changes are news (looked up
                // only when they would be logged: a round on a big host sets thousands).
                let log = log::log_enabled!(target: DRIVER_LOG, log::Level::Info);
                for a in actions.iter().filter(|_| log) {
                    let old = host.domain(a.domid).map(|d| d.target_kib);
                    if old != Some(a.new_target_kib) {
                        info!(target: DRIVER_LOG,
                            "domain {}: target {} -> {} KiB ({reason})",
                            a.domid,
                            old.unwrap_or(0),
                            a.new_target_kib
                        );
                    }
                }
                (actions, Outcome::Continue)
            }
        };
        Ok(Plan {
            maxmem,
            targets,
            outcome,
            next_look_s: ITERATION_WAIT_SECONDS,
        })
    }

    fn judgements(&self) -> Vec<(DomId, Cooperation)> {
        Vec::new()
    }
}

/// An operation of the adaptive squeezer as an [`Engine`].
#[derive(Debug)]
pub struct AdaptiveRound<'a> {
    adaptive: &'a mut Adaptive,
    op: Operation,
}

impl<'a> AdaptiveRound<'a> {
    /// Rounds of `op` (from [`Adaptive::begin`]) on `adaptive`.
    pub fn new(adaptive: &'a mut Adaptive, op: Operation) -> Self {
        AdaptiveRound { adaptive, op }
    }
}

impl Engine for AdaptiveRound<'_> {
    fn round(
        &mut self,
        host: &Host,
        now: f64,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<Plan> {
        let round = self.adaptive.step(&mut self.op, host, now, success)?;
        Ok(Plan {
            maxmem: Vec::new(),
            targets: round.writes,
            outcome: round.outcome,
            next_look_s: self.adaptive.options().poll_s,
        })
    }

    fn judgements(&self) -> Vec<(DomId, Cooperation)> {
        self.adaptive.judgements()
    }
}
