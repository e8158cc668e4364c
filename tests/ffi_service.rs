//! The service's C ABI over a caller's platform table (`sqz_platform`): a small host written
//! the way a C caller would write one (a store with snapshot transactions, a fixed domain
//! list), driven through the exported functions. The callbacks trust the pointers the library
//! passes them, as C callbacks do; that is the only reason for the `unsafe` blocks here.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use squeeze::ffi::*;

/// An 8 GiB host: 6 GiB free, domain 0 holding 1 GiB.
struct TestHost {
    store: BTreeMap<String, String>,
    /// Open transactions: the store as it was at start, plus writes.
    txs: BTreeMap<u32, (u64, BTreeMap<String, String>)>,
    generation: u64,
    next_tx: u32,
    domains: Vec<sqz_domain_info>,
    free_pages: u64,
    maxmem_calls: Vec<(i32, i64)>,
    /// Commits to refuse with SQZ_PLATFORM_AGAIN before accepting one.
    conflicts: u32,
    fail_physinfo: bool,
    /// The service handle, for the re-entrancy test.
    service: *mut sqz_service,
    reentry_status: Option<sqz_status>,
    /// Holds the first domain listing in a gate and counts callbacks after the free.
    gate: Option<Arc<Gate>>,
}

/// Stops the first `list_domains` (the balancer's pass) until released, and counts every
/// callback made once the test has seen `sqz_service_free` return.
#[derive(Default)]
struct Gate {
    /// (a pass has entered the gate, the gate is open)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
    freed: AtomicBool,
    calls_after_free: AtomicU32,
}

type Ctx = Mutex<TestHost>;

unsafe fn host<'a>(ctx: *mut c_void) -> std::sync::MutexGuard<'a, TestHost> {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let h = unsafe { &*(ctx as *const Ctx) }.lock().unwrap();
    if let Some(g) = &h.gate {
        if g.freed.load(Ordering::SeqCst) {
            g.calls_after_free.fetch_add(1, Ordering::SeqCst);
        }
    }
    h
}

