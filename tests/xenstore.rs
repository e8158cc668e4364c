//! The libxenstore binding against a xenstored on a Unix socket (through `XENSTORED_PATH`),
//! checked against Debian's `xenstore-*` tools, which use the same library from C.

#![cfg(feature = "xen")]

#[path = "support/xenstored.rs"]
mod xenstored;

use std::process::Command;
use std::sync::OnceLock;

use squeeze::backend::xen::{Commit, XsHandle};
use squeeze::Error;
use xenstored::Xenstored;

/// One daemon per test binary: `XENSTORED_PATH` is process-wide, so it is set once, before any
/// connection is opened. Each test works under its own subtree.
fn daemon() -> &'static Xenstored {
    static DAEMON: OnceLock<Xenstored> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("squeeze-xenstored-{}", std::process::id()));
        let d = Xenstored::start(&dir);
        std::env::set_var("XENSTORED_PATH", d.socket());
        d
    })
}

fn connect() -> XsHandle {
    daemon();
    XsHandle::open().expect("connect to the test xenstored")
}

/// Runs one of Debian's xenstore tools against the test daemon and returns its stdout.
fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .env("XENSTORED_PATH", daemon().socket())
        .output()
        .unwrap_or_else(|e| panic!("{name} (package xenstore-utils) cannot run: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_target_written_by_the_library_is_read_by_xenstore_read() {
    let xs = connect();
    xs.write("/t1/local/domain/5/memory/target", "1048576")
        .unwrap();
    assert_eq!(
        tool("xenstore-read", &["/t1/local/domain/5/memory/target"]),
        "1048576\n"
    );
    // xenstored created the parents, empty.
    assert_eq!(tool("xenstore-read", &["/t1/local/domain/5"]), "\n");
}

#[test]
fn values_written_by_xenstore_write_are_read_by_the_library() {
    let xs = connect();
    tool(
        "xenstore-write",
        &[
            "/t2/local/domain/7/memory/dynamic-min",
            "524288",
            "/t2/local/domain/7/memory/dynamic-max",
            "2097152",
            "/t2/local/domain/7/control/feature-balloon",
            "1",
        ],
    );
    assert_eq!(
        xs.read("/t2/local/domain/7/memory/dynamic-min").unwrap(),
        Some("524288".into())
    );
    assert_eq!(
        xs.read("/t2/local/domain/7/memory/dynamic-max").unwrap(),
        Some("2097152".into())
    );
    let mut dirs = xs.directory("/t2/local/domain/7").unwrap();
    dirs.sort();
    assert_eq!(dirs, ["control", "memory"]);
    // xenstore-list sees the same children the library does.
    let mut listed: Vec<String> = tool("xenstore-list", &["/t2/local/domain/7/memory"])
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, ["dynamic-max", "dynamic-min"]);
}

#[test]
fn missing_nodes_read_as_none_list_as_empty_and_remove_quietly() {
    let xs = connect();
    assert_eq!(xs.read("/t3/nowhere").unwrap(), None);
    assert!(xs.directory("/t3/nowhere").unwrap().is_empty());
    xs.rm("/t3/nowhere").unwrap();
    // A node with an empty value exists; it is not the same as a missing one.
    xs.write("/t3/empty", "").unwrap();
    assert_eq!(xs.read("/t3/empty").unwrap(), Some(String::new()));
}

#[test]
fn removing_a_domain_removes_its_subtree_for_the_tools_too() {
    let xs = connect();
    xs.write("/t4/local/domain/9/memory/target", "262144")
        .unwrap();
    xs.write("/t4/local/domain/9/data/updated", "1").unwrap();
    xs.write("/t4/local/domain/10/memory/target", "131072")
        .unwrap();
    xs.rm("/t4/local/domain/9").unwrap();
    assert_eq!(xs.read("/t4/local/domain/9/memory/target").unwrap(), None);
    assert_eq!(xs.directory("/t4/local/domain").unwrap(), ["10"]);
    let status = Command::new("xenstore-exists")
        .arg("/t4/local/domain/9/memory")
        .env("XENSTORED_PATH", daemon().socket())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "xenstore-exists still sees the removed node"
    );
}

