//! A deterministic simulated host.
//!
//! Guests follow Xen's rules: a guest never allocates beyond its maxmem, and memory it takes
//! comes out of host free memory. Balloon drivers are modelled by [`Behaviour`]s: ideal drivers
//! that move at a fixed rate, drivers with a hidden floor or ceiling, stuck drivers, drivers that
//! stall periodically, slow drivers that react late, and guests with no driver at all.
//!
//! The simulator is also a referee. If the algorithm ever lets a guest try to allocate more than
//! the host has free, or sets a target outside a domain's dynamic range, the simulator records a
//! [`Violation`] and the next platform call fails with [`Error::Backend`], so no scenario can
//! pass while breaking a safety rule.
//!
//! Time is simulated: each `wait` advances the clock either by the time asked for or by a fixed
//! tick (squeezed's own simulator ticks 0.1 s per wait, whatever it was asked), so a ten-minute
//! scenario runs in milliseconds. A trace of host free memory and every guest's target and
//! actual can be recorded for tests and plots.

use std::collections::HashMap;

use crate::driver::Io;
use crate::error::{Error, Result};
use crate::model::{Action, DomId, Domain, Host, Kib};

/// How a simulated guest's balloon driver responds to its target.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Behaviour {
    /// Moves toward the target at `rate_kib_per_s`, stopping within the inaccuracy of it.
    Ideal {
        /// Balloon speed in KiB per second.
        rate_kib_per_s: Kib,
    },
    /// Like `Ideal`, but will not go below `floor_kib` whatever it is asked.
    HiddenFloor {
        /// Balloon speed in KiB per second.
        rate_kib_per_s: Kib,
        /// The lowest memory-actual the guest will release down to.
        floor_kib: Kib,
    },
    /// Like `Ideal`, but grows no further than `ceiling_kib`.
    HiddenCeiling {
        /// Balloon speed in KiB per second.
        rate_kib_per_s: Kib,
        /// The most memory-actual will reach.
        ceiling_kib: Kib,
    },
    /// The balloon driver never moves.
    Stuck,
    /// Moves at `rate_kib_per_s` for `period_s` seconds, then stalls for `period_s`, and so on.
    IntermittentlyStuck {
        /// Balloon speed in KiB per second while working.
        rate_kib_per_s: Kib,
        /// Length of each working and each stalled period, in seconds.
        period_s: f64,
    },
    /// Reacts to a new target only after `delay_s`, then moves slowly: what Windows PV drivers
    /// do, polling their target and ballooning a few MiB per second.
    Sluggish {
        /// Balloon speed in KiB per second once moving.
        rate_kib_per_s: Kib,
        /// Seconds between a target change and the first movement.
        delay_s: f64,
    },
    /// Works at `rate_kib_per_s` for `active_s`, then stalls for `stalled_s`, and so on.
    Stalling {
        /// Balloon speed in KiB per second while working.
        rate_kib_per_s: Kib,
        /// Length of each working stretch, in seconds.
        active_s: f64,
        /// Length of each stall, in seconds.
        stalled_s: f64,
    },
    /// Moves `chunk_kib` toward the target once every `period_s` seconds: a driver that looks
    /// alive (it never stops for long) but is far too slow to be useful.
    Trickle {
        /// KiB moved at each step.
        chunk_kib: Kib,
        /// Seconds between steps.
        period_s: f64,
    },
    /// Follows each new target honestly for `honest_for_s`, then aims `excess_kib` above it: a
    /// driver (or device model) that takes everything Xen lets it have, up to that much more
    /// than it was asked for, once it has been seen to comply. Only maxmem stops it.
    Greedy {
        /// Balloon speed in KiB per second.
        rate_kib_per_s: Kib,
        /// How far above its target it tries to be.
        excess_kib: Kib,
        /// Seconds after a target change during which it aims at the target itself.
        honest_for_s: f64,
    },
    /// No balloon driver: the guest never moves and the toolstack cannot set its target.
    NoBalloonDriver,
}

impl Behaviour {
    /// A Windows-like guest: reacts after 2 s, then balloons at 4 MiB/s.
    pub fn windows_like() -> Self {
        Behaviour::Sluggish {
            rate_kib_per_s: 4096,
            delay_s: 2.0,
        }
    }
}

