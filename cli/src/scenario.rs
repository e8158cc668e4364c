//! Scenario files: a simulated host, its guests, and a timeline of events, in TOML.
//!
//! ```toml
//! name = "Stuck Windows guest"
//! [host]
//! free_mib = 1024          # free at the start
//! slush_mib = 72           # kept free by the balancer (default 72)
//! balance_every_s = 10     # periodic balancing, as squeezed does (default: none)
//! end_s = 600              # how long to run (default: last event + 60 s)
//!
//! [[guest]]
//! domid = 1
//! name = "web"
//! min_mib = 1024
//! max_mib = 4096
//! actual_mib = 4096        # target defaults to actual, maxmem to max(target, actual)
//! behaviour = { kind = "ideal", rate_mib_s = 100 }
//!
//! [[event]]
//! at_s = 5
//! do = "reserve"
//! name = "vm"
//! min_mib = 2048
//! max_mib = 3072
//! ```
//!
//! Events: `reserve` (free memory for a new VM of `min_mib..=max_mib` and hold it under
//! `name`), `create` (build domain `domid` from reservation `reservation`), `destroy` (a domain
//! shuts down), `balance`, and `free` (`mib` more free memory, as a caller of
//! `change_host_free_memory` would ask).

use std::collections::BTreeMap;

use serde::Deserialize;
use squeeze::adaptive::AdaptiveOptions;
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{Balancer, DomId, Domain, Error, Kib, Options, Policy};

const MIB: Kib = 1024;

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short title.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// The host.
    pub host: HostSpec,
    /// The guests running at the start.
    #[serde(rename = "guest", default)]
    pub guests: Vec<GuestSpec>,
    /// The timeline.
    #[serde(rename = "event", default)]
    pub events: Vec<EventSpec>,
}

/// The simulated host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Free memory at the start, MiB.
    pub free_mib: Kib,
    /// Memory the balancer keeps free, MiB.
    #[serde(default = "default_slush")]
    pub slush_mib: Kib,
    /// How close to the slush counts as balanced, KiB.
    #[serde(default = "default_tolerance")]
    pub tolerance_kib: Kib,
    /// Balance every this many seconds between events, as squeezed's daemon does.
    pub balance_every_s: Option<f64>,
    /// When the run ends, seconds.
    pub end_s: Option<f64>,
}

fn default_slush() -> Kib {
    72
}

fn default_tolerance() -> Kib {
    512
}

/// A guest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// Domain id.
    pub domid: DomId,
    /// A label for summaries and plots.
    #[serde(default)]
    pub name: Option<String>,
    /// dynamic-min, MiB.
    pub min_mib: Kib,
    /// dynamic-max, MiB.
    pub max_mib: Kib,
    /// memory-actual at the start, MiB.
    pub actual_mib: Kib,
    /// Balloon target at the start, MiB (default: actual).
    pub target_mib: Option<Kib>,
    /// maxmem at the start, MiB (default: the larger of target and actual).
    pub maxmem_mib: Option<Kib>,
    /// How far from target counts as reached, KiB.
    #[serde(default = "default_inaccuracy")]
    pub inaccuracy_kib: Kib,
    /// The balloon driver.
    pub behaviour: BehaviourSpec,
}

fn default_inaccuracy() -> Kib {
    4
}

/// A balloon driver, as the simulator models it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BehaviourSpec {
    /// Moves at a steady rate.
    Ideal {
        /// MiB/s.
        rate_mib_s: f64,
    },
    /// Will not shrink below `floor_mib`.
    Floor {
        /// MiB/s.
        rate_mib_s: f64,
        /// MiB.
        floor_mib: Kib,
    },
    /// Cannot grow to `ceiling_mib`.
    Ceiling {
        /// MiB/s.
        rate_mib_s: f64,
        /// MiB.
        ceiling_mib: Kib,
    },
    /// Never moves.
    Stuck,
    /// Works `active_s`, stalls `stalled_s`, and again.
    Stalling {
        /// MiB/s.
        rate_mib_s: f64,
        /// Seconds.
        active_s: f64,
        /// Seconds.
        stalled_s: f64,
    },
    /// Reacts after `delay_s`, then moves at `rate_mib_s`.
    Sluggish {
        /// MiB/s.
        rate_mib_s: f64,
        /// Seconds.
        delay_s: f64,
    },
    /// A Windows PV driver: reacts after 2 s, 4 MiB/s.
    Windows,
    /// One `chunk_kib` step every `period_s`.
    Trickle {
        /// KiB.
        chunk_kib: Kib,
        /// Seconds.
        period_s: f64,
    },
    /// No balloon driver.
    None,
}

