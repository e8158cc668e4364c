//! The call sequences xenopsd and xl make, end to end against a fake host.

mod common;

use common::*;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::backend::sim::Behaviour;
use squeeze::platform::Store;
use squeeze::Error;

/// One ballooning guest of 512 MiB..2 GiB, booted at 2 GiB: 1 GiB of the 3 GiB stays free.
fn host_with_one_guest() -> (
    tempfile::TempDir,
    squeeze::backend::fake::FakeHost,
    squeeze::service::Service,
    i32,
) {
    let (dir, fake, service) = setup_classic(small_host());
    let g = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 2 * GIB));
    assert_eq!(fake.snapshot().unwrap().free_kib, GIB);
    (dir, fake, service, g)
}

#[test]
fn xenopsd_starts_a_vm_and_the_reservation_follows_it() {
    let (_dir, fake, service, guest) = host_with_one_guest();
    let session = service.login("xenopsd").unwrap();
    assert_eq!(session, "xenopsd");

    // 1 GiB is free and the guest can give 1.5 GiB more: a VM of 1..1.5 GiB fits.
    let (id, amount) = service
        .reserve_memory_range(&session, GIB, 3 * GIB / 2)
        .unwrap();
    assert!((GIB..=3 * GIB / 2).contains(&amount), "{amount}");
    let s = fake.snapshot().unwrap();
    assert_eq!(
        s.read(&format!("/squeezed/state/xenopsd/{id}")),
        Some(amount.to_string().as_str())
    );
    let b = books(&s);
    assert_eq!(b.reserved, amount);
    assert!(b.free() >= SLUSH, "the slush is kept: {b:?}");
    assert_eq!(service.host_view().unwrap().free_kib, b.free());

    // The domain appears; the reservation becomes its initial reservation, counted once.
    let spec = GuestSpec {
        offset_kib: MIB,
        ..GuestSpec::ballooning(amount / 2, amount - MIB)
    };
    let domid = fake.create_domain(spec).unwrap();
    let free_before = service.host_view().unwrap().free_kib;
    service
        .transfer_reservation_to_domain(&session, &id, domid)
        .unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(v.reserved_kib, 0);
    assert_eq!(v.unallocated_initial_kib, amount);
    assert_eq!(
        v.free_kib, free_before,
        "transfer neither frees nor takes memory"
    );
    assert_eq!(fake.domain(domid).unwrap().unwrap().max_kib(), amount);

    // The builder takes the memory; the domain boots and its offset is measured.
    fake.build_domain(domid, amount).unwrap();
    assert_eq!(service.host_view().unwrap().free_kib, free_before);
    fake.unpause(domid).unwrap();
    fake.advance(1.0).unwrap();
    let v = service.host_view().unwrap();
    let d = v.domains.iter().find(|d| d.domid == domid).unwrap();
    assert!(d.booted && d.can_balloon);
    assert_eq!(d.offset_kib, MIB);
    assert_eq!(d.domain.unwrap().memory_actual_kib, amount - MIB);
    assert_eq!(
        Store::read(
            &*fake.platform().store,
            &format!("/local/domain/{domid}/memory/memory-offset")
        )
        .unwrap()
        .as_deref(),
        Some("1024")
    );

    assert_eq!(
        service
            .query_reservation_of_domain(&session, domid)
            .unwrap(),
        id
    );
    service.delete_reservation(&session, &id).unwrap();
    assert!(matches!(
        service.delete_reservation(&session, &id),
        Err(Error::UnknownReservation(_))
    ));

    // Balancing hands what is free above the slush back to the guests.
    service.balance_memory().unwrap();
    let b = books(&fake.snapshot().unwrap());
    assert!(b.free() >= SLUSH && b.free() - SLUSH < 512 + 8, "{b:?}");
    assert!(fake.snapshot().unwrap().violations.is_empty());
    let _ = guest;
}

