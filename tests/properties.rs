//! Properties of the squeezer on random hosts.
//!
//! Every case builds a simulated host with 1 to 40 guests whose dynamic ranges, targets, actuals,
//! balloon inaccuracies and balloon behaviours are random, then drives it through the public
//! entry points (`change_host_free_memory`, `free_memory_range`, `balance_memory`) while a thin
//! wrapper around the simulator records what the algorithm saw and asked for in every round.
//!
//! Sizes are MiB-scale (guests up to a few GiB) and balloon rates tens to hundreds of MiB/s, so a
//! whole run takes at most a few hundred simulated seconds; the clock follows the driver's 1 s
//! waits.

#[path = "support/inverted_host.rs"]
mod inverted_host;
#[path = "support/recorder.rs"]
mod recorder;

use inverted_host::sleepy_inverted_guest_host;
use proptest::prelude::*;
use recorder::{acceptable, frees, Recorder, Round};
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator, Violation};
use squeeze::{
    balance_memory, free_memory_range, DomId, Domain, Fistpoints, Io, Kib, Options, Phase,
    Squeezer, Verdict,
};

const MIB: Kib = 1024;

/// How a generated guest's balloon driver behaves; floors and ceilings are fractions of the
/// guest's own span, resolved once its sizes are known.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Ideal(Kib),
    HiddenFloor(Kib, f64),
    HiddenCeiling(Kib, f64),
    Stuck,
    IntermittentlyStuck(Kib, f64),
    Sluggish(Kib, f64),
    NoBalloonDriver,
}

fn rate() -> impl Strategy<Value = Kib> {
    (16..=512 as Kib).prop_map(|mib| mib * MIB)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => rate().prop_map(Kind::Ideal),
        1 => (rate(), 0.0..1.0).prop_map(|(r, f)| Kind::HiddenFloor(r, f)),
        1 => (rate(), 0.0..1.0).prop_map(|(r, f)| Kind::HiddenCeiling(r, f)),
        1 => Just(Kind::Stuck),
        1 => (rate(), 0.5..8.0).prop_map(|(r, p)| Kind::IntermittentlyStuck(r, p)),
        1 => ((4..=32 as Kib), 0.0..4.0).prop_map(|(r, d)| Kind::Sluggish(r * MIB, d)),
        1 => Just(Kind::NoBalloonDriver),
    ]
}

/// The raw numbers of one guest, before they are turned into a [`Domain`].
#[derive(Debug, Clone, Copy)]
struct Spec {
    min_mib: Kib,
    range_mib: Kib,
    /// dynamic-min above dynamic-max: a misconfigured guest the squeezer must survive.
    inverted: bool,
    actual_mib: Kib,
    target_mib: Kib,
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
        prop::sample::select(vec![0 as Kib, 4, 4, 4, 16, 1024]),
        kinds,
    )
        .prop_map(
            move |(min_mib, range_mib, inverted, a, t, extra, inacc, kind)| {
                // Sane guests have actual and target inside their dynamic range; the others may
                // also be up to 512 MiB above the top of it.
                let hi = if sane {
                    min_mib + range_mib
                } else {
                    min_mib + range_mib + 512
                };
                let pick = |lo: Kib, f: f64| lo + ((hi - lo).max(0) as f64 * f) as Kib;
                // Every guest holds, and is headed for, at least its dynamic-min (the larger bound
                // when they are inverted): a domain is built with that much, the toolstack never
                // sets a target below it, and the policy counts on it. A guest below its
                // dynamic-min would be sent up to it whatever is free, as in squeezed.
                let floor = if inverted {
                    min_mib + range_mib
                } else {
                    min_mib
                };
                // A guest also starts at least 2 MiB above it: more than twice the largest
                // inaccuracy, so that the 2 × inaccuracy the policy holds back is really there.
                // (A guest sitting at its dynamic-min has nothing to hold back it from, so there
                // squeezed's guarantee is short by up to that guest's inaccuracy.)
                let floor = floor + if sane { 0 } else { 2 };
                Spec {
                    min_mib,
                    range_mib,
                    inverted,
                    actual_mib: pick(floor, a),
                    target_mib: pick(floor, t),
                    maxmem_extra_mib: extra,
                    inaccuracy_kib: if sane { 0 } else { inacc },
                    kind,
                }
            },
        )
}

