//! The `squeeze` administration tool, run as a process against a fake host directory (and,
//! without `--fake`, against this machine's Xen, which is absent in CI).

#![cfg(feature = "cli")]

use std::path::Path;
use std::process::{Command, Output};

use squeeze::backend::fake::{FakeHost, GuestSpec};

const SQUEEZE: &str = env!("CARGO_BIN_EXE_squeeze");
const FAKE: &str = env!("CARGO_BIN_EXE_squeeze-fake");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

/// Runs `squeeze --fake DIR ARGS...`, which must succeed, and returns its stdout.
fn squeeze(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["--fake", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(SQUEEZE, &all);
    assert!(
        out.status.success(),
        "squeeze {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A default fake host: 16 GiB, of which Xen keeps 256 MiB and dom0 holds 1 GiB, so
/// 16384 - 256 - 1024 = 15104 MiB free.
fn fake_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run(FAKE, &[dir.path().to_str().unwrap(), "create", "0"]);
    assert!(out.status.success());
    dir
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
}

#[test]
fn status_of_a_fresh_host_shows_its_free_memory_and_the_slush() {
    let dir = fake_host();
    let status = squeeze(dir.path(), &["status"]);
    assert!(
        line_with(&status, "host total").ends_with(" 16384.0 MiB"),
        "{status}"
    );
    assert!(
        line_with(&status, "host free").ends_with(" 15104.0 MiB"),
        "{status}"
    );
    // squeezed's default slush: 64 MiB + 8 MiB.
    assert!(
        line_with(&status, "slush").ends_with(" 72.0 MiB"),
        "{status}"
    );
    assert!(status.contains("no reservations"), "{status}");
}

#[test]
fn a_stale_reservation_left_by_a_client_is_seen_and_removed_by_hand() {
    let dir = fake_host();
    let d = dir.path().to_str().unwrap();
    // A client (as xenopsd would) reserves 2 GiB and goes away without using it.
    let out = run(FAKE, &[d, "reserve", "xenopsd", "2097152"]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let status = squeeze(dir.path(), &["status"]);
    assert!(
        line_with(&status, "host free").ends_with(" 13056.0 MiB"),
        "{status}"
    );
    assert!(line_with(&status, "xenopsd").contains(&id), "{status}");
    assert!(
        line_with(&status, "xenopsd").contains(" 2048.0  -"),
        "{status}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&squeeze(dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(json["reserved_kib"], 2_097_152);
    assert_eq!(json["reservations"][0]["id"], id.as_str());

    assert_eq!(squeeze(dir.path(), &["delete", "xenopsd", &id]), "");
    let status = squeeze(dir.path(), &["status"]);
    assert!(
        line_with(&status, "host free").ends_with(" 15104.0 MiB"),
        "{status}"
    );
    assert!(status.contains("no reservations"), "{status}");

    // Deleting it again is an error, exit status 1, with the id in the message.
    let again = run(SQUEEZE, &["--fake", d, "delete", "xenopsd", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains(&id));
}

#[test]
fn a_reservation_transferred_to_a_new_domain_shows_against_that_domain() {
    let dir = fake_host();
    let fake = FakeHost::open(dir.path()).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(512 << 10)).unwrap();
    let id = squeeze(dir.path(), &["reserve", "xl", "524288"])
        .trim()
        .to_string();
    squeeze(dir.path(), &["transfer", "xl", &id, &domid.to_string()]);
    let status = squeeze(dir.path(), &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["reservations"][0]["in_transfer"], domid);
    let dom = json["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domid"] == domid)
        .unwrap_or_else(|| panic!("domain {domid} missing from {status}"));
    assert_eq!(dom["initial_reservation_kib"], 524_288);
    // The table lists the domain too.
    let table = squeeze(dir.path(), &["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{domid} "))),
        "{table}"
    );
}

#[test]
fn bad_sizes_and_unknown_commands_are_refused() {
    let dir = fake_host();
    let d = dir.path().to_str().unwrap();
    // Not a number: a usage error (2).
    assert_eq!(
        run(SQUEEZE, &["--fake", d, "reserve", "xl", "lots"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(SQUEEZE, &["--fake", d, "shrink"]).status.code(),
        Some(2)
    );
    // A negative size reaches the service, which refuses it (1), and nothing is reserved.
    let neg = run(SQUEEZE, &["--fake", d, "reserve", "xl", "--", "-4096"]);
    assert_eq!(neg.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&neg.stderr).contains("invalid memory value"));
    // More than the host has: refused, nothing reserved.
    let big = run(SQUEEZE, &["--fake", d, "reserve", "xl", "33554432"]);
    assert_eq!(big.status.code(), Some(1));
    assert!(squeeze(dir.path(), &["status"]).contains("no reservations"));
}

#[test]
fn balance_on_a_host_without_guests_succeeds() {
    let dir = fake_host();
    assert_eq!(squeeze(dir.path(), &["balance"]), "");
}

#[test]
fn without_xen_the_tool_says_so_and_exits_1() {
    if Path::new("/dev/xen/privcmd").exists() {
        return;
    }
    let out = run(SQUEEZE, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "squeeze: unsupported: no Xen hypervisor: /dev/xen/privcmd not available\n"
    );
}