/// Where a balloon driver stands, for [`Behaviour::movement`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Motion {
    /// Memory-actual now, KiB.
    pub actual_kib: Kib,
    /// The target it is asked to reach, KiB.
    pub target_kib: Kib,
    /// How far short of the target it may stop, KiB.
    pub inaccuracy_kib: Kib,
    /// When it last moved (seconds).
    pub last_update: f64,
    /// When its target last changed (seconds).
    pub last_target_change: f64,
    /// Now (seconds).
    pub now: f64,
}

impl Behaviour {
    /// How far (KiB, signed) the driver moves memory-actual between `last_update` and `now`, as
    /// far as the driver itself is concerned; the host's limits (maxmem, free memory) come on
    /// top. Every simulated platform moves its guests through this one function.
    pub fn movement(&self, m: &Motion) -> Kib {
        match *self {
            Behaviour::Ideal { rate_kib_per_s } => step(m, rate_kib_per_s, m.now - m.last_update),
            Behaviour::HiddenFloor {
                rate_kib_per_s,
                floor_kib,
            } => {
                let delta = step(m, rate_kib_per_s, m.now - m.last_update);
                let proposed = m.actual_kib + delta;
                if proposed > m.actual_kib || proposed > floor_kib {
                    delta
                } else {
                    floor_kib - m.actual_kib
                }
            }
            Behaviour::HiddenCeiling {
                rate_kib_per_s,
                ceiling_kib,
            } => {
                let delta = step(m, rate_kib_per_s, m.now - m.last_update);
                if m.actual_kib + delta < ceiling_kib {
                    delta
                } else {
                    ceiling_kib - m.actual_kib
                }
            }
            Behaviour::Stuck | Behaviour::NoBalloonDriver => 0,
            Behaviour::IntermittentlyStuck {
                rate_kib_per_s,
                period_s,
            } => {
                // Works only across an interval that lies wholly inside a working period.
                let working = |t: f64| ((t / period_s) as i64) % 2 == 0;
                let useful = if working(m.last_update) && working(m.now) {
                    m.now - m.last_update
                } else {
                    0.0
                };
                step(m, rate_kib_per_s, useful)
            }
            Behaviour::Stalling {
                rate_kib_per_s,
                active_s,
                stalled_s,
            } => {
                // The working time inside (last_update, now]: each cycle starts with work.
                let cycle = active_s + stalled_s;
                let worked_until = |t: f64| {
                    let whole = (t / cycle).floor();
                    whole * active_s + (t - whole * cycle).min(active_s)
                };
                let useful = worked_until(m.now) - worked_until(m.last_update);
                step(m, rate_kib_per_s, useful)
            }
            Behaviour::Trickle {
                chunk_kib,
                period_s,
            } => {
                // One chunk each time a period boundary is crossed.
                let steps = (m.now / period_s).floor() - (m.last_update / period_s).floor();
                let sign = if m.actual_kib > m.target_kib { -1 } else { 1 };
                let room = ((m.target_kib - m.actual_kib) * sign - m.inaccuracy_kib).max(0);
                (chunk_kib * steps.max(0.0) as Kib).min(room) * sign
            }
            Behaviour::Sluggish {
                rate_kib_per_s,
                delay_s,
            } => {
                let ready_at = m.last_target_change + delay_s;
                let useful = (m.now - ready_at.max(m.last_update)).max(0.0);
                step(m, rate_kib_per_s, useful)
            }
            Behaviour::Greedy {
                rate_kib_per_s,
                excess_kib,
                honest_for_s,
            } => {
                let elapsed = m.now - m.last_update;
                if m.now < m.last_target_change + honest_for_s {
                    return step(m, rate_kib_per_s, elapsed);
                }
                let wanted = Motion {
                    target_kib: m.target_kib.saturating_add(excess_kib),
                    inaccuracy_kib: 0,
                    ..*m
                };
                step(&wanted, rate_kib_per_s, elapsed)
            }
        }
    }
}

/// How simulated time advances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockMode {
    /// Each wait advances by the seconds the caller asked for.
    FollowWait,
    /// Each wait advances by this fixed tick, whatever was asked (squeezed's simulator: 0.1 s).
    FixedTick(f64),
}

