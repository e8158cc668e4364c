//! Many processes, one host: several processes with eight threads each reserve, transfer,
//! build and delete against one fake host. The fake referees every single change to the host
//! (guests + unbacked reservations + what unbooted domains are owed + slush <= host memory),
//! and the test also samples the books from outside while the workers run.
//!
//! The toolstack builds domains without the host lock, so a domain's memory may move from
//! "free" to "allocated" in the middle of the service's look at the host; a deterministic test
//! below puts that allocation between every pair of hypervisor calls one balancing pass makes.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::platform::{DomainInfo, Hypervisor, PhysInfo, Platform};
use squeeze::service::Service;
use squeeze::{DomId, Kib};

const BIN: &str = env!("CARGO_BIN_EXE_squeeze-fake");
const PROCESSES: usize = 2;
const THREADS: &str = "8";
const ITERATIONS: &str = "8";

/// A fake host of 8 GiB in `dir`, refereed against the slush: Xen keeps 256 MiB and domain 0
/// holds 1 GiB.
fn eight_gib_host(dir: &std::path::Path) -> FakeHost {
    FakeHost::create(
        dir,
        FakeConfig {
            total_kib: 8 * GIB,
            xen_kib: 256 * MIB,
            dom0_kib: GIB,
            boot_delay_s: 1.0,
            referee_slush_kib: Some(SLUSH),
        },
    )
    .unwrap()
}

#[test]
fn processes_and_threads_never_promise_the_same_memory_twice() {
    let dir = tempfile::tempdir().unwrap();
    let fake_dir = dir.path().join("fake");
    // 8 GiB: Xen keeps 256 MiB, domain 0 holds 1 GiB; two guests of 1..2 GiB at 2 GiB.
    let fake = eight_gib_host(&fake_dir);
    for _ in 0..2 {
        booted_guest(&fake, GuestSpec::ballooning(GIB, 2 * GIB));
    }

    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            Command::new(BIN)
                .arg(&fake_dir)
                .args([
                    "worker",
                    &format!("worker-{p}"),
                    THREADS,
                    ITERATIONS,
                    &p.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();

    // Watch the books for as long as the workers run: each look is one consistent snapshot.
    let running = std::sync::atomic::AtomicBool::new(true);
    let (looks, worst_headroom) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut looks = 0u64;
            let mut worst = i64::MAX;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let s = fake.snapshot().unwrap();
                let b = books(&s);
                assert_eq!(b.xen_free + b.guests, b.host, "memory vanished: {b:?}");
                // Guests + reservations not yet backed by a domain + the slush fit in the host.
                let headroom = b.host - (b.guests + b.reserved + b.unallocated + SLUSH);
                assert!(headroom >= 0, "overcommitted by {} KiB: {b:?}", -headroom);
                assert!(s.violations.is_empty(), "{:?}", s.violations);
                worst = worst.min(headroom);
                looks += 1;
                // Leave the host to the workers most of the time.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (looks, worst)
        });
        let mut outputs = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "a worker failed: {text}");
            outputs.push(text);
        }
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        let r = watcher.join().unwrap();
        let mut reserved = 0;
        let mut built = 0;
        for line in outputs.iter().flat_map(|o| o.lines()) {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            reserved += f[0];
            built += f[2];
        }
        assert!(reserved >= 64, "only {reserved} reservations were made");
        assert!(built >= 30, "only {built} domains were built");
        r
    });
    assert!(looks > 0);
    eprintln!("{looks} looks at the books, least headroom {worst_headroom} KiB");

    let snap = fake.snapshot().unwrap();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    // Every worker cleaned up after itself: the books are back to the two guests.
    let b = books(&snap);
    assert_eq!((b.reserved, b.unallocated), (0, 0));
    assert_eq!(fake.snapshot().unwrap().domains.len(), 3);
}

