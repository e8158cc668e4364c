//! squeezed's known flaws, measured on the simulator.
//!
//! Each scenario runs a simulated host for a fixed stretch of simulated time and counts what an
//! operator would see: target writes, direction reversals of targets, balloon traffic and log
//! records. The numbers printed here are what `docs/benchmarks.md` records.
//!
//! Run with `cargo bench --bench flaws`.

use std::sync::atomic::{AtomicU64, Ordering};

use squeeze::adaptive::plan::{finish_time, Contributor};
use squeeze::adaptive::Adaptive;
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{balance_memory, change_host_free_memory, Domain, Error, Io, Kib, Options};

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

fn observe(sim: &Simulator, start_records: u64, outcome: String) -> Observed {
    let summary = sim.trace_summary();
    Observed {
        seconds: sim.time(),
        target_writes: sim.counters().target_changes,
        reversals: summary.total_reversals(),
        traffic_kib: summary.balloon_traffic_kib,
        log_records: RECORDS.load(Ordering::Relaxed) - start_records,
        outcome,
    }
}

/// A squeezer under test: squeezed's algorithm (a fresh squeezer per call, as squeezed runs it)
/// or the adaptive one (one instance kept across calls).
trait Engine {
    fn balance(&mut self, io: &mut dyn Io);
    fn free(&mut self, io: &mut dyn Io, required: Kib) -> Result<(), Error>;
}

struct Classic;

impl Engine for Classic {
    fn balance(&mut self, io: &mut dyn Io) {
        balance_memory(io, &Options::default()).expect("balance reports no failure");
    }
    fn free(&mut self, io: &mut dyn Io, required: Kib) -> Result<(), Error> {
        change_host_free_memory(io, &Options::default(), required, &mut |f| f >= required)
    }
}

impl Engine for Adaptive {
    fn balance(&mut self, io: &mut dyn Io) {
        self.balance_memory(io).expect("balance reports no failure");
    }
    fn free(&mut self, io: &mut dyn Io, required: Kib) -> Result<(), Error> {
        self.change_host_free_memory(io, required, &mut |f| f >= required)
    }
}

fn engines() -> Vec<(&'static str, Box<dyn Engine>)> {
    vec![
        ("classic", Box::new(Classic)),
        ("adaptive", Box::new(Adaptive::default())),
    ]
}

fn host(free: Kib, limit: Option<f64>) -> Simulator {
    Simulator::new(SimConfig {
        free_mem_kib: free,
        target_host_free_mem_kib: 72 * MIB,
        free_memory_tolerance_kib: 512,
        clock: ClockMode::FollowWait,
        time_limit_s: limit,
        record_trace: true,
    })
}

/// Flaw 1: a guest that cannot grow past its current size among two ideal ones (6 GiB of
/// guests), balanced every 10 s for `minutes` of simulated time.
fn oscillation(engine: &mut dyn Engine, minutes: f64) -> Observed {
    let start = RECORDS.load(Ordering::Relaxed);
    let mut sim = host(GIB, None);
    let ideal = Behaviour::Ideal {
        rate_kib_per_s: 100 * MIB,
    };
    let guest = |domid| Domain::new(domid, true, GIB, 2 * GIB, 3 * GIB, 2 * GIB, 2 * GIB, 4);
    sim.add_guest(
        guest(1),
        Behaviour::HiddenCeiling {
            rate_kib_per_s: 100 * MIB,
            ceiling_kib: 2 * GIB + 1,
        },
    )
    .unwrap();
    sim.add_guest(guest(2), ideal).unwrap();
    sim.add_guest(guest(3), ideal).unwrap();
    sim.advance(0.0).unwrap();
    let end = minutes * 60.0;
    let mut next = 0.0;
    while sim.time() < end {
        engine.balance(&mut sim);
        next += 10.0;
        if sim.time() < next {
            let dt = next - sim.time();
            sim.advance(dt).unwrap();
        }
    }
    observe(&sim, start, "balanced every 10 s".into())
}

