//! Reservations with progress and cancellation through the C ABI: a handle cancelled from
//! another thread while the reservation waits for a slow guest of the fake host.

use std::ffi::c_void;
use std::sync::mpsc;

use squeeze::ffi::*;

const MIB: i64 = 1 << 10;
const GIB: i64 = 1 << 20;

/// An 8 GiB fake host (Xen 256 MiB, domain 0 1 GiB) with a 1..4 GiB guest at 4 GiB that
/// balloons at 32 MiB/s: 2.75 GiB free.
fn slow_host(dir: &std::path::Path) -> (*mut sqz_fake_host, *mut sqz_service) {
    let config = sqz_fake_config {
        struct_size: std::mem::size_of::<sqz_fake_config>() as u32,
        total_kib: 8 * GIB,
        xen_kib: 256 * MIB,
        dom0_kib: GIB,
        boot_delay_s: 1.0,
    };
    let mut f = std::ptr::null_mut();
    let mut cfg = std::ptr::null_mut();
    let mut svc = std::ptr::null_mut();
    let lock = std::ffi::CString::new(dir.join("host.lock").to_str().unwrap()).unwrap();
    let mut guest = sqz_fake_guest {
        struct_size: std::mem::size_of::<sqz_fake_guest>() as u32,
        target_kib: 4 * GIB,
        dynamic_min_kib: GIB,
        dynamic_max_kib: 4 * GIB,
        offset_kib: 0,
        behaviour: Default::default(),
    };
    guest.behaviour.kind = SQZ_BEHAVIOUR_IDEAL;
    guest.behaviour.rate_kib_per_s = 32 * MIB;
    let mut domid = -1;
    // SAFETY: every pointer is valid for the call; the handles are freed by the tests.
    unsafe {
        assert_eq!(sqz_fake_host_new(&config, &mut f), SQZ_OK);
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        assert_eq!(sqz_service_config_set_lock_path(cfg, lock.as_ptr()), SQZ_OK);
        assert_eq!(sqz_service_new_fake(f, cfg, &mut svc), SQZ_OK);
        sqz_service_config_free(cfg);
        let size = std::mem::size_of::<sqz_fake_guest>();
        assert_eq!(
            sqz_fake_host_create_domain(f, &guest, size, &mut domid),
            SQZ_OK
        );
        assert_eq!(sqz_fake_host_build_domain(f, domid, 4 * GIB), SQZ_OK);
        assert_eq!(sqz_fake_host_unpause(f, domid), SQZ_OK);
        assert_eq!(sqz_fake_host_advance(f, 2.0), SQZ_OK);
    }
    (f, svc)
}

struct Watch {
    reports: u32,
    waiting: mpsc::Sender<()>,
    cancelled: mpsc::Receiver<()>,
}

unsafe extern "C" fn on_progress(ctx: *mut c_void, p: *const sqz_progress) -> i32 {
    // SAFETY: ctx is the test's Watch and p a live report, for the duration of the call.
    let (w, p) = unsafe { (&mut *(ctx as *mut Watch), &*p) };
    w.reports += 1;
    if w.reports == 2 {
        assert!(p.freed_kib > 0 && p.freed_kib < p.needed_kib, "{p:?}");
        w.waiting.send(()).unwrap();
        // Go on once the other thread has cancelled: no timing involved.
        w.cancelled.recv().unwrap();
    }
    0
}