struct Guest {
    domain: Domain,
    behaviour: Behaviour,
}

fn guest(domid: DomId, s: &Spec) -> Guest {
    let (mut min, mut max) = (s.min_mib * MIB, (s.min_mib + s.range_mib) * MIB);
    if s.inverted && min != max {
        std::mem::swap(&mut min, &mut max);
    }
    let actual = s.actual_mib * MIB;
    // A guest without a balloon driver sits where it booted: its target is what it has.
    let target = if matches!(s.kind, Kind::NoBalloonDriver) {
        actual
    } else {
        s.target_mib * MIB
    };
    let maxmem = actual.max(target) + s.maxmem_extra_mib * MIB;
    let (lo, hi) = (actual.min(target), actual.max(target));
    let at = |f: f64| lo + ((hi - lo) as f64 * f) as Kib;
    let behaviour = match s.kind {
        Kind::Ideal(r) => Behaviour::Ideal { rate_kib_per_s: r },
        Kind::HiddenFloor(r, f) => Behaviour::HiddenFloor {
            rate_kib_per_s: r,
            floor_kib: at(f),
        },
        Kind::HiddenCeiling(r, f) => Behaviour::HiddenCeiling {
            rate_kib_per_s: r,
            ceiling_kib: at(f).max(actual),
        },
        Kind::Stuck => Behaviour::Stuck,
        Kind::IntermittentlyStuck(r, p) => Behaviour::IntermittentlyStuck {
            rate_kib_per_s: r,
            period_s: p,
        },
        Kind::Sluggish(r, d) => Behaviour::Sluggish {
            rate_kib_per_s: r,
            delay_s: d,
        },
        Kind::NoBalloonDriver => Behaviour::NoBalloonDriver,
    };
    let can_balloon = !matches!(s.kind, Kind::NoBalloonDriver);
    Guest {
        domain: Domain::new(
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
    }
}

/// A generated host: guests, plus free memory beyond what the guests already have been promised.
#[derive(Debug, Clone)]
struct Case {
    specs: Vec<Spec>,
    extra_free_mib: Kib,
    slush_mib: Kib,
}

fn case(kinds: BoxedStrategy<Kind>, sane: bool) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(spec(kinds, sane), 1..=40),
        0..=8192 as Kib,
        0..=128 as Kib,
    )
        .prop_map(|(specs, extra_free_mib, slush_mib)| Case {
            specs,
            extra_free_mib,
            slush_mib,
        })
}

fn any_host() -> impl Strategy<Value = Case> {
    case(kind().boxed(), false)
}

fn ideal_host() -> impl Strategy<Value = Case> {
    case(rate().prop_map(Kind::Ideal).boxed(), true)
}

impl Case {
    fn guests(&self) -> Vec<Guest> {
        // Domids with gaps, as on a host where domains have come and gone.
        self.specs
            .iter()
            .enumerate()
            .map(|(i, s)| guest(3 * i as DomId + 1, s))
            .collect()
    }

    /// A simulated host in a state Xen could be in: the memory every guest is still growing
    /// into (up to its target, less the inaccuracy where it stops) is there to be taken.
    fn simulator(&self) -> Simulator {
        let guests = self.guests();
        let promised: Kib = guests
            .iter()
            .filter(|g| g.domain.can_balloon)
            .map(|g| {
                let d = &g.domain;
                (d.target_kib - d.inaccuracy_kib - d.memory_actual_kib).max(0)
            })
            .sum();
        let mut sim = Simulator::new(SimConfig {
            free_mem_kib: promised + self.extra_free_mib * MIB,
            target_host_free_mem_kib: self.slush_mib * MIB,
            free_memory_tolerance_kib: 0,
            clock: ClockMode::FollowWait,
            time_limit_s: Some(3600.0),
            record_trace: false,
        });
        for g in guests {
            sim.add_guest(g.domain, g.behaviour).unwrap();
        }
        sim
    }

    fn total_actual_kib(&self) -> Kib {
        self.guests()
            .iter()
            .map(|g| g.domain.memory_actual_kib)
            .sum()
    }
}

