//! One iteration of the squeezer: classify domains, compute targets, apply the two-phase rule
//! and decide whether to adjust, succeed or fail.
//!
//! This is a pure function of the host snapshot, the time and the state carried between
//! iterations (the stuckness monitor and the set of inactive domains). It behaves as squeezed's
//! `Squeezer.one_iteration`, including the order of the lists it returns, so that replaying a
//! scenario through either gives the same decisions.

use crate::error::Result;
use crate::model::{has_hit_target, Action, DomId, Domain, Host, Kib};
use crate::monitor::{StucknessMonitor, DEFAULT_STUCK_AFTER_SECONDS};
use crate::policy::{self, Allocation};

/// squeezed's fault-injection points: each turns off one safety mechanism, so tests can show
/// that the mechanism matters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fistpoints {
    /// Set freeing and allocating targets in the same round. Host free memory can then drop
    /// below the slush while memory moves between guests.
    pub disable_two_phase_target_sets: bool,
    /// Do not hold back twice the balloon inaccuracy when counting what a domain can free.
    pub disable_inaccuracy_compensation: bool,
}

/// Tunables of the squeezer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Fault-injection points; all off by default.
    pub fistpoints: Fistpoints,
    /// Seconds without progress after which a balloon driver with work to do is stuck.
    pub stuck_after_seconds: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fistpoints: Fistpoints::default(),
            stuck_after_seconds: DEFAULT_STUCK_AFTER_SECONDS,
        }
    }
}

/// What one iteration decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every active domain has reached its target, no target needs changing and the success
    /// condition holds.
    Success,
    /// Targets are reached and stable but the success condition does not hold. The domids are
    /// the inactive domains that can balloon (the ones to blame), in squeezed's order
    /// (descending); empty when dynamic-mins are simply too high.
    Failed(Vec<DomId>),
    /// Targets to set this round, in descending domid order as squeezed emits them.
    AdjustTargets(Vec<Action>),
}

/// Which phase of the two-phase rule an iteration was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Some domain must free memory, so only freeing targets are set.
    Freeing,
    /// Nothing needs freeing; growing targets may be set.
    Allocating,
}

/// The full result of one iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    /// Domains that were inactive last iteration and are not now (ascending domid).
    pub declared_active: Vec<DomId>,
    /// Domains that became inactive in this iteration (ascending domid).
    pub declared_inactive: Vec<DomId>,
    /// The decision.
    pub verdict: Verdict,
    /// How the policy divided the memory among the active domains.
    pub allocation: Allocation,
    /// Host free memory if every active domain went to dynamic-min.
    pub maximum_possible_free_kib: Kib,
    /// The two-phase rule's phase.
    pub phase: Phase,
    /// Whether every active domain had reached its current target.
    pub all_targets_reached: bool,
}

/// The squeezer and the state it keeps between iterations.
#[derive(Debug, Clone)]
pub struct Squeezer {
    options: Options,
    monitor: StucknessMonitor,
    /// Domains that were not active last iteration, ascending.
    non_active: Vec<DomId>,
}

impl Default for Squeezer {
    fn default() -> Self {
        Squeezer::new(Options::default())
    }
}

impl Squeezer {
    /// A squeezer with no history.
    pub fn new(options: Options) -> Self {
        Squeezer {
            options,
            monitor: StucknessMonitor::new(options.stuck_after_seconds),
            non_active: Vec::new(),
        }
    }

    /// The options this squeezer was made with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The stuckness monitor's current view.
    pub fn monitor(&self) -> &StucknessMonitor {
        &self.monitor
    }

    /// Domains considered inactive after the last iteration (ascending domid).
    pub fn inactive_domids(&self) -> &[DomId] {
        &self.non_active
    }

    /// Restarts the no-progress clocks of domains that are not stuck, so a domain that sat
    /// idle between two calls of a long-lived squeezer is not judged stuck for the time it had
    /// nothing to do. Domains already stuck stay stuck until they make progress.
    pub(crate) fn begin_call(&mut self, now: f64) {
        self.monitor.restart_clocks(now);
    }

