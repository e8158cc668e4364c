//! Per-domain weights in the proportional policy, through the C ABI (a weight set on the host
//! snapshot) and through the host model (`memory/weight` in the store).

mod common;

use std::ffi::{c_void, CStr};

use common::{booted_guest, setup, small_host, store_target_kib, GIB, MIB};
use squeeze::backend::fake::GuestSpec;
use squeeze::ffi::*;
use squeeze::service::ServiceConfig;
use squeeze::Policy;

/// Two guests of 1..3 GiB at 1 GiB, with the given weights (None: not set), and a host with
/// 1 GiB free above the 64 MiB slush.
struct Host {
    doms: Vec<sqz_domain>,
    weights: Vec<Option<f64>>,
    /// Set a weight on a domain the snapshot does not have.
    weight_unknown_domain: bool,
    free_kib: i64,
    time: f64,
}

fn host(ctx: *mut c_void) -> &'static mut Host {
    // SAFETY: ctx is the &mut Host the test passed in, alive for the whole call.
    unsafe { &mut *ctx.cast::<Host>() }
}

unsafe extern "C" fn make_host(ctx: *mut c_void, b: *mut sqz_host_builder) -> i32 {
    let h = host(ctx);
    for (d, w) in h.doms.iter().zip(&h.weights) {
        // SAFETY: b is the live builder; d is a valid sqz_domain.
        if unsafe { sqz_host_builder_add_domain(b, d, std::mem::size_of::<sqz_domain>()) } != 0 {
            return -1;
        }
        if let Some(w) = *w {
            // SAFETY: b is the live builder.
            if unsafe { sqz_host_builder_set_weight(b, d.domid, w) } != 0 {
                return -1;
            }
        }
    }
    if h.weight_unknown_domain {
        // SAFETY: b is the live builder.
        if unsafe { sqz_host_builder_set_weight(b, 99, 2.0) } != 0 {
            return -1;
        }
    }
    // SAFETY: b is the live builder.
    unsafe { sqz_host_builder_set_free_mem(b, h.free_kib) }
}

unsafe extern "C" fn set_maxmem(ctx: *mut c_void, domid: i32, kib: i64) -> i32 {
    match host(ctx).doms.iter_mut().find(|d| d.domid == domid) {
        Some(d) => {
            d.memory_max_kib = kib;
            0
        }
        None => -1,
    }
}

unsafe extern "C" fn execute_action(ctx: *mut c_void, domid: i32, target: i64) -> i32 {
    match host(ctx).doms.iter_mut().find(|d| d.domid == domid) {
        Some(d) => {
            d.target_kib = target;
            d.memory_max_kib = d.memory_max_kib.max(target);
            0
        }
        None => -1,
    }
}

/// Balloon drivers move 1 GiB per simulated second, never taking memory the host lacks.
unsafe extern "C" fn wait(ctx: *mut c_void, seconds: f64) {
    let h = host(ctx);
    h.time += seconds;
    for d in &mut h.doms {
        let step = (GIB as f64 * seconds) as i64;
        let gap = d.target_kib - d.memory_actual_kib;
        let mv = gap.clamp(-step, step).min(h.free_kib);
        d.memory_actual_kib += mv;
        h.free_kib -= mv;
    }
}

unsafe extern "C" fn now(ctx: *mut c_void) -> f64 {
    host(ctx).time
}

fn two_guests(weights: [Option<f64>; 2]) -> Host {
    let d = |domid| sqz_domain {
        domid,
        can_balloon: true,
        dynamic_min_kib: GIB,
        target_kib: GIB,
        dynamic_max_kib: 3 * GIB,
        memory_actual_kib: GIB,
        memory_max_kib: GIB,
        inaccuracy_kib: 4,
    };
    Host {
        doms: vec![d(1), d(2)],
        weights: weights.to_vec(),
        weight_unknown_domain: false,
        free_kib: GIB + 64 * MIB,
        time: 0.0,
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
        target_host_free_mem_kib: 64 * MIB,
        free_memory_tolerance_kib: 512,
    }
}