/// A safety rule the algorithm broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Simulated time of the violation.
    pub time: f64,
    /// The domain involved.
    pub domid: DomId,
    /// What happened.
    pub what: String,
}

/// One row of the trace: the state after a wait.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    /// Simulated time in seconds.
    pub time: f64,
    /// Host free memory in KiB.
    pub free_mem_kib: Kib,
    /// `(domid, target_kib, memory_actual_kib)` for each guest, in insertion order.
    pub guests: Vec<(DomId, Kib, Kib)>,
}

/// One request the algorithm made of the platform, as recorded with the trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Simulated time of the request.
    pub time: f64,
    /// The domain it concerned.
    pub domid: DomId,
    /// `true` for a balloon target (`execute_action`), `false` for maxmem (`set_maxmem`).
    pub is_target: bool,
    /// The value asked for, in KiB.
    pub kib: Kib,
}

/// Counters of what the algorithm asked of the platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Host snapshots taken.
    pub make_host: u64,
    /// `execute_action` calls.
    pub actions: u64,
    /// Actions that changed a target.
    pub target_changes: u64,
    /// `set_maxmem` calls.
    pub set_maxmem: u64,
    /// Waits.
    pub waits: u64,
}

/// What the trace shows about the algorithm's behaviour over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Per domain, how many times its target changed direction (up after down or down after
    /// up), in ascending domid order.
    pub reversals: Vec<(DomId, u64)>,
    /// Total memory moved by balloon drivers, both directions, in KiB.
    pub balloon_traffic_kib: Kib,
}

impl TraceSummary {
    /// Reversals over all domains.
    pub fn total_reversals(&self) -> u64 {
        self.reversals.iter().map(|r| r.1).sum()
    }

    /// Reversals of one domain's target.
    pub fn reversals_of(&self, domid: DomId) -> u64 {
        self.reversals
            .iter()
            .find(|r| r.0 == domid)
            .map_or(0, |r| r.1)
    }
}

#[derive(Debug, Clone)]
struct Guest {
    domain: Domain,
    behaviour: Behaviour,
    last_update: f64,
    last_target_change: f64,
}

/// Configuration of a simulated host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Host free memory at the start, in KiB.
    pub free_mem_kib: Kib,
    /// The slush fund the algorithm should keep free, in KiB.
    pub target_host_free_mem_kib: Kib,
    /// How close to the slush counts as balanced, in KiB.
    pub free_memory_tolerance_kib: Kib,
    /// How time advances.
    pub clock: ClockMode,
    /// Waits fail once simulated time passes this, so no scenario can run forever.
    pub time_limit_s: Option<f64>,
    /// Whether to record a [`TraceRow`] after every wait.
    pub record_trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            free_mem_kib: 0,
            target_host_free_mem_kib: 0,
            free_memory_tolerance_kib: 0,
            clock: ClockMode::FollowWait,
            time_limit_s: Some(3600.0),
            record_trace: true,
        }
    }
}

/// A simulated host that implements [`Io`].
#[derive(Debug, Clone)]
pub struct Simulator {
    config: SimConfig,
    free_mem_kib: Kib,
    time: f64,
    guests: Vec<Guest>,
    index: HashMap<DomId, usize>,
    violations: Vec<Violation>,
    trace: Vec<TraceRow>,
    decisions: Vec<Decision>,
    counters: Counters,
}

impl Simulator {
    /// A host with no guests yet.
    pub fn new(config: SimConfig) -> Self {
        let mut sim = Simulator {
            config,
            free_mem_kib: config.free_mem_kib,
            time: 0.0,
            guests: Vec::new(),
            index: HashMap::new(),
            violations: Vec::new(),
            trace: Vec::new(),
            decisions: Vec::new(),
            counters: Counters::default(),
        };
        sim.record();
        sim
    }

