//! The C ABI driven from Rust as a C caller would drive it: a host behind `sqz_io` callbacks
//! (plain `extern "C"` functions), with guests of many TiB so that every value crossing the
//! boundary is far above 2^32 KiB. The C client in tests/c covers the rest from C itself.

use std::ffi::{c_void, CStr};

use squeeze::ffi::*;

const TIB: i64 = 1 << 30; // in KiB

/// Two guests of 8 TiB that may shrink to 4 TiB and balloon 1 TiB per simulated second.
struct Host {
    doms: Vec<sqz_domain>,
    free_kib: i64,
    time: f64,
    /// Every (callback, domid, KiB) the library asked for.
    seen: Vec<(&'static str, i32, i64)>,
}

fn host(ctx: *mut c_void) -> &'static mut Host {
    // SAFETY: ctx is the &mut Host the test passed in, alive for the whole call.
    unsafe { &mut *ctx.cast::<Host>() }
}

unsafe extern "C" fn make_host(ctx: *mut c_void, b: *mut sqz_host_builder) -> i32 {
    let h = host(ctx);
    for d in &h.doms {
        // SAFETY: b is the live builder; d is a valid sqz_domain.
        if unsafe { sqz_host_builder_add_domain(b, d, std::mem::size_of::<sqz_domain>()) } != 0 {
            return -1;
        }
    }
    // SAFETY: b is the live builder.
    unsafe { sqz_host_builder_set_free_mem(b, h.free_kib) }
}

unsafe extern "C" fn set_maxmem(ctx: *mut c_void, domid: i32, kib: i64) -> i32 {
    let h = host(ctx);
    h.seen.push(("set_maxmem", domid, kib));
    match h.doms.iter_mut().find(|d| d.domid == domid) {
        Some(d) => {
            d.memory_max_kib = kib;
            0
        }
        None => -1,
    }
}

unsafe extern "C" fn execute_action(ctx: *mut c_void, domid: i32, target: i64) -> i32 {
    let h = host(ctx);
    h.seen.push(("execute_action", domid, target));
    match h.doms.iter_mut().find(|d| d.domid == domid) {
        Some(d) => {
            d.target_kib = target;
            d.memory_max_kib = target;
            0
        }
        None => -1,
    }
}

unsafe extern "C" fn wait(ctx: *mut c_void, seconds: f64) {
    let h = host(ctx);
    h.time += seconds;
    for d in &mut h.doms {
        let step = (TIB as f64 * seconds) as i64;
        let gap = d.target_kib - d.memory_actual_kib;
        let mv = gap.clamp(-step, step).min(h.free_kib);
        d.memory_actual_kib += mv;
        h.free_kib -= mv;
    }
}

unsafe extern "C" fn now(ctx: *mut c_void) -> f64 {
    host(ctx).time
}

fn big_host() -> Host {
    let d = |domid| sqz_domain {
        domid,
        can_balloon: true,
        dynamic_min_kib: 4 * TIB,
        target_kib: 8 * TIB,
        dynamic_max_kib: 8 * TIB,
        memory_actual_kib: 8 * TIB,
        memory_max_kib: 8 * TIB,
        inaccuracy_kib: 4,
    };
    Host {
        doms: vec![d(1), d(2)],
        free_kib: 0,
        time: 0.0,
        seen: Vec::new(),
    }
}

fn io(h: &mut Host) -> sqz_io {
    sqz_io {
        struct_size: std::mem::size_of::<sqz_io>() as u32,
        ctx: (h as *mut Host).cast(),
        make_host: Some(make_host),
        set_maxmem: Some(set_maxmem),
        execute_action: Some(execute_action),
        wait: Some(wait),
        now: Some(now),
        target_host_free_mem_kib: 64 << 20,
        free_memory_tolerance_kib: 512,
    }
}

fn last_message() -> String {
    // SAFETY: valid until the next sqz_ call on this thread; copied at once.
    unsafe { CStr::from_ptr(sqz_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn terabyte_guests_free_terabytes_through_the_callbacks_with_nothing_truncated() {
    let mut h = big_host();
    let table = io(&mut h);
    let mut reserved = 0;
    // SAFETY: table and reserved are valid for the call.
    let st =
        unsafe { sqz_free_memory_range(&table, std::ptr::null(), 2 * TIB, 4 * TIB, &mut reserved) };
    assert_eq!(st, SQZ_OK, "{}", last_message());
    assert!((2 * TIB..=4 * TIB).contains(&reserved));
    assert!(h.free_kib >= reserved + (64 << 20));
    // Every target and maxmem the library sent lies in 4..=8 TiB: above 2^32 KiB, and a
    // 32-bit truncation anywhere on the way would have produced something far below.
    let targets: Vec<_> = h.seen.iter().filter(|s| s.0 == "execute_action").collect();
    assert!(!targets.is_empty());
    for &(what, domid, kib) in &h.seen {
        assert!((4 * TIB..=8 * TIB).contains(&kib), "{what}({domid}, {kib})");
    }
}

#[test]
fn asking_for_more_than_terabyte_guests_can_give_reports_both_amounts_exactly() {
    let mut h = big_host();
    let table = io(&mut h);
    // SAFETY: table is valid for the call.
    let st = unsafe {
        sqz_change_host_free_memory(
            &table,
            std::ptr::null(),
            9 * TIB,
            None,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(st, SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY);
    let (mut required, mut free) = (0, 0);
    // SAFETY: both pointers are to locals.
    assert_eq!(
        unsafe { sqz_last_error_cannot_free(&mut required, &mut free) },
        SQZ_OK
    );
    assert_eq!(required, 9 * TIB);
    // Both guests went to 4 TiB, each stopping within its 4 KiB inaccuracy.
    assert!((8 * TIB - 16..=8 * TIB).contains(&free), "{free}");
}

#[test]
fn a_failing_callback_names_itself_and_the_domain() {
    unsafe extern "C" fn refuse(_: *mut c_void, _: i32, _: i64) -> i32 {
        -22
    }
    let mut h = big_host();
    let mut table = io(&mut h);
    table.execute_action = Some(refuse);
    // SAFETY: table is valid for the call.
    let st = unsafe { sqz_balance_memory(&table, std::ptr::null()) };
    // Nothing is free and the slush is 64 GiB, so the guests must shrink: the first target
    // set (domain 2: squeezed sets them in descending domid order) is refused.
    assert_eq!(st, SQZ_ERR_BACKEND);
    let m = last_message();
    assert!(
        m.contains("execute_action") && m.contains("domain 2") && m.contains("-22"),
        "{m}"
    );
}
