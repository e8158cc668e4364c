//! Offset drift: a booted domain's memory offset changes mid-life. With drift correction the
//! host model re-estimates it once the domain holds still; with squeezed's one-shot calibration
//! the same domain is blamed for missing its target.

mod common;

use common::*;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::backend::sim::Behaviour;
use squeeze::host::HostConfig;
use squeeze::service::Service;
use squeeze::{DomId, Kib};

/// Seconds between two looks of the balancer in these tests.
const LOOK_S: f64 = 5.0;

/// A service over `fake` whose host model corrects drift (or, with `drift` false, calibrates
/// once as squeezed does). The default window: 3 looks spanning 10 s.
fn service(fake: &FakeHost, dir: &std::path::Path, drift: bool) -> Service {
    let mut cfg = classic_config(dir);
    cfg.host = HostConfig {
        offset_drift: drift,
        ..cfg.host
    };
    Service::new(fake.platform(), cfg).unwrap()
}

/// A 512 MiB..1 GiB guest, booted at 1 GiB with a 1 MiB offset, on the 3 GiB-free test host.
fn guest(fake: &FakeHost) -> DomId {
    booted_guest(
        fake,
        GuestSpec {
            offset_kib: MIB,
            ..GuestSpec::ballooning(512 * MIB, GIB)
        },
    )
}

fn read(fake: &FakeHost, domid: DomId, key: &str) -> Option<String> {
    fake.platform()
        .store
        .read(&format!("/local/domain/{domid}/memory/{key}"))
        .unwrap()
}

fn offset(fake: &FakeHost, domid: DomId) -> Kib {
    read(fake, domid, "memory-offset").unwrap().parse().unwrap()
}

fn flagged(fake: &FakeHost, domid: DomId) -> bool {
    read(fake, domid, "uncooperative").is_some()
}

/// What happened over a minute of balancer checks every 5 s after a drift.
struct Outcome {
    /// Seconds from the drift to the look that corrected it.
    corrected_after_s: Option<f64>,
    /// The domain carried `memory/uncooperative` at some look.
    ever_flagged: bool,
    /// The domain's actual memory as the balancer saw it at the end.
    actual_kib: Kib,
    /// Its target at the end.
    target_kib: Kib,
}

/// Lets the guest settle under the balancer for 30 s, injects `drift_kib`, then watches the
/// balancer for 60 s.
fn drift_and_watch(fake: &FakeHost, service: &Service, g: DomId, drift_kib: Kib) -> Outcome {
    for _ in 0..6 {
        service.balance_if_unbalanced().unwrap();
        fake.advance(LOOK_S).unwrap();
    }
    assert_eq!(offset(fake, g), MIB, "calibrated at boot");
    assert!(!flagged(fake, g));
    fake.inject_offset_drift(g, drift_kib).unwrap();
    let mut outcome = Outcome {
        corrected_after_s: None,
        ever_flagged: false,
        actual_kib: 0,
        target_kib: 0,
    };
    for look in 0..=12 {
        service.balance_if_unbalanced().unwrap();
        if outcome.corrected_after_s.is_none() && offset(fake, g) == MIB + drift_kib {
            outcome.corrected_after_s = Some(look as f64 * LOOK_S);
        }
        outcome.ever_flagged |= flagged(fake, g);
        fake.advance(LOOK_S).unwrap();
    }
    let v = service.host_view().unwrap();
    let d = v.domains.iter().find(|d| d.domid == g).unwrap();
    outcome.actual_kib = d.domain.unwrap().memory_actual_kib;
    outcome.target_kib = d.domain.unwrap().target_kib;
    outcome
}