    /// Runs one iteration over `host` at time `now`, aiming for `host_target_kib` of host free
    /// memory, with `success` judging the host's free memory once targets are stable.
    pub fn one_iteration(
        &mut self,
        host: &Host,
        host_target_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
        now: f64,
    ) -> Result<Iteration> {
        let compensate = !self.options.fistpoints.disable_inaccuracy_compensation;
        let domains = host.domains();

        // 1. Which domains are still active.
        self.monitor.update(host, now);
        let active: Vec<bool> = domains
            .iter()
            .zip(self.monitor.active_flags(host))
            .map(|(d, monitor_active)| d.can_balloon && monitor_active)
            .collect();
        let non_active: Vec<DomId> = domains
            .iter()
            .zip(&active)
            .filter(|(_, a)| !**a)
            .map(|(d, _)| d.domid)
            .collect();
        let declared_inactive = sorted_difference(&non_active, &self.non_active);
        let declared_active = sorted_difference(&self.non_active, &non_active);
        let active_domains = || {
            domains
                .iter()
                .zip(&active)
                .filter(|(_, a)| **a)
                .map(|(d, _)| d)
        };

        // 2. What the policy would do with the active domains.
        let allocation = policy::proportional(
            active_domains(),
            host.free_mem_kib,
            host_target_kib,
            compensate,
        )?;
        let maximum_possible_free_kib =
            policy::maximum_possible_free_kib(active_domains(), host.free_mem_kib, compensate)?;

        // squeezed builds its target list by folding over the domain set and consing, so the
        // list runs in descending domid order; we keep that order.
        let targets: Vec<(&Domain, Kib)> = domains
            .iter()
            .zip(&active)
            .rev()
            .filter(|(_, a)| **a)
            .map(|(d, _)| (d, allocation.target_for(d)))
            .collect();

        // 3. Two phases: while anyone must free, only freeing targets are set.
        let is_freeing = |d: &Domain, t: Kib| {
            !has_hit_target(d.inaccuracy_kib, d.memory_actual_kib, t) && t < d.memory_actual_kib
        };
        let phase = if targets.iter().any(|(d, t)| is_freeing(d, *t)) {
            Phase::Freeing
        } else {
            Phase::Allocating
        };
        let chosen = if self.options.fistpoints.disable_two_phase_target_sets {
            targets
        } else {
            let freeing_phase = phase == Phase::Freeing;
            targets
                .into_iter()
                .filter(|(d, t)| is_freeing(d, *t) == freeing_phase)
                .collect()
        };

        // 4. Decide.
        let all_targets_reached = active_domains().all(|d| d.has_hit_target());
        let no_target_changes = chosen.iter().all(|(d, t)| d.target_kib == *t);
        let verdict = if !all_targets_reached || !no_target_changes {
            Verdict::AdjustTargets(
                chosen
                    .iter()
                    .map(|(d, t)| Action {
                        domid: d.domid,
                        new_target_kib: *t,
                    })
                    .collect(),
            )
        } else if success(host.free_mem_kib) {
            Verdict::Success
        } else {
            // Blame only inactive domains that could have ballooned.
            Verdict::Failed(
                domains
                    .iter()
                    .zip(&active)
                    .rev()
                    .filter(|(d, a)| !**a && d.can_balloon)
                    .map(|(d, _)| d.domid)
                    .collect(),
            )
        };

        self.non_active = non_active;
        Ok(Iteration {
            declared_active,
            declared_inactive,
            verdict,
            allocation,
            maximum_possible_free_kib,
            phase,
            all_targets_reached,
        })
    }
}

/// Elements of sorted `a` that are not in sorted `b`, in order.
fn sorted_difference(a: &[DomId], b: &[DomId]) -> Vec<DomId> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(_: Kib) -> bool {
        true
    }

    #[test]
    fn freeing_targets_are_set_before_allocating_ones() {
        // Domain 1 sits at 3000 and must go down; domain 2 sits at its minimum and should grow.
        // Free 0, goal 0: total surplus is 2000 over ranges 2000 + 2000, γ = 0.5.
        let host = Host::new(
            vec![
                Domain::new(1, true, 1000, 3000, 3000, 3000, 3000, 0),
                Domain::new(2, true, 1000, 1000, 3000, 1000, 1000, 0),
            ],
            0,
        )
        .unwrap();
        let mut s = Squeezer::default();
        let it = s.one_iteration(&host, 0, &mut always, 0.0).unwrap();
        assert_eq!(it.phase, Phase::Freeing);
        assert_eq!(
            it.verdict,
            Verdict::AdjustTargets(vec![Action {
                domid: 1,
                new_target_kib: 2000
            }])
        );

        let mut s = Squeezer::new(Options {
            fistpoints: Fistpoints {
                disable_two_phase_target_sets: true,
                ..Fistpoints::default()
            },
            ..Options::default()
        });
        let it = s.one_iteration(&host, 0, &mut always, 0.0).unwrap();
        assert_eq!(
            it.verdict,
            Verdict::AdjustTargets(vec![
                Action {
                    domid: 2,
                    new_target_kib: 2000
                },
                Action {
                    domid: 1,
                    new_target_kib: 2000
                }
            ])
        );
    }

    #[test]
    fn stuck_domains_that_can_balloon_are_blamed() {
        // Domain 3 is asked to go from 3000 to 1000 and never moves; domain 4 has no balloon
        // driver and is never blamed.
        let host = Host::new(
            vec![
                Domain::new(3, true, 1000, 1000, 3000, 3000, 3000, 0),
                Domain::new(4, false, 1000, 2000, 3000, 2000, 2000, 0),
            ],
            0,
        )
        .unwrap();
        let mut s = Squeezer::default();
        let mut never = |_: Kib| false;
        let first = s.one_iteration(&host, 2000, &mut never, 0.0).unwrap();
        assert_eq!(first.declared_inactive, vec![4]);
        let later = s.one_iteration(&host, 2000, &mut never, 6.0).unwrap();
        assert_eq!(later.declared_inactive, vec![3]);
        assert_eq!(later.verdict, Verdict::Failed(vec![3]));
    }

    #[test]
    fn sorted_difference_keeps_order() {
        assert_eq!(sorted_difference(&[1, 3, 5, 7], &[3, 4, 7]), vec![1, 5]);
        assert_eq!(sorted_difference(&[], &[1]), Vec::<DomId>::new());
    }
}