#[test]
fn xl_reserves_an_exact_size_and_a_dead_domain_releases_it() {
    let (_dir, fake, service) = setup_classic(small_host());
    let session = service
        .login(&format!("xl-{}", std::process::id()))
        .unwrap();
    let id = service.reserve_memory(&session, 512 * MIB).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(512 * MIB)).unwrap();
    service
        .transfer_reservation_to_domain(&session, &id, domid)
        .unwrap();
    // xl dies before deleting the reservation; the domain is destroyed later.
    fake.build_domain(domid, 512 * MIB).unwrap();
    assert_eq!(books(&fake.snapshot().unwrap()).reserved, 0);
    fake.destroy_domain(domid).unwrap();
    // Under squeezed's rule the dead domain's reservation would count again (512 MiB lost);
    // here it is released.
    let v = service.host_view().unwrap();
    assert_eq!(v.reserved_kib, 0);
    assert!(v.reservations.is_empty());
    assert_eq!(v.free_kib, 3 * GIB);
}

#[test]
fn login_drops_only_the_reservations_never_transferred() {
    let (_dir, fake, service) = setup_classic(small_host());
    let s = service.login("xenopsd").unwrap();
    let a = service.reserve_memory(&s, 100 * MIB).unwrap();
    let b = service.reserve_memory(&s, 200 * MIB).unwrap();
    let other = service.reserve_memory("other", 300 * MIB).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(200 * MIB)).unwrap();
    service
        .transfer_reservation_to_domain(&s, &b, domid)
        .unwrap();
    assert_eq!(service.host_view().unwrap().reserved_kib, 400 * MIB);

    service.login("xenopsd").unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(
        v.reserved_kib,
        300 * MIB,
        "only the other session's reservation counts"
    );
    assert!(matches!(
        service.delete_reservation(&s, &a),
        Err(Error::UnknownReservation(_))
    ));
    assert_eq!(service.query_reservation_of_domain(&s, domid).unwrap(), b);
    service.delete_reservation(&s, &b).unwrap();
    service.delete_reservation("other", &other).unwrap();
    assert_eq!(service.host_view().unwrap().free_kib, 3 * GIB - 200 * MIB);
}

#[test]
fn asking_for_more_than_the_host_can_free_fails_and_reserves_nothing() {
    let (_dir, fake, service, _guest) = host_with_one_guest();
    let s = service.login("xenopsd").unwrap();
    // Free 1 GiB + the guest's 1.5 GiB above its minimum, minus 2 × 4 KiB of inaccuracy
    // allowance, minus the slush: 2.5 GiB cannot be reserved.
    match service.reserve_memory(&s, 5 * GIB / 2) {
        Err(Error::CannotFreeThisMuchMemory { required_kib, .. }) => {
            assert_eq!(
                required_kib,
                5 * GIB / 2,
                "reported net of the slush, as squeezed does"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        service.reserve_memory_range(&s, 5 * GIB / 2, 3 * GIB),
        Err(Error::CannotFreeThisMuchMemory { .. })
    ));
    let snap = fake.snapshot().unwrap();
    assert!(snap.directory("/squeezed/state/xenopsd").is_empty());
    // What does fit, fits: 2.5 GiB − 72 MiB − 8 KiB.
    let id = service.reserve_memory(&s, 5 * GIB / 2 - SLUSH - 8).unwrap();
    assert_eq!(
        books(&fake.snapshot().unwrap()).reserved,
        5 * GIB / 2 - SLUSH - 8
    );
    service.delete_reservation(&s, &id).unwrap();
}

#[test]
fn a_stuck_guest_is_blamed_and_flagged_uncooperative() {
    let (_dir, fake, service) = setup_classic(small_host());
    let stuck = booted_guest(
        &fake,
        GuestSpec {
            behaviour: Behaviour::Stuck,
            ..GuestSpec::ballooning(GIB, 2 * GIB)
        },
    );
    let s = service.login("xenopsd").unwrap();
    // 1 GiB is free; 1.5 GiB needs the stuck guest to give memory.
    match service.reserve_memory(&s, 3 * GIB / 2) {
        Err(Error::DomainsRefusedToCooperate { domids }) => assert_eq!(domids, vec![stuck]),
        other => panic!("{other:?}"),
    }
    assert!(fake
        .snapshot()
        .unwrap()
        .directory("/squeezed/state/xenopsd")
        .is_empty());
    // Far from its target for over 20 s: flagged.
    fake.advance(21.0).unwrap();
    let v = service.host_view().unwrap();
    assert!(
        v.domains
            .iter()
            .find(|d| d.domid == stuck)
            .unwrap()
            .uncooperative
    );
    assert!(Store::exists(
        &*fake.platform().store,
        &format!("/local/domain/{stuck}/memory/uncooperative")
    )
    .unwrap());
    // The stuck guest's maxmem was lowered to what it holds, so it cannot grab memory later.
    assert!(fake.domain(stuck).unwrap().unwrap().max_kib() <= 2 * GIB);
}

#[test]
fn a_domain_not_yet_booted_holds_its_whole_initial_reservation() {
    let (_dir, fake, service) = setup_classic(small_host());
    let s = service.login("xenopsd").unwrap();
    let id = service.reserve_memory(&s, GIB).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(GIB)).unwrap();
    service
        .transfer_reservation_to_domain(&s, &id, domid)
        .unwrap();
    service.delete_reservation(&s, &id).unwrap();
    // Half built: 512 MiB allocated, 512 MiB still owed to it.
    fake.build_domain(domid, 512 * MIB).unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(v.unallocated_initial_kib, 512 * MIB);
    assert_eq!(v.free_kib, 3 * GIB - GIB);
    // Another reservation cannot take the memory owed to the domain.
    assert!(service.reserve_memory(&s, 2 * GIB - SLUSH + 4).is_err());
    assert!(service.reserve_memory(&s, 2 * GIB - SLUSH).is_ok());
}