unsafe fn s(p: *const c_char) -> String {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

unsafe extern "C" fn list_domains(ctx: *mut c_void, out: *mut sqz_domain_list) -> i32 {
    // SAFETY: as below.
    let gate = unsafe { host(ctx) }.gate.clone();
    if let Some(g) = gate {
        let mut st = g.state.lock().unwrap();
        if !st.0 {
            st.0 = true;
            g.changed.notify_all();
            while !st.1 {
                st = g.changed.wait(st).unwrap();
            }
        }
    }
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let domains = unsafe { host(ctx) }.domains.clone();
    for d in &domains {
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let rc = unsafe { sqz_domain_list_add(out, d, std::mem::size_of::<sqz_domain_info>()) };
        if rc != 0 {
            return rc;
        }
    }
    0
}

unsafe extern "C" fn physinfo(ctx: *mut c_void, out: *mut sqz_physinfo) -> i32 {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let h = unsafe { host(ctx) };
    if h.fail_physinfo {
        return 42;
    }
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    unsafe {
        *out = sqz_physinfo {
            total_pages: 2 << 20,
            free_pages: h.free_pages,
            scrub_pages: 0,
            outstanding_pages: 0,
        }
    };
    0
}

unsafe extern "C" fn set_maxmem(ctx: *mut c_void, domid: i32, kib: i64) -> i32 {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let mut h = unsafe { host(ctx) };
    h.maxmem_calls.push((domid, kib));
    match h.domains.iter_mut().find(|d| d.domid == domid) {
        Some(d) => {
            d.max_pages = (kib as u64).div_ceil(4);
            0
        }
        None => 3,
    }
}

unsafe extern "C" fn tx_start(ctx: *mut c_void, tx: *mut u32) -> i32 {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let mut h = unsafe { host(ctx) };
    let id = h.next_tx;
    h.next_tx += 1;
    let snapshot = (h.generation, h.store.clone());
    h.txs.insert(id, snapshot);
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    unsafe { *tx = id };
    0
}

unsafe extern "C" fn tx_end(ctx: *mut c_void, tx: u32, abort: bool) -> i32 {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let mut h = unsafe { host(ctx) };
    let Some((generation, copy)) = h.txs.remove(&tx) else {
        return 2;
    };
    if abort {
        return 0;
    }
    if h.conflicts > 0 {
        h.conflicts -= 1;
        return SQZ_PLATFORM_AGAIN;
    }
    if generation != h.generation {
        return SQZ_PLATFORM_AGAIN;
    }
    h.store = copy;
    h.generation += 1;
    0
}

unsafe extern "C" fn read(
    ctx: *mut c_void,
    tx: u32,
    path: *const c_char,
    out: *mut sqz_strings,
) -> i32 {
    let value = {
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let h = unsafe { host(ctx) };
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        h.txs[&tx].1.get(&unsafe { s(path) }).cloned()
    };
    if let Some(v) = value {
        let v = CString::new(v).unwrap();
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        return unsafe { sqz_strings_add(out, v.as_ptr()) };
    }
    0
}

unsafe extern "C" fn write(
    ctx: *mut c_void,
    tx: u32,
    path: *const c_char,
    value: *const c_char,
) -> i32 {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let mut h = unsafe { host(ctx) };
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let (p, v) = unsafe { (s(path), s(value)) };
    h.txs.get_mut(&tx).unwrap().1.insert(p, v);
    0
}

unsafe extern "C" fn rm(ctx: *mut c_void, tx: u32, path: *const c_char) -> i32 {
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let mut h = unsafe { host(ctx) };
    // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
    let p = unsafe { s(path) };
    let sub = format!("{p}/");
    h.txs
        .get_mut(&tx)
        .unwrap()
        .1
        .retain(|k, _| k != &p && !k.starts_with(&sub));
    0
}

unsafe extern "C" fn directory(
    ctx: *mut c_void,
    tx: u32,
    path: *const c_char,
    out: *mut sqz_strings,
) -> i32 {
    let names: Vec<String> = {
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let h = unsafe { host(ctx) };
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let prefix = format!("{}/", unsafe { s(path) });
        let mut names: Vec<String> = h.txs[&tx]
            .1
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap().to_string())
            .collect();
        names.dedup();
        names
    };
    for n in names {
        let n = CString::new(n).unwrap();
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let rc = unsafe { sqz_strings_add(out, n.as_ptr()) };
        if rc != 0 {
            return rc;
        }
    }
    0
}

unsafe extern "C" fn now(ctx: *mut c_void) -> f64 {
    let (svc, reentered) = {
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let h = unsafe { host(ctx) };
        (h.service, h.reentry_status.is_some())
    };
    if !svc.is_null() && !reentered {
        // A platform callback calling the service again: must be refused, not deadlock.
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        let rc = unsafe { sqz_service_balance_memory(svc) };
        // SAFETY: ctx (a live Mutex<TestHost>) and pointers come from the library for this call.
        unsafe { host(ctx) }.reentry_status = Some(rc);
    }
    100.0
}

unsafe extern "C" fn sleep(_ctx: *mut c_void, _seconds: f64) {}

fn test_host() -> Box<Ctx> {
    let dom0 = sqz_domain_info {
        domid: 0,
        tot_pages: 1 << 18,
        max_pages: 1 << 18,
        ..Default::default()
    };
    Box::new(Mutex::new(TestHost {
        store: BTreeMap::new(),
        txs: BTreeMap::new(),
        generation: 0,
        next_tx: 1,
        domains: vec![dom0],
        free_pages: (6 << 20) / 4,
        maxmem_calls: Vec::new(),
        conflicts: 0,
        fail_physinfo: false,
        service: std::ptr::null_mut(),
        reentry_status: None,
        gate: None,
    }))
}

