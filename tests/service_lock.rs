//! The host lock seen from a caller that has to wait for it: a cancel ends the wait, and a
//! holder that never lets go (a hung process) blocks the others for a bounded time only.

mod common;

use std::fs::OpenOptions;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use squeeze::platform::Clock;
use squeeze::progress::{CancelToken, ReserveOptions};
use squeeze::service::{Service, ServiceConfig};
use squeeze::Error;

/// Holds the lock file as another process would: its own open file, locked exclusively.
fn hold_lock(path: &std::path::Path) -> std::fs::File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    f
}

/// Reserves 256 MiB on another thread with `cancel`; the result comes back on the channel.
fn reserve_in_background(
    service: &Service,
    cancel: CancelToken,
) -> mpsc::Receiver<squeeze::Result<String>> {
    let (tx, rx) = mpsc::channel();
    let service = service.clone();
    std::thread::spawn(move || {
        let r = service.reserve_memory_with(
            "xenopsd",
            256 * MIB,
            ReserveOptions::default().with_cancel(cancel),
        );
        let _ = tx.send(r);
    });
    rx
}

/// A reservation of `kib` for `session` on another thread, stopped inside the host lock after
/// freeing its memory (at the `reserve:freed` fault point) until [`LockHolder::release`].
struct LockHolder {
    leave: Arc<Barrier>,
    thread: std::thread::JoinHandle<squeeze::Result<String>>,
}

impl LockHolder {
    /// Starts the reservation and returns once it holds the lock.
    fn start(service: &Service, session: &str, kib: squeeze::Kib) -> LockHolder {
        let inside = Arc::new(Barrier::new(2));
        let leave = Arc::new(Barrier::new(2));
        {
            let (inside, leave) = (inside.clone(), leave.clone());
            service.set_fault_hook(Some(Arc::new(move |point: &str| {
                if point == "reserve:freed" {
                    inside.wait();
                    leave.wait();
                }
            })));
        }
        let thread = {
            let (service, session) = (service.clone(), session.to_string());
            std::thread::spawn(move || service.reserve_memory(&session, kib))
        };
        inside.wait();
        LockHolder { leave, thread }
    }

    /// Lets the reservation go on and returns what it returned.
    fn release(self) -> squeeze::Result<String> {
        self.leave.wait();
        self.thread.join().unwrap()
    }
}

#[test]
fn a_reservation_waiting_for_a_hung_process_s_lock_is_cancelled_and_reserves_nothing() {
    let (dir, fake, service) = setup(small_host());
    service.login("xenopsd").unwrap();
    let free_before = fake.snapshot().unwrap().free_kib;
    let held = hold_lock(&dir.path().join("host.lock"));
    let cancel = CancelToken::new();
    let result = reserve_in_background(&service, cancel.clone());
    // Still waiting: the lock is held and nothing else can end the wait yet.
    assert!(result.recv_timeout(Duration::from_millis(200)).is_err());
    cancel.cancel();
    // A generous margin for a loaded machine; the wait polls every 20 ms at most.
    let r = result
        .recv_timeout(Duration::from_secs(10))
        .expect("the cancelled reservation still waits for the lock");
    assert_eq!(r, Err(Error::Cancelled));
    drop(held);
    assert_eq!(service.get_host_reserved_memory(), SLUSH);
    assert_eq!(fake.snapshot().unwrap().free_kib, free_before);
    // The lock released, the next reservation goes through.
    let r = reserve_in_background(&service, CancelToken::new());
    assert!(r.recv_timeout(Duration::from_secs(10)).unwrap().is_ok());
}

#[test]
fn a_reservation_waiting_for_another_thread_of_its_process_is_cancelled() {
    let (_dir, _fake, service) = setup(small_host());
    service.login("xenopsd").unwrap();
    service.login("xl").unwrap();
    // The first reservation stops inside the host lock, after freeing its memory.
    let first = LockHolder::start(&service, "xl", 128 * MIB);
    let cancel = CancelToken::new();
    let second = reserve_in_background(&service, cancel.clone());
    assert!(second.recv_timeout(Duration::from_millis(200)).is_err());
    cancel.cancel();
    let r = second
        .recv_timeout(Duration::from_secs(10))
        .expect("the cancelled reservation still waits for the other thread");
    assert_eq!(r, Err(Error::Cancelled));
    assert!(first.release().is_ok());
}

