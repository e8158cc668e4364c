//! One service and one fake host shared by many threads of a C program, as the header
//! documents they may be: concurrent calls wait for each other, and none is refused.

use std::ffi::{CStr, CString};

use squeeze::ffi::*;

const GIB: i64 = 1 << 20;

/// Pointers a test hands to its threads; the handles are documented as thread-safe.
#[derive(Clone, Copy)]
struct Shared {
    host: *mut sqz_fake_host,
    svc: *mut sqz_service,
}
// SAFETY: both handles are documented as safe to use from several threads at once.
unsafe impl Send for Shared {}

/// An 8 GiB fake host (6.75 GiB free) and a service over it using a lock file in `dir`.
fn host_and_service(dir: &std::path::Path) -> Shared {
    let lock = CString::new(dir.join("host.lock").to_str().unwrap()).unwrap();
    // SAFETY: pointers are to locals or live handles.
    unsafe {
        let hc = sqz_fake_config {
            struct_size: std::mem::size_of::<sqz_fake_config>() as u32,
            total_kib: 8 * GIB,
            xen_kib: GIB / 4,
            dom0_kib: GIB,
            boot_delay_s: 1.0,
        };
        let mut host = std::ptr::null_mut();
        assert_eq!(sqz_fake_host_new(&hc, &mut host), SQZ_OK);
        let mut cfg = std::ptr::null_mut();
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        assert_eq!(sqz_service_config_set_lock_path(cfg, lock.as_ptr()), SQZ_OK);
        let mut svc = std::ptr::null_mut();
        assert_eq!(sqz_service_new_fake(host, cfg, &mut svc), SQZ_OK);
        sqz_service_config_free(cfg);
        Shared { host, svc }
    }
}

fn last_message() -> String {
    // SAFETY: the library returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(sqz_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn eight_threads_sharing_one_service_and_one_fake_host_are_never_refused() {
    const THREADS: usize = 8;
    const CALLS: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let shared = host_and_service(dir.path());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let shared = shared;
                let session = CString::new(format!("thread-{t}")).unwrap();
                let mut refusals = Vec::new();
                for i in 0..CALLS {
                    let mut v = 0i64;
                    // SAFETY: live handles and locals.
                    let rc = unsafe {
                        match i % 4 {
                            0 => sqz_get_host_reserved_memory(shared.svc, &mut v),
                            1 => sqz_fake_host_free_mem(shared.host, &mut v),
                            2 => sqz_fake_host_advance(shared.host, 0.0),
                            // Takes the host lock: the real work of a call.
                            _ if i % 2000 == 3 => sqz_login(shared.svc, session.as_ptr()),
                            _ => sqz_get_host_reserved_memory(shared.svc, &mut v),
                        }
                    };
                    if rc != SQZ_OK {
                        refusals.push(last_message());
                    }
                }
                refusals
            })
        })
        .collect();
    let refusals: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        refusals.is_empty(),
        "{} of {} calls refused, first: {:?}",
        refusals.len(),
        THREADS * CALLS,
        refusals.first()
    );
    // SAFETY: no thread uses them any more.
    unsafe {
        sqz_service_free(shared.svc);
        sqz_fake_host_free(shared.host);
    }
}

#[test]
fn sqz_cancel_request_ends_a_reservation_waiting_for_a_lock_another_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let shared = host_and_service(dir.path());
    let session = CString::new("xenopsd").unwrap();
    // SAFETY: live handle and C string.
    assert_eq!(unsafe { sqz_login(shared.svc, session.as_ptr()) }, SQZ_OK);
    // Another process's hold on the lock: its own open file, locked.
    let held = std::fs::File::open(dir.path().join("host.lock")).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let mut cancel = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { sqz_cancel_new(&mut cancel) }, SQZ_OK);
    let cancel_addr = cancel as usize;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let shared = shared;
        let options = sqz_reserve_options {
            struct_size: std::mem::size_of::<sqz_reserve_options>() as u32,
            progress: None,
            ctx: std::ptr::null_mut(),
            cancel: cancel_addr as *mut sqz_cancel,
            deadline_s: 0.0,
        };
        let session = CString::new("xenopsd").unwrap();
        let mut id = [0 as std::ffi::c_char; SQZ_RESERVATION_ID_SIZE];
        // SAFETY: live handles, locals.
        let rc = unsafe {
            sqz_reserve_memory_with(
                shared.svc,
                session.as_ptr(),
                256 << 10,
                &options,
                id.as_mut_ptr(),
            )
        };
        let _ = tx.send(rc);
    });
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(200))
        .is_err());
    // SAFETY: live cancel handle.
    assert_eq!(unsafe { sqz_cancel_request(cancel) }, SQZ_OK);
    let rc = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the cancelled reservation still waits for the lock");
    assert_eq!(rc, SQZ_ERR_CANCELLED);
    drop(held);
    // SAFETY: nothing uses them any more.
    unsafe {
        sqz_cancel_free(cancel);
        sqz_service_free(shared.svc);
        sqz_fake_host_free(shared.host);
    }
}

#[test]
fn a_lock_timeout_must_be_a_positive_interval() {
    // SAFETY: a live config.
    unsafe {
        let mut cfg = std::ptr::null_mut();
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        for bad in [0.0, -2.0, f64::NAN, f64::INFINITY, 86_401.0] {
            assert_eq!(
                sqz_service_config_set_lock_timeout(cfg, bad),
                SQZ_ERR_INVALID_ARGUMENT,
                "{bad}"
            );
        }
        assert_eq!(sqz_service_config_set_lock_timeout(cfg, 30.0), SQZ_OK);
        assert_eq!(
            sqz_service_config_set_lock_timeout(std::ptr::null_mut(), 30.0),
            SQZ_ERR_INVALID_ARGUMENT
        );
        sqz_service_config_free(cfg);
    }
}
