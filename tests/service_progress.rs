//! A reservation that waits for ballooning: progress reports, and cancellation from another
//! thread that leaves neither the ledger nor host memory holding a half-made reservation.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc;

use common::*;
use squeeze::backend::fake::GuestSpec;
use squeeze::backend::sim::Behaviour;
use squeeze::progress::{CancelToken, Progress, ReserveOptions};
use squeeze::Error;

/// A guest of 512 MiB..2 GiB booted at 2 GiB whose balloon driver gives 16 MiB/s: with 1 GiB
/// free, reserving 1.5 GiB (plus the 72 MiB slush) needs 584 MiB from it, about 37 s of waits.
fn host_with_slow_guest() -> (
    tempfile::TempDir,
    squeeze::backend::fake::FakeHost,
    squeeze::service::Service,
    i32,
) {
    let (dir, fake, service) = setup(small_host());
    let g = booted_guest(
        &fake,
        GuestSpec {
            behaviour: Behaviour::Ideal {
                rate_kib_per_s: 16 * MIB,
            },
            ..GuestSpec::ballooning(512 * MIB, 2 * GIB)
        },
    );
    assert_eq!(fake.snapshot().unwrap().free_kib, GIB);
    (dir, fake, service, g)
}

#[test]
fn progress_counts_up_to_what_is_needed_and_the_reservation_is_made() {
    let (_dir, fake, service, _g) = host_with_slow_guest();
    let mut seen: Vec<Progress> = Vec::new();
    let id = service
        .reserve_memory_with(
            "xenopsd",
            3 * GIB / 2,
            ReserveOptions::default().with_progress(|p| {
                seen.push(*p);
                ControlFlow::Continue(())
            }),
        )
        .unwrap();
    assert!(!id.is_empty());
    // 1.5 GiB + 72 MiB asked, 1 GiB free at the start: 584 MiB needed, reported every wait.
    assert!(seen.len() >= 10, "{} reports", seen.len());
    assert!(seen.iter().all(|p| p.needed_kib == 584 * MIB));
    assert_eq!(
        seen[0].freed_kib, 0,
        "nothing is freed before the first wait"
    );
    assert_eq!(
        seen[0].eta_s, None,
        "no speed is known before anything moved"
    );
    for w in seen.windows(2) {
        assert!(w[1].freed_kib >= w[0].freed_kib, "{w:?}");
        assert!(w[1].elapsed_s > w[0].elapsed_s, "{w:?}");
    }
    let last = seen.last().unwrap();
    assert!(
        last.freed_kib > 500 * MIB && last.freed_kib <= 584 * MIB,
        "{last:?}"
    );
    // At 16 MiB/s the estimate for what is left is a few seconds at most.
    let eta = last.eta_s.unwrap();
    assert!((0.0..=10.0).contains(&eta), "{last:?}");
    assert_eq!(books(&fake.snapshot().unwrap()).reserved, 3 * GIB / 2);
}

