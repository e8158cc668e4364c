//! Xen's scrubber and the host lock: pages a destroyed domain left to scrub count as free, but
//! nothing can allocate them until they are scrubbed, so a reservation or a balance waits for
//! the scrubber before deciding (up to `scrub_wait_s`, 30 s), as squeezed does. squeezed, and
//! this library before, waited inside the look, holding the host lock, so every other caller on
//! the host waited as long as the scrubber took; the waits now happen between rounds, with the
//! lock free. Times are the fake host's simulated seconds.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::platform::{Clock, Platform};
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Policy};

/// The service's clock, recording every sleep: how long, and whether the host lock was held
/// while it slept (by this process or another: the lock file is probed as another process
/// would take it).
struct LockProbe {
    inner: Arc<dyn Clock>,
    lock_path: PathBuf,
    sleeps: parking_lot::Mutex<Vec<Sleep>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sleep {
    seconds: f64,
    lock_held: bool,
}

impl LockProbe {
    fn new(inner: Arc<dyn Clock>, lock_path: &Path) -> Arc<Self> {
        Arc::new(LockProbe {
            inner,
            lock_path: lock_path.to_path_buf(),
            sleeps: parking_lot::Mutex::default(),
        })
    }

    /// The sleeps recorded since the last call.
    fn take(&self) -> Vec<Sleep> {
        std::mem::take(&mut *self.sleeps.lock())
    }
}

/// Whether someone holds the lock file: a try-lock from a descriptor of our own, released at
/// once.
fn lock_held(path: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            flock(&f, FlockOperation::Unlock).unwrap();
            false
        }
        Err(_) => true,
    }
}

impl Clock for LockProbe {
    fn now(&self) -> f64 {
        self.inner.now()
    }

    fn sleep(&self, seconds: f64) {
        let lock_held = lock_held(&self.lock_path);
        self.sleeps.lock().push(Sleep { seconds, lock_held });
        self.inner.sleep(seconds);
    }
}

/// A 4 GiB host (3 GiB free, domain 0 holding 1 GiB) with a 512 MiB..1.5 GiB guest at 1.5 GiB,
/// so 1.5 GiB free, of which the scrubber holds `scrub_kib`, returned over `scrub_s`.
struct Scrubbing {
    _dir: tempfile::TempDir,
    fake: FakeHost,
    probe: Arc<LockProbe>,
    service: Service,
    guest: DomId,
    /// When the scrubbing started.
    t0: f64,
}

fn scrubbing(
    policy: Policy,
    scrub_kib: squeeze::Kib,
    scrub_s: f64,
    clock: impl FnOnce(&FakeHost) -> Arc<dyn Clock>,
) -> Scrubbing {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 1536 * MIB));
    let cfg = ServiceConfig {
        policy,
        // On the old code another caller waits for the lock in real time while the holder
        // sleeps in simulated time: give up soon rather than hang.
        lock_timeout_s: 5.0,
        ..config(dir.path())
    };
    let probe = LockProbe::new(clock(&fake), &cfg.lock_path);
    let platform = Platform {
        clock: probe.clone(),
        ..fake.platform()
    };
    let service = Service::new(platform, cfg).unwrap();
    service.login("xl").unwrap();
    // Recording host free memory at boot slept between its samples.
    probe.take();
    fake.scrub_over(scrub_kib, scrub_s).unwrap();
    let t0 = fake.now_s();
    Scrubbing {
        _dir: dir,
        fake,
        probe,
        service,
        guest,
        t0,
    }
}

fn plain_clock(fake: &FakeHost) -> Arc<dyn Clock> {
    Arc::new(fake.clone())
}

fn assert_never_slept_holding_the_lock(sleeps: &[Sleep]) {
    let held: Vec<_> = sleeps.iter().filter(|s| s.lock_held).collect();
    assert!(
        held.is_empty(),
        "{} of {} sleeps held the host lock: {held:?}",
        held.len(),
        sleeps.len()
    );
}