impl BehaviourSpec {
    fn to_sim(self) -> Behaviour {
        let rate = |mib_s: f64| (mib_s * MIB as f64) as Kib;
        match self {
            BehaviourSpec::Ideal { rate_mib_s } => Behaviour::Ideal {
                rate_kib_per_s: rate(rate_mib_s),
            },
            BehaviourSpec::Floor {
                rate_mib_s,
                floor_mib,
            } => Behaviour::HiddenFloor {
                rate_kib_per_s: rate(rate_mib_s),
                floor_kib: floor_mib * MIB,
            },
            BehaviourSpec::Ceiling {
                rate_mib_s,
                ceiling_mib,
            } => Behaviour::HiddenCeiling {
                rate_kib_per_s: rate(rate_mib_s),
                ceiling_kib: ceiling_mib * MIB,
            },
            BehaviourSpec::Stuck => Behaviour::Stuck,
            BehaviourSpec::Stalling {
                rate_mib_s,
                active_s,
                stalled_s,
            } => Behaviour::Stalling {
                rate_kib_per_s: rate(rate_mib_s),
                active_s,
                stalled_s,
            },
            BehaviourSpec::Sluggish {
                rate_mib_s,
                delay_s,
            } => Behaviour::Sluggish {
                rate_kib_per_s: rate(rate_mib_s),
                delay_s,
            },
            BehaviourSpec::Windows => Behaviour::windows_like(),
            BehaviourSpec::Trickle {
                chunk_kib,
                period_s,
            } => Behaviour::Trickle {
                chunk_kib,
                period_s,
            },
            BehaviourSpec::None => Behaviour::NoBalloonDriver,
        }
    }
}

/// One event of the timeline: `at_s` says when, `do` what.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventSpec {
    /// Free memory for a new VM and hold it.
    Reserve {
        /// When, seconds from the start.
        at_s: f64,
        /// The reservation's name, for a later `create`.
        name: String,
        /// Least the VM can run with, MiB.
        min_mib: Kib,
        /// Most the VM would take, MiB.
        max_mib: Kib,
    },
    /// Build a domain from a reservation; it starts with the reserved memory.
    Create {
        /// When, seconds from the start.
        at_s: f64,
        /// The reservation to use.
        reservation: String,
        /// Domain id.
        domid: DomId,
        /// A label.
        #[serde(default)]
        name: Option<String>,
        /// dynamic-min, MiB.
        min_mib: Kib,
        /// dynamic-max, MiB.
        max_mib: Kib,
        /// The balloon driver.
        behaviour: BehaviourSpec,
    },
    /// A domain shuts down and its memory returns to the host.
    Destroy {
        /// When, seconds from the start.
        at_s: f64,
        /// The domain.
        domid: DomId,
    },
    /// Hand free memory back to the guests.
    Balance {
        /// When, seconds from the start.
        at_s: f64,
    },
    /// Make `mib` MiB free above the slush.
    Free {
        /// When, seconds from the start.
        at_s: f64,
        /// MiB.
        mib: Kib,
    },
}

impl EventSpec {
    /// When the event happens.
    pub fn at_s(&self) -> f64 {
        match self {
            EventSpec::Reserve { at_s, .. }
            | EventSpec::Create { at_s, .. }
            | EventSpec::Destroy { at_s, .. }
            | EventSpec::Balance { at_s }
            | EventSpec::Free { at_s, .. } => *at_s,
        }
    }
}

