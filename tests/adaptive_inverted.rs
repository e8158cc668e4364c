//! The adaptive squeezer on a guest whose dynamic-min is above its dynamic-max (an inverted
//! range: xenstore is written one key at a time, so a toolstack changing both can leave them
//! crossed for a while, and a misconfigured guest can keep them so). The adaptive policy
//! treats such a range as the single point dynamic-min: the guest is never asked to go below
//! it nor given more, and gives a freeing request only what it holds above it.

#[path = "support/inverted_host.rs"]
mod inverted_host;

use inverted_host::sleepy_inverted_guest_host;
use squeeze::adaptive::Adaptive;
use squeeze::backend::sim::{Behaviour, SimConfig, Simulator};
use squeeze::{DomId, Domain, Error, Io, Kib};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;

/// The targets written on `domid`, in order.
fn targets_of(sim: &Simulator, domid: DomId) -> Vec<Kib> {
    sim.decisions()
        .iter()
        .filter(|d| d.is_target && d.domid == domid)
        .map(|d| d.kib)
        .collect()
}

/// 64 MiB is asked for while guest 1's driver sleeps: guest 1 holds exactly that much above
/// its dynamic-min (1088 − 1024 MiB), so its target goes to 1024 MiB, never to its
/// dynamic-max of 0. When its driver wakes at 16 s it frees those 64 MiB and stops there, and
/// balances every 10 s for a minute give them to guest 2 (1 GiB + 64/2048 of its 2 GiB range
/// = 1088 MiB): no guest allocates memory the host does not have.
#[test]
fn an_inverted_guest_is_never_asked_below_its_dynamic_min() {
    let mut sim = sleepy_inverted_guest_host();
    let mut a = Adaptive::new(Default::default()).unwrap();
    let asked = 64 * MIB;
    match a.change_host_free_memory(&mut sim, asked, &mut |f| f >= asked) {
        Ok(_) | Err(Error::DomainsRefusedToCooperate { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    // Looked at every second, as the driver loop does (guest 1's driver moves only across
    // seconds inside its working periods); balanced every 10 s.
    while sim.time() < 80.0 {
        if sim.time() % 10.0 == 0.0 {
            a.balance_memory(&mut sim).unwrap();
        }
        sim.advance(1.0).unwrap();
    }
    let g1 = targets_of(&sim, 1);
    assert!(!g1.is_empty(), "guest 1 was asked for its 64 MiB");
    assert!(g1.iter().all(|&t| t == GIB), "guest 1's targets: {g1:?}");
    let host = sim.make_host().unwrap();
    let held: Vec<Kib> = host.domains().iter().map(|d| d.memory_actual_kib).collect();
    assert_eq!(held, [GIB, 1088 * MIB]);
    assert_eq!(sim.free_mem_kib(), 0);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// Guest 1 has dynamic-min 1 GiB and dynamic-max 0, holds 960 MiB with a target of 1 GiB,
/// and its driver cannot grow (a hidden ceiling where it is); guest 2 is an ideal 256 MiB/s
/// guest of range 1..3 GiB holding 1 GiB. The 64 MiB guest 1 is growing into are free, and
/// the slush is 0. Balances every 10 s for a minute: the first gives guest 2 the 64 MiB
/// (1 GiB + 64/2048 of its 2 GiB range = 1088 MiB; a guest below its dynamic-min is not
/// counted as growing, as in squeezed). After the 5 s grace guest 1 is taken to be at a
/// ceiling and its request is withdrawn to what it holds and a 256 KiB probe, 960.25 MiB: not
/// to its dynamic-max of 0, which would take the 960 MiB it holds and its dynamic-min needs.
#[test]
fn an_inverted_guest_that_cannot_grow_is_not_sent_to_its_dynamic_max() {
    // No slush, no tolerance, the clock following the waits (the simulator's defaults).
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: 64 * MIB,
        time_limit_s: Some(600.0),
        ..SimConfig::default()
    });
    sim.add_guest(
        Domain::new(1, true, GIB, GIB, 0, 960 * MIB, GIB, 0),
        Behaviour::HiddenCeiling {
            rate_kib_per_s: 64 * MIB,
            ceiling_kib: 960 * MIB,
        },
    )
    .unwrap();
    sim.add_guest(
        Domain::new(2, true, GIB, GIB, 3 * GIB, GIB, 3 * GIB, 0),
        Behaviour::Ideal {
            rate_kib_per_s: 256 * MIB,
        },
    )
    .unwrap();
    let mut a = Adaptive::new(Default::default()).unwrap();
    while sim.time() < 60.0 {
        if sim.time() % 10.0 == 0.0 {
            a.balance_memory(&mut sim).unwrap();
        }
        sim.advance(1.0).unwrap();
    }
    assert_eq!(targets_of(&sim, 1), [960 * MIB + 256]);
    assert_eq!(targets_of(&sim, 2), [GIB + 256, 1088 * MIB]);
    let host = sim.make_host().unwrap();
    let held: Vec<Kib> = host.domains().iter().map(|d| d.memory_actual_kib).collect();
    assert_eq!(held, [960 * MIB, 1088 * MIB]);
    assert_eq!(sim.free_mem_kib(), 0);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}
