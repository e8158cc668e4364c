//! Many callers at once: the host lock is held for one round, not for a whole reservation,
//! and waiting reservations are served as memory appears, fairly.
//!
//! Times are simulated (the fake host's clock, shared by the callers: see
//! [`common::SharedTime`]), read when each call returns.

mod common;

use std::sync::Arc;

use common::*;
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::backend::sim::Behaviour;
use squeeze::platform::Clock;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{Kib, Policy};

/// A guest that balloons over `min..=max` at `rate` MiB/s, booted at `max`.
fn guest(fake: &FakeHost, min: Kib, max: Kib, rate_mib_s: Kib) -> i32 {
    booted_guest(
        fake,
        GuestSpec {
            behaviour: Behaviour::Ideal {
                rate_kib_per_s: rate_mib_s * MIB,
            },
            ..GuestSpec::ballooning(min, max)
        },
    )
}

/// A host of domain 0 (1 GiB) and guests of `sizes` (max KiB each) plus `free` KiB free
/// beyond the slush.
fn host(sizes: &[Kib], free: Kib) -> FakeHost {
    FakeHost::in_memory(FakeConfig {
        total_kib: GIB + sizes.iter().sum::<Kib>() + SLUSH + free,
        xen_kib: 0,
        dom0_kib: GIB,
        boot_delay_s: 1.0,
        referee_slush_kib: Some(SLUSH),
    })
    .unwrap()
}

fn service(
    dir: &std::path::Path,
    time: &Arc<SharedTime>,
    policy: Policy,
) -> Service {
    let cfg = ServiceConfig {
        policy,
        // A caller that cannot get the lock while another sleeps under it gives up soon,
        // instead of hanging the test.
        lock_timeout_s: 10.0,
        ..config(dir)
    };
    Service::new(time.platform(), cfg).unwrap()
}

/// What one concurrent call returned and when (simulated seconds since the calls started).
struct Done {
    at_s: f64,
    ok: bool,
}

