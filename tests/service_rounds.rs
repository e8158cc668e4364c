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

fn service(dir: &std::path::Path, time: &Arc<SharedTime>, policy: Policy) -> Service {
    let cfg = ServiceConfig {
        policy,
        // A caller that cannot get the lock while another sleeps under it gives up soon,
        // instead of hanging the test.
        lock_timeout_s: 10.0,
        ..config(dir)
    };
    Service::new(time.platform(), cfg).unwrap()
}

/// A host whose callers share its clock: the directory of its lock file and boot-time record
/// (kept as long as the service is used), the host, the shared clock and a service over it.
struct Shared {
    _dir: tempfile::TempDir,
    fake: FakeHost,
    time: Arc<SharedTime>,
    svc: Service,
}

/// Puts `fake` on a shared clock (see [`SharedTime`]) with a service of `policy` over it.
fn shared(fake: FakeHost, policy: Policy) -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let time = SharedTime::new(&fake);
    let svc = service(dir.path(), &time, policy);
    Shared {
        _dir: dir,
        fake,
        time,
        svc,
    }
}

/// 64 MiB free beyond the slush and one guest that can give 1 GiB at 8 MiB/s: 600 MiB takes
/// about 75 s of ballooning.
fn slow_guest_host() -> FakeHost {
    let fake = host(&[2 * GIB], 64 * MIB);
    guest(&fake, GIB, 2 * GIB, 8);
    fake
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
                Done {
                    at_s,
                    ok: ok.is_ok(),
                }
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

/// Runs `asks` at once (see [`reserve_at_once`]) on a fresh [`two_starts_host`]; returns the
/// host afterwards and the calls.
fn two_starts(policy: Policy, asks: &[(Kib, f64)]) -> (FakeHost, Vec<Done>) {
    let h = shared(two_starts_host(), policy);
    let done = reserve_at_once(&h.fake, &h.time, &h.svc, asks);
    (h.fake, done)
}

#[test]
fn a_quick_call_during_another_callers_ballooning_waits_for_one_round_at_most() {
    for policy in [Policy::Classic, Policy::Adaptive] {
        // Only the slow guest can give anything: 600 MiB at 8 MiB/s is 75 s of ballooning.
        let Shared {
            fake,
            time,
            svc: service,
            _dir,
        } = shared(slow_guest_host(), policy);
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
        assert!(
            took > 60.0,
            "{policy}: the slow reservation took only {took} s"
        );
        eprintln!("{policy}: delete waited {waited} s during a reservation of {took:.0} s");
    }
}

#[test]
fn a_small_vm_start_is_not_held_behind_a_big_slow_one() {
    for policy in [Policy::Classic, Policy::Adaptive] {
        // A (1.5 GiB) alone first, to know how long it takes.
        let (_, alone) = two_starts(policy, &[(1536 * MIB, 0.0)]);
        assert!(alone[0].ok);
        let alone_s = alone[0].at_s;

        // Then A and B (256 MiB) at once, on the same host afresh.
        let (fake, both) = two_starts(policy, &[(1536 * MIB, 0.0), (256 * MIB, 0.0)]);
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
        assert!(
            a.at_s <= bound,
            "{policy}: A took {} s, bound {bound} s",
            a.at_s
        );
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
        // Four guests of 512 MiB..2.5 GiB at 50, 100, 150 and 200 MiB/s: together 500 MiB/s,
        // so the 4 GiB of eight 512 MiB starts takes them T* = 4096 / 500 = 8.2 s at best.
        let fake = host(&[2560 * MIB; 4], 0);
        for rate in [50, 100, 150, 200] {
            guest(&fake, 512 * MIB, 2560 * MIB, rate);
        }
        let h = shared(fake, policy);
        let done = reserve_at_once(&h.fake, &h.time, &h.svc, &[(512 * MIB, 0.0); 8]);
        assert!(done.iter().all(|d| d.ok), "{policy}");
        let last = done.iter().map(|d| d.at_s).fold(0.0, f64::max);
        let t_star = 4096.0 / 500.0;
        eprintln!(
            "{policy}: eight starts served by {last:.1} s = {:.2} x T* ({t_star:.1} s)",
            last / t_star
        );
        if policy == Policy::Adaptive {
            assert!(
                last <= 1.3 * t_star + 3.0,
                "{policy}: last served at {last} s"
            );
        }
        let s = h.fake.snapshot().unwrap();
        assert!(s.directory("/squeezed/pending").is_empty());
        assert_eq!(books(&s).reserved, 4 * GIB);
    }
}

#[test]
fn a_stream_of_small_starts_does_not_starve_a_big_one() {
    for policy in [Policy::Adaptive, Policy::Classic] {
        // 1 GiB free above the slush, and a guest that can give 1 GiB more at 16 MiB/s.
        let fake = host(&[2 * GIB], GIB);
        guest(&fake, GIB, 2 * GIB, 16);
        let Shared {
            _dir,
            fake,
            time,
            svc,
        } = shared(fake, policy);
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t0 = fake.now_s();
        // Six small VMs start, run 3 s, stop, and start again a second later, over and over:
        // 768 MiB of them at most, and always one waiting to start.
        let smalls: Vec<_> = (0..6)
            .map(|i| {
                let p = time.participant();
                let (svc, fake, time, served) =
                    (svc.clone(), fake.clone(), time.clone(), served.clone());
                std::thread::spawn(move || {
                    p.enter();
                    time.sleep(0.25 * i as f64);
                    let session = format!("small-{i}");
                    let mut starts = 0;
                    while !served.load(std::sync::atomic::Ordering::SeqCst)
                        && fake.now_s() - t0 < 200.0
                    {
                        let id = svc.reserve_memory(&session, 128 * MIB).unwrap();
                        starts += 1;
                        time.sleep(3.0);
                        svc.delete_reservation(&session, &id).unwrap();
                        time.sleep(1.0);
                    }
                    drop(p);
                    starts
                })
            })
            .collect();
        let big = {
            let p = time.participant();
            let (svc, fake, time, served) =
                (svc.clone(), fake.clone(), time.clone(), served.clone());
            std::thread::spawn(move || {
                p.enter();
                time.sleep(2.0);
                let asked = fake.now_s();
                svc.reserve_memory("big", GIB).unwrap();
                let waited = fake.now_s() - asked;
                served.store(true, std::sync::atomic::Ordering::SeqCst);
                drop(p);
                waited
            })
        };
        let waited = big.join().unwrap();
        let starts: u32 = smalls.into_iter().map(|h| h.join().unwrap()).sum();
        eprintln!("{policy}: the 1 GiB start waited {waited:.1} s among {starts} small starts");
        // Its own 768 MiB at most from the guest (48 s), after the fairness window (20 s).
        assert!(
            waited <= 20.0 + 48.0 + 2.0,
            "{policy}: the big start waited {waited} s"
        );
        assert!(starts >= 6, "{policy}: only {starts} small starts");
        let s = fake.snapshot().unwrap();
        assert!(s.directory("/squeezed/pending").is_empty());
    }
}

/// Writes a pending entry as another process would.
fn foreign_entry(fake: &FakeHost, id: &str, session: &str, kib: Kib, pid: u32, start: u64) {
    use squeeze::platform::Store;
    let json = format!(
        "{{\"version\":1,\"session\":\"{session}\",\"min_kib\":{kib},\"max_kib\":{kib},\
         \"need_kib\":{kib},\"order\":1,\"since_s\":0.0,\"owner\":{{\"pid\":{pid},\"start\":{start}}}}}"
    );
    fake.write(&format!("/squeezed/pending/{id}"), &json)
        .unwrap();
}

#[test]
fn a_pending_reservation_of_a_dead_process_is_dropped_by_the_next_round() {
    let (_dir, fake, service) = setup(small_host());
    // A process that died while it waited (no such pid), and one whose pid was reused by a
    // process started later (this one, with another start time).
    let id_dead = "11111111-1111-4111-8111-111111111111";
    let id_reused = "22222222-2222-4222-8222-222222222222";
    foreign_entry(&fake, id_dead, "xl-1", GIB, u32::MAX - 1, 5);
    foreign_entry(&fake, id_reused, "xl-2", GIB, std::process::id(), 1);
    service.reserve_memory("xenopsd", 256 * MIB).unwrap();
    let s = fake.snapshot().unwrap();
    assert!(s.directory("/squeezed/pending").is_empty());
    // Nothing was granted to them, and the live request got its memory.
    assert_eq!(books(&s).reserved, 256 * MIB);
}

#[test]
fn a_pending_entry_never_counts_as_reserved_memory() {
    let (_dir, fake, service) = setup(small_host());
    // 3 GiB free; a live process (this one) waits for 1 GiB.
    let me = squeeze::pending::Owner::this_process();
    foreign_entry(
        &fake,
        "33333333-3333-4333-8333-333333333333",
        "xl-1",
        GIB,
        me.pid,
        me.start,
    );
    let view = service.host_view().unwrap();
    assert_eq!(view.reserved_kib, 0);
    assert_eq!(view.free_kib, 3 * GIB);
}

#[test]
fn login_drops_the_session_s_pending_reservations_and_the_waiting_call_fails_clean() {
    // Only a slow guest can give the 600 MiB: the reservation waits about 75 s.
    let Shared {
        _dir,
        fake,
        time,
        svc,
    } = shared(slow_guest_host(), Policy::Adaptive);
    let waiting = {
        let (p, svc) = (time.participant(), svc.clone());
        std::thread::spawn(move || {
            p.enter();
            svc.reserve_memory("xenopsd", 600 * MIB)
        })
    };
    let p = time.participant();
    let (svc2, fake2, time2) = (svc.clone(), fake.clone(), time.clone());
    let relogin = std::thread::spawn(move || {
        p.enter();
        time2.sleep(5.0);
        let pending = fake2
            .snapshot()
            .unwrap()
            .directory("/squeezed/pending")
            .len();
        svc2.login("xenopsd").unwrap();
        drop(p);
        pending
    });
    assert_eq!(
        relogin.join().unwrap(),
        1,
        "the reservation was not pending at 5 s"
    );
    let r = waiting.join().unwrap();
    assert!(
        matches!(r, Err(squeeze::Error::Backend(ref m)) if m.contains("logged in again")),
        "{r:?}"
    );
    let s = fake.snapshot().unwrap();
    assert!(s.directory("/squeezed/pending").is_empty());
    assert_eq!(books(&s).reserved, 0);
}

#[test]
fn a_balance_yields_to_a_pending_reservation() {
    use squeeze::platform::Store;
    let (_dir, fake, service) = setup_classic(small_host());
    // A guest at 1 GiB that may grow to 2 GiB, with 2 GiB free: a balance would grow it.
    let g = booted_guest(
        &fake,
        GuestSpec {
            target_kib: GIB,
            ..GuestSpec::ballooning(512 * MIB, 2 * GIB)
        },
    );
    let target = || {
        fake.read(&format!("/local/domain/{g}/memory/target"))
            .unwrap()
    };
    let id = "44444444-4444-4444-8444-444444444444";
    let me = squeeze::pending::Owner::this_process();
    foreign_entry(&fake, id, "xl-1", GIB, me.pid, me.start);
    service.balance_memory().unwrap();
    assert!(!service.balance_if_unbalanced().unwrap());
    assert_eq!(
        target(),
        Some(GIB.to_string()),
        "a balance wrote while a reservation was pending"
    );
    // The reservation gone, the same balance grows the guest.
    fake.rm(&format!("/squeezed/pending/{id}")).unwrap();
    service.balance_memory().unwrap();
    assert_eq!(target(), Some((2 * GIB).to_string()));
}

/// Writes a pending entry of this (live) process as another thread would have, waiting since
/// `since_s` on the fake's clock.
fn live_entry(fake: &FakeHost, id: &str, session: &str, kib: Kib, since_s: f64) {
    use squeeze::platform::Store;
    let me = squeeze::pending::Owner::this_process();
    let json = format!(
        "{{\"version\":1,\"session\":\"{session}\",\"min_kib\":{kib},\"max_kib\":{kib},\
         \"need_kib\":{kib},\"order\":1,\"since_s\":{since_s},\"owner\":{{\"pid\":{},\"start\":{}}}}}",
        me.pid, me.start
    );
    fake.write(&format!("/squeezed/pending/{id}"), &json)
        .unwrap();
}

#[test]
fn a_request_that_fits_overtakes_a_big_one_until_the_big_one_has_waited_the_window() {
    const BIG: &str = "55555555-5555-4555-8555-555555555555";
    for (waited_s, overtakes) in [(5.0, true), (30.0, false)] {
        // 1 GiB free; a guest at 2 GiB that can give 1.5 GiB at 100 MiB/s.
        let (_dir, fake, service) = setup(small_host());
        guest(&fake, 512 * MIB, 2 * GIB, 100);
        fake.advance(30.0).unwrap();
        // A 2 GiB request (more than is free) has waited `waited_s`.
        live_entry(&fake, BIG, "xl-big", 2 * GIB, fake.now_s() - waited_s);
        let t0 = fake.now_s();
        service.reserve_memory("xl-small", 256 * MIB).unwrap();
        let took = fake.now_s() - t0;
        let s = fake.snapshot().unwrap();
        if overtakes {
            // Granted at once from the free 1 GiB; the big one still waits.
            assert_eq!(
                took, 0.0,
                "waited {waited_s} s: the small one took {took} s"
            );
            assert_eq!(s.directory("/squeezed/pending"), vec![BIG.to_string()]);
        } else {
            // The memory went to the big one first: 1 GiB more had to be freed (10 s at
            // 100 MiB/s), and its round granted both.
            assert!(took >= 10.0, "the small one took only {took} s");
            assert!(s.directory("/squeezed/pending").is_empty());
            assert_eq!(
                s.read(&format!("/squeezed/state/xl-big/{BIG}")),
                Some((2 * GIB).to_string().as_str())
            );
        }
        eprintln!("the big one waited {waited_s} s: the small one took {took} s");
    }
}

#[test]
fn a_pending_reservation_that_is_cancelled_or_misses_its_deadline_leaves_nothing() {
    use squeeze::progress::{CancelToken, ReserveOptions};
    for policy in [Policy::Classic, Policy::Adaptive] {
        // 600 MiB from an 8 MiB/s guest: about 75 s of ballooning.
        let Shared {
            _dir,
            fake,
            time,
            svc,
        } = shared(slow_guest_host(), policy);
        // A deadline of 10 s.
        let r = svc.reserve_memory_with(
            "xenopsd",
            600 * MIB,
            ReserveOptions::default().with_deadline(10.0),
        );
        assert!(
            matches!(r, Err(squeeze::Error::DeadlineCannotBeMet { .. })),
            "{policy}: {r:?}"
        );
        // Cancelled 5 s in, from another thread, while pending.
        let cancel = CancelToken::new();
        let waiting = {
            let (p, svc, cancel) = (time.participant(), svc.clone(), cancel.clone());
            std::thread::spawn(move || {
                p.enter();
                svc.reserve_memory_with(
                    "xenopsd",
                    600 * MIB,
                    ReserveOptions::default().with_cancel(cancel),
                )
            })
        };
        let p = time.participant();
        let (fake2, time2) = (fake.clone(), time.clone());
        let canceller = std::thread::spawn(move || {
            p.enter();
            time2.sleep(5.0);
            let pending = fake2
                .snapshot()
                .unwrap()
                .directory("/squeezed/pending")
                .len();
            cancel.cancel();
            drop(p);
            pending
        });
        assert_eq!(canceller.join().unwrap(), 1, "{policy}: not pending at 5 s");
        assert_eq!(
            waiting.join().unwrap(),
            Err(squeeze::Error::Cancelled),
            "{policy}"
        );
        let s = fake.snapshot().unwrap();
        assert!(s.directory("/squeezed/pending").is_empty(), "{policy}");
        assert_eq!(books(&s).reserved, 0, "{policy}");
    }
}
