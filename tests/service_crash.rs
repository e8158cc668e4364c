//! Crash safety: a process using the service is killed with SIGKILL in the middle of
//! reserving or transferring; a fresh process must find the books exact. Nothing lost, nothing
//! counted twice, every transfer whole or absent.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::service::Service;

const BIN: &str = env!("CARGO_BIN_EXE_squeeze-fake");

struct Host {
    dir: tempfile::TempDir,
    fake: FakeHost,
    guest: i32,
}

impl Host {
    fn fake_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("fake")
    }
    /// A fresh service, as a newly started process would open it.
    fn service(&self) -> Service {
        let cfg = squeeze::service::ServiceConfig {
            lock_path: self.fake_dir().join("host.lock"),
            ..config(self.dir.path())
        };
        Service::new(FakeHost::open(&self.fake_dir()).unwrap().platform(), cfg).unwrap()
    }
}

/// A 4 GiB host with one booted guest of 512 MiB..2 GiB at 2 GiB: 1 GiB free.
fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::create(&dir.path().join("fake"), small_host()).unwrap();
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 2 * GIB));
    Host { dir, fake, guest }
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Runs `args` in a child that stops at `point`, then kills it with SIGKILL.
fn kill_at(h: &Host, point: &str, args: &[&str]) {
    let mut cmd = vec!["pause-at", point];
    cmd.extend_from_slice(args);
    let mut child = spawn(&h.fake_dir(), &cmd);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        format!("AT {point}"),
        "the child did not reach {point}"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
}

/// The books as a fresh process sees them equal the books recomputed from the raw state, and
/// memory is conserved.
fn assert_books_exact(h: &Host) -> Books {
    let service = h.service();
    let view = service.host_view().unwrap();
    let snap = h.fake.snapshot().unwrap();
    let b = books(&snap);
    assert_eq!(view.reserved_kib, b.reserved, "reservations counted once");
    assert_eq!(view.unallocated_initial_kib, b.unallocated);
    assert_eq!(view.free_kib, b.free(), "free memory accounting is exact");
    assert_eq!(
        b.xen_free + b.guests,
        b.host,
        "no memory vanished from the host"
    );
    assert_transfers_whole(&snap);
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    b
}

#[test]
fn a_reservation_killed_before_it_is_recorded_leaves_nothing_behind() {
    for op in [
        ["reserve", "xenopsd", "1572864"].as_slice(),
        &["reserve-range", "xenopsd", "1048576", "1572864"],
    ] {
        let h = host();
        kill_at(&h, "reserve:freed", op);
        let b = assert_books_exact(&h);
        assert_eq!(b.reserved, 0);
        // The guest was ballooned down to make room; that memory is simply free now.
        assert!(b.free() >= 3 * GIB / 2, "{b:?}");
        let _ = h.guest;
    }
}

#[test]
fn a_reservation_killed_after_it_is_recorded_survives_until_its_session_logs_in_again() {
    let h = host();
    kill_at(&h, "reserve:recorded", &["reserve", "xenopsd", "1572864"]);
    let b = assert_books_exact(&h);
    assert_eq!(
        b.reserved,
        3 * GIB / 2,
        "the recorded reservation is not lost"
    );
    let snap = h.fake.snapshot().unwrap();
    assert_eq!(snap.directory("/squeezed/state/xenopsd").len(), 1);
    // The next process cannot promise the same memory again: at most what is free plus what
    // the guest can still give (its driver stops 4 KiB above a 512 MiB target), less the slush.
    let service = h.service();
    let guest_can_give = h.fake.domain(h.guest).unwrap().unwrap().tot_kib() - 512 * MIB - 4;
    let most = b.free() + guest_can_give - SLUSH;
    let r = service.reserve_memory("xl-1", most + 4);
    assert!(matches!(
        r,
        Err(squeeze::Error::CannotFreeThisMuchMemory { .. })
    ));
    // A restarted xenopsd logs in: the forgotten reservation goes.
    service.login("xenopsd").unwrap();
    let after = assert_books_exact(&h);
    assert_eq!(after.reserved, 0);
    assert_eq!(after.free(), after.xen_free);
}

#[test]
fn a_transfer_killed_at_any_point_is_whole_or_absent_and_can_be_redone() {
    for (point, transferred) in [
        ("transfer:checked", false),
        ("transfer:recorded", true),
        ("transfer:maxmem", true),
    ] {
        let h = host();
        let service = h.service();
        let id = service.reserve_memory("xenopsd", 512 * MIB).unwrap();
        let domid = h.fake.create_domain(GuestSpec::fixed(512 * MIB)).unwrap();
        let before = assert_books_exact(&h);
        kill_at(&h, point, &["transfer", "xenopsd", &id, &domid.to_string()]);
        let b = assert_books_exact(&h);
        let snap = h.fake.snapshot().unwrap();
        let marker = snap.read(&format!("/squeezed/state/xenopsd/{id}/in-transfer"));
        assert_eq!(marker.is_some(), transferred, "{point}");
        if transferred {
            // Counted once: by the domain, no longer by the ledger.
            assert_eq!((b.reserved, b.unallocated), (0, 512 * MIB), "{point}");
        } else {
            assert_eq!((b.reserved, b.unallocated), (512 * MIB, 0), "{point}");
        }
        assert_eq!(
            b.free(),
            before.free(),
            "{point}: the killed transfer moved no memory"
        );
        // The client retries; the result is the same as an undisturbed transfer.
        h.service()
            .transfer_reservation_to_domain("xenopsd", &id, domid)
            .unwrap();
        h.fake.build_domain(domid, 512 * MIB).unwrap();
        let done = assert_books_exact(&h);
        assert_eq!((done.reserved, done.unallocated), (0, 0));
        assert_eq!(done.free(), before.free());
    }
}

#[test]
fn workers_killed_at_random_moments_leave_exact_books() {
    let h = host();
    // Deterministic "random" delays, from a few milliseconds into the run to well inside it.
    let delays_ms = [5u64, 17, 40, 66, 90, 130, 170, 230, 300, 420];
    for (i, ms) in delays_ms.iter().enumerate() {
        let mut child = spawn(
            &h.fake_dir(),
            &["worker", "crashy", "2", "200", &i.to_string()],
        );
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = child.kill();
        child.wait().unwrap();
        assert_books_exact(&h);
    }
    // Clean up as an operator would: destroy the workers' domains, log the session in again.
    for d in h.fake.snapshot().unwrap().domains {
        if d.info.domid > h.guest {
            h.fake.destroy_domain(d.info.domid).unwrap();
        }
    }
    h.service().login("crashy").unwrap();
    let b = assert_books_exact(&h);
    assert_eq!(
        (b.reserved, b.unallocated),
        (0, 0),
        "nothing is held by anyone"
    );
    assert_eq!(
        b.guests,
        GIB + h.fake.domain(h.guest).unwrap().unwrap().tot_kib()
    );
    assert!(h
        .fake
        .snapshot()
        .unwrap()
        .directory("/squeezed/state/crashy")
        .is_empty());
}
