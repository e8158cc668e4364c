//! The memory service with the adaptive policy on the fake host: its non-cooperation score,
//! not squeezed's 20 s rule, sets and clears `memory/uncooperative`.

mod common;

use common::{booted_guest, config, store_target_kib, GIB, MIB, SLUSH};
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::backend::sim::Behaviour;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Policy};

/// A 5 GiB fake host; domain 0 holds 1 GiB.
fn five_gib_host() -> FakeHost {
    FakeHost::in_memory(FakeConfig {
        total_kib: 5 * GIB,
        xen_kib: 0,
        dom0_kib: GIB,
        boot_delay_s: 1.0,
        referee_slush_kib: Some(SLUSH),
    })
    .unwrap()
}

/// A service over `fake` with the test settings in `dir` and `policy`.
fn service_with(fake: &FakeHost, dir: &std::path::Path, policy: Policy) -> Service {
    Service::new(
        fake.platform(),
        ServiceConfig {
            policy,
            ..config(dir)
        },
    )
    .unwrap()
}

/// A 5 GiB host (domain 0 holds 1 GiB) with three guests of 512 MiB..1 GiB at 1 GiB: one that
/// frees a 4 KiB page every 5 s, an honest 1 MiB/s one and a 100 MiB/s one. 1 GiB is free.
fn trickler_host(policy: Policy) -> (tempfile::TempDir, FakeHost, Service, [DomId; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let fake = five_gib_host();
    let service = service_with(&fake, dir.path(), policy);
    let guest = |behaviour| GuestSpec {
        behaviour,
        ..GuestSpec::ballooning(512 * MIB, GIB)
    };
    let domids = [
        booted_guest(
            &fake,
            guest(Behaviour::Trickle {
                chunk_kib: 4,
                period_s: 5.0,
            }),
        ),
        booted_guest(
            &fake,
            guest(Behaviour::Ideal {
                rate_kib_per_s: MIB,
            }),
        ),
        booted_guest(
            &fake,
            guest(Behaviour::Ideal {
                rate_kib_per_s: 100 * MIB,
            }),
        ),
    ];
    (dir, fake, service, domids)
}

fn flagged(fake: &FakeHost, domid: DomId) -> bool {
    fake.snapshot()
        .unwrap()
        .read(&format!("/local/domain/{domid}/memory/uncooperative"))
        .is_some()
}

/// What the background balancer does, once a second for `seconds`: returns when each domain
/// was first seen flagged in the store and whether it was flagged at the end.
fn run(
    fake: &FakeHost,
    service: &Service,
    domids: &[DomId],
    seconds: u32,
) -> Vec<(Option<f64>, bool)> {
    let start = fake.snapshot().unwrap().time;
    let mut first = vec![None; domids.len()];
    for _ in 0..seconds {
        fake.advance(1.0).unwrap();
        service.balance_if_unbalanced().unwrap();
        let now = fake.snapshot().unwrap().time;
        for (f, &d) in first.iter_mut().zip(domids) {
            if f.is_none() && flagged(fake, d) {
                *f = Some(now - start);
            }
        }
    }
    first
        .into_iter()
        .zip(domids)
        .map(|(f, &d)| (f, flagged(fake, d)))
        .collect()
}

#[test]
fn the_adaptive_score_flags_a_trickler_in_the_store_never_an_honest_slow_guest_and_clears_on_recovery(
) {
    let (_dir, fake, service, [trickler, slow, fast]) = trickler_host(Policy::Adaptive);
    let session = service.login("xenopsd").unwrap();
    // 1200 MiB with 1 GiB free: 248 MiB must be freed, which the fast guest covers alone.
    service.reserve_memory(&session, 1200 * MIB).unwrap();
    // The background balancer then runs for three minutes, asking the guests for memory
    // back and forth as the slow guest catches up; the trickler never does its part.
    let seen = run(&fake, &service, &[trickler, slow, fast], 180);
    assert!(seen[0].0.is_some() && seen[0].1, "trickler: {:?}", seen[0]);
    assert_eq!(seen[1], (None, false), "the honest 1 MiB/s guest");
    assert_eq!(seen[2], (None, false), "the fast guest");
    let c = service.cooperation(trickler).unwrap();
    assert!(c.uncooperative && c.score_s >= 10.0, "{c:?}");

    // The trickler's driver recovers (100 MiB/s): it does the work it was asked for, its
    // score leaks away (60 s time constant, cleared under 3 s) and the flag goes.
    fake.set_behaviour(
        trickler,
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    )
    .unwrap();
    let seen = run(&fake, &service, &[trickler, slow], 180);
    assert!(!seen[0].1, "still flagged after recovering");
    assert_eq!(seen[1], (None, false));
    assert!(!service.cooperation(trickler).unwrap().uncooperative);
    assert!(fake.snapshot().unwrap().violations.is_empty());
}

#[test]
fn a_service_with_the_default_settings_runs_adaptive_and_classic_must_be_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(common::small_host()).unwrap();
    // The default settings, only moved off the system paths.
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    assert_eq!(service.config().policy, Policy::Adaptive);
    assert_eq!(ServiceConfig::default().policy, Policy::Adaptive);
    // A 512 MiB..1 GiB guest at 1 GiB; 2 GiB are free. A reservation of 2.25 GiB makes the
    // squeezer ask the guest for 256 MiB back, so the adaptive squeezer has a score for it.
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, GIB));
    let session = service.login("xenopsd").unwrap();
    service
        .reserve_memory(&session, 2 * GIB + 256 * MIB)
        .unwrap();
    let c = service
        .cooperation(guest)
        .expect("the default policy keeps scores");
    assert!(!c.uncooperative, "{c:?}");
    assert!(service.get_diagnostics().unwrap().contains("\"adaptive\""));

    // Classic, named, keeps no scores: a fresh squeezer per call, as squeezed runs it.
    let classic = service_with(&fake, dir.path(), Policy::Classic);
    classic.balance_memory().unwrap();
    assert!(classic.cooperation(guest).is_none());
}

