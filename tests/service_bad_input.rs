//! Bad input through every entry point of the service: each gets a clear error and leaves the
//! host's state exactly as it was.

mod common;

use std::sync::Arc;

use common::*;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::platform::{DomainInfo, Hypervisor, PhysInfo, Platform};
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Error, Kib};

/// Runs `f`, then checks that the store and the hypervisor are as before.
fn unchanged<T>(fake: &FakeHost, f: impl FnOnce() -> T) -> T {
    let before = fake.snapshot().unwrap();
    let out = f();
    let after = fake.snapshot().unwrap();
    assert_eq!(before.store, after.store, "the store changed");
    assert_eq!(before.domains, after.domains, "the domains changed");
    out
}

fn is_invalid_arg<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}

fn is_invalid_mem<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::InvalidMemoryValue(_))), "{r:?}");
}

fn is_unknown<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::UnknownReservation(_))), "{r:?}");
}

const BAD_SESSIONS: [&str; 6] = [
    "",
    "a/b",
    "..",
    "with space",
    "tab\t",
    "../../local/domain/1",
];

#[test]
fn bad_session_names_are_refused_everywhere() {
    let (_d, fake, service) = setup(small_host());
    let id = service.reserve_memory("good", MIB).unwrap();
    let long = "x".repeat(129);
    for s in BAD_SESSIONS.iter().copied().chain([long.as_str()]) {
        unchanged(&fake, || {
            is_invalid_arg(service.login(s));
            is_invalid_arg(service.reserve_memory(s, MIB));
            is_invalid_arg(service.reserve_memory_range(s, MIB, 2 * MIB));
            is_invalid_arg(service.transfer_reservation_to_domain(s, &id, 0));
            is_invalid_arg(service.delete_reservation(s, &id));
            is_invalid_arg(service.query_reservation_of_domain(s, 0));
        });
    }
}

/// Characters a real xenstored refuses in a path element (it accepts `A-Z a-z 0-9 - _ @`).
const REFUSED_BY_XENSTORED: [&str; 5] = ["a+b", "a.b", "host:1", "x~", "caf\u{e9}"];

#[test]
fn a_session_name_xenstored_would_refuse_is_refused_before_any_guest_moves() {
    let (_d, fake, service) = setup(small_host());
    // 1 GiB free; a 1.5 GiB reservation needs the guest to give some back.
    let g = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 2 * GIB));
    // Calibrated first, so the only store change left to make is the reservation's.
    service.balance_memory().unwrap();
    for s in REFUSED_BY_XENSTORED {
        unchanged(&fake, || {
            is_invalid_arg(service.reserve_memory(s, 3 * GIB / 2));
            is_invalid_arg(service.reserve_memory_range(s, GIB, 3 * GIB / 2));
            is_invalid_arg(service.login(s));
        });
        fake.advance(10.0).unwrap();
        assert_eq!(fake.domain(g).unwrap().unwrap().tot_kib(), 2 * GIB, "{s}");
    }
    // Every character xenstored accepts in a path element works, end to end.
    let name = "AZaz09-_@";
    let id = service.reserve_memory(name, 3 * GIB / 2).unwrap();
    let s = fake.snapshot().unwrap();
    assert!(s.read(&format!("/squeezed/state/{name}/{id}")).is_some());
}

#[test]
fn negative_absurd_and_inverted_sizes_are_invalid_memory_values() {
    let (_d, fake, service) = setup(small_host());
    unchanged(&fake, || {
        for kib in [-1, -MIB, i64::MIN, (1 << 50) + 1, i64::MAX] {
            is_invalid_mem(service.reserve_memory("s", kib));
            is_invalid_mem(service.reserve_memory_range("s", kib, MIB));
            is_invalid_mem(service.reserve_memory_range("s", 0, kib));
        }
        // min > max.
        is_invalid_mem(service.reserve_memory_range("s", 2 * MIB, MIB));
    });
}

#[test]
fn unknown_and_malformed_reservation_ids_are_unknown_reservations() {
    let (_d, fake, service) = setup(small_host());
    let domid = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    let id = service.reserve_memory("mine", MIB).unwrap();
    let stranger = "00000000-0000-4000-8000-000000000000";
    unchanged(&fake, || {
        for bad in ["", "not-a-uuid", "../../local/domain/1/memory", stranger] {
            is_unknown(service.transfer_reservation_to_domain("mine", bad, domid));
            is_unknown(service.delete_reservation("mine", bad));
        }
        // Another session's id is unknown in this one.
        is_unknown(service.transfer_reservation_to_domain("theirs", &id, domid));
        is_unknown(service.delete_reservation("theirs", &id));
    });
    service.delete_reservation("mine", &id).unwrap();
    unchanged(&fake, || {
        is_unknown(service.delete_reservation("mine", &id))
    });
}