fn last_message() -> String {
    // SAFETY: valid until the next sqz_ call on this thread; copied at once.
    unsafe { CStr::from_ptr(sqz_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn targets(h: &Host) -> Vec<i64> {
    h.doms.iter().map(|d| d.target_kib).collect()
}

#[test]
fn weights_1_and_3_split_a_gib_256_to_768_mib_through_the_c_abi() {
    let mut h = two_guests([Some(1.0), Some(3.0)]);
    let table = io(&mut h);
    // SAFETY: a valid table whose ctx outlives the call; NULL options are the defaults.
    assert_eq!(unsafe { sqz_balance_memory(&table, std::ptr::null()) }, 0);
    // The surplus is 1 GiB less the 16 KiB held back for the drivers' inaccuracy (2 × 4 KiB
    // per guest), split 1:3.
    assert_eq!(targets(&h), vec![GIB + 256 * MIB - 4, GIB + 768 * MIB - 12]);
}

#[test]
fn equal_weights_through_the_c_abi_are_exactly_no_weights() {
    let mut plain = two_guests([None, None]);
    let mut equal = two_guests([Some(2.0), Some(2.0)]);
    for h in [&mut plain, &mut equal] {
        let table = io(h);
        // SAFETY: as above.
        assert_eq!(unsafe { sqz_balance_memory(&table, std::ptr::null()) }, 0);
    }
    // Each gets half of the 1 GiB surplus, less 16 KiB held back for inaccuracy.
    assert_eq!(targets(&plain), vec![GIB + 512 * MIB - 8; 2]);
    assert_eq!(targets(&equal), targets(&plain));
}

#[test]
fn bad_weights_are_refused_by_the_builder_and_nothing_is_changed() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
        let mut h = two_guests([Some(1.0), Some(bad)]);
        let table = io(&mut h);
        // SAFETY: as above.
        let status = unsafe { sqz_balance_memory(&table, std::ptr::null()) };
        assert_eq!(status, SQZ_ERR_BACKEND, "weight {bad}");
        let msg = last_message();
        assert!(
            msg.contains("make_host") && msg.contains("domain 2: weight"),
            "weight {bad}: {msg}"
        );
        assert_eq!(targets(&h), vec![GIB, GIB], "weight {bad}");
    }
    let mut h = two_guests([None, None]);
    h.weight_unknown_domain = true;
    let table = io(&mut h);
    // SAFETY: as above.
    let status = unsafe { sqz_balance_memory(&table, std::ptr::null()) };
    assert_eq!(status, SQZ_ERR_BACKEND);
    assert!(last_message().contains("domain 99"), "{}", last_message());
    // Outside make_host there is no live builder to weigh.
    // SAFETY: NULL is refused before any dereference.
    assert_eq!(
        unsafe { sqz_host_builder_set_weight(std::ptr::null_mut(), 1, 1.0) },
        SQZ_ERR_INVALID_ARGUMENT
    );
}

/// Two guests of 512 MiB..2.5 GiB at 512 MiB on the 4 GiB fake host: 2 GiB free, so
/// 2 GiB − 72 MiB of slush = 1976 MiB to hand out.
fn weighted_fake_host(
    policy: Policy,
    weights: [Option<&str>; 2],
) -> (
    tempfile::TempDir,
    squeeze::backend::fake::FakeHost,
    squeeze::service::Service,
    [i32; 2],
) {
    let (dir, fake, _) = setup(small_host());
    let config = ServiceConfig {
        policy,
        ..common::config(dir.path())
    };
    let service = squeeze::service::Service::new(fake.platform(), config).unwrap();
    let spec = GuestSpec {
        target_kib: 512 * MIB,
        ..GuestSpec::ballooning(512 * MIB, 2560 * MIB)
    };
    let domids = [booted_guest(&fake, spec), booted_guest(&fake, spec)];
    for (domid, w) in domids.iter().zip(weights) {
        if let Some(w) = w {
            fake.platform()
                .store
                .transaction(&mut |t| t.write(&format!("/local/domain/{domid}/memory/weight"), w))
                .unwrap();
        }
    }
    (dir, fake, service, domids)
}

#[test]
fn memory_weight_in_the_store_splits_the_surplus_1_to_3_with_either_policy() {
    for policy in [Policy::Classic, Policy::Adaptive] {
        let (_dir, fake, service, [light, heavy]) =
            weighted_fake_host(policy, [Some("1"), Some("3")]);
        service.balance_memory().unwrap();
        // 1976 MiB split 1:3: 494 MiB and 1482 MiB above the 512 MiB minimum, less the 16 KiB
        // held back for the drivers' inaccuracy (2 × 4 KiB per guest), also split 1:3.
        assert_eq!(store_target_kib(&fake, light), 1006 * MIB - 4, "{policy:?}");
        assert_eq!(
            store_target_kib(&fake, heavy),
            1994 * MIB - 12,
            "{policy:?}"
        );
        let view = service.host_view().unwrap();
        let heavy_view = view.domains.iter().find(|v| v.domid == heavy).unwrap();
        assert_eq!(heavy_view.domain.unwrap().weight.get(), 3.0);
        assert_eq!(heavy_view.weight_error, None);
        assert!(fake.snapshot().unwrap().violations.is_empty());
        assert!(fake.domain(heavy).unwrap().unwrap().tot_kib() <= 1994 * MIB + MIB);
    }
}

#[test]
fn a_bad_memory_weight_is_ignored_and_reported_not_obeyed() {
    for bad in ["0", "-2", "NaN", "inf", "1e9", "heavy"] {
        let (_dir, fake, service, [light, heavy]) =
            weighted_fake_host(Policy::Classic, [None, Some(bad)]);
        service.balance_memory().unwrap();
        // Both weigh 1: 988 MiB each above the minimum (less 8 KiB for inaccuracy).
        assert_eq!(store_target_kib(&fake, light), 1500 * MIB - 8, "{bad}");
        assert_eq!(store_target_kib(&fake, heavy), 1500 * MIB - 8, "{bad}");
        let view = service.host_view().unwrap();
        let v = view.domains.iter().find(|v| v.domid == heavy).unwrap();
        let why = v.weight_error.as_deref().unwrap_or_default();
        assert!(why.contains("weight"), "{bad}: {why:?}");
        assert!(service.get_diagnostics().unwrap().contains("weight_error"));
    }
}
