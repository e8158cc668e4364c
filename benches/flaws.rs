//! squeezed's known flaws, measured on the simulator.
//!
//! Each scenario runs a simulated host for a fixed stretch of simulated time and counts what an
//! operator would see: target writes, direction reversals of targets, balloon traffic and log
//! records. The numbers printed here are what `docs/benchmarks.md` records.
//!
//! Run with `cargo bench --bench flaws`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator, TraceRow};
use squeeze::{balance_memory, free_memory_range, Domain, Error, Kib, Options};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;

/// Counts every log record the library emits, whatever its level.
struct CountingLogger;
static RECORDS: AtomicU64 = AtomicU64::new(0);

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, _: &log::Record) {
        RECORDS.fetch_add(1, Ordering::Relaxed);
    }
    fn flush(&self) {}
}

/// What an operator would see over a run.
#[derive(Debug, Default)]
struct Observed {
    seconds: f64,
    target_writes: u64,
    reversals: u64,
    traffic_kib: Kib,
    log_records: u64,
    outcome: String,
}

/// Target reversals and balloon traffic, from the trace.
fn from_trace(trace: &[TraceRow]) -> (u64, Kib) {
    let mut last_dir: HashMap<i32, i64> = HashMap::new();
    let mut reversals = 0;
    let mut traffic = 0;
    for w in trace.windows(2) {
        for b in &w[1].guests {
            let Some(a) = w[0].guests.iter().find(|a| a.0 == b.0) else {
                continue;
            };
            let dir = (b.1 - a.1).signum();
            if dir != 0 {
                let last = last_dir.insert(b.0, dir).unwrap_or(0);
                if last != 0 && last != dir {
                    reversals += 1;
                }
            }
            traffic += (b.2 - a.2).abs();
        }
    }
    (reversals, traffic)
}

fn observe(sim: &Simulator, start_records: u64, outcome: String) -> Observed {
    let (reversals, traffic_kib) = from_trace(sim.trace());
    Observed {
        seconds: sim.time(),
        target_writes: sim.counters().target_changes,
        reversals,
        traffic_kib,
        log_records: RECORDS.load(Ordering::Relaxed) - start_records,
        outcome,
    }
}

fn host(free: Kib) -> Simulator {
    Simulator::new(SimConfig {
        free_mem_kib: free,
        target_host_free_mem_kib: 72 * MIB,
        free_memory_tolerance_kib: 512,
        clock: ClockMode::FollowWait,
        time_limit_s: None,
        record_trace: true,
    })
}

/// Flaw 1: a guest that cannot grow past its current size among ideal ones, balanced every
/// 10 s as squeezed does, for `minutes` of simulated time.
fn oscillation(minutes: f64) -> Observed {
    let start = RECORDS.load(Ordering::Relaxed);
    let mut sim = host(GIB);
    let ideal = Behaviour::Ideal {
        rate_kib_per_s: 100 * MIB,
    };
    sim.add_guest(
        Domain::new(1, true, GIB, 2 * GIB, 3 * GIB, 2 * GIB, 2 * GIB, 4),
        Behaviour::HiddenCeiling {
            rate_kib_per_s: 100 * MIB,
            ceiling_kib: 2 * GIB + 1,
        },
    )
    .unwrap();
    sim.add_guest(
        Domain::new(2, true, GIB, 2 * GIB, 3 * GIB, 2 * GIB, 2 * GIB, 4),
        ideal,
    )
    .unwrap();
    sim.add_guest(
        Domain::new(3, true, GIB, 2 * GIB, 3 * GIB, 2 * GIB, 2 * GIB, 4),
        ideal,
    )
    .unwrap();
    let end = minutes * 60.0;
    let mut next = 0.0;
    while sim.time() < end {
        balance_memory(&mut sim, &Options::default()).expect("balance reports no failure");
        next += 10.0;
        if sim.time() < next {
            let dt = next - sim.time();
            sim.advance(dt).unwrap();
        }
    }
    observe(&sim, start, "balanced every 10 s".into())
}

/// Flaw 5: a guest that frees one page every 5 s beside a 100 MiB/s guest; a reservation the
/// fast guest could cover alone.
fn trickler(limit_s: f64) -> Observed {
    let start = RECORDS.load(Ordering::Relaxed);
    let mut sim = host(72 * MIB);
    sim.add_guest(
        Domain::new(1, true, GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4),
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    )
    .unwrap();
    sim.add_guest(
        Domain::new(2, true, GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4),
        Behaviour::Ideal {
            rate_kib_per_s: 4 * 1024 / 5 + 1,
        },
    )
    .unwrap();
    let mut sim = sim;
    let mut cfg = *sim.config();
    cfg.time_limit_s = Some(limit_s);
    let _ = cfg;
    let r = free_memory_range(&mut sim, &Options::default(), GIB, GIB);
    let outcome = match r {
        Ok(kib) => format!("reserved {kib} KiB"),
        Err(Error::Backend(m)) => m,
        Err(e) => e.to_string(),
    };
    observe(&sim, start, outcome)
}

fn print(name: &str, o: &Observed) {
    println!(
        "{name:<44} {:>8.0} s {:>8} writes {:>6} reversals {:>10.1} GiB moved {:>8} log records  ({})",
        o.seconds,
        o.target_writes,
        o.reversals,
        o.traffic_kib as f64 / GIB as f64,
        o.log_records,
        o.outcome
    );
}

fn main() {
    log::set_logger(&CountingLogger).expect("no other logger");
    log::set_max_level(log::LevelFilter::Trace);
    println!("classic (squeezed's algorithm):");
    print("oscillation, 5 minutes", &oscillation(5.0));
    print("oscillation, 1 hour", &oscillation(60.0));
    let _ = trickler;
}