#[test]
fn an_hvm_domain_counts_its_shadow_memory_before_boot_and_maxmem_includes_xens_extra() {
    let (_dir, fake, service) = setup_classic(small_host());
    let s = service.login("xenopsd").unwrap();
    let id = service.reserve_memory(&s, GIB).unwrap();
    let spec = GuestSpec {
        hvm: true,
        shadow_mib: 8,
        offset_kib: 4 * MIB,
        ..GuestSpec::ballooning(512 * MIB, GIB - 12 * MIB)
    };
    let domid = fake.create_domain(spec).unwrap();
    service
        .transfer_reservation_to_domain(&s, &id, domid)
        .unwrap();
    // The builder allocates the guest (1 GiB − 8 MiB) and 8 MiB of shadow: all of the
    // reservation, nothing more owed.
    fake.build_domain(domid, GIB - 8 * MIB).unwrap();
    assert_eq!(service.host_view().unwrap().unallocated_initial_kib, 0);
    fake.unpause(domid).unwrap();
    fake.advance(1.0).unwrap();
    let v = service.host_view().unwrap();
    let d = v.domains.iter().find(|d| d.domid == domid).unwrap();
    // Offset: 1016 MiB held − 1012 MiB target.
    assert_eq!(d.offset_kib, 4 * MIB);
    // maxmem = target + offset + 1 MiB for an HVM domain.
    assert_eq!(
        fake.domain(domid).unwrap().unwrap().max_kib(),
        GIB - 12 * MIB + 4 * MIB + MIB
    );
}

#[test]
fn state_survives_the_service_and_a_new_one_sees_every_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let fake =
        squeeze::backend::fake::FakeHost::create(&dir.path().join("host"), small_host()).unwrap();
    let id = {
        let service =
            squeeze::service::Service::new(fake.platform(), classic_config(dir.path())).unwrap();
        service.reserve_memory("xenopsd", 700 * MIB).unwrap()
    };
    let fake2 = squeeze::backend::fake::FakeHost::open(&dir.path().join("host")).unwrap();
    let service =
        squeeze::service::Service::new(fake2.platform(), classic_config(dir.path())).unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(v.reserved_kib, 700 * MIB);
    assert_eq!(v.free_kib, 3 * GIB - 700 * MIB);
    service.delete_reservation("xenopsd", &id).unwrap();
}

