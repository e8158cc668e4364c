//! Status and manual repair of a host's memory service: `squeeze status`, `reserve`,
//! `transfer`, `delete` and `balance` (`squeeze daemon`, which keeps balancing, is in
//! `daemon.rs`).
//!
//! They work on this host's Xen (libxenctrl and xenstored; the `xen` feature) or, with
//! `--fake DIR`, on a fake host directory shared with the library's `squeeze-fake` tool.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use squeeze::backend::fake::FakeHost;
use squeeze::diagnostics::PendingReservation;
use squeeze::guest_policy::{parse_keys, resolve, PolicyKeys, HOST_PREFIX, VM_PREFIX};
use squeeze::host::HostView;
use squeeze::platform::Platform;
use squeeze::progress::ReserveOptions;
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Error, Kib};

use crate::daemon::{self, DaemonState};

/// Which host to work on.
#[derive(Args)]
pub struct HostArgs {
    /// Work on the fake host in this directory instead of this host's Xen.
    #[arg(long, value_name = "DIR")]
    fake: Option<PathBuf>,
    /// The host-wide lock file every squeeze user on this host shares (default
    /// /run/squeeze/host.lock).
    #[arg(long, value_name = "PATH")]
    lock: Option<PathBuf>,
}

/// The administration commands.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// Host free memory, slush, reservations and every domain's memory.
    Status {
        #[command(flatten)]
        host: HostArgs,
        /// Print the diagnostics document (docs/diagnostics.md) instead of a table.
        #[arg(long)]
        json: bool,
        /// The pid file of the host's `squeeze daemon` (default /run/squeeze/daemon.pid, or
        /// DIR/daemon.pid with --fake DIR).
        #[arg(long, value_name = "PATH")]
        pid_file: Option<PathBuf>,
    },
    /// Reserve memory for a domain about to be built; prints the reservation id.
    Reserve {
        #[command(flatten)]
        host: HostArgs,
        /// No progress bar while waiting for ballooning (it is also hidden when stdout or
        /// stderr is not a terminal).
        #[arg(long, short)]
        quiet: bool,
        /// The session (service name) the reservation belongs to.
        session: String,
        /// Size in KiB.
        kib: Kib,
    },
    /// Hand a reservation to a domain that now exists.
    Transfer {
        #[command(flatten)]
        host: HostArgs,
        /// The session that made the reservation.
        session: String,
        /// The reservation id.
        id: String,
        /// The domain.
        domid: DomId,
    },
    /// Remove a reservation, such as one a crashed client left behind.
    Delete {
        #[command(flatten)]
        host: HostArgs,
        /// The session that made the reservation.
        session: String,
        /// The reservation id.
        id: String,
    },
    /// Rebalance memory between domains now.
    Balance {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Write a domain's ballooning policy (dynamic range, weight) from its xl config and the
    /// host-wide defaults in xl.conf, for toolstacks that write none (see docs/xen.md).
    GuestPolicy {
        #[command(flatten)]
        host: HostArgs,
        /// The domain.
        domid: DomId,
        /// Its `memory`, in MiB (the target it was built with).
        #[arg(long, value_name = "MIB")]
        memory: i64,
        /// Its `maxmem`, in MiB (default: its memory).
        #[arg(long, value_name = "MIB")]
        maxmem: Option<i64>,
        /// Its xl config file (keys squeeze_dynamic_min, squeeze_dynamic_max, squeeze_weight).
        #[arg(long, value_name = "FILE")]
        vm_config: Option<PathBuf>,
        /// The host-wide defaults (keys squeeze_default_*; default /etc/xen/xl.conf when it
        /// exists and no --fake is given).
        #[arg(long, value_name = "FILE")]
        xl_conf: Option<PathBuf>,
    },
}

/// Where xl keeps its global settings, and squeeze its host-wide guest defaults.
const XL_CONF: &str = "/etc/xen/xl.conf";

