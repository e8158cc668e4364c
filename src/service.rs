//! The memory service: squeezed's `Memory_interface` as a library.
//!
//! A [`Service`] is opened over a [`Platform`]. Every call that decides about host memory (or
//! changes the ledger) runs under two locks: a mutex for the threads of this process and an
//! `flock` on a host-wide lock file for the processes of the host, so xenopsd and any number of
//! short-lived `xl` processes can use the library at once and never promise the same free
//! memory twice. Reservations and balances run as rounds, each under the locks for a look, a
//! decision and its writes only; the waits for balloon drivers happen outside them, and a
//! reservation that waits is a pending entry every round plans for (see [`crate::pending`] and
//! `docs/service.md`). Each round reads the host afresh; nothing is cached between
//! calls except which domains have been cooperative (for the `memory/uncooperative` flag) and,
//! with the adaptive policy (the default; see [`ServiceConfig::policy`]), what the adaptive
//! squeezer has learnt about each guest.
//!
//! Sessions are service names (squeezed's convention: one instance of a named service at a
//! time); reservations are kept in the store (see [`crate::reservations`]), so a process that
//! dies loses nothing and the next one sees every reservation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex};

use crate::adaptive::{AdaptiveOptions, Cooperation};
use crate::adaptive::{Goal as AdaptiveGoal, Outcome as AdaptiveOutcome};
use crate::balancer::Policy;
use crate::diagnostics::{self, Diagnostics, Operation, Recorder};
use crate::domain_zero::{self, DomainZeroAnswer, DomainZeroPolicy};
use crate::driver::{self, Io};
use crate::engine::{ClassicRound, Engine};
use crate::error::{Error, Result};
use crate::guest_policy::{self, GuestPolicy};
use crate::host::{HostConfig, HostModel, HostView, ScrubWait, SCRUB_POLL_S};
use crate::lockfile;
use crate::model::{kib, DomId, Kib};
use crate::pending;
use crate::platform::{pages, Platform};
use crate::progress::{CancelToken, ReserveOptions, Watch};
use crate::reservations::{self, Layout};
use crate::squeezer::Options;

/// The default host-wide lock file.
pub const DEFAULT_LOCK_PATH: &str = "/run/squeeze/host.lock";

/// The default file recording host free memory at boot.
pub const DEFAULT_BOOT_TIME_RECORD_PATH: &str = "/run/squeeze/boot_time_memory";

/// squeezed's balance check interval, in seconds.
pub const DEFAULT_BALANCE_INTERVAL_S: f64 = 10.0;

/// Seconds a call waits for the host lock by default: one minute. The lock is held for one
/// round at a time (a look, a decision and a few writes: milliseconds, well under a second
/// with a thousand guests), never while balloon drivers work nor between the samples of the
/// boot-time record, so a healthy holder lets go long before.
pub const DEFAULT_LOCK_TIMEOUT_S: f64 = 60.0;

/// Settings of a [`Service`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The host model's settings (slush, tolerance, domain 0, ledger location).
    pub host: HostConfig,
    /// The squeezer's options.
    pub options: Options,
    /// The lock file every process using the host takes.
    pub lock_path: PathBuf,
    /// Where host free memory at boot is recorded.
    pub boot_time_record_path: PathBuf,
    /// Samples of host free memory that must agree (within 1 MiB) before it is recorded.
    pub boot_time_samples: u32,
    /// Seconds between those samples.
    pub boot_time_interval_s: f64,
    /// Seconds between two checks of the background balancer.
    pub balance_interval_s: f64,
    /// Seconds (real time) a call waits for the host lock before it fails with
    /// [`Error::Backend`] naming the lock file: a process that hangs while holding it must not
    /// block every other caller forever. It must outlast the longest hold of a healthy caller:
    /// one round, since reservations and balances wait for ballooning outside the lock.
    pub lock_timeout_s: f64,
    /// Which algorithm decides: the adaptive one (one instance per service, learning across
    /// calls; the default) or squeezed's ([`Policy::Classic`]: a fresh squeezer per call, as
    /// squeezed runs it). Only the service defaults to adaptive: a [`crate::Balancer`] and the
    /// squeezer's [`Options`] still default to classic.
    pub policy: Policy,
    /// The adaptive algorithm's settings (used with [`Policy::Adaptive`]).
    pub adaptive: AdaptiveOptions,
    /// How domain 0's memory is managed (default: fixed, as squeezed's default).
    pub domain_zero: DomainZeroPolicy,
    /// Longest a reservation waits, in all, for memory that dying domains are giving back
    /// before guests are ballooned for it (see [`crate::dying`]); 0 never waits, as squeezed.
    pub dying_wait_s: f64,
}

/// Seconds before a round looks again at a host whose last look was in flux (a domain being
/// built allocated memory while it was taken; see [`HostView::in_flux`]).
const UNSETTLED_WAIT_S: f64 = 0.5;

/// Rounds in a row that look again for that reason before acting on the look anyway: a domain
/// builder that allocates for longer than this does not stop the host from being served.
const MAX_UNSETTLED_ROUNDS: u32 = 10;

/// Default of [`ServiceConfig::dying_wait_s`]: a minute. Waiting stops sooner if the dying
/// domains give nothing back for [`crate::dying::STALL_S`].
pub const DEFAULT_DYING_WAIT_S: f64 = 60.0;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            host: HostConfig::default(),
            options: Options::default(),
            lock_path: PathBuf::from(DEFAULT_LOCK_PATH),
            boot_time_record_path: PathBuf::from(DEFAULT_BOOT_TIME_RECORD_PATH),
            boot_time_samples: 3,
            boot_time_interval_s: 1.0,
            balance_interval_s: DEFAULT_BALANCE_INTERVAL_S,
            lock_timeout_s: DEFAULT_LOCK_TIMEOUT_S,
            policy: Policy::Adaptive,
            adaptive: AdaptiveOptions::default(),
            domain_zero: DomainZeroPolicy::Fixed,
            dying_wait_s: DEFAULT_DYING_WAIT_S,
        }
    }
}

impl ServiceConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.host.validate()?;
        self.domain_zero.validate()?;
        if self.boot_time_samples == 0 {
            return Err(Error::InvalidArgument(
                "boot_time_samples must be at least 1".into(),
            ));
        }
        check_interval("boot_time_interval_s", self.boot_time_interval_s)?;
        check_interval("balance_interval_s", self.balance_interval_s)?;
        check_interval("lock_timeout_s", self.lock_timeout_s)?;
        check_interval("dying_wait_s", self.dying_wait_s)?;
        if self.lock_timeout_s == 0.0 {
            return Err(Error::InvalidArgument(
                "lock_timeout_s must be above 0".into(),
            ));
        }
        if self.balance_interval_s == 0.0 {
            return Err(Error::InvalidArgument(
                "balance_interval_s must be above 0".into(),
            ));
        }
        Ok(())
    }
}

fn check_interval(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name} = {v} is not an interval in 0..=86400 s"
        )))
    }
}

/// A callback run at named points inside the service's operations; tests use it to kill a
/// process mid-operation.
pub type FaultHook = Arc<dyn Fn(&str) + Send + Sync>;

struct Balancer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

struct Inner {
    model: Mutex<HostModel>,
    /// The platform's store, for reads that need no decision and so no lock.
    store: Arc<dyn crate::platform::Store>,
    /// The platform's clock, for the waits between rounds (outside the lock).
    clock: Arc<dyn crate::platform::Clock>,
    config: ServiceConfig,
    layout: Layout,
    balancer: Mutex<Option<Balancer>>,
    /// The adaptive algorithm's state, kept across calls (None with the classic policy).
    learner: Mutex<Option<crate::balancer::Balancer>>,
    /// Where the learner stands with the learnt state in the store (see [`crate::learnt`]).
    learnt: Mutex<crate::learnt::Sync>,
    fault_hook: Mutex<Option<FaultHook>>,
    balancing_passes: std::sync::atomic::AtomicU64,
    /// Counters and the last decision, for the diagnostics.
    recorder: Mutex<Recorder>,
}

/// The memory service over one host. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Converts the squeezer's error to what squeezed reports: amounts net of the slush.
/// A failure to free `rounded` KiB (a size rounded up to whole pages) reported, as squeezed
/// does, in the size the caller asked for.
fn as_asked(e: Error, rounded: Kib, asked: Kib) -> Error {
    match e {
        Error::CannotFreeThisMuchMemory {
            required_kib,
            free_kib,
        } if required_kib == rounded => Error::CannotFreeThisMuchMemory {
            required_kib: asked,
            free_kib,
        },
        other => other,
    }
}

