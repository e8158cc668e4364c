//! `squeeze status/reserve/transfer/delete/balance`, run as a process against a fake host
//! directory (and, without `--fake`, against this machine's Xen, which is absent in CI).

use std::path::Path;
use std::process::{Command, Output};

use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::service::{Service, ServiceConfig};

const SQUEEZE: &str = env!("CARGO_BIN_EXE_squeeze");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

/// `ARGS... --fake DIR`.
fn on_fake<'a>(dir: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--fake", dir.to_str().unwrap()]);
    all
}

/// Runs `squeeze ARGS... --fake DIR`, which must succeed, and returns its stdout.
fn squeeze(dir: &Path, args: &[&str]) -> String {
    let out = run(SQUEEZE, &on_fake(dir, args));
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
    FakeHost::create(dir.path(), FakeConfig::default()).unwrap();
    dir
}

/// A client of the host's memory service (as xenopsd would be), in this process.
fn client(dir: &Path) -> Service {
    let config = ServiceConfig {
        lock_path: dir.join("host.lock"),
        boot_time_record_path: dir.join("boot_time_memory"),
        ..ServiceConfig::default()
    };
    Service::new(FakeHost::open(dir).unwrap().platform(), config).unwrap()
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
    // A client reserves 2 GiB and goes away without using it.
    let id = client(dir.path())
        .reserve_memory("xenopsd", 2 << 20)
        .unwrap();

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
    assert_eq!(json["host"]["reserved_kib"], 2_097_152);
    assert_eq!(json["sessions"][0]["session"], "xenopsd");
    assert_eq!(json["sessions"][0]["reservations"][0]["id"], id.as_str());

    assert_eq!(squeeze(dir.path(), &["delete", "xenopsd", &id]), "");
    let status = squeeze(dir.path(), &["status"]);
    assert!(
        line_with(&status, "host free").ends_with(" 15104.0 MiB"),
        "{status}"
    );
    assert!(status.contains("no reservations"), "{status}");

    // Deleting it again is an error, exit status 1, with the id in the message.
    let again = run(SQUEEZE, &on_fake(dir.path(), &["delete", "xenopsd", &id]));
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
    assert_eq!(json["sessions"][0]["reservations"][0]["domid"], domid);
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
    let d = dir.path();
    // Not a number: a usage error (2).
    let lots = run(SQUEEZE, &on_fake(d, &["reserve", "xl", "lots"]));
    assert_eq!(lots.status.code(), Some(2));
    assert_eq!(
        run(SQUEEZE, &on_fake(d, &["shrink"])).status.code(),
        Some(2)
    );
    // A negative size reaches the service, which refuses it (1), and nothing is reserved.
    let fake_dir = d.to_str().unwrap();
    let neg = run(
        SQUEEZE,
        &["reserve", "--fake", fake_dir, "xl", "--", "-4096"],
    );
    assert_eq!(neg.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&neg.stderr).contains("invalid memory value"));
    // More than the host has: refused, nothing reserved.
    let big = run(SQUEEZE, &on_fake(d, &["reserve", "xl", "33554432"]));
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
    let out = run(SQUEEZE, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(not(feature = "xen")) {
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("built without Xen support"), "{stderr}");
    } else if !Path::new("/dev/xen/privcmd").exists() {
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr,
            "squeeze: unsupported: no Xen hypervisor: /dev/xen/privcmd not available\n"
        );
    }
}

#[test]
fn status_json_is_the_diagnostics_document_and_validates_against_its_schema() {
    let dir = fake_host();
    let fake = FakeHost::open(dir.path()).unwrap();
    let guest = fake
        .create_domain(GuestSpec::ballooning(512 << 10, 2 << 20))
        .unwrap();
    fake.build_domain(guest, 2 << 20).unwrap();
    fake.unpause(guest).unwrap();
    fake.advance(2.0).unwrap();
    // 15104 MiB free less the guest's 2 GiB: 13056 MiB. 13 GiB (13312 MiB) plus the 72 MiB
    // slush is 328 MiB more than that, so the guest (512 MiB..2 GiB) balloons down.
    squeeze(dir.path(), &["reserve", "--quiet", "xenopsd", "13631488"]);
    let text = squeeze(dir.path(), &["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/diagnostics.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{text}");
    assert_eq!(doc["schema_version"], 3);
    assert_eq!(doc["host"]["reserved_kib"], 13_631_488);
    // The same document the library gives a client of the same host (counters aside: they
    // are each process's own).
    let mine: serde_json::Value =
        serde_json::from_str(&client(dir.path()).get_diagnostics().unwrap()).unwrap();
    for key in ["host", "sessions", "settings", "policy", "schema_version"] {
        assert_eq!(doc[key], mine[key], "{key}");
    }
    let g = doc["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domid"] == guest)
        .unwrap();
    assert!(g["target_kib"].as_i64().unwrap() < 2 << 20, "{g}");
}