    /// Adds a guest; its `can_balloon` is forced off for [`Behaviour::NoBalloonDriver`].
    /// Guests update in the order they were added.
    pub fn add_guest(&mut self, mut domain: Domain, behaviour: Behaviour) -> Result<()> {
        domain.validate()?;
        if self.index.contains_key(&domain.domid) {
            return Err(Error::InvalidArgument(format!(
                "domain {} already exists",
                domain.domid
            )));
        }
        if behaviour == Behaviour::NoBalloonDriver {
            domain.can_balloon = false;
        }
        self.index.insert(domain.domid, self.guests.len());
        self.guests.push(Guest {
            domain,
            behaviour,
            last_update: self.time,
            last_target_change: self.time,
        });
        Ok(())
    }

    /// Removes a guest (it was destroyed): its memory returns to the host.
    pub fn remove_guest(&mut self, domid: DomId) -> Result<Domain> {
        let i = self.index.remove(&domid).ok_or_else(|| unknown(domid))?;
        let g = self.guests.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        self.free_mem_kib += g.domain.memory_actual_kib;
        Ok(g.domain)
    }

    /// Changes host free memory by `delta_kib` behind the algorithm's back (a domain was built,
    /// another host component allocated memory).
    pub fn adjust_free_mem(&mut self, delta_kib: Kib) {
        self.free_mem_kib += delta_kib;
    }

    /// Host free memory now.
    pub fn free_mem_kib(&self) -> Kib {
        self.free_mem_kib
    }

    /// Simulated time now.
    pub fn time(&self) -> f64 {
        self.time
    }

    /// The guest with `domid`.
    pub fn guest(&self, domid: DomId) -> Option<&Domain> {
        self.index.get(&domid).map(|&i| &self.guests[i].domain)
    }

    /// The safety rules broken so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The recorded trace.
    pub fn trace(&self) -> &[TraceRow] {
        &self.trace
    }

    /// Every target and maxmem request, in order (recorded with the trace).
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    fn decide(&mut self, domid: DomId, is_target: bool, kib: Kib) {
        if self.config.record_trace {
            self.decisions.push(Decision {
                time: self.time,
                domid,
                is_target,
                kib,
            });
        }
    }

    /// Target reversals and balloon traffic over the recorded trace.
    pub fn trace_summary(&self) -> TraceSummary {
        let mut last_dir: std::collections::BTreeMap<DomId, (i64, u64)> = Default::default();
        let mut traffic = 0;
        for w in self.trace.windows(2) {
            for &(domid, target, actual) in &w[1].guests {
                let Some(&(_, prev_target, prev_actual)) =
                    w[0].guests.iter().find(|g| g.0 == domid)
                else {
                    continue;
                };
                let entry = last_dir.entry(domid).or_insert((0, 0));
                let dir = (target - prev_target).signum();
                if dir != 0 {
                    if entry.0 != 0 && entry.0 != dir {
                        entry.1 += 1;
                    }
                    entry.0 = dir;
                }
                traffic += (actual - prev_actual).abs();
            }
        }
        TraceSummary {
            reversals: last_dir.into_iter().map(|(d, (_, n))| (d, n)).collect(),
            balloon_traffic_kib: traffic,
        }
    }

    /// What the algorithm asked of this host so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Lets `seconds` of simulated time pass, updating every guest.
    pub fn advance(&mut self, seconds: f64) -> Result<()> {
        self.time += seconds;
        let now = self.time;
        for i in 0..self.guests.len() {
            self.update_guest(i, now);
        }
        self.record();
        self.check()
    }

    fn record(&mut self) {
        if self.config.record_trace {
            self.trace.push(TraceRow {
                time: self.time,
                free_mem_kib: self.free_mem_kib,
                guests: self
                    .guests
                    .iter()
                    .map(|g| {
                        (
                            g.domain.domid,
                            g.domain.target_kib,
                            g.domain.memory_actual_kib,
                        )
                    })
                    .collect(),
            });
        }
    }

    fn check(&self) -> Result<()> {
        match self.violations.first() {
            None => Ok(()),
            Some(v) => Err(Error::Backend(format!(
                "simulated host safety violation at t={:.1}s, domain {}: {}",
                v.time, v.domid, v.what
            ))),
        }
    }

    fn violation(&mut self, domid: DomId, what: String) {
        self.violations.push(Violation {
            time: self.time,
            domid,
            what,
        });
    }