/// Round-by-round checks shared by the driver-level properties.
fn check_rounds(rounds: &[Round]) -> Result<(), TestCaseError> {
    for (i, r) in rounds.iter().enumerate() {
        let mut freeing = 0;
        for a in &r.actions {
            let d = r.host.domain(a.domid).expect("actions name known domains");
            prop_assert!(
                d.can_balloon,
                "round {i}: target set on domain {} without a balloon driver",
                a.domid
            );
            if d.dynamic_min_kib <= d.dynamic_max_kib {
                prop_assert!(
                    (d.dynamic_min_kib..=d.dynamic_max_kib).contains(&a.new_target_kib),
                    "round {i}: domain {} target {} outside {}..={}",
                    a.domid,
                    a.new_target_kib,
                    d.dynamic_min_kib,
                    d.dynamic_max_kib
                );
            }
            if frees(d, a.new_target_kib) {
                freeing += 1;
            }
        }
        // Two phases: a round sets freeing targets only, or no freeing target at all. A
        // freeing target lies below what the guest holds, so in a freeing round no guest is
        // allowed to grow and no guest at rest or growing has its target raised. (A guest
        // already ballooning below its share may have its target raised to that share, still
        // below what it holds; squeezed does the same.)
        prop_assert!(
            freeing == 0 || freeing == r.actions.len(),
            "round {i} mixes {freeing} freeing targets with {} others: {:?}",
            r.actions.len() - freeing,
            r.actions
        );
    }
    Ok(())
}

/// Memory the guests could still take if each balloon driver went to target + inaccuracy
/// (negative when a guest is above that and will give memory back). A guest without a balloon
/// driver does not move. A guest the squeezer has given up on as stuck had its maxmem pinned
/// to no more than it holds, and Xen enforces maxmem, so it is counted up to its maxmem at most.
///
/// A guest that ended below its dynamic-min is not counted: squeezed holds back twice the
/// inaccuracy only from what a guest can give (above its dynamic-min), so one that stopped
/// within its inaccuracy short of a target at its dynamic-min may take those few KiB back
/// (found at random: a guest 16 KiB under its 13 MiB minimum, inaccuracy 16 KiB, after a free
/// that ended 1 KiB above what was asked). That is squeezed's algorithm, which the classic
/// policy keeps decision for decision; the adaptive policy's guaranteed free memory counts it.
fn worst_case_growth(sim: &Simulator, stuck: &[DomId], domids: &[DomId]) -> Kib {
    domids
        .iter()
        .filter_map(|&id| sim.guest(id).filter(|d| d.can_balloon))
        .filter(|d| d.memory_actual_kib >= d.dynamic_min_kib)
        .map(|d| {
            let mut top = d.target_kib + d.inaccuracy_kib;
            if stuck.contains(&d.domid) {
                top = top.min(d.memory_max_kib);
            }
            top - d.memory_actual_kib
        })
        .sum()
}

/// How far the simulator's first over-allocation went past host free memory: a guest tried
/// to allocate `asked` KiB with only `free` KiB free. `None` for any other violation.
fn over_allocation(v: &Violation) -> Option<Kib> {
    let words: Vec<&str> = v.what.split_whitespace().collect();
    match words[..] {
        ["tried", "to", "allocate", asked, "KiB", "with", "only", free, "KiB", "free", ..] => {
            Some(asked.parse::<Kib>().ok()? - free.parse::<Kib>().ok()?)
        }
        _ => None,
    }
}