#[test]
fn transfers_to_missing_or_other_domains_are_refused() {
    let (_d, fake, service) = setup(small_host());
    let id = service.reserve_memory("s", MIB).unwrap();
    let a = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    let b = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    unchanged(&fake, || {
        is_invalid_arg(service.transfer_reservation_to_domain("s", &id, -1));
        is_invalid_arg(service.transfer_reservation_to_domain("s", &id, 999));
        is_invalid_arg(service.transfer_reservation_to_domain("s", &id, DomId::MIN));
    });
    fake.shutdown_domain(b).unwrap();
    unchanged(&fake, || {
        is_invalid_arg(service.transfer_reservation_to_domain("s", &id, b))
    });
    service.transfer_reservation_to_domain("s", &id, a).unwrap();
    // Again to the same domain: harmless. To another: refused.
    service.transfer_reservation_to_domain("s", &id, a).unwrap();
    let c = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    unchanged(&fake, || {
        is_invalid_arg(service.transfer_reservation_to_domain("s", &id, c))
    });
}

/// The error message of a refused call.
fn refusal<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::InvalidArgument(why)) => why,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn a_transfer_that_would_promise_memory_twice_is_refused_and_says_why() {
    let (_d, fake, service) = setup(small_host());
    let id = service.reserve_memory("s", MIB).unwrap();
    let booted = booted_guest(&fake, GuestSpec::fixed(MIB));
    let holder = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    let first = service.reserve_memory("s", MIB).unwrap();
    service
        .transfer_reservation_to_domain("s", &first, holder)
        .unwrap();
    unchanged(&fake, || {
        // Domain 0 is not built from a reservation: the memory would be promised again.
        let why = refusal(service.transfer_reservation_to_domain("s", &id, 0));
        assert!(why.contains("domain 0"), "{why}");
        // A booted guest already holds its memory: it is no longer counted by a reservation.
        let why = refusal(service.transfer_reservation_to_domain("s", &id, booted));
        assert!(why.contains("booted"), "{why}");
        // A domain holds one reservation: a second would overwrite the first.
        let why = refusal(service.transfer_reservation_to_domain("s", &id, holder));
        assert!(why.contains(&first), "{why}");
    });
    // The reservation refused everywhere is still the session's, whole.
    let fresh = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    service
        .transfer_reservation_to_domain("s", &id, fresh)
        .unwrap();
}

#[test]
fn querying_a_domain_without_reservation_says_so() {
    let (_d, fake, service) = setup(small_host());
    let domid = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    unchanged(&fake, || {
        assert_eq!(
            service.query_reservation_of_domain("s", domid),
            Err(Error::NoReservation(domid))
        );
        assert_eq!(
            service.query_reservation_of_domain("s", 4242),
            Err(Error::NoReservation(4242))
        );
        is_invalid_arg(service.query_reservation_of_domain("s", -3));
    });
}

#[test]
fn bad_settings_are_refused_when_the_service_is_opened() {
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path());
    let mut bad = Vec::new();
    let mut c = good.clone();
    c.host.slush_kib = -1;
    bad.push(c);
    let mut c = good.clone();
    c.host.free_memory_tolerance_kib = i64::MAX;
    bad.push(c);
    let mut c = good.clone();
    c.host.uncooperative_after_s = f64::NAN;
    bad.push(c);
    let mut c = good.clone();
    c.balance_interval_s = 0.0;
    bad.push(c);
    let mut c = good.clone();
    c.balance_interval_s = f64::INFINITY;
    bad.push(c);
    let mut c = good.clone();
    c.boot_time_samples = 0;
    bad.push(c);
    for c in bad {
        assert!(Service::new(fake.platform(), c.clone()).is_err(), "{c:?}");
    }
    for root in ["", "/", "relative", "/a/", "/a//b", "/a b"] {
        assert!(
            squeeze::reservations::Layout::new(root).is_err(),
            "{root:?}"
        );
    }
    assert!(Service::new(fake.platform(), good).is_ok());
}

#[test]
fn garbage_in_the_store_is_reported_not_trusted() {
    let (_d, fake, service) = setup(small_host());
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, GIB));
    let store = fake.platform().store;
    let good = service.reserve_memory("s", 100 * MIB).unwrap();
    // Hand-written nonsense in the ledger and in a domain's keys.
    store.write("/squeezed/state/s/bogus", "lots").unwrap();
    store.write("/squeezed/state/s/negative", "-5").unwrap();
    store
        .write(&format!("/squeezed/state/s/{good}/in-transfer"), "x")
        .unwrap();
    store
        .write(&format!("/local/domain/{guest}/memory/dynamic-min"), "-5")
        .unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(v.invalid_entries.len(), 3, "{:?}", v.invalid_entries);
    assert_eq!(v.reserved_kib, 0, "nothing unreadable is counted");
    let d = v.domains.iter().find(|d| d.domid == guest).unwrap();
    assert!(d.domain.is_none() && d.skipped.is_some(), "{d:?}");
    // The service keeps working around it, and never deletes what it cannot read.
    let id = service.reserve_memory("s", MIB).unwrap();
    service.delete_reservation("s", &id).unwrap();
    service.login("s").unwrap();
    assert_eq!(
        store.read("/squeezed/state/s/bogus").unwrap().as_deref(),
        Some("lots")
    );
    store
        .write(&format!("/local/domain/{guest}/memory/target"), "zzz")
        .unwrap();
    store
        .write(&format!("/local/domain/{guest}/memory/dynamic-min"), "1")
        .unwrap();
    assert!(service.balance_memory().is_ok());
    let doc: serde_json::Value = serde_json::from_str(&service.get_diagnostics().unwrap()).unwrap();
    assert_eq!(doc["invalid_ledger_entries"].as_array().unwrap().len(), 3);
}