#[test]
fn a_look_at_the_host_while_the_scrubber_works_does_not_wait_for_it() {
    let h = scrubbing(Policy::Classic, GIB, 2.0, plain_clock);
    let v = h.service.host_view().unwrap();
    // Before, the look slept until the scrubber was done: 2 s.
    assert_eq!(h.fake.now_s(), h.t0);
    assert!(h.probe.take().is_empty());
    assert!(v.scrubbing);
    assert_eq!((v.xen_free_kib, v.scrub_kib), (512 * MIB, GIB));
    // Pages to scrub count as free, as squeezed counts them.
    assert_eq!(v.free_kib, 1536 * MIB);
    let d = h.service.diagnostics().unwrap();
    assert_eq!(h.fake.now_s(), h.t0);
    assert_eq!(d.host.scrub_kib, GIB);

    // Under 4 MiB to scrub is not scrubbing.
    h.fake.advance(2.0).unwrap();
    let v = h.service.host_view().unwrap();
    assert!(!v.scrubbing);
    assert_eq!((v.xen_free_kib, v.scrub_kib), (1536 * MIB, 0));
}

#[test]
fn another_caller_is_served_at_once_while_a_reservation_waits_for_the_scrubber() {
    // 768 MiB to scrub at 256 MiB/s. A reservation of 1 GiB (Xen has 768 MiB free) waits for
    // the scrubber; 1.125 s in, another thread asks for the diagnostics.
    let mut shared = None;
    let h = scrubbing(Policy::Classic, 768 * MIB, 3.0, |fake| {
        let time = SharedTime::new(fake);
        shared = Some(time.clone());
        time
    });
    let time = shared.unwrap();
    let (p_reserver, p_other) = (time.participant(), time.participant());
    let reserver = {
        let service = h.service.clone();
        std::thread::spawn(move || {
            p_reserver.enter();
            let r = service.reserve_memory("xl", GIB);
            drop(p_reserver);
            r
        })
    };
    let other = {
        let (service, fake, time) = (h.service.clone(), h.fake.clone(), time.clone());
        std::thread::spawn(move || {
            p_other.enter();
            time.sleep(1.125);
            let asked = fake.now_s();
            let d = service.diagnostics();
            let waited = fake.now_s() - asked;
            drop(p_other);
            (d, asked, waited)
        })
    };
    let (d, asked, waited) = other.join().unwrap();
    let id = reserver.join().unwrap();

    // Before, the reservation slept in its look with the lock held: the diagnostics waited for
    // it in real time while simulated time stood still, and gave up after lock_timeout_s.
    let d = d.unwrap();
    assert_eq!(asked - h.t0, 1.125);
    assert_eq!(waited, 0.0);
    // 768 MiB − 1.125 s × 256 MiB/s still to scrub; the reservation waits as pending.
    assert_eq!(d.host.scrub_kib, 480 * MIB);
    assert_eq!(d.pending.len(), 1);
    assert_eq!(d.pending[0].need_kib, GIB);

    // The scrubber was done at 3 s; 1 GiB was there without touching the guest.
    id.unwrap();
    assert_eq!(h.fake.now_s() - h.t0, 3.0);
    assert_eq!(store_target_kib(&h.fake, h.guest), 1536 * MIB);
    let sleeps = h.probe.take();
    assert_never_slept_holding_the_lock(&sleeps);
    assert_eq!(sleeps.len(), 12, "a look every 0.25 s for 3 s: {sleeps:?}");
}

