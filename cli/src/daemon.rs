//! `squeeze daemon`: keeps a host balanced where no toolstack daemon does (a host run by xl
//! alone, without xapi's squeezed).
//!
//! It balances when xenstore says something happened that may have freed memory: a domain
//! released (`@releaseDomain`), a domain introduced (`@introduceDomain`) or a change under
//! `/squeezed/state` (a reservation deleted or released). A dying domain gives its memory back
//! over a few seconds, so each event is followed by checks 1, 2, 4, 8... seconds later; and
//! every `--interval` seconds it checks anyway, for whatever no watch reports (a guest whose
//! balloon driver came up, a store without watches).
//!
//! One daemon per host: it holds an exclusive `flock` on its pid file for as long as it runs,
//! which is also how `squeeze status` tells that it runs. SIGTERM or SIGINT stop it cleanly
//! (the pass in progress finishes, the pid file is removed). It logs to stderr, with syslog
//! priority prefixes when started by systemd, so the journal files each line at its level.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use log::{debug, info, warn};
use squeeze::platform::{Watch, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use squeeze::service::Service;
use squeeze::Error;

use crate::admin::{platform_and_config, HostArgs};

/// Where the daemon of this host's Xen keeps its pid (next to the host lock).
pub const DEFAULT_PID_FILE: &str = "/run/squeeze/daemon.pid";

/// How long one wait for events lasts at most: the longest a signal waits to be noticed.
const TICK: Duration = Duration::from_millis(250);

/// `squeeze daemon`'s options.
#[derive(Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Seconds between two periodic checks (events are handled at once).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    interval: f64,
    /// The pid file (default /run/squeeze/daemon.pid, or DIR/daemon.pid with --fake DIR).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Log every event and check, not only the passes that changed something.
    #[arg(long, short)]
    verbose: bool,
}

/// The pid file a daemon for `host` uses unless told otherwise.
pub fn pid_file_for(host: &HostArgs, explicit: Option<&Path>) -> PathBuf {
    match (explicit, host.fake_dir()) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(dir)) => dir.join("daemon.pid"),
        (None, None) => PathBuf::from(DEFAULT_PID_FILE),
    }
}

/// Whether a daemon holds `pid_file`, and its pid.
#[derive(Debug, PartialEq, Eq)]
pub enum DaemonState {
    /// Running, with this pid (`None` while it is still writing it).
    Running(Option<u32>),
    /// Nobody holds the pid file.
    NotRunning,
}

/// Looks at the pid file without disturbing the daemon: a shared lock that cannot be taken
/// means the daemon holds its exclusive one.
pub fn state(pid_file: &Path) -> DaemonState {
    let Ok(mut file) = File::open(pid_file) else {
        return DaemonState::NotRunning;
    };
    match file.try_lock_shared() {
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            DaemonState::Running(text.trim().parse().ok())
        }
        // Free (or a filesystem without locks): no daemon.
        _ => DaemonState::NotRunning,
    }
}

