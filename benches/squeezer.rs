//! Benchmarks of the squeezer on hosts of realistic size.
//!
//! - `one_iteration/N`: a single [`Squeezer::one_iteration`] on a host of N guests at rest,
//!   asked for 10 % of host memory, so every guest gets a new target (the most expensive kind
//!   of iteration). Throughput is in domains, so criterion's element rate gives the cost per
//!   domain. Time is CPU time of this process, as below.
//! - `free_10_percent/N`: a whole simulated `change_host_free_memory` of 10 % of host memory on
//!   N ideal guests, from the first snapshot to success, measured in CPU time of this process
//!   (the simulator's work included, building the host excluded).
//!
//! - `engine_round/{classic_iteration,classic_round,adaptive_round}/N`: the second round of a
//!   free of 10 % of host memory on N ideal guests (the first round's targets written and one
//!   second of ballooning simulated), measured three ways in one run: squeezed's bare
//!   iteration, the classic [`ClassicRound`] and the adaptive [`AdaptiveRound`] through
//!   [`Engine::round`]. Each measured round starts from the engine's state after the first
//!   round, copied (untimed) into the state the previous measured round used with
//!   `clone_from`, so that working space a squeezer keeps between rounds is reused as in a
//!   long-running loop rather than allocated afresh. CPU time, as below.
//!
//! Guests are GiB-scale: dynamic-min 1 to 2 GiB, dynamic-max 2 to 6 GiB, each sitting at its
//! dynamic-max, ballooning at 64 to 512 MiB/s. Run with
//! `cargo bench --bench squeezer -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use squeeze::adaptive::{Adaptive, Goal, Operation};
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::engine::{AdaptiveRound, ClassicRound, Engine};
use squeeze::{change_host_free_memory, Action, Domain, Host, Io, Kib, Options, Squeezer, Verdict};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;

/// Guest `i` of a benchmark host: sizes and rate vary with `i` but the host is the same on
/// every run, so results are comparable.
fn guest(i: usize) -> (Domain, Behaviour) {
    let k = i as Kib;
    let min = GIB + (k * 97 % 1024) * MIB;
    let max = 2 * GIB + (k * 389 % 4096) * MIB;
    let rate = (64 + k * 61 % 449) * MIB;
    (
        Domain::new(k as i32 + 1, true, min, max, max, max, max, 4),
        Behaviour::Ideal {
            rate_kib_per_s: rate,
        },
    )
}

fn guests(n: usize) -> Vec<(Domain, Behaviour)> {
    (0..n).map(guest).collect()
}

/// Host memory: what the guests hold plus the slush.
fn total_kib(guests: &[(Domain, Behaviour)], slush: Kib) -> Kib {
    guests.iter().map(|(d, _)| d.memory_actual_kib).sum::<Kib>() + slush
}

const SLUSH_KIB: Kib = 72 * MIB;

fn one_iteration(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_iteration");
    for n in [10usize, 100, 1000, 5000] {
        let gs = guests(n);
        let want = total_kib(&gs, SLUSH_KIB) / 10;
        let host = Host::new(gs.iter().map(|(d, _)| *d).collect(), SLUSH_KIB).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &host, |b, host| {
            let mut squeezer = Squeezer::new(Options::default());
            let mut now = 0.0;
            b.iter_custom(|iters| {
                let start = process_cpu_time();
                for _ in 0..iters {
                    now += 1.0;
                    let it = squeezer
                        .one_iteration(black_box(host), want, &mut |free| free >= want, now)
                        .unwrap();
                    debug_assert!(matches!(&it.verdict, Verdict::AdjustTargets(a) if a.len() == n));
                    black_box(it);
                }
                process_cpu_time() - start
            });
        });
    }
    group.finish();
}

/// CPU time used by this process so far. The benchmarks run on one thread; CPU time rather
/// than wall time keeps the time other work on a shared machine takes out of the result.
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and CLOCK_PROCESS_CPUTIME_ID is supported on
    // every Linux kernel this crate targets.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn simulator(gs: &[(Domain, Behaviour)]) -> Simulator {
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: SLUSH_KIB,
        target_host_free_mem_kib: SLUSH_KIB,
        free_memory_tolerance_kib: 0,
        clock: ClockMode::FollowWait,
        time_limit_s: Some(3600.0),
        record_trace: false,
    });
    for (d, b) in gs {
        sim.add_guest(*d, *b).unwrap();
    }
    sim
}

