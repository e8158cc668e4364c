//! The host of squeezed's inverted-range flaw, shared by the classic property tests (which
//! show the flaw) and the adaptive tests (which show it fixed).

use squeeze::backend::sim::{Behaviour, SimConfig, Simulator};
use squeeze::{Domain, Kib};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;

/// Guest 1 has an inverted range: dynamic-min 1 GiB, dynamic-max 0. It holds 1088 MiB and its
/// balloon driver works for 8 s, then sleeps for 8 s, at 64 MiB/s. Guest 2 is an ideal
/// 256 MiB/s guest with range 1..3 GiB, holding 1 GiB. Nothing is free and the slush is 0.
/// The clock stands at 8 s, as guest 1's driver falls asleep (8 s to 16 s).
pub fn sleepy_inverted_guest_host() -> Simulator {
    // Nothing free, no slush, no tolerance, the clock following the waits (the simulator's
    // defaults).
    let mut sim = Simulator::new(SimConfig {
        time_limit_s: Some(600.0),
        ..SimConfig::default()
    });
    sim.add_guest(
        Domain::new(1, true, GIB, 1088 * MIB, 0, 1088 * MIB, 1088 * MIB, 0),
        Behaviour::IntermittentlyStuck {
            rate_kib_per_s: 64 * MIB,
            period_s: 8.0,
        },
    )
    .unwrap();
    sim.add_guest(
        Domain::new(2, true, GIB, GIB, 3 * GIB, GIB, GIB, 0),
        Behaviour::Ideal {
            rate_kib_per_s: 256 * MIB,
        },
    )
    .unwrap();
    for _ in 0..8 {
        sim.advance(1.0).unwrap();
    }
    sim
}