#[test]
fn the_background_balancer_hands_back_freed_memory_and_stops() {
    let (_dir, fake, service) = setup_classic(small_host());
    let cfg = squeeze::service::ServiceConfig {
        balance_interval_s: 0.01,
        ..service.config().clone()
    };
    let service = squeeze::service::Service::new(fake.platform(), cfg).unwrap();
    let g = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 3 * GIB));
    fake.platform()
        .store
        .write(
            &format!("/local/domain/{g}/memory/target"),
            &GIB.to_string(),
        )
        .unwrap();
    fake.advance(30.0).unwrap();
    assert_eq!(fake.domain(g).unwrap().unwrap().tot_kib(), GIB + 4);
    service.start_balancer().unwrap();
    service.start_balancer().unwrap();
    assert!(service.balancer_running());
    // 2 GiB were free; the guest grows until only the slush (within the tolerance) is left.
    // Polled until then, not timed: the balancer gets up to a minute of wall time. (Polling
    // only until the guest passed 2 GiB stopped the balancer while the guest was still on its
    // way up, now and then, on a loaded machine.)
    let balanced = |fake: &FakeHost| {
        let b = books(&fake.snapshot().unwrap());
        b.free() >= SLUSH && b.free() < SLUSH + 512 + 8
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !balanced(&fake) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    service.stop_balancer();
    assert!(!service.balancer_running());
    let b = books(&fake.snapshot().unwrap());
    assert!(b.free() >= SLUSH && b.free() < SLUSH + 512 + 8, "{b:?}");
    assert!(fake.domain(g).unwrap().unwrap().tot_kib() > 2 * GIB);
    let passes = service.get_diagnostics().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&passes).unwrap();
    assert!(doc["balancer"]["passes"].as_u64().unwrap() >= 1);
    assert_eq!(doc["balancer"]["running"], false);
}

#[test]
fn boot_time_free_memory_is_recorded_once() {
    let (dir, fake, service) = setup_classic(small_host());
    // Free 3 GiB + domain 0's 1 GiB.
    assert_eq!(service.get_host_initial_free_memory().unwrap(), 4 * GIB);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("boot_time_memory")).unwrap(),
        (4 * GIB).to_string()
    );
    booted_guest(&fake, GuestSpec::fixed(GIB));
    assert_eq!(service.get_host_initial_free_memory().unwrap(), 4 * GIB);
    assert_eq!(service.get_host_reserved_memory(), SLUSH);
}

#[test]
fn boot_time_free_memory_is_recorded_when_the_service_opens() {
    let (_dir, fake, service) = setup_classic(small_host());
    // A 1 GiB guest starts before anyone asks: the answer is still the host's at boot, free
    // 3 GiB + domain 0's 1 GiB, as squeezed records it when it starts.
    booted_guest(&fake, GuestSpec::fixed(GIB));
    assert_eq!(service.get_host_initial_free_memory().unwrap(), 4 * GIB);
}

#[test]
fn diagnostics_describe_domains_and_ledger() {
    let (_dir, fake, service, g) = host_with_one_guest();
    let id = service.reserve_memory("xenopsd", 100 * MIB).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&service.get_diagnostics().unwrap()).unwrap();
    assert_eq!(doc["settings"]["slush_kib"], SLUSH);
    assert_eq!(doc["host"]["reserved_kib"], 100 * MIB);
    assert_eq!(doc["sessions"][0]["reservations"][0]["id"], id.as_str());
    assert_eq!(doc["sessions"][0]["session"], "xenopsd");
    let d = &doc["domains"][0];
    assert_eq!(d["domid"], g);
    assert_eq!(d["dynamic_min_kib"], 512 * MIB);
    let _ = fake;
}

#[test]
fn domain_zero_is_balanced_only_when_managed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    let service =
        squeeze::service::Service::new(fake.platform(), classic_config(dir.path())).unwrap();
    assert!(service
        .host_view()
        .unwrap()
        .domains
        .iter()
        .all(|d| d.domid != 0));
    let mut cfg = classic_config(dir.path());
    cfg.host.manage_domain_zero = true;
    let mut model = squeeze::host::HostModel::new(fake.platform(), cfg.host.clone()).unwrap();
    model.configure_domain_zero(512 * MIB, None).unwrap();
    let store = fake.platform().store;
    assert_eq!(
        store
            .read("/local/domain/0/memory/dynamic-max")
            .unwrap()
            .as_deref(),
        Some("1048576")
    );
    let v = model.view().unwrap();
    let d0 = v
        .domains
        .iter()
        .find(|d| d.domid == 0)
        .unwrap()
        .domain
        .unwrap();
    assert!(d0.can_balloon);
    assert_eq!((d0.dynamic_min_kib, d0.dynamic_max_kib), (512 * MIB, GIB));
    assert!(matches!(
        model.configure_domain_zero(2 * GIB, None),
        Err(Error::InvalidMemoryValue(_))
    ));
}