#[test]
fn guest_policy_writes_a_range_from_the_vm_config_and_the_host_defaults() {
    let dir = fake_host();
    let fake = FakeHost::open(dir.path()).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(1 << 20)).unwrap();
    let vm = dir.path().join("web.cfg");
    std::fs::write(&vm, "name = \"web\"\nmemory = 1024\nsqueeze_weight = 2\n").unwrap();
    let xl_conf = dir.path().join("xl.conf");
    std::fs::write(
        &xl_conf,
        "squeeze = 1\nsqueeze_default_dynamic_min = \"25%\"\n",
    )
    .unwrap();
    let id = domid.to_string();
    let vm_arg = vm.to_str().unwrap();
    let conf_arg = xl_conf.to_str().unwrap();
    let out = squeeze(
        dir.path(),
        &[
            "guest-policy",
            &id,
            "--memory",
            "1024",
            "--maxmem",
            "2048",
            "--vm-config",
            vm_arg,
            "--xl-conf",
            conf_arg,
        ],
    );
    // A quarter of 1024 MiB up to its memory; its own weight.
    assert_eq!(
        out,
        format!(
            "domain {domid}: dynamic-min 256.0 MiB, dynamic-max 1024.0 MiB, weight 2, ballooned\n"
        )
    );
    let read = |k: &str| {
        squeeze::platform::Store::read(&fake, &format!("/local/domain/{domid}/{k}")).unwrap()
    };
    assert_eq!(read("memory/dynamic-min").as_deref(), Some("262144"));
    assert_eq!(read("control/feature-balloon").as_deref(), Some("1"));

    // Without keys or defaults: fixed at its memory, no balloon driver claimed.
    let other = fake.create_domain(GuestSpec::fixed(512 << 10)).unwrap();
    let out = squeeze(
        dir.path(),
        &["guest-policy", &other.to_string(), "--memory", "512"],
    );
    assert!(
        out.ends_with("dynamic-max 512.0 MiB, weight 1, fixed\n"),
        "{out}"
    );
    // A defaults file that cannot be read is an error naming it, and nothing is written.
    let bad = run(
        SQUEEZE,
        &on_fake(
            dir.path(),
            &[
                "guest-policy",
                &id,
                "--memory",
                "1024",
                "--vm-config",
                vm_arg,
                "--xl-conf",
                "/nonexistent",
            ],
        ),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read /nonexistent"));
}

#[test]
fn status_lists_the_reservations_waiting_for_memory_and_whose_owner_is_gone() {
    use squeeze::pending::{Entry, Owner, VERSION};
    use squeeze::platform::Store;
    let dir = fake_host();
    // The first run records host free memory at boot (three samples, 2 s of the fake's time).
    squeeze(dir.path(), &["status"]);
    let fake = FakeHost::open(dir.path()).unwrap();
    let now = squeeze::platform::Clock::now(&fake);
    let entry = |id: &str, session: &str, min: i64, max: i64, order, owner| Entry {
        version: VERSION,
        id: id.into(),
        session: session.into(),
        min_kib: min,
        max_kib: max,
        need_kib: max,
        order,
        since_s: now,
        owner,
    };
    // This test's process waits for 1 GiB; a process that is gone waited for 256..512 MiB.
    let waiting = [
        entry(
            "0b7c3e52-93c4-4bd6-8f0e-6a1f4f5d2c10",
            "xenopsd",
            1 << 20,
            1 << 20,
            1,
            Owner::this_process(),
        ),
        entry(
            "5d0a1f3e-2b6c-4e8f-9a7d-1c2b3a4d5e6f",
            "xl-4242",
            256 << 10,
            512 << 10,
            2,
            Owner {
                pid: u32::MAX - 1,
                start: 1,
            },
        ),
    ];
    for e in &waiting {
        let path = format!("/squeezed/pending/{}", e.id);
        fake.write(&path, &serde_json::to_string(e).unwrap())
            .unwrap();
    }
    fake.advance(12.0).unwrap();
    let status = squeeze(dir.path(), &["status"]);
    // Waiting is not holding: the ledger is empty, the requests are listed apart.
    assert!(status.contains("no reservations"), "{status}");
    let mine = line_with(&status, "xenopsd");
    assert!(mine.contains(waiting[0].id.as_str()), "{status}");
    assert!(mine.contains(" 1024.0 "), "{status}");
    assert!(mine.contains(" 12s "), "{status}");
    assert!(
        mine.ends_with(&format!("pid {}", std::process::id())),
        "{status}"
    );
    let gone = line_with(&status, "xl-4242");
    assert!(gone.contains(" 256.0..512.0 "), "{status}");
    assert!(
        gone.ends_with(&format!("pid {} (gone)", u32::MAX - 1)),
        "{status}"
    );
    // And in the document.
    let doc: serde_json::Value =
        serde_json::from_str(&squeeze(dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(doc["pending"][0]["waited_s"], 12.0);
    assert_eq!(doc["pending"][1]["owner_alive"], false);
}