impl Scenario {
    /// Parses a scenario from TOML text.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if self.host.free_mib < 0 || self.host.slush_mib < 0 {
            return Err("host sizes must not be negative".into());
        }
        let mut seen = BTreeMap::new();
        for g in &self.guests {
            if seen.insert(g.domid, ()).is_some() {
                return Err(format!("guest {} is listed twice", g.domid));
            }
        }
        let mut last = 0.0;
        for e in &self.events {
            if !(e.at_s().is_finite() && e.at_s() >= last) {
                return Err(format!(
                    "event times must be finite and in order (got {} after {last})",
                    e.at_s()
                ));
            }
            last = e.at_s();
        }
        Ok(())
    }

    /// When the run ends.
    pub fn end_s(&self) -> f64 {
        self.host
            .end_s
            .unwrap_or_else(|| self.events.last().map_or(0.0, EventSpec::at_s) + 60.0)
    }

    /// Label of each guest, by domid, including guests created by events.
    pub fn names(&self) -> BTreeMap<DomId, String> {
        let mut names: BTreeMap<DomId, String> = self
            .guests
            .iter()
            .map(|g| (g.domid, g.name.clone().unwrap_or(format!("dom{}", g.domid))))
            .collect();
        for e in &self.events {
            if let EventSpec::Create { domid, name, .. } = e {
                names.insert(*domid, name.clone().unwrap_or(format!("dom{domid}")));
            }
        }
        names
    }
}

/// What happened at one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// When the event started, seconds (later than scheduled if an earlier one ran long).
    pub at_s: f64,
    /// How long it took, simulated seconds.
    pub took_s: f64,
    /// A one-line account.
    pub text: String,
    /// Whether it succeeded.
    pub ok: bool,
}

/// A finished run.
pub struct Run {
    /// The policy used.
    pub policy: Policy,
    /// One outcome per event.
    pub outcomes: Vec<Outcome>,
    /// The simulated host, with its trace and decisions.
    pub sim: Simulator,
}

fn mib(kib: Kib) -> String {
    format!("{:.0} MiB", kib as f64 / MIB as f64)
}

/// Runs `scenario` with `policy`.
#[cfg(test)]
pub fn run(scenario: &Scenario, policy: Policy) -> Result<Run, Error> {
    run_observed(scenario, policy, &mut |_| {})
}

/// [`run`], calling `progress` with the simulated time after each event and balancing tick
/// (the run ends at [`Scenario::end_s`]).
pub fn run_observed(
    scenario: &Scenario,
    policy: Policy,
    progress: &mut dyn FnMut(f64),
) -> Result<Run, Error> {
    let slush = scenario.host.slush_mib * MIB;
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: scenario.host.free_mib * MIB,
        target_host_free_mem_kib: slush,
        free_memory_tolerance_kib: scenario.host.tolerance_kib,
        clock: ClockMode::FollowWait,
        time_limit_s: Some(scenario.end_s() + 3600.0),
        record_trace: true,
    });
    for g in &scenario.guests {
        let target = g.target_mib.unwrap_or(g.actual_mib);
        sim.add_guest(
            Domain::new(
                g.domid,
                true,
                g.min_mib * MIB,
                target * MIB,
                g.max_mib * MIB,
                g.actual_mib * MIB,
                g.maxmem_mib.unwrap_or(target.max(g.actual_mib)) * MIB,
                g.inaccuracy_kib,
            ),
            g.behaviour.to_sim(),
        )?;
    }
    sim.advance(0.0)?;
    // squeezed starts every call from a fresh squeezer, forgetting which drivers were stuck;
    // the classic runs here do the same, so they show squeezed's behaviour. The adaptive
    // balancer is one instance for the whole run.
    let fresh = || Balancer::new(policy, &Options::default(), AdaptiveOptions::default());
    let mut balancer = fresh()?;
    let mut reservations: BTreeMap<String, Kib> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let mut next_balance = scenario.host.balance_every_s;
    let end = scenario.end_s();

    let mut events = scenario.events.iter().peekable();
    loop {
        let next_event = events.peek().map(|e| e.at_s());
        let next_tick = next_balance.filter(|t| *t <= end);
        let Some(at) = [next_event, next_tick]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
        else {
            break;
        };
        progress(sim.time());
        if at > sim.time() {
            let dt = at - sim.time();
            sim.advance(dt)?;
        }
        if policy == Policy::Classic {
            balancer = fresh()?;
        }
        if next_event == Some(at) {
            let e = events.next().expect("peeked");
            let start = sim.time();
            let (ok, text) = match apply(&mut sim, &mut balancer, &mut reservations, e) {
                Ok(text) => (true, text),
                Err(Error::Backend(m)) => return Err(Error::Backend(m)),
                Err(err) => (false, format!("{}: {err}", describe(e))),
            };
            outcomes.push(Outcome {
                // When it really started: an earlier event may have run past this one's time.
                at_s: start,
                took_s: sim.time() - start,
                text,
                ok,
            });
        } else {
            balancer.balance_memory(&mut sim)?;
            let every = scenario.host.balance_every_s.expect("ticking");
            next_balance = Some(at + every);
        }
    }
    if end > sim.time() {
        let dt = end - sim.time();
        sim.advance(dt)?;
    }
    Ok(Run {
        policy,
        outcomes,
        sim,
    })
}

