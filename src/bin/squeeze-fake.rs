//! Drives the memory service against a fake host kept in a directory, one operation per
//! process (as `xl` would) or a loop of them. The multi-process and crash tests run it; it is
//! also handy to try the service by hand:
//!
//! ```text
//! squeeze-fake DIR create TOTAL_KIB             new fake host (16 GiB with 1 GiB dom0 if 0)
//! squeeze-fake DIR guest MIN_KIB MAX_KIB          boot a ballooning guest at MAX_KIB
//! squeeze-fake DIR login SERVICE
//! squeeze-fake DIR reserve SESSION KIB
//! squeeze-fake DIR reserve-range SESSION MIN_KIB MAX_KIB
//! squeeze-fake DIR transfer SESSION ID DOMID
//! squeeze-fake DIR delete SESSION ID
//! squeeze-fake DIR query SESSION DOMID
//! squeeze-fake DIR balance
//! squeeze-fake DIR diagnostics
//! squeeze-fake DIR pause-at POINT OPERATION...  stop forever at a fault point (prints "AT POINT")
//! squeeze-fake DIR worker SESSION THREADS ITERATIONS SEED [progress]
//! ```
//!
//! The lock file is `DIR/host.lock`. Exit status 0 on success, 1 on a service error (printed as
//! `error: <variant>: <message>`), 2 on bad usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::service::{Service, ServiceConfig};
use squeeze::{Error, Kib};

fn usage() -> ! {
    eprintln!("usage: squeeze-fake DIR COMMAND ARGS... (see the source for commands)");
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(s: Option<&String>) -> T {
    s.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::CannotFreeThisMuchMemory { .. } => "CannotFreeThisMuchMemory",
        Error::DomainsRefusedToCooperate { .. } => "DomainsRefusedToCooperate",
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::InvalidMemoryValue(_) => "InvalidMemoryValue",
        Error::Backend(_) => "Backend",
        Error::Unsupported(_) => "Unsupported",
        Error::UnknownReservation(_) => "UnknownReservation",
        Error::NoReservation(_) => "NoReservation",
        Error::Cancelled => "Cancelled",
        Error::DeadlineCannotBeMet { .. } => "DeadlineCannotBeMet",
    }
}

/// The service configuration every process of one fake host uses.
fn config(dir: &Path) -> ServiceConfig {
    ServiceConfig {
        lock_path: dir.join("host.lock"),
        boot_time_record_path: dir.join("boot_time_memory"),
        boot_time_interval_s: 0.1,
        ..ServiceConfig::default()
    }
}

fn open(dir: &Path) -> Result<(FakeHost, Service), Error> {
    let fake = FakeHost::open(dir)?;
    let service = Service::new(fake.platform(), config(dir))?;
    Ok((fake, service))
}