fn table(ctx: &Ctx) -> sqz_platform {
    sqz_platform {
        struct_size: std::mem::size_of::<sqz_platform>() as u32,
        ctx: ctx as *const Ctx as *mut c_void,
        list_domains: Some(list_domains),
        physinfo: Some(physinfo),
        shadow_allocation_mib: None,
        set_maxmem_kib: Some(set_maxmem),
        claim_pages: None,
        transaction_start: Some(tx_start),
        transaction_end: Some(tx_end),
        read: Some(read),
        write: Some(write),
        rm: Some(rm),
        directory: Some(directory),
        now: Some(now),
        sleep: Some(sleep),
    }
}

fn new_service(ctx: &Ctx) -> *mut sqz_service {
    let t = table(ctx);
    let mut svc = std::ptr::null_mut();
    assert_eq!(
        // SAFETY: pointers are to locals, live handles or C strings outliving the call.
        unsafe { sqz_service_new_platform(&t, std::ptr::null(), &mut svc) },
        SQZ_OK
    );
    svc
}

fn last_message() -> String {
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe { CStr::from_ptr(sqz_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn id_text(buf: &[c_char; SQZ_RESERVATION_ID_SIZE]) -> String {
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_reservation_made_through_a_callers_platform_lands_in_its_store_and_moves_to_the_domain() {
    let ctx = test_host();
    let svc = new_service(&ctx);
    let session = c"xenopsd";
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        assert_eq!(sqz_login(svc, session.as_ptr()), SQZ_OK);
        let mut id = [0 as c_char; SQZ_RESERVATION_ID_SIZE];
        // 6 GiB free, slush 72 MiB: 1 GiB is there without ballooning anyone.
        assert_eq!(
            sqz_reserve_memory(svc, session.as_ptr(), 1 << 20, id.as_mut_ptr()),
            SQZ_OK
        );
        let id_s = id_text(&id);
        assert_eq!(id_s.len(), 36);
        let key = format!("/squeezed/state/xenopsd/{id_s}");
        assert_eq!(
            ctx.lock().unwrap().store.get(&key).map(String::as_str),
            Some("1048576")
        );

        // The domain appears (paused, empty), then takes the reservation.
        ctx.lock().unwrap().domains.push(sqz_domain_info {
            domid: 5,
            paused: true,
            max_pages: 1,
            ..Default::default()
        });
        let cid = CString::new(id_s.clone()).unwrap();
        assert_eq!(
            sqz_transfer_reservation_to_domain(svc, session.as_ptr(), cid.as_ptr(), 5),
            SQZ_OK,
            "{}",
            last_message()
        );
        assert_eq!(ctx.lock().unwrap().maxmem_calls, vec![(5, 1 << 20)]);
        let mut q = [0 as c_char; SQZ_RESERVATION_ID_SIZE];
        assert_eq!(
            sqz_query_reservation_of_domain(svc, session.as_ptr(), 5, q.as_mut_ptr()),
            SQZ_OK
        );
        assert_eq!(id_text(&q), id_s);
        assert_eq!(
            sqz_delete_reservation(svc, session.as_ptr(), cid.as_ptr()),
            SQZ_OK
        );
        assert!(!ctx.lock().unwrap().store.contains_key(&key));
        assert_eq!(
            sqz_delete_reservation(svc, session.as_ptr(), cid.as_ptr()),
            SQZ_ERR_UNKNOWN_RESERVATION
        );
        sqz_service_free(svc);
    }
}

#[test]
fn a_conflicting_commit_is_run_again_and_the_ledger_holds_one_entry() {
    let ctx = test_host();
    ctx.lock().unwrap().conflicts = 3;
    let svc = new_service(&ctx);
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        let mut id = [0 as c_char; SQZ_RESERVATION_ID_SIZE];
        assert_eq!(
            sqz_reserve_memory(svc, c"xl".as_ptr(), 4096, id.as_mut_ptr()),
            SQZ_OK
        );
        let h = ctx.lock().unwrap();
        let entries: Vec<_> = h
            .store
            .keys()
            .filter(|k| k.starts_with("/squeezed/state/xl/"))
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(h.conflicts, 0);
        drop(h);
        sqz_service_free(svc);
    }
}

#[test]
fn a_failing_callback_is_a_backend_error_naming_it_and_reserves_nothing() {
    let ctx = test_host();
    ctx.lock().unwrap().fail_physinfo = true;
    let svc = new_service(&ctx);
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        let mut id = [0 as c_char; SQZ_RESERVATION_ID_SIZE];
        assert_eq!(
            sqz_reserve_memory(svc, c"xl".as_ptr(), 4096, id.as_mut_ptr()),
            SQZ_ERR_BACKEND
        );
        let m = last_message();
        assert!(m.contains("physinfo") && m.contains("42"), "{m}");
        assert!(ctx
            .lock()
            .unwrap()
            .store
            .keys()
            .all(|k| !k.starts_with("/squeezed/state")));
        sqz_service_free(svc);
    }
}

#[test]
fn calling_the_service_from_its_own_platform_callback_is_refused_not_deadlocked() {
    let ctx = test_host();
    let svc = new_service(&ctx);
    ctx.lock().unwrap().service = svc;
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        // Balancing reads the clock, whose callback calls the service again.
        assert_eq!(
            sqz_service_balance_memory(svc),
            SQZ_OK,
            "{}",
            last_message()
        );
        assert_eq!(
            ctx.lock().unwrap().reentry_status,
            Some(SQZ_ERR_INVALID_ARGUMENT)
        );
        sqz_service_free(svc);
    }
}