fn net_of_slush(e: Error, slush: Kib) -> Error {
    match e {
        Error::CannotFreeThisMuchMemory {
            required_kib,
            free_kib,
        } => Error::CannotFreeThisMuchMemory {
            required_kib: required_kib - slush,
            free_kib: free_kib - slush,
        },
        other => other,
    }
}

/// Claims for `domid` the part of its `kib` reservation it has not allocated yet. The
/// reservation is already counted through the domain's initial reservation, so a claim Xen
/// refuses costs nothing but the protection: it is logged, not fatal.
fn claim_reservation(platform: &Platform, domid: DomId, kib: Kib) -> Result<()> {
    let Some(info) = platform.hypervisor.domain(domid)? else {
        return Ok(());
    };
    // The shadow allocation comes out of the reservation too (the host model counts it so).
    let shadow = platform
        .hypervisor
        .shadow_allocation_mib(domid)
        .map(|m| m.min(1 << 30) as Kib * 1024)
        .unwrap_or(0);
    let held = pages::to_kib(info.tot_pages)?;
    let want = pages::from_kib((kib - held - shadow).max(0))?;
    match platform.hypervisor.claim_pages(domid, want) {
        Ok(()) => debug!("claimed {want} pages for domain {domid}"),
        Err(e) => warn!("cannot claim {want} pages for domain {domid}: {e}"),
    }
    Ok(())
}

/// Attempts at the boot-time record, each restarted by a change to the ledger, before the
/// last one holds the host lock through its samples (see
/// [`Service::record_boot_time_host_free_memory`]).
pub const BOOT_TIME_ATTEMPTS: u32 = 10;

/// Host free memory at boot as squeezed counts it: Xen's free pages, the pages to scrub and
/// what domain 0 holds.
fn boot_time_sample(platform: &Platform) -> Result<Kib> {
    let p = platform.hypervisor.physinfo()?;
    let dom0 = platform
        .hypervisor
        .domain(0)?
        .map(|d| d.tot_pages)
        .unwrap_or(0);
    pages::to_kib(
        p.free_pages
            .saturating_add(p.scrub_pages)
            .saturating_add(dom0),
    )
}

/// Consecutive samples of the boot-time record that agree within 1 MiB.
struct BootTimeRun {
    last: Kib,
    agreeing: u32,
}

impl BootTimeRun {
    fn new(first: Kib) -> Self {
        BootTimeRun {
            last: first,
            agreeing: 1,
        }
    }

    /// Counts `next`: one more agreeing sample, or the first of a new run.
    fn add(&mut self, next: Kib) {
        self.agreeing = if (next - self.last).abs() <= 1024 {
            self.agreeing + 1
        } else {
            1
        };
        self.last = next;
    }
}

/// Where one lock hold of the boot-time sampling left it.
enum BootTimeStep {
    /// Another sample taken; more to come.
    Sampled,
    /// The ledger is not the one the run started with: start again.
    LedgerChanged,
    /// The record is written (by this call or by another).
    Recorded(Kib),
}

fn check_domid(domid: DomId) -> Result<()> {
    if domid < 0 {
        Err(Error::InvalidArgument(format!(
            "domain id {domid} is negative"
        )))
    } else {
        Ok(())
    }
}

/// What a reservation asks for: a size (`min_kib == max_kib`) or a range, in whole pages.
#[derive(Debug, Clone, Copy)]
struct Ask {
    min_kib: Kib,
    max_kib: Kib,
    range: bool,
}

/// A reservation's state across its rounds: the engine state lives with the caller (classic:
/// the fresh squeezer of the call, as squeezed; adaptive: the operation, stepped on the
/// service's learner round by round).
struct Call<'s> {
    id: String,
    session: String,
    ask: Ask,
    /// What rounds free for it: the size, or the policy's share for a range.
    need_kib: Kib,
    /// Its pending entry, once written.
    entry: Option<pending::Entry>,
    first: bool,
    /// Whether it gave up planning for every pending need at once (they could not all be met).
    narrowed: bool,
    classic: ClassicRound<'s>,
    clock: driver::Clock,
    op: Option<crate::adaptive::Operation>,
    deadline_s: Option<f64>,
    /// Its wait for memory dying domains give back.
    dying: crate::dying::DyingWait,
    /// Rounds in a row it looked again because the look was in flux.
    unsettled: u32,
    /// Its wait for Xen's scrubber.
    scrub: ScrubWait,
}

/// How a round of a reservation ended.
enum RoundEnd {
    /// Granted this many KiB.
    Granted(Kib),
    /// Wait this many seconds (outside the lock) and run another round.
    Wait(f64),
}

impl Service {
    /// Opens the service over `platform`. Host free memory at boot is recorded now when no
    /// earlier service of this boot recorded it (see
    /// [`record_boot_time_host_free_memory`](Service::record_boot_time_host_free_memory));
    /// nothing else is read or written until the first call.
    pub fn new(platform: Platform, mut config: ServiceConfig) -> Result<Self> {
        config.validate()?;
        if matches!(config.domain_zero, DomainZeroPolicy::Balloon { .. }) {
            config.host.manage_domain_zero = true;
        }
        let layout = config.host.layout.clone();
        let store = platform.store.clone();
        let clock = platform.clock.clone();
        let mut model = HostModel::new(platform, config.host.clone())?;
        // The adaptive algorithm's score, with its hysteresis, sets memory/uncooperative.
        model.set_cooperation_judged_by_squeezer(config.policy == Policy::Adaptive);
        // The adaptive algorithm keeps its state for the life of the service; checking it here
        // also refuses bad adaptive settings up front.
        let learner = match config.policy {
            Policy::Classic => None,
            Policy::Adaptive => Some(crate::balancer::Balancer::new(
                Policy::Adaptive,
                &config.options,
                config.adaptive,
            )?),
        };
        let service = Service {
            inner: Arc::new(Inner {
                model: Mutex::new(model),
                store,
                clock,
                config,
                layout,
                balancer: Mutex::new(None),
                learner: Mutex::new(learner),
                learnt: Mutex::default(),
                fault_hook: Mutex::new(None),
                balancing_passes: std::sync::atomic::AtomicU64::new(0),
                recorder: Mutex::new(Recorder::default()),
            }),
        };
        // squeezed records it as it starts, before the toolstack starts any guest: asked later,
        // the answer must not depend on what ran meanwhile. A failure is not fatal (squeezed
        // logs it too); the first get_host_initial_free_memory tries again.
        if let Err(e) = service.record_boot_time_host_free_memory() {
            warn!("cannot record host free memory at boot: {e}");
        }
        // squeezed writes a ballooned domain 0's range as it starts, after the record.
        let policy = service.inner.config.domain_zero;
        if policy != DomainZeroPolicy::Fixed {
            service.with_host(|model| domain_zero::configure(model, policy))?;
        }
        Ok(service)
    }