#[test]
fn a_lock_held_past_the_lock_timeout_fails_the_call_naming_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    let config = ServiceConfig {
        lock_timeout_s: 0.3,
        ..config(dir.path())
    };
    let service = Service::new(fake.platform(), config).unwrap();
    let lock = dir.path().join("host.lock");
    let held = hold_lock(&lock);
    let (tx, rx) = mpsc::channel();
    {
        let service = service.clone();
        std::thread::spawn(move || {
            let _ = tx.send(service.login("xenopsd"));
        });
    }
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the call waited past its lock timeout");
    match r {
        Err(Error::Backend(why)) => {
            assert!(why.contains("host lock"), "{why}");
            assert!(why.contains(&lock.display().to_string()), "{why}");
            assert!(why.contains("0.3 s"), "{why}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    drop(held);
    assert_eq!(service.login("xenopsd"), Ok("xenopsd".to_string()));
}

#[test]
fn a_lock_timeout_that_is_not_a_positive_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 86_401.0] {
        let config = ServiceConfig {
            lock_timeout_s: bad,
            ..config(dir.path())
        };
        assert!(
            matches!(
                Service::new(fake.platform(), config),
                Err(Error::InvalidArgument(_))
            ),
            "{bad}"
        );
    }
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn service_with_lock(dir: &std::path::Path, lock: std::path::PathBuf) -> Service {
    let fake = squeeze::backend::fake::FakeHost::in_memory(small_host()).unwrap();
    let config = ServiceConfig {
        lock_path: lock,
        ..config(dir)
    };
    Service::new(fake.platform(), config).unwrap()
}

#[test]
fn the_lock_file_and_the_directories_made_for_it_are_private_to_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("run/squeeze/host.lock");
    let service = service_with_lock(dir.path(), lock.clone());
    service.login("xenopsd").unwrap();
    assert_eq!(mode(&dir.path().join("run")), 0o700);
    assert_eq!(mode(&dir.path().join("run/squeeze")), 0o700);
    assert_eq!(mode(&lock), 0o600);
}

#[test]
fn a_lock_file_left_readable_by_everyone_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("host.lock");
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let service = service_with_lock(dir.path(), lock.clone());
    service.login("xenopsd").unwrap();
    assert_eq!(mode(&lock), 0o600);
}