/// Flaw 3: guests with the given balloon rates (MiB/s), 8 GiB each with 1 GiB dynamic-min,
/// asked to free `free_gib` more. Returns what was observed and the lower bound T*.
fn slow_ballooning(engine: &mut dyn Engine, rates_mib: &[Kib], free_gib: Kib) -> (Observed, f64) {
    let start = RECORDS.load(Ordering::Relaxed);
    let mut sim = host(72 * MIB, Some(3600.0));
    for (i, &r) in rates_mib.iter().enumerate() {
        sim.add_guest(
            Domain::new(
                i as i32 + 1,
                true,
                GIB,
                8 * GIB,
                8 * GIB,
                8 * GIB,
                8 * GIB,
                4,
            ),
            Behaviour::Ideal {
                rate_kib_per_s: r * MIB,
            },
        )
        .unwrap();
    }
    sim.advance(0.0).unwrap();
    let need = free_gib * GIB;
    let contributors: Vec<Contributor> = rates_mib
        .iter()
        .map(|&r| Contributor {
            cap_kib: 7 * GIB - 8,
            rate_kib_per_s: (r * MIB) as f64,
        })
        .collect();
    let t_star = finish_time(&contributors, need).unwrap();
    let r = engine.free(&mut sim, 72 * MIB + need);
    let outcome = match r {
        Ok(()) => "freed".to_string(),
        Err(e) => e.to_string(),
    };
    (observe(&sim, start, outcome), t_star)
}

/// Flaw 5: a guest that frees one 4 KiB page every 5 s beside a 100 MiB/s guest, each 4 GiB
/// with 1 GiB dynamic-min; a request for `free_gib`.
fn trickler(engine: &mut dyn Engine, free_gib: Kib) -> Observed {
    let start = RECORDS.load(Ordering::Relaxed);
    let mut sim = host(72 * MIB, Some(3600.0));
    let guest = |domid| Domain::new(domid, true, GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4);
    sim.add_guest(
        guest(1),
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    )
    .unwrap();
    sim.add_guest(
        guest(2),
        Behaviour::Trickle {
            chunk_kib: 4,
            period_s: 5.0,
        },
    )
    .unwrap();
    sim.advance(0.0).unwrap();
    let r = engine.free(&mut sim, 72 * MIB + free_gib * GIB);
    let outcome = match r {
        Ok(()) => "freed".to_string(),
        Err(e) => e.to_string(),
    };
    observe(&sim, start, outcome)
}

fn print(name: &str, o: &Observed) {
    println!(
        "| {name} | {:.0} s | {} | {} | {:.1} GiB | {} | {} |",
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
    println!("| scenario | policy | simulated time | target writes | reversals | balloon traffic | log records | outcome |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, mut e) in engines() {
        print(
            &format!("1. oscillation, 5 min | {name}"),
            &oscillation(e.as_mut(), 5.0),
        );
    }
    for (name, mut e) in engines() {
        print(
            &format!("1. oscillation, 1 hour | {name}"),
            &oscillation(e.as_mut(), 60.0),
        );
    }
    for (rates, gib) in [(&[100, 4][..], 2), (&[2, 10, 50, 100, 200][..], 8)] {
        for (name, mut e) in engines() {
            let (o, t_star) = slow_ballooning(e.as_mut(), rates, gib);
            print(
                &format!("3. free {gib} GiB, rates {rates:?} MiB/s (T* = {t_star:.1} s) | {name}"),
                &o,
            );
        }
    }
    for (gib, what) in [(1, "fast guest can cover"), (4, "needs the trickler")] {
        for (name, mut e) in engines() {
            print(
                &format!("5. trickler, free {gib} GiB ({what}) | {name}"),
                &trickler(e.as_mut(), gib),
            );
        }
    }
}
