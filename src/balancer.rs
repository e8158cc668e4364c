//! One long-lived balancer for a host, with the policy chosen at creation: squeezed's classic
//! algorithm or the adaptive one.
//!
//! This is what the language bindings hold on to between calls. With [`Policy::Classic`] it
//! behaves as a [`Squeezer`] kept across calls (it remembers which domains were stuck); with
//! [`Policy::Adaptive`] as an [`Adaptive`].

use crate::adaptive::{Adaptive, AdaptiveOptions, Cooperation};
use crate::driver::Io;
use crate::error::Result;
use crate::model::{DomId, Kib};
use crate::squeezer::{Options, Squeezer};

/// Which algorithm decides. `Policy::default()` is classic, so a [`Balancer`] stays squeezed's
/// unless asked; the memory service ([`crate::service::ServiceConfig`]) defaults to adaptive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// squeezed's algorithm, decision for decision.
    #[default]
    Classic,
    /// Rate-aware, remembers limits, flags non-cooperation, never oscillates.
    Adaptive,
}

impl Policy {
    /// The policy's name, as the diagnostics, the command line and the logs spell it:
    /// `"classic"` or `"adaptive"`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Classic => "classic",
            Policy::Adaptive => "adaptive",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = crate::Error;

    /// Parses a policy's [`name`](Policy::name).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "classic" => Ok(Policy::Classic),
            "adaptive" => Ok(Policy::Adaptive),
            _ => Err(crate::Error::InvalidArgument(format!(
                "unknown policy {s:?}: \"classic\" or \"adaptive\""
            ))),
        }
    }
}

#[derive(Debug, Clone)]
enum Engine {
    Classic(Squeezer),
    Adaptive(Box<Adaptive>),
}

/// How `domid`'s balloon driver has been cooperating as the classic squeezer `s` sees it:
/// only squeezed's stuck/active distinction, reported as a score of 0 or the stuck threshold.
pub fn classic_cooperation(s: &Squeezer, domid: DomId) -> Option<Cooperation> {
    let stuck = s.monitor().stuck_domids().contains(&domid);
    let known = stuck || s.monitor().is_active(domid);
    known.then(|| Cooperation {
        score_s: if stuck {
            s.options().stuck_after_seconds
        } else {
            0.0
        },
        uncooperative: stuck,
        concern: stuck.then_some(crate::adaptive::tracker::Concern::NotMoving),
    })
}

/// A balancer that keeps its state between calls.
#[derive(Debug, Clone)]
pub struct Balancer {
    engine: Engine,
}

impl Balancer {
    /// A balancer with `policy`. `options` configure the classic squeezer, `adaptive` the
    /// adaptive one; each is ignored by the other policy.
    pub fn new(policy: Policy, options: &Options, adaptive: AdaptiveOptions) -> Result<Self> {
        let engine = match policy {
            Policy::Classic => Engine::Classic(Squeezer::new(*options)),
            Policy::Adaptive => Engine::Adaptive(Box::new(Adaptive::new(adaptive)?)),
        };
        Ok(Balancer { engine })
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        match self.engine {
            Engine::Classic(_) => Policy::Classic,
            Engine::Adaptive(_) => Policy::Adaptive,
        }
    }