#[test]
fn a_lock_file_owned_by_another_user_is_refused() {
    let me = rustix::process::geteuid().as_raw();
    if me != 0 {
        // Only root can give a file to another user; nothing to check as anyone else.
        eprintln!("skipped: needs root to make a file owned by another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("host.lock");
    std::fs::write(&lock, b"").unwrap();
    // 65534: nobody.
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    let service = service_with_lock(dir.path(), lock.clone());
    match service.login("xenopsd") {
        Err(Error::Backend(why)) => {
            assert!(why.contains("belongs to user 65534"), "{why}");
            assert!(why.contains(&lock.display().to_string()), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_lock_path_that_is_a_symbolic_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"").unwrap();
    let lock = dir.path().join("host.lock");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let service = service_with_lock(dir.path(), lock);
    assert!(matches!(
        service.login("xenopsd"),
        Err(Error::Backend(why)) if why.contains("host.lock")
    ));
}

#[test]
fn a_query_does_not_wait_for_a_reservation_holding_the_host_lock() {
    let (_dir, fake, service) = setup(small_host());
    service.login("xenopsd").unwrap();
    service.login("xl").unwrap();
    // A reservation and a transfer to domain 1, done before.
    let domid = fake
        .create_domain(squeeze::backend::fake::GuestSpec::fixed(0))
        .unwrap();
    let id = service.reserve_memory("xenopsd", 64 * MIB).unwrap();
    service
        .transfer_reservation_to_domain("xenopsd", &id, domid)
        .unwrap();
    // Another reservation stops inside the host lock.
    let holder = LockHolder::start(&service, "xl", 128 * MIB);
    let (tx, rx) = mpsc::channel();
    {
        let service = service.clone();
        std::thread::spawn(move || {
            let _ = tx.send(service.query_reservation_of_domain("xenopsd", domid));
        });
    }
    let answer = rx.recv_timeout(Duration::from_secs(10));
    let held = holder.release();
    assert_eq!(
        answer.expect("the query waited for the reservation"),
        Ok(id)
    );
    assert!(held.is_ok());
}

/// What happened while the boot-time record was sampled on a host whose clock the callers
/// share (see [`SharedTime`]): the record, when it was written and how long `other`, run
/// 0.25 s in (between the first two samples, taken 0.5 s apart), waited for the host.
struct DuringRecord<T> {
    record: squeeze::Result<squeeze::Kib>,
    recorded_at_s: f64,
    other: T,
    other_waited_s: f64,
}

/// Opens a service over a 4 GiB host (3 GiB free, domain 0 holding 1 GiB) with an existing
/// reservation of 256 MiB of session `xl-1`, forgets the boot-time record, and makes it again
/// while another caller runs `other` (given the service, the reservation's id and a sleep on
/// the shared clock).
fn record_while<T: Send + 'static>(
    other: impl FnOnce(&Service, &str, &dyn Fn(f64)) -> T + Send + 'static,
) -> DuringRecord<T> {
    use squeeze::backend::fake::FakeHost;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let time = SharedTime::new(&fake);
    // On the old code the other caller waits for the lock in real time while the recorder
    // sleeps in simulated time: give up soon rather than hang.
    let cfg = ServiceConfig {
        lock_timeout_s: 5.0,
        ..config(dir.path())
    };
    let record_path = cfg.boot_time_record_path.clone();
    let service = Service::new(time.platform(), cfg).unwrap();
    service.login("xl-1").unwrap();
    let held = service.reserve_memory("xl-1", 256 * MIB).unwrap();
    std::fs::remove_file(&record_path).unwrap();
    let t0 = fake.now_s();
    // Both take part before either starts, so time cannot run ahead of the other caller.
    let (p_recorder, p_other) = (time.participant(), time.participant());
    let recorder = {
        let (p, service, fake) = (p_recorder, service.clone(), fake.clone());
        std::thread::spawn(move || {
            p.enter();
            let r = service.record_boot_time_host_free_memory();
            let at = fake.now_s() - t0;
            drop(p);
            (r, at)
        })
    };
    let p = p_other;
    let (service2, fake2, time2) = (service.clone(), fake.clone(), time.clone());
    let other = std::thread::spawn(move || {
        p.enter();
        time2.sleep(0.25);
        let asked = fake2.now_s();
        let out = other(&service2, &held, &|s| time2.sleep(s));
        let waited = fake2.now_s() - asked;
        drop(p);
        (out, waited)
    });
    let (other, other_waited_s) = other.join().unwrap();
    let (record, recorded_at_s) = recorder.join().unwrap();
    if let Ok(kib) = record {
        let written = std::fs::read_to_string(&record_path).unwrap();
        assert_eq!(written.trim(), kib.to_string());
    }
    DuringRecord {
        record,
        recorded_at_s,
        other,
        other_waited_s,
    }
}

#[test]
fn a_delete_does_not_wait_while_host_free_memory_at_boot_is_sampled() {
    let r = record_while(|service, held, _| service.delete_reservation("xl-1", held));
    // Before, the record kept the lock for its three samples (1 s): the delete waited for it
    // in real time while simulated time stood still, and gave up after lock_timeout_s.
    assert_eq!(r.other, Ok(()));
    assert_eq!(r.other_waited_s, 0.0);
    // 3 GiB free + 1 GiB held by domain 0; the reservation never was in Xen's figures.
    assert_eq!(r.record, Ok(4 * GIB));
    // Samples at 0 s and 0.5 s, the ledger changed between them: three more at 0.5, 1 and 1.5 s.
    assert_eq!(r.recorded_at_s, 1.5);
}

#[test]
fn a_reservation_made_while_host_free_memory_at_boot_is_sampled_is_not_in_the_record() {
    let r = record_while(|service, _, _| service.reserve_memory("xl-1", 512 * MIB));
    assert!(r.other.is_ok(), "{:?}", r.other);
    assert_eq!(r.other_waited_s, 0.0);
    // What a host without the 512 MiB reservation records: 3 GiB free + 1 GiB of domain 0
    // (reservations, the old one and the new one, are the ledger's, not Xen's).
    assert_eq!(r.record, Ok(4 * GIB));
    // The run that saw the ledger change was dropped; the record comes from samples that all
    // saw the new reservation held, at 0.5, 1 and 1.5 s.
    assert_eq!(r.recorded_at_s, 1.5);
}

#[test]
fn a_ledger_that_changes_during_every_attempt_is_recorded_with_the_lock_held_at_last() {
    use squeeze::service::BOOT_TIME_ATTEMPTS;
    // A reservation of 64 MiB between the first two samples of each attempt but the last:
    // attempts start every 0.5 s (the second sample sees the change and starts the next).
    let r = record_while(|service, _, sleep| {
        for i in 0..BOOT_TIME_ATTEMPTS - 1 {
            if i > 0 {
                sleep(0.5);
            }
            service.reserve_memory("xl-1", 64 * MIB).unwrap();
        }
    });
    assert_eq!(r.record, Ok(4 * GIB));
    // Nine attempts of 0.5 s, then three samples 0.5 s apart under the lock: 4.5 + 1 s.
    assert_eq!(BOOT_TIME_ATTEMPTS, 10);
    assert_eq!(r.recorded_at_s, 5.5);
    // The last reservation was made at 4.25 s, before the lock was held for the last attempt.
    assert_eq!(r.other_waited_s, 4.0);
}