#[test]
fn outstanding_claims_are_not_free_and_not_counted_twice() {
    use squeeze::platform::Hypervisor;
    let (_dir, fake, service) = setup_classic(small_host());
    // A domain created by someone else claims 256 MiB: that memory is not free.
    let other = fake.create_domain(GuestSpec::fixed(256 * MIB)).unwrap();
    fake.claim_pages(other, (256 * MIB / 4) as u64).unwrap();
    assert_eq!(service.host_view().unwrap().free_kib, 3 * GIB - 256 * MIB);
    // Our domain claims the memory its initial reservation already holds back: counted once.
    let id = service.reserve_memory("xenopsd", 512 * MIB).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(512 * MIB)).unwrap();
    service
        .transfer_reservation_to_domain("xenopsd", &id, domid)
        .unwrap();
    fake.claim_pages(domid, (512 * MIB / 4) as u64).unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(v.outstanding_kib, 768 * MIB);
    assert_eq!(v.unallocated_initial_kib, 0);
    assert_eq!(v.free_kib, 3 * GIB - 768 * MIB);
}

#[test]
fn the_uncooperative_flag_goes_once_the_domain_reaches_its_target() {
    let (_dir, fake, service) = setup_classic(small_host());
    let g = booted_guest(
        &fake,
        GuestSpec {
            behaviour: Behaviour::HiddenFloor {
                rate_kib_per_s: 100 * MIB,
                floor_kib: 3 * GIB / 2,
            },
            ..GuestSpec::ballooning(GIB, 2 * GIB)
        },
    );
    let store = fake.platform().store;
    let flag = format!("/local/domain/{g}/memory/uncooperative");
    // Asked to go to 1 GiB, it stops at 1.5 GiB.
    assert!(service.reserve_memory("xenopsd", 3 * GIB / 2).is_err());
    fake.advance(21.0).unwrap();
    service.host_view().unwrap();
    assert!(store.exists(&flag).unwrap());
    // Given a target it can reach, it is cooperative again.
    store
        .write(
            &format!("/local/domain/{g}/memory/target"),
            &(3 * GIB / 2).to_string(),
        )
        .unwrap();
    fake.advance(1.0).unwrap();
    service.host_view().unwrap();
    assert!(!store.exists(&flag).unwrap());
}

#[test]
fn a_guest_with_an_agent_but_no_balloon_driver_is_calibrated_and_left_alone() {
    let (_dir, fake, service) = setup_classic(small_host());
    let g = booted_guest(
        &fake,
        GuestSpec {
            agent: true,
            offset_kib: 2 * MIB,
            behaviour: Behaviour::NoBalloonDriver,
            ..GuestSpec::ballooning(512 * MIB, GIB)
        },
    );
    let v = service.host_view().unwrap();
    let d = v.domains.iter().find(|d| d.domid == g).unwrap();
    assert!(d.booted && !d.can_balloon);
    // Holds 1 GiB + 2 MiB against a 1 GiB target.
    assert_eq!(d.offset_kib, 2 * MIB);
    assert_eq!(d.domain.unwrap().memory_actual_kib, GIB);
    // Reserving needs no ballooning and never touches its target.
    service.reserve_memory("xenopsd", GIB).unwrap();
    let store = fake.platform().store;
    assert_eq!(
        store
            .read(&format!("/local/domain/{g}/memory/target"))
            .unwrap(),
        Some(GIB.to_string())
    );
}