fn drift_is_corrected_without_a_flag(drift_kib: Kib) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = service(&fake, dir.path(), true);
    let g = guest(&fake);
    let out = drift_and_watch(&fake, &service, g, drift_kib);

    // Looks at +0 s (allocation changed: the window starts), +5 s, +10 s (3 looks over 10 s):
    // corrected at +10 s, inside two windows (20 s).
    assert_eq!(out.corrected_after_s, Some(10.0));
    assert!(!out.ever_flagged, "a drifted domain is not uncooperative");
    assert_eq!(out.actual_kib, GIB);
    assert_eq!(out.target_kib, GIB, "the balancer never moved it");

    let v = service.host_view().unwrap();
    assert_eq!(v.offset_drifts_total, 1);
    let event = &v.recent_offset_drifts[0];
    assert_eq!(
        (event.domid, event.old_offset_kib, event.new_offset_kib),
        (g, MIB, MIB + drift_kib)
    );
    // The domain keeps what it was given outside its driver, but maxmem stays at the share of
    // the offset measured at boot (1 GiB target + 1 MiB): a re-estimated offset never lets a
    // domain take more.
    assert_eq!(
        read(&fake, g, "memory-offset-at-boot"),
        Some(MIB.to_string())
    );
    let d = fake.domain(g).unwrap().unwrap();
    assert_eq!(d.max_kib(), GIB + MIB);
    assert_eq!(d.tot_kib(), GIB + MIB + drift_kib);
    assert!(fake.snapshot().unwrap().violations.is_empty());

    // The corrected domain still balloons exactly: asked for 768 MiB, it lands there.
    fake.platform()
        .store
        .write(
            &format!("/local/domain/{g}/memory/target"),
            &(768 * MIB).to_string(),
        )
        .unwrap();
    fake.advance(10.0).unwrap();
    let v = service.host_view().unwrap();
    let d = v.domains.iter().find(|d| d.domid == g).unwrap();
    assert!(d.domain.unwrap().has_hit_target(), "{:?}", d.domain);
    assert_eq!(
        v.offset_drifts_total, 1,
        "reaching a new target is no drift"
    );
}

#[test]
fn a_one_mib_drift_is_corrected_within_two_quiet_windows_and_never_flagged() {
    drift_is_corrected_without_a_flag(MIB);
}

#[test]
fn a_68_mib_drift_is_corrected_within_two_quiet_windows_and_never_flagged() {
    drift_is_corrected_without_a_flag(68 * MIB);
}

#[test]
fn a_shrinking_offset_is_corrected_too() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = service(&fake, dir.path(), true);
    let g = guest(&fake);
    // The domain gives back 512 KiB it held beyond its target (its offset goes to 512 KiB).
    let out = drift_and_watch(&fake, &service, g, -512);
    assert_eq!(out.corrected_after_s, Some(10.0));
    assert!(!out.ever_flagged);
    assert_eq!(offset(&fake, g), 512);
    // maxmem is lowered to the target plus the new offset.
    assert_eq!(fake.domain(g).unwrap().unwrap().max_kib(), GIB + 512);
}

#[test]
fn squeezed_one_shot_calibration_blames_the_same_drift_on_the_domain() {
    for drift in [MIB, 68 * MIB] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::in_memory(small_host()).unwrap();
        let service = service(&fake, dir.path(), false);
        let g = guest(&fake);
        let out = drift_and_watch(&fake, &service, g, drift);
        assert_eq!(out.corrected_after_s, None);
        assert_eq!(offset(&fake, g), MIB, "the offset is never measured again");
        // Seen as holding the drift above its target, it is flagged after 20 s away from it.
        assert!(out.ever_flagged, "drift {drift} KiB");
        assert!(flagged(&fake, g));
        assert_eq!(out.actual_kib, GIB + drift);
        assert_eq!(out.target_kib, GIB);
        assert_eq!(service.host_view().unwrap().offset_drifts_total, 0);
    }
}

#[test]
fn a_domain_still_moving_to_its_target_is_never_recalibrated() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = service(&fake, dir.path(), true);
    // A slow driver: 1 MiB/s.
    let g = booted_guest(
        &fake,
        GuestSpec {
            offset_kib: MIB,
            behaviour: Behaviour::Ideal {
                rate_kib_per_s: MIB,
            },
            ..GuestSpec::ballooning(512 * MIB, GIB)
        },
    );
    service.host_view().unwrap();
    // Asked for 768 MiB: 256 MiB to give back, about 256 s at 1 MiB/s.
    fake.platform()
        .store
        .write(
            &format!("/local/domain/{g}/memory/target"),
            &(768 * MIB).to_string(),
        )
        .unwrap();
    let mut looks = 0;
    loop {
        fake.advance(LOOK_S).unwrap();
        let v = service.host_view().unwrap();
        looks += 1;
        assert_eq!(offset(&fake, g), MIB, "look {looks}");
        assert_eq!(v.offset_drifts_total, 0);
        let d = v.domains.iter().find(|d| d.domid == g).unwrap();
        assert!(!d.drift_suspect);
        if d.domain.unwrap().has_hit_target() {
            break;
        }
        assert!(looks < 60, "a 1 MiB/s driver moves 256 MiB in 300 s");
    }
    assert!(looks >= 50, "it took {looks} looks of 5 s");
    assert!(!flagged(&fake, g), "an honest slow driver keeps reaching");
}

