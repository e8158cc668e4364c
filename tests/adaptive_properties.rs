//! Properties of the adaptive squeezer on random hosts: the invariants the classic squeezer
//! keeps (targets inside the dynamic range, two-phase safety, the simulator's safety checks)
//! and, with nothing changing outside, a state where it writes nothing more.
//!
//! Hosts have 1 to 12 guests of up to a few GiB with random ranges (one in ten inverted:
//! dynamic-min above dynamic-max), targets, actuals, inaccuracies and balloon behaviours
//! (ideal, hidden floor or ceiling, stuck, stalling, sluggish, trickling, no driver). Case
//! counts are kept small: each case runs minutes of simulated time through one long-lived
//! [`Adaptive`].

#[path = "support/recorder.rs"]
mod recorder;

use proptest::prelude::*;
use recorder::{acceptable, frees, Recorder, Round};
use squeeze::adaptive::{Adaptive, AdaptiveOptions};
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{DomId, Domain, Io, Kib};

const MIB: Kib = 1024;

fn rate() -> impl Strategy<Value = Kib> {
    (1..=512 as Kib).prop_map(|mib| mib * MIB)
}

/// A balloon behaviour, with floors and ceilings as fractions of the way between actual and
/// target, resolved once the guest's sizes are known.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Ideal(Kib),
    HiddenFloor(Kib, f64),
    HiddenCeiling(Kib, f64),
    Stuck,
    Stalling(Kib, f64, f64),
    Sluggish(Kib, f64),
    Trickle(f64),
    NoBalloonDriver,
}

