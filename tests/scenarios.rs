//! squeezed's eight simulator scenarios, replayed through our squeezer.
//!
//! Each scenario frees `required` KiB on a small simulated host, checks that the memory stays
//! free even if every guest grew to target + inaccuracy, then takes 500 KiB for a new domain and
//! hands the rest back. The clock ticks 0.1 s per wait, as in squeezed's simulator, and balloon
//! rates are in KiB per second. Unlike upstream's runner (which swallows every exception), each
//! scenario here states what must happen and why, and fails otherwise.

use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{change_host_free_memory, Domain, Error, Fistpoints, Kib, Options};

// The fields are read through Debug when a scenario fails.
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    Squeeze(Error),
    NotGuaranteedFree {
        free: Kib,
        could_take: Kib,
        required: Kib,
    },
}

struct Scenario {
    guests: Vec<(Domain, Behaviour)>,
    free_mem_kib: Kib,
    required_kib: Kib,
    fistpoints: Fistpoints,
}

fn dom(
    domid: i32,
    min: Kib,
    target: Kib,
    max: Kib,
    actual: Kib,
    maxmem: Kib,
    inacc: Kib,
) -> Domain {
    Domain::new(domid, true, min, target, max, actual, maxmem, inacc)
}

fn ideal(rate: Kib) -> Behaviour {
    Behaviour::Ideal {
        rate_kib_per_s: rate,
    }
}

/// Even if every guest went up to target + inaccuracy, `required` KiB would still be free.
fn verify_memory_is_guaranteed_free(sim: &Simulator, required: Kib) -> Result<(), Outcome> {
    let could_take: Kib = sim
        .trace()
        .last()
        .unwrap()
        .guests
        .iter()
        .map(|&(domid, target, actual)| target + sim.guest(domid).unwrap().inaccuracy_kib - actual)
        .sum();
    let free = sim.free_mem_kib();
    if free - could_take < required {
        return Err(Outcome::NotGuaranteedFree {
            free,
            could_take,
            required,
        });
    }
    Ok(())
}

fn simulate(s: &Scenario) -> (Result<(), Outcome>, Simulator) {
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: s.free_mem_kib,
        target_host_free_mem_kib: s.required_kib,
        free_memory_tolerance_kib: 0,
        clock: ClockMode::FixedTick(0.1),
        time_limit_s: Some(600.0),
        record_trace: true,
    });
    for (d, b) in &s.guests {
        sim.add_guest(*d, *b).unwrap();
    }
    let opts = Options {
        fistpoints: s.fistpoints,
        ..Options::default()
    };
    let run = |sim: &mut Simulator| -> Result<(), Outcome> {
        let required = s.required_kib;
        change_host_free_memory(sim, &opts, required, &mut |free| free >= required)
            .map_err(Outcome::Squeeze)?;
        sim.advance(0.0).map_err(Outcome::Squeeze)?;
        verify_memory_is_guaranteed_free(sim, required)?;
        // A new domain takes 500 KiB; the rest goes back to the guests.
        sim.adjust_free_mem(-500);
        change_host_free_memory(sim, &opts, 0, &mut |free| free <= 32).map_err(Outcome::Squeeze)?;
        sim.advance(0.0).map_err(Outcome::Squeeze)?;
        verify_memory_is_guaranteed_free(sim, 0)
    };
    let result = run(&mut sim);
    (result, sim)
}

fn scenario_a() -> Scenario {
    Scenario {
        guests: vec![
            (
                dom(0, 1000, 1500, 2000, 1500, 1500, 4),
                Behaviour::HiddenFloor {
                    rate_kib_per_s: 100,
                    floor_kib: 1250,
                },
            ),
            (
                dom(1, 2500, 3500, 4500, 3500, 3500, 4),
                Behaviour::IntermittentlyStuck {
                    rate_kib_per_s: 500,
                    period_s: 0.25,
                },
            ),
        ],
        free_mem_kib: 0,
        required_kib: 1000,
        fistpoints: Fistpoints::default(),
    }
}

fn scenario_e() -> Scenario {
    Scenario {
        guests: vec![
            (dom(0, 5000, 7000, 7000, 7000, 7000, 0), Behaviour::Stuck),
            (dom(1, 5000, 6000, 11000, 6000, 6000, 0), ideal(100)),
        ],
        free_mem_kib: 0,
        required_kib: 1000,
        fistpoints: Fistpoints::default(),
    }
}

#[test]
fn a_small_guest_with_a_hidden_floor_and_a_large_sticky_guest_free_the_memory() {
    let (result, sim) = simulate(&scenario_a());
    result.unwrap();
    assert!(sim.violations().is_empty());
    // Guest 0 cannot go below 1250, so guest 1 (sticky but working half the time) gives more.
    assert!(sim.guest(0).unwrap().memory_actual_kib >= 1250);
}

#[test]
fn two_sticky_guests_with_periods_either_side_of_the_stuck_threshold_free_the_memory() {
    let s = Scenario {
        guests: vec![
            (
                dom(1, 500, 3500, 4500, 3500, 3500, 4),
                Behaviour::IntermittentlyStuck {
                    rate_kib_per_s: 100,
                    period_s: 3.0,
                },
            ),
            (
                dom(0, 500, 1500, 2500, 1500, 1500, 4),
                Behaviour::IntermittentlyStuck {
                    rate_kib_per_s: 100,
                    period_s: 1.5,
                },
            ),
        ],
        free_mem_kib: 0,
        required_kib: 1000,
        fistpoints: Fistpoints::default(),
    };
    let (result, sim) = simulate(&s);
    result.unwrap();
    assert!(sim.violations().is_empty());
}