fn run(dir: &Path, args: &[String]) -> Result<String, Error> {
    let arg = |i: usize| args.get(i);
    let cmd = arg(0).map(String::as_str).unwrap_or_else(|| usage());
    if cmd == "create" {
        let total: Kib = num(arg(1));
        let cfg = if total == 0 {
            FakeConfig::default()
        } else {
            FakeConfig {
                total_kib: total,
                ..FakeConfig::default()
            }
        };
        FakeHost::create(dir, cfg)?;
        return Ok(String::new());
    }
    let (fake, service) = open(dir)?;
    let s = |i: usize| arg(i).map(String::as_str).unwrap_or_else(|| usage());
    match cmd {
        "login" => service.login(s(1)),
        "reserve" => service.reserve_memory(s(1), num(arg(2))),
        "reserve-range" => service
            .reserve_memory_range(s(1), num(arg(2)), num(arg(3)))
            .map(|(id, kib)| format!("{id} {kib}")),
        "transfer" => service
            .transfer_reservation_to_domain(s(1), s(2), num(arg(3)))
            .map(|()| String::new()),
        "delete" => service
            .delete_reservation(s(1), s(2))
            .map(|()| String::new()),
        "query" => service.query_reservation_of_domain(s(1), num(arg(2))),
        "balance" => service.balance_memory().map(|()| String::new()),
        "diagnostics" => service.get_diagnostics(),
        "pause-at" => {
            let point = s(1).to_string();
            service.set_fault_hook(Some(Arc::new(move |p: &str| {
                if p == point {
                    println!("AT {p}");
                    let _ = std::io::stdout().flush();
                    // Hold everything (the host lock included) until killed.
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
            })));
            run_on(&service, &args[2..])
        }
        "guest" => {
            use squeeze::platform::Hypervisor;
            let spec = GuestSpec::ballooning(num(arg(1)), num(arg(2)));
            let domid = fake.create_domain(spec)?;
            fake.set_maxmem_kib(domid, spec.dynamic_max_kib)?;
            fake.build_domain(domid, spec.dynamic_max_kib)?;
            fake.unpause(domid)?;
            fake.advance(1.0)?;
            Ok(domid.to_string())
        }
        "worker" => worker(
            &fake,
            &service,
            s(1),
            (num(arg(2)), num(arg(3))),
            num(arg(4)),
            arg(5).is_some_and(|a| a == "progress"),
        ),
        _ => usage(),
    }
}

fn run_on(service: &Service, args: &[String]) -> Result<String, Error> {
    let arg = |i: usize| args.get(i);
    let s = |i: usize| arg(i).map(String::as_str).unwrap_or_else(|| usage());
    match s(0) {
        "reserve" => service.reserve_memory(s(1), num(arg(2))),
        "reserve-range" => service
            .reserve_memory_range(s(1), num(arg(2)), num(arg(3)))
            .map(|(id, kib)| format!("{id} {kib}")),
        "transfer" => service
            .transfer_reservation_to_domain(s(1), s(2), num(arg(3)))
            .map(|()| String::new()),
        "delete" => service
            .delete_reservation(s(1), s(2))
            .map(|()| String::new()),
        "login" => service.login(s(1)),
        _ => usage(),
    }
}

/// A small deterministic generator, so a failing worker run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `threads` threads, each `iterations` times: reserve a range, then either delete the
/// reservation or create a domain, transfer the reservation to it, build it with exactly the
/// reserved memory (which must succeed: the memory was promised), boot it, and later destroy
/// it. Now and then it balances the host. Prints one line per thread:
/// `ok RESERVED REFUSED BUILT BUSY`, BUSY counting calls refused because the service was
/// "already in use" (a shared handle must never refuse a concurrent call). With `progress`, it
/// also prints `calls N` after each iteration (N service calls made in it), flushed at once, so
/// a test that kills the worker knows how many calls it made.
fn worker(
    fake: &FakeHost,
    service: &Service,
    session: &str,
    (threads, iterations): (u64, u64),
    seed: u64,
    progress: bool,
) -> Result<String, Error> {
    service.login(session)?;
    let report = |calls: u64| {
        if progress {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "calls {calls}");
            let _ = out.flush();
        }
    };
    let results: Vec<Result<String, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let fake = fake.clone();
                let service = service.clone();
                scope.spawn(move || {
                    let mut rng = Rng(seed.wrapping_mul(1000).wrapping_add(t) | 1);
                    let mut mine: Vec<i32> = Vec::new();
                    let (mut reserved, mut refused, mut built, mut busy) = (0, 0, 0, 0);
                    for _ in 0..iterations {
                        // The reservation, and with it the range check below.
                        let mut calls = 1;
                        // 32..128 MiB, with up to 192 MiB of slack.
                        let min = (32 + rng.below(96) as Kib) << 10;
                        let max = min + ((rng.below(4) as Kib) << 16);
                        let (id, amount) = match service.reserve_memory_range(session, min, max) {
                            Ok(r) => r,
                            Err(Error::CannotFreeThisMuchMemory { .. })
                            | Err(Error::DomainsRefusedToCooperate { .. }) => {
                                refused += 1;
                                if let Some(d) = mine.pop() {
                                    fake.destroy_domain(d)?;
                                }
                                report(calls);
                                continue;
                            }
                            Err(e) if e.to_string().contains("already in use") => {
                                busy += 1;
                                report(calls);
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        reserved += 1;
                        if amount < min || amount > max {
                            return Err(Error::Backend(format!(
                                "reserved {amount} KiB for a range {min}..={max}"
                            )));
                        }
                        if rng.below(3) == 0 {
                            service.delete_reservation(session, &id)?;
                            calls += 1;
                        } else {
                            let domid = fake.create_domain(GuestSpec::fixed(amount))?;
                            service.transfer_reservation_to_domain(session, &id, domid)?;
                            let known = service.query_reservation_of_domain(session, domid)?;
                            if known != id {
                                return Err(Error::Backend(format!(
                                    "domain {domid} reports reservation {known}, not {id}"
                                )));
                            }
                            fake.build_domain(domid, amount).map_err(|e| {
                                Error::Backend(format!(
                                    "memory promised by reservation {id} was not there: {e}"
                                ))
                            })?;
                            fake.unpause(domid)?;
                            built += 1;
                            service.delete_reservation(session, &id)?;
                            calls += 3;
                            mine.push(domid);
                        }
                        if rng.below(8) == 0 {
                            service.balance_memory()?;
                            calls += 1;
                        }
                        if mine.len() > 2 || rng.below(4) == 0 {
                            if let Some(d) = mine.first().copied() {
                                mine.remove(0);
                                fake.destroy_domain(d)?;
                            }
                        }
                        report(calls);
                    }
                    for d in mine {
                        fake.destroy_domain(d)?;
                    }
                    Ok(format!("ok {reserved} {refused} {built} {busy}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Backend("worker thread panicked".into())))
            })
            .collect()
    });
    let mut lines = Vec::new();
    for r in results {
        lines.push(r?);
    }
    Ok(lines.join("\n"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage();
    }
    let dir = PathBuf::from(&args[0]);
    match run(&dir, &args[1..]) {
        Ok(out) => {
            // A reader that went away (`| head`) is not this program's failure.
            if !out.is_empty() {
                let _ = writeln!(std::io::stdout(), "{out}");
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stdout(), "error: {}: {e}", variant(&e));
            std::process::exit(1);
        }
    }
}
