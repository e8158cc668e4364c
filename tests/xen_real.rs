//! squeeze on a real Xen host: the memory service drives real PV guests' balloon drivers
//! through a real xenstored and hypervisor.
//!
//! This runs only in a Xen dom0 and only with `SQUEEZE_REAL_XEN=1`; anywhere else it says it
//! is skipped. `tests/xen/run.sh` (`make test-xen`) boots Xen 4.17 with a Debian dom0 under
//! QEMU and runs it there. It needs `xl`, `xenstore-read`/`-write` and the guest kernel and
//! initramfs named by `SQUEEZE_GUEST_KERNEL` / `SQUEEZE_GUEST_RAMDISK`.
//!
//! It is one program rather than independent tests because the checks share guests that take
//! 15 s each to build under emulation. Each check prints `CHECK <name>: PASS|FAIL` with the
//! numbers it compared; the last line is `RESULT: <passed> passed, <failed> failed`.
//!
//! The guests are busybox initramfs guests of Debian's kernel, whose balloon driver follows
//! `memory/target`. Neither it nor a guest agent writes `control/feature-balloon` (the guest
//! cannot write under `control/`), so this program writes it from dom0, with the dynamic range
//! a toolstack would write, once the driver has been seen to move.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use squeeze::host::HostView;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Error, Kib};

const MIB: Kib = 1024;
/// The guests' static and dynamic ranges, in KiB.
const GUEST_MEMORY: Kib = 256 * MIB;
const GUEST_MAXMEM: Kib = 512 * MIB;
const GUEST_DYNAMIC_MIN: Kib = 128 * MIB;
const GUEST_DYNAMIC_MAX: Kib = 256 * MIB;
/// `xl list` rounds to MiB and balloon drivers stop within a few pages of their target.
const SLACK: Kib = 4 * MIB;
const SESSION: &str = "xen-real-test";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child processes of the crash check (see `crash_safety`).
    match args.get(1).map(String::as_str) {
        Some("hold-reservation") => return hold_reservation(&args[2], args[3].parse().unwrap()),
        Some("list-reservations") => return list_reservations(),
        _ => {}
    }
    if std::env::var("SQUEEZE_REAL_XEN").as_deref() != Ok("1") {
        println!("xen_real: skipped (set SQUEEZE_REAL_XEN=1 in a Xen dom0; see tests/xen/run.sh)");
        return;
    }
    env_logger_lite();
    let mut t = Run::default();
    let started = Instant::now();
    let result = run(&mut t);
    if let Err(e) = result {
        t.fail("setup", &e);
    }
    println!(
        "RESULT: {} passed, {} failed ({:.0} s)",
        t.passed,
        t.failed,
        started.elapsed().as_secs_f64()
    );
    std::process::exit(if t.failed == 0 && t.passed > 0 { 0 } else { 1 });
}

/// Library log records at info and above go to stderr (the transcript), timestamped.
fn env_logger_lite() {
    struct L(std::sync::OnceLock<Instant>);
    impl log::Log for L {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let t0 = self.0.get_or_init(Instant::now);
                eprintln!(
                    "  [{:7.2}] squeeze {}: {}",
                    t0.elapsed().as_secs_f64(),
                    r.level(),
                    r.args()
                );
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: L = L(std::sync::OnceLock::new());
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

#[derive(Default)]
struct Run {
    passed: u32,
    failed: u32,
}

impl Run {
    fn check(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(numbers) => {
                self.passed += 1;
                println!("CHECK {name}: PASS ({numbers})");
            }
            Err(why) => self.fail(name, &why),
        }
    }
    fn fail(&mut self, name: &str, why: &str) {
        self.failed += 1;
        println!("CHECK {name}: FAIL: {why}");
    }
}

fn say(msg: &str) {
    println!("--- {msg}");
}

fn mib(kib: Kib) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---- the host, as the admin tools see it ---------------------------------------------------

/// Runs a command and returns its stdout. Under emulation the tools occasionally die of a
/// signal; such a run is tried once more.
fn sh(prog: &str, args: &[&str]) -> Result<String, String> {
    for attempt in 0..2 {
        let out = Command::new(prog)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {prog}: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = format!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if out.status.code().is_some() || attempt == 1 {
            return Err(err);
        }
        println!("    {err}; trying again");
    }
    unreachable!()
}

fn xs_read(path: &str) -> Option<String> {
    sh("xenstore-read", &[path])
        .ok()
        .map(|s| s.trim().to_string())
}

fn xs_write(path: &str, value: &str) -> Result<(), String> {
    sh("xenstore-write", &[path, value]).map(|_| ())
}

/// `xl info`'s free_memory and total_memory, in MiB.
fn xl_info() -> Result<(Kib, Kib), String> {
    let out = sh("xl", &["info"])?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().parse::<Kib>().ok())?
            })
            .ok_or_else(|| format!("xl info has no {name}"))
    };
    Ok((field("free_memory")?, field("total_memory")?))
}

