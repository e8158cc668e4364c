//! `squeeze daemon` on a fake host: it hands memory back when a reservation is deleted or a
//! domain is destroyed, without waiting for its periodic check, shows in `squeeze status`,
//! refuses to run twice and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::platform::Store;
use squeeze::service::{Service, ServiceConfig};
use squeeze::DomId;

const SQUEEZE: &str = env!("CARGO_BIN_EXE_squeeze");
const GIB: i64 = 1 << 20;

/// A running daemon and the lines it logs.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    /// Starts `squeeze daemon --fake DIR` with a periodic check too rare to matter here (an
    /// hour), so whatever it does within the test it does on events.
    fn start(dir: &Path) -> Daemon {
        let mut child = Command::new(SQUEEZE)
            .args(["daemon", "--verbose", "--interval", "3600", "--fake"])
            .arg(dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut d = Daemon {
            child,
            lines,
            log: Vec::new(),
        };
        d.expect("started");
        d.expect("balanced after start");
        d
    }

    /// Waits (a minute at most, so a broken daemon fails the test instead of hanging it) for
    /// a logged line containing `text`.
    fn expect(&mut self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the daemon never logged {text:?}; it logged:\n{:#?}",
                    self.log
                ),
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake host's 16 GiB less Xen's 256 MiB and dom0's 1 GiB leave 15104 MiB; two guests
/// of 1..6 GiB, built at 6 GiB, leave 2816 MiB free.
fn host_with_two_guests() -> (tempfile::TempDir, FakeHost, [DomId; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::create(dir.path(), FakeConfig::default()).unwrap();
    let mut guests = [0; 2];
    for g in &mut guests {
        *g = fake
            .create_domain(GuestSpec::ballooning(GIB, 6 * GIB))
            .unwrap();
        fake.build_domain(*g, 6 * GIB).unwrap();
        fake.unpause(*g).unwrap();
    }
    fake.advance(2.0).unwrap();
    (dir, fake, guests)
}

fn client(dir: &Path) -> Service {
    let config = ServiceConfig {
        lock_path: dir.join("host.lock"),
        boot_time_record_path: dir.join("boot_time_memory"),
        ..ServiceConfig::default()
    };
    Service::new(FakeHost::open(dir).unwrap().platform(), config).unwrap()
}

fn target(fake: &FakeHost, domid: DomId) -> i64 {
    Store::read(fake, &format!("/local/domain/{domid}/memory/target"))
        .unwrap()
        .unwrap()
        .parse()
        .unwrap()
}

fn status(dir: &Path) -> String {
    let out = Command::new(SQUEEZE)
        .args(["status", "--fake"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Reserves 4 GiB: with the 72 MiB slush that is 1352 MiB more than the 2816 MiB free, so
/// both guests balloon below their 6 GiB.
fn squeeze_the_guests(dir: &Path, fake: &FakeHost, guests: [DomId; 2]) -> String {
    let id = client(dir).reserve_memory("xl-4242", 4 * GIB).unwrap();
    for g in guests {
        assert!(target(fake, g) < 6 * GIB, "guest {g} was not squeezed");
    }
    id
}

#[test]
fn a_deleted_reservation_is_handed_back_to_the_guests_at_once() {
    let (dir, fake, guests) = host_with_two_guests();
    let id = squeeze_the_guests(dir.path(), &fake, guests);
    let mut daemon = Daemon::start(dir.path());
    // The reservation still holds the memory: the start pass leaves the guests small.
    for g in guests {
        assert!(target(&fake, g) < 6 * GIB);
    }
    client(dir.path())
        .delete_reservation("xl-4242", &id)
        .unwrap();
    daemon.expect("balanced after a reservation changed");
    for g in guests {
        assert_eq!(target(&fake, g), 6 * GIB, "guest {g}");
    }
}

#[test]
fn a_destroyed_domain_gives_its_memory_back_to_the_others() {
    let (dir, fake, guests) = host_with_two_guests();
    let id = squeeze_the_guests(dir.path(), &fake, guests);
    // The new VM gets the 4 GiB, as `xl create` through squeeze would.
    let vm = fake.create_domain(GuestSpec::fixed(4 * GIB)).unwrap();
    client(dir.path())
        .transfer_reservation_to_domain("xl-4242", &id, vm)
        .unwrap();
    fake.build_domain(vm, 4 * GIB).unwrap();
    let mut daemon = Daemon::start(dir.path());
    for g in guests {
        assert!(target(&fake, g) < 6 * GIB);
    }
    // `xl destroy`: the domain goes, and its reservation and session with it.
    fake.destroy_domain(vm).unwrap();
    daemon.expect("balanced after a domain was released");
    for g in guests {
        assert_eq!(target(&fake, g), 6 * GIB, "guest {g}");
    }
    assert!(Store::directory(&fake, "/squeezed/state")
        .unwrap()
        .is_empty());
}

#[test]
fn status_shows_the_daemon_and_a_second_one_is_refused_until_sigterm_stops_it() {
    let (dir, _fake, _guests) = host_with_two_guests();
    assert!(status(dir.path()).contains("daemon           not running"));
    let mut daemon = Daemon::start(dir.path());
    let pid = daemon.child.id();
    assert!(
        status(dir.path()).contains(&format!("daemon           running (pid {pid})")),
        "{}",
        status(dir.path())
    );

    let second = Command::new(SQUEEZE)
        .args(["daemon", "--fake"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(
        why.contains(&format!(
            "a squeeze daemon already runs on this host (pid {pid}"
        )),
        "{why}"
    );

    daemon.signal(libc::SIGTERM);
    daemon.expect("stopping on SIGTERM");
    assert!(daemon.child.wait().unwrap().success());
    assert!(!dir.path().join("daemon.pid").exists());
    assert!(status(dir.path()).contains("daemon           not running"));
}

#[test]
fn sigint_stops_it_too() {
    let (dir, _fake, _guests) = host_with_two_guests();
    let mut daemon = Daemon::start(dir.path());
    daemon.signal(libc::SIGINT);
    daemon.expect("stopping on SIGINT");
    assert!(daemon.child.wait().unwrap().success());
}