/// Processes killed (SIGKILL) while their reservations wait for slow balloon drivers, some
/// while others' rounds may have just granted them: the next round drops the pending entries
/// of the dead, their sessions' next login drops what was granted to them, and the referee saw
/// no promise broken.
#[test]
fn pending_reservations_of_killed_processes_leak_nothing() {
    use squeeze::backend::sim::Behaviour;
    const KILLED: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let fake_dir = dir.path().join("fake");
    // 8 GiB: Xen keeps 256 MiB, domain 0 holds 1 GiB; two guests of 1..2 GiB at 2 GiB that
    // balloon at 2 MiB/s: about 2.7 GiB free, 2 GiB more in a long while.
    let fake = eight_gib_host(&fake_dir);
    for _ in 0..2 {
        let g = booted_guest(&fake, GuestSpec::ballooning(GIB, 2 * GIB));
        fake.set_behaviour(
            g,
            Behaviour::Ideal {
                rate_kib_per_s: 2 * MIB,
            },
        )
        .unwrap();
    }
    // Four processes each reserving 1 GiB: together more than is free, so they wait.
    let mut children: Vec<_> = (0..KILLED)
        .map(|p| {
            Command::new(BIN)
                .arg(&fake_dir)
                .args(["reserve", &format!("xl-{p}"), &GIB.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Kill them one by one once requests are pending, a few milliseconds apart.
    let started = std::time::Instant::now();
    let mut seen_pending = 0;
    while started.elapsed() < std::time::Duration::from_secs(30) {
        seen_pending = fake
            .snapshot()
            .unwrap()
            .directory("/squeezed/pending")
            .len();
        if seen_pending > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(seen_pending > 0, "no reservation ever waited");
    for (i, c) in children.iter_mut().enumerate() {
        std::thread::sleep(std::time::Duration::from_millis(3 * i as u64));
        let _ = c.kill();
        let _ = c.wait();
    }
    let s = fake.snapshot().unwrap();
    let left = s.directory("/squeezed/pending").len();
    eprintln!("{seen_pending} pending at first sight; {left} left by the killed processes");
    // The next round, of any process, drops the entries of the dead.
    let out = Command::new(BIN)
        .arg(&fake_dir)
        .args(["reserve", "xenopsd", &(64 * MIB).to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = fake.snapshot().unwrap();
    assert!(s.directory("/squeezed/pending").is_empty());
    // The dead sessions log in again: whatever was granted to them is dropped.
    for p in 0..KILLED {
        let out = Command::new(BIN)
            .arg(&fake_dir)
            .args(["login", &format!("xl-{p}")])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let s = fake.snapshot().unwrap();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(s.directory("/squeezed/pending").is_empty());
    for p in 0..KILLED {
        assert!(s.directory(&format!("/squeezed/state/xl-{p}")).is_empty());
    }
    // Only the live reservation of 64 MiB is left.
    assert_eq!(books(&s).reserved, 64 * MIB);
}

/// The fake's hypervisor, with a domain builder that runs just before the `at`-th hypervisor
/// call the service makes (counting from 0), as a concurrent `xl create` would.
struct BuilderRacingTheLook {
    fake: FakeHost,
    calls: AtomicUsize,
    at: usize,
    build: Mutex<Option<(DomId, Kib)>>,
}

impl BuilderRacingTheLook {
    fn step(&self) -> squeeze::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.at {
            if let Some((domid, kib)) = self.build.lock().take() {
                self.fake.build_domain(domid, kib)?;
            }
        }
        Ok(())
    }
}

impl Hypervisor for BuilderRacingTheLook {
    fn domains(&self) -> squeeze::Result<Vec<DomainInfo>> {
        self.step()?;
        self.fake.domains()
    }
    fn domain(&self, domid: DomId) -> squeeze::Result<Option<DomainInfo>> {
        self.step()?;
        Hypervisor::domain(&self.fake, domid)
    }
    fn physinfo(&self) -> squeeze::Result<PhysInfo> {
        self.step()?;
        self.fake.physinfo()
    }
    fn shadow_allocation_mib(&self, domid: DomId) -> squeeze::Result<u64> {
        self.step()?;
        self.fake.shadow_allocation_mib(domid)
    }
    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> squeeze::Result<()> {
        self.step()?;
        self.fake.set_maxmem_kib(domid, kib)
    }
    fn claim_pages(&self, domid: DomId, pages: u64) -> squeeze::Result<()> {
        self.step()?;
        self.fake.claim_pages(domid, pages)
    }
}

/// A balanced 4 GiB host (1 GiB domain 0) with a guest of 512 MiB..1.5 GiB and a 1.5 GiB
/// domain that has its reservation but is not built yet; a service whose hypervisor builds
/// that domain just before its `at`-th call. Returns the service, the racing hypervisor, the
/// fake, the guest and the directory holding the lock file.
fn balanced_host_with_a_domain_about_to_be_built(
    at: usize,
) -> (
    Service,
    Arc<BuilderRacingTheLook>,
    FakeHost,
    DomId,
    tempfile::TempDir,
) {
    let (dir, fake, setup_service) = setup_classic(small_host());
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, 1536 * MIB));
    // 1.5 GiB free; reserving 1.5 GiB + the 72 MiB slush shrinks the guest to 1464 MiB.
    let id = setup_service.reserve_memory("xl-1", 1536 * MIB).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(1536 * MIB)).unwrap();
    setup_service
        .transfer_reservation_to_domain("xl-1", &id, domid)
        .unwrap();
    let free = books(&fake.snapshot().unwrap()).free();
    assert!((SLUSH..SLUSH + 512).contains(&free), "{free} KiB free");

    let hv = Arc::new(BuilderRacingTheLook {
        fake: fake.clone(),
        calls: AtomicUsize::new(0),
        at,
        build: Mutex::new(Some((domid, 1536 * MIB))),
    });
    let platform = Platform {
        hypervisor: hv.clone(),
        ..fake.platform()
    };
    let service = Service::new(platform, classic_config(dir.path())).unwrap();
    (service, hv, fake, guest, dir)
}

#[test]
fn a_domain_built_while_the_host_is_looked_at_is_never_taken_for_free_memory() {
    // How many hypervisor calls one balancing pass makes when nothing races it.
    let (service, hv, fake, guest, _dir) =
        balanced_host_with_a_domain_about_to_be_built(usize::MAX);
    let settled = fake.domain(guest).unwrap().unwrap().tot_kib();
    service.balance_memory().unwrap();
    let calls = hv.calls.load(Ordering::SeqCst);
    assert!(calls >= 2, "a pass reads the hypervisor more than once");

    for at in 0..calls {
        let (service, hv, fake, guest, _dir) = balanced_host_with_a_domain_about_to_be_built(at);
        service.balance_memory().unwrap();
        assert!(
            hv.build.lock().is_none(),
            "the domain was built during the pass"
        );
        // Only the slush was free all along: had a look taken the 1.5 GiB being built for
        // free memory, the guest would have been grown into the new domain's memory.
        let s = fake.snapshot().unwrap();
        assert!(
            s.violations.is_empty(),
            "domain built before call {at} of {calls}: {:?}",
            s.violations
        );
        // The guest never grew; a look that counted the new domain's memory twice (safe) may
        // have squeezed it for a moment, and the pass balanced it back to within the 512 KiB
        // tolerance above the slush.
        let tot = fake.domain(guest).unwrap().unwrap().tot_kib();
        assert!(
            tot <= settled,
            "build before call {at}: guest grew to {tot} KiB"
        );
        let free = books(&s).free();
        assert!(
            (SLUSH..SLUSH + 512).contains(&free),
            "build before call {at}: {free} KiB free after balancing"
        );
    }
}

/// The referee at full scale: 2 worker processes × 8 threads make 1000 service calls per
/// process (reserve-range, transfer + query + build, delete, balance), 2000 in all, on a host
/// whose guests balloon at 64 MiB/s, so that reservations wait as pending entries. Every
/// process is SIGKILLed at a deterministic pseudo-random moment (50..450 ms after its start) and
/// started again under a new session (a new pid) until its 1000 calls are made; between kills
/// the domains the dead left are destroyed, as an operator would. Then the dead sessions log
/// in again: no promise was ever broken, no pending entry and no untransferred reservation is
/// left, the books are exact, and no call was refused as "already in use".
#[test]
fn killed_and_restarted_processes_never_break_a_promise_nor_leak_a_pending_reservation() {
    use squeeze::backend::sim::Behaviour;
    use std::io::{BufRead, BufReader};
    const CALLS_PER_PROCESS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let fake_dir = dir.path().join("fake");
    // 8 GiB: Xen keeps 256 MiB, domain 0 holds 1 GiB; two guests of 1..3 GiB at 3 GiB leave
    // 768 MiB free, less than 16 threads ask for at once (32..320 MiB each).
    let fake = eight_gib_host(&fake_dir);
    let mut guests = Vec::new();
    for _ in 0..2 {
        let g = booted_guest(&fake, GuestSpec::ballooning(GIB, 3 * GIB));
        fake.set_behaviour(
            g,
            Behaviour::Ideal {
                rate_kib_per_s: 64 * MIB,
            },
        )
        .unwrap();
        guests.push(g);
    }
    let started = std::time::Instant::now();
    let mut kill_rng = 0x5eed_u64;
    let mut next_delay_ms = || {
        kill_rng = kill_rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        50 + (kill_rng >> 33) % 400
    };
    let mut calls = [0u64; PROCESSES];
    let mut sessions = Vec::new();
    let (mut kills, mut busy) = (0, 0u64);
    let running = std::sync::atomic::AtomicBool::new(true);
    let (pending_looks, most_pending) = std::thread::scope(|scope| {
        // Watch the referee and the pending tree for the whole run.
        let watcher = scope.spawn(|| {
            let (mut pending_looks, mut most) = (0u64, 0usize);
            while running.load(Ordering::Relaxed) {
                let s = fake.snapshot().unwrap();
                assert!(s.violations.is_empty(), "{:?}", s.violations);
                let pending = s.directory("/squeezed/pending").len();
                pending_looks += u64::from(pending > 0);
                most = most.max(pending);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (pending_looks, most)
        });
        let mut run = 0;
        while calls.iter().any(|&c| c < CALLS_PER_PROCESS) {
            let live: Vec<_> = (0..PROCESSES)
                .filter(|&p| calls[p] < CALLS_PER_PROCESS)
                .map(|p| {
                    let session = format!("worker-{p}-{run}");
                    sessions.push(session.clone());
                    let mut child = Command::new(BIN)
                        .arg(&fake_dir)
                        .args([
                            "worker",
                            &session,
                            THREADS,
                            "1000",
                            &(run * PROCESSES + p).to_string(),
                            "progress",
                        ])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit())
                        .spawn()
                        .unwrap();
                    let out = child.stdout.take().unwrap();
                    // Count the calls as they are reported, whenever the process dies.
                    let reader = scope.spawn(move || {
                        let (mut made, mut busy, mut failed) = (0u64, 0u64, None);
                        for line in BufReader::new(out).lines().map_while(Result::ok) {
                            let f: Vec<&str> = line.split_whitespace().collect();
                            match f.first() {
                                Some(&"calls") => made += f[1].parse::<u64>().unwrap(),
                                Some(&"ok") => busy += f[4].parse::<u64>().unwrap(),
                                _ => failed = Some(line),
                            }
                        }
                        (made, busy, failed)
                    });
                    let deadline =
                        started.elapsed() + std::time::Duration::from_millis(next_delay_ms());
                    (p, child, reader, deadline)
                })
                .collect();
            for (p, mut child, reader, deadline) in live {
                while started.elapsed() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "worker {p} failed before it was killed");
                } else {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                }
                let (made, b, failed) = reader.join().unwrap();
                assert!(failed.is_none(), "worker {p}: {failed:?}");
                calls[p] += made;
                busy += b;
            }
            // The operator destroys what the dead processes built.
            for d in fake.snapshot().unwrap().domains {
                if d.info.domid > 0 && !guests.contains(&d.info.domid) {
                    fake.destroy_domain(d.info.domid).unwrap();
                }
            }
            run += 1;
        }
        running.store(false, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    // The dead sessions log in again.
    for session in &sessions {
        let out = Command::new(BIN)
            .arg(&fake_dir)
            .args(["login", session])
            .output()
            .unwrap();
        assert!(out.status.success(), "login {session}");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} calls, {kills} kills in {} runs, pending seen in {pending_looks} looks (at most \
         {most_pending} at once), {busy} refused as in use, {:.1} s",
        calls.iter().sum::<u64>(),
        sessions.len(),
        elapsed.as_secs_f64()
    );
    let s = fake.snapshot().unwrap();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(s.directory("/squeezed/pending").is_empty());
    for session in &sessions {
        assert!(s
            .directory(&format!("/squeezed/state/{session}"))
            .is_empty());
    }
    assert_eq!(busy, 0, "calls refused as already in use");
    assert!(
        kills > 0 && pending_looks > 0,
        "{kills} kills, {pending_looks}"
    );
    // The books as a fresh process sees them are exact, and nothing is held.
    let service = Service::new(
        fake.platform(),
        squeeze::service::ServiceConfig {
            lock_path: fake_dir.join("host.lock"),
            ..config(dir.path())
        },
    )
    .unwrap();
    let view = service.host_view().unwrap();
    let b = books(&s);
    assert_eq!((b.reserved, b.unallocated), (0, 0));
    assert_eq!(view.reserved_kib, b.reserved);
    assert_eq!(view.unallocated_initial_kib, b.unallocated);
    assert_eq!(view.free_kib, b.free(), "free memory accounting is exact");
    assert_eq!(b.xen_free + b.guests, b.host, "no memory vanished");
    assert_transfers_whole(&s);
}