/// Drivers that settle: each either reaches what it is asked, or stops for good.
fn settling_kind() -> impl Strategy<Value = Kind> {
    let fast = || (16..=512 as Kib).prop_map(|mib| mib * MIB);
    prop_oneof![
        4 => fast().prop_map(Kind::Ideal),
        1 => (fast(), 0.0..1.0).prop_map(|(r, f)| Kind::HiddenFloor(r, f)),
        1 => (fast(), 0.0..1.0).prop_map(|(r, f)| Kind::HiddenCeiling(r, f)),
        1 => Just(Kind::Stuck),
        1 => ((16..=32 as Kib), 0.0..4.0).prop_map(|(r, d)| Kind::Sluggish(r * MIB, d)),
        1 => Just(Kind::NoBalloonDriver),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => rate().prop_map(Kind::Ideal),
        1 => (rate(), 0.0..1.0).prop_map(|(r, f)| Kind::HiddenFloor(r, f)),
        1 => (rate(), 0.0..1.0).prop_map(|(r, f)| Kind::HiddenCeiling(r, f)),
        1 => Just(Kind::Stuck),
        1 => (rate(), 0.5..4.0, 1.0..20.0).prop_map(|(r, a, s)| Kind::Stalling(r, a, s)),
        1 => ((1..=32 as Kib), 0.0..4.0).prop_map(|(r, d)| Kind::Sluggish(r * MIB, d)),
        1 => (1.0..8.0).prop_map(Kind::Trickle),
        1 => Just(Kind::NoBalloonDriver),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    min_mib: Kib,
    range_mib: Kib,
    /// dynamic-min above dynamic-max (the two bounds swapped): a range a toolstack writing
    /// the two keys one at a time leaves for a while, or a misconfigured guest for good.
    inverted: bool,
    actual: f64,
    target: f64,
    maxmem_extra_mib: Kib,
    inaccuracy_kib: Kib,
    kind: Kind,
}

fn spec(kinds: BoxedStrategy<Kind>, sane: bool) -> impl Strategy<Value = Spec> {
    (
        0..=2048 as Kib,
        0..=2048 as Kib,
        prop::bool::weighted(if sane { 0.0 } else { 0.1 }),
        0.0..1.0f64,
        0.0..1.0f64,
        0..=256 as Kib,
        prop::sample::select(if sane {
            vec![0 as Kib]
        } else {
            vec![0, 4, 4, 16]
        }),
        kinds,
    )
        .prop_map(
            |(min_mib, range_mib, inverted, actual, target, extra, inacc, kind)| Spec {
                min_mib,
                range_mib,
                inverted,
                actual,
                target,
                maxmem_extra_mib: extra,
                inaccuracy_kib: inacc,
                kind,
            },
        )
}

fn guest(domid: DomId, s: &Spec) -> (Domain, Behaviour) {
    let (lo, hi) = (s.min_mib * MIB, (s.min_mib + s.range_mib) * MIB);
    // Every guest holds, and is headed for, something inside its range, 2 MiB above its
    // dynamic-min at least (more than twice the largest inaccuracy, which the policy holds back).
    // An inverted guest's range is hi..lo; it holds between its dynamic-min (hi) + 2 MiB and
    // as much again as the range was wide, as a guest does whose range was just moved down
    // past what it holds.
    let (min, max, top) = if s.inverted {
        (hi, lo, hi + (hi - lo))
    } else {
        (lo, hi, hi)
    };
    let floor = (min + 2 * MIB).min(top);
    let at = |f: f64| floor + ((top - floor) as f64 * f) as Kib;
    let actual = at(s.actual);
    let target = if matches!(s.kind, Kind::NoBalloonDriver) {
        actual
    } else {
        at(s.target)
    };
    let (lo, hi) = (actual.min(target), actual.max(target));
    let between = |f: f64| lo + ((hi - lo) as f64 * f) as Kib;
    let behaviour = match s.kind {
        Kind::Ideal(r) => Behaviour::Ideal { rate_kib_per_s: r },
        Kind::HiddenFloor(r, f) => Behaviour::HiddenFloor {
            rate_kib_per_s: r,
            floor_kib: between(f),
        },
        Kind::HiddenCeiling(r, f) => Behaviour::HiddenCeiling {
            rate_kib_per_s: r,
            ceiling_kib: between(f).max(actual),
        },
        Kind::Stuck => Behaviour::Stuck,
        Kind::Stalling(r, a, s) => Behaviour::Stalling {
            rate_kib_per_s: r,
            active_s: a,
            stalled_s: s,
        },
        Kind::Sluggish(r, d) => Behaviour::Sluggish {
            rate_kib_per_s: r,
            delay_s: d,
        },
        Kind::Trickle(p) => Behaviour::Trickle {
            chunk_kib: 4,
            period_s: p,
        },
        Kind::NoBalloonDriver => Behaviour::NoBalloonDriver,
    };
    let can_balloon = !matches!(s.kind, Kind::NoBalloonDriver);
    let maxmem = actual.max(target) + s.maxmem_extra_mib * MIB;
    (
        Domain::new(
            domid,
            can_balloon,
            min,
            target,
            max,
            actual,
            maxmem,
            s.inaccuracy_kib,
        ),
        behaviour,
    )
}

#[derive(Debug, Clone)]
struct Case {
    specs: Vec<Spec>,
    extra_free_mib: Kib,
    slush_mib: Kib,
}

fn case(kinds: BoxedStrategy<Kind>, sane: bool) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(spec(kinds, sane), 1..=12),
        0..=4096 as Kib,
        0..=128 as Kib,
    )
        .prop_map(|(specs, extra_free_mib, slush_mib)| Case {
            specs,
            extra_free_mib,
            slush_mib,
        })
}

impl Case {
    /// A simulated host in a state Xen could be in: the memory every guest is still growing
    /// into is there to be taken.
    fn simulator(&self) -> Simulator {
        let guests: Vec<(Domain, Behaviour)> = self
            .specs
            .iter()
            .enumerate()
            .map(|(i, s)| guest(3 * i as DomId + 1, s))
            .collect();
        let promised: Kib = guests
            .iter()
            .filter(|(d, _)| d.can_balloon)
            .map(|(d, _)| (d.target_kib - d.inaccuracy_kib - d.memory_actual_kib).max(0))
            .sum();
        let mut sim = Simulator::new(SimConfig {
            free_mem_kib: promised + self.extra_free_mib * MIB,
            target_host_free_mem_kib: self.slush_mib * MIB,
            free_memory_tolerance_kib: 0,
            clock: ClockMode::FollowWait,
            time_limit_s: Some(7200.0),
            record_trace: false,
        });
        for (d, b) in guests {
            sim.add_guest(d, b).unwrap();
        }
        sim
    }
}