    fn update_guest(&mut self, i: usize, now: f64) {
        let g = &self.guests[i];
        let d = g.domain;
        let mut delta = g.behaviour.movement(&Motion {
            actual_kib: d.memory_actual_kib,
            target_kib: d.target_kib,
            inaccuracy_kib: d.inaccuracy_kib,
            last_update: g.last_update,
            last_target_change: g.last_target_change,
            now,
        });
        // Xen refuses allocations beyond maxmem.
        if delta > 0 {
            delta = delta.min((d.memory_max_kib - d.memory_actual_kib).max(0));
        }
        if delta > self.free_mem_kib && delta > 0 {
            let free = self.free_mem_kib;
            self.violation(
                d.domid,
                format!("tried to allocate {delta} KiB with only {free} KiB free on the host"),
            );
            delta = 0;
        }
        let g = &mut self.guests[i];
        g.domain.memory_actual_kib += delta;
        g.last_update = now;
        self.free_mem_kib -= delta;
    }

    fn guest_mut(&mut self, domid: DomId) -> Result<&mut Guest> {
        match self.index.get(&domid) {
            Some(&i) => Ok(&mut self.guests[i]),
            None => Err(unknown(domid)),
        }
    }

    /// Sets a target and maxmem the way squeezed's Xen platform does: raise maxmem first when
    /// the target is above it; otherwise set the target and then lower maxmem to it. Guests
    /// without a balloon driver only ever have their maxmem raised.
    fn set_target_and_maxmem(&mut self, domid: DomId, target_kib: Kib) -> Result<()> {
        let now = self.time;
        let g = self.guest_mut(domid)?;
        let d = &mut g.domain;
        let out_of_range = d.dynamic_min_kib <= d.dynamic_max_kib
            && d.can_balloon
            && target_kib != d.target_kib
            && !(d.dynamic_min_kib..=d.dynamic_max_kib).contains(&target_kib);
        let changed = d.can_balloon && target_kib != d.target_kib;
        if target_kib > d.memory_max_kib {
            d.memory_max_kib = target_kib;
            if d.can_balloon {
                d.target_kib = target_kib;
            }
        } else if d.can_balloon {
            d.target_kib = target_kib;
            d.memory_max_kib = target_kib;
        }
        if changed {
            g.last_target_change = now;
            self.counters.target_changes += 1;
        }
        if out_of_range {
            let (lo, hi) = {
                let d = &self.guests[self.index[&domid]].domain;
                (d.dynamic_min_kib, d.dynamic_max_kib)
            };
            self.violation(
                domid,
                format!("target {target_kib} KiB set outside the dynamic range {lo}..={hi} KiB"),
            );
        }
        Ok(())
    }
}

fn unknown(domid: DomId) -> Error {
    Error::Backend(format!("no such domain: {domid}"))
}

/// The change in memory-actual after `elapsed` seconds at `rate` KiB/s toward the target,
/// stopping `inaccuracy` short of it. The product is rounded toward zero, as squeezed's
/// simulator does, so a rate × tick below 1 KiB never moves.
fn step(m: &Motion, rate: Kib, elapsed: f64) -> Kib {
    let max_change = (elapsed * rate as f64) as Kib;
    let sign = if m.actual_kib > m.target_kib { -1 } else { 1 };
    let distance = (m.target_kib - m.actual_kib) * sign;
    let distance = (distance - m.inaccuracy_kib).max(0);
    distance.min(max_change) * sign
}

impl Io for Simulator {
    fn make_host(&mut self) -> Result<Host> {
        self.check()?;
        self.counters.make_host += 1;
        Host::new(
            self.guests.iter().map(|g| g.domain).collect(),
            self.free_mem_kib,
        )
    }

    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> Result<()> {
        self.check()?;
        self.counters.set_maxmem += 1;
        self.decide(domid, false, kib);
        // squeezed's Xen platform routes maxmem through the same path as a target change.
        self.set_target_and_maxmem(domid, kib)?;
        self.check()
    }

    fn execute_action(&mut self, action: Action) -> Result<()> {
        self.check()?;
        self.counters.actions += 1;
        self.decide(action.domid, true, action.new_target_kib);
        self.set_target_and_maxmem(action.domid, action.new_target_kib)?;
        self.check()
    }