/// Starts a reservation of `kib` for each entry of `asks` at once (each after its own delay,
/// in simulated seconds) and returns when each finished.
fn reserve_at_once(
    fake: &FakeHost,
    time: &Arc<SharedTime>,
    service: &Service,
    asks: &[(Kib, f64)],
) -> Vec<Done> {
    let t0 = fake.now_s();
    let handles: Vec<_> = asks
        .iter()
        .enumerate()
        .map(|(i, &(kib, delay))| {
            let p = time.participant();
            let (service, fake, time) = (service.clone(), fake.clone(), time.clone());
            std::thread::spawn(move || {
                p.enter();
                if delay > 0.0 {
                    time.sleep(delay);
                }
                let session = format!("vm-{i}");
                let ok = service.reserve_memory(&session, kib).map_err(|e| {
                    eprintln!("reservation {i} of {kib} KiB failed: {e}");
                });
                let at_s = fake.now_s() - t0;
                drop(p);
                Done { at_s, ok: ok.is_ok() }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A slow guest (8 MiB/s) that alone can give 1 GiB, and two fast ones (200 MiB/s) that can
/// give 512 MiB each.
fn two_starts_host() -> FakeHost {
    let fake = host(&[3 * GIB, GIB, GIB], 0);
    guest(&fake, 2 * GIB, 3 * GIB, 8);
    guest(&fake, 512 * MIB, GIB, 200);
    guest(&fake, 512 * MIB, GIB, 200);
    fake
}

#[test]
fn a_quick_call_during_another_callers_ballooning_waits_for_one_round_at_most() {
    for policy in [Policy::Classic, Policy::Adaptive] {
        let dir = tempfile::tempdir().unwrap();
        // Only the slow guest can give anything: 600 MiB at 8 MiB/s is 75 s of ballooning.
        let fake = host(&[2 * GIB], 64 * MIB);
        guest(&fake, GIB, 2 * GIB, 8);
        let time = SharedTime::new(&fake);
        let service = service(dir.path(), &time, policy);
        let other = service.reserve_memory("xl-1", 64 * MIB).unwrap();
        let t0 = fake.now_s();
        let slow = {
            let (p, service) = (time.participant(), service.clone());
            std::thread::spawn(move || {
                p.enter();
                service.reserve_memory("xenopsd", 600 * MIB)
            })
        };
        // 5 s into that reservation, another caller deletes its own reservation.
        let p = time.participant();
        let quick = {
            let (service, fake, time) = (service.clone(), fake.clone(), time.clone());
            std::thread::spawn(move || {
                p.enter();
                time.sleep(5.0);
                let asked = fake.now_s();
                let r = service.delete_reservation("xl-1", &other);
                let waited = fake.now_s() - asked;
                drop(p);
                (r, waited)
            })
        };
        let (deleted, waited) = quick.join().unwrap();
        assert_eq!(deleted, Ok(()), "{policy}: the delete failed");
        // A round takes no simulated time: the delete never waits for a balloon driver.
        assert!(waited <= 1.0, "{policy}: the delete waited {waited} s");
        slow.join().unwrap().unwrap();
        let took = fake.now_s() - t0;
        assert!(took > 60.0, "{policy}: the slow reservation took only {took} s");
        eprintln!("{policy}: delete waited {waited} s during a reservation of {took:.0} s");
    }
}

#[test]
fn a_small_vm_start_is_not_held_behind_a_big_slow_one() {
    for policy in [Policy::Classic, Policy::Adaptive] {
        // A (1.5 GiB) alone first, to know how long it takes.
        let dir = tempfile::tempdir().unwrap();
        let fake = two_starts_host();
        let time = SharedTime::new(&fake);
        let svc = service(dir.path(), &time, policy);
        let alone = reserve_at_once(&fake, &time, &svc, &[(1536 * MIB, 0.0)]);
        assert!(alone[0].ok);
        let alone_s = alone[0].at_s;

        // Then A and B (256 MiB) at once, on the same host afresh.
        let dir = tempfile::tempdir().unwrap();
        let fake = two_starts_host();
        let time = SharedTime::new(&fake);
        let svc = service(dir.path(), &time, policy);
        let both = reserve_at_once(&fake, &time, &svc, &[(1536 * MIB, 0.0), (256 * MIB, 0.0)]);
        let (a, b) = (&both[0], &both[1]);
        assert!(a.ok && b.ok, "{policy}");
        eprintln!(
            "{policy}: A alone {alone_s:.1} s; together A {:.1} s, B {:.1} s",
            a.at_s, b.at_s
        );
        assert!(b.at_s <= 5.0, "{policy}: B took {} s", b.at_s);
        // B's 256 MiB from the slow guest at 8 MiB/s is 32 s more for A, at most; one round
        // or two of slack for the order in which the callers took the lock.
        let bound = alone_s + 32.0 + 2.0;
        assert!(a.at_s <= bound, "{policy}: A took {} s, bound {bound} s", a.at_s);
        // Nothing was promised twice and nothing is left pending.
        let s = fake.snapshot().unwrap();
        assert!(s.directory("/squeezed/pending").is_empty());
        let b = books(&s);
        assert_eq!(b.reserved, 1792 * MIB);
        assert!(b.free() >= SLUSH - GIB / 1024, "{policy}: {b:?}");
    }
}

#[test]
fn a_boot_storm_is_served_about_as_fast_as_the_guests_can_free_the_total() {
    for policy in [Policy::Adaptive, Policy::Classic] {
        let dir = tempfile::tempdir().unwrap();
        // Four guests of 512 MiB..2.5 GiB at 50, 100, 150 and 200 MiB/s: together 500 MiB/s,
        // so the 4 GiB of eight 512 MiB starts takes them T* = 4096 / 500 = 8.2 s at best.
        let fake = host(&[2560 * MIB; 4], 0);
        for rate in [50, 100, 150, 200] {
            guest(&fake, 512 * MIB, 2560 * MIB, rate);
        }
        let time = SharedTime::new(&fake);
        let svc = service(dir.path(), &time, policy);
        let done = reserve_at_once(&fake, &time, &svc, &[(512 * MIB, 0.0); 8]);
        assert!(done.iter().all(|d| d.ok), "{policy}");
        let last = done.iter().map(|d| d.at_s).fold(0.0, f64::max);
        let t_star = 4096.0 / 500.0;
        eprintln!(
            "{policy}: eight starts served by {last:.1} s = {:.2} x T* ({t_star:.1} s)",
            last / t_star
        );
        if policy == Policy::Adaptive {
            assert!(last <= 1.3 * t_star + 3.0, "{policy}: last served at {last} s");
        }
        let s = fake.snapshot().unwrap();
        assert!(s.directory("/squeezed/pending").is_empty());
        assert_eq!(books(&s).reserved, 4 * GIB);
    }
}
