//! Operations end whatever the platform's clock does: a clock that never advances (an `Io`
//! whose `now` is stuck, or whose waits take no time) must not make either policy wait forever.

use squeeze::adaptive::Adaptive;
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{
    change_host_free_memory, Action, DomId, Domain, Error, Host, Io, Kib, Options,
    MAX_ROUNDS_WITHOUT_MOVEMENT,
};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;
const SLUSH: Kib = 72 * MIB;

/// The simulator seen through a platform whose clock is stopped at 100 s: waits return at
/// once, so no balloon driver ever moves.
struct Frozen {
    sim: Simulator,
    waits: u64,
}

impl Io for Frozen {
    fn make_host(&mut self) -> squeeze::Result<Host> {
        self.sim.make_host()
    }
    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> squeeze::Result<()> {
        self.sim.set_maxmem(domid, kib)
    }
    fn execute_action(&mut self, action: Action) -> squeeze::Result<()> {
        self.sim.execute_action(action)
    }
    fn wait(&mut self, _seconds: f64) -> squeeze::Result<()> {
        self.waits += 1;
        // Without a bound the squeezer would wait here forever: fail the test, not hang it.
        if self.waits > 100 * u64::from(MAX_ROUNDS_WITHOUT_MOVEMENT) {
            return Err(Error::Unsupported(
                "still waiting on a stopped clock".into(),
            ));
        }
        Ok(())
    }
    fn now(&mut self) -> squeeze::Result<f64> {
        Ok(100.0)
    }
    fn target_host_free_mem_kib(&self) -> Kib {
        self.sim.target_host_free_mem_kib()
    }
    fn free_memory_tolerance_kib(&self) -> Kib {
        self.sim.free_memory_tolerance_kib()
    }
}

/// One 2 GiB guest (range 1..2 GiB) and only the slush free, under a stopped clock.
fn frozen_host() -> Frozen {
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: SLUSH,
        target_host_free_mem_kib: SLUSH,
        free_memory_tolerance_kib: 512,
        clock: ClockMode::FollowWait,
        time_limit_s: Some(3600.0),
        record_trace: false,
    });
    sim.add_guest(
        Domain::new(1, true, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 4),
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    )
    .unwrap();
    Frozen { sim, waits: 0 }
}

fn expect_clock_error(result: squeeze::Result<()>, io: &Frozen, policy: &str) {
    match result {
        Err(Error::Backend(m)) => {
            assert!(m.contains("nothing on the host moved"), "{policy}: {m}");
            assert!(m.contains("clock"), "{policy}: {m}");
        }
        other => panic!("{policy}: expected a backend error, got {other:?}"),
    }
    // It gave up after the bound, not one round early and not thousands late.
    let bound = u64::from(MAX_ROUNDS_WITHOUT_MOVEMENT);
    assert!(
        (bound - 1..=bound + 1).contains(&io.waits),
        "{policy}: {} waits",
        io.waits
    );
}

#[test]
fn a_stopped_clock_ends_a_classic_request_after_a_bounded_number_of_rounds() {
    // Freeing 512 MiB: the guest is asked, never moves (no time passes), and squeezed's 20 s
    // stuck rule never fires because the clock never gets there.
    let mut io = frozen_host();
    let required = SLUSH + 512 * MIB;
    let r = change_host_free_memory(&mut io, &Options::default(), required, &mut |free| {
        free >= required
    });
    expect_clock_error(r, &io, "classic");
}

#[test]
fn a_stopped_clock_ends_an_adaptive_request_after_a_bounded_number_of_rounds() {
    let mut io = frozen_host();
    let required = SLUSH + 512 * MIB;
    let r = Adaptive::default()
        .change_host_free_memory(&mut io, required, &mut |free| free >= required);
    expect_clock_error(r, &io, "adaptive");
}