#[test]
fn a_corrupt_fake_state_file_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake");
    FakeHost::create(&path, small_host()).unwrap();
    std::fs::write(path.join("state.json"), b"{ not json").unwrap();
    let fake = FakeHost::open(&path).unwrap();
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    assert!(matches!(
        service.reserve_memory("s", MIB),
        Err(Error::Backend(_))
    ));
    assert!(FakeHost::open(&dir.path().join("nothing")).is_err());
}

#[test]
fn a_panicking_hook_leaves_the_service_usable_and_the_books_exact() {
    let (_d, fake, service) = setup(small_host());
    service.set_fault_hook(Some(Arc::new(|p: &str| {
        if p == "reserve:recorded" {
            panic!("hook failure at {p}");
        }
    })));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        service.reserve_memory("s", 100 * MIB)
    }));
    assert!(r.is_err());
    service.set_fault_hook(None);
    // The reservation was recorded before the panic: it is kept and counted, once.
    let v = service.host_view().unwrap();
    assert_eq!(v.reserved_kib, 100 * MIB);
    assert_eq!(v.free_kib, books(&fake.snapshot().unwrap()).free());
    service.login("s").unwrap();
    assert_eq!(service.host_view().unwrap().reserved_kib, 0);
}

/// A hypervisor whose calls fail on demand.
struct Flaky {
    inner: FakeHost,
    fail_physinfo: bool,
    fail_setmaxmem: bool,
}

impl Hypervisor for Flaky {
    fn domains(&self) -> squeeze::Result<Vec<DomainInfo>> {
        self.inner.domains()
    }
    fn domain(&self, domid: DomId) -> squeeze::Result<Option<DomainInfo>> {
        Hypervisor::domain(&self.inner, domid)
    }
    fn physinfo(&self) -> squeeze::Result<PhysInfo> {
        if self.fail_physinfo {
            return Err(Error::Backend("physinfo: permission denied".into()));
        }
        Hypervisor::physinfo(&self.inner)
    }
    fn shadow_allocation_mib(&self, domid: DomId) -> squeeze::Result<u64> {
        self.inner.shadow_allocation_mib(domid)
    }
    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> squeeze::Result<()> {
        if self.fail_setmaxmem {
            return Err(Error::Backend("setmaxmem: permission denied".into()));
        }
        self.inner.set_maxmem_kib(domid, kib)
    }
    fn claim_pages(&self, domid: DomId, pages: u64) -> squeeze::Result<()> {
        self.inner.claim_pages(domid, pages)
    }
}

#[test]
fn platform_failures_are_reported_and_leave_consistent_books() {
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let with = |fail_physinfo, fail_setmaxmem| {
        let p = Platform {
            hypervisor: Arc::new(Flaky {
                inner: fake.clone(),
                fail_physinfo,
                fail_setmaxmem,
            }),
            ..fake.platform()
        };
        Service::new(p, config(dir.path())).unwrap()
    };
    unchanged(&fake, || {
        assert!(matches!(
            with(true, false).reserve_memory("s", MIB),
            Err(Error::Backend(_))
        ));
    });
    let id = with(false, false).reserve_memory("s", MIB).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(MIB)).unwrap();
    // maxmem cannot be set: the error is reported; the transfer itself is whole, and a retry
    // on a working platform completes it.
    assert!(matches!(
        with(false, true).transfer_reservation_to_domain("s", &id, domid),
        Err(Error::Backend(_))
    ));
    assert_transfers_whole(&fake.snapshot().unwrap());
    with(false, false)
        .transfer_reservation_to_domain("s", &id, domid)
        .unwrap();
    assert_eq!(fake.domain(domid).unwrap().unwrap().max_kib(), MIB);
    let _ = ServiceConfig::default();
}

#[test]
fn a_garbled_boot_time_record_is_an_error_and_is_not_overwritten() {
    let (dir, fake, service) = setup(small_host());
    let record = dir.path().join("boot_time_memory");
    std::fs::write(&record, "lots of memory").unwrap();
    unchanged(&fake, || {
        assert!(matches!(
            service.get_host_initial_free_memory(),
            Err(Error::Backend(_))
        ))
    });
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "lots of memory");
}
