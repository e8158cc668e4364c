//! One handle discipline for every C object: each is tagged with its kind, so passing one kind
//! where another is expected (or freeing it through the wrong `*_free`) is refused and harms
//! nothing, instead of reading or writing past the object.

use std::ffi::{c_void, CStr};

use squeeze::ffi::*;

const GIB: i64 = 1 << 20;

fn last_message() -> String {
    // SAFETY: the library returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(sqz_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// One live object of every kind, as untyped pointers.
struct Objects {
    all: Vec<(Kind, *mut c_void)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Options,
    ServiceConfig,
    Cancel,
    Squeezer,
    Sim,
    FakeHost,
    Service,
}

fn objects(lock: &CStr) -> Objects {
    // SAFETY: out-pointers are locals; inputs are live.
    unsafe {
        let mut options = std::ptr::null_mut();
        assert_eq!(sqz_options_new(&mut options), SQZ_OK);
        let mut config = std::ptr::null_mut();
        assert_eq!(sqz_service_config_new(&mut config), SQZ_OK);
        assert_eq!(
            sqz_service_config_set_lock_path(config, lock.as_ptr()),
            SQZ_OK
        );
        let mut cancel = std::ptr::null_mut();
        assert_eq!(sqz_cancel_new(&mut cancel), SQZ_OK);
        let mut squeezer = std::ptr::null_mut();
        assert_eq!(sqz_squeezer_new(options, &mut squeezer), SQZ_OK);
        let sc = sqz_sim_config {
            struct_size: std::mem::size_of::<sqz_sim_config>() as u32,
            free_mem_kib: GIB,
            target_host_free_mem_kib: 0,
            free_memory_tolerance_kib: 0,
            fixed_tick_s: 0.0,
            time_limit_s: 0.0,
        };
        let mut sim = std::ptr::null_mut();
        assert_eq!(sqz_sim_new(&sc, &mut sim), SQZ_OK, "{}", last_message());
        let hc = sqz_fake_config {
            struct_size: std::mem::size_of::<sqz_fake_config>() as u32,
            total_kib: 4 * GIB,
            xen_kib: 0,
            dom0_kib: GIB,
            boot_delay_s: 1.0,
        };
        let mut host = std::ptr::null_mut();
        assert_eq!(sqz_fake_host_new(&hc, &mut host), SQZ_OK);
        let mut service = std::ptr::null_mut();
        assert_eq!(sqz_service_new_fake(host, config, &mut service), SQZ_OK);
        Objects {
            all: vec![
                (Kind::Options, options.cast()),
                (Kind::ServiceConfig, config.cast()),
                (Kind::Cancel, cancel.cast()),
                (Kind::Squeezer, squeezer.cast()),
                (Kind::Sim, sim.cast()),
                (Kind::FakeHost, host.cast()),
                (Kind::Service, service.cast()),
            ],
        }
    }
}

/// A call that takes `kind`, made with `p` whatever it really is.
///
/// # Safety
/// `p` is a live object of some kind.
unsafe fn use_as(kind: Kind, p: *mut c_void) -> sqz_status {
    let mut kib = 0i64;
    let mut coop = sqz_cooperation::default();
    let mut squeezer = std::ptr::null_mut();
    // SAFETY: forwarded; every other pointer is a local.
    unsafe {
        match kind {
            Kind::Options => {
                let rc = sqz_options_set_stuck_after(p.cast(), 30.0);
                if rc != SQZ_ERR_INVALID_ARGUMENT {
                    return rc;
                }
                // Also read as options, where the defect was seen: a squeezer taken for
                // options by sqz_squeezer_new.
                let rc = sqz_squeezer_new(p.cast(), &mut squeezer);
                sqz_squeezer_free(squeezer);
                rc
            }
            Kind::ServiceConfig => sqz_service_config_set_slush(p.cast(), 72 << 10),
            Kind::Cancel => sqz_cancel_request(p.cast()),
            Kind::Squeezer => sqz_squeezer_cooperation(p.cast(), 0, &mut coop),
            Kind::Sim => sqz_sim_free_mem(p.cast(), &mut kib),
            Kind::FakeHost => sqz_fake_host_free_mem(p.cast(), &mut kib),
            Kind::Service => sqz_get_host_reserved_memory(p.cast(), &mut kib),
        }
    }
}

/// Frees `p` through the function for `kind`.
///
/// # Safety
/// `p` is a live object of some kind.
unsafe fn free_as(kind: Kind, p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe {
        match kind {
            Kind::Options => sqz_options_free(p.cast()),
            Kind::ServiceConfig => sqz_service_config_free(p.cast()),
            Kind::Cancel => sqz_cancel_free(p.cast()),
            Kind::Squeezer => sqz_squeezer_free(p.cast()),
            Kind::Sim => sqz_sim_free(p.cast()),
            Kind::FakeHost => sqz_fake_host_free(p.cast()),
            Kind::Service => sqz_service_free(p.cast()),
        }
    }
}

fn refused_as_another_kind(rc: sqz_status) -> bool {
    rc == SQZ_ERR_INVALID_ARGUMENT && last_message().contains("not a live")
}

#[test]
fn every_object_passed_as_another_kind_is_refused_and_still_works_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let lock = std::ffi::CString::new(dir.path().join("host.lock").to_str().unwrap()).unwrap();
    let objs = objects(&lock);
    let mut accepted = Vec::new();
    for &(real, p) in &objs.all {
        for &(expected, _) in &objs.all {
            if expected == real {
                continue;
            }
            // SAFETY: p is live.
            let rc = unsafe { use_as(expected, p) };
            if !refused_as_another_kind(rc) {
                accepted.push(format!("{real:?} as {expected:?}: {rc} {}", last_message()));
            }
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    // Every object is intact: its own calls are not taken for a wrong kind.
    for &(kind, p) in &objs.all {
        // SAFETY: p is live.
        let rc = unsafe { use_as(kind, p) };
        assert!(!refused_as_another_kind(rc), "{kind:?}: {}", last_message());
    }
    // SAFETY: each object freed once, through its own function, service before its host.
    unsafe {
        for &(kind, p) in objs.all.iter().rev() {
            free_as(kind, p);
        }
    }
}

#[test]
fn freeing_an_object_through_another_kind_s_free_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let lock = std::ffi::CString::new(dir.path().join("host.lock").to_str().unwrap()).unwrap();
    let objs = objects(&lock);
    for &(real, p) in &objs.all {
        for &(wrong, _) in &objs.all {
            if wrong != real {
                // SAFETY: p is live; a wrong-kind free must not release it.
                unsafe { free_as(wrong, p) };
            }
        }
        // SAFETY: p is still live.
        let rc = unsafe { use_as(real, p) };
        assert!(!refused_as_another_kind(rc), "{real:?}: {}", last_message());
    }
    // SAFETY: each object freed once, through its own function, service before its host.
    unsafe {
        for &(kind, p) in objs.all.iter().rev() {
            free_as(kind, p);
        }
    }
}