/// Checks that the simulator's first violation is squeezed's one over-allocation on these
/// hosts, and no worse than squeezed's own count allows.
///
/// squeezed clips the maxmem of a guest it declares inactive to
/// min(dynamic-max, max(dynamic-min, min(target, actual))), and on its platform setting maxmem
/// sets the target too. With an inverted range (dynamic-min above dynamic-max) that is the
/// dynamic-max, below the dynamic-min: once the driver wakes it shrinks below its
/// dynamic-min, and the next round that sees it active sends it back up to its dynamic-min.
/// The surplus squeezed hands out counts only what each guest holds above dynamic-min + 2 ×
/// inaccuracy, so that climb is memory nobody counted, and if the surplus has gone to other
/// guests they take more than is free (found at random, about once in 20 000 cases: a guest
/// with range 582 MiB..0 woken 6 MiB below its dynamic-min, with 2 KiB free; cut down to
/// `squeezed_sends_a_woken_inverted_guest_back_to_its_dynamic_min_with_memory_it_has_given_away`).
/// The climb may also be under way when the memory runs out: a guest sent up a few rounds
/// earlier climbs on through a freeing round that squeezed started when it saw free memory
/// fall (found at random too, about once in 20 000 cases: a guest 2 MiB short of its
/// dynamic-min took its last step with 1 MiB free).
///
/// The classic policy keeps squeezed's decisions, so the property holds it to what squeezed
/// guarantees: at the last look before the guests moved, an inverted guest below its
/// dynamic-min was headed back up to it, and the guests took no more than free memory plus
/// what squeezed left out of its count at that look (for every guest, how far it was below
/// dynamic-min + 2 × inaccuracy). On a host without an inverted guest no over-allocation is
/// allowed at all.
fn squeezeds_inverted_range_flaw(io: &Recorder) -> Result<(), TestCaseError> {
    check_rounds(&io.rounds)?;
    let v = &io.sim.violations()[0];
    let Some(excess) = over_allocation(v) else {
        return Err(TestCaseError::fail(format!("{v:?}")));
    };
    // A violation makes every later look fail, so the last round recorded is the one the
    // guests were following.
    let r = io.rounds.last().expect("a request looks at the host first");
    let climbing_inverted = r.host.domains().iter().any(|d| {
        let target = r
            .actions
            .iter()
            .rfind(|a| a.domid == d.domid)
            .map_or(d.target_kib, |a| a.new_target_kib);
        d.dynamic_min_kib > d.dynamic_max_kib
            && d.memory_actual_kib < d.dynamic_min_kib
            && target > d.memory_actual_kib
    });
    prop_assert!(
        climbing_inverted,
        "{v:?}, and no inverted guest below its dynamic-min was headed up: {:?}",
        r
    );
    let uncounted: Kib = r
        .host
        .domains()
        .iter()
        .filter(|d| d.can_balloon)
        .map(|d| (d.dynamic_min_kib + 2 * d.inaccuracy_kib - d.memory_actual_kib).max(0))
        .sum();
    prop_assert!(
        excess <= uncounted,
        "{v:?}: {excess} KiB over, but squeezed left only {uncounted} KiB out of its count"
    );
    Ok(())
}

/// What a request on the recorded host came to: its outcome, or squeezed's inverted-range
/// over-allocation (see [`squeezeds_inverted_range_flaw`]), after which the simulator refuses
/// every call and the case ends.
enum Step<T> {
    Done(Option<T>),
    SqueezedsFlaw,
}

fn step<T>(io: &Recorder, r: squeeze::Result<T>) -> Result<Step<T>, TestCaseError> {
    if io.sim.violations().is_empty() {
        Ok(Step::Done(acceptable(r)?))
    } else {
        squeezeds_inverted_range_flaw(io)?;
        Ok(Step::SqueezedsFlaw)
    }
}

