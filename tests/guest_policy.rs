//! Guests created the way xl creates them (a target, no dynamic range, no
//! `control/feature-balloon`) get their ballooning policy from their config through
//! `sqz_set_guest_policy`, and only then make room for a new VM.

use std::ffi::{CStr, CString};
use std::path::Path;

use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::ffi::*;
use squeeze::platform::Store;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Error};

const GIB: i64 = 1 << 20;

/// The default fake host (16 GiB, Xen 256 MiB, dom0 1 GiB: 15104 MiB free) with two running
/// 6 GiB guests as xl leaves them, so 2816 MiB free: their balloon drivers follow
/// `memory/target`, but the store has no range for them and no `control/feature-balloon`.
fn host_with_two_xl_guests() -> (tempfile::TempDir, FakeHost, [DomId; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::create(dir.path(), FakeConfig::default()).unwrap();
    let mut guests = [0; 2];
    for g in &mut guests {
        *g = fake.create_domain(GuestSpec::fixed(6 * GIB)).unwrap();
        fake.build_domain(*g, 6 * GIB).unwrap();
        fake.unpause(*g).unwrap();
    }
    fake.advance(2.0).unwrap();
    for g in guests {
        for key in [
            "memory/dynamic-min",
            "memory/dynamic-max",
            "control/feature-balloon",
        ] {
            Store::rm(&fake, &format!("/local/domain/{g}/{key}")).unwrap();
        }
    }
    (dir, fake, guests)
}

fn service(dir: &Path) -> Service {
    let config = ServiceConfig {
        lock_path: dir.join("host.lock"),
        boot_time_record_path: dir.join("boot_time_memory"),
        ..ServiceConfig::default()
    };
    Service::new(FakeHost::open(dir).unwrap().platform(), config).unwrap()
}

/// Calls `sqz_set_guest_policy` on a C service over the fake host in `dir`; returns the status
/// and the error message.
fn set_policy_through_c(
    dir: &Path,
    domid: DomId,
    vm: Option<&str>,
    host: Option<&str>,
    memory_kib: i64,
    maxmem_kib: i64,
) -> (sqz_status, String) {
    let dir_c = CString::new(dir.to_str().unwrap()).unwrap();
    let lock = CString::new(dir.join("host.lock").to_str().unwrap()).unwrap();
    let vm = vm.map(|v| CString::new(v).unwrap());
    let host = host.map(|v| CString::new(v).unwrap());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: pointers are to locals and live handles, freed before returning.
    unsafe {
        let mut f = std::ptr::null_mut();
        assert_eq!(sqz_fake_host_open(dir_c.as_ptr(), &mut f), SQZ_OK);
        let mut cfg = std::ptr::null_mut();
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        assert_eq!(sqz_service_config_set_lock_path(cfg, lock.as_ptr()), SQZ_OK);
        let mut svc = std::ptr::null_mut();
        assert_eq!(sqz_service_new_fake(f, cfg, &mut svc), SQZ_OK);
        sqz_service_config_free(cfg);
        let rc = sqz_set_guest_policy(svc, domid, ptr(&vm), ptr(&host), memory_kib, maxmem_kib);
        let message = CStr::from_ptr(sqz_last_error_message())
            .to_string_lossy()
            .into_owned();
        sqz_service_free(svc);
        sqz_fake_host_free(f);
        (rc, message)
    }
}

fn key(fake: &FakeHost, domid: DomId, k: &str) -> Option<String> {
    Store::read(fake, &format!("/local/domain/{domid}/{k}")).unwrap()
}

#[test]
fn xl_guests_without_a_policy_cannot_make_room_and_with_one_they_do() {
    let (dir, fake, guests) = host_with_two_xl_guests();
    // 4 GiB and the 72 MiB slush are 1352 MiB more than the 2816 MiB free, and nobody may
    // be ballooned: refused, as stock xl's create fails.
    let svc = service(dir.path());
    let refused = svc.reserve_memory("xl-1", 4 * GIB).unwrap_err();
    assert!(
        matches!(refused, Error::CannotFreeThisMuchMemory { .. }),
        "{refused}"
    );

    // The host default in xl.conf: guests may go down to half their memory.
    let xl_conf = "autoballoon = \"off\"\nsqueeze = 1\nsqueeze_default_dynamic_min = \"50%\"\n";
    for g in guests {
        let (rc, msg) = set_policy_through_c(dir.path(), g, None, Some(xl_conf), 6 * GIB, 6 * GIB);
        assert_eq!(rc, SQZ_OK, "{msg}");
        assert_eq!(
            key(&fake, g, "memory/dynamic-min").as_deref(),
            Some("3145728")
        );
        assert_eq!(
            key(&fake, g, "memory/dynamic-max").as_deref(),
            Some("6291456")
        );
        assert_eq!(
            key(&fake, g, "control/feature-balloon").as_deref(),
            Some("1")
        );
    }

    let id = svc.reserve_memory("xl-2", 4 * GIB).unwrap();
    assert!(!id.is_empty());
    for g in guests {
        let target: i64 = key(&fake, g, "memory/target").unwrap().parse().unwrap();
        // Each gives about half the 1352 MiB: from 6144 MiB to about 5468 MiB, never below
        // its 3 GiB minimum.
        assert!(
            (3 * GIB..6 * GIB).contains(&target),
            "guest {g}: {target} KiB"
        );
    }
}

#[test]
fn a_vm_s_own_keys_win_and_bad_ones_are_refused_without_writing_anything() {
    let (dir, fake, [g, _]) = host_with_two_xl_guests();
    let vm = "name = \"web\"\nmemory = 6144\nsqueeze_dynamic_min = 2048\nsqueeze_weight = 2\n";
    let host = "squeeze_default_dynamic_min = \"90%\"";
    let (rc, msg) = set_policy_through_c(dir.path(), g, Some(vm), Some(host), 6 * GIB, 6 * GIB);
    assert_eq!(rc, SQZ_OK, "{msg}");
    assert_eq!(
        key(&fake, g, "memory/dynamic-min").as_deref(),
        Some("2097152")
    );
    assert_eq!(key(&fake, g, "memory/weight").as_deref(), Some("2"));

    let (rc, msg) = set_policy_through_c(
        dir.path(),
        g,
        Some("squeeze_dynamic_min = \"lots\""),
        None,
        6 * GIB,
        6 * GIB,
    );
    assert_eq!(rc, SQZ_ERR_INVALID_ARGUMENT);
    assert!(msg.contains("squeeze_dynamic_min"), "{msg}");
    // Above maxmem: refused, and the range written before is still there.
    let (rc, msg) = set_policy_through_c(
        dir.path(),
        g,
        Some("squeeze_dynamic_max = 8192"),
        None,
        6 * GIB,
        6 * GIB,
    );
    assert_eq!(rc, SQZ_ERR_INVALID_ARGUMENT);
    assert!(msg.contains("maxmem"), "{msg}");
    assert_eq!(
        key(&fake, g, "memory/dynamic-min").as_deref(),
        Some("2097152")
    );
    // SAFETY: a NULL service is refused before anything is read.
    let rc = unsafe {
        sqz_set_guest_policy(
            std::ptr::null_mut(),
            g,
            std::ptr::null(),
            std::ptr::null(),
            1,
            1,
        )
    };
    assert_eq!(rc, SQZ_ERR_INVALID_ARGUMENT);
}