/// Seen on a real Xen host: a reservation shrank two guests, was deleted, and one
/// `balance_memory` left them small, because growing a guest just shrunk looked like a reversal
/// inside the dwell time. A deleted reservation is an outside input: the next balance gives the
/// memory back at once.
#[test]
fn a_deleted_reservation_gives_the_guests_their_memory_back_at_the_next_balance() {
    let dir = tempfile::tempdir().unwrap();
    // 5 GiB host, domain 0 holds 1 GiB, two 512 MiB..1 GiB guests at 1 GiB: 2 GiB free.
    let fake = five_gib_host();
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    assert_eq!(service.config().policy, Policy::Adaptive);
    let guest = GuestSpec {
        behaviour: Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
        ..GuestSpec::ballooning(512 * MIB, GIB)
    };
    let g = [booted_guest(&fake, guest), booted_guest(&fake, guest)];
    let session = service.login("toolstack").unwrap();
    service.balance_memory().unwrap();
    // 2 GiB free less the slush, plus 512 MiB the guests must give: 256 MiB each.
    let id = service
        .reserve_memory(&session, 2 * GIB - SLUSH + 512 * MIB)
        .unwrap();
    for d in g {
        assert!(store_target_kib(&fake, d) <= GIB - 256 * MIB + 4, "{d}");
    }
    service.delete_reservation(&session, &id).unwrap();
    service.balance_memory().unwrap();
    for d in g {
        assert_eq!(
            store_target_kib(&fake, d),
            GIB,
            "domain {d} was not given its memory back"
        );
    }
}