fn free_10_percent(c: &mut Criterion) {
    let mut group = c.benchmark_group("free_10_percent");
    group.sample_size(10);
    for n in [100usize, 1000, 5000] {
        let gs = guests(n);
        let required = SLUSH_KIB + total_kib(&gs, SLUSH_KIB) / 10;
        // The shape of the run, for the record: iterations and simulated time.
        let mut sim = simulator(&gs);
        change_host_free_memory(&mut sim, &Options::default(), required, &mut |f| {
            f >= required
        })
        .unwrap();
        eprintln!(
            "free_10_percent/{n}: {} iterations, {} s simulated",
            sim.counters().make_host - 1,
            sim.time()
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &gs, |b, gs| {
            b.iter_custom(|iters| {
                let mut cpu = Duration::ZERO;
                for _ in 0..iters {
                    let mut sim = simulator(gs);
                    let start = process_cpu_time();
                    change_host_free_memory(&mut sim, &Options::default(), required, &mut |free| {
                        free >= required
                    })
                    .unwrap();
                    cpu += process_cpu_time() - start;
                    assert!(sim.free_mem_kib() >= required);
                    black_box(sim);
                }
                cpu
            });
        });
    }
    group.finish();
}

/// Writes a round's maxmem and targets on `sim` and lets a second of ballooning pass: what
/// the loop does between two rounds.
fn apply(sim: &mut Simulator, maxmem: Vec<(i32, Kib)>, targets: Vec<Action>) -> (Host, f64) {
    for (domid, kib) in maxmem {
        sim.set_maxmem(domid, kib).unwrap();
    }
    for a in targets {
        sim.execute_action(a).unwrap();
    }
    sim.wait(1.0).unwrap();
    (sim.make_host().unwrap(), sim.now().unwrap())
}

/// Times `round` over `iters` rounds, each given a copy of `state` made outside the timing
/// (with `clone_from`, into the copy the previous round used, so that what a type keeps for
/// reuse survives as it does between the rounds of one operation); what it returns is
/// dropped outside the timing too.
fn time_rounds<S: Clone, R>(iters: u64, state: &S, mut round: impl FnMut(&mut S) -> R) -> Duration {
    let mut cpu = Duration::ZERO;
    let mut work = state.clone();
    for _ in 0..iters {
        work.clone_from(state);
        let start = process_cpu_time();
        let r = round(&mut work);
        cpu += process_cpu_time() - start;
        black_box(r);
    }
    cpu
}

/// The adaptive engine's state between two rounds: the squeezer, and the operation (taken by
/// the round, which owns it as the loop's [`AdaptiveRound`] does).
struct AdaptiveState {
    adaptive: Adaptive,
    op: Option<Operation>,
}

impl Clone for AdaptiveState {
    fn clone(&self) -> Self {
        AdaptiveState {
            adaptive: self.adaptive.clone(),
            op: self.op.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.adaptive.clone_from(&source.adaptive);
        self.op.clone_from(&source.op);
    }
}

fn engine_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_round");
    group.sample_size(20);
    for n in [1000usize, 5000] {
        let gs = guests(n);
        let required = SLUSH_KIB + total_kib(&gs, SLUSH_KIB) / 10;
        group.throughput(Throughput::Elements(n as u64));

        // Classic: the squeezer after its first round, and the host a second later.
        let mut sim = simulator(&gs);
        let mut squeezer = Squeezer::new(Options::default());
        let (host, now) = (sim.make_host().unwrap(), sim.now().unwrap());
        let plan = ClassicRound::new(&mut squeezer, required, SLUSH_KIB)
            .round(&host, now, &mut |f| f >= required)
            .unwrap();
        assert_eq!(plan.targets.len(), n);
        let (host, now) = apply(&mut sim, plan.maxmem, plan.targets);
        group.bench_with_input(
            BenchmarkId::new("classic_iteration", n),
            &host,
            |b, host| {
                b.iter_custom(|iters| {
                    time_rounds(iters, &squeezer, |sq| {
                        sq.one_iteration(black_box(host), required, &mut |f| f >= required, now)
                            .unwrap()
                    })
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("classic_round", n), &host, |b, host| {
            b.iter_custom(|iters| {
                time_rounds(iters, &squeezer, |sq| {
                    ClassicRound::new(sq, required, SLUSH_KIB)
                        .round(black_box(host), now, &mut |f| f >= required)
                        .unwrap()
                })
            });
        });

        // Adaptive: the same, from its first round of the same request (stepped directly,
        // which is what its Engine::round does, so that the operation's state carries over).
        let mut sim = simulator(&gs);
        let mut adaptive = Adaptive::default();
        let mut op = adaptive
            .begin(Goal::Free {
                required_kib: required,
            })
            .unwrap();
        let (host, now) = (sim.make_host().unwrap(), sim.now().unwrap());
        let first = adaptive
            .step(&mut op, &host, now, &mut |f| f >= required)
            .unwrap();
        assert_eq!(first.writes.len(), n);
        let (host, now) = apply(&mut sim, Vec::new(), first.writes);
        let state = AdaptiveState {
            adaptive,
            op: Some(op),
        };
        group.bench_with_input(BenchmarkId::new("adaptive_round", n), &host, |b, host| {
            b.iter_custom(|iters| {
                time_rounds(iters, &state, |s| {
                    let op = s.op.take().expect("restored before every round");
                    AdaptiveRound::new(&mut s.adaptive, op)
                        .round(black_box(host), now, &mut |f| f >= required)
                        .unwrap()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, one_iteration, free_10_percent, engine_round);
criterion_main!(benches);