    /// Frees memory until `success` holds (see [`Squeezer::change_host_free_memory`] and
    /// [`Adaptive::change_host_free_memory`]).
    pub fn change_host_free_memory(
        &mut self,
        io: &mut dyn Io,
        required_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<()> {
        match &mut self.engine {
            Engine::Classic(s) => s.change_host_free_memory(io, required_kib, success),
            Engine::Adaptive(a) => a.change_host_free_memory(io, required_kib, success),
        }
    }

    /// Frees memory for a new domain of `min_kib..=max_kib` and returns how much it may have.
    pub fn free_memory_range(
        &mut self,
        io: &mut dyn Io,
        min_kib: Kib,
        max_kib: Kib,
    ) -> Result<Kib> {
        match &mut self.engine {
            Engine::Classic(s) => s.free_memory_range(io, min_kib, max_kib),
            Engine::Adaptive(a) => a.free_memory_range(io, min_kib, max_kib),
        }
    }

    /// Runs `f` with a caller's deadline (seconds, if any) on its freeing requests. The
    /// adaptive policy fails a request with
    /// [`Error::DeadlineCannotBeMet`](crate::Error::DeadlineCannotBeMet) as soon as the
    /// measured balloon rates predict it; the classic policy, like squeezed, has no deadline of
    /// its own (the service ends its wait when the deadline passes).
    pub fn with_deadline<T>(
        &mut self,
        deadline_s: Option<f64>,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        if let Some(d) = deadline_s.filter(|d| d.is_nan() || *d <= 0.0) {
            return Err(crate::Error::InvalidArgument(format!(
                "a deadline must be a positive number of seconds, not {d}"
            )));
        }
        let configured = match &mut self.engine {
            Engine::Adaptive(a) => Some(a.tighten_deadline(deadline_s)?),
            Engine::Classic(_) => None,
        };
        let result = f(self);
        if let (Engine::Adaptive(a), Some(c)) = (&mut self.engine, configured) {
            a.restore_deadline(c);
        }
        result
    }

    /// Hands memory above the slush back to the domains.
    pub fn balance_memory(&mut self, io: &mut dyn Io) -> Result<()> {
        match &mut self.engine {
            Engine::Classic(s) => s.balance_memory(io),
            Engine::Adaptive(a) => a.balance_memory(io),
        }
    }

    /// Whether a balancing pass would change any domain's target right now, as this policy
    /// would balance (the adaptive answer comes from a round on a copy of its state, so
    /// nothing is learnt or written).
    pub fn is_unbalanced(&self, io: &mut dyn Io) -> Result<bool> {
        match &self.engine {
            Engine::Classic(s) => crate::driver::is_host_memory_unbalanced(io, s.options()),
            Engine::Adaptive(a) => a.is_unbalanced(io),
        }
    }

    /// Takes one look at the host and learns from it without asking anything of the domains
    /// (see [`Adaptive::watch`]): what a background monitor calls between requests, so that
    /// cooperation scores keep leaking away. The classic policy learns nothing between calls,
    /// so this does nothing with it.
    pub fn watch(&mut self, io: &mut dyn Io) -> Result<()> {
        match &mut self.engine {
            Engine::Classic(_) => Ok(()),
            Engine::Adaptive(a) => a.watch(io),
        }
    }

    /// Tells the balancer that an input outside the host snapshot changed (see
    /// [`Adaptive::outside_change`]); the classic policy keeps nothing to revise.
    pub fn outside_change(&mut self) {
        if let Engine::Adaptive(a) = &mut self.engine {
            a.outside_change();
        }
    }

    /// How `domid`'s balloon driver has been cooperating. The classic policy knows only
    /// squeezed's stuck/active distinction, reported as a score of 0 or the stuck threshold.
    pub fn cooperation(&self, domid: DomId) -> Option<Cooperation> {
        match &self.engine {
            Engine::Adaptive(a) => a.cooperation(domid),
            Engine::Classic(s) => classic_cooperation(s, domid),
        }
    }

    /// The policy's judgement of every domain it has seen, in domid order, for the caller to
    /// publish after each operation however it ended (a domain named in
    /// [`Error::DomainsRefusedToCooperate`](crate::Error::DomainsRefusedToCooperate) is judged
    /// uncooperative). Empty under the classic policy, whose judgement is the host model's
    /// 20 s rule.
    pub fn judgements(&self) -> Vec<(DomId, Cooperation)> {
        match &self.engine {
            Engine::Adaptive(a) => a.judgements(),
            Engine::Classic(_) => Vec::new(),
        }
    }

    /// What the adaptive policy has learnt about `domid` (None under the classic policy).
    pub fn track(&self, domid: DomId) -> Option<&crate::adaptive::tracker::Track> {
        match &self.engine {
            Engine::Adaptive(a) => a.track(domid),
            Engine::Classic(_) => None,
        }
    }

    /// The adaptive squeezer, when that is the policy (for callers that run single rounds).
    pub fn adaptive(&mut self) -> Option<&mut Adaptive> {
        match &mut self.engine {
            Engine::Adaptive(a) => Some(a),
            Engine::Classic(_) => None,
        }
    }

    /// The classic squeezer, when that is the policy (for callers that run single iterations).
    pub fn classic(&mut self) -> Option<&mut Squeezer> {
        match &mut self.engine {
            Engine::Classic(s) => Some(s),
            Engine::Adaptive(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::tracker::Concern;
    use crate::backend::sim::{Behaviour, SimConfig, Simulator};
    use crate::model::Domain;

    const MIB: Kib = 1024;
    const GIB: Kib = 1024 * MIB;

    fn host() -> Simulator {
        let mut sim = Simulator::new(SimConfig {
            free_mem_kib: 72 * MIB,
            target_host_free_mem_kib: 72 * MIB,
            ..SimConfig::default()
        });
        sim.add_guest(
            Domain::new(1, true, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 4),
            Behaviour::Ideal {
                rate_kib_per_s: 100 * MIB,
            },
        )
        .unwrap();
        sim.add_guest(
            Domain::new(2, true, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 4),
            Behaviour::Stuck,
        )
        .unwrap();
        sim
    }

    #[test]
    fn both_policies_serve_a_reservation_the_working_guest_can_cover() {
        for policy in [Policy::Classic, Policy::Adaptive] {
            let mut sim = host();
            let mut b =
                Balancer::new(policy, &Options::default(), AdaptiveOptions::default()).unwrap();
            assert_eq!(b.policy(), policy);
            // 512 MiB: guest 1 alone can free 1 GiB.
            let got = b.free_memory_range(&mut sim, 512 * MIB, 512 * MIB).unwrap();
            assert_eq!(got, 512 * MIB, "{policy:?}");
            assert!(sim.free_mem_kib() >= 72 * MIB + 512 * MIB, "{policy:?}");
            // Both saw the stuck guest; adaptive only flags it once its score reaches 10 s.
            let stuck = b.cooperation(2).unwrap();
            assert!(stuck.score_s > 0.0, "{policy:?}");
            assert_eq!(stuck.concern, Some(Concern::NotMoving), "{policy:?}");
            assert_eq!(b.cooperation(1).unwrap().concern, None, "{policy:?}");
            assert_eq!(b.classic().is_some(), policy == Policy::Classic);
        }
    }

    #[test]
    fn a_policy_reads_back_from_its_name_and_nothing_else_does() {
        for p in [Policy::Classic, Policy::Adaptive] {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert!("Adaptive".parse::<Policy>().is_err());
        assert!("".parse::<Policy>().is_err());
    }

    #[test]
    fn invalid_adaptive_options_are_refused() {
        let bad = AdaptiveOptions {
            deadline_s: f64::NAN,
            ..AdaptiveOptions::default()
        };
        assert!(Balancer::new(Policy::Adaptive, &Options::default(), bad).is_err());
        assert!(Balancer::new(Policy::Classic, &Options::default(), bad).is_ok());
    }
}
