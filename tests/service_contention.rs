//! Many processes, one host: several processes with eight threads each reserve, transfer,
//! build and delete against one fake host. The fake referees every single change to the host
//! (guests + unbacked reservations + what unbooted domains are owed + slush <= host memory),
//! and the test also samples the books from outside while the workers run.

mod common;

use std::process::{Command, Stdio};

use common::*;
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};

const BIN: &str = env!("CARGO_BIN_EXE_squeeze-fake");
const PROCESSES: usize = 2;
const THREADS: &str = "8";
const ITERATIONS: &str = "8";

#[test]
fn processes_and_threads_never_promise_the_same_memory_twice() {
    let dir = tempfile::tempdir().unwrap();
    let fake_dir = dir.path().join("fake");
    // 8 GiB: Xen keeps 256 MiB, domain 0 holds 1 GiB; two guests of 1..2 GiB at 2 GiB.
    let fake = FakeHost::create(
        &fake_dir,
        FakeConfig {
            total_kib: 8 * GIB,
            xen_kib: 256 * MIB,
            dom0_kib: GIB,
            boot_delay_s: 1.0,
            referee_slush_kib: Some(SLUSH),
        },
    )
    .unwrap();
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
