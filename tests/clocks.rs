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

/// The fake host's clock, set back one hour at its `step_at`-th reading.
struct SetBack {
    inner: std::sync::Arc<dyn squeeze::platform::Clock>,
    reads: std::sync::atomic::AtomicU32,
    step_at: u32,
}

impl squeeze::platform::Clock for SetBack {
    fn now(&self) -> f64 {
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = self.inner.now();
        if n >= self.step_at {
            t - 3600.0
        } else {
            t
        }
    }
    fn sleep(&self, seconds: f64) {
        self.inner.sleep(seconds)
    }
}

#[test]
fn a_clock_set_back_an_hour_mid_reservation_costs_the_reservation_no_extra_time() {
    use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
    use squeeze::platform::Hypervisor;
    use squeeze::service::{Service, ServiceConfig};

    // 5 GiB host, domain 0 holds 1 GiB; a stuck and a 100 MiB/s guest of 512 MiB..1 GiB at
    // 1 GiB: 2 GiB free. Their clock starts at 10 000 s so that an hour back stays positive.
    let fake = FakeHost::in_memory(FakeConfig {
        total_kib: 5 * GIB,
        xen_kib: 0,
        dom0_kib: GIB,
        boot_delay_s: 1.0,
        referee_slush_kib: Some(SLUSH),
    })
    .unwrap();
    fake.advance(10_000.0).unwrap();
    let mut guests = Vec::new();
    for behaviour in [
        Behaviour::Stuck,
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    ] {
        let spec = GuestSpec {
            behaviour,
            ..GuestSpec::ballooning(512 * MIB, GIB)
        };
        let domid = fake.create_domain(spec).unwrap();
        let size = spec.target_kib + spec.offset_kib;
        fake.set_maxmem_kib(domid, size).unwrap();
        fake.build_domain(domid, size).unwrap();
        fake.unpause(domid).unwrap();
        fake.advance(1.0).unwrap();
        guests.push(domid);
    }
    let mut platform = fake.platform();
    platform.clock = std::sync::Arc::new(SetBack {
        inner: platform.clock.clone(),
        reads: Default::default(),
        // A few looks into the reservation.
        step_at: 8,
    });
    let dir = tempfile::tempdir().unwrap();
    let service = Service::new(
        platform,
        ServiceConfig {
            lock_path: dir.path().join("host.lock"),
            boot_time_record_path: dir.path().join("boot_time_memory"),
            ..ServiceConfig::default()
        },
    )
    .unwrap();
    let session = service.login("xenopsd").unwrap();
    let start = fake.snapshot().unwrap().time;
    // 768 MiB must be freed and the fast guest has only 512 MiB: the stuck guest is needed,
    // and after its 5 s grace the request fails naming it.
    let err = service
        .reserve_memory(&session, 2 * GIB + 768 * MIB)
        .unwrap_err();
    let took = fake.snapshot().unwrap().time - start;
    assert_eq!(
        err,
        Error::DomainsRefusedToCooperate {
            domids: vec![guests[0]]
        }
    );
    assert!(
        took < 30.0,
        "the reservation took {took} s of the host's time"
    );
}