#[test]
fn a_reservation_made_while_1_gib_is_scrubbed_does_not_shrink_the_guest() {
    for policy in [Policy::Classic, Policy::Adaptive] {
        // 512 MiB free and 1 GiB to scrub, at 512 MiB/s; 1 GiB + the 72 MiB slush wanted.
        let h = scrubbing(policy, GIB, 2.0, plain_clock);
        h.service.reserve_memory("xl", GIB).unwrap();
        // Granted once the scrubber was done, from the memory it returned: the guest's target
        // was never touched (ballooning it for 584 MiB would have taken 6 s at 100 MiB/s).
        assert_eq!(h.fake.now_s() - h.t0, 2.0, "{policy:?}");
        assert_eq!(store_target_kib(&h.fake, h.guest), 1536 * MIB, "{policy:?}");
        let d = h.service.diagnostics().unwrap();
        let decision = d.last_decision.unwrap();
        assert!(decision.target_changes.is_empty(), "{policy:?}");
        let sleeps = h.probe.take();
        assert_never_slept_holding_the_lock(&sleeps);
        assert_eq!(
            sleeps,
            vec![
                Sleep {
                    seconds: 0.25,
                    lock_held: false
                };
                8
            ],
            "{policy:?}"
        );
        let v = h.service.host_view().unwrap();
        assert_eq!((v.xen_free_kib, v.reserved_kib), (1536 * MIB, GIB));
        assert!(h.fake.snapshot().unwrap().violations.is_empty());
    }
}

#[test]
fn a_scrubber_that_never_finishes_delays_a_reservation_by_scrub_wait_s_only() {
    // 1 GiB stuck in the scrubber; 512 MiB free.
    let h = scrubbing(Policy::Classic, GIB, f64::INFINITY, plain_clock);
    h.service.reserve_memory("xl", GIB).unwrap();
    // After 30 s (scrub_wait_s) the round decided as squeezed does after its wait: the pages
    // to scrub count as free, 1.5 GiB in all, enough without ballooning.
    assert_eq!(h.fake.now_s() - h.t0, 30.0);
    assert_eq!(store_target_kib(&h.fake, h.guest), 1536 * MIB);
    let sleeps = h.probe.take();
    assert_never_slept_holding_the_lock(&sleeps);
    assert_eq!(sleeps.len(), 120, "a look every 0.25 s for 30 s");
    let v = h.service.host_view().unwrap();
    assert!(v.scrubbing);
    assert_eq!(v.free_kib, 512 * MIB);
}

#[test]
fn a_scrub_wait_of_0_decides_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 1536 * MIB));
    let mut cfg = classic_config(dir.path());
    cfg.host.scrub_wait_s = 0.0;
    let service = Service::new(fake.platform(), cfg).unwrap();
    fake.scrub_over(GIB, f64::INFINITY).unwrap();
    let t0 = fake.now_s();
    service.reserve_memory("xl", GIB).unwrap();
    assert_eq!(fake.now_s(), t0);
    assert_eq!(store_target_kib(&fake, guest), 1536 * MIB);
}

#[test]
fn a_balance_hands_memory_back_only_once_it_is_scrubbed_and_waits_with_the_lock_free() {
    // The guest is at 1 GiB of its 512 MiB..2.5 GiB: 2 GiB free, 1 GiB of it to scrub over 2 s.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let guest = booted_guest(
        &fake,
        GuestSpec {
            target_kib: GIB,
            ..GuestSpec::ballooning(512 * MIB, 2560 * MIB)
        },
    );
    let cfg = classic_config(dir.path());
    let probe = LockProbe::new(Arc::new(fake.clone()), &cfg.lock_path);
    let platform = Platform {
        clock: probe.clone(),
        ..fake.platform()
    };
    let service = Service::new(platform, cfg).unwrap();
    probe.take();
    fake.scrub_over(GIB, 2.0).unwrap();

    service.balance_memory().unwrap();
    let sleeps = probe.take();
    assert_never_slept_holding_the_lock(&sleeps);
    // Eight looks 0.25 s apart while the scrubber worked, then squeezed's rounds.
    assert!(sleeps.len() > 8, "{sleeps:?}");
    assert!(sleeps[..8].iter().all(|s| s.seconds == 0.25), "{sleeps:?}");
    assert_ne!(sleeps[8].seconds, 0.25, "{sleeps:?}");
    // The guest got everything up to its 2.5 GiB max: 512 MiB stays free, and the 4 KiB its
    // driver stops short of the target.
    assert_eq!(store_target_kib(&fake, guest), 2560 * MIB);
    let s = fake.snapshot().unwrap();
    assert_eq!((s.free_kib, s.scrub_kib), (512 * MIB + 4, 0));
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}