    /// The settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Installs (or, with `None`, removes) a callback run at named points inside operations:
    /// `reserve:freed`, `reserve:recorded`, `transfer:checked`, `transfer:recorded`,
    /// `transfer:maxmem`, `delete:done`, `login:done`.
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        *self.inner.fault_hook.lock() = hook;
    }

    /// Lets `seconds` pass on the platform's clock between two rounds, outside the host lock,
    /// with `watch` reporting progress and ending the wait on a cancel or a missed deadline.
    fn wait_between_rounds(&self, watch: &mut Watch<'_, '_>, seconds: f64) -> Result<()> {
        let clock = &self.inner.clock;
        watch.wait(seconds, &mut |s| {
            clock.sleep(s);
            Ok(())
        })
    }

    fn fault_point(&self, name: &str) {
        let hook = self.inner.fault_hook.lock().clone();
        if let Some(h) = hook {
            h(name);
        }
    }

    /// Runs `f` with the host to itself: this process's threads and every other process that
    /// uses the same lock file wait.
    fn with_host<T>(&self, f: impl FnOnce(&mut HostModel) -> Result<T>) -> Result<T> {
        self.with_host_or_cancel(None, f)
    }

    /// [`with_host`](Service::with_host) for a call that may be cancelled: while it waits for
    /// the host (this process's threads or another process holding the lock), `cancel` ends
    /// the wait with [`Error::Cancelled`]. Either wait ends after `lock_timeout_s` of real
    /// time with [`Error::Backend`]; the platform's clock is not used, as it may be simulated.
    fn with_host_or_cancel<T>(
        &self,
        cancel: Option<&CancelToken>,
        f: impl FnOnce(&mut HostModel) -> Result<T>,
    ) -> Result<T> {
        let cfg = &self.inner.config;
        let started = std::time::Instant::now();
        let limit = Duration::from_secs_f64(cfg.lock_timeout_s);
        let mut keep_waiting = || {
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(Error::Cancelled);
            }
            if started.elapsed() >= limit {
                return Err(Error::Backend(format!(
                    "gave up waiting for the host lock {} after {} s (lock_timeout_s): another \
                     caller held it all that time, or a process holding it has hung",
                    cfg.lock_path.display(),
                    cfg.lock_timeout_s
                )));
            }
            Ok(())
        };
        let mut model = loop {
            if let Some(m) = self.inner.model.try_lock_for(lockfile::MAX_POLL) {
                break m;
            }
            keep_waiting()?;
        };
        let _flock = lockfile::lock_polling(&cfg.lock_path, &mut keep_waiting)?;
        f(&mut model)
    }

    /// Starts a session for `service_name` and returns its id (the name itself, as squeezed
    /// does). Reservations the service made before and never transferred are dropped, and so
    /// are its pending ones (whose calls then fail): a restarted client has forgotten their
    /// ids.
    pub fn login(&self, service_name: &str) -> Result<String> {
        reservations::check_session(service_name)?;
        let layout = &self.inner.layout;
        let (dropped, dropped_pending) = self.with_host(|model| {
            let mut dropped = Vec::new();
            let mut dropped_pending = Vec::new();
            model.platform().store.transaction(&mut |t| {
                dropped = reservations::drop_untransferred(t, layout, service_name)?;
                dropped_pending = pending::drop_session(t, layout, service_name)?;
                Ok(())
            })?;
            if !dropped.is_empty() {
                self.note_outside_change();
            }
            Ok((dropped, dropped_pending))
        })?;
        for e in &dropped_pending {
            info!(
                "login {service_name}: dropped pending reservation {} ({} KiB)",
                e.id, e.need_kib
            );
        }
        for r in &dropped {
            info!(
                "login {service_name}: dropped untransferred reservation {} ({} KiB)",
                r.id, r.kib
            );
        }
        self.fault_point("login:done");
        Ok(service_name.to_string())
    }

    /// Memory given back by the ledger (a reservation deleted or dropped) is an outside input
    /// the adaptive squeezer cannot see in a host snapshot: without this, growing a guest it
    /// had just shrunk would wait for the dwell time. Called under the host lock.
    fn note_outside_change(&self) {
        if let Some(b) = self.inner.learner.lock().as_mut() {
            b.outside_change();
        }
    }

    /// Runs `f` with the algorithm that decides: a fresh classic squeezer for every call, as
    /// squeezed does, or the service's one adaptive instance. Called under the host lock, the
    /// only place the adaptive instance is locked.
    /// The adaptive instance first takes what other processes learnt since it last looked, and
    /// leaves what it learnt in the store for them, however `f` ended; `now` is the host clock.
    fn decide<T>(
        &self,
        now: f64,
        f: impl FnOnce(&mut crate::balancer::Balancer) -> Result<T>,
    ) -> Result<T> {
        let c = &self.inner.config;
        let mut learner = self.inner.learner.lock();
        let (store, layout) = (&*self.inner.store, &self.inner.layout);
        match learner.as_mut() {
            Some(b) if b.policy() == Policy::Adaptive => {
                let mut sync = self.inner.learnt.lock();
                if let Some(a) = b.adaptive() {
                    let adopted = sync.load(store, layout);
                    // A domid with a new domain: nothing about the earlier one carries over.
                    sync.take_reborn().into_iter().for_each(|d| a.forget(d));
                    for (domid, l) in adopted {
                        a.adopt(domid, l, now);
                    }
                }
                let result = f(b);
                if let Some(a) = b.adaptive() {
                    sync.save(store, layout, &a.learnt());
                    sync.take_reborn().into_iter().for_each(|d| a.forget(d));
                }
                result
            }
            Some(b) => f(b),
            None => f(&mut crate::balancer::Balancer::new(
                c.policy, &c.options, c.adaptive,
            )?),
        }
    }

    /// Hands the adaptive algorithm's judgement of every domain to the host model, whatever
    /// `result` the operation ended with: a domain an error blames is flagged by the time the
    /// error returns. A failure to publish is reported only when the operation itself succeeded.
    fn publish_judgements<T>(&self, model: &mut HostModel, result: Result<T>) -> Result<T> {
        let judgements = match self.inner.learner.lock().as_ref() {
            Some(b) => b.judgements(),
            None => return result,
        };
        match (model.publish_cooperation(&judgements), result) {
            (Err(e), Ok(_)) => Err(e),
            (Err(e), Err(first)) => {
                warn!("cannot publish the balloon drivers' cooperation: {e}");
                Err(first)
            }
            (Ok(()), r) => r,
        }
    }

    /// How `domid`'s balloon driver has been cooperating, as the adaptive algorithm has seen it
    /// (None with the classic policy, which forgets between calls, or for a domain not seen).
    pub fn cooperation(&self, domid: DomId) -> Option<Cooperation> {
        self.inner
            .learner
            .lock()
            .as_ref()
            .and_then(|b| b.cooperation(domid))
    }

    /// Frees `kib` KiB (ballooning domains down if needed) and sets it aside under a new
    /// reservation id.
    pub fn reserve_memory(&self, session: &str, kib: Kib) -> Result<String> {
        self.reserve_memory_with(session, kib, ReserveOptions::default())
    }

    /// [`reserve_memory`](Service::reserve_memory) with a progress callback and a cancel token
    /// (see [`ReserveOptions`]). A cancelled call returns [`Error::Cancelled`] and leaves the
    /// ledger as it was.
    pub fn reserve_memory_with(
        &self,
        session: &str,
        kib: Kib,
        options: ReserveOptions<'_>,
    ) -> Result<String> {
        reservations::check_session(session)?;
        kib::check_size("reservation size", kib)?;
        // A domain is built in whole pages: reserve what building it will take.
        let asked = kib;
        let kib = pages::round_up_kib(kib);
        let slush = self.inner.config.host.slush_kib;
        let ask = Ask {
            min_kib: kib,
            max_kib: kib,
            range: false,
        };
        let (id, _) = self
            .reserve_in_rounds(
                session,
                ask,
                options,
                Operation::ReserveMemory,
                format!("reserve {kib} KiB for session {session}"),
            )
            .map_err(|e| as_asked(net_of_slush(e, slush), kib, asked))?;
        Ok(id)
    }

    /// Frees as much as the policy gives a domain that may have anything in `min..=max` KiB
    /// (at least `min`), sets it aside under a new reservation id, and returns the id and the
    /// amount.
    pub fn reserve_memory_range(
        &self,
        session: &str,
        min_kib: Kib,
        max_kib: Kib,
    ) -> Result<(String, Kib)> {
        self.reserve_memory_range_with(session, min_kib, max_kib, ReserveOptions::default())
    }

    /// [`reserve_memory_range`](Service::reserve_memory_range) with a progress callback and a
    /// cancel token (see [`ReserveOptions`]); progress is measured toward the policy's size for
    /// the new domain. A cancelled call returns [`Error::Cancelled`] and leaves the ledger as it
    /// was.
    pub fn reserve_memory_range_with(
        &self,
        session: &str,
        min_kib: Kib,
        max_kib: Kib,
        options: ReserveOptions<'_>,
    ) -> Result<(String, Kib)> {
        reservations::check_session(session)?;
        kib::check_size("minimum", min_kib)?;
        kib::check_size("maximum", max_kib)?;
        if min_kib > max_kib {
            return Err(Error::InvalidMemoryValue(format!(
                "minimum {min_kib} KiB is above maximum {max_kib} KiB"
            )));
        }
        // Whole pages, as the domain will be built.
        let asked = (min_kib, max_kib);
        let (min_kib, max_kib) = (pages::round_up_kib(min_kib), pages::round_up_kib(max_kib));
        let slush = self.inner.config.host.slush_kib;
        let ask = Ask {
            min_kib,
            max_kib,
            range: true,
        };
        self.reserve_in_rounds(
            session,
            ask,
            options,
            Operation::ReserveMemoryRange,
            format!("reserve {min_kib}..={max_kib} KiB for session {session}"),
        )
        .map_err(|e| match net_of_slush(e, slush) {
            e @ Error::CannotFreeThisMuchMemory { required_kib, .. } if required_kib == max_kib => {
                as_asked(e, max_kib, asked.1)
            }
            e => as_asked(e, min_kib, asked.0),
        })
    }

    /// A reservation as rounds (see `docs/service.md`, "Rounds"): each round takes the host
    /// lock, looks, grants whatever pending reservations fit, decides with the engine for every
    /// pending need at once and writes; the wait for the balloon drivers happens outside the
    /// lock. A reservation that must wait is a pending entry in the store from its first
    /// round on; whoever's round finds memory for it grants it. However the call fails, its
    /// entry, and a reservation granted to it meanwhile, are removed.
    fn reserve_in_rounds(
        &self,
        session: &str,
        ask: Ask,
        mut options: ReserveOptions<'_>,
        operation: Operation,
        reason: String,
    ) -> Result<(String, Kib)> {
        let cfg = &self.inner.config;
        let slush = cfg.host.slush_kib;
        let deadline_s = options.deadline_s;
        if let Some(d) = deadline_s.filter(|d| d.is_nan() || *d <= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "a deadline must be a positive number of seconds, not {d}"
            )));
        }
        let cancel = options.cancel.clone();
        // Progress toward a range is measured against the policy's size, known after a look.
        let aim = kib::add(ask.min_kib, slush, "memory to free")?;
        let mut watch = Watch::new()
            .watch(aim, options.progress.as_deref_mut(), options.cancel.clone())
            .deadline(deadline_s);
        let mut squeezer = crate::squeezer::Squeezer::new(cfg.options);
        let mut call = Call {
            id: reservations::new_id(),
            session: session.to_string(),
            ask,
            need_kib: ask.min_kib,
            entry: None,
            first: true,
            narrowed: false,
            classic: ClassicRound::new(&mut squeezer, 0, slush),
            clock: driver::Clock::default(),
            op: None,
            deadline_s,
            dying: Default::default(),
            unsettled: 0,
            scrub: ScrubWait::default(),
        };
        let started = self.inner.clock.now();
        let result = loop {
            let round = self.with_host_or_cancel(cancel.as_ref(), |model| {
                self.reserve_round(model, &mut call, &mut watch)
            });
            match round {
                Ok(RoundEnd::Granted(kib)) => break Ok(kib),
                Ok(RoundEnd::Wait(s)) => {
                    if let Err(e) = self.wait_between_rounds(&mut watch, s) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            self.withdraw(&call.session, &call.id);
        }
        let finished = self.inner.clock.now();
        let writes = std::mem::take(&mut watch.writes);
        self.inner.recorder.lock().record(
            operation,
            reason,
            Some(session),
            started,
            finished,
            &result,
            watch.looks,
            watch.waits,
            &writes,
        );
        result.map(|kib| (call.id, kib))
    }

    /// Removes a failed call's pending entry and a reservation granted to it meanwhile: one
    /// store transaction, which needs no host lock (it only gives memory back), so a call
    /// cancelled while waiting for the lock cleans up too.
    fn withdraw(&self, session: &str, id: &str) {
        let layout = &self.inner.layout;
        let mut granted = false;
        let done = self.inner.store.transaction(&mut |t| {
            pending::remove(t, layout, id)?;
            granted = t.exists(&layout.reservation_path(session, id))?;
            if granted {
                reservations::remove(t, layout, session, id)?;
            }
            Ok(())
        });
        match done {
            Ok(()) if granted => {
                debug!("withdrew reservation {id} of session {session}, granted as it failed");
                if let Some(b) = self.inner.learner.lock().as_mut() {
                    b.outside_change();
                }
            }
            Ok(()) => {}
            Err(e) => warn!("cannot withdraw pending reservation {id} of session {session}: {e}"),
        }
    }

    /// The pending entries in the store, oldest first, those of dead owners dropped.
    fn pending_entries(&self) -> Result<Vec<pending::Entry>> {
        let layout = &self.inner.layout;
        let mut alive = Vec::new();
        let mut dropped = Vec::new();
        self.inner.store.transaction(&mut |t| {
            alive.clear();
            dropped.clear();
            for e in pending::list(t, layout)? {
                if e.owner.is_alive() {
                    alive.push(e);
                } else {
                    pending::remove(t, layout, &e.id)?;
                    dropped.push(e);
                }
            }
            Ok(())
        })?;
        for e in &dropped {
            info!(
                "dropped pending reservation {} of session {}: its process {} is gone",
                e.id, e.session, e.owner.pid
            );
        }
        Ok(alive)
    }

    /// Records the call's pending entry, once.
    fn write_entry(&self, call: &mut Call<'_>, now: f64) -> Result<()> {
        if call.entry.is_some() {
            return Ok(());
        }
        let mut entry = pending::Entry {
            version: pending::VERSION,
            id: call.id.clone(),
            session: call.session.clone(),
            min_kib: call.ask.min_kib,
            max_kib: call.ask.max_kib,
            need_kib: call.need_kib,
            order: 0,
            since_s: now,
            owner: pending::Owner::this_process(),
        };
        let layout = &self.inner.layout;
        let mut order = 0;
        self.inner.store.transaction(&mut |t| {
            order = pending::add(t, layout, &entry)?;
            Ok(())
        })?;
        entry.order = order;
        debug!(
            "reservation {} of session {} waits for {} KiB (pending, order {order})",
            call.id, call.session, call.need_kib
        );
        call.entry = Some(entry);
        Ok(())
    }

    /// Grants the call its own reservation of `amount` KiB (the size asked, when None),
    /// replacing its pending entry in the same transaction: the check that the memory is free
    /// happened in this lock hold.
    fn grant_own(
        &self,
        model: &mut HostModel,
        call: &Call<'_>,
        amount: Option<Kib>,
    ) -> Result<Kib> {
        let kib = match amount {
            Some(k) => pages::round_down_kib(k).max(call.ask.min_kib),
            None => call.ask.min_kib,
        };
        self.fault_point("reserve:freed");
        let layout = &self.inner.layout;
        model.platform().store.transaction(&mut |t| {
            pending::remove(t, layout, &call.id)?;
            reservations::add(t, layout, &call.session, &call.id, kib)
        })?;
        debug!(
            "reserved {kib} KiB for reservation {} of session {}",
            call.id, call.session
        );
        self.fault_point("reserve:recorded");
        Ok(kib)
    }

    /// Grants every pending entry the free memory covers by the fairness rule
    /// ([`pending::grants`]); returns what the call's own entry got, if it was granted.
    fn grant_pending(
        &self,
        entries: &[pending::Entry],
        free_kib: Kib,
        now: f64,
        own: &str,
    ) -> Result<(Option<Kib>, Vec<usize>)> {
        let grants = pending::grants(free_kib, entries, now, pending::FAIRNESS_WINDOW_S);
        if grants.is_empty() {
            return Ok((None, Vec::new()));
        }
        let layout = &self.inner.layout;
        let mut done = Vec::new();
        self.inner.store.transaction(&mut |t| {
            done.clear();
            for &(i, kib) in &grants {
                let kib = pages::round_down_kib(kib).max(entries[i].min_kib);
                if pending::grant(t, layout, &entries[i], kib)? {
                    done.push((i, kib));
                }
            }
            Ok(())
        })?;
        let mut mine = None;
        for &(i, kib) in &done {
            let e = &entries[i];
            info!(
                "granted pending reservation {} of session {}: {kib} KiB",
                e.id, e.session
            );
            if e.id == own {
                mine = Some(kib);
            }
        }
        Ok((mine, done.into_iter().map(|(i, _)| i).collect()))
    }

    /// One round of a reservation, under the host lock.
    fn reserve_round(
        &self,
        model: &mut HostModel,
        call: &mut Call<'_>,
        watch: &mut Watch<'_, '_>,
    ) -> Result<RoundEnd> {
        let cfg = &self.inner.config;
        let slush = cfg.host.slush_kib;
        let adaptive = cfg.policy == Policy::Adaptive;
        // A pending entry that left the queue was granted by another caller's round, or
        // dropped by a login of its session.
        let entries = self.pending_entries()?;
        if call.entry.is_some() && !entries.iter().any(|e| e.id == call.id) {
            let path = self.inner.layout.reservation_path(&call.session, &call.id);
            return match model.platform().store.read(&path)? {
                Some(v) => {
                    let kib = v.trim().parse::<Kib>().map_err(|_| {
                        Error::Backend(format!("reservation {} holds {v:?}", call.id))
                    })?;
                    debug!(
                        "reservation {} was granted {kib} KiB by another round",
                        call.id
                    );
                    Ok(RoundEnd::Granted(kib))
                }
                None => Err(Error::Backend(format!(
                    "pending reservation {} was dropped: session {} logged in again",
                    call.id, call.session
                ))),
            };
        }
        let mut io = watch.on(model);
        // The first round sizes the request and starts the engine as a call always has (and
        // does it all again if Xen's scrubber holds it back).
        let mut first_now = None;
        if call.first {
            driver::settings(&io)?;
            if call.ask.range {
                let r = driver::range_request(&mut io, call.ask.min_kib, call.ask.max_kib)?;
                call.need_kib = r.required - r.slush;
                io.aim(r.required);
            }
            if !adaptive {
                // squeezed's shortcut: the memory is there and every balloon driver rests.
                let host = io.make_host()?;
                if let Some(end) = self.wait_for_scrubber(model, call)? {
                    return Ok(end);
                }
                let mut io = watch.on(model);
                let at_rest = host
                    .domains()
                    .iter()
                    .filter(|d| d.can_balloon)
                    .all(crate::model::Domain::has_hit_target);
                let required = slush + call.need_kib;
                let others = entries.iter().any(|e| e.id != call.id);
                if !others && required != slush && required <= host.free_mem_kib && at_rest {
                    let amount = call.ask.range.then(|| host.free_mem_kib - slush);
                    let amount = amount.map(|a| a.min(call.ask.max_kib).max(call.ask.min_kib));
                    return self.grant_own(model, call, amount).map(RoundEnd::Granted);
                }
                let start = call.clock.now(&mut io)?;
                call.classic.begin_call(start);
                first_now = Some(start);
            }
            call.first = false;
        }
        let mut io = watch.on(model);
        let now = match first_now {
            Some(t) => t,
            None => call.clock.now(&mut io)?,
        };
        let mut host = io.make_host()?;
        if let Some(end) = self.wait_for_scrubber(model, call)? {
            return Ok(end);
        }
        let mut io = watch.on(model);
        let usable = |h: &crate::model::Host| {
            if adaptive {
                crate::adaptive::guaranteed_free(h)
            } else {
                h.free_mem_kib
            }
        };
        // Others wait too: grant whatever fits, this call's own entry included, then plan for
        // all that still waits.
        let crowded = entries.iter().any(|e| e.id != call.id);
        let mut others_kib = 0;
        if crowded {
            self.write_entry(call, now)?;
            let mut all = entries.clone();
            if !all.iter().any(|e| e.id == call.id) {
                all.extend(call.entry.clone());
            }
            let (mine, granted) = self.grant_pending(&all, usable(&host) - slush, now, &call.id)?;
            if let Some(kib) = mine {
                self.publish_round(model)?;
                return Ok(RoundEnd::Granted(kib));
            }
            if !granted.is_empty() {
                // What was just granted is reserved now: the engine must not see it as free.
                host = io.make_host()?;
            }
            others_kib = all
                .iter()
                .enumerate()
                .filter(|(i, e)| !granted.contains(i) && e.id != call.id)
                .map(|(_, e)| e.need_kib)
                .sum();
        }
        let own_required = kib::add(call.need_kib, slush, "memory to free")?;
        let required = if call.narrowed {
            own_required
        } else {
            kib::add(own_required, others_kib, "memory to free")?
        };
        // A domain being built allocated memory during the look: what is free is understated
        // for this look; look again rather than shrink guests for memory that is there.
        if model.last_view().is_some_and(|v| v.in_flux) && call.unsettled < MAX_UNSETTLED_ROUNDS {
            call.unsettled += 1;
            debug!(
                "reservation {}: the host changed during the look; looking again",
                call.id
            );
            return self.wait_pending(model, call, now, UNSETTLED_WAIT_S);
        }
        call.unsettled = 0;
        // Memory dying domains are giving back covers it: wait for that instead of asking
        // guests for it (see crate::dying).
        let dying_kib = model.last_view().map_or(0, |v| v.dying_kib);
        if call
            .dying
            .wait(dying_kib, usable(&host), required, now, cfg.dying_wait_s)
        {
            debug!(
                "reservation {}: waiting for {dying_kib} KiB that dying domains are giving back ({:.1} s so far)",
                call.id,
                call.dying.waited_s(now)
            );
            return self.wait_pending(model, call, now, crate::dying::POLL_S);
        }
        let mut io = watch.on(model);
        let enough = kib::add(call.ask.min_kib, slush, "minimum free memory")?;
        let mut success = |free: Kib| free >= enough;
        let (maxmem, targets, outcome, next_look_s) = if adaptive {
            let deadline_s = call.deadline_s;
            let op = &mut call.op;
            self.decide(now, |b| {
                b.with_deadline(deadline_s, |b| {
                    let a = b.adaptive().ok_or_else(|| {
                        Error::Backend("the adaptive policy has no adaptive squeezer".into())
                    })?;
                    let op = match op {
                        Some(op) => op,
                        None => op.insert(a.begin(AdaptiveGoal::Free {
                            required_kib: required,
                        })?),
                    };
                    op.set_required(required);
                    let r = a.step(op, &host, now, &mut success)?;
                    Ok((Vec::new(), r.writes, r.outcome, a.options().poll_s))
                })
            })?
        } else {
            call.classic.set_required(required);
            let plan = call.classic.round(&host, now, &mut success)?;
            (plan.maxmem, plan.targets, plan.outcome, plan.next_look_s)
        };
        for (domid, kib) in maxmem {
            io.set_maxmem(domid, kib)?;
        }
        for a in targets {
            io.execute_action(a)?;
        }
        match outcome {
            AdaptiveOutcome::Done if !crowded => {
                let amount = if call.ask.range {
                    // What is free now, as the policy counts it, within the range.
                    let h = io.make_host()?;
                    Some(
                        (usable(&h) - slush)
                            .min(call.ask.max_kib)
                            .max(call.ask.min_kib),
                    )
                } else {
                    None
                };
                let kib = self.grant_own(model, call, amount)?;
                self.publish_round(model)?;
                return Ok(RoundEnd::Granted(kib));
            }
            // Crowded, the grants above decide; enough is free for this call but the fairness
            // rule keeps it for an older one.
            AdaptiveOutcome::Done => {}
            AdaptiveOutcome::Failed(e) if crowded && !call.narrowed => {
                // Every pending need at once cannot be met: aim for this call's alone.
                debug!("reservation {}: the pending needs together cannot be met ({e}); aiming for its own", call.id);
                call.narrowed = true;
            }
            AdaptiveOutcome::Failed(e) => {
                self.publish_round(model)?;
                return Err(e);
            }
            AdaptiveOutcome::Continue => {}
        }
        self.wait_pending(model, call, now, next_look_s)
    }

    /// Ends a reservation's round with the call still waiting: recorded in the ledger as
    /// pending (so other calls plan around it and balances yield to it), the round's
    /// judgements published, and the next look `wait_s` later, outside the host lock.
    fn wait_pending(
        &self,
        model: &mut HostModel,
        call: &mut Call<'_>,
        now: f64,
        wait_s: f64,
    ) -> Result<RoundEnd> {
        self.write_entry(call, now)?;
        self.publish_round(model)?;
        Ok(RoundEnd::Wait(wait_s))
    }

    /// Ends a reservation's round without deciding when its last look found Xen's scrubber
    /// busy and the call has not waited for it long enough (see [`ScrubWait`]): the call is
    /// recorded as pending, so others see it waiting and balances yield to it, and looks again
    /// outside the lock.
    fn wait_for_scrubber(
        &self,
        model: &mut HostModel,
        call: &mut Call<'_>,
    ) -> Result<Option<RoundEnd>> {
        let limit = model.config().scrub_wait_s;
        let Some(view) = model.last_view() else {
            return Ok(None);
        };
        if !call.scrub.look_again(view, limit) {
            return Ok(None);
        }
        let now = view.time;
        self.wait_pending(model, call, now, SCRUB_POLL_S).map(Some)
    }

    /// Publishes the adaptive policy's judgements at the end of a round.
    fn publish_round(&self, model: &mut HostModel) -> Result<()> {
        self.publish_judgements(model, Ok(()))
    }

    /// A balance as rounds, each under the host lock, the waits outside it. A balance yields
    /// to reservations: it stops at the first round that finds a pending one, which the next
    /// round (its owner's) serves.
    /// A background balance also stops once `stop` is set, so stopping the balancer does not
    /// wait for a long balance to finish.
    fn balance_in_rounds(
        &self,
        operation: Operation,
        reason: String,
        stop: Option<&Mutex<bool>>,
    ) -> Result<()> {
        let cfg = &self.inner.config;
        let slush = cfg.host.slush_kib;
        let tolerance = cfg.host.free_memory_tolerance_kib;
        let adaptive = cfg.policy == Policy::Adaptive;
        let mut watch = Watch::new();
        let mut squeezer = crate::squeezer::Squeezer::new(cfg.options);
        let mut classic = ClassicRound::new(&mut squeezer, slush, slush);
        let mut clock = driver::Clock::default();
        let mut op: Option<crate::adaptive::Operation> = None;
        let mut first = true;
        let mut unsettled = 0;
        let mut scrub = ScrubWait::default();
        let scrub_wait_s = cfg.host.scrub_wait_s;
        let started = self.inner.clock.now();
        let result = loop {
            let round = self.with_host(|model| {
                if stop.is_some_and(|s| *s.lock()) {
                    debug!("balance stops: the balancer is stopping");
                    return Ok(None);
                }
                if !self.pending_entries()?.is_empty() {
                    debug!("balance stops: reservations are pending");
                    return Ok(None);
                }
                // A look taken while Xen's scrubber is busy: look again outside the lock
                // rather than decide on it (see ScrubWait).
                let mut scrubber_busy = |model: &HostModel| {
                    model
                        .last_view()
                        .is_some_and(|v| scrub.look_again(v, scrub_wait_s))
                };
                let mut io = watch.on(model);
                let mut first_now = None;
                if first {
                    driver::settings(&io)?;
                    if !adaptive {
                        // squeezed looks once before it starts (its shortcut never applies to
                        // a balance).
                        io.make_host()?;
                        if scrubber_busy(model) {
                            return Ok(Some(SCRUB_POLL_S));
                        }
                        let mut io = watch.on(model);
                        let start = clock.now(&mut io)?;
                        classic.begin_call(start);
                        first_now = Some(start);
                    }
                    first = false;
                }
                let mut io = watch.on(model);
                let now = match first_now {
                    Some(t) => t,
                    None => clock.now(&mut io)?,
                };
                let host = io.make_host()?;
                if scrubber_busy(model) {
                    return Ok(Some(SCRUB_POLL_S));
                }
                // A look in flux understates what is free (see HostView::in_flux): look again
                // before shrinking anyone for it.
                if model.last_view().is_some_and(|v| v.in_flux) && unsettled < MAX_UNSETTLED_ROUNDS
                {
                    unsettled += 1;
                    debug!("balance: the host changed during the look; looking again");
                    return Ok(Some(UNSETTLED_WAIT_S));
                }
                unsettled = 0;
                let mut io = watch.on(model);
                let mut success = |free: Kib| driver::is_balanced(free, slush, tolerance);
                let (maxmem, targets, outcome, next_look_s) = if adaptive {
                    self.decide(now, |b| {
                        let a = b.adaptive().ok_or_else(|| {
                            Error::Backend("the adaptive policy has no adaptive squeezer".into())
                        })?;
                        let op = match &mut op {
                            Some(op) => op,
                            None => op.insert(a.begin(AdaptiveGoal::Balance { slush_kib: slush })?),
                        };
                        let r = a.step(op, &host, now, &mut success)?;
                        Ok((Vec::new(), r.writes, r.outcome, a.options().poll_s))
                    })?
                } else {
                    let plan = classic.round(&host, now, &mut success)?;
                    (plan.maxmem, plan.targets, plan.outcome, plan.next_look_s)
                };
                for (domid, kib) in maxmem {
                    io.set_maxmem(domid, kib)?;
                }
                for a in targets {
                    io.execute_action(a)?;
                }
                self.publish_round(model)?;
                match outcome {
                    AdaptiveOutcome::Done => Ok(None),
                    AdaptiveOutcome::Continue => Ok(Some(next_look_s)),
                    // squeezed's balance reports only invalid settings and platform failures.
                    AdaptiveOutcome::Failed(Error::CannotFreeThisMuchMemory {
                        free_kib, ..
                    }) if !adaptive => {
                        debug!("balanced as far as possible: {free_kib} KiB free");
                        Ok(None)
                    }
                    AdaptiveOutcome::Failed(Error::DomainsRefusedToCooperate { domids })
                        if !adaptive =>
                    {
                        debug!(
                            "balanced as far as possible: domains {domids:?} are not cooperating"
                        );
                        Ok(None)
                    }
                    AdaptiveOutcome::Failed(e) => Err(e),
                }
            });
            match round {
                Ok(None) => break Ok(()),
                Ok(Some(s)) => {
                    if let Err(e) = self.wait_between_rounds(&mut watch, s) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let finished = self.inner.clock.now();
        let writes = std::mem::take(&mut watch.writes);
        self.inner.recorder.lock().record(
            operation,
            reason,
            None,
            started,
            finished,
            &result,
            watch.looks,
            watch.waits,
            &writes,
        );
        result
    }

    /// Hands a reservation to a domain that now exists: the domain gets it as its initial
    /// reservation (and its reservation id), the ledger marks it in transfer, and the domain's
    /// maxmem is set to it. All store changes happen in one transaction, so the memory is never
    /// counted twice nor lost if the process dies. While the domain lives the reservation no
    /// longer counts against the host; when it dies the reservation is released.
    pub fn transfer_reservation_to_domain(
        &self,
        session: &str,
        reservation_id: &str,
        domid: DomId,
    ) -> Result<()> {
        reservations::check_session(session)?;
        let id = reservations::check_id(reservation_id)?;
        check_domid(domid)?;
        let layout = &self.inner.layout;
        self.with_host(|model| {
            let platform = model.platform().clone();
            match platform.hypervisor.domain(domid)? {
                Some(d) if !d.dying && !d.shutdown => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "domain {domid} does not exist (or is shutting down)"
                    )))
                }
            }
            self.fault_point("transfer:checked");
            let mut kib = 0;
            platform.store.transaction(&mut |t| {
                kib = reservations::transfer(t, layout, session, &id, domid)?.kib;
                Ok(())
            })?;
            self.fault_point("transfer:recorded");
            platform.hypervisor.set_maxmem_kib(domid, kib)?;
            if model.config().claim_transferred_reservations {
                claim_reservation(&platform, domid, kib)?;
            }
            debug!("transferred reservation {id} ({kib} KiB) to domain {domid}");
            self.fault_point("transfer:maxmem");
            Ok(())
        })
    }

    /// Deletes a reservation of this session, transferred or not.
    pub fn delete_reservation(&self, session: &str, reservation_id: &str) -> Result<()> {
        reservations::check_session(session)?;
        let id = reservations::check_id(reservation_id)?;
        let layout = &self.inner.layout;
        self.with_host(|model| {
            model
                .platform()
                .store
                .transaction(&mut |t| reservations::remove(t, layout, session, &id))?;
            self.note_outside_change();
            Ok(())
        })?;
        debug!("deleted reservation {id} of session {session}");
        self.fault_point("delete:done");
        Ok(())
    }

    /// The id of the reservation transferred to `domid`, or [`Error::NoReservation`].
    pub fn query_reservation_of_domain(&self, session: &str, domid: DomId) -> Result<String> {
        reservations::check_session(session)?;
        check_domid(domid)?;
        // One read of one key: no decision, so it does not even wait for the round in
        // progress.
        self.inner
            .store
            .read(&reservations::reservation_id_path(domid))?
            .ok_or(Error::NoReservation(domid))
    }

    /// Writes a guest's ballooning policy (its dynamic range, weight and, when it balloons,
    /// `control/feature-balloon`) for toolstacks that write none, such as xl; see
    /// [`crate::guest_policy`]. The next balance uses it.
    pub fn set_guest_policy(&self, domid: DomId, policy: &GuestPolicy) -> Result<()> {
        check_domid(domid)?;
        self.with_host(|model| {
            model
                .platform()
                .store
                .transaction(&mut |t| guest_policy::write(t, domid, policy))
        })?;
        info!(
            "domain {domid}: dynamic range {}..{} KiB, weight {}{}",
            policy.dynamic_min_kib,
            policy.dynamic_max_kib,
            policy.weight.unwrap_or(1.0),
            if policy.balloons() {
                ", ballooned"
            } else {
                ", fixed"
            }
        );
        Ok(())
    }

    /// Hands free memory above the slush back to the domains. Stops early, without error,
    /// when a reservation is pending: reservations go first.
    pub fn balance_memory(&self) -> Result<()> {
        self.balance_in_rounds(
            Operation::BalanceMemory,
            "hand free memory above the slush back to the domains".into(),
            None,
        )?;
        self.inner.balancing_passes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One check of the background balancer: balances when a pass would change a target and
    /// no reservation is pending. Returns whether it balanced.
    pub fn balance_if_unbalanced(&self) -> Result<bool> {
        self.balance_if_unbalanced_until(None)
    }

    /// [`balance_if_unbalanced`](Service::balance_if_unbalanced) for the background balancer,
    /// whose balance also stops at the first round after `stop` is set.
    fn balance_if_unbalanced_until(&self, stop: Option<&Mutex<bool>>) -> Result<bool> {
        let unbalanced = self.with_host(|model| {
            if !self.pending_entries()?.is_empty() {
                return Ok(false);
            }
            // Asked of the policy in force: the adaptive one does not write what a classic
            // squeezer would (deadbands, learnt limits, the dwell time).
            let now = model.platform().clock.now();
            if self.decide(now, |b| b.is_unbalanced(model))? {
                Ok(true)
            } else {
                // Keep watching: scores leak away and flags clear while the host is quiet.
                let now = model.platform().clock.now();
                let watched = self.decide(now, |b| b.watch(model));
                self.publish_judgements(model, watched)?;
                Ok(false)
            }
        })?;
        if unbalanced {
            self.balance_in_rounds(
                Operation::BackgroundBalance,
                "a periodic check found memory to hand back to the domains".into(),
                stop,
            )?;
            self.inner.balancing_passes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(unbalanced)
    }

    /// How domain 0's memory is managed, as xapi asks at start-up: its size when fixed, its
    /// range when ballooned (KiB; squeezed answers bytes).
    pub fn get_domain_zero_policy(&self) -> Result<DomainZeroAnswer> {
        let model = self.inner.model.lock();
        domain_zero::answer(&model, self.inner.config.domain_zero)
    }

    /// The memory the host keeps for Xen (the slush), in KiB.
    pub fn get_host_reserved_memory(&self) -> Kib {
        self.inner.config.host.slush_kib
    }

    /// Host free memory at boot, in KiB (squeezed reports bytes: multiply by 1024), as recorded
    /// by [`record_boot_time_host_free_memory`](Service::record_boot_time_host_free_memory) when
    /// the first service of this boot was opened (now, if that failed).
    pub fn get_host_initial_free_memory(&self) -> Result<Kib> {
        let path = &self.inner.config.boot_time_record_path;
        match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<Kib>().map_err(|_| {
                Error::Backend(format!("{} holds {s:?}, not a KiB amount", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.record_boot_time_host_free_memory()
            }
            Err(e) => Err(Error::Backend(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Records host free memory at boot (free + to scrub + what domain 0 holds, which squeezed
    /// takes as total minus Xen's own use), once: when the record exists it is returned as is.
    /// The value is sampled until `boot_time_samples` consecutive samples agree within 1 MiB,
    /// all taken while the ledger (reservations and pending entries) stays as it was at the
    /// first of them.
    ///
    /// The host lock is held for each sample only, never across the waits between them, so
    /// other callers reserve and delete meanwhile; a change to the ledger restarts the
    /// sampling, so the samples a record is made from all saw one ledger, as when the lock was
    /// held throughout. The last sample and the write share one lock hold. A reservation
    /// changes only the ledger, not the figures sampled; what it changes in Xen before the
    /// record is made (a guest ballooned for it, its domain built) is in the record, where
    /// before the reservation waited. After [`BOOT_TIME_ATTEMPTS`] - 1 restarts the last
    /// attempt holds the lock through all its samples, as squeezed does, so a record is always
    /// made.
    pub fn record_boot_time_host_free_memory(&self) -> Result<Kib> {
        for _ in 1..BOOT_TIME_ATTEMPTS {
            match self.boot_time_attempt()? {
                Some(kib) => return Ok(kib),
                None => {
                    debug!("the ledger changed while host free memory at boot was sampled: again")
                }
            }
        }
        warn!(
            "the ledger changed during each of {} attempts to record host free memory at boot: \
             sampling with the host lock held",
            BOOT_TIME_ATTEMPTS - 1
        );
        let cfg = &self.inner.config;
        self.with_host(|model| {
            if let Some(v) = self.boot_time_record() {
                return Ok(v);
            }
            let platform = model.platform().clone();
            let mut run = BootTimeRun::new(boot_time_sample(&platform)?);
            while run.agreeing < cfg.boot_time_samples {
                platform.clock.sleep(cfg.boot_time_interval_s);
                run.add(boot_time_sample(&platform)?);
            }
            self.write_boot_time_record(run.last)
        })
    }

    /// One run of boot-time samples, each under the host lock for the sample only: the value
    /// recorded (by this run or by another caller), or None when the ledger changed during the
    /// run.
    fn boot_time_attempt(&self) -> Result<Option<Kib>> {
        let cfg = &self.inner.config;
        let mut fingerprint = None;
        let mut run: Option<BootTimeRun> = None;
        loop {
            if run.is_some() {
                self.inner.clock.sleep(cfg.boot_time_interval_s);
            }
            let step = self.with_host(|model| {
                if let Some(v) = self.boot_time_record() {
                    return Ok(BootTimeStep::Recorded(v));
                }
                let now = self.ledger_fingerprint()?;
                if *fingerprint.get_or_insert_with(|| now.clone()) != now {
                    return Ok(BootTimeStep::LedgerChanged);
                }
                let sample = boot_time_sample(model.platform())?;
                let run = run.get_or_insert(BootTimeRun {
                    last: sample,
                    agreeing: 0,
                });
                run.add(sample);
                if run.agreeing >= cfg.boot_time_samples {
                    // The last sample and the write in one hold: the ledger checked above is
                    // the one every sample of the run saw.
                    self.write_boot_time_record(run.last)
                        .map(BootTimeStep::Recorded)
                } else {
                    Ok(BootTimeStep::Sampled)
                }
            })?;
            match step {
                BootTimeStep::Sampled => {}
                BootTimeStep::LedgerChanged => return Ok(None),
                BootTimeStep::Recorded(v) => return Ok(Some(v)),
            }
        }
    }

    /// The boot-time record, if one was written (by any process of this boot).
    fn boot_time_record(&self) -> Option<Kib> {
        let path = &self.inner.config.boot_time_record_path;
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<Kib>().ok())
    }

    /// Writes the boot-time record (under the host lock).
    fn write_boot_time_record(&self, kib: Kib) -> Result<Kib> {
        let path = &self.inner.config.boot_time_record_path;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        lockfile::write_atomically(path, kib.to_string().as_bytes())?;
        info!("host free memory at boot: {kib} KiB");
        Ok(kib)
    }

    /// What the ledger holds (every reservation, its size and transfer, the unreadable
    /// entries and the pending ids), as a value that changes with any of it. Read under the
    /// host lock.
    fn ledger_fingerprint(&self) -> Result<String> {
        let layout = &self.inner.layout;
        let mut out = String::new();
        self.inner.store.transaction(&mut |t| {
            use std::fmt::Write;
            out.clear();
            let (mut held, mut invalid) = reservations::list(t, layout)?;
            held.sort_by(|a, b| (&a.session, &a.id).cmp(&(&b.session, &b.id)));
            invalid.sort_by(|a, b| a.path.cmp(&b.path));
            for r in &held {
                let _ = write!(out, "{}/{}={}@{:?};", r.session, r.id, r.kib, r.in_transfer);
            }
            for e in &invalid {
                let _ = write!(out, "!{};", e.path);
            }
            let mut ids = t.directory(&layout.pending_dir())?;
            ids.sort();
            for id in &ids {
                let _ = write!(out, "?{id};");
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// A fresh look at the host, under the host lock: what the squeezer would see.
    pub fn host_view(&self) -> Result<HostView> {
        self.with_host(|model| model.view())
    }

    /// The diagnostics document (see [`crate::diagnostics`] and `docs/diagnostics.md`): host
    /// free memory and slush, the ledger by session, the reservations waiting for memory (their
    /// pending entries, as they are: a look drops nothing), every domain's range, target, actual,
    /// offset and (under the adaptive policy) measured rate and cooperation, the last decision
    /// and this service's counters. Read under the host lock, so it is one consistent look.
    pub fn diagnostics(&self) -> Result<Diagnostics> {
        let (view, learnt, store_requests, waiting) = self.with_host(|model| {
            let view = model.view()?;
            let mut waiting = Vec::new();
            let layout = &self.inner.layout;
            model.platform().store.transaction(&mut |t| {
                waiting = pending::peek(t, layout)?;
                Ok(())
            })?;
            let store_requests = model.platform().store_requests();
            let learner = self.inner.learner.lock();
            let learnt: Vec<_> = view
                .domains
                .iter()
                .map(|d| {
                    let b = learner.as_ref()?;
                    let c = b.cooperation(d.domid)?;
                    Some((c, b.track(d.domid).cloned()))
                })
                .collect();
            Ok((view, learnt, store_requests, waiting))
        })?;
        let cfg = &self.inner.config;
        let recorder = self.inner.recorder.lock();
        let mut sessions: Vec<diagnostics::SessionReservations> = Vec::new();
        for r in &view.reservations {
            let entry = diagnostics::ReservationEntry {
                id: r.id.clone(),
                kib: r.kib,
                domid: r.in_transfer,
            };
            match sessions.iter_mut().find(|s| s.session == r.session) {
                Some(s) => {
                    s.total_kib = s.total_kib.saturating_add(r.kib);
                    s.reservations.push(entry);
                }
                None => sessions.push(diagnostics::SessionReservations {
                    session: r.session.clone(),
                    total_kib: r.kib,
                    reservations: vec![entry],
                }),
            }
        }
        let domains = view
            .domains
            .iter()
            .zip(learnt)
            .map(|(d, learnt)| {
                let m = d.domain.as_ref();
                let (cooperation, rate) = match learnt {
                    Some((c, track)) => (
                        Some(diagnostics::CooperationState {
                            score_s: c.score_s,
                            state: if c.uncooperative {
                                diagnostics::CooperationFlag::Uncooperative
                            } else {
                                diagnostics::CooperationFlag::Cooperative
                            },
                            concern: c.concern,
                            floor_kib: track.as_ref().and_then(|t| t.floor()).map(|l| l.at_kib),
                            ceiling_kib: track.as_ref().and_then(|t| t.ceiling()).map(|l| l.at_kib),
                        }),
                        track.map(|t| diagnostics::Rate {
                            down_kib_per_s: t.rate_down(),
                            up_kib_per_s: t.rate_up(),
                        }),
                    ),
                    None => (None, None),
                };
                diagnostics::DomainDiagnostics {
                    domid: d.domid,
                    domain_type: d.domain_type,
                    booted: d.booted,
                    can_balloon: d.can_balloon,
                    skipped: d.skipped.clone(),
                    dynamic_min_kib: m.map(|m| m.dynamic_min_kib),
                    target_kib: m.map(|m| m.target_kib),
                    actual_kib: m.map(|m| m.memory_actual_kib),
                    dynamic_max_kib: m.map(|m| m.dynamic_max_kib),
                    maxmem_kib: m.map(|m| m.memory_max_kib),
                    inaccuracy_kib: m.map(|m| m.inaccuracy_kib),
                    weight: m.map(|m| m.weight.get()),
                    weight_error: d.weight_error.clone(),
                    offset_kib: d.offset_kib,
                    initial_reservation_kib: d.initial_reservation_kib,
                    unallocated_reservation_kib: d.unallocated_reservation_kib,
                    shared_kib: d.shared_kib,
                    uncooperative_flag: d.uncooperative,
                    drift_suspect: d.drift_suspect,
                    rate,
                    cooperation,
                    last_target_change: recorder.last_change.get(&d.domid).cloned(),
                }
            })
            .collect();
        Ok(Diagnostics {
            schema_version: diagnostics::SCHEMA_VERSION,
            time_s: view.time,
            policy: cfg.policy.name().to_string(),
            host: diagnostics::HostMemory {
                total_kib: view.total_kib,
                free_kib: view.free_kib,
                slush_kib: cfg.host.slush_kib,
                xen_free_kib: view.xen_free_kib,
                scrub_kib: view.scrub_kib,
                outstanding_claims_kib: view.outstanding_kib,
                shared_kib: view.shared_kib,
                reserved_kib: view.reserved_kib,
                unallocated_initial_kib: view.unallocated_initial_kib,
                dying_kib: view.dying_kib,
            },
            sessions,
            pending: waiting
                .into_iter()
                .map(|e| diagnostics::PendingReservation {
                    waited_s: (view.time - e.since_s).max(0.0),
                    owner_alive: e.owner.is_alive(),
                    owner_pid: e.owner.pid,
                    id: e.id,
                    session: e.session,
                    min_kib: e.min_kib,
                    max_kib: e.max_kib,
                    need_kib: e.need_kib,
                    order: e.order,
                    since_s: e.since_s,
                })
                .collect(),
            invalid_ledger_entries: view
                .invalid_entries
                .iter()
                .map(|e| diagnostics::InvalidLedgerEntry {
                    path: e.path.clone(),
                    why: e.why.clone(),
                })
                .collect(),
            domains,
            last_decision: recorder.last_decision.clone(),
            counters: diagnostics::Counters {
                store_requests,
                ..recorder.counters
            },
            offset_drifts: diagnostics::OffsetDrifts {
                total: view.offset_drifts_total,
                recent: view
                    .recent_offset_drifts
                    .iter()
                    .map(|o| diagnostics::OffsetDriftEntry {
                        domid: o.domid,
                        time_s: o.time,
                        old_offset_kib: o.old_offset_kib,
                        new_offset_kib: o.new_offset_kib,
                    })
                    .collect(),
            },
            balancer: diagnostics::BackgroundBalancer {
                running: self.balancer_running(),
                interval_s: cfg.balance_interval_s,
                passes: self.inner.balancing_passes.load(Ordering::Relaxed),
            },
            settings: diagnostics::Settings {
                slush_kib: cfg.host.slush_kib,
                free_memory_tolerance_kib: cfg.host.free_memory_tolerance_kib,
                manage_domain_zero: cfg.host.manage_domain_zero,
                uncooperative_after_s: cfg.host.uncooperative_after_s,
                offset_drift: cfg.host.offset_drift,
                drift_window_looks: cfg.host.drift_window_looks,
                drift_window_s: cfg.host.drift_window_s,
                claim_transferred_reservations: cfg.host.claim_transferred_reservations,
                lock_path: cfg.lock_path.display().to_string(),
                state_dir: self.inner.layout.state_dir().to_string(),
                dying_wait_s: cfg.dying_wait_s,
                scrub_wait_s: cfg.host.scrub_wait_s,
            },
        })
    }

    /// [`diagnostics`](Service::diagnostics) as pretty-printed JSON.
    pub fn get_diagnostics(&self) -> Result<String> {
        serde_json::to_string_pretty(&self.diagnostics()?)
            .map_err(|e| Error::Backend(format!("cannot encode diagnostics: {e}")))
    }

    /// Whether the background balancer runs.
    pub fn balancer_running(&self) -> bool {
        self.inner.balancer.lock().is_some()
    }

    /// Starts the background balancer: every `balance_interval_s` seconds (real time) it
    /// balances the host if a pass would change a target. Starting it twice is harmless.
    pub fn start_balancer(&self) -> Result<()> {
        let mut slot = self.inner.balancer.lock();
        if slot.is_some() {
            return Ok(());
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let interval = Duration::from_secs_f64(self.inner.config.balance_interval_s);
        // The thread holds a weak reference so a forgotten service is not kept alive by it.
        let weak = Arc::downgrade(&self.inner);
        let me = Arc::as_ptr(&self.inner) as usize;
        let stop2 = stop.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("squeeze-balancer".into())
            .spawn(move || {
                BALANCER_OF.with(|b| b.set(me));
                balancer_loop(&stop2, interval, &weak, &failed)
            })
            .map_err(|e| Error::Backend(format!("cannot start the balancer thread: {e}")))?;
        *slot = Some(Balancer { stop, thread });
        Ok(())
    }

    /// Asks the background balancer to stop after the pass it may be in, without waiting for
    /// it: for a caller that holds the host (a platform callback), which the balancer may be
    /// waiting for.
    pub fn request_balancer_stop(&self) {
        if let Some(b) = self.inner.balancer.lock().take() {
            let (m, c) = &*b.stop;
            *m.lock() = true;
            c.notify_all();
        }
    }

    /// Stops the background balancer and waits for its thread, including a pass in progress:
    /// once this returns, the balancer calls the platform no more. Stopping it when it does not
    /// run is harmless. Called from the balancer's own thread (a platform callback during a
    /// pass), it only asks the thread to stop after that pass: a thread cannot wait for itself.
    pub fn stop_balancer(&self) {
        let b = self.inner.balancer.lock().take();
        if let Some(b) = b {
            {
                let (m, c) = &*b.stop;
                *m.lock() = true;
                c.notify_all();
            }
            if !on_balancer_thread_of(Arc::as_ptr(&self.inner)) && b.thread.join().is_err() {
                warn!("the balancer thread panicked");
            }
        }
    }
}

thread_local! {
    // The service whose background balancer runs on this thread (the address of its shared
    // state), or 0. Lets a stop tell its own balancer's thread apart without asking for the
    // thread's handle, which allocates one for a C program's main thread that is never freed.
    static BALANCER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether this thread is the background balancer of the service whose state is at `inner`.
fn on_balancer_thread_of(inner: *const Inner) -> bool {
    BALANCER_OF.with(|b| b.get()) == inner as usize
}

/// The background balancer's thread: a check every `interval` until stopped or the service
/// is gone.
fn balancer_loop(
    stop: &(Mutex<bool>, Condvar),
    interval: Duration,
    weak: &std::sync::Weak<Inner>,
    failed: &AtomicBool,
) {
    loop {
        {
            let (m, c) = stop;
            let mut stopped = m.lock();
            if !*stopped {
                c.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let service = Service { inner };
        match service.balance_if_unbalanced_until(Some(&stop.0)) {
            Ok(_) => failed.store(false, Ordering::Relaxed),
            // Log once per failure streak, not every interval.
            Err(e) if !failed.swap(true, Ordering::Relaxed) => {
                warn!("background balancing failed: {e}")
            }
            Err(_) => {}
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(b) = self.balancer.get_mut().take() {
            let (m, c) = &*b.stop;
            *m.lock() = true;
            c.notify_all();
            // The thread may be the one dropping us (it held the last reference); never join
            // oneself.
            if !on_balancer_thread_of(self) {
                let _ = b.thread.join();
            }
        }
    }
}