/// Seen on main: a reservation that needed a guest whose balloon driver never moves failed
/// naming it, yet the store and the diagnostics still called it cooperative (score 5.8 s, under
/// the 10 s flagging score), because the judgement never reached the host model. A domain the
/// error blames is flagged by the time the error returns.
#[test]
fn a_stuck_guest_named_in_a_failed_reservation_is_flagged_uncooperative_when_the_error_returns() {
    let dir = tempfile::tempdir().unwrap();
    // 5 GiB host, domain 0 holds 1 GiB, two 512 MiB..1 GiB guests at 1 GiB: 2 GiB free.
    let fake = five_gib_host();
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    assert_eq!(service.config().policy, Policy::Adaptive);
    let spec = |behaviour| GuestSpec {
        behaviour,
        ..GuestSpec::ballooning(512 * MIB, GIB)
    };
    let stuck = booted_guest(&fake, spec(Behaviour::Stuck));
    let fast = booted_guest(
        &fake,
        spec(Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        }),
    );
    let session = service.login("xenopsd").unwrap();
    // 2 GiB + 768 MiB needs 768 MiB freed: the fast guest can give only 512 MiB.
    let err = service
        .reserve_memory(&session, 2 * GIB + 768 * MIB)
        .unwrap_err();
    assert_eq!(
        err,
        squeeze::Error::DomainsRefusedToCooperate {
            domids: vec![stuck]
        }
    );
    assert!(flagged(&fake, stuck), "memory/uncooperative not written");
    assert!(!flagged(&fake, fast));
    let c = service.cooperation(stuck).unwrap();
    assert!(c.uncooperative, "{c:?}");
    let diag = service.diagnostics().unwrap();
    let d = diag.domains.iter().find(|d| d.domid == stuck).unwrap();
    assert!(d.uncooperative_flag);
    assert_eq!(
        d.cooperation.unwrap().state,
        squeeze::diagnostics::CooperationFlag::Uncooperative
    );
    let f = diag.domains.iter().find(|d| d.domid == fast).unwrap();
    assert!(!f.uncooperative_flag);
}

/// Two honest 1 MiB/s guests of 512 MiB..1 GiB at 1 GiB on the five-GiB host (2 GiB free).
fn slow_guests_host(policy: Policy) -> (tempfile::TempDir, FakeHost, Service) {
    let dir = tempfile::tempdir().unwrap();
    let fake = five_gib_host();
    let service = service_with(&fake, dir.path(), policy);
    for _ in 0..2 {
        booted_guest(
            &fake,
            GuestSpec {
                behaviour: Behaviour::Ideal {
                    rate_kib_per_s: MIB,
                },
                ..GuestSpec::ballooning(512 * MIB, GIB)
            },
        );
    }
    (dir, fake, service)
}

