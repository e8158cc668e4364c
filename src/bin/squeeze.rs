//! `squeeze`: look at and repair a host's memory balancing from the command line.
//!
//! ```text
//! squeeze status [--json]              host free memory, slush, reservations, every domain
//! squeeze reserve SESSION KIB          reserve memory (prints the reservation id)
//! squeeze transfer SESSION ID DOMID    hand a reservation to a domain
//! squeeze delete SESSION ID            remove a reservation (e.g. one a crashed client left)
//! squeeze balance                      rebalance memory between domains now
//! ```
//!
//! It works on this host's Xen (libxenctrl and xenstored) unless `--fake DIR` names a fake host
//! made by `squeeze-fake DIR create`. Exit status: 0 on success, 1 when the operation failed,
//! 2 on bad usage.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use squeeze::backend::fake::FakeHost;
use squeeze::host::HostView;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Error, Kib};

#[derive(Parser)]
#[command(
    name = "squeeze",
    version,
    about = "Host memory balancing for Xen: status and repair"
)]
struct Cli {
    /// Work on the fake host in this directory instead of this host's Xen.
    #[arg(long, value_name = "DIR", global = true)]
    fake: Option<PathBuf>,
    /// The host-wide lock file every squeeze user on this host shares (default
    /// /run/squeeze/host.lock).
    #[arg(long, value_name = "PATH", global = true)]
    lock: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Host free memory, slush, reservations and every domain's memory.
    Status {
        /// Print the host model's view as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reserve memory for a domain about to be built; prints the reservation id.
    Reserve {
        /// The session (service name) the reservation belongs to.
        session: String,
        /// Size in KiB.
        kib: Kib,
    },
    /// Hand a reservation to a domain that now exists.
    Transfer {
        /// The session that made the reservation.
        session: String,
        /// The reservation id.
        id: String,
        /// The domain.
        domid: DomId,
    },
    /// Remove a reservation, such as one a crashed client left behind.
    Delete {
        /// The session that made the reservation.
        session: String,
        /// The reservation id.
        id: String,
    },
    /// Rebalance memory between domains now.
    Balance,
}

fn open(cli: &Cli) -> Result<Service, Error> {
    let mut config = ServiceConfig::default();
    let platform = match &cli.fake {
        Some(dir) => {
            // The same files squeeze-fake uses, so both tools see one host.
            config.lock_path = dir.join("host.lock");
            config.boot_time_record_path = dir.join("boot_time_memory");
            FakeHost::open(dir)?.platform()
        }
        None => squeeze::backend::xen::platform()?,
    };
    if let Some(lock) = &cli.lock {
        config.lock_path = lock.clone();
    }
    Service::new(platform, config)
}

fn mib(kib: Kib) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The status table: host figures, then the ledger, then one line per domain (MiB).
fn status_table(view: &HostView, slush_kib: Kib, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "host total       {:>10} MiB", mib(view.total_kib))?;
    writeln!(out, "host free        {:>10} MiB", mib(view.free_kib))?;
    writeln!(out, "slush            {:>10} MiB", mib(slush_kib))?;
    writeln!(out, "reserved         {:>10} MiB", mib(view.reserved_kib))?;
    writeln!(out)?;
    if view.reservations.is_empty() {
        writeln!(out, "no reservations")?;
    } else {
        writeln!(
            out,
            "{:<16} {:<36} {:>10}  domain",
            "session", "reservation", "MiB"
        )?;
        for r in &view.reservations {
            let domain = r.in_transfer.map_or("-".to_string(), |d| d.to_string());
            writeln!(
                out,
                "{:<16} {:<36} {:>10}  {domain}",
                r.session,
                r.id,
                mib(r.kib)
            )?;
        }
    }
    for e in &view.invalid_entries {
        writeln!(out, "unreadable ledger entry {}: {}", e.path, e.why)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10}  state",
        "domid", "min", "target", "actual", "max", "maxmem"
    )?;
    for d in &view.domains {
        match &d.domain {
            Some(m) => {
                let state = if d.uncooperative {
                    "uncooperative"
                } else if !d.booted {
                    "booting"
                } else if m.can_balloon {
                    "ballooning"
                } else {
                    "fixed"
                };
                writeln!(
                    out,
                    "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10}  {state}",
                    d.domid,
                    mib(m.dynamic_min_kib),
                    mib(m.target_kib),
                    mib(m.memory_actual_kib),
                    mib(m.dynamic_max_kib),
                    mib(m.memory_max_kib),
                )?;
            }
            None => writeln!(
                out,
                "{:>5} {:>54}  not balanced: {}",
                d.domid,
                "",
                d.skipped.as_deref().unwrap_or("unknown")
            )?,
        }
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<String, Error> {
    let service = open(cli)?;
    match &cli.command {
        Command::Status { json } => {
            let view = service.host_view()?;
            if *json {
                serde_json::to_string_pretty(&view)
                    .map(|s| s + "\n")
                    .map_err(|e| Error::Backend(format!("cannot encode the status: {e}")))
            } else {
                let mut out = Vec::new();
                status_table(&view, service.get_host_reserved_memory(), &mut out)
                    .map_err(|e| Error::Backend(e.to_string()))?;
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
        }
        Command::Reserve { session, kib } => service
            .reserve_memory(session, *kib)
            .map(|id| format!("{id}\n")),
        Command::Transfer { session, id, domid } => service
            .transfer_reservation_to_domain(session, id, *domid)
            .map(|()| String::new()),
        Command::Delete { session, id } => service
            .delete_reservation(session, id)
            .map(|()| String::new()),
        Command::Balance => service.balance_memory().map(|()| String::new()),
    }
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            // A closed stdout (`squeeze status | head`) is not worth a panic.
            let _ = std::io::stdout().write_all(out.as_bytes());
        }
        Err(e) => {
            eprintln!("squeeze: {e}");
            std::process::exit(1);
        }
    }
}