#[test]
fn a_platform_table_with_a_missing_callback_or_a_short_size_is_refused() {
    let ctx = test_host();
    let mut svc = std::ptr::null_mut();
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        let mut t = table(&ctx);
        t.read = None;
        assert_eq!(
            sqz_service_new_platform(&t, std::ptr::null(), &mut svc),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert!(last_message().contains("platform->read is NULL"));
        let mut t = table(&ctx);
        t.struct_size = 8;
        assert_eq!(
            sqz_service_new_platform(&t, std::ptr::null(), &mut svc),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            sqz_service_new_platform(std::ptr::null(), std::ptr::null(), &mut svc),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert!(svc.is_null());
        // A sink used outside its callback is refused.
        let d = sqz_domain_info::default();
        let stray = 0x1000 as *mut sqz_domain_list;
        assert_eq!(
            sqz_domain_list_add(stray, &d, std::mem::size_of::<sqz_domain_info>()),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert!(last_message().contains("not live"));
    }
}

#[test]
fn diagnostics_report_the_size_they_need_and_fit_exactly_in_it() {
    let ctx = test_host();
    let svc = new_service(&ctx);
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        let mut need = 0usize;
        assert_eq!(
            sqz_get_diagnostics(svc, std::ptr::null_mut(), 0, &mut need),
            SQZ_ERR_BUFFER_TOO_SMALL
        );
        assert!(need > 2);
        let mut buf = vec![0 as c_char; need];
        let mut again = 0usize;
        assert_eq!(
            sqz_get_diagnostics(svc, buf.as_mut_ptr(), need, &mut again),
            SQZ_OK
        );
        assert_eq!(again, need);
        let text = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert_eq!(text.len() + 1, need);
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(doc["settings"]["slush_kib"], 73728);
        sqz_service_free(svc);
    }
}

/// The diagnostics document, asked for the way a C caller must while a background balancer
/// runs: the document can grow between the size query and the copy, so a too-small buffer is
/// retried with the size the library reported.
fn diagnostics(svc: *mut sqz_service) -> serde_json::Value {
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        let mut need = 0usize;
        sqz_get_diagnostics(svc, std::ptr::null_mut(), 0, &mut need);
        for _ in 0..100 {
            let mut buf = vec![0 as c_char; need];
            match sqz_get_diagnostics(svc, buf.as_mut_ptr(), buf.len(), &mut need) {
                SQZ_OK => {
                    let text = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
                    return serde_json::from_str(text).unwrap();
                }
                SQZ_ERR_BUFFER_TOO_SMALL => continue,
                other => panic!("sqz_get_diagnostics: {other}"),
            }
        }
        panic!("the diagnostics document kept growing")
    }
}