#[test]
fn a_reservation_with_a_deadline_slow_guests_cannot_meet_says_so_early_and_reserves_nothing() {
    use squeeze::progress::ReserveOptions;
    // 2 GiB - slush + 512 MiB needs 512 MiB freed: 256 s at 2 MiB/s in all, against a 60 s
    // deadline.
    let kib = 2 * GIB - SLUSH + 512 * MIB;
    let (_dir, fake, service) = slow_guests_host(Policy::Adaptive);
    let session = service.login("xenopsd").unwrap();
    let start = fake.snapshot().unwrap().time;
    let err = service
        .reserve_memory_with(&session, kib, ReserveOptions::default().with_deadline(60.0))
        .unwrap_err();
    let took = fake.snapshot().unwrap().time - start;
    match err {
        squeeze::Error::DeadlineCannotBeMet {
            deadline,
            predicted: Some(p),
        } => {
            assert_eq!(deadline.as_secs_f64(), 60.0);
            let p = p.as_secs_f64();
            assert!((240.0..280.0).contains(&p), "predicted {p} s");
        }
        other => panic!("expected DeadlineCannotBeMet, got {other:?}"),
    }
    assert!(took < 10.0, "took {took} s");
    assert!(service.host_view().unwrap().reservations.is_empty());
    // Without a deadline the same request is served at the guests' pace.
    service.balance_memory().unwrap();
    service.reserve_memory(&session, kib).unwrap();

    // Classic predicts nothing: the deadline ends its wait when it passes.
    let (_dir, fake, service) = slow_guests_host(Policy::Classic);
    let session = service.login("xenopsd").unwrap();
    let start = fake.snapshot().unwrap().time;
    let err = service
        .reserve_memory_with(&session, kib, ReserveOptions::default().with_deadline(60.0))
        .unwrap_err();
    let took = fake.snapshot().unwrap().time - start;
    assert!(
        matches!(
            err,
            squeeze::Error::DeadlineCannotBeMet {
                predicted: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!((60.0..63.0).contains(&took), "took {took} s");
    assert!(service.host_view().unwrap().reservations.is_empty());
}

#[test]
fn the_background_balancer_asks_the_adaptive_policy_not_squeezed_whether_to_balance() {
    let dir = tempfile::tempdir().unwrap();
    // 5 GiB host, domain 0 holds 1 GiB; one 512 MiB..2 GiB guest at 1 GiB that cannot grow
    // past 1 GiB: 3 GiB free, which squeezed would offer it on every check.
    let fake = five_gib_host();
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    let guest = booted_guest(
        &fake,
        GuestSpec {
            behaviour: Behaviour::HiddenCeiling {
                rate_kib_per_s: 100 * MIB,
                ceiling_kib: GIB,
            },
            target_kib: GIB,
            ..GuestSpec::ballooning(512 * MIB, 2 * GIB)
        },
    );
    // The first balance offers it memory, finds the ceiling and withdraws the request.
    service.balance_memory().unwrap();
    let target = store_target_kib(&fake, guest);
    assert!(target <= GIB + MIB, "target {target} KiB");
    // A minute of background checks: the adaptive policy would write nothing, so none
    // balances (a fresh classic squeezer said "unbalanced" every time).
    for _ in 0..60 {
        fake.advance(1.0).unwrap();
        assert!(!service.balance_if_unbalanced().unwrap());
    }
    assert_eq!(store_target_kib(&fake, guest), target);
}

/// The store entry holding what was learnt about `domid`, if any.
fn learnt_entry(fake: &FakeHost, domid: DomId) -> Option<String> {
    fake.snapshot()
        .unwrap()
        .read(&format!("/squeezed/learnt/{domid}"))
        .map(str::to_string)
}

#[test]
fn what_one_service_learnt_about_a_stuck_guest_is_known_to_the_next_without_relearning() {
    let dir = tempfile::tempdir().unwrap();
    // 5 GiB host, domain 0 holds 1 GiB, two 512 MiB..1 GiB guests at 1 GiB: 2 GiB free.
    let fake = five_gib_host();
    let spec = |behaviour| GuestSpec {
        behaviour,
        ..GuestSpec::ballooning(512 * MIB, GIB)
    };
    let stuck = booted_guest(&fake, spec(Behaviour::Stuck));
    let fast = booted_guest(
        &fake,
        spec(Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        }),
    );
    let first = Service::new(fake.platform(), config(dir.path())).unwrap();
    let session = first.login("xenopsd").unwrap();
    // 2 GiB + 768 MiB needs 768 MiB freed: the fast guest gives its 512 MiB, the stuck one
    // nothing, so the first service learns the fast one's rate and flags the stuck one.
    let err = first
        .reserve_memory(&session, 2 * GIB + 768 * MIB)
        .unwrap_err();
    assert_eq!(
        err,
        squeeze::Error::DomainsRefusedToCooperate {
            domids: vec![stuck]
        }
    );
    let judged = first.cooperation(stuck).unwrap();
    assert!(judged.uncooperative && judged.score_s >= 10.0, "{judged:?}");
    let diag = first.diagnostics().unwrap();
    let rate_of = |diag: &squeeze::diagnostics::Diagnostics, domid| {
        diag.domains
            .iter()
            .find(|d| d.domid == domid)
            .and_then(|d| d.rate)
            .and_then(|r| r.down_kib_per_s)
    };
    let fast_rate = rate_of(&diag, fast).expect("the fast guest's rate was measured");
    assert!(learnt_entry(&fake, stuck)
        .unwrap()
        .starts_with("{\"version\":2,"));
    // The process that learnt it goes away; another one decides for the host.
    drop(first);
    let second = Service::new(fake.platform(), config(dir.path())).unwrap();
    assert_eq!(second.cooperation(stuck), None, "nothing seen yet");
    // One background check: too short to re-learn anything, yet the verdict is the same, its
    // score only leaking (time constant 60 s) over the time the check took.
    let before = fake.snapshot().unwrap().time;
    second.balance_if_unbalanced().unwrap();
    let elapsed = fake.snapshot().unwrap().time - before;
    let inherited = second.cooperation(stuck).unwrap();
    assert!(inherited.uncooperative, "{inherited:?}");
    let leaked = judged.score_s * (-elapsed / 60.0).exp();
    assert!(
        (inherited.score_s - leaked).abs() < 1e-6,
        "{inherited:?} after {elapsed} s, expected {leaked}"
    );
    assert_eq!(
        rate_of(&second.diagnostics().unwrap(), fast),
        Some(fast_rate)
    );
    assert!(!second.cooperation(fast).unwrap().uncooperative);
    // The entry goes with its domain.
    fake.destroy_domain(stuck).unwrap();
    second.balance_if_unbalanced().unwrap();
    assert_eq!(learnt_entry(&fake, stuck), None);
    assert!(learnt_entry(&fake, fast).is_some());
}

#[test]
fn damaged_or_foreign_learnt_state_is_ignored_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let fake = five_gib_host();
    let guest = booted_guest(
        &fake,
        GuestSpec {
            behaviour: Behaviour::Ideal {
                rate_kib_per_s: 100 * MIB,
            },
            ..GuestSpec::ballooning(512 * MIB, GIB)
        },
    );
    // Another schema version claims the guest is flagged with a 99 s score.
    let foreign = r#"{"version":3,"domain":"x","learnt":{"rate_down_kib_per_s":1.0,"rate_up_kib_per_s":null,"floor_kib":null,"ceiling_kib":null,"score_s":99.0,"uncooperative":true,"concern":"not-moving"}}"#;
    fake.platform()
        .store
        .write(&format!("/squeezed/learnt/{guest}"), foreign)
        .unwrap();
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    service.balance_if_unbalanced().unwrap();
    let c = service.cooperation(guest).unwrap();
    assert!(!c.uncooperative && c.score_s == 0.0, "{c:?}");
    assert!(learnt_entry(&fake, guest)
        .unwrap()
        .starts_with("{\"version\":2,"));
}

#[test]
fn a_new_domain_on_the_domid_of_a_destroyed_stuck_one_inherits_none_of_its_judgement() {
    let dir = tempfile::tempdir().unwrap();
    // As above: 2 GiB free, a stuck and a 100 MiB/s guest of 512 MiB..1 GiB at 1 GiB.
    let fake = five_gib_host();
    let spec = |behaviour| GuestSpec {
        behaviour,
        ..GuestSpec::ballooning(512 * MIB, GIB)
    };
    let fast = |rate_kib_per_s| Behaviour::Ideal { rate_kib_per_s };
    let stuck = booted_guest(&fake, spec(Behaviour::Stuck));
    booted_guest(&fake, spec(fast(100 * MIB)));
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    let session = service.login("xenopsd").unwrap();
    // 768 MiB to free: the stuck guest is named and flagged (score 10 s or more).
    let err = service
        .reserve_memory(&session, 2 * GIB + 768 * MIB)
        .unwrap_err();
    assert!(matches!(
        err,
        squeeze::Error::DomainsRefusedToCooperate { .. }
    ));
    assert!(service.cooperation(stuck).unwrap().uncooperative);
    assert!(flagged(&fake, stuck));
    let old_entry = learnt_entry(&fake, stuck).unwrap();
    // Between two looks of the service, the stuck domain is destroyed and a healthy one is
    // created with its domid (what Xen does once domids wrap, or a toolstack picking one).
    fake.destroy_domain(stuck).unwrap();
    let reborn = fake
        .create_domain_as(Some(stuck), spec(fast(100 * MIB)))
        .unwrap();
    assert_eq!(reborn, stuck);
    let size = GIB;
    {
        use squeeze::platform::Hypervisor;
        fake.set_maxmem_kib(reborn, size).unwrap();
    }
    fake.build_domain(reborn, size).unwrap();
    fake.unpause(reborn).unwrap();
    fake.advance(1.0).unwrap();
    // The same 768 MiB, asked for first thing: the new domain is counted on and gives its
    // share (before, it was still the stuck domain that had not moved, and the request
    // failed naming it), and it is judged on what it does, from nothing (before, it kept the
    // 10 s score and the flag of the domain destroyed).
    service
        .reserve_memory(&session, 2 * GIB + 768 * MIB)
        .unwrap();
    let c = service.cooperation(reborn).unwrap();
    assert!(
        !c.uncooperative && c.score_s == 0.0 && c.concern.is_none(),
        "{c:?}"
    );
    assert!(!flagged(&fake, reborn));
    // Its entry in the store is its own: a new id, nothing of the earlier score.
    let entry = learnt_entry(&fake, reborn).unwrap();
    assert_ne!(entry, old_entry);
    assert!(entry.contains("\"score_s\":0.0"), "{entry}");
    let id = fake
        .snapshot()
        .unwrap()
        .read(&squeeze::learnt::id_path(reborn))
        .map(str::to_string)
        .unwrap();
    assert!(entry.contains(&id), "{entry} names {id}");
    assert!(!old_entry.contains(&id));
}
