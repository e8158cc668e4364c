//! What an operator sees at info level while freed memory is handed on behind a slow guest:
//! one summary line per balance, not a line per write. In a file of its own because the
//! logger is global to the test program.

use std::sync::Mutex;

use squeeze::adaptive::Adaptive;
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{Domain, Kib};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;
const SLUSH: Kib = 72 * MIB;

/// Keeps every record at info level or above, and counts the debug ones.
struct Keeper {
    info: Mutex<Vec<String>>,
    debug: Mutex<usize>,
}

impl log::Log for Keeper {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Info {
            self.info.lock().unwrap().push(r.args().to_string());
        } else if r.level() == log::Level::Debug {
            *self.debug.lock().unwrap() += 1;
        }
    }
    fn flush(&self) {}
}

static KEEPER: Keeper = Keeper {
    info: Mutex::new(Vec::new()),
    debug: Mutex::new(0),
};

#[test]
fn memory_handed_on_every_other_round_is_summed_up_in_one_info_line_per_balance() {
    log::set_logger(&KEEPER).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    // Guest 1 (4 MiB/s) frees 2 GiB over 512 s for guest 2 (100 MiB/s), balanced every 10 s;
    // a balance returns after 120 s, so there are five or six of them.
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: SLUSH,
        target_host_free_mem_kib: SLUSH,
        free_memory_tolerance_kib: 512,
        clock: ClockMode::FollowWait,
        time_limit_s: Some(3600.0),
        record_trace: false,
    });
    let guest = |domid, at| Domain::new(domid, true, GIB, at, 5 * GIB, at, at, 4);
    let ideal = |mib_per_s| Behaviour::Ideal {
        rate_kib_per_s: mib_per_s * MIB,
    };
    sim.add_guest(guest(1, 5 * GIB), ideal(4)).unwrap();
    sim.add_guest(guest(2, GIB), ideal(100)).unwrap();
    sim.advance(0.0).unwrap();
    let mut adaptive = Adaptive::default();
    while sim.time() < 600.0 {
        let next = sim.time() + 10.0;
        adaptive.balance_memory(&mut sim).unwrap();
        if sim.time() < next {
            sim.advance(next - sim.time()).unwrap();
        }
    }
    let writes = sim.counters().target_changes;
    let info = KEEPER.info.lock().unwrap().clone();
    let summaries: Vec<&String> = info
        .iter()
        .filter(|l| l.starts_with("freed memory handed on"))
        .collect();
    // 258 target writes: guest 1's (at info level, with its reason) and 257 hand-ons (at
    // debug level), summed up once per balance.
    assert_eq!(writes, 258);
    assert!(*KEEPER.debug.lock().unwrap() >= 257);
    assert!(
        (5..=6).contains(&summaries.len()),
        "{} summaries: {info:#?}",
        summaries.len()
    );
    assert!(info.len() <= 8, "{} info lines: {info:#?}", info.len());
    // Each says how much went to whom in how many writes; together they account for the
    // 2 GiB guest 2 grew by (less its inaccuracy) in 257 writes.
    let mut kib = 0;
    let mut n = 0;
    for s in &summaries {
        let part = s.split(": ").nth(1).unwrap();
        let words: Vec<&str> = part.split_whitespace().collect();
        assert_eq!(&words[1..5], ["KiB", "to", "domain", "2"], "{s}");
        kib += words[0].parse::<Kib>().unwrap();
        n += words[6].parse::<u32>().unwrap();
    }
    assert_eq!(n, 257);
    assert!((kib - 2 * GIB).abs() <= 8, "{kib} KiB handed on");
}
