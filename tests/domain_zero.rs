//! Domain 0's policy in the service: fixed (left out of the balancing, as squeezed by default)
//! or ballooned between two sizes (its range written when the service opens, then balanced
//! like a guest), and the answer xapi reads with `get_domain_zero_policy`.

mod common;

use common::*;
use squeeze::domain_zero::{DomainZeroAnswer, DomainZeroPolicy};
use squeeze::service::{Service, ServiceConfig};
use squeeze::Error;

fn open(
    fake: &squeeze::backend::fake::FakeHost,
    dir: &std::path::Path,
    p: DomainZeroPolicy,
) -> squeeze::Result<Service> {
    Service::new(
        fake.platform(),
        ServiceConfig {
            domain_zero: p,
            ..classic_config(dir)
        },
    )
}

fn balloon(min: i64, max: Option<i64>) -> DomainZeroPolicy {
    DomainZeroPolicy::Balloon {
        dynamic_min_kib: min,
        dynamic_max_kib: max,
    }
}

#[test]
fn a_fixed_domain_zero_is_never_asked_to_shrink() {
    // The 4 GiB host: 3 GiB free, domain 0 holds 1 GiB.
    let (_dir, fake, service) = setup_classic(small_host());
    assert_eq!(
        service.get_domain_zero_policy().unwrap(),
        DomainZeroAnswer::FixedSize(GIB)
    );
    // 3 GiB + the 72 MiB slush is more than is free, and domain 0 does not count.
    match service.reserve_memory("xenopsd", 3 * GIB) {
        Err(Error::CannotFreeThisMuchMemory {
            required_kib,
            free_kib,
        }) => assert_eq!((required_kib, free_kib), (3 * GIB, 3 * GIB - SLUSH)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fake.platform()
            .store
            .read("/local/domain/0/memory/target")
            .unwrap(),
        None
    );
}

#[test]
fn a_ballooned_domain_zero_is_asked_to_give_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    // Between 512 MiB and what it holds at the start (1 GiB).
    let service = open(&fake, dir.path(), balloon(512 * MIB, None)).unwrap();
    assert_eq!(
        service.get_domain_zero_policy().unwrap(),
        DomainZeroAnswer::AutoBalloon(512 * MIB, GIB)
    );
    let store = fake.platform().store;
    let read = |k: &str| store.read(&format!("/local/domain/0/{k}")).unwrap();
    assert_eq!(read("memory/dynamic-min").as_deref(), Some("524288"));
    assert_eq!(read("memory/dynamic-max").as_deref(), Some("1048576"));
    assert_eq!(read("control/feature-balloon").as_deref(), Some("1"));
    // The same 3 GiB now needs at least 72 MiB from domain 0: its target goes down. The fake
    // domain 0's balloon does not move, and squeezed reports a domain 0 that did not reach its
    // target as memory that cannot be freed, not as a domain refusing to cooperate.
    assert!(matches!(
        service.reserve_memory("xenopsd", 3 * GIB),
        Err(Error::CannotFreeThisMuchMemory { .. })
    ));
    let target: i64 = read("memory/target").unwrap().parse().unwrap();
    assert!(
        (512 * MIB..=GIB - SLUSH).contains(&target),
        "domain 0's target {target} KiB"
    );
}

#[test]
fn an_automatic_maximum_is_kept_for_later_services() {
    let dir = tempfile::tempdir().unwrap();
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    drop(open(&fake, dir.path(), balloon(512 * MIB, None)).unwrap());
    // A later service (domain 0 may have ballooned meanwhile) reads the maximum in the store.
    fake.platform()
        .store
        .write("/local/domain/0/memory/dynamic-max", "786432")
        .unwrap();
    let later = open(&fake, dir.path(), balloon(512 * MIB, None)).unwrap();
    assert_eq!(
        later.get_domain_zero_policy().unwrap(),
        DomainZeroAnswer::AutoBalloon(512 * MIB, 768 * MIB)
    );
    // An explicit maximum is the one answered and written.
    let explicit = open(&fake, dir.path(), balloon(512 * MIB, Some(2 * GIB))).unwrap();
    assert_eq!(
        explicit.get_domain_zero_policy().unwrap(),
        DomainZeroAnswer::AutoBalloon(512 * MIB, 2 * GIB)
    );
}

#[test]
fn a_domain_zero_range_upside_down_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    for p in [
        balloon(2 * GIB, Some(GIB)),
        // Above what domain 0 holds (1 GiB), with the maximum taken from it.
        balloon(2 * GIB, None),
        balloon(-1, None),
    ] {
        assert!(
            matches!(
                open(&fake, dir.path(), p),
                Err(Error::InvalidMemoryValue(_))
            ),
            "{p:?}"
        );
    }
}

#[test]
fn the_c_calls_check_their_arguments_and_answer_in_kib() {
    use squeeze::ffi::*;
    use std::ptr::null_mut;
    let dir = tempfile::tempdir().unwrap();
    let path =
        |name: &str| std::ffi::CString::new(dir.path().join(name).to_str().unwrap()).unwrap();
    // SAFETY: every pointer passed is NULL (to test the checks) or live for the call.
    unsafe {
        assert_eq!(
            sqz_service_config_set_domain_zero(null_mut(), SQZ_DOMAIN_ZERO_FIXED, 0, 0),
            SQZ_ERR_INVALID_ARGUMENT
        );
        let mut cfg = null_mut();
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        assert_eq!(
            sqz_service_config_set_domain_zero(cfg, 7, 0, 0),
            SQZ_ERR_UNSUPPORTED
        );
        assert_eq!(
            sqz_service_config_set_domain_zero(cfg, SQZ_DOMAIN_ZERO_BALLOON, 2 * GIB, GIB),
            SQZ_ERR_INVALID_MEMORY_VALUE
        );
        assert_eq!(
            sqz_service_config_set_domain_zero(cfg, SQZ_DOMAIN_ZERO_BALLOON, -1, 0),
            SQZ_ERR_INVALID_MEMORY_VALUE
        );
        // 512 MiB up to what domain 0 holds (1 GiB).
        assert_eq!(
            sqz_service_config_set_domain_zero(cfg, SQZ_DOMAIN_ZERO_BALLOON, 512 * MIB, 0),
            SQZ_OK
        );
        let (lock, record) = (path("host.lock"), path("boot"));
        assert_eq!(sqz_service_config_set_lock_path(cfg, lock.as_ptr()), SQZ_OK);
        assert_eq!(
            sqz_service_config_set_boot_time_record_path(cfg, record.as_ptr()),
            SQZ_OK
        );
        let fc = sqz_fake_config {
            struct_size: std::mem::size_of::<sqz_fake_config>() as u32,
            total_kib: 4 * GIB,
            xen_kib: 0,
            dom0_kib: GIB,
            boot_delay_s: 0.0,
        };
        let mut fake = null_mut();
        assert_eq!(sqz_fake_host_new(&fc, &mut fake), SQZ_OK);
        let mut s = null_mut();
        assert_eq!(sqz_service_new_fake(fake, cfg, &mut s), SQZ_OK);
        let (mut p, mut lo, mut hi) = (-1, 0, 0);
        assert_eq!(
            sqz_get_domain_zero_policy(s, null_mut(), &mut lo, &mut hi),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            sqz_get_domain_zero_policy(s, &mut p, &mut lo, &mut hi),
            SQZ_OK
        );
        assert_eq!((p, lo, hi), (SQZ_DOMAIN_ZERO_BALLOON, 512 * MIB, GIB));
        sqz_service_free(s);
        sqz_fake_host_free(fake);
        sqz_service_config_free(cfg);
    }
}