/// Frees a part of what the guests hold, reserves memory for a new domain, lets it take what it
/// got and hands the rest back, checking on the way that the simulator's rules hold (but for
/// squeezed's inverted-range flaw, within its bound), that every round respects the two phases
/// and that after a successful free of X, X stays free even if every guest went to target +
/// inaccuracy.
fn free_reserve_and_rebalance(
    c: &Case,
    opts: Options,
    free_frac: f64,
    range: (Kib, Kib),
) -> Result<(), TestCaseError> {
    let mut io = Recorder::new(c.simulator());
    let domids: Vec<DomId> = io
        .sim
        .make_host()
        .unwrap()
        .domains()
        .iter()
        .map(|d| d.domid)
        .collect();

    // 1. Free a fraction of what the guests hold.
    // Always more than is free now: the squeezer has to act. (When the memory is already
    // free and every driver is at rest it does nothing, and the guests may still drift by
    // their inaccuracy.)
    let required = io.sim.free_mem_kib() + 1 + (c.total_actual_kib() as f64 * free_frac) as Kib;
    let mut squeezer = Squeezer::new(opts);
    let freed = squeezer.change_host_free_memory(&mut io, required, &mut |free| free >= required);
    let Step::Done(freed) = step(&io, freed)? else {
        return Ok(());
    };
    check_rounds(&io.rounds)?;
    if freed.is_some() {
        let free = io.sim.free_mem_kib();
        let growth = worst_case_growth(&io.sim, squeezer.inactive_domids(), &domids);
        prop_assert!(
            free - growth >= required,
            "{free} KiB free, guests could still take {growth}, {required} was freed"
        );
    }

    // 2. Reserve for a new domain and let it take what it was given.
    let (lo, hi) = (range.0.min(range.1) * MIB, range.0.max(range.1) * MIB);
    let reserved = free_memory_range(&mut io, &opts, lo, hi);
    let Step::Done(reserved) = step(&io, reserved)? else {
        return Ok(());
    };
    if let Some(got) = reserved {
        prop_assert!((lo..=hi).contains(&got));
        io.sim.adjust_free_mem(-got);
    }
    check_rounds(&io.rounds)?;

    // 3. Hand the rest back.
    let balanced = balance_memory(&mut io, &opts);
    let Step::Done(_) = step(&io, balanced)? else {
        return Ok(());
    };
    check_rounds(&io.rounds)?;
    // One more tick lets every guest act on its last target.
    let last = io.sim.advance(1.0);
    step(&io, last)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// One iteration on an arbitrary snapshot: targets in range, and in a freeing round every
    /// target set frees memory, so that no guest at rest sees its target go up.
    #[test]
    fn one_iteration_keeps_targets_in_range_and_freeing_rounds_only_free(
        c in any_host(),
        want_mib in 0..=16384 as Kib,
    ) {
        let mut sim = c.simulator();
        let host = sim.make_host().unwrap();
        let mut s = Squeezer::default();
        let it = s.one_iteration(&host, want_mib * MIB, &mut |_| true, 0.0).unwrap();
        if let Verdict::AdjustTargets(actions) = &it.verdict {
            for a in actions {
                let d = host.domain(a.domid).unwrap();
                if d.dynamic_min_kib <= d.dynamic_max_kib {
                    prop_assert!((d.dynamic_min_kib..=d.dynamic_max_kib).contains(&a.new_target_kib));
                }
                if it.phase == Phase::Freeing {
                    prop_assert!(frees(d, a.new_target_kib), "freeing round asked {a:?} of {d:?}");
                    if d.has_hit_target() {
                        prop_assert!(a.new_target_kib < d.target_kib,
                            "freeing round raised the target of a guest at rest: {a:?}, {d:?}");
                    }
                }
            }
        }
    }

    /// Freeing, reserving for a new domain and rebalancing never break the simulator's rules
    /// (no guest allocates beyond host free memory, no target outside the dynamic range), every
    /// round respects the two phases, and what was freed stays free in the worst case. The one
    /// exception is squeezed's own: a guest with an inverted range, woken below its dynamic-min
    /// after squeezed clipped it, is sent back up uncounted; that over-allocation is held to
    /// squeezed's bound ([`squeezeds_inverted_range_flaw`]).
    #[test]
    fn requests_on_random_hosts_never_break_the_hosts_rules(
        c in any_host(),
        free_frac in 0.0..0.5f64,
        range in (0..=4096 as Kib, 0..=4096 as Kib),
    ) {
        free_reserve_and_rebalance(&c, Options::default(), free_frac, range)?;
    }

    /// With only ideal balloon drivers, and inaccuracy 0 so that each reaches its target
    /// exactly, balancing converges within a bound derived from sizes and rates, and a second
    /// balance then changes nothing.
    ///
    /// The bound: every guest starts inside its dynamic range, so memory-actual never drops
    /// below dynamic-min and each KiB a guest gives up or takes is exactly matched in host
    /// free memory. The policy's surplus (free + Σ(actual − min) − slush) is therefore the
    /// same in every round, γ is the same, and so is each guest's policy target T. Let L be
    /// the largest dynamic range and r the slowest rate: no guest needs more than ⌈L/r⌉
    /// seconds to cross its range. Iteration k runs at time k − 1 s.
    /// - Freeing: a guest above T is sent there in iteration 1 and has arrived by time
    ///   ⌈L/r⌉. A guest below T keeps climbing toward its old target; if that lies above T
    ///   it is above T by time ⌈L/r⌉ at the latest, by less than one second's movement, is
    ///   sent back in the next iteration and is back one second later. So by iteration
    ///   ⌈L/r⌉ + 2 no guest is above T, and the allocating phase has begun.
    /// - Allocating: its first iteration sends every guest still below T there; they arrive
    ///   within ⌈L/r⌉ seconds, and as T does not move none becomes freeing again.
    /// - The iteration ⌈L/r⌉ after that sees every target reached and unchanged, and ends
    ///   the call.
    ///
    /// In all, at most 2⌈L/r⌉ + 2 iterations.
    #[test]
    fn balancing_ideal_guests_converges_within_the_bound_and_then_stays_put(c in ideal_host()) {
        let opts = Options::default();
        let mut io = Recorder::new(c.simulator());
        let longest = c.guests().iter().map(|g| g.domain.range_kib()).max().unwrap();
        let slowest = c.guests().iter().map(|g| match g.behaviour {
            Behaviour::Ideal { rate_kib_per_s } => rate_kib_per_s,
            other => unreachable!("{other:?}"),
        }).min().unwrap();
        let bound = 2 * ((longest + slowest - 1) / slowest) as u64 + 2;

        let before = io.sim.counters();
        balance_memory(&mut io, &opts).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let after = io.sim.counters();
        // One snapshot before the loop, then one per iteration.
        let iterations = after.make_host - before.make_host - 1;
        prop_assert!(iterations <= bound, "{iterations} iterations, bound {bound}");
        check_rounds(&io.rounds)?;

        balance_memory(&mut io, &opts).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let again = io.sim.counters();
        prop_assert_eq!(again.target_changes, after.target_changes, "a settled host was rebalanced");
        prop_assert_eq!(again.actions, after.actions);
        prop_assert_eq!(again.make_host - after.make_host, 2, "one look, one iteration");
        prop_assert!(io.sim.violations().is_empty());
    }
}

