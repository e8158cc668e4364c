//! A guest that takes everything Xen lets it have must never hold more than its target plus the
//! offset calibrated when it booted plus Xen's own extra, however long it keeps trying, under
//! either policy and with offset-drift re-estimation on (the default).
//!
//! The attack: an HVM guest's maxmem is its target + offset + 1 MiB (Xen's HVM extra), so a
//! driver that fills up to maxmem sits 1 MiB above its target. Were that read as drift, the
//! offset would grow by 1 MiB, maxmem with it, and the guest would take that MiB too, and so on.

mod common;

use common::*;
use proptest::prelude::*;
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::backend::sim::Behaviour;
use squeeze::host::HostConfig;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Kib, Policy};

/// Seconds between two looks of the balancer.
const LOOK_S: f64 = 5.0;

/// Six simulated hours of looks.
const LOOKS: usize = 6 * 3600 / LOOK_S as usize;

/// Xen's maxmem extra for an HVM guest.
const HVM_EXTRA: Kib = MIB;

fn service(fake: &FakeHost, dir: &std::path::Path, policy: Policy, drift: bool) -> Service {
    let cfg = config(dir);
    let cfg = ServiceConfig {
        policy,
        host: HostConfig {
            offset_drift: drift,
            ..cfg.host
        },
        ..cfg
    };
    Service::new(fake.platform(), cfg).unwrap()
}

fn store_kib(fake: &FakeHost, domid: DomId, key: &str) -> Kib {
    fake.platform()
        .store
        .read(&format!("/local/domain/{domid}/memory/{key}"))
        .unwrap()
        .unwrap_or_else(|| panic!("domain {domid} has no memory/{key}"))
        .parse()
        .unwrap()
}

/// What the greedy guest did over the run.
#[derive(Debug)]
struct Run {
    /// The offset calibrated at boot.
    boot_offset: Kib,
    /// The most it held.
    peak_kib: Kib,
    /// What it held at the end.
    end_kib: Kib,
}

/// A 1..2 GiB HVM guest with a greedy driver (honest for `honest_for_s` after each new target,
/// then reaching for `excess_kib` more) on the 3 GiB-free test host, next to a well
/// behaved 256..768 MiB guest, while a reservation of `squeeze_kib` comes and goes every
/// `period_looks` looks. Checks at every look that the greedy guest never grew past its target
/// + boot offset + 1 MiB, and returns what it held.
fn run(
    policy: Policy,
    drift: bool,
    offset_kib: Kib,
    excess_kib: Kib,
    honest_for_s: f64,
    squeeze_kib: Kib,
    period_looks: usize,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    // Xen's extra is the guest's to take, even out of the slush: the referee allows that much.
    let fake = FakeHost::in_memory(FakeConfig {
        referee_slush_kib: Some(SLUSH - HVM_EXTRA),
        ..small_host()
    })
    .unwrap();
    let service = service(&fake, dir.path(), policy, drift);
    let greedy = booted_guest(
        &fake,
        GuestSpec {
            hvm: true,
            offset_kib,
            behaviour: Behaviour::Greedy {
                rate_kib_per_s: 10 * MIB,
                excess_kib,
                honest_for_s,
            },
            ..GuestSpec::ballooning(GIB, 2 * GIB)
        },
    );
    booted_guest(&fake, GuestSpec::ballooning(256 * MIB, 768 * MIB));

    service.balance_if_unbalanced().unwrap();
    let boot_offset = store_kib(&fake, greedy, "memory-offset");
    assert_eq!(boot_offset, offset_kib, "calibrated at boot");

    let held = |fake: &FakeHost| fake.domain(greedy).unwrap().unwrap().tot_kib();
    let mut peak = held(&fake);
    let mut reservation = None;
    for look in 0..LOOKS {
        if look % period_looks == 0 {
            match reservation.take() {
                None => reservation = service.reserve_memory("squeezer", squeeze_kib).ok(),
                Some(id) => service.delete_reservation("squeezer", &id).unwrap(),
            }
        }
        service.balance_if_unbalanced().unwrap();
        let before = held(&fake);
        let target = store_kib(&fake, greedy, "target");
        // Xen counts maxmem in whole 4 KiB pages, so a target that is not one rounds up.
        let allowed = (target + boot_offset + HVM_EXTRA + 3) / 4 * 4;
        fake.advance(LOOK_S).unwrap();
        let after = held(&fake);
        assert!(
            after <= before.max(allowed),
            "look {look} ({} s): the greedy guest grew from {before} KiB to {after} KiB, \
             past its target {target} KiB + boot offset {boot_offset} KiB + 1 MiB",
            look as f64 * LOOK_S
        );
        peak = peak.max(after);
    }
    let violations = fake.snapshot().unwrap().violations;
    assert!(violations.is_empty(), "{violations:?}");
    Run {
        boot_offset,
        peak_kib: peak,
        end_kib: held(&fake),
    }
}

/// The guest's ceiling: its dynamic-max + its boot offset + Xen's extra.
fn ceiling(r: &Run) -> Kib {
    2 * GIB + r.boot_offset + HVM_EXTRA
}

#[test]
fn a_guest_filling_up_to_maxmem_for_six_hours_never_grows_under_adaptive() {
    let r = run(Policy::Adaptive, true, 4 * MIB, GIB, 60.0, 512 * MIB, 120);
    assert!(r.peak_kib <= ceiling(&r), "{r:?}");
}

#[test]
fn a_guest_filling_up_to_maxmem_for_six_hours_never_grows_under_classic() {
    let r = run(Policy::Classic, true, 4 * MIB, GIB, 45.0, 80 * MIB, 10);
    assert!(r.peak_kib <= ceiling(&r), "{r:?}");
}

#[test]
fn left_alone_a_greedy_guest_holds_exactly_its_share() {
    // No reservation ever: the guest sits at 2 GiB target + 4 MiB offset + 1 MiB, not a page
    // more, after six hours of trying to take 64 MiB more.
    let r = run(Policy::Adaptive, true, 4 * MIB, 64 * MIB, 0.0, 4, LOOKS + 1);
    assert_eq!(r.end_kib, 2 * GIB + 4 * MIB + MIB, "{r:?}");
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::Classic), Just(Policy::Adaptive)]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 6,
        ..ProptestConfig::default()
    })]

    /// Whatever its offset, however much more it tries to take and however the host squeezes
    /// it, a greedy guest never holds more than its dynamic-max + boot offset + 1 MiB, with or
    /// without drift re-estimation.
    #[test]
    fn a_greedy_guest_never_outgrows_its_boot_share(
        policy in policy(),
        drift in any::<bool>(),
        offset_pages in 0i64..=4096,
        excess_pages in 1i64..=65536,
        honest_for_s in 0.0..300.0,
        squeeze_mib in 1i64..=900,
        period_looks in 2usize..=720,
    ) {
        let r = run(policy, drift, offset_pages * 4, excess_pages * 4, honest_for_s, squeeze_mib * MIB, period_looks);
        prop_assert!(r.peak_kib <= ceiling(&r), "{:?}", r);
    }
}
