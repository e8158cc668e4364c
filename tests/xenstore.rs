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