/// The properties are not vacuous: with either of squeezed's safety mechanisms turned off,
/// the same random hosts (from a fixed seed) produce a counterexample.
#[test]
fn turning_off_either_safety_mechanism_is_caught_on_random_hosts() {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let strategy = (any_host(), 0.0..0.5f64, (0..=4096 as Kib, 0..=4096 as Kib));
    for (what, fistpoints) in [
        (
            "two-phase target sets",
            Fistpoints {
                disable_two_phase_target_sets: true,
                ..Fistpoints::default()
            },
        ),
        (
            "inaccuracy compensation",
            Fistpoints {
                disable_inaccuracy_compensation: true,
                ..Fistpoints::default()
            },
        ),
    ] {
        let mut runner = TestRunner::new_with_rng(
            Config {
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        let opts = Options {
            fistpoints,
            ..Options::default()
        };
        let outcome = runner.run(&strategy, |(c, free_frac, range)| {
            free_reserve_and_rebalance(&c, opts, free_frac, range)
        });
        assert!(
            outcome.is_err(),
            "without {what} no counterexample was found"
        );
    }
}

/// squeezed's flaw, step by step, with the classic policy (decision for decision squeezed's):
///
/// - At 8 s, 64 MiB is asked for: only guest 1 can give it (1088 − 1024 MiB), so its target
///   goes to its dynamic-min, 1024 MiB. Its driver sleeps; at 14 s (6 s without progress) it
///   is declared inactive, and squeezed clips the maxmem of an inactive guest to
///   min(dynamic-max, max(dynamic-min, min(target, actual))): with the range inverted that is
///   its dynamic-max, 0. On squeezed's platform setting maxmem sets the target too. The call
///   fails, blaming guest 1.
/// - At 16 s the driver wakes and heads for 0: by 18 s it holds 960 MiB, 64 MiB below its
///   dynamic-min, and 128 MiB is free.
/// - At 18 s a balance hands out the surplus: 128 MiB free, and nothing either guest can give
///   (guest 1 is below its dynamic-min), so guest 2 gets 128/2048 of its 2 GiB range,
///   1152 MiB. Guest 1 gets its dynamic-min, 1024 MiB, 64 MiB more than it holds, which the
///   surplus never counted. Both grow in the same second: guest 1 takes 64 MiB, and guest 2
///   tries to take 128 MiB with 64 MiB left.
#[test]
fn squeezed_sends_a_woken_inverted_guest_back_to_its_dynamic_min_with_memory_it_has_given_away() {
    let opts = Options::default();
    let mut sim = sleepy_inverted_guest_host();
    let asked = 64 * MIB;
    let first = squeeze::change_host_free_memory(&mut sim, &opts, asked, &mut |f| f >= asked);
    assert!(
        matches!(first, Err(squeeze::Error::DomainsRefusedToCooperate { ref domids }) if domids == &[1]),
        "{first:?}"
    );
    assert_eq!(sim.time(), 14.0);
    let g1 = *sim.guest(1).unwrap();
    assert_eq!(
        (g1.target_kib, g1.memory_max_kib, g1.memory_actual_kib),
        (0, 0, 1088 * MIB),
        "guest 1 clipped to its dynamic-max"
    );

    // One second at a time, as the driver loop would look.
    for _ in 0..4 {
        sim.advance(1.0).unwrap();
    }
    assert_eq!(sim.guest(1).unwrap().memory_actual_kib, 960 * MIB);
    assert_eq!(sim.free_mem_kib(), 128 * MIB);

    let balanced = balance_memory(&mut sim, &opts);
    let targets: Vec<_> = sim
        .decisions()
        .iter()
        .filter(|d| d.is_target && d.time == 18.0)
        .map(|d| (d.domid, d.kib))
        .collect();
    assert_eq!(targets, [(2, 1152 * MIB), (1, 1024 * MIB)]);
    assert_eq!(
        sim.violations()
            .iter()
            .map(|v| (v.time, v.domid, v.what.as_str()))
            .collect::<Vec<_>>(),
        [(
            19.0,
            2,
            "tried to allocate 131072 KiB with only 65536 KiB free on the host"
        )]
    );
    assert!(matches!(balanced, Err(squeeze::Error::Backend(_))));
}

/// The two counterexamples the property found at random, shrunk (each failed the property
/// before it knew squeezed's flaw):
///
/// - Guest 1 has the inverted range 582 MiB..0 and a driver that works and sleeps by turns of
///   5.1 s; guest 4 has a sluggish driver. In the final balance guest 1, woken below its
///   dynamic-min, is sent back up to it and tries to take 48 MiB (49 152 KiB) with 11 264 KiB
///   free.
/// - Guest 1 has the inverted range 1191..194 MiB and works and sleeps by turns of 4.6 s;
///   guest 4 is stuck, guest 7 ideal. In the final balance guest 1, sent up from 673 MiB to
///   its dynamic-min of 1191 MiB, climbs on through a freeing round and takes its last step,
///   2048 KiB, with 1024 KiB free.
///
/// Both are squeezed's flaw within its bound, which the property now accepts.
#[test]
fn the_counterexamples_found_at_random_are_squeezeds_flaw_within_its_bound() {
    let spec = |min_mib, range_mib, inverted, actual_mib, target_mib, kind| Spec {
        min_mib,
        range_mib,
        inverted,
        actual_mib,
        target_mib,
        maxmem_extra_mib: 0,
        inaccuracy_kib: 0,
        kind,
    };
    let woken_then_sent_up = Case {
        specs: vec![
            spec(
                0,
                582,
                true,
                1057,
                584,
                Kind::IntermittentlyStuck(48 * MIB, 5.136262623023385),
            ),
            spec(
                0,
                93,
                false,
                512,
                2,
                Kind::Sluggish(6 * MIB, 2.798735662332286),
            ),
        ],
        extra_free_mib: 0,
        slush_mib: 0,
    };
    free_reserve_and_rebalance(&woken_then_sent_up, Options::default(), 0.0, (1081, 553)).unwrap();
    let climbing_through_a_freeing_round = Case {
        specs: vec![
            spec(
                194,
                997,
                true,
                1619,
                1193,
                Kind::IntermittentlyStuck(86 * MIB, 4.569954053195811),
            ),
            spec(1602, 48, false, 1957, 1604, Kind::Stuck),
            spec(133, 1800, false, 2392, 135, Kind::Ideal(61 * MIB)),
        ],
        extra_free_mib: 248,
        slush_mib: 86,
    };
    free_reserve_and_rebalance(
        &climbing_through_a_freeing_round,
        Options::default(),
        0.2084749968277796,
        (1136, 0),
    )
    .unwrap();
}
