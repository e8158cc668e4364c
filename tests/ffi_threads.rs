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