fn describe(what: &EventSpec) -> String {
    match what {
        EventSpec::Reserve {
            name,
            min_mib,
            max_mib,
            ..
        } => format!("reserve {name} ({min_mib}..{max_mib} MiB)"),
        EventSpec::Create {
            reservation, domid, ..
        } => format!("create dom{domid} from {reservation}"),
        EventSpec::Destroy { domid, .. } => format!("destroy dom{domid}"),
        EventSpec::Balance { .. } => "balance".into(),
        EventSpec::Free { mib, .. } => format!("free {mib} MiB"),
    }
}

fn apply(
    sim: &mut Simulator,
    balancer: &mut Balancer,
    reservations: &mut BTreeMap<String, Kib>,
    what: &EventSpec,
) -> Result<String, Error> {
    let slush = sim.config().target_host_free_mem_kib;
    let t0 = sim.time();
    let took = |sim: &Simulator| format!("{:.0} s", sim.time() - t0);
    Ok(match what {
        EventSpec::Reserve {
            name,
            min_mib,
            max_mib,
            ..
        } => {
            let got = balancer.free_memory_range(sim, min_mib * MIB, max_mib * MIB)?;
            // The reservation is held: the host model counts it as used.
            sim.adjust_free_mem(-got);
            reservations.insert(name.clone(), got);
            format!("{}: {} reserved in {}", describe(what), mib(got), took(sim))
        }
        EventSpec::Create {
            reservation,
            domid,
            min_mib,
            max_mib,
            behaviour,
            ..
        } => {
            let kib = reservations.remove(reservation).ok_or_else(|| {
                Error::InvalidArgument(format!("no reservation named {reservation}"))
            })?;
            sim.add_guest(
                Domain::new(*domid, true, min_mib * MIB, kib, max_mib * MIB, kib, kib, 4),
                behaviour.to_sim(),
            )?;
            format!("{}: starts with {}", describe(what), mib(kib))
        }
        EventSpec::Destroy { domid, .. } => {
            let d = sim.remove_guest(*domid)?;
            format!(
                "{}: {} back to the host",
                describe(what),
                mib(d.memory_actual_kib)
            )
        }
        EventSpec::Balance { .. } => {
            balancer.balance_memory(sim)?;
            format!(
                "balance: {} free after {}",
                mib(sim.free_mem_kib()),
                took(sim)
            )
        }
        EventSpec::Free { mib: m, .. } => {
            let required = slush + m * MIB;
            balancer.change_host_free_memory(sim, required, &mut |f| f >= required)?;
            format!("{}: done in {}", describe(what), took(sim))
        }
    })
}

