//! The stuckness monitor: spots balloon drivers that are not moving toward their targets.
//!
//! A domain with work to do (actual not within the inaccuracy of its target) that has made no
//! progress toward the target for `stuck_after` seconds is declared stuck; any progress clears
//! the mark. The squeezer leaves stuck domains out of its calculations, so the others are asked
//! to make up for them. Domains that disappear from the host are forgotten.
//!
//! State is a vector sorted by domid and merged against the host's (also sorted) domain list,
//! so an update costs O(N) with no hashing.

use crate::model::{direction_of_actual, DomId, Domain, Host, Kib};

/// How long squeezed waits without progress before it calls a balloon driver stuck.
pub const DEFAULT_STUCK_AFTER_SECONDS: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct PerDomain {
    domid: DomId,
    last_actual_kib: Kib,
    last_progress_time: f64,
    stuck: bool,
}

/// Tracks, per domain, the last memory-actual seen and the last time it moved toward target.
#[derive(Debug, Clone, PartialEq)]
pub struct StucknessMonitor {
    stuck_after: f64,
    per_domain: Vec<PerDomain>,
}

impl StucknessMonitor {
    /// A monitor that declares a domain stuck after `stuck_after` seconds without progress.
    pub fn new(stuck_after: f64) -> Self {
        StucknessMonitor {
            stuck_after,
            per_domain: Vec::new(),
        }
    }

    /// Takes a new snapshot of the host at time `now` (seconds).
    pub fn update(&mut self, host: &Host, now: f64) {
        let old = std::mem::take(&mut self.per_domain);
        let mut old = old.into_iter().peekable();
        let mut next = Vec::with_capacity(host.domains().len());
        for d in host.domains() {
            // Drop state for domains that are gone (domids below this one not in the host).
            while old.peek().is_some_and(|s| s.domid < d.domid) {
                old.next();
            }
            let state = match old.peek() {
                Some(s) if s.domid == d.domid => old.next(),
                _ => None,
            };
            next.push(self.step(state, d, now));
        }
        self.per_domain = next;
    }

    fn step(&self, state: Option<PerDomain>, d: &Domain, now: f64) -> PerDomain {
        // A domain seen for the first time is taken to be making progress now.
        let mut s = state.unwrap_or(PerDomain {
            domid: d.domid,
            last_actual_kib: d.memory_actual_kib,
            last_progress_time: now,
            stuck: false,
        });
        let direction = direction_of_actual(d.inaccuracy_kib, d.memory_actual_kib, d.target_kib);
        let delta = d.memory_actual_kib - s.last_actual_kib;
        s.last_actual_kib = d.memory_actual_kib;
        if progressing(direction, delta) {
            s.last_progress_time = now;
            s.stuck = false;
        }
        if direction.is_some() && now - s.last_progress_time > self.stuck_after {
            s.stuck = true;
        }
        s
    }

    /// Restarts the no-progress clock of every domain that is not stuck, as if each had just
    /// made progress at `now`. A long-lived squeezer calls this when a new request begins.
    pub fn restart_clocks(&mut self, now: f64) {
        for s in self.per_domain.iter_mut().filter(|s| !s.stuck) {
            s.last_progress_time = now;
        }
    }

    /// True when the domain is known and not stuck. A domain the monitor has never seen (or
    /// has forgotten because it disappeared) is not active.
    pub fn is_active(&self, domid: DomId) -> bool {
        self.per_domain
            .binary_search_by_key(&domid, |s| s.domid)
            .map(|i| !self.per_domain[i].stuck)
            .unwrap_or(false)
    }

    /// Activity of each domain of `host`, in the host's order. `host` must be the snapshot
    /// most recently passed to [`update`](Self::update).
    pub(crate) fn active_flags<'a>(&'a self, host: &'a Host) -> impl Iterator<Item = bool> + 'a {
        debug_assert_eq!(self.per_domain.len(), host.domains().len());
        self.per_domain.iter().map(|s| !s.stuck)
    }

    /// The domids currently marked stuck, ascending.
    pub fn stuck_domids(&self) -> Vec<DomId> {
        self.per_domain
            .iter()
            .filter(|s| s.stuck)
            .map(|s| s.domid)
            .collect()
    }

    /// The stuck threshold in seconds.
    pub fn stuck_after(&self) -> f64 {
        self.stuck_after
    }
}

/// Whether a change of `delta` KiB in memory-actual is progress for a domain whose
/// [`direction_of_actual`] is `direction`.
///
/// squeezed counts growth as progress when the direction is `Down` and shrinkage when it is
/// `Up`, where its direction function answers `Down` for "target above actual". Our
/// [`crate::model::Direction`] names the way actual must move, so growth is progress for `Up`.
/// The two formulations are the same rule.
fn progressing(direction: Option<crate::model::Direction>, delta: Kib) -> bool {
    use crate::model::Direction;
    matches!(
        (direction, delta.signum()),
        (Some(Direction::Up), 1) | (Some(Direction::Down), -1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(actual: Kib, target: Kib) -> Host {
        Host::new(
            vec![Domain::new(1, true, 0, target, 10_000, actual, 10_000, 4)],
            0,
        )
        .unwrap()
    }

    #[test]
    fn a_domain_with_no_progress_for_five_seconds_is_stuck() {
        let mut m = StucknessMonitor::new(5.0);
        m.update(&host(2000, 1000), 0.0);
        assert!(m.is_active(1));
        m.update(&host(2000, 1000), 5.0);
        assert!(m.is_active(1), "exactly 5 s is not yet stuck");
        m.update(&host(2000, 1000), 5.1);
        assert!(!m.is_active(1));
        // Moving toward target clears the mark.
        m.update(&host(1990, 1000), 5.2);
        assert!(m.is_active(1));
        // Moving away from target is not progress.
        m.update(&host(2100, 1000), 11.0);
        assert!(!m.is_active(1));
    }

    #[test]
    fn a_domain_at_target_is_never_declared_stuck() {
        let mut m = StucknessMonitor::new(5.0);
        m.update(&host(1000, 1000), 0.0);
        m.update(&host(1003, 1000), 100.0);
        assert!(m.is_active(1));
    }

    #[test]
    fn growing_toward_a_higher_target_is_progress() {
        let mut m = StucknessMonitor::new(5.0);
        m.update(&host(1000, 2000), 0.0);
        m.update(&host(1100, 2000), 6.0);
        assert!(m.is_active(1));
    }

    #[test]
    fn gone_domains_are_forgotten() {
        let mut m = StucknessMonitor::new(5.0);
        m.update(&host(2000, 1000), 0.0);
        m.update(&Host::new(vec![], 0).unwrap(), 1.0);
        assert!(!m.is_active(1));
        assert!(m.per_domain.is_empty());
    }
}