#[test]
fn dynamic_mins_too_high_to_free_enough_is_cannot_free() {
    // Guests can free 500 + 500 = 1000 KiB at most; 1500 KiB is asked for.
    let s = Scenario {
        guests: vec![
            (dom(0, 1000, 1500, 2000, 1500, 1500, 0), ideal(100)),
            (dom(1, 2000, 2500, 3000, 2500, 2500, 0), ideal(100)),
        ],
        free_mem_kib: 0,
        required_kib: 1500,
        fistpoints: Fistpoints::default(),
    };
    let (result, sim) = simulate(&s);
    match result {
        Err(Outcome::Squeeze(Error::CannotFreeThisMuchMemory {
            required_kib,
            free_kib,
        })) => {
            assert_eq!(required_kib, 1500);
            assert_eq!(
                free_kib, 1000,
                "both guests went all the way to dynamic-min"
            );
        }
        other => panic!("expected CannotFreeThisMuchMemory, got {other:?}"),
    }
    assert!(sim.violations().is_empty());
}

#[test]
fn a_guest_permanently_stuck_above_its_dynamic_min_is_blamed() {
    // Guest 1 will not go below 2250 though its dynamic-min is 2000: the 1000 KiB needs it
    // to reach 2000, so the request fails naming it.
    let s = Scenario {
        guests: vec![
            (dom(0, 1000, 1500, 2000, 1500, 1500, 0), ideal(100)),
            (
                dom(1, 2000, 2500, 3000, 2500, 2500, 0),
                Behaviour::HiddenFloor {
                    rate_kib_per_s: 100,
                    floor_kib: 2250,
                },
            ),
        ],
        free_mem_kib: 0,
        required_kib: 1000,
        fistpoints: Fistpoints::default(),
    };
    let (result, sim) = simulate(&s);
    match result {
        Err(Outcome::Squeeze(Error::DomainsRefusedToCooperate { domids })) => {
            assert_eq!(domids, vec![1]);
        }
        other => panic!("expected DomainsRefusedToCooperate [1], got {other:?}"),
    }
    assert_eq!(sim.guest(1).unwrap().memory_actual_kib, 2250);
    assert!(sim.violations().is_empty());
}

#[test]
fn stuck_domain_is_worked_around_by_the_other_freeing_instead_of_growing() {
    // Surplus is 3000 KiB: ideally 1000 to the host, 500 more to guest 0, 1500 more to guest 1.
    // Guest 0 is stuck, so guest 1 must free the 1000 KiB instead of growing, and must not be
    // judged stuck merely because it could not grow into memory that was not free.
    let (result, sim) = simulate(&scenario_e());
    result.unwrap();
    assert!(sim.violations().is_empty());
    assert_eq!(sim.guest(0).unwrap().memory_actual_kib, 7000);
}

#[test]
fn without_two_phase_target_sets_a_guest_grows_into_memory_that_is_not_free() {
    let mut s = scenario_e();
    s.fistpoints.disable_two_phase_target_sets = true;
    let (result, sim) = simulate(&s);
    match result {
        Err(Outcome::Squeeze(Error::Backend(msg))) => {
            assert!(msg.contains("safety violation"), "{msg}");
        }
        other => panic!("expected a simulator safety violation, got {other:?}"),
    }
    let v = &sim.violations()[0];
    assert_eq!(
        v.domid, 1,
        "the growing guest is the one that over-allocates"
    );
    assert!(v.what.contains("tried to allocate"), "{}", v.what);
}

#[test]
fn without_inaccuracy_compensation_guests_that_stop_short_look_stuck() {
    let mut s = scenario_a();
    s.fistpoints.disable_inaccuracy_compensation = true;
    let (result, sim) = simulate(&s);
    // Guest 0 stops at its hidden floor of 1250 (250 KiB freed) and is left out as stuck.
    // Guest 1 is then asked for exactly what is missing: target 2750, 750 KiB below its 3500.
    // Like every driver it stops 4 KiB short, at 2754, so the host ends at 250 + 746 = 996 KiB
    // free; the squeezer counted on those 4 KiB and cannot reach 1000. (The only stuck domain
    // is domid 0, which squeezed reports as "cannot free" rather than blaming dom0.)
    match result {
        Err(Outcome::Squeeze(Error::CannotFreeThisMuchMemory {
            required_kib,
            free_kib,
        })) => {
            assert_eq!((required_kib, free_kib), (1000, 996));
        }
        other => panic!("expected CannotFreeThisMuchMemory, got {other:?}"),
    }
    assert_eq!(sim.guest(1).unwrap().target_kib, 2750);
    assert_eq!(sim.guest(1).unwrap().memory_actual_kib, 2754);
}

#[test]
fn a_guest_with_a_hidden_ceiling_leaves_its_share_to_a_working_guest() {
    // 1000 KiB free, nothing required: the memory is handed out; guest 0 cannot grow past
    // 1500, so guest 1 takes up the slack.
    let s = Scenario {
        guests: vec![
            (
                dom(0, 1000, 1500, 2000, 1500, 1500, 4),
                Behaviour::HiddenCeiling {
                    rate_kib_per_s: 100,
                    ceiling_kib: 1500,
                },
            ),
            (dom(1, 1000, 1500, 2000, 1500, 1500, 4), ideal(100)),
        ],
        free_mem_kib: 1000,
        required_kib: 0,
        fistpoints: Fistpoints::default(),
    };
    let (result, sim) = simulate(&s);
    result.unwrap();
    assert!(sim.violations().is_empty());
    assert!(sim.guest(1).unwrap().memory_actual_kib > 1500);
}