    fn wait(&mut self, seconds: f64) -> Result<()> {
        self.check()?;
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "cannot wait {seconds} seconds"
            )));
        }
        self.counters.waits += 1;
        let dt = match self.config.clock {
            ClockMode::FollowWait => seconds,
            ClockMode::FixedTick(tick) => tick,
        };
        if let Some(limit) = self.config.time_limit_s {
            if self.time + dt > limit {
                return Err(Error::Backend(format!(
                    "simulated time limit of {limit} s reached"
                )));
            }
        }
        self.advance(dt)
    }

    fn now(&mut self) -> Result<f64> {
        Ok(self.time)
    }

    fn target_host_free_mem_kib(&self) -> Kib {
        self.config.target_host_free_mem_kib
    }

    fn free_memory_tolerance_kib(&self) -> Kib {
        self.config.free_memory_tolerance_kib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Simulator {
        Simulator::new(SimConfig {
            free_mem_kib: 1000,
            ..SimConfig::default()
        })
    }

    #[test]
    fn an_ideal_guest_moves_at_its_rate_and_stops_short_by_its_inaccuracy() {
        let mut s = sim();
        s.add_guest(
            Domain::new(1, true, 0, 2000, 4000, 2000, 4000, 4),
            Behaviour::Ideal {
                rate_kib_per_s: 100,
            },
        )
        .unwrap();
        s.execute_action(Action {
            domid: 1,
            new_target_kib: 1500,
        })
        .unwrap();
        s.advance(1.0).unwrap();
        assert_eq!(s.guest(1).unwrap().memory_actual_kib, 1900);
        assert_eq!(s.free_mem_kib(), 1100);
        s.advance(10.0).unwrap();
        assert_eq!(s.guest(1).unwrap().memory_actual_kib, 1504);
    }

    #[test]
    fn allocation_beyond_host_free_memory_is_a_violation() {
        let mut s = sim();
        s.add_guest(
            Domain::new(1, true, 0, 1000, 4000, 1000, 4000, 0),
            Behaviour::Ideal {
                rate_kib_per_s: 10_000,
            },
        )
        .unwrap();
        s.execute_action(Action {
            domid: 1,
            new_target_kib: 3000,
        })
        .unwrap();
        assert!(s.advance(1.0).is_err());
        assert_eq!(s.violations().len(), 1);
        assert_eq!(
            s.free_mem_kib(),
            1000,
            "the refused allocation took nothing"
        );
        assert!(s.make_host().is_err());
    }

    #[test]
    fn a_guest_never_grows_past_maxmem() {
        let mut s = sim();
        s.add_guest(
            Domain::new(1, true, 0, 1800, 4000, 1000, 1200, 0),
            Behaviour::Ideal {
                rate_kib_per_s: 10_000,
            },
        )
        .unwrap();
        s.advance(1.0).unwrap();
        assert_eq!(s.guest(1).unwrap().memory_actual_kib, 1200);
    }

    #[test]
    fn a_sluggish_guest_waits_before_moving() {
        let mut s = sim();
        s.add_guest(
            Domain::new(1, true, 0, 2000, 4000, 2000, 4000, 0),
            Behaviour::Sluggish {
                rate_kib_per_s: 100,
                delay_s: 2.0,
            },
        )
        .unwrap();
        s.execute_action(Action {
            domid: 1,
            new_target_kib: 1000,
        })
        .unwrap();
        s.advance(1.5).unwrap();
        assert_eq!(s.guest(1).unwrap().memory_actual_kib, 2000);
        s.advance(1.5).unwrap();
        assert_eq!(s.guest(1).unwrap().memory_actual_kib, 1900);
    }

    #[test]
    fn no_balloon_driver_means_no_target_is_set() {
        let mut s = sim();
        s.add_guest(
            Domain::new(1, true, 0, 2000, 4000, 2000, 2000, 0),
            Behaviour::NoBalloonDriver,
        )
        .unwrap();
        s.execute_action(Action {
            domid: 1,
            new_target_kib: 1000,
        })
        .unwrap();
        assert_eq!(s.guest(1).unwrap().target_kib, 2000);
        assert!(!s.guest(1).unwrap().can_balloon);
    }
}