/// `xl list`: (name, domid, memory in MiB, state).
fn xl_list() -> Result<Vec<(String, DomId, Kib, String)>, String> {
    let out = sh("xl", &["list"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
                f.get(4)?.to_string(),
            ))
        })
        .collect())
}

fn print_xl_list(label: &str) {
    match sh("xl", &["list"]) {
        Ok(out) => {
            println!("    xl list ({label}):");
            for l in out.lines() {
                println!("      {l}");
            }
        }
        Err(e) => println!("    xl list ({label}) failed: {e}"),
    }
}

fn xl_mem_mib(domid: DomId) -> Result<Kib, String> {
    xl_list()?
        .into_iter()
        .find(|d| d.1 == domid)
        .map(|d| d.2)
        .ok_or_else(|| format!("domain {domid} is not in xl list"))
}

fn domid_of(name: &str) -> Option<DomId> {
    sh("xl", &["domid", name]).ok()?.trim().parse().ok()
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "timed out after {} s waiting for {what}",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Builds a PV guest with `xl create` and returns its domid. `xl create` itself may crash
/// after the domain is built, so what counts is whether the domain exists.
fn create_guest(
    name: &str,
    memory_mib: Kib,
    maxmem_mib: Kib,
    paused: bool,
) -> Result<DomId, String> {
    let kernel = std::env::var("SQUEEZE_GUEST_KERNEL").unwrap_or("/srv/xen-test/vmlinuz".into());
    let ramdisk =
        std::env::var("SQUEEZE_GUEST_RAMDISK").unwrap_or("/srv/xen-test/guest-initrd.gz".into());
    let cfg = format!(
        "name = \"{name}\"\ntype = \"pv\"\nkernel = \"{kernel}\"\nramdisk = \"{ramdisk}\"\n\
         extra = \"console=hvc0 quiet\"\nmemory = {memory_mib}\nmaxmem = {maxmem_mib}\n\
         vcpus = 1\non_crash = \"preserve\"\n"
    );
    let path = format!("/tmp/{name}.cfg");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for attempt in 0..2 {
        let mut args = vec!["create", path.as_str()];
        if paused {
            args.insert(1, "-p");
        }
        let r = sh("xl", &args);
        if let Some(domid) = domid_of(name) {
            println!(
                "    xl create {name}: domain {domid}, {memory_mib} MiB (maxmem {maxmem_mib} MiB) in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(domid);
        }
        if attempt == 1 {
            return Err(format!("cannot create {name}: {:?}", r.err()));
        }
        println!(
            "    xl create {name} left no domain ({:?}); trying again",
            r.err()
        );
    }
    unreachable!()
}

/// Waits until the guest's balloon driver follows `memory/target`: lowers the target by
/// 16 MiB, sees the allocation drop, and puts it back.
fn wait_for_balloon_driver(domid: DomId) -> Result<f64, String> {
    let start = Instant::now();
    let target_path = format!("/local/domain/{domid}/memory/target");
    let target: Kib = xs_read(&target_path)
        .and_then(|t| t.parse().ok())
        .ok_or("no memory/target")?;
    let before = xl_mem_mib(domid)?;
    wait_for("the guest kernel to boot", Duration::from_secs(180), || {
        // Linux's shutdown watcher announces itself once xenbus is up.
        (xs_read(&format!("/local/domain/{domid}/control/feature-poweroff")).as_deref()
            == Some("1"))
        .then_some(())
    })?;
    xs_write(&target_path, &(target - 16 * MIB).to_string())?;
    let moved = wait_for(
        "the balloon driver to move",
        Duration::from_secs(120),
        || {
            let now = xl_mem_mib(domid).ok()?;
            (now <= before - 12).then_some(now)
        },
    );
    xs_write(&target_path, &target.to_string())?;
    let moved = moved?;
    wait_for(
        "the balloon driver to come back",
        Duration::from_secs(60),
        || (xl_mem_mib(domid).ok()? >= before - 1).then_some(()),
    )?;
    println!(
        "    domain {domid}: balloon driver live ({before} -> {moved} -> {before} MiB), seen in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(start.elapsed().as_secs_f64())
}

/// Writes what a toolstack writes for a ballooning guest: its dynamic range and the
/// balloon-driver flag.
fn make_balloonable(domid: DomId) -> Result<(), String> {
    let p = |k: &str| format!("/local/domain/{domid}/{k}");
    xs_write(&p("memory/dynamic-min"), &GUEST_DYNAMIC_MIN.to_string())?;
    xs_write(&p("memory/dynamic-max"), &GUEST_DYNAMIC_MAX.to_string())?;
    xs_write(&p("control/feature-balloon"), "1")
}

// ---- the service ---------------------------------------------------------------------------

fn open_service() -> Result<Service, String> {
    open_service_with(squeeze::Policy::Classic)
}

/// The service with `policy`: the checks run under squeezed's algorithm and then under the
/// adaptive policy (the service's default), each on fresh guests.
fn open_service_with(policy: squeeze::Policy) -> Result<Service, String> {
    let platform = squeeze::backend::xen::platform().map_err(|e| e.to_string())?;
    let mut config = ServiceConfig {
        policy,
        ..ServiceConfig::default()
    };
    // Balloon drivers are slower under emulation: allow twice squeezed's 5 s without progress.
    config.options.stuck_after_seconds = 10.0;
    Service::new(platform, config).map_err(|e| e.to_string())
}

fn view(s: &Service) -> Result<HostView, String> {
    s.host_view().map_err(|e| e.to_string())
}

/// (target, actual) of a balanced domain, in KiB, as the service sees it.
fn seen(v: &HostView, domid: DomId) -> Option<(Kib, Kib)> {
    v.domains
        .iter()
        .find(|d| d.domid == domid)?
        .domain
        .as_ref()
        .map(|d| (d.target_kib, d.memory_actual_kib))
}

// ---- the checks ----------------------------------------------------------------------------

fn run(t: &mut Run) -> Result<(), String> {
    for policy in [squeeze::Policy::Classic, squeeze::Policy::Adaptive] {
        run_with(t, policy)?;
    }
    Ok(())
}

/// The checks under one policy, on two guests built for it and destroyed after it.
fn run_with(t: &mut Run, policy: squeeze::Policy) -> Result<(), String> {
    let tag = match policy {
        squeeze::Policy::Classic => "classic",
        squeeze::Policy::Adaptive => "adaptive",
    };
    let name = |check: &str| format!("{check} [{tag}]");
    say(&format!(
        "opening squeeze's Xen platform (libxenctrl, xenstored), {tag} policy"
    ));
    let s = open_service_with(policy)?;
    s.login(SESSION).map_err(|e| e.to_string())?;
    let slush = s.get_host_reserved_memory();

    t.check(&name("status_matches_xl_info"), status_matches_xl_info(&s));

    say("building two PV guests: memory=256 MiB, maxmem=512 MiB, dynamic range 128..256 MiB");
    let g1 = create_guest("sqz-g1", GUEST_MEMORY / MIB, GUEST_MAXMEM / MIB, false)?;
    let g2 = create_guest("sqz-g2", GUEST_MEMORY / MIB, GUEST_MAXMEM / MIB, false)?;
    for d in [g1, g2] {
        wait_for_balloon_driver(d)?;
        make_balloonable(d)?;
    }
    s.balance_memory().map_err(|e| e.to_string())?;
    print_xl_list("two guests booted, balanced");

    let r2 = match reserve_more_than_free(&s, g1, g2, slush) {
        Ok((numbers, id, kib)) => {
            t.check(
                &name("reserve_more_than_free_balloons_guests_down"),
                Ok(numbers),
            );
            Some((id, kib))
        }
        Err(e) => {
            t.check(&name("reserve_more_than_free_balloons_guests_down"), Err(e));
            None
        }
    };
    if let Some((id, kib)) = r2 {
        t.check(
            &name("transfer_delete_balance_grows_guests_back"),
            transfer_delete_balance(&s, g1, g2, &id, kib),
        );
    }
    t.check(
        &name("paused_guest_is_uncooperative_others_serve"),
        paused_guest(&s, g1, g2, slush, policy),
    );
    if policy == squeeze::Policy::Classic {
        // The ledger is the same whatever the policy: one crash is enough.
        t.check("reservation_survives_killed_holder", crash_safety(&s));
    }
    print_xl_list("end");
    for guest in ["sqz-g1", "sqz-g2"] {
        let _ = sh("xl", &["destroy", guest]);
    }
    Ok(())
}

/// Check 1: the service's view of host memory is Xen's, and dom0 is left alone.
fn status_matches_xl_info(s: &Service) -> Result<String, String> {
    let v = view(s)?;
    let (xl_free, xl_total) = xl_info()?;
    let ours = (v.xen_free_kib + v.scrub_kib) / MIB;
    println!(
        "    squeeze: total {}, Xen free {} + scrub {}, free for reservations {}; xl info: total_memory {xl_total} MiB, free_memory {xl_free} MiB",
        mib(v.total_kib),
        mib(v.xen_free_kib),
        mib(v.scrub_kib),
        mib(v.free_kib)
    );
    if (ours - xl_free).abs() > 2 {
        return Err(format!("free {ours} MiB, xl info says {xl_free} MiB"));
    }
    if (v.total_kib / MIB - xl_total).abs() > 1 {
        return Err(format!(
            "total {} MiB, xl info says {xl_total} MiB",
            v.total_kib / MIB
        ));
    }
    // Unmanaged, domain 0 is not looked at at all (squeezed leaves it alone too).
    if let Some(d) = v.domains.iter().find(|d| d.domid == 0) {
        if d.domain.is_some() {
            return Err("domain 0 is balanced although it is not managed".into());
        }
    }
    let dom0_listed = v.domains.iter().any(|d| d.domid == 0);
    let diag: serde_json::Value =
        serde_json::from_str(&s.get_diagnostics().map_err(|e| e.to_string())?)
            .map_err(|e| format!("diagnostics are not JSON: {e}"))?;
    let diag_free = diag["host"]["free_kib"]
        .as_i64()
        .ok_or("no host.free_kib in diagnostics")?;
    if (diag_free - v.free_kib).abs() > 2 * MIB {
        return Err(format!(
            "diagnostics free {diag_free} KiB, view {} KiB",
            v.free_kib
        ));
    }
    Ok(format!(
        "free {ours} MiB vs xl info {xl_free} MiB, total {} vs {xl_total} MiB, \
         domain 0 not balanced (listed: {dom0_listed})",
        v.total_kib / MIB
    ))
}

/// Check 2: a reservation larger than host free memory makes both guests balloon down.
fn reserve_more_than_free(
    s: &Service,
    g1: DomId,
    g2: DomId,
    slush: Kib,
) -> Result<(String, String, Kib), String> {
    let before = view(s)?;
    let (m1, m2) = (xl_mem_mib(g1)?, xl_mem_mib(g2)?);
    // 160 MiB more than the service can hand out without ballooning: both guests must give.
    let kib = (before.free_kib - slush + 160 * MIB) / MIB * MIB;
    say(&format!(
        "reserving {} with {} free (slush {}): guests at {m1} and {m2} MiB",
        mib(kib),
        mib(before.free_kib),
        mib(slush)
    ));
    let start = Instant::now();
    let id = s.reserve_memory(SESSION, kib).map_err(|e| e.to_string())?;
    let took = start.elapsed().as_secs_f64();
    let (a1, a2) = (xl_mem_mib(g1)?, xl_mem_mib(g2)?);
    let (xl_free, _) = xl_info()?;
    print_xl_list("after the reservation");
    let after = view(s)?;
    let t1 = seen(&after, g1).map(|x| x.0).unwrap_or(0);
    let t2 = seen(&after, g2).map(|x| x.0).unwrap_or(0);
    let numbers = format!(
        "reserved {} in {took:.1} s; guests {m1}+{m2} -> {a1}+{a2} MiB (targets {} + {}); xl info free {xl_free} MiB >= reservation + slush {} MiB",
        mib(kib),
        mib(t1),
        mib(t2),
        (kib + slush) / MIB
    );
    println!("    {numbers}");
    if a1 >= m1 || a2 >= m2 {
        return Err(format!("guests did not both shrink: {numbers}"));
    }
    if (m1 + m2 - a1 - a2) * MIB < 160 * MIB - SLACK {
        return Err(format!("guests gave less than 160 MiB: {numbers}"));
    }
    if a1 * MIB < GUEST_DYNAMIC_MIN - SLACK || a2 * MIB < GUEST_DYNAMIC_MIN - SLACK {
        return Err(format!("a guest went below its dynamic-min: {numbers}"));
    }
    // xl rounds down to MiB; the balloon drivers stop within a few pages of their targets.
    if xl_free * MIB < kib + slush - SLACK {
        return Err(format!(
            "host free memory does not cover the reservation: {numbers}"
        ));
    }
    if !after
        .reservations
        .iter()
        .any(|r| r.id == id && r.kib == kib)
    {
        return Err(format!("reservation {id} is not in the ledger"));
    }
    Ok((numbers, id, kib))
}

/// Check 3: the reservation goes to a new guest; deleted and with the guest gone, balancing
/// gives the first two guests their memory back.
fn transfer_delete_balance(
    s: &Service,
    g1: DomId,
    g2: DomId,
    id: &str,
    kib: Kib,
) -> Result<String, String> {
    // The new guest uses what was reserved for it, less room for its page tables.
    let size_mib = kib / MIB - 16;
    say(&format!(
        "building sqz-g3 ({size_mib} MiB) into the reservation"
    ));
    let g3 = create_guest("sqz-g3", size_mib, size_mib, true)?;
    s.transfer_reservation_to_domain(SESSION, id, g3)
        .map_err(|e| e.to_string())?;
    let v = view(s)?;
    let r = v
        .reservations
        .iter()
        .find(|r| r.id == id)
        .ok_or("reservation gone after the transfer")?;
    if r.in_transfer != Some(g3) {
        return Err(format!(
            "reservation is in transfer to {:?}, not {g3}",
            r.in_transfer
        ));
    }
    let queried = s
        .query_reservation_of_domain(SESSION, g3)
        .map_err(|e| e.to_string())?;
    if queried != id {
        return Err(format!("domain {g3} holds {queried}, not {id}"));
    }
    let ir = xs_read(&format!("/local/domain/{g3}/memory/initial-reservation"));
    println!("    transferred to domain {g3}: initial-reservation {ir:?} KiB");
    print_xl_list("sqz-g3 built");
    s.delete_reservation(SESSION, id)
        .map_err(|e| e.to_string())?;
    sh("xl", &["destroy", "sqz-g3"])?;
    wait_for("sqz-g3 to go", Duration::from_secs(60), || {
        domid_of("sqz-g3").is_none().then_some(())
    })?;
    let start = Instant::now();
    s.balance_memory().map_err(|e| e.to_string())?;
    // The balance sets the targets; the drivers may still be on their way up.
    let grown = wait_for("the guests to grow back", Duration::from_secs(120), || {
        let (a, b) = (xl_mem_mib(g1).ok()?, xl_mem_mib(g2).ok()?);
        (a * MIB >= GUEST_DYNAMIC_MAX - SLACK && b * MIB >= GUEST_DYNAMIC_MAX - SLACK)
            .then_some((a, b))
    });
    let took = start.elapsed().as_secs_f64();
    print_xl_list("after delete + balance");
    let v = view(s)?;
    let (a, b) =
        grown.map_err(|e| format!("{e}: targets {:?} {:?}", seen(&v, g1), seen(&v, g2)))?;
    if v.reservations.iter().any(|r| r.id == id) {
        return Err(format!("reservation {id} still in the ledger"));
    }
    Ok(format!(
        "transferred {} to domain {g3}, deleted, destroyed; balance grew guests back to {a} + {b} MiB (dynamic-max 256) in {took:.1} s",
        mib(kib)
    ))
}

/// Check 4: a paused guest cannot balloon. A reservation the other guest can serve succeeds
/// and the paused one is flagged uncooperative; one that needs the paused guest fails naming it.
/// Classic flags it by squeezed's 20 s rule; adaptive judges a guest on what it is asked, and
/// once the other guest has served the first reservation the paused one has nothing left to
/// do, so there it is flagged when the reservation only it could serve fails naming it, by the
/// time that error returns.
fn paused_guest(
    s: &Service,
    g1: DomId,
    g2: DomId,
    slush: Kib,
    policy: squeeze::Policy,
) -> Result<String, String> {
    sh("xl", &["pause", "sqz-g2"])?;
    let result = paused_guest_inner(s, g1, g2, slush, policy);
    let _ = sh("xl", &["unpause", "sqz-g2"]);
    let _ = s.balance_memory();
    result
}

fn paused_guest_inner(
    s: &Service,
    g1: DomId,
    g2: DomId,
    slush: Kib,
    policy: squeeze::Policy,
) -> Result<String, String> {
    let v = view(s)?;
    let (m1, m2) = (xl_mem_mib(g1)?, xl_mem_mib(g2)?);
    let kib = (v.free_kib - slush + 80 * MIB) / MIB * MIB;
    say(&format!(
        "domain {g2} paused; reserving {} with {} free: 80 MiB must come from the guests",
        mib(kib),
        mib(v.free_kib)
    ));
    let start = Instant::now();
    let id = s
        .reserve_memory(SESSION, kib)
        .map_err(|e| format!("reservation with one guest paused failed: {e}"))?;
    let took = start.elapsed().as_secs_f64();
    let (a1, a2) = (xl_mem_mib(g1)?, xl_mem_mib(g2)?);
    print_xl_list("after the reservation with sqz-g2 paused");
    if m1 - a1 < 80 - 4 || (a2 - m2).abs() > 1 {
        return Err(format!(
            "expected {g1} to give 80 MiB alone: {m1} -> {a1}, paused {m2} -> {a2} MiB"
        ));
    }
    let flag = format!("/local/domain/{g2}/memory/uncooperative");
    // g1 can give at most down to its dynamic-min; a reservation of more needs the paused guest.
    let refuse_needing_g2 = || -> Result<String, String> {
        let v = view(s)?;
        let want = (v.free_kib - slush + (a1 * MIB - GUEST_DYNAMIC_MIN) + 64 * MIB) / MIB * MIB;
        match s.reserve_memory(SESSION, want) {
            Err(Error::DomainsRefusedToCooperate { domids }) if domids.contains(&g2) => {
                Ok(format!(
                    "{want} KiB refused: {}",
                    Error::DomainsRefusedToCooperate { domids }
                ))
            }
            Err(e) => Err(format!("expected domain {g2} to be named, got: {e}")),
            Ok(id2) => {
                let _ = s.delete_reservation(SESSION, &id2);
                Err(format!(
                    "{want} KiB was reserved although domain {g2} is paused"
                ))
            }
        }
    };
    let (flagged, named) = if policy == squeeze::Policy::Classic {
        // The paused guest sits off the target it was given; after the service's 20 s it is
        // flagged. Balancing looks at the host, which is when the flag is written.
        let flagged = wait_for("memory/uncooperative", Duration::from_secs(60), || {
            let _ = s.balance_memory();
            xs_read(&flag).map(|_| ())
        });
        let named = refuse_needing_g2();
        (flagged, named)
    } else {
        // Named in the error, flagged by the time it returns: no waiting.
        let named = refuse_needing_g2();
        let flagged = xs_read(&flag)
            .map(|_| ())
            .ok_or_else(|| "no flag when the error returned".to_string());
        (flagged, named)
    };
    let flagged_after = start.elapsed().as_secs_f64();
    let target2 = seen(&view(s)?, g2).map(|x| x.0);
    println!(
        "    domain {g2}: target {target2:?} KiB, held {a2} MiB, uncooperative flag: {}",
        flagged.is_ok()
    );
    s.delete_reservation(SESSION, &id)
        .map_err(|e| e.to_string())?;
    let named = named?;
    flagged.map_err(|e| format!("paused domain {g2} was not flagged: {e}"))?;
    Ok(format!(
        "reserved {} in {took:.1} s: domain {g1} {m1} -> {a1} MiB, paused domain {g2} {m2} -> {a2} MiB, flagged uncooperative after {flagged_after:.0} s; {named}",
        mib(kib)
    ))
}

/// Check 5: a process holding a reservation is killed with SIGKILL; a new process still sees
/// the reservation in the store, and the session's next login drops it.
fn crash_safety(s: &Service) -> Result<String, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kib = 32 * MIB;
    let mut child = Command::new(&me)
        .args(["hold-reservation", "crashed-client", &kib.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let id = line
        .trim()
        .strip_prefix("RESERVED ")
        .ok_or_else(|| format!("holder said {line:?}"))?
        .to_string();
    let pid = child.id();
    child.kill().map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    say(&format!(
        "holder {pid} reserved {id} and was killed ({status})"
    ));
    let listed = Command::new(&me)
        .arg("list-reservations")
        .output()
        .map_err(|e| e.to_string())?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    let in_store = sh("xenstore-ls", &["/squeezed/state"]).unwrap_or_default();
    println!("    a new process lists: {}", listed.trim());
    println!("    xenstore-ls /squeezed/state:");
    for l in in_store.lines() {
        println!("      {l}");
    }
    if !listed.contains(&format!("crashed-client {id} {kib}")) {
        return Err(format!("a new process does not see reservation {id}"));
    }
    if !in_store.contains(&id) {
        return Err(format!("{id} is not under /squeezed/state"));
    }
    s.login("crashed-client").map_err(|e| e.to_string())?;
    if view(s)?.reservations.iter().any(|r| r.id == id) {
        return Err(format!("{id} survived its session's next login"));
    }
    Ok(format!(
        "{} reservation {id} outlived SIGKILL of its holder, seen by a new process and in xenstore, dropped by the next login",
        mib(kib)
    ))
}

/// The crash check's holder: reserves and waits to be killed.
fn hold_reservation(session: &str, kib: Kib) {
    let s = open_service().expect("open the service");
    let id = s.reserve_memory(session, kib).expect("reserve");
    println!("RESERVED {id}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The crash check's new process: prints every reservation, one per line.
fn list_reservations() {
    let s = open_service().expect("open the service");
    let v = s.host_view().expect("look at the host");
    for r in v.reservations {
        println!("{} {} {}", r.session, r.id, r.kib);
    }
}