#[test]
fn a_reservation_cancelled_from_another_thread_returns_cancelled_and_reserves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (f, svc) = slow_host(dir.path());
    let mut cancel = std::ptr::null_mut();
    // SAFETY: out-pointer valid.
    assert_eq!(unsafe { sqz_cancel_new(&mut cancel) }, SQZ_OK);

    let (waiting_tx, waiting_rx) = mpsc::channel();
    let (cancelled_tx, cancelled_rx) = mpsc::channel();
    let handle = cancel as usize;
    let canceller = std::thread::spawn(move || {
        waiting_rx.recv().unwrap();
        // SAFETY: the handle lives until the test frees it, after joining this thread.
        let st = unsafe { sqz_cancel_request(handle as *mut sqz_cancel) };
        cancelled_tx.send(()).unwrap();
        st
    });
    let mut watch = Watch {
        reports: 0,
        waiting: waiting_tx,
        cancelled: cancelled_rx,
    };
    let options = sqz_reserve_options {
        struct_size: std::mem::size_of::<sqz_reserve_options>() as u32,
        progress: Some(on_progress),
        ctx: &mut watch as *mut Watch as *mut c_void,
        cancel,
        deadline_s: 0.0,
    };
    let mut id = [0 as std::ffi::c_char; SQZ_RESERVATION_ID_SIZE];
    let mut got = 0i64;
    // 3.5 GiB + 72 MiB slush, 2.75 GiB free: 840 MiB from the guest, about 27 s of waits.
    // SAFETY: all pointers valid for the call.
    let st = unsafe {
        sqz_reserve_memory_range_with(
            svc,
            c"xenopsd".as_ptr(),
            3 * GIB + 512 * MIB,
            3 * GIB + 512 * MIB,
            &options,
            id.as_mut_ptr(),
            &mut got,
        )
    };
    assert_eq!(canceller.join().unwrap(), SQZ_OK);
    assert_eq!(st, SQZ_ERR_CANCELLED);
    assert_eq!(watch.reports, 2);
    assert_eq!(got, 0, "no amount written on failure");

    // The ledger is empty: the diagnostics list no session and nothing reserved.
    let mut need = 0usize;
    // SAFETY: sizing call, then a buffer of that size, retried once with the size reported:
    // the document counts store requests, so it may grow by a digit between the two calls.
    let doc: serde_json::Value = unsafe {
        sqz_get_diagnostics(svc, std::ptr::null_mut(), 0, &mut need);
        let mut buf = vec![0 as std::ffi::c_char; need];
        if sqz_get_diagnostics(svc, buf.as_mut_ptr(), need, &mut need) != SQZ_OK {
            buf = vec![0 as std::ffi::c_char; need];
            assert_eq!(
                sqz_get_diagnostics(svc, buf.as_mut_ptr(), need, &mut need),
                SQZ_OK
            );
        }
        serde_json::from_str(std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap()).unwrap()
    };
    assert_eq!(doc["sessions"], serde_json::json!([]));
    assert_eq!(doc["host"]["reserved_kib"], 0);
    assert_eq!(doc["last_decision"]["outcome"], "cancelled");

    // SAFETY: handles created above, freed once.
    unsafe {
        // Freeing the handle and asking again without it works.
        sqz_cancel_free(cancel);
        assert_eq!(
            sqz_reserve_memory_with(
                svc,
                c"xenopsd".as_ptr(),
                GIB,
                std::ptr::null(),
                id.as_mut_ptr()
            ),
            SQZ_OK
        );
        sqz_service_free(svc);
        sqz_fake_host_free(f);
    }
}

fn last_message() -> String {
    // SAFETY: the library's static or thread-local message.
    unsafe { std::ffi::CStr::from_ptr(sqz_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_deadline_the_guest_cannot_meet_fails_early_saying_when_and_an_older_caller_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    let (f, svc) = slow_host(dir.path());
    let mut id = [0 as std::ffi::c_char; SQZ_RESERVATION_ID_SIZE];
    // 3.5 GiB + 72 MiB slush, 2.75 GiB free: 840 MiB from a 32 MiB/s guest, about 27 s,
    // against a 5 s deadline.
    let mut options = sqz_reserve_options {
        struct_size: std::mem::size_of::<sqz_reserve_options>() as u32,
        progress: None,
        ctx: std::ptr::null_mut(),
        cancel: std::ptr::null_mut(),
        deadline_s: 5.0,
    };
    let reserve = |o: &sqz_reserve_options, id: &mut [std::ffi::c_char]| {
        // SAFETY: all pointers valid for the call.
        unsafe {
            sqz_reserve_memory_with(
                svc,
                c"xenopsd".as_ptr(),
                3 * GIB + 512 * MIB,
                o,
                id.as_mut_ptr(),
            )
        }
    };
    assert_eq!(reserve(&options, &mut id), SQZ_ERR_DEADLINE);
    let m = last_message();
    assert!(m.contains("deadline of 5.0 s cannot be met"), "{m}");
    // SAFETY: a static string.
    let name = unsafe { std::ffi::CStr::from_ptr(sqz_status_name(SQZ_ERR_DEADLINE)) };
    assert_eq!(name.to_str().unwrap(), "SQZ_ERR_DEADLINE");

    // A deadline that is not a number is refused.
    options.deadline_s = f64::NAN;
    assert_eq!(reserve(&options, &mut id), SQZ_ERR_INVALID_ARGUMENT);
    // A caller built against the first layout passes its shorter size: whatever lies past
    // it is not read, and there is no deadline.
    options.struct_size = std::mem::offset_of!(sqz_reserve_options, deadline_s) as u32;
    assert_eq!(reserve(&options, &mut id), SQZ_OK, "{}", last_message());
    // SAFETY: handles created above, freed once.
    unsafe {
        sqz_service_free(svc);
        sqz_fake_host_free(f);
    }
}