/// The trace as CSV: time, host free, then target and actual of every guest (empty while a
/// guest does not exist), in KiB.
pub fn trace_csv(run: &Run, names: &BTreeMap<DomId, String>) -> String {
    let mut out = String::from("time_s,host_free_kib");
    for (domid, name) in names {
        out.push_str(&format!(",{name}_target_kib,{name}_actual_kib"));
        let _ = domid;
    }
    out.push('\n');
    for row in run.sim.trace() {
        out.push_str(&format!("{:.3},{}", row.time, row.free_mem_kib));
        for domid in names.keys() {
            match row.guests.iter().find(|g| g.0 == *domid) {
                Some(&(_, target, actual)) => out.push_str(&format!(",{target},{actual}")),
                None => out.push_str(",,"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name = "sample"
[host]
free_mib = 512
balance_every_s = 10
end_s = 120

[[guest]]
domid = 1
min_mib = 1024
max_mib = 4096
actual_mib = 4096
behaviour = { kind = "ideal", rate_mib_s = 100 }

[[guest]]
domid = 2
name = "win"
min_mib = 1024
max_mib = 2048
actual_mib = 2048
behaviour = { kind = "windows" }

[[event]]
at_s = 5
do = "reserve"
name = "vm"
min_mib = 1024
max_mib = 2048

[[event]]
at_s = 40
do = "create"
reservation = "vm"
domid = 3
min_mib = 1024
max_mib = 2048
behaviour = { kind = "ideal", rate_mib_s = 50 }

[[event]]
at_s = 60
do = "destroy"
domid = 1
"#;

    #[test]
    fn a_scenario_replayed_twice_gives_the_same_decisions() {
        let s = Scenario::parse(SAMPLE).unwrap();
        for policy in [Policy::Classic, Policy::Adaptive] {
            let a = run(&s, policy).unwrap();
            let b = run(&s, policy).unwrap();
            assert!(!a.sim.decisions().is_empty());
            assert_eq!(a.sim.decisions(), b.sim.decisions(), "{policy:?}");
            assert_eq!(a.outcomes, b.outcomes, "{policy:?}");
            assert!(a.sim.violations().is_empty());
        }
    }

    #[test]
    fn a_reservation_is_held_until_the_domain_is_created_from_it() {
        let s = Scenario::parse(SAMPLE).unwrap();
        let r = run(&s, Policy::Classic).unwrap();
        assert!(r.outcomes.iter().all(|o| o.ok), "{:?}", r.outcomes);
        assert!(
            r.outcomes[0].text.contains("reserved"),
            "{:?}",
            r.outcomes[0]
        );
        let vm = r.sim.guest(3).expect("created");
        assert!(vm.memory_actual_kib >= 1024 * MIB);
        assert!(r.sim.guest(1).is_none());
    }

    #[test]
    fn the_csv_has_a_column_pair_per_guest_and_a_row_per_step() {
        let s = Scenario::parse(SAMPLE).unwrap();
        let r = run(&s, Policy::Adaptive).unwrap();
        let csv = trace_csv(&r, &s.names());
        let header = csv.lines().next().unwrap();
        assert_eq!(header.split(',').count(), 2 + 2 * 3);
        assert!(header.contains("win_actual_kib"));
        assert_eq!(csv.lines().count(), r.sim.trace().len() + 1);
    }

    #[test]
    fn malformed_scenarios_are_refused_with_a_reason() {
        assert!(Scenario::parse("name = 1").is_err());
        let dup = SAMPLE.replace("domid = 2", "domid = 1");
        assert!(Scenario::parse(&dup).unwrap_err().contains("twice"));
        let backwards = SAMPLE.replace("at_s = 60", "at_s = 1");
        assert!(Scenario::parse(&backwards)
            .unwrap_err()
            .contains("in order"));
        let unknown = SAMPLE.replace("kind = \"windows\"", "kind = \"psychic\"");
        assert!(Scenario::parse(&unknown).is_err());
    }
}