#[test]
fn the_background_balancer_gives_an_idle_host_s_memory_back_to_a_guest_below_its_max() {
    const GIB: i64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let lock = CString::new(dir.path().join("host.lock").to_str().unwrap()).unwrap();
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    unsafe {
        // 8 GiB host, 6.75 GiB free; a guest of 1..4 GiB running at 2 GiB.
        let hc = sqz_fake_config {
            struct_size: std::mem::size_of::<sqz_fake_config>() as u32,
            total_kib: 8 * GIB,
            xen_kib: GIB / 4,
            dom0_kib: GIB,
            boot_delay_s: 1.0,
        };
        let mut host = std::ptr::null_mut();
        assert_eq!(sqz_fake_host_new(&hc, &mut host), SQZ_OK);
        let g = sqz_fake_guest {
            struct_size: std::mem::size_of::<sqz_fake_guest>() as u32,
            target_kib: 2 * GIB,
            dynamic_min_kib: GIB,
            dynamic_max_kib: 4 * GIB,
            offset_kib: 0,
            behaviour: sqz_behaviour {
                kind: SQZ_BEHAVIOUR_IDEAL,
                rate_kib_per_s: GIB,
                limit_kib: 0,
                seconds: 0.0,
            },
        };
        let mut domid = -1;
        assert_eq!(
            sqz_fake_host_create_domain(
                host,
                &g,
                std::mem::size_of::<sqz_fake_guest>(),
                &mut domid
            ),
            SQZ_OK
        );
        assert_eq!(sqz_fake_host_build_domain(host, domid, 2 * GIB), SQZ_OK);
        assert_eq!(sqz_fake_host_unpause(host, domid), SQZ_OK);
        assert_eq!(sqz_fake_host_advance(host, 2.0), SQZ_OK);

        let mut cfg = std::ptr::null_mut();
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        assert_eq!(sqz_service_config_set_lock_path(cfg, lock.as_ptr()), SQZ_OK);
        assert_eq!(
            sqz_service_config_set_balance_interval(cfg, 0.0),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            sqz_service_config_set_balance_interval(cfg, f64::NAN),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert_eq!(sqz_service_config_set_balance_interval(cfg, 0.01), SQZ_OK);
        let mut svc = std::ptr::null_mut();
        assert_eq!(sqz_service_new_fake(host, cfg, &mut svc), SQZ_OK);
        sqz_service_config_free(cfg);
        assert_eq!(diagnostics(svc)["balancer"]["running"], false);

        assert_eq!(sqz_service_start_balancer(svc), SQZ_OK);
        assert_eq!(
            sqz_service_start_balancer(svc),
            SQZ_OK,
            "starting twice is harmless"
        );
        assert_eq!(diagnostics(svc)["balancer"]["running"], true);
        // Wait (a bounded number of rounds, not a time) for a pass, letting simulated time run
        // so the guest follows its new target.
        let mut d = sqz_fake_domain::default();
        for _ in 0..2000 {
            assert_eq!(sqz_fake_host_advance(host, 0.5), SQZ_OK);
            assert_eq!(sqz_fake_host_domain(host, domid, &mut d), SQZ_OK);
            // Within the balloon driver's 4 KiB inaccuracy.
            if d.tot_kib >= 4 * GIB - 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            (4 * GIB - 4..=4 * GIB).contains(&d.tot_kib),
            "the guest got back to its dynamic-max: {} KiB",
            d.tot_kib
        );
        assert!(diagnostics(svc)["balancer"]["passes"].as_u64().unwrap() >= 1);
        assert_eq!(sqz_service_stop_balancer(svc), SQZ_OK);
        assert_eq!(diagnostics(svc)["balancer"]["running"], false);
        assert_eq!(
            sqz_service_stop_balancer(svc),
            SQZ_OK,
            "stopping twice is harmless"
        );
        assert_eq!(
            sqz_service_start_balancer(std::ptr::null_mut()),
            SQZ_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            sqz_service_stop_balancer(std::ptr::null_mut()),
            SQZ_ERR_INVALID_ARGUMENT
        );
        sqz_service_free(svc);
        sqz_fake_host_free(host);
    }
}

#[test]
fn freeing_the_service_waits_for_the_background_balancer_s_pass_so_no_callback_follows() {
    let dir = tempfile::tempdir().unwrap();
    let lock = CString::new(dir.path().join("host.lock").to_str().unwrap()).unwrap();
    let ctx = test_host();
    let gate = Arc::new(Gate::default());
    // SAFETY: pointers are to locals, live handles or C strings outliving the call.
    let svc = unsafe {
        let mut cfg = std::ptr::null_mut();
        assert_eq!(sqz_service_config_new(&mut cfg), SQZ_OK);
        assert_eq!(sqz_service_config_set_lock_path(cfg, lock.as_ptr()), SQZ_OK);
        assert_eq!(sqz_service_config_set_balance_interval(cfg, 0.01), SQZ_OK);
        let t = table(&ctx);
        let mut svc = std::ptr::null_mut();
        assert_eq!(sqz_service_new_platform(&t, cfg, &mut svc), SQZ_OK);
        sqz_service_config_free(cfg);
        svc
    };
    ctx.lock().unwrap().gate = Some(gate.clone());
    // SAFETY: svc is live.
    assert_eq!(unsafe { sqz_service_start_balancer(svc) }, SQZ_OK);
    // The balancer's first pass stops in the gate, inside a domain listing.
    {
        let mut st = gate.state.lock().unwrap();
        while !st.0 {
            st = gate.changed.wait(st).unwrap();
        }
    }
    let svc_addr = svc as usize;
    let freer_gate = gate.clone();
    let freer = std::thread::spawn(move || {
        // SAFETY: the service is live and given up here.
        unsafe { sqz_service_free(svc_addr as *mut sqz_service) };
        freer_gate.freed.store(true, Ordering::SeqCst);
    });
    // A free that does not wait for the pass returns at once; give it that chance (a correct
    // free cannot return before the gate opens, so this waits the full second), then let the
    // pass go on. It has more callbacks to make: at least the rest of this listing.
    for _ in 0..100 {
        if gate.freed.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    {
        let mut st = gate.state.lock().unwrap();
        st.1 = true;
        gate.changed.notify_all();
    }
    freer.join().unwrap();
    assert!(gate.freed.load(Ordering::SeqCst));
    // Anything still running would call within a few balance intervals (10 ms each).
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        gate.calls_after_free.load(Ordering::SeqCst),
        0,
        "platform callbacks made after sqz_service_free returned"
    );
}

#[cfg(not(feature = "xen"))]
#[test]
fn a_library_built_without_xen_says_so_when_asked_for_a_xen_service() {
    let mut svc: *mut sqz_service = std::ptr::null_mut();
    // SAFETY: a NULL config (defaults) and a valid out-pointer.
    let st = unsafe { sqz_service_new_xen(std::ptr::null(), &mut svc) };
    assert_eq!(st, SQZ_ERR_UNSUPPORTED);
    assert!(svc.is_null());
    assert!(
        last_message().contains("built without Xen support"),
        "{}",
        last_message()
    );
    // SAFETY: NULL out-pointer is refused before anything else.
    let st = unsafe { sqz_service_new_xen(std::ptr::null(), std::ptr::null_mut()) };
    assert_eq!(st, SQZ_ERR_INVALID_ARGUMENT);
}
