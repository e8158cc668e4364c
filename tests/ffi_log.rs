//! The log callback's `ctx` is the caller's to free once `sqz_set_log_callback` has replaced
//! or removed the callback: no delivery may still be using it. (One test per binary: the log
//! callback is process-wide.)

mod common;

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use squeeze::ffi::*;

/// What the callback's `ctx` points to.
#[derive(Default)]
struct Ctx {
    /// (a delivery is inside the callback, the callback may return)
    gate: Mutex<(bool, bool)>,
    changed: Condvar,
    /// Set by the test once the removal has returned: from then on `ctx` counts as freed.
    removed: AtomicBool,
    uses_after_removal: AtomicU32,
}

unsafe extern "C" fn on_log(ctx: *mut c_void, _level: i32, _t: *const c_char, _m: *const c_char) {
    // SAFETY: ctx is the test's Ctx, kept alive by the test to count uses after removal.
    let c = unsafe { &*(ctx as *const Ctx) };
    let mut g = c.gate.lock().unwrap();
    if !g.0 {
        // The first record waits here until the test lets it go.
        g.0 = true;
        c.changed.notify_all();
        while !g.1 {
            g = c.changed.wait(g).unwrap();
        }
    }
    drop(g);
    // What a C callback would do with its ctx: use it. After removal that is a use after free.
    if c.removed.load(Ordering::SeqCst) {
        c.uses_after_removal.fetch_add(1, Ordering::SeqCst);
    }
}

static REENTRY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(i32::MIN);

unsafe extern "C" fn replaces_itself(
    _ctx: *mut c_void,
    _level: i32,
    _t: *const c_char,
    _m: *const c_char,
) {
    // SAFETY: removing the callback; NULL ctx.
    let rc = unsafe { sqz_set_log_callback(None, std::ptr::null_mut(), SQZ_LOG_OFF) };
    REENTRY.store(rc, Ordering::SeqCst);
}

#[test]
fn removing_the_log_callback_waits_for_a_delivery_in_flight_so_its_ctx_can_be_freed() {
    let ctx = Arc::new(Ctx::default());
    let ctx_ptr = Arc::as_ptr(&ctx) as *mut c_void;
    // Opened first: opening a service logs too, and that record must not be the one stopped.
    let (_dir, _fake, service) = setup(small_host());
    // SAFETY: ctx outlives every delivery (the test holds it to the end).
    assert_eq!(
        unsafe { sqz_set_log_callback(Some(on_log), ctx_ptr, SQZ_LOG_TRACE) },
        SQZ_OK
    );
    // A reservation logs; its first record stops in the callback.
    let worker = std::thread::spawn(move || {
        service.login("xenopsd").unwrap();
        service.reserve_memory("xenopsd", 256 * MIB).unwrap();
    });
    {
        let mut g = ctx.gate.lock().unwrap();
        while !g.0 {
            g = ctx.changed.wait(g).unwrap();
        }
    }
    let remover_ctx = ctx.clone();
    let remover = std::thread::spawn(move || {
        // SAFETY: removing the callback; NULL ctx.
        let rc = unsafe { sqz_set_log_callback(None, std::ptr::null_mut(), SQZ_LOG_OFF) };
        remover_ctx.removed.store(true, Ordering::SeqCst);
        rc
    });
    // A removal that does not wait returns at once; give it the chance (a correct one cannot
    // return before the delivery does, so this waits the whole second), then let it go on.
    for _ in 0..100 {
        if ctx.removed.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        let mut g = ctx.gate.lock().unwrap();
        g.1 = true;
        ctx.changed.notify_all();
    }
    assert_eq!(remover.join().unwrap(), SQZ_OK);
    worker.join().unwrap();
    assert_eq!(
        ctx.uses_after_removal.load(Ordering::SeqCst),
        0,
        "the log callback used its ctx after sqz_set_log_callback had removed it"
    );

    // From inside a delivery, replacing the callback would wait for itself: refused.
    // SAFETY: no ctx.
    assert_eq!(
        unsafe { sqz_set_log_callback(Some(replaces_itself), std::ptr::null_mut(), SQZ_LOG_TRACE) },
        SQZ_OK
    );
    let (_dir, _fake, service) = setup(small_host());
    service.login("xenopsd").unwrap();
    service.reserve_memory("xenopsd", 256 * MIB).unwrap();
    assert_eq!(REENTRY.load(Ordering::SeqCst), SQZ_ERR_INVALID_ARGUMENT);
    // SAFETY: removing the callback.
    assert_eq!(
        unsafe { sqz_set_log_callback(None, std::ptr::null_mut(), SQZ_LOG_OFF) },
        SQZ_OK
    );
}