#[test]
fn a_reservation_cancelled_from_another_thread_leaves_the_ledger_and_host_memory_clean() {
    let (_dir, fake, service, g) = host_with_slow_guest();
    let token = CancelToken::new();
    let (waiting_tx, waiting_rx) = mpsc::channel::<()>();
    let (cancelled_tx, cancelled_rx) = mpsc::channel::<()>();

    // Another thread cancels once the reservation has waited for the guest a few times.
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            waiting_rx.recv().unwrap();
            token.cancel();
            cancelled_tx.send(()).unwrap();
        })
    };
    let mut reports = 0;
    let result = service.reserve_memory_with(
        "xenopsd",
        3 * GIB / 2,
        ReserveOptions::default()
            .with_cancel(token.clone())
            .with_progress(|p| {
                reports += 1;
                if reports == 3 {
                    assert!(p.freed_kib > 0 && p.freed_kib < p.needed_kib, "{p:?}");
                    waiting_tx.send(()).unwrap();
                    // Go on only once the other thread has cancelled, so the test does not
                    // depend on timing.
                    cancelled_rx.recv().unwrap();
                }
                ControlFlow::Continue(())
            }),
    );
    canceller.join().unwrap();
    assert_eq!(result, Err(Error::Cancelled));
    // Stopped at the first check after the cancel: within the next wait.
    assert_eq!(reports, 3);

    // Nothing in the ledger, nothing counted against the host.
    let s = fake.snapshot().unwrap();
    assert!(s.directory("/squeezed/state/xenopsd").is_empty());
    let b = books(&s);
    assert_eq!(b.reserved, 0);
    let view = service.host_view().unwrap();
    assert_eq!(view.reserved_kib, 0);
    assert!(view.reservations.is_empty());
    // What the guest gave so far is free, and a balancing pass gives it back.
    assert!(b.free() > GIB, "{b:?}");
    service.balance_memory().unwrap();
    for _ in 0..120 {
        fake.advance(1.0).unwrap();
    }
    service.balance_memory().unwrap();
    let b = books(&fake.snapshot().unwrap());
    assert!(b.free() >= SLUSH && b.free() < GIB + MIB, "{b:?}");
    let d = squeeze::Domain::clone(
        &service
            .host_view()
            .unwrap()
            .domains
            .iter()
            .find(|d| d.domid == g)
            .unwrap()
            .domain
            .unwrap(),
    );
    assert_eq!(d.target_kib, 2 * GIB, "the guest got its memory back");

    // The diagnostics tell the story.
    let doc: serde_json::Value = serde_json::from_str(&service.get_diagnostics().unwrap()).unwrap();
    assert_eq!(doc["counters"]["reservations_cancelled"], 1);
    assert_eq!(doc["counters"]["reservations_made"], 0);

    // The session still works: the same reservation, not cancelled, succeeds.
    service.reserve_memory("xenopsd", 3 * GIB / 2).unwrap();
    assert_eq!(books(&fake.snapshot().unwrap()).reserved, 3 * GIB / 2);
}

#[test]
fn a_token_cancelled_before_the_call_reserves_nothing() {
    let (_dir, fake, service, _g) = host_with_slow_guest();
    let token = CancelToken::new();
    token.cancel();
    let r = service.reserve_memory_range_with(
        "xenopsd",
        GIB,
        3 * GIB / 2,
        ReserveOptions::default().with_cancel(token),
    );
    assert_eq!(r, Err(Error::Cancelled));
    assert_eq!(books(&fake.snapshot().unwrap()).reserved, 0);
    assert_eq!(fake.snapshot().unwrap().free_kib, GIB, "no guest was asked");
}

#[test]
fn a_progress_callback_that_stops_or_panics_ends_the_reservation_cleanly() {
    let (_dir, fake, service, _g) = host_with_slow_guest();
    let r = service.reserve_memory_with(
        "xenopsd",
        3 * GIB / 2,
        ReserveOptions::default().with_progress(|_| ControlFlow::Break(())),
    );
    assert_eq!(r, Err(Error::Cancelled));
    assert_eq!(books(&fake.snapshot().unwrap()).reserved, 0);

    let r = service.reserve_memory_range_with(
        "xenopsd",
        3 * GIB / 2,
        3 * GIB / 2,
        ReserveOptions::default().with_progress(|p| {
            assert!(p.needed_kib > 0);
            panic!("a bug in the caller's callback")
        }),
    );
    match r {
        Err(Error::Backend(m)) => assert!(m.contains("panicked"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(books(&fake.snapshot().unwrap()).reserved, 0);
    // The service is still usable: the host lock was released.
    service.reserve_memory("xenopsd", 3 * GIB / 2).unwrap();
}

#[test]
fn a_reservation_that_needs_no_ballooning_reports_no_progress() {
    let (_dir, _fake, service, _g) = host_with_slow_guest();
    let mut reports = 0;
    service
        .reserve_memory_with(
            "xenopsd",
            512 * MIB,
            ReserveOptions::default().with_progress(|_| {
                reports += 1;
                ControlFlow::Continue(())
            }),
        )
        .unwrap();
    assert_eq!(reports, 0);
}