#[test]
fn on_the_adaptive_policy_a_trickling_guest_does_not_hold_up_a_reservation() {
    use squeeze::backend::fake::FakeHost;
    use squeeze::service::Service;
    use squeeze::Policy;
    // A 4 GiB host with 1 GiB in domain 0, a guest of 512 MiB..1464 MiB at its top and one of
    // 512 MiB..1.5 GiB at its top: only the 72 MiB slush is free. Guest 2 frees one 4 KiB page every 5 s, so squeezed's algorithm would wait on it
    // forever (each page counts as progress); guest 1 alone can give the 512 MiB asked for.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let cfg = squeeze::service::ServiceConfig {
        policy: Policy::Adaptive,
        ..classic_config(dir.path())
    };
    let service = Service::new(fake.platform(), cfg).unwrap();
    let fast = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 3 * GIB / 2 - SLUSH));
    let trickler = booted_guest(
        &fake,
        GuestSpec {
            behaviour: Behaviour::Trickle {
                chunk_kib: 4,
                period_s: 5.0,
            },
            ..GuestSpec::ballooning(512 * MIB, 3 * GIB / 2)
        },
    );
    service.login("xenopsd").unwrap();
    let t0 = fake.snapshot().unwrap().time;
    let id = service.reserve_memory("xenopsd", 512 * MIB).unwrap();
    let took = fake.snapshot().unwrap().time - t0;
    assert!(took < 30.0, "took {took} s");
    assert!(service
        .cooperation(trickler)
        .is_some_and(|c| c.score_s > 0.0));
    assert!(service
        .cooperation(fast)
        .is_some_and(|c| c.concern.is_none()));
    let snap = fake.snapshot().unwrap();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    service.delete_reservation("xenopsd", &id).unwrap();
}

/// A host whose free memory is the slush plus 1023 pages (4092 KiB), held by a fixed guest
/// that cannot give anything back.
fn host_with_1023_pages_to_spare() -> (
    tempfile::TempDir,
    squeeze::backend::fake::FakeHost,
    squeeze::service::Service,
) {
    let (dir, fake, service) = setup_classic(small_host());
    booted_guest(&fake, GuestSpec::fixed(3 * GIB - SLUSH - 4092));
    assert_eq!(fake.snapshot().unwrap().free_kib, SLUSH + 4092);
    (dir, fake, service)
}

#[test]
fn reservations_are_whole_pages_so_building_them_never_eats_the_slush() {
    let (_dir, fake, service) = host_with_1023_pages_to_spare();
    // Each 1023 KiB reservation is built as 256 pages (1024 KiB): it is recorded as 1024 KiB,
    // so three fit in the 4092 KiB to spare and the fourth (4096 KiB in all) does not.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = service.reserve_memory("xl", 1023).unwrap();
        let s = fake.snapshot().unwrap();
        assert_eq!(s.read(&format!("/squeezed/state/xl/{id}")), Some("1024"));
        ids.push(id);
    }
    // Reported as squeezed does, in the size asked for: 1023 KiB, with 1020 KiB free.
    assert!(matches!(
        service.reserve_memory("xl", 1023),
        Err(Error::CannotFreeThisMuchMemory {
            required_kib: 1023,
            free_kib: 1020
        })
    ));
    for id in &ids {
        let domid = fake.create_domain(GuestSpec::fixed(1023)).unwrap();
        service
            .transfer_reservation_to_domain("xl", id, domid)
            .unwrap();
        fake.build_domain(domid, 1023).unwrap();
    }
    let s = fake.snapshot().unwrap();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(
        s.free_kib,
        SLUSH + 1020,
        "one page short of a fourth 1023 KiB domain"
    );
}

#[test]
fn a_range_reservation_is_whole_pages_too() {
    let (_dir, fake, service) = host_with_1023_pages_to_spare();
    // 1..1023 KiB asked, with 4092 KiB to spare: the most, rounded up to a page.
    let (id, amount) = service.reserve_memory_range("xl", 1, 1023).unwrap();
    assert_eq!(amount, 1024);
    let s = fake.snapshot().unwrap();
    assert_eq!(s.read(&format!("/squeezed/state/xl/{id}")), Some("1024"));
    // 1..4093 KiB asked with 3068 KiB (767 pages) left to spare: those, not a part page more.
    let (_, amount) = service.reserve_memory_range("xl", 1, 4093).unwrap();
    assert_eq!(amount, 3068);
    assert!(fake.snapshot().unwrap().violations.is_empty());
}
