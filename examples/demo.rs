//! A short story on a simulated host: a new VM needs memory that is not free, the running
//! guests balloon down to make room, the VM starts, another VM shuts down, and the freed memory
//! is balanced back out to the guests.
//!
//! Run with `make demo` (or `cargo run --example demo`).

use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::{Domain, Kib, Squeezer};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * 1024;

fn gib(kib: Kib) -> String {
    format!("{:.2} GiB", kib as f64 / GIB as f64)
}

fn show(sim: &Simulator, names: &[(i32, &str)]) {
    println!(
        "    t={:6.1}s  host free {}",
        sim.time(),
        gib(sim.free_mem_kib())
    );
    for &(domid, name) in names {
        if let Some(d) = sim.guest(domid) {
            println!(
                "      dom{domid} {name:<8} actual {:>9}  target {:>9}  (range {} .. {})",
                gib(d.memory_actual_kib),
                gib(d.target_kib),
                gib(d.dynamic_min_kib),
                gib(d.dynamic_max_kib)
            );
        }
    }
}

/// For each guest, when (after `since`) it last changed memory-actual: when its driver finished.
fn settled_times(sim: &Simulator, since: f64, names: &[(i32, &str)]) {
    for &(domid, name) in names {
        let mut last_change = None;
        let mut prev = None;
        for row in sim.trace().iter().filter(|r| r.time >= since) {
            if let Some(&(_, _, actual)) = row.guests.iter().find(|g| g.0 == domid) {
                if prev.is_some_and(|p| p != actual) {
                    last_change = Some(row.time);
                }
                prev = Some(actual);
            }
        }
        if let Some(t) = last_change {
            println!(
                "      dom{domid} {name} finished ballooning after {:.0} s",
                t - since
            );
        }
    }
}

fn main() -> Result<(), squeeze::Error> {
    let slush = 72 * MIB;
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: 3 * GIB,
        target_host_free_mem_kib: slush,
        free_memory_tolerance_kib: 512,
        clock: ClockMode::FollowWait,
        time_limit_s: Some(3600.0),
        record_trace: true,
    });
    let names = [(1, "web"), (2, "database"), (3, "windows"), (4, "new-vm")];
    // domid, can balloon, dynamic-min, target, dynamic-max, actual, maxmem, inaccuracy
    sim.add_guest(
        Domain::new(1, true, 2 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4),
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    )?;
    sim.add_guest(
        Domain::new(2, true, 4 * GIB, 6 * GIB, 8 * GIB, 6 * GIB, 6 * GIB, 4),
        Behaviour::Ideal {
            rate_kib_per_s: 200 * MIB,
        },
    )?;
    sim.add_guest(
        Domain::new(3, true, 2 * GIB, 3 * GIB, 4 * GIB, 3 * GIB, 3 * GIB, 4),
        Behaviour::windows_like(),
    )?;

    println!(
        "A simulated 16 GiB host keeping {} of slush free, with three guests:",
        gib(slush)
    );
    show(&sim, &names);

    // One squeezer for the whole story: it remembers which balloon drivers it found stuck.
    let mut squeezer = Squeezer::default();

    println!("\n1. A new VM asks for between 4 and 6 GiB; only 3 GiB is free.");
    let before = sim.counters();
    let t0 = sim.time();
    let granted = squeezer.free_memory_range(&mut sim, 4 * GIB, 6 * GIB)?;
    let after = sim.counters();
    println!(
        "   The guests ballooned down: {} is free for the VM after {:.1} s of simulated time \
         ({} target changes, {} waits).",
        gib(granted),
        sim.time() - t0,
        after.target_changes - before.target_changes,
        after.waits - before.waits
    );
    settled_times(&sim, t0, &names);
    println!(
        "   The proportional policy asks every guest for the same share of its range, so the \
         slowest driver sets the pace."
    );
    show(&sim, &names);

    println!("\n2. The VM is built with {}.", gib(granted));
    sim.adjust_free_mem(-granted);
    sim.add_guest(
        Domain::new(4, true, 4 * GIB, granted, 6 * GIB, granted, granted, 4),
        Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        },
    )?;
    show(&sim, &names);

    println!("\n3. The database VM shuts down and its memory returns to the host.");
    sim.remove_guest(2)?;
    let t0 = sim.time();
    squeezer.balance_memory(&mut sim)?;
    println!(
        "   Rebalanced in {:.1} s: the remaining guests grow back toward their maximum.",
        sim.time() - t0
    );
    show(&sim, &names);

    println!(
        "\nDone: {} of host memory free, the slush is {}.",
        gib(sim.free_mem_kib()),
        gib(slush)
    );
    Ok(())
}