/// The held pid file; dropping it removes the file, then releases the lock.
struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    fn acquire(path: &Path) -> Result<PidFile, Error> {
        let io = |what: &str, e: std::io::Error| {
            Error::Backend(format!("cannot {what} {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("open", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = match state(path) {
                    DaemonState::Running(Some(pid)) => format!("pid {pid}"),
                    _ => "pid unknown".to_string(),
                };
                return Err(Error::InvalidArgument(format!(
                    "a squeeze daemon already runs on this host ({pid}, pid file {})",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io("lock", e)),
        }
        file.set_len(0).map_err(|e| io("truncate", e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| io("write", e))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, so a new daemon never finds our file half gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The signal that asked the daemon to stop (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Only an atomic store: nothing else is async-signal-safe here.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<(), Error> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe. No SA_RESTART: a blocking wait is
        // interrupted and the loop sees the flag.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::Backend(format!(
                "cannot handle signal {signal}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

fn stop_requested() -> bool {
    STOP_SIGNAL.load(Ordering::SeqCst) != 0
}

/// Where events come from.
trait Events {
    /// The paths that fired within at most `max` (empty when nothing happened).
    fn wait(&mut self, max: Duration) -> Result<Vec<String>, Error>;
}

/// A store watch that can only be polled: sleep, then look.
struct PolledWatch(Box<dyn Watch>);

impl Events for PolledWatch {
    fn wait(&mut self, max: Duration) -> Result<Vec<String>, Error> {
        let fired = self.0.poll()?;
        if fired.is_empty() {
            std::thread::sleep(max);
            return self.0.poll();
        }
        Ok(fired)
    }
}

/// xenstored's watches on a connection of their own, waited for in `poll(2)`: no request is
/// sent while nothing happens.
#[cfg(feature = "xen")]
struct XenstoreEvents(squeeze::backend::xen::XsHandle);

#[cfg(feature = "xen")]
impl Events for XenstoreEvents {
    fn wait(&mut self, max: Duration) -> Result<Vec<String>, Error> {
        let ms = i32::try_from(max.as_millis()).unwrap_or(i32::MAX);
        self.0.pending_events(ms)
    }
}

#[cfg(feature = "xen")]
const WATCH_TOKEN: &str = "squeeze-daemon";

fn watch_paths(state_dir: &str) -> [String; 3] {
    [
        RELEASE_DOMAIN.to_string(),
        INTRODUCE_DOMAIN.to_string(),
        state_dir.to_string(),
    ]
}

fn events_for(
    args: &DaemonArgs,
    service: &Service,
    store: &dyn squeeze::platform::Store,
) -> Result<Box<dyn Events>, Error> {
    let paths = watch_paths(&service.config().host.layout.state_dir());
    #[cfg(feature = "xen")]
    if args.host.fake_dir().is_none() {
        let xs = squeeze::backend::xen::XsHandle::open()?;
        for p in &paths {
            xs.watch(p, WATCH_TOKEN)?;
        }
        return Ok(Box::new(XenstoreEvents(xs)));
    }
    let _ = args;
    let mut w = store.watch(&paths[0])?;
    for p in &paths[1..] {
        w.add(p)?;
    }
    Ok(Box::new(PolledWatch(w)))
}

/// When the next checks are due: the periodic one, and the follow-ups after an event.
struct Schedule {
    interval: Duration,
    next_periodic: Instant,
    follow_up: Option<(Instant, Duration)>,
}

impl Schedule {
    fn new(now: Instant, interval: Duration) -> Self {
        Schedule {
            interval,
            next_periodic: now + interval,
            follow_up: None,
        }
    }

    /// An event was handled at `now`: look again 1 s later, then 2, 4, 8... up to the
    /// interval, while a dying domain's memory comes back.
    fn after_event(&mut self, now: Instant) {
        let first = Duration::from_secs(1).min(self.interval);
        self.follow_up = Some((now + first, first));
    }

    /// Whether a check is due at `now`; moves the schedule on when it is.
    fn due(&mut self, now: Instant) -> bool {
        let mut due = false;
        if now >= self.next_periodic {
            self.next_periodic = now + self.interval;
            due = true;
        }
        if let Some((at, step)) = self.follow_up {
            if now >= at {
                let next = step * 2;
                self.follow_up = (next < self.interval).then(|| (now + next, next));
                due = true;
            }
        }
        due
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &DaemonArgs) -> Result<(), String> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        return Err(format!(
            "--interval {} is not a number of seconds of at least 0.1",
            args.interval
        ));
    }
    init_logging(args.verbose);
    let pid_path = pid_file_for(&args.host, args.pid_file.as_deref());
    let pid_file = PidFile::acquire(&pid_path).map_err(|e| e.to_string())?;
    install_signal_handlers().map_err(|e| e.to_string())?;
    let (platform, config) = platform_and_config(&args.host).map_err(|e| e.to_string())?;
    let store = platform.store.clone();
    let service = Service::new(platform, config).map_err(|e| e.to_string())?;
    let mut events = events_for(args, &service, &*store).map_err(|e| e.to_string())?;
    info!(
        "squeeze daemon {} started: balancing on domain and reservation events and every {} s \
         (pid file {})",
        std::process::id(),
        args.interval,
        pid_path.display()
    );
    let mut schedule = Schedule::new(Instant::now(), Duration::from_secs_f64(args.interval));
    let mut failing = false;
    // A first pass at start: whatever happened while no daemon ran.
    let mut pending = true;
    while !stop_requested() {
        let fired = match events.wait(TICK) {
            Ok(fired) => fired,
            Err(e) => {
                // The watch connection is gone; keep balancing periodically rather than stop.
                warn!("xenstore watch failed, falling back to periodic checks only: {e}");
                events = Box::new(NoEvents);
                Vec::new()
            }
        };
        if stop_requested() {
            break;
        }
        let now = Instant::now();
        if !fired.is_empty() {
            debug!("events: {}", fired.join(" "));
            schedule.after_event(now);
            pending = true;
        }
        let result = if pending {
            pending = false;
            service.balance_memory().map(|()| {
                info!("balanced after {}", describe(&fired));
            })
        } else if schedule.due(now) {
            service.balance_if_unbalanced().map(|balanced| {
                if balanced {
                    info!("balanced: a check found free memory to hand back");
                } else {
                    debug!("checked: nothing to do");
                }
            })
        } else {
            Ok(())
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                info!("balancing works again");
            }
            Ok(()) => {}
            // Once per failure streak, not at every check.
            Err(e) if !failing => {
                failing = true;
                warn!("balancing failed: {e}");
            }
            Err(_) => {}
        }
    }
    let signal = match STOP_SIGNAL.load(Ordering::SeqCst) {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    };
    info!("squeeze daemon stopping on {signal}");
    drop(service);
    drop(pid_file);
    Ok(())
}

/// What triggered a pass, for the log.
fn describe(fired: &[String]) -> String {
    let what: Vec<&str> = fired
        .iter()
        .map(|p| match p.as_str() {
            RELEASE_DOMAIN => "a domain was released",
            INTRODUCE_DOMAIN => "a domain was introduced",
            _ => "a reservation changed",
        })
        .collect();
    match what.first() {
        None => "start".to_string(),
        Some(first) if what.iter().all(|w| w == first) => (*first).to_string(),
        Some(_) => {
            let mut unique = what.clone();
            unique.sort_unstable();
            unique.dedup();
            unique.join(", ")
        }
    }
}

/// After the watch connection failed: nothing but the periodic checks.
struct NoEvents;

impl Events for NoEvents {
    fn wait(&mut self, max: Duration) -> Result<Vec<String>, Error> {
        std::thread::sleep(max);
        Ok(Vec::new())
    }
}

/// Logs to stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog
/// priority (`<3>` error ... `<7>` debug), which the journal reads as the line's level.
struct StderrLogger {
    journal: bool,
    level: log::LevelFilter,
}

static LOGGER_SET: AtomicBool = AtomicBool::new(false);

fn init_logging(verbose: bool) {
    if LOGGER_SET.swap(true, Ordering::SeqCst) {
        return;
    }
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let logger = StderrLogger {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        level,
    };
    // Leaked on purpose: the logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            format!("<{priority}>{}\n", record.args())
        } else {
            format!("squeeze: {}: {}\n", record.level(), record.args())
        };
        // A closed stderr must not stop the daemon.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_an_event_checks_follow_at_1_2_4_and_8_seconds_then_only_every_interval() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut schedule = Schedule::new(t0, Duration::from_secs(10));
        schedule.after_event(t0);
        // Ticks every quarter second over 30 s: which ones are due?
        let due: Vec<f64> = (1..=120)
            .map(|i| f64::from(i) * 0.25)
            .filter(|&t| schedule.due(s(t)))
            .collect();
        // Follow-ups at 1, 1+2 = 3, 3+4 = 7 and 7+8 = 15 (a gap of 16 would not be below the
        // 10 s interval, so they end there); periodic checks at 10, 20 and 30.
        assert_eq!(due, vec![1.0, 3.0, 7.0, 10.0, 15.0, 20.0, 30.0]);
    }

    #[test]
    fn a_pid_file_nobody_holds_means_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.pid");
        assert_eq!(state(&path), DaemonState::NotRunning);
        // A stale file left by a killed daemon: not locked, so not running.
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(state(&path), DaemonState::NotRunning);
        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(state(&path), DaemonState::Running(Some(std::process::id())));
        let second = PidFile::acquire(&path).map(|_| ()).unwrap_err();
        assert!(second.to_string().contains("already runs"), "{second}");
        drop(held);
        assert!(!path.exists());
        assert_eq!(state(&path), DaemonState::NotRunning);
    }

    #[test]
    fn what_triggered_a_pass_is_said_in_words() {
        assert_eq!(describe(&[]), "start");
        assert_eq!(
            describe(&[RELEASE_DOMAIN.into(), RELEASE_DOMAIN.into()]),
            "a domain was released"
        );
        assert_eq!(
            describe(&["/squeezed/state/xl-7".into(), RELEASE_DOMAIN.into()]),
            "a domain was released, a reservation changed"
        );
    }
}