/// Targets inside the dynamic range (the single point dynamic-min when the range is inverted),
/// set only on guests with a balloon driver; and two-phase
/// safety: a round that sets a freeing target gives no guest more memory to take (every other
/// target it sets is no higher than the one it replaces).
fn check_rounds(rounds: &[Round]) -> Result<(), TestCaseError> {
    for (i, r) in rounds.iter().enumerate() {
        let any_freeing = r.actions.iter().any(|a| {
            let d = r.host.domain(a.domid).expect("actions name known domains");
            frees(d, a.new_target_kib)
        });
        for a in &r.actions {
            let d = r.host.domain(a.domid).expect("actions name known domains");
            prop_assert!(
                d.can_balloon,
                "round {i}: target set on {a:?} without a driver"
            );
            let top = d.dynamic_max_kib.max(d.dynamic_min_kib);
            prop_assert!(
                (d.dynamic_min_kib..=top).contains(&a.new_target_kib),
                "round {i}: {a:?} outside {}..={top} (dynamic-max {})",
                d.dynamic_min_kib,
                d.dynamic_max_kib
            );
            if any_freeing {
                prop_assert!(
                    frees(d, a.new_target_kib) || a.new_target_kib <= d.target_kib,
                    "round {i}: {a:?} raises {d:?} in a freeing round: {:?}",
                    r.actions
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Freeing part of what the guests hold, reserving for a new domain and handing the rest
    /// back, all through one adaptive squeezer: targets stay in range, freeing rounds only
    /// free, the simulator sees no guest allocate memory the host does not have, and a
    /// successful free leaves what was asked free even if every guest went to target +
    /// inaccuracy.
    #[test]
    fn adaptive_requests_on_random_hosts_keep_the_hosts_rules(
        c in case(kind().boxed(), false),
        free_frac in 0.0..0.5f64,
        range in (0..=4096 as Kib, 0..=4096 as Kib),
    ) {
        let mut io = Recorder::new(c.simulator());
        let mut a = Adaptive::new(AdaptiveOptions::default()).unwrap();
        let held: Kib = io.sim.make_host().unwrap().domains().iter().map(|d| d.memory_actual_kib).sum();
        let required = io.sim.free_mem_kib() + 1 + (held as f64 * free_frac) as Kib;
        let freed = acceptable(a.change_host_free_memory(&mut io, required, &mut |f| f >= required))?;
        check_rounds(&io.rounds)?;
        if freed.is_some() {
            let host = io.sim.make_host().unwrap();
            prop_assert!(
                squeeze::adaptive::guaranteed_free(&host) >= required,
                "{} KiB guaranteed free after freeing {required}",
                squeeze::adaptive::guaranteed_free(&host)
            );
        }
        let (lo, hi) = (range.0.min(range.1) * MIB, range.0.max(range.1) * MIB);
        if let Some(got) = acceptable(a.free_memory_range(&mut io, lo, hi))? {
            prop_assert!((lo..=hi).contains(&got));
            io.sim.adjust_free_mem(-got);
        }
        check_rounds(&io.rounds)?;
        acceptable(a.balance_memory(&mut io))?;
        check_rounds(&io.rounds)?;
        io.sim.advance(1.0).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(io.sim.violations().is_empty(), "{:?}", io.sim.violations());
    }

    /// With nothing changing outside (no new domains, ranges or requests), balancing every
    /// 10 s reaches a state where no target is written any more: no target changes in the last
    /// five of fifteen minutes. The drivers are ideal (16 MiB/s or more), at hidden floors or
    /// ceilings, stuck, sluggish or absent. (A driver that keeps growing by a trickle is
    /// offered more each time it passes the ceiling it showed, so it is written to for as long
    /// as it makes progress: that is not a static input.)
    #[test]
    fn with_static_inputs_adaptive_balancing_stops_writing(c in case(settling_kind().boxed(), false)) {
        let mut io = Recorder::new(c.simulator());
        let mut a = Adaptive::new(AdaptiveOptions::default()).unwrap();
        let changes_at = |io: &Recorder| io.sim.counters().target_changes;
        let mut quiet_since = None;
        for call in 0..90u32 {
            let before = changes_at(&io);
            acceptable(a.balance_memory(&mut io))?;
            let now = io.sim.now().unwrap();
            if changes_at(&io) == before {
                quiet_since.get_or_insert(now);
            } else {
                prop_assert!(call < 60, "target written at {now} s, call {call}");
                quiet_since = None;
            }
            let next = (call + 1) as f64 * 10.0;
            if next > now {
                io.sim.advance(next - now).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            }
        }
        check_rounds(&io.rounds)?;
        prop_assert!(quiet_since.is_some());
        prop_assert!(io.sim.violations().is_empty(), "{:?}", io.sim.violations());
    }
}