#[test]
fn a_domain_that_never_reaches_a_new_target_is_not_recalibrated_but_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = service(&fake, dir.path(), true);
    // One driver is dead; another stops at a hidden floor of 896 MiB.
    let stuck = booted_guest(
        &fake,
        GuestSpec {
            offset_kib: MIB,
            behaviour: Behaviour::Stuck,
            ..GuestSpec::ballooning(512 * MIB, GIB)
        },
    );
    let floored = booted_guest(
        &fake,
        GuestSpec {
            offset_kib: MIB,
            behaviour: Behaviour::HiddenFloor {
                rate_kib_per_s: 100 * MIB,
                floor_kib: 896 * MIB,
            },
            ..GuestSpec::ballooning(512 * MIB, GIB)
        },
    );
    service.host_view().unwrap();
    for g in [stuck, floored] {
        fake.platform()
            .store
            .write(
                &format!("/local/domain/{g}/memory/target"),
                &(768 * MIB).to_string(),
            )
            .unwrap();
    }
    for _ in 0..12 {
        fake.advance(LOOK_S).unwrap();
        service.host_view().unwrap();
    }
    // Both held still at a constant gap for a minute, but neither ever reached 768 MiB.
    assert_eq!(offset(&fake, stuck), MIB);
    assert_eq!(offset(&fake, floored), MIB);
    assert_eq!(service.host_view().unwrap().offset_drifts_total, 0);
    assert!(flagged(&fake, stuck));
    assert!(flagged(&fake, floored));
}

#[test]
fn a_drift_window_of_fewer_than_two_looks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    for (looks, secs) in [(1, 10.0), (0, 10.0), (3, -1.0), (3, f64::NAN)] {
        let mut cfg = classic_config(dir.path());
        cfg.host.drift_window_looks = looks;
        cfg.host.drift_window_s = secs;
        let e = Service::new(fake.platform(), cfg).unwrap_err();
        assert!(
            matches!(e, squeeze::Error::InvalidArgument(_)),
            "{looks} looks, {secs} s: {e}"
        );
    }
}

#[test]
fn drift_corrections_reach_the_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = service(&fake, dir.path(), true);
    let g = guest(&fake);
    drift_and_watch(&fake, &service, g, 4 * MIB);
    let doc: serde_json::Value = serde_json::from_str(&service.get_diagnostics().unwrap()).unwrap();
    assert_eq!(doc["offset_drifts"]["total"], 1);
    let e = &doc["offset_drifts"]["recent"][0];
    assert_eq!(e["domid"], g);
    assert_eq!(e["old_offset_kib"], MIB);
    assert_eq!(e["new_offset_kib"], 5 * MIB);
    assert_eq!(doc["settings"]["offset_drift"], true);
}

#[test]
fn a_drifted_domain_is_not_flagged_even_when_the_window_outlasts_the_flag_delay() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    // A 30 s window (7 looks of 5 s): longer than the 20 s after which a domain away from its
    // target is flagged.
    let mut cfg = classic_config(dir.path());
    cfg.host.drift_window_looks = 7;
    cfg.host.drift_window_s = 30.0;
    let service = Service::new(fake.platform(), cfg).unwrap();
    let g = guest(&fake);
    let out = drift_and_watch(&fake, &service, g, 68 * MIB);
    assert_eq!(out.corrected_after_s, Some(30.0));
    assert!(!out.ever_flagged);
    let v = service.host_view().unwrap();
    let d = v.domains.iter().find(|d| d.domid == g).unwrap();
    assert!(!d.uncooperative && !d.drift_suspect);
}
