//! `squeeze`: the command-line face of the squeeze memory balancer.
//!
//! `squeeze simulate SCENARIO.toml` runs a scenario on a simulated host and tells what
//! happened; `--csv` and `--svg` write the trace and a plot, `--policy both` runs squeezed's
//! classic algorithm and the adaptive one side by side.
//!
//! `squeeze status`, `reserve`, `transfer`, `delete` and `balance` look at and repair a host's
//! memory service (see `admin.rs`): this host's Xen when built with the `xen` feature, or a
//! fake host with `--fake DIR`. `squeeze daemon` keeps balancing it (see `daemon.rs`).

mod admin;
mod daemon;
mod plot;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use squeeze::{Kib, Policy};

use scenario::{run_observed, trace_csv, Run, Scenario};

#[derive(Parser)]
#[command(name = "squeeze", version, about = "Xen host memory balancing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file on a simulated host.
    Simulate {
        /// The scenario (TOML).
        scenario: PathBuf,
        /// Which algorithm decides.
        #[arg(long, value_enum, default_value_t = PolicyArg::Classic)]
        policy: PolicyArg,
        /// Write the trace as CSV here (with `--policy both`, the policy name is added).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write a plot of the run(s) as SVG here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// No progress bar (it is also hidden when stdout or stderr is not a terminal).
        #[arg(long, short)]
        quiet: bool,
    },
    #[command(flatten)]
    Admin(admin::AdminCommand),
    /// Keep the host balanced: on domain and reservation events and periodically, until
    /// SIGTERM or SIGINT (for hosts without xapi; see contrib/systemd/squeeze.service).
    Daemon(daemon::DaemonArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    /// squeezed's algorithm.
    Classic,
    /// The adaptive squeezer.
    Adaptive,
    /// Both, one after the other, for comparison.
    Both,
}

fn gib(kib: Kib) -> String {
    format!("{:.2} GiB", kib as f64 / (1024.0 * 1024.0))
}

fn summary(scenario: &Scenario, r: &Run) {
    let name = r.policy.name();
    println!("== {} ({name})", scenario.name);
    // Times in simulated seconds: when the timeline has the event, when the runner began on
    // it, when it was over, and the latency a caller would see (scheduled to done).
    println!("  scheduled    start     done  latency  event");
    for o in &r.outcomes {
        let mark = if o.ok { " " } else { "!" };
        println!(
            "{mark} {:8.1} {:8.1} {:8.1} {:7.1}s  {}",
            o.scheduled_s,
            o.start_s,
            o.done_s,
            o.latency_s(),
            o.text
        );
    }
    let s = r.sim.trace_summary();
    let c = r.sim.counters();
    println!(
        "  {:.0} s simulated: {} target changes, {} reversals, {} moved by balloon drivers, \
         {} host free at the end; {} balance(s) yielded to a request",
        r.sim.time(),
        c.target_changes,
        s.total_reversals(),
        gib(s.balloon_traffic_kib),
        gib(r.sim.free_mem_kib()),
        r.balances_yielded
    );
    if !r.sim.violations().is_empty() {
        println!("  SAFETY VIOLATIONS: {:?}", r.sim.violations());
    }
}

/// A progress bar on stderr, or a hidden one when `quiet` or when the output is not a terminal
/// (a pipe, a file, CI logs).
pub(crate) fn progress_bar(len: u64, quiet: bool, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let shown = !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let target = if shown {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn simulate(
    path: &PathBuf,
    policy: PolicyArg,
    csv: Option<&PathBuf>,
    svg: Option<&PathBuf>,
    quiet: bool,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let scenario = Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !scenario.description.is_empty() {
        println!("{}\n", scenario.description.trim());
    }
    let policies = match policy {
        PolicyArg::Classic => vec![Policy::Classic],
        PolicyArg::Adaptive => vec![Policy::Adaptive],
        PolicyArg::Both => vec![Policy::Classic, Policy::Adaptive],
    };
    let mut runs = Vec::new();
    for p in policies {
        // Simulated time in tenths of a second, so short scenarios still move the bar.
        let bar = progress_bar(
            (scenario.end_s() * 10.0).ceil() as u64,
            quiet,
            "{prefix:>8} [{bar:40}] {msg}",
        );
        bar.set_prefix(p.name());
        let r = run_observed(&scenario, p, &mut |t| {
            bar.set_position((t * 10.0) as u64);
            bar.set_message(format!("{t:.0} of {:.0} s simulated", scenario.end_s()));
        });
        bar.finish_and_clear();
        let r = r.map_err(|e| format!("simulation failed: {e}"))?;
        summary(&scenario, &r);
        runs.push(r);
    }
    if let Some(csv) = csv {
        let names = scenario.names();
        for r in &runs {
            let file = if runs.len() > 1 {
                let suffix = r.policy.name();
                csv.with_extension(format!("{suffix}.csv"))
            } else {
                csv.clone()
            };
            std::fs::write(&file, trace_csv(r, &names))
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            println!("trace written to {}", file.display());
        }
    }
    if let Some(svg) = svg {
        let doc = plot::svg(&scenario, &runs)?;
        std::fs::write(svg, doc).map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
        println!("plot written to {}", svg.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Simulate {
            scenario,
            policy,
            csv,
            svg,
            quiet,
        } => simulate(scenario, *policy, csv.as_ref(), svg.as_ref(), *quiet),
        Command::Daemon(args) => daemon::run(args),
        Command::Admin(cmd) => admin::run(cmd).map(|out| {
            // A closed stdout (`squeeze status | head`) is not worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("squeeze: {e}");
            ExitCode::FAILURE
        }
    }
}