fn read_keys(path: Option<&std::path::Path>, prefix: &str) -> Result<PolicyKeys, Error> {
    let Some(path) = path else {
        return Ok(PolicyKeys::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", path.display())))?;
    parse_keys(&text, prefix)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
}

#[cfg(feature = "xen")]
fn xen_platform() -> Result<Platform, Error> {
    squeeze::backend::xen::platform()
}

#[cfg(not(feature = "xen"))]
fn xen_platform() -> Result<Platform, Error> {
    Err(Error::Unsupported(
        "this squeeze was built without Xen support (cargo feature `xen`); use --fake DIR".into(),
    ))
}

impl HostArgs {
    /// The fake host directory, when working on one.
    pub fn fake_dir(&self) -> Option<&std::path::Path> {
        self.fake.as_deref()
    }
}

/// The memory service of the host `host` names.
pub fn open(host: &HostArgs) -> Result<Service, Error> {
    let (platform, config) = platform_and_config(host)?;
    Service::new(platform, config)
}

/// The platform and service settings of the host `host` names.
pub fn platform_and_config(host: &HostArgs) -> Result<(Platform, ServiceConfig), Error> {
    let mut config = ServiceConfig::default();
    let platform = match &host.fake {
        Some(dir) => {
            // The same files squeeze-fake uses, so both tools see one host.
            config.lock_path = dir.join("host.lock");
            config.boot_time_record_path = dir.join("boot_time_memory");
            FakeHost::open(dir)?.platform()
        }
        None => xen_platform()?,
    };
    if let Some(lock) = &host.lock {
        config.lock_path = lock.clone();
    }
    Ok((platform, config))
}

fn mib(kib: Kib) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The status table: host figures, then the ledger, then one line per domain (MiB).
fn status_table(
    view: &HostView,
    pending: &[PendingReservation],
    slush_kib: Kib,
    daemon: &DaemonState,
    out: &mut impl Write,
) -> std::io::Result<()> {
    writeln!(out, "host total       {:>10} MiB", mib(view.total_kib))?;
    writeln!(out, "host free        {:>10} MiB", mib(view.free_kib))?;
    writeln!(out, "slush            {:>10} MiB", mib(slush_kib))?;
    writeln!(out, "reserved         {:>10} MiB", mib(view.reserved_kib))?;
    match daemon {
        DaemonState::Running(Some(pid)) => writeln!(out, "daemon           running (pid {pid})")?,
        DaemonState::Running(None) => writeln!(out, "daemon           running")?,
        DaemonState::NotRunning => writeln!(out, "daemon           not running")?,
    }
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
    if !pending.is_empty() {
        // Requests waiting for memory: not reserved yet, so not in the ledger above.
        writeln!(out)?;
        writeln!(
            out,
            "{:<16} {:<36} {:>13} {:>8}  owner",
            "waiting", "reservation", "MiB", "waited"
        )?;
        for p in pending {
            let size = if p.min_kib == p.max_kib {
                mib(p.min_kib)
            } else {
                format!("{}..{}", mib(p.min_kib), mib(p.max_kib))
            };
            let owner = if p.owner_alive { "" } else { " (gone)" };
            writeln!(
                out,
                "{:<16} {:<36} {:>13} {:>7.0}s  pid {}{owner}",
                p.session, p.id, size, p.waited_s, p.owner_pid
            )?;
        }
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

/// Runs one command; returns what to print.
pub fn run(cmd: &AdminCommand) -> Result<String, String> {
    run_service(cmd).map_err(|e| e.to_string())
}

fn run_service(cmd: &AdminCommand) -> Result<String, Error> {
    match cmd {
        AdminCommand::Status {
            host,
            json,
            pid_file,
        } => {
            let service = open(host)?;
            if *json {
                return service.get_diagnostics().map(|s| s + "\n");
            }
            let view = service.host_view()?;
            let pending = service.diagnostics()?.pending;
            let daemon = daemon::state(&daemon::pid_file_for(host, pid_file.as_deref()));
            let mut out = Vec::new();
            let slush = service.get_host_reserved_memory();
            status_table(&view, &pending, slush, &daemon, &mut out)
                .map_err(|e| Error::Backend(e.to_string()))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        AdminCommand::Reserve {
            host,
            quiet,
            session,
            kib,
        } => {
            let service = open(host)?;
            let bar = crate::progress_bar(
                0,
                *quiet,
                "freeing memory [{bar:40}] {bytes}/{total_bytes} {msg}",
            );
            let options = ReserveOptions::default().with_progress(|p| {
                bar.set_length((p.needed_kib.max(0) as u64) * 1024);
                bar.set_position((p.freed_kib.max(0) as u64) * 1024);
                bar.set_message(match p.eta_s {
                    Some(s) => format!("about {s:.0} s left"),
                    None => "waiting for balloon drivers".to_string(),
                });
                ControlFlow::Continue(())
            });
            let r = service.reserve_memory_with(session, *kib, options);
            bar.finish_and_clear();
            r.map(|id| format!("{id}\n"))
        }
        AdminCommand::Transfer {
            host,
            session,
            id,
            domid,
        } => open(host)?
            .transfer_reservation_to_domain(session, id, *domid)
            .map(|()| String::new()),
        AdminCommand::Delete { host, session, id } => open(host)?
            .delete_reservation(session, id)
            .map(|()| String::new()),
        AdminCommand::Balance { host } => open(host)?.balance_memory().map(|()| String::new()),
        AdminCommand::GuestPolicy {
            host,
            domid,
            memory,
            maxmem,
            vm_config,
            xl_conf,
        } => {
            let xl_conf = xl_conf.clone().or_else(|| {
                let default = PathBuf::from(XL_CONF);
                (host.fake.is_none() && default.exists()).then_some(default)
            });
            let vm = read_keys(vm_config.as_deref(), VM_PREFIX)?;
            let defaults = read_keys(xl_conf.as_deref(), HOST_PREFIX)?;
            let to_kib = |m: i64, what: &str| {
                m.checked_mul(1024)
                    .ok_or_else(|| Error::InvalidMemoryValue(format!("{what} of {m} MiB")))
            };
            let memory_kib = to_kib(*memory, "memory")?;
            let maxmem_kib = to_kib(maxmem.unwrap_or(*memory), "maxmem")?;
            let policy = resolve(&vm, &defaults, memory_kib, maxmem_kib)?;
            open(host)?.set_guest_policy(*domid, &policy)?;
            Ok(format!(
                "domain {domid}: dynamic-min {} MiB, dynamic-max {} MiB, weight {}, {}\n",
                mib(policy.dynamic_min_kib),
                mib(policy.dynamic_max_kib),
                policy.weight.unwrap_or(1.0),
                if policy.balloons() {
                    "ballooned"
                } else {
                    "fixed"
                }
            ))
        }
    }
}