#[test]
fn a_transaction_that_lost_a_race_commits_nothing() {
    let xs = connect();
    let other = connect();
    xs.write("/t5/squeezed/reserved", "0").unwrap();
    let txn = xs.transaction().unwrap();
    assert_eq!(txn.read("/t5/squeezed/reserved").unwrap(), Some("0".into()));
    txn.write("/t5/squeezed/reserved", "65536").unwrap();
    // Inside the transaction the write is visible; outside it is not yet.
    assert_eq!(
        txn.read("/t5/squeezed/reserved").unwrap(),
        Some("65536".into())
    );
    assert_eq!(
        other.read("/t5/squeezed/reserved").unwrap(),
        Some("0".into())
    );
    other.write("/t5/squeezed/reserved", "4096").unwrap();
    assert_eq!(txn.commit().unwrap(), Commit::Conflict);
    assert_eq!(
        xs.read("/t5/squeezed/reserved").unwrap(),
        Some("4096".into())
    );
}

#[test]
fn an_abandoned_transaction_leaves_no_trace() {
    let xs = connect();
    {
        let txn = xs.transaction().unwrap();
        txn.write("/t6/reservation", "1024").unwrap();
    }
    assert_eq!(xs.read("/t6/reservation").unwrap(), None);
}

#[test]
fn two_threads_adding_to_one_counter_lose_no_increment() {
    // 2 threads x 40 increments of 1024 KiB each: retried transactions must end at 81920.
    let xs = std::sync::Arc::new(connect());
    xs.write("/t7/reserved-kib", "0").unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let xs = xs.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    xs.with_transaction(|t| {
                        let v: i64 = t.read("/t7/reserved-kib")?.unwrap().parse().unwrap();
                        t.write("/t7/reserved-kib", &(v + 1024).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(xs.read("/t7/reserved-kib").unwrap(), Some("81920".into()));
}

#[test]
fn an_error_inside_a_transaction_aborts_it() {
    let xs = connect();
    let r: Result<(), Error> = xs.with_transaction(|t| {
        t.write("/t8/half-done", "1")?;
        Err(Error::InvalidArgument("changed my mind".into()))
    });
    assert_eq!(r, Err(Error::InvalidArgument("changed my mind".into())));
    assert_eq!(xs.read("/t8/half-done").unwrap(), None);
}

/// Waits (up to a generous bound, so a slow machine does not fail the test) until `want`
/// appears among the watch events.
fn wait_for_event(xs: &XsHandle, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.extend(xs.pending_events(100).unwrap());
        if seen.iter().any(|p| p == want) {
            return seen;
        }
    }
    panic!("no watch event for {want}; saw {seen:?}");
}

#[test]
fn a_watch_reports_a_target_written_by_xenstore_write() {
    let xs = connect();
    xs.write("/t9/local/domain/3/memory/target", "1024")
        .unwrap();
    xs.watch("/t9/local/domain/3/memory", "mem-3").unwrap();
    // The watch fires once for its own path as soon as it is set.
    wait_for_event(&xs, "/t9/local/domain/3/memory");
    tool(
        "xenstore-write",
        &["/t9/local/domain/3/memory/target", "2048"],
    );
    wait_for_event(&xs, "/t9/local/domain/3/memory/target");
    // A change outside the watched subtree is not reported.
    tool(
        "xenstore-write",
        &["/t9/local/domain/4/memory/target", "4096"],
    );
    xs.write("/t9/local/domain/3/memory/target", "8192")
        .unwrap();
    let seen = wait_for_event(&xs, "/t9/local/domain/3/memory/target");
    assert!(
        !seen.iter().any(|p| p.starts_with("/t9/local/domain/4")),
        "{seen:?}"
    );
    xs.unwatch("/t9/local/domain/3/memory", "mem-3").unwrap();
    // Unwatching something not watched is an error.
    assert!(matches!(
        xs.unwatch("/t9/local/domain/3/memory", "mem-3"),
        Err(Error::Backend(_))
    ));
}

#[test]
fn no_events_means_an_empty_poll_not_a_hang() {
    let xs = connect();
    assert!(xs.pending_events(0).unwrap().is_empty());
}

#[test]
fn a_value_that_is_not_utf8_is_a_clear_error() {
    let xs = connect();
    // xenstore-write turns "\xff" into the byte 0xff.
    tool("xenstore-write", &["/t10/bad", "\\xff"]);
    let err = xs.read("/t10/bad").unwrap_err();
    assert_eq!(
        err,
        Error::Backend("xenstore value at /t10/bad is not valid UTF-8".into())
    );
}

#[test]
fn relative_and_nul_paths_are_refused_without_a_request() {
    let xs = connect();
    assert!(matches!(
        xs.read("local/domain/0"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        xs.write("/t11/a\0b", "1"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        xs.write("/t11/big", &"x".repeat(5000)),
        Err(Error::InvalidArgument(_))
    ));
    // Nothing reached the store.
    assert_eq!(xs.read("/t11/big").unwrap(), None);
    assert_eq!(xs.read("/t11").unwrap(), None);
}

#[test]
fn the_test_daemon_accepts_exactly_the_characters_xenstored_does() {
    let xs = connect();
    xs.write("/t19/AZaz09-_@", "1").unwrap();
    for bad in ["/t19/a+b", "/t19/a.b", "/t19/host:1", "/t19/x~"] {
        assert!(xs.write(bad, "1").is_err(), "{bad}");
    }
    assert_eq!(xs.directory("/t19").unwrap(), vec!["AZaz09-_@"]);
}

// The memory service's `Store` over xenstored.

use squeeze::backend::xen::XenStore;
use squeeze::platform::Store;

fn store() -> XenStore {
    daemon();
    XenStore::open().expect("connect to the test xenstored")
}

#[test]
fn a_store_transaction_commits_all_its_writes_together() {
    let s = store();
    s.transaction(&mut |t| {
        t.write("/t12/squeezed/state/xenopsd/r1", "262144")?;
        t.write("/t12/squeezed/state/xenopsd/r2", "131072")?;
        // Not visible outside before the commit.
        assert_eq!(
            tool_opt("xenstore-read", "/t12/squeezed/state/xenopsd/r1"),
            None
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(
        tool("xenstore-read", &["/t12/squeezed/state/xenopsd/r2"]),
        "131072\n"
    );
    assert!(s.exists("/t12/squeezed/state/xenopsd/r1").unwrap());
    let mut ids = s.directory("/t12/squeezed/state/xenopsd").unwrap();
    ids.sort();
    assert_eq!(ids, ["r1", "r2"]);
}

/// The tool's output, or `None` when it fails (the node does not exist).
fn tool_opt(name: &str, path: &str) -> Option<String> {
    let out = Command::new(name)
        .arg(path)
        .env("XENSTORED_PATH", daemon().socket())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_store_watch_sees_a_balloon_driver_appear() {
    let s = store();
    let mut w = s.watch("/t13/local/domain/6/control").unwrap();
    tool(
        "xenstore-write",
        &["/t13/local/domain/6/control/feature-balloon", "1"],
    );
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.extend(w.poll().unwrap());
        if seen
            .iter()
            .any(|p| p == "/t13/local/domain/6/control/feature-balloon")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        seen.iter()
            .any(|p| p == "/t13/local/domain/6/control/feature-balloon"),
        "{seen:?}"
    );
    // Nothing else happened under the watch after that.
    drop(w);
    let mut w = s.watch("/t13/local/domain/6/control").unwrap();
    s.write("/t13/local/domain/7/control/feature-balloon", "1")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let later = w.poll().unwrap();
    assert!(
        later.iter().all(|p| p == "/t13/local/domain/6/control"),
        "{later:?}"
    );
}

#[test]
fn a_store_read_outside_a_transaction_is_one_request() {
    let s = store();
    s.write("/t14/memory/target", "524288").unwrap();
    let before = s.requests();
    assert_eq!(s.read("/t14/memory/target").unwrap(), Some("524288".into()));
    assert_eq!(s.requests() - before, 1);
    // In a transaction the same read costs three: start, read, commit.
    let before = s.requests();
    s.transaction(&mut |t| t.read("/t14/memory/target").map(drop))
        .unwrap();
    assert_eq!(s.requests() - before, 3);
}

#[test]
fn reservations_made_by_the_service_are_in_xenstored_where_the_tools_see_them() {
    use squeeze::backend::fake::{FakeConfig, FakeHost};
    use squeeze::platform::Platform;
    use squeeze::service::{Service, ServiceConfig};
    use std::sync::Arc;

    // The hypervisor and clock are the fake's (there is no Xen here); the store is xenstored.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(FakeConfig::default()).unwrap();
    let fake_platform = fake.platform();
    let platform = Platform {
        hypervisor: fake_platform.hypervisor,
        store: Arc::new(store()),
        clock: fake_platform.clock,
    };
    let mut config = ServiceConfig {
        lock_path: dir.path().join("squeeze.lock"),
        boot_time_record_path: dir.path().join("boot-free"),
        ..ServiceConfig::default()
    };
    config.host.layout = squeeze::reservations::Layout::new("/t15/squeezed").unwrap();
    let service = Service::new(platform, config).unwrap();

    let session = service.login("xenopsd").unwrap();
    // 1 GiB for a new VM, on a 16 GiB fake host with plenty free.
    let id = service.reserve_memory(&session, 1 << 20).unwrap();
    let path = format!("/t15/squeezed/state/{session}/{id}");
    assert_eq!(tool("xenstore-read", &[&path]), "1048576\n");
    let listed = tool(
        "xenstore-list",
        &[&format!("/t15/squeezed/state/{session}")],
    );
    assert_eq!(listed, format!("{id}\n"));

    service.delete_reservation(&session, &id).unwrap();
    assert_eq!(tool_opt("xenstore-read", &path), None);
    // The session held nothing else, so its node went with the reservation: a per-process
    // session such as xl's leaves nothing behind.
    assert_eq!(
        tool_opt("xenstore-read", &format!("/t15/squeezed/state/{session}")),
        None
    );
    assert_eq!(tool("xenstore-list", &["/t15/squeezed/state"]), "");
}

/// xenstored without watches: what the host model sees from a store that cannot watch, where
/// it reads every domain's keys at every look (as it did before it watched).
struct Unwatched(std::sync::Arc<XenStore>);

impl Store for Unwatched {
    fn transaction(
        &self,
        body: &mut dyn FnMut(&mut dyn squeeze::platform::StoreOps) -> squeeze::Result<()>,
    ) -> squeeze::Result<()> {
        self.0.transaction(body)
    }
    fn watch(&self, _: &str) -> squeeze::Result<Box<dyn squeeze::platform::Watch>> {
        Err(Error::Unsupported("no watches here".into()))
    }
    fn read(&self, path: &str) -> squeeze::Result<Option<String>> {
        Store::read(&*self.0, path)
    }
    fn write(&self, path: &str, value: &str) -> squeeze::Result<()> {
        Store::write(&*self.0, path, value)
    }
    fn rm(&self, path: &str) -> squeeze::Result<()> {
        Store::rm(&*self.0, path)
    }
    fn directory(&self, path: &str) -> squeeze::Result<Vec<String>> {
        Store::directory(&*self.0, path)
    }
    fn requests(&self) -> Option<u64> {
        Store::requests(&*self.0)
    }
}

/// Store requests one `balance_memory` costs on a host whose `n` guests all sit at their
/// fixed size (nothing to move), the ledger under `root`, with the host model watching the
/// store or not.
fn requests_per_balance(n: usize, root: &str, watches: bool) -> u64 {
    use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
    use squeeze::platform::Platform;
    use squeeze::service::{Service, ServiceConfig};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    // Room for 100 guests of 256 MiB.
    let fake = FakeHost::in_memory(FakeConfig {
        total_kib: 64 << 20,
        ..FakeConfig::default()
    })
    .unwrap();
    let xs = Arc::new(store());
    xs.rm("/local/domain").unwrap();
    for _ in 0..n {
        let domid = fake.create_domain(GuestSpec::fixed(256 << 10)).unwrap();
        let d = format!("/local/domain/{domid}");
        for (key, value) in [
            ("memory/target", "262144"),
            ("memory/dynamic-min", "262144"),
            ("memory/dynamic-max", "262144"),
            ("control/feature-balloon", "1"),
            ("data/updated", "1"),
        ] {
            xs.write(&format!("{d}/{key}"), value).unwrap();
        }
    }
    let fp = fake.platform();
    let platform = Platform {
        hypervisor: fp.hypervisor,
        store: if watches {
            xs.clone()
        } else {
            Arc::new(Unwatched(xs.clone()))
        },
        clock: fp.clock,
    };
    // squeezed's round (two looks at the host), named: the service's default is adaptive.
    let mut config = ServiceConfig {
        lock_path: dir.path().join("lock"),
        boot_time_record_path: dir.path().join("boot"),
        policy: squeeze::Policy::Classic,
        ..ServiceConfig::default()
    };
    config.host.layout = squeeze::reservations::Layout::new(root).unwrap();
    let service = Service::new(platform.clone(), config).unwrap();
    // The first rounds calibrate offsets (writes, whose events the second one reads back);
    // measure a steady-state round.
    service.balance_memory().unwrap();
    service.balance_memory().unwrap();
    let before = platform.store_requests().unwrap();
    service.balance_memory().unwrap();
    platform.store_requests().unwrap() - before
}

#[test]
fn a_balance_round_costs_the_same_store_requests_for_every_guest() {
    // One test owns /local/domain in the shared daemon, so the sizes run one after another.
    let mut watched = Vec::new();
    let mut polled = Vec::new();
    for n in [0, 1, 10, 100] {
        watched.push(requests_per_balance(n, "/t16/squeezed", true));
        polled.push(requests_per_balance(n, "/t16/squeezed", false));
    }
    eprintln!("store requests per steady balance round for 0, 1, 10, 100 guests:");
    eprintln!("  watching the store: {watched:?}");
    eprintln!("  reading every domain at every look: {polled:?}");
    // A round looks at the host twice; with nothing changed, a look is one request to sync
    // the watch and one transaction over the empty ledger (start, two listings of its
    // directory, end): 2 * (1 + 4) = 10, whatever the number of guests. The round also reads
    // the pending reservations once (start, listing, end): 13.
    assert!(watched.iter().all(|&r| r == watched[0]), "{watched:?}");
    assert!(watched[0] <= 13, "{watched:?}");
    // Without watches a look reads twelve nodes of every guest (its directory and eleven keys):
    // 2 * 12 more requests per guest.
    assert_eq!(polled[1] - polled[0], 24);
    assert_eq!(polled[2] - polled[0], 10 * 24);
    assert_eq!(polled[3] - polled[0], 100 * 24);

    // Same daemon, same /local/domain: run after the measurements, not beside them.
    a_dynamic_min_written_by_xenstore_write_is_seen_by_the_next_look();
}

/// The host model over xenstored learns of another client's write through its watch, in the
/// look right after the write, and reads only that domain again.
fn a_dynamic_min_written_by_xenstore_write_is_seen_by_the_next_look() {
    use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
    use squeeze::host::{HostConfig, HostModel};
    use squeeze::platform::Platform;
    use std::sync::Arc;

    let fake = FakeHost::in_memory(FakeConfig::default()).unwrap();
    let xs = Arc::new(store());
    xs.rm("/local/domain").unwrap();
    for _ in 0..2 {
        let domid = fake.create_domain(GuestSpec::fixed(256 << 10)).unwrap();
        let d = format!("/local/domain/{domid}");
        for (key, value) in [
            ("memory/target", "262144"),
            ("memory/dynamic-min", "131072"),
            ("memory/dynamic-max", "262144"),
            ("memory/memory-offset", "0"),
            ("control/feature-balloon", "1"),
        ] {
            xs.write(&format!("{d}/{key}"), value).unwrap();
        }
    }
    let fp = fake.platform();
    let platform = Platform {
        hypervisor: fp.hypervisor,
        store: xs.clone(),
        clock: fp.clock,
    };
    let config = HostConfig {
        layout: squeeze::reservations::Layout::new("/t16/squeezed").unwrap(),
        ..HostConfig::default()
    };
    let mut model = HostModel::new(platform, config).unwrap();
    let dynamic_min = |v: &squeeze::host::HostView, domid| {
        v.domains
            .iter()
            .find(|d| d.domid == domid)
            .and_then(|d| d.domain)
            .map(|d| d.dynamic_min_kib)
    };
    let v = model.view().unwrap();
    assert!(model.watching());
    assert_eq!(dynamic_min(&v, 1), Some(131072));
    let v = model.view().unwrap();
    assert_eq!(dynamic_min(&v, 1), Some(131072));

    tool(
        "xenstore-write",
        &["/local/domain/1/memory/dynamic-min", "65536"],
    );
    let before = xs.requests();
    let v = model.view().unwrap();
    assert_eq!(dynamic_min(&v, 1), Some(65536));
    assert_eq!(dynamic_min(&v, 2), Some(131072));
    // A quiet look (5) and domain 1's directory node and eleven keys (with the offset
    // measured at boot).
    assert_eq!(xs.requests() - before, 5 + 12);
}

#[test]
fn one_watch_follows_many_paths_and_a_poll_reports_every_write_finished_before_it() {
    let s = store();
    s.write("/t18/local/domain/3/memory/target", "0").unwrap();
    s.write("/t18/local/domain/3/data/meminfo_free", "0")
        .unwrap();
    let mut w = s.watch("@introduceDomain").unwrap();
    w.add("@releaseDomain").unwrap();
    w.add("/t18/local/domain/3/memory").unwrap();
    w.add("/t18/local/domain/3/data/updated").unwrap();
    assert_eq!(daemon().watches_on("/t18/local/domain/3/memory"), 1);
    // xenstored fires each new watch once.
    let first = w.poll().unwrap();
    for p in [
        "@introduceDomain",
        "@releaseDomain",
        "/t18/local/domain/3/memory",
        "/t18/local/domain/3/data/updated",
    ] {
        assert!(first.iter().any(|e| e == p), "{p} in {first:?}");
    }
    // Another client's write, finished before the poll starts, is in that very poll: the
    // host model relies on it to never look at a stale key. No retries, no sleeps.
    for target in 1..=20 {
        let t = (target * 1024).to_string();
        tool("xenstore-write", &["/t18/local/domain/3/memory/target", &t]);
        let events = w.poll().unwrap();
        assert_eq!(
            events,
            ["/t18/local/domain/3/memory/target"],
            "write {target}"
        );
    }
    // Writes beside the watched keys are not reported.
    tool(
        "xenstore-write",
        &["/t18/local/domain/3/data/meminfo_free", "1"],
    );
    assert!(w.poll().unwrap().is_empty());
    // Domains coming and going.
    daemon().introduce_domain();
    assert_eq!(w.poll().unwrap(), ["@introduceDomain"]);
    daemon().release_domain();
    assert_eq!(w.poll().unwrap(), ["@releaseDomain"]);
    // A path no longer watched is no longer reported, and is gone from xenstored.
    w.remove("/t18/local/domain/3/memory").unwrap();
    assert_eq!(daemon().watches_on("/t18/local/domain/3/memory"), 0);
    tool(
        "xenstore-write",
        &["/t18/local/domain/3/memory/target", "1"],
    );
    assert!(w.poll().unwrap().is_empty());
    // Removing the domain's directory fires the watches under it.
    tool("xenstore-rm", &["/t18/local/domain/3"]);
    assert!(w
        .poll()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("/t18/local/domain/3")));
}

#[test]
fn a_destroyed_domain_fires_its_watch_and_a_dropped_watch_is_gone() {
    let s = store();
    s.write("/t17/local/domain/12/memory/target", "262144")
        .unwrap();
    let mut w = s.watch("/t17/local/domain/12").unwrap();
    assert_eq!(daemon().watches_on("/t17/local/domain/12"), 1);
    // The toolstack destroys the domain: its whole directory goes.
    tool("xenstore-rm", &["/t17/local/domain/12"]);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.extend(w.poll().unwrap());
        if seen.iter().filter(|p| *p == "/t17/local/domain/12").count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Once when the watch was set, once for the removal.
    assert!(
        seen.iter().filter(|p| *p == "/t17/local/domain/12").count() >= 2,
        "{seen:?}"
    );
    assert_eq!(s.read("/t17/local/domain/12/memory/target").unwrap(), None);
    drop(w);
    assert_eq!(daemon().watches_on("/t17/local/domain/12"), 0);
}
