//! A fake host for tests: a store with xenstore's semantics and a simulated hypervisor whose
//! guests run balloon drivers, shareable between processes.
//!
//! The whole host (store, domains, free pages, simulated time) is one state. It lives either in
//! memory (one process) or in a directory: a state file replaced atomically on every change and a
//! lock file taken with `flock` around every operation. Any number of processes can open the same
//! directory and see one host; a process killed at any moment leaves the state as it was before
//! or after its last operation, never in between.
//!
//! Guests behave like Xen guests: once built and unpaused they boot after a delay, advertise
//! their balloon driver (`control/feature-balloon`) and, from then on, move their allocation
//! toward `memory/target` + their memory offset at the pace of their
//! [`Behaviour`](crate::backend::sim::Behaviour). They never allocate beyond maxmem, and an
//! allocation beyond the host's free pages is refused and recorded as a violation.
//!
//! Time is simulated and shared: [`sleep`](crate::platform::Clock::sleep) on the fake's clock
//! advances it (and moves the guests) instead of sleeping, so a test that waits for ballooning
//! runs in milliseconds.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::backend::sim::{Behaviour, Motion};
use crate::error::{Error, Result};
use crate::lockfile;
use crate::model::{DomId, Kib};
use crate::platform::{
    pages, Clock, DomainInfo, Hypervisor, PhysInfo, Platform, Store, StoreOps, Watch,
    INTRODUCE_DOMAIN, RELEASE_DOMAIN,
};

/// How many store changes the fake remembers for watches.
const CHANGE_LOG_LEN: usize = 64;

/// The largest value the store accepts, as xenstored's default quota.
const MAX_VALUE_LEN: usize = 4096;

/// The longest path the store accepts (xenstore's limit).
const MAX_PATH_LEN: usize = 3072;

/// The latest simulated time, in seconds (some 30,000 years): beyond it a simulation has
/// surely gone wrong, and much further the clock would stop being able to count seconds.
pub const MAX_TIME_S: f64 = 1e12;

/// The shape of a fake host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FakeConfig {
    /// All memory of the host, in KiB.
    pub total_kib: Kib,
    /// Memory Xen itself keeps (heap, crash kernel), never free, in KiB.
    pub xen_kib: Kib,
    /// Memory domain 0 holds, in KiB (domain 0 has no balloon driver in the fake).
    pub dom0_kib: Kib,
    /// Seconds between unpausing a guest and its balloon driver starting.
    pub boot_delay_s: f64,
    /// When set, every change to the host is refereed: if what guests hold, plus the
    /// reservations in the ledger (at `/squeezed/state`) not backed by a live domain, plus what
    /// initial reservations of unbooted domains still owe, plus this slush, exceeds the host's
    /// memory, a violation is recorded.
    #[serde(default)]
    pub referee_slush_kib: Option<Kib>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            total_kib: 16 << 20,
            xen_kib: 256 << 10,
            dom0_kib: 1 << 20,
            boot_delay_s: 1.0,
            referee_slush_kib: None,
        }
    }
}

/// A guest to create.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuestSpec {
    /// A hardware-virtualised guest (has a shadow allocation and Xen's 1 MiB maxmem extra).
    pub hvm: bool,
    /// `memory/target` the toolstack writes at creation, in KiB.
    pub target_kib: Kib,
    /// `memory/dynamic-min`, in KiB.
    pub dynamic_min_kib: Kib,
    /// `memory/dynamic-max`, in KiB.
    pub dynamic_max_kib: Kib,
    /// Memory the guest holds beyond its target once settled (firmware, video RAM), in KiB.
    pub offset_kib: Kib,
    /// Shadow allocation, in MiB (HVM guests only).
    pub shadow_mib: u64,
    /// The guest runs an agent that writes `data/updated` when it starts.
    pub agent: bool,
    /// How the balloon driver behaves.
    pub behaviour: Behaviour,
}

impl GuestSpec {
    /// A PV guest with an ideal balloon driver (100 MiB/s) and a fixed size.
    pub fn fixed(kib: Kib) -> Self {
        GuestSpec {
            hvm: false,
            target_kib: kib,
            dynamic_min_kib: kib,
            dynamic_max_kib: kib,
            offset_kib: 0,
            shadow_mib: 0,
            agent: false,
            behaviour: Behaviour::Ideal {
                rate_kib_per_s: 100 << 10,
            },
        }
    }

    /// A PV guest with an ideal balloon driver (100 MiB/s) that may move over `min..=max`,
    /// starting at `max`.
    pub fn ballooning(min_kib: Kib, max_kib: Kib) -> Self {
        GuestSpec {
            target_kib: max_kib,
            dynamic_min_kib: min_kib,
            dynamic_max_kib: max_kib,
            ..GuestSpec::fixed(max_kib)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Guest {
    info: DomainInfo,
    spec: GuestSpec,
    shadow_mib: u64,
    boot_at: Option<f64>,
    booted: bool,
    last_update: f64,
    last_target: Option<Kib>,
    last_target_change: f64,
    /// While dying: the pages it gives back per second (see
    /// [`FakeHost::destroy_domain_over`]).
    #[serde(default)]
    releasing_pages_per_s: Option<f64>,
}

/// A safety rule something broke on the fake host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FakeViolation {
    /// Simulated time.
    pub time: f64,
    /// The domain involved.
    pub domid: DomId,
    /// What happened.
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    config: FakeConfig,
    time: f64,
    free_pages: u64,
    next_domid: DomId,
    domains: BTreeMap<DomId, Guest>,
    store: BTreeMap<String, String>,
    change_seq: u64,
    changes: VecDeque<(u64, String)>,
    violations: Vec<FakeViolation>,
    setmaxmem_calls: u64,
    /// Pages Xen's scrubber has yet to clear: neither free nor anyone's (see
    /// [`FakeHost::scrub_over`]).
    #[serde(default)]
    scrub_pages: u64,
    /// Pages the scrubber returns to the free pool per second (0: it is stuck).
    #[serde(default)]
    scrub_pages_per_s: f64,
    /// When the scrubber last returned pages.
    #[serde(default)]
    scrub_last_update: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
    WriteIfStoreChanged,
}

impl From<bool> for Mode {
    fn from(write: bool) -> Self {
        if write {
            Mode::Write
        } else {
            Mode::Read
        }
    }
}

impl Mode {
    fn must_save(self, seq_before: u64, seq_after: u64) -> bool {
        match self {
            Mode::Read => false,
            Mode::Write => true,
            Mode::WriteIfStoreChanged => seq_before != seq_after,
        }
    }
}

enum Backing {
    Memory(Mutex<State>),
    Dir(PathBuf),
}

/// A fake host; cheap to clone, every clone (and every process opening the same directory)
/// sees the same host.
#[derive(Clone)]
pub struct FakeHost {
    backing: Arc<Backing>,
    /// Store requests this process sent, counted as xenstored would count them.
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.backing {
            Backing::Memory(_) => f.write_str("FakeHost(in memory)"),
            Backing::Dir(d) => write!(f, "FakeHost({})", d.display()),
        }
    }
}

/// One domain of the fake host, as a test sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeDomain {
    /// What the hypervisor reports.
    pub info: DomainInfo,
    /// How it was created.
    pub spec: GuestSpec,
    /// Whether the guest has booted (advertised its balloon driver or agent).
    pub booted: bool,
}

impl FakeDomain {
    /// The domain's allocation, in KiB.
    pub fn tot_kib(&self) -> Kib {
        self.info.tot_pages as Kib * pages::PAGE_KIB
    }
    /// The domain's maxmem as Xen holds it, in KiB.
    pub fn max_kib(&self) -> Kib {
        self.info.max_pages as Kib * pages::PAGE_KIB
    }
}

/// A consistent picture of the whole fake host, taken in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSnapshot {
    /// Simulated time.
    pub time: f64,
    /// All memory of the host, in KiB.
    pub total_kib: Kib,
    /// Memory Xen keeps for itself, in KiB.
    pub xen_kib: Kib,
    /// Free memory, in KiB.
    pub free_kib: Kib,
    /// Memory Xen's scrubber has yet to return to the free pool, in KiB.
    pub scrub_kib: Kib,
    /// Every domain, domain 0 included.
    pub domains: Vec<FakeDomain>,
    /// Every store node and its value.
    pub store: BTreeMap<String, String>,
    /// Violations recorded so far.
    pub violations: Vec<FakeViolation>,
    /// How often maxmem was set.
    pub setmaxmem_calls: u64,
}

impl FakeSnapshot {
    /// The value of a store node.
    pub fn read(&self, path: &str) -> Option<&str> {
        self.store.get(path).map(String::as_str)
    }

    /// The names of the children of a store node.
    pub fn directory(&self, path: &str) -> Vec<String> {
        children(&self.store, path)
    }
}

impl FakeHost {
    /// A fake host living in this process only.
    pub fn in_memory(config: FakeConfig) -> Result<Self> {
        Ok(FakeHost {
            backing: Arc::new(Backing::Memory(Mutex::new(State::new(config)?))),
            requests: Arc::default(),
        })
    }

    /// Creates (or resets) a fake host in `dir`, which other processes can then [`open`].
    ///
    /// [`open`]: FakeHost::open
    pub fn create(dir: &Path, config: FakeConfig) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let host = FakeHost {
            backing: Arc::new(Backing::Dir(dir.to_path_buf())),
            requests: Arc::default(),
        };
        let state = State::new(config)?;
        let _lock = lockfile::lock(&dir.join("lock"), false)?;
        save(dir, &state)?;
        Ok(host)
    }

    /// Opens the fake host another process created in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("state.json").exists() {
            return Err(Error::Backend(format!("no fake host in {}", dir.display())));
        }
        Ok(FakeHost {
            backing: Arc::new(Backing::Dir(dir.to_path_buf())),
            requests: Arc::default(),
        })
    }

    /// The platform over this host: its hypervisor, its store and its (simulated) clock.
    pub fn platform(&self) -> Platform {
        Platform {
            hypervisor: Arc::new(self.clone()),
            store: Arc::new(self.clone()),
            clock: Arc::new(self.clone()),
        }
    }

    fn with<T>(&self, mode: impl Into<Mode>, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mode = mode.into();
        match &*self.backing {
            Backing::Memory(m) => {
                let mut guard = m.lock();
                // Work on a copy so an error leaves the state untouched, as on disk.
                let mut state = guard.clone();
                let before = state.change_seq;
                let out = f(&mut state)?;
                if mode.must_save(before, state.change_seq) {
                    state.referee();
                    *guard = state;
                }
                Ok(out)
            }
            Backing::Dir(dir) => {
                let _lock = lockfile::lock(&dir.join("lock"), mode == Mode::Read)?;
                let mut state = load(dir)?;
                let before = state.change_seq;
                let out = f(&mut state)?;
                if mode.must_save(before, state.change_seq) {
                    state.referee();
                    save(dir, &state)?;
                }
                Ok(out)
            }
        }
    }

    /// Creates a paused domain with no memory yet, and writes what a toolstack writes for it:
    /// `domain-type` and `memory/{target,dynamic-min,dynamic-max}`. Its maxmem starts at
    /// dynamic-max plus its offset (plus 1 MiB for HVM).
    pub fn create_domain(&self, spec: GuestSpec) -> Result<DomId> {
        self.create_domain_as(None, spec)
    }

    /// [`create_domain`](FakeHost::create_domain) with the domid `domid` when given (as a
    /// toolstack may pick one, and as Xen reuses them): refused when a domain has it.
    pub fn create_domain_as(&self, domid: Option<DomId>, spec: GuestSpec) -> Result<DomId> {
        for (name, v) in [
            ("target", spec.target_kib),
            ("dynamic-min", spec.dynamic_min_kib),
            ("dynamic-max", spec.dynamic_max_kib),
            ("offset", spec.offset_kib),
        ] {
            crate::model::kib::check_size(name, v)?;
        }
        if spec.shadow_mib > 1 << 30 {
            return Err(Error::InvalidMemoryValue(format!(
                "a shadow allocation of {} MiB is beyond any real host",
                spec.shadow_mib
            )));
        }
        self.with(true, |s| {
            let domid = match domid {
                Some(d) if d == 0 || s.domains.contains_key(&d) => {
                    return Err(Error::InvalidArgument(format!("domid {d} is taken")));
                }
                Some(d) => d,
                None => s.next_domid,
            };
            s.next_domid = s.next_domid.max(domid.saturating_add(1));
            let extra = if spec.hvm { 1024 } else { 0 };
            let info = DomainInfo {
                domid,
                tot_pages: 0,
                max_pages: pages::from_kib(spec.dynamic_max_kib + spec.offset_kib + extra)?,
                paused: true,
                hvm: spec.hvm,
                ..DomainInfo::default()
            };
            let now = s.time;
            s.domains.insert(
                domid,
                Guest {
                    info,
                    spec,
                    shadow_mib: if spec.hvm { spec.shadow_mib } else { 0 },
                    boot_at: None,
                    booted: false,
                    last_update: now,
                    last_target: None,
                    last_target_change: now,
                    releasing_pages_per_s: None,
                },
            );
            let dir = format!("/local/domain/{domid}");
            s.write(
                &format!("{dir}/domain-type"),
                if spec.hvm { "hvm" } else { "pv" },
            )?;
            s.write(
                &format!("{dir}/memory/target"),
                &spec.target_kib.to_string(),
            )?;
            s.write(
                &format!("{dir}/memory/dynamic-min"),
                &spec.dynamic_min_kib.to_string(),
            )?;
            s.write(
                &format!("{dir}/memory/dynamic-max"),
                &spec.dynamic_max_kib.to_string(),
            )?;
            // The toolstack introduces the new domain to xenstored.
            s.changed(INTRODUCE_DOMAIN);
            Ok(domid)
        })
    }

    /// Builds a domain: allocates `kib` KiB (plus its shadow allocation) to it, as the domain
    /// builder does. Fails like Xen when that is beyond the domain's maxmem or the host's free
    /// memory.
    pub fn build_domain(&self, domid: DomId, kib: Kib) -> Result<()> {
        crate::model::kib::check_size("build size", kib)?;
        self.with(true, |s| {
            let free = s.free_pages;
            let g = s.guest_mut(domid)?;
            let want = pages::from_kib(kib)?;
            let shadow = pages::from_kib(g.shadow_mib as Kib * 1024)?;
            if g.info.tot_pages + want > g.info.max_pages {
                return Err(Error::Backend(format!(
                    "domain {domid}: building {kib} KiB exceeds its maxmem of {} KiB",
                    g.info.max_pages * 4
                )));
            }
            if want + shadow > free {
                return Err(Error::Backend(format!(
                    "domain {domid}: out of memory building {kib} KiB ({} KiB free)",
                    free * 4
                )));
            }
            g.info.tot_pages += want;
            // As Xen: an allocation uses up the domain's own claim first.
            g.info.outstanding_pages = g.info.outstanding_pages.saturating_sub(want);
            s.free_pages -= want + shadow;
            Ok(())
        })
    }

    /// Changes a guest's hidden offset by `delta_kib` mid-life, and its allocation with it at
    /// once: memory populated for the domain (or released) outside its balloon driver, as a
    /// device model does for video RAM or option ROMs, raising maxmem to make room. The guest
    /// considers itself at its target throughout; only its offset moved.
    pub fn inject_offset_drift(&self, domid: DomId, delta_kib: Kib) -> Result<()> {
        if delta_kib % pages::PAGE_KIB != 0 || delta_kib.abs() > crate::model::MAX_KIB {
            return Err(Error::InvalidMemoryValue(format!(
                "an offset drift of {delta_kib} KiB is not a whole number of pages"
            )));
        }
        self.with(true, |s| {
            let free = s.free_pages;
            let g = s.guest_mut(domid)?;
            let delta_pages = delta_kib / pages::PAGE_KIB;
            let tot = g.info.tot_pages as i64 + delta_pages;
            if tot < 0 || delta_pages > free as i64 {
                return Err(Error::Backend(format!(
                    "domain {domid}: cannot drift by {delta_kib} KiB"
                )));
            }
            g.spec.offset_kib += delta_kib;
            g.info.tot_pages = tot as u64;
            g.info.max_pages = g.info.max_pages.max(tot as u64);
            s.free_pages = (free as i64 - delta_pages) as u64;
            Ok(())
        })
    }

    /// Changes how a guest's balloon driver behaves from now on (a driver that recovers, or
    /// one that starts misbehaving). A driver cannot come or go this way:
    /// [`Behaviour::NoBalloonDriver`] is refused.
    pub fn set_behaviour(&self, domid: DomId, behaviour: Behaviour) -> Result<()> {
        if behaviour == Behaviour::NoBalloonDriver {
            return Err(Error::InvalidArgument(
                "a balloon driver cannot be removed from a running guest".into(),
            ));
        }
        self.with(true, |s| {
            let now = s.time;
            let g = s.guest_mut(domid)?;
            if g.spec.behaviour == Behaviour::NoBalloonDriver {
                return Err(Error::InvalidArgument(format!(
                    "domain {domid} has no balloon driver"
                )));
            }
            g.spec.behaviour = behaviour;
            g.last_update = now;
            Ok(())
        })
    }

    /// Memory sharing found `count` of a domain's pages identical to pages elsewhere: they
    /// leave its allocation (`tot_pages`), count in its `shared_pages`, and their frames return
    /// to the host's free memory, on loan: [`unshare_pages`](FakeHost::unshare_pages) takes
    /// them back.
    pub fn share_pages(&self, domid: DomId, count: u64) -> Result<()> {
        self.with(true, |s| {
            let g = s.guest_mut(domid)?;
            if count > g.info.tot_pages {
                return Err(Error::Backend(format!(
                    "domain {domid} has only {} pages to share",
                    g.info.tot_pages
                )));
            }
            g.info.tot_pages -= count;
            g.info.shared_pages += count;
            s.free_pages += count;
            Ok(())
        })
    }

    /// A domain writes to `count` of its shared pages: each gets a private copy again, taken
    /// from free memory. Breaking a share beyond free memory is recorded as a violation (Xen
    /// would have to pause the domain).
    pub fn unshare_pages(&self, domid: DomId, count: u64) -> Result<()> {
        self.with(true, |s| {
            let free = s.free_pages;
            let g = s.guest_mut(domid)?;
            if count > g.info.shared_pages {
                return Err(Error::Backend(format!(
                    "domain {domid} has only {} shared pages",
                    g.info.shared_pages
                )));
            }
            let got = count.min(free);
            g.info.shared_pages -= count;
            g.info.tot_pages += got;
            s.free_pages -= got;
            if got < count {
                s.violation(
                    domid,
                    format!(
                        "breaking {count} shared pages with only {free} pages free: memory lent by \
                         sharing was handed out twice"
                    ),
                );
            }
            Ok(())
        })
    }

    /// Unpauses a domain: it boots after the configured delay.
    pub fn unpause(&self, domid: DomId) -> Result<()> {
        self.with(true, |s| {
            let at = s.time + s.config.boot_delay_s;
            let g = s.guest_mut(domid)?;
            g.info.paused = false;
            if g.boot_at.is_none() {
                g.boot_at = Some(at);
            }
            Ok(())
        })
    }

    /// Marks a domain as shut down (it stays until destroyed).
    pub fn shutdown_domain(&self, domid: DomId) -> Result<()> {
        self.with(true, |s| {
            s.guest_mut(domid)?.info.shutdown = true;
            s.changed(RELEASE_DOMAIN);
            Ok(())
        })
    }

    /// Destroys a domain: its memory returns to the host and its store directory goes.
    pub fn destroy_domain(&self, domid: DomId) -> Result<()> {
        if domid == 0 {
            return Err(Error::InvalidArgument(
                "domain 0 cannot be destroyed".into(),
            ));
        }
        self.with(true, |s| {
            let g = s.domains.remove(&domid).ok_or_else(|| no_domain(domid))?;
            s.free_pages += g.info.tot_pages + pages::from_kib(g.shadow_mib as Kib * 1024)?;
            s.rm(&format!("/local/domain/{domid}"))?;
            s.changed(RELEASE_DOMAIN);
            Ok(())
        })
    }

    /// Destroys a domain as Xen does under load: it is dying at once (its store directory
    /// goes, `@releaseDomain` fires) but gives its pages back to the host evenly over
    /// `seconds` of simulated time, as the hypervisor relinquishes them, and disappears once
    /// it holds none. `seconds` of 0 is [`destroy_domain`](FakeHost::destroy_domain);
    /// infinite, a domain stuck dying (some backend still maps its pages).
    pub fn destroy_domain_over(&self, domid: DomId, seconds: f64) -> Result<()> {
        if seconds.is_nan() || seconds < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "cannot take {seconds} s to destroy a domain"
            )));
        }
        if seconds == 0.0 {
            return self.destroy_domain(domid);
        }
        if domid == 0 {
            return Err(Error::InvalidArgument(
                "domain 0 cannot be destroyed".into(),
            ));
        }
        self.with(true, |s| {
            let now = s.time;
            let g = s.guest_mut(domid)?;
            if g.info.dying {
                return Err(Error::InvalidArgument(format!(
                    "domain {domid} is already dying"
                )));
            }
            g.info.dying = true;
            g.last_update = now;
            g.releasing_pages_per_s = Some(g.info.tot_pages as f64 / seconds);
            s.rm(&format!("/local/domain/{domid}"))?;
            s.changed(RELEASE_DOMAIN);
            Ok(())
        })
    }

    /// Hands `kib` of free memory (in whole pages, rounded up) to Xen's scrubber, as Xen does
    /// with the pages of a destroyed domain: the hypervisor reports them as pages to scrub,
    /// nothing can allocate them, and the scrubber returns them to the free pool evenly over
    /// `seconds` of simulated time. Pages already waiting are returned over the same time.
    /// `seconds` infinite is a scrubber that never finishes; 0 returns them at once.
    pub fn scrub_over(&self, kib: Kib, seconds: f64) -> Result<()> {
        crate::model::kib::check_size("memory to scrub", kib)?;
        if seconds.is_nan() || seconds < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "cannot take {seconds} s to scrub memory"
            )));
        }
        let count = pages::from_kib(kib)?;
        self.with(true, |s| {
            if count > s.free_pages {
                return Err(Error::InvalidArgument(format!(
                    "cannot scrub {kib} KiB: only {} KiB free",
                    s.free_pages as Kib * pages::PAGE_KIB
                )));
            }
            if seconds == 0.0 {
                return Ok(());
            }
            s.free_pages -= count;
            s.scrub_pages += count;
            s.scrub_last_update = s.time;
            s.scrub_pages_per_s = s.scrub_pages as f64 / seconds;
            Ok(())
        })
    }

    /// Lets `seconds` of simulated time pass, moving every guest.
    /// Refused (the clock unchanged) when `seconds` is negative or not finite, or would take the
    /// clock past [`MAX_TIME_S`].
    pub fn advance(&self, seconds: f64) -> Result<()> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "cannot advance by {seconds} s"
            )));
        }
        self.with(true, |s| {
            let time = s.time + seconds;
            if time > MAX_TIME_S {
                return Err(Error::InvalidArgument(format!(
                    "cannot advance by {seconds} s: the clock would pass {MAX_TIME_S} s"
                )));
            }
            s.time = time;
            s.update_guests()
        })
    }

    /// One domain, or `None`.
    pub fn domain(&self, domid: DomId) -> Result<Option<FakeDomain>> {
        self.with(false, |s| Ok(s.domains.get(&domid).map(Guest::view)))
    }

    /// Everything at once, consistently.
    pub fn snapshot(&self) -> Result<FakeSnapshot> {
        self.with(false, |s| {
            Ok(FakeSnapshot {
                time: s.time,
                total_kib: s.config.total_kib,
                xen_kib: s.config.xen_kib,
                free_kib: s.free_pages as Kib * pages::PAGE_KIB,
                scrub_kib: s.scrub_pages as Kib * pages::PAGE_KIB,
                domains: s.domains.values().map(Guest::view).collect(),
                store: s.store.clone(),
                violations: s.violations.clone(),
                setmaxmem_calls: s.setmaxmem_calls,
            })
        })
    }
}

impl Guest {
    fn view(&self) -> FakeDomain {
        FakeDomain {
            info: self.info,
            spec: self.spec,
            booted: self.booted,
        }
    }
}

fn no_domain(domid: DomId) -> Error {
    Error::Backend(format!("no such domain: {domid}"))
}

fn load(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::Backend(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Backend(format!("corrupt fake host state {}: {e}", path.display())))
}

/// Writes the state through a temporary copy renamed into place. Only ever called with the
/// host's lock held exclusively, so one fixed temporary name is enough: a writer killed before
/// its rename leaves that one file, which the next writer replaces. Temporary copies under any
/// other name are leftovers of writers killed before that was so, removed here.
fn save(dir: &Path, state: &State) -> Result<()> {
    let bytes = serde_json::to_vec(state)
        .map_err(|e| Error::Backend(format!("cannot encode fake host state: {e}")))?;
    let path = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::Backend(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::write(&tmp, &bytes).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename into place", &path, e))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("state.json.tmp.")
            {
                // Best effort: a leftover that cannot be removed harms nothing.
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// A path xenstored accepts: absolute, no empty element, no trailing `/`, within its length
/// limit, and only the characters it allows (`A-Z a-z 0-9 - _ @`, and `/` between elements).
fn check_path(path: &str) -> Result<()> {
    let ok = path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && (path == "/" || (!path.ends_with('/') && !path.contains("//")))
        && path
            .bytes()
            .all(|b| b == b'/' || crate::reservations::is_path_element_byte(b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid store path {path:?}"
        )))
    }
}

fn children(store: &BTreeMap<String, String>, path: &str) -> Vec<String> {
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    store
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| &k[prefix.len()..])
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .map(str::to_string)
        .collect()
}

impl State {
    fn new(config: FakeConfig) -> Result<Self> {
        for (name, v) in [
            ("total", config.total_kib),
            ("xen", config.xen_kib),
            ("dom0", config.dom0_kib),
        ] {
            crate::model::kib::check_size(name, v)?;
        }
        if config.xen_kib + config.dom0_kib > config.total_kib {
            return Err(Error::InvalidMemoryValue(
                "Xen and domain 0 take more than the host has".into(),
            ));
        }
        if !config.boot_delay_s.is_finite() || config.boot_delay_s < 0.0 {
            return Err(Error::InvalidArgument("invalid boot delay".into()));
        }
        let dom0 = DomainInfo {
            domid: 0,
            tot_pages: pages::from_kib(config.dom0_kib)?,
            max_pages: pages::from_kib(config.dom0_kib)?,
            ..DomainInfo::default()
        };
        let mut domains = BTreeMap::new();
        domains.insert(
            0,
            Guest {
                info: dom0,
                spec: GuestSpec {
                    behaviour: Behaviour::NoBalloonDriver,
                    ..GuestSpec::fixed(config.dom0_kib)
                },
                shadow_mib: 0,
                boot_at: None,
                booted: true,
                last_update: 0.0,
                last_target: None,
                last_target_change: 0.0,
                releasing_pages_per_s: None,
            },
        );
        let mut s = State {
            config,
            time: 0.0,
            free_pages: pages::from_kib(config.total_kib - config.xen_kib - config.dom0_kib)?,
            next_domid: 1,
            domains,
            store: BTreeMap::new(),
            change_seq: 0,
            changes: VecDeque::new(),
            violations: Vec::new(),
            setmaxmem_calls: 0,
            scrub_pages: 0,
            scrub_pages_per_s: 0.0,
            scrub_last_update: 0.0,
        };
        s.store.insert("/".into(), String::new());
        s.write("/local/domain/0/domid", "0")?;
        Ok(s)
    }

    fn guest_mut(&mut self, domid: DomId) -> Result<&mut Guest> {
        self.domains.get_mut(&domid).ok_or_else(|| no_domain(domid))
    }

    fn changed(&mut self, path: &str) {
        self.change_seq += 1;
        self.changes.push_back((self.change_seq, path.to_string()));
        while self.changes.len() > CHANGE_LOG_LEN {
            self.changes.pop_front();
        }
    }

    /// Checks the books after a change (see [`FakeConfig::referee_slush_kib`]).
    fn referee(&mut self) {
        let Some(slush) = self.config.referee_slush_kib else {
            return;
        };
        let kib = |p: u64| p as Kib * pages::PAGE_KIB;
        let alive = |d: DomId| self.domains.get(&d).is_some_and(|g| !g.info.dying);
        let mut reserved: Kib = 0;
        for session in children(&self.store, "/squeezed/state") {
            let dir = format!("/squeezed/state/{session}");
            for id in children(&self.store, &dir) {
                let Some(v) = self
                    .store
                    .get(&format!("{dir}/{id}"))
                    .and_then(|v| v.parse::<Kib>().ok())
                else {
                    continue;
                };
                let backed = self
                    .store
                    .get(&format!("{dir}/{id}/in-transfer"))
                    .and_then(|d| d.parse::<DomId>().ok())
                    .is_some_and(alive);
                if !backed {
                    reserved += v;
                }
            }
        }
        let mut guests: Kib = 0;
        let mut owed: Kib = 0;
        let mut claimed: Kib = 0;
        for (domid, g) in &self.domains {
            let shadow = g.shadow_mib as Kib * 1024;
            // Shared pages are the guest's memory on loan from the free pool.
            guests += kib(g.info.tot_pages) + kib(g.info.shared_pages) + shadow;
            claimed += kib(g.info.outstanding_pages);
            let key = |k: &str| self.store.get(&format!("/local/domain/{domid}/{k}"));
            let booted = key("control/feature-balloon").is_some() || key("data/updated").is_some();
            if let (false, Some(ir)) = (
                booted,
                key("memory/initial-reservation").and_then(|v| v.parse::<Kib>().ok()),
            ) {
                owed +=
                    (ir - kib(g.info.tot_pages) - shadow - kib(g.info.outstanding_pages)).max(0);
            }
        }
        let host = self.config.total_kib - self.config.xen_kib;
        let over = guests + reserved + owed + claimed + slush - host;
        if over > 0 {
            self.violation(
                -1,
                format!(
                    "overcommitted by {over} KiB: guests {guests} + reserved {reserved} + owed \
                     {owed} + claimed {claimed} + slush {slush} > host {host} KiB"
                ),
            );
        }
    }

    fn violation(&mut self, domid: DomId, what: String) {
        self.violations.push(FakeViolation {
            time: self.time,
            domid,
            what,
        });
    }

    /// Returns the pages the scrubber has cleared since its last update to the free pool.
    fn update_scrubber(&mut self) {
        if self.scrub_pages == 0 {
            return;
        }
        // Whole pages, as many as the time since the last update allows.
        let due = ((self.time - self.scrub_last_update) * self.scrub_pages_per_s).floor();
        if due >= 1.0 {
            let back = if due >= self.scrub_pages as f64 {
                self.scrub_pages
            } else {
                due as u64
            };
            self.scrub_pages -= back;
            self.free_pages += back;
            self.scrub_last_update = self.time;
        }
    }

    /// Moves every booted guest toward its target, boots the guests whose time has come, and
    /// lets the scrubber work.
    fn update_guests(&mut self) -> Result<()> {
        self.update_scrubber();
        let now = self.time;
        let domids: Vec<DomId> = self.domains.keys().copied().collect();
        for domid in domids {
            let g = &self.domains[&domid];
            if let (true, Some(rate)) = (g.info.dying, g.releasing_pages_per_s) {
                // Whole pages, as many as the time since the last update allows.
                let due = ((now - g.last_update) * rate).floor();
                if due >= 1.0 || g.info.tot_pages == 0 {
                    let back = (due as u64).min(g.info.tot_pages);
                    let g = self.guest_mut(domid)?;
                    g.info.tot_pages -= back;
                    g.last_update = now;
                    let gone = g.info.tot_pages == 0;
                    let shadow = g.shadow_mib;
                    self.free_pages += back;
                    if gone {
                        self.domains.remove(&domid);
                        self.free_pages += pages::from_kib(shadow as Kib * 1024)?;
                    }
                }
                continue;
            }
            if domid == 0 || g.info.paused || g.info.shutdown || g.info.dying {
                continue;
            }
            if !g.booted {
                if g.boot_at.is_some_and(|t| t <= now) {
                    let spec = g.spec;
                    let g = self.guest_mut(domid)?;
                    g.booted = true;
                    g.last_update = now;
                    g.last_target_change = now;
                    let dir = format!("/local/domain/{domid}");
                    if spec.behaviour != Behaviour::NoBalloonDriver {
                        self.write(&format!("{dir}/control/feature-balloon"), "1")?;
                    }
                    if spec.agent {
                        self.write(&format!("{dir}/data/updated"), "1")?;
                    }
                }
                continue;
            }
            let target = self
                .store
                .get(&format!("/local/domain/{domid}/memory/target"))
                .and_then(|v| v.parse::<Kib>().ok());
            let free_kib = self.free_pages as Kib * pages::PAGE_KIB;
            let g = self.guest_mut(domid)?;
            let Some(target) = target else {
                g.last_update = now;
                continue;
            };
            if g.last_target != Some(target) {
                g.last_target = Some(target);
                g.last_target_change = g.last_update;
            }
            let tot = g.info.tot_pages as Kib * pages::PAGE_KIB;
            let actual = tot + g.info.shared_pages as Kib * pages::PAGE_KIB - g.spec.offset_kib;
            let mut delta = balloon_step(g, actual, target, now);
            // Xen refuses allocations beyond maxmem.
            let max = g.info.max_pages as Kib * pages::PAGE_KIB;
            if delta > 0 {
                delta = delta.min((max - tot).max(0));
            }
            delta = delta.max(-tot);
            g.last_update = now;
            if delta > free_kib {
                self.violation(
                    domid,
                    format!("tried to allocate {delta} KiB with only {free_kib} KiB free"),
                );
                delta = free_kib;
            }
            // Whole pages only, rounding toward zero, except for the step that reaches the
            // target: a driver finishing works in whole pages and ends on the page of its
            // target, not up to a page plus its inaccuracy away (which a target that is not a
            // whole number of pages would otherwise leave it, never counted as arrived).
            let finishing = (actual + delta - target).abs() <= 4;
            let delta_pages = if finishing && delta < 0 {
                delta
                    .div_euclid(pages::PAGE_KIB)
                    .max(-(tot / pages::PAGE_KIB))
            } else if finishing && delta > 0 {
                (delta + pages::PAGE_KIB - 1) / pages::PAGE_KIB
            } else {
                delta / pages::PAGE_KIB
            };
            let g = self.guest_mut(domid)?;
            g.info.tot_pages = (g.info.tot_pages as i64 + delta_pages) as u64;
            self.free_pages = (self.free_pages as i64 - delta_pages) as u64;
        }
        Ok(())
    }
}

/// How far (KiB, signed) a balloon driver moves its guest's `actual` toward `target` between
/// its last update and `now`, stopping within 4 KiB of the target: the simulator's drivers.
fn balloon_step(g: &Guest, actual: Kib, target: Kib, now: f64) -> Kib {
    g.spec.behaviour.movement(&Motion {
        actual_kib: actual,
        target_kib: target,
        inaccuracy_kib: 4,
        last_update: g.last_update,
        last_target_change: g.last_target_change,
        now,
    })
}

impl StoreOps for State {
    fn read(&mut self, path: &str) -> Result<Option<String>> {
        check_path(path)?;
        Ok(self.store.get(path).cloned())
    }

    fn write(&mut self, path: &str, value: &str) -> Result<()> {
        check_path(path)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::InvalidArgument(format!(
                "store value for {path} is {} bytes, above {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        let mut parent = path;
        while let Some(i) = parent.rfind('/') {
            parent = if i == 0 { "/" } else { &parent[..i] };
            self.store.entry(parent.to_string()).or_default();
            if parent == "/" {
                break;
            }
        }
        self.store.insert(path.to_string(), value.to_string());
        self.changed(path);
        Ok(())
    }

    fn rm(&mut self, path: &str) -> Result<()> {
        check_path(path)?;
        if path == "/" {
            return Err(Error::InvalidArgument(
                "the store root cannot be removed".into(),
            ));
        }
        let prefix = format!("{path}/");
        let doomed: Vec<String> = std::iter::once(path.to_string())
            .filter(|p| self.store.contains_key(p))
            .chain(
                self.store
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone()),
            )
            .collect();
        if !doomed.is_empty() {
            for k in &doomed {
                self.store.remove(k);
            }
            self.changed(path);
        }
        Ok(())
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        check_path(path)?;
        Ok(children(&self.store, path))
    }
}

/// Counts the operations of a transaction body, each one request to xenstored.
struct Counted<'a> {
    ops: &'a mut dyn StoreOps,
    n: u64,
}

impl StoreOps for Counted<'_> {
    fn read(&mut self, path: &str) -> Result<Option<String>> {
        self.n += 1;
        self.ops.read(path)
    }
    fn write(&mut self, path: &str, value: &str) -> Result<()> {
        self.n += 1;
        self.ops.write(path, value)
    }
    fn rm(&mut self, path: &str) -> Result<()> {
        self.n += 1;
        self.ops.rm(path)
    }
    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        self.n += 1;
        self.ops.directory(path)
    }
}

impl FakeHost {
    fn count(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }
}

impl Store for FakeHost {
    fn transaction(&self, body: &mut dyn FnMut(&mut dyn StoreOps) -> Result<()>) -> Result<()> {
        // The whole host is locked for the transaction, so it never conflicts; a failing body
        // leaves the state as it was, and a read-only body does not rewrite the state file.
        self.with(Mode::WriteIfStoreChanged, |s| {
            let mut c = Counted { ops: s, n: 0 };
            let out = body(&mut c);
            // Start and end, as xenstored sees a transaction.
            self.count(c.n + 2);
            out
        })
    }

    fn watch(&self, path: &str) -> Result<Box<dyn Watch>> {
        let mut w = FakeWatch {
            host: self.clone(),
            paths: Vec::new(),
            seen: self.with(false, |s| Ok(s.change_seq))?,
        };
        w.add(path)?;
        Ok(Box::new(w))
    }

    // Single operations are one request each, as with xenstored outside a transaction.
    fn read(&self, path: &str) -> Result<Option<String>> {
        self.count(1);
        self.with(false, |s| s.read(path))
    }
    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.count(1);
        self.with(Mode::WriteIfStoreChanged, |s| s.write(path, value))
    }
    fn rm(&self, path: &str) -> Result<()> {
        self.count(1);
        self.with(Mode::WriteIfStoreChanged, |s| s.rm(path))
    }
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        self.count(1);
        self.with(false, |s| s.directory(path))
    }

    fn requests(&self) -> Option<u64> {
        Some(self.requests.load(Ordering::Relaxed))
    }
}

/// A watch on any number of paths of the fake's store. Unlike xenstored, it does not fire
/// once when a path is added.
struct FakeWatch {
    host: FakeHost,
    /// Each watched path, with the change it was added after.
    paths: Vec<(String, u64)>,
    seen: u64,
}

/// Whether a change at `changed` fires a watch on `watched`, and with which path: a change at
/// or under the watched path reports itself; the removal of an ancestor reports the watched
/// path (the fake does not record whether the change was a removal, so a write to an ancestor
/// fires too: spurious events are allowed). Special paths fire only their own watches.
fn fires(watched: &str, changed: &str) -> Option<String> {
    let under = |p: &str, top: &str| {
        top == "/" || p == top || p.strip_prefix(top).is_some_and(|r| r.starts_with('/'))
    };
    if watched.starts_with('@') || changed.starts_with('@') {
        return (watched == changed).then(|| changed.to_string());
    }
    if under(changed, watched) {
        Some(changed.to_string())
    } else if under(watched, changed) {
        Some(watched.to_string())
    } else {
        None
    }
}

impl Watch for FakeWatch {
    fn poll(&mut self) -> Result<Vec<String>> {
        // One request, as the xenstored watch's sync read.
        self.host.count(1);
        let (paths, seq) = self.host.with(false, |s| {
            let lost = s
                .changes
                .front()
                .is_some_and(|&(first, _)| first > self.seen + 1);
            let mut paths: Vec<String> = Vec::new();
            if lost {
                // Changes were forgotten: everything watched may have changed.
                paths.extend(self.paths.iter().map(|(p, _)| p.clone()));
            }
            for (seq, changed) in &s.changes {
                if *seq <= self.seen {
                    continue;
                }
                for (w, added) in &self.paths {
                    if *seq <= *added {
                        continue;
                    }
                    if let Some(p) = fires(w, changed) {
                        if !paths.contains(&p) {
                            paths.push(p);
                        }
                    }
                }
            }
            Ok((paths, s.change_seq))
        })?;
        self.seen = seq;
        Ok(paths)
    }

    fn add(&mut self, path: &str) -> Result<()> {
        if path != INTRODUCE_DOMAIN && path != RELEASE_DOMAIN {
            check_path(path)?;
        }
        self.host.count(1);
        if !self.paths.iter().any(|(p, _)| p == path) {
            let now = self.host.with(false, |s| Ok(s.change_seq))?;
            self.paths.push((path.to_string(), now));
        }
        Ok(())
    }

    fn remove(&mut self, path: &str) -> Result<()> {
        self.host.count(1);
        let before = self.paths.len();
        self.paths.retain(|(p, _)| p != path);
        if self.paths.len() == before {
            return Err(Error::InvalidArgument(format!("{path} is not watched")));
        }
        Ok(())
    }
}

impl Hypervisor for FakeHost {
    fn domains(&self) -> Result<Vec<DomainInfo>> {
        self.with(false, |s| Ok(s.domains.values().map(|g| g.info).collect()))
    }

    fn domain(&self, domid: DomId) -> Result<Option<DomainInfo>> {
        self.with(false, |s| Ok(s.domains.get(&domid).map(|g| g.info)))
    }

    fn physinfo(&self) -> Result<PhysInfo> {
        self.with(false, |s| {
            Ok(PhysInfo {
                total_pages: pages::from_kib(s.config.total_kib)?,
                free_pages: s.free_pages,
                scrub_pages: s.scrub_pages,
                outstanding_pages: s.domains.values().map(|g| g.info.outstanding_pages).sum(),
            })
        })
    }

    fn shadow_allocation_mib(&self, domid: DomId) -> Result<u64> {
        self.with(false, |s| {
            s.domains
                .get(&domid)
                .map(|g| g.shadow_mib)
                .ok_or_else(|| no_domain(domid))
        })
    }

    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> Result<()> {
        crate::model::kib::check_size("maxmem", kib)?;
        self.with(true, |s| {
            s.setmaxmem_calls += 1;
            s.guest_mut(domid)?.info.max_pages = pages::from_kib(kib)?;
            Ok(())
        })
    }

    fn claim_pages(&self, domid: DomId, count: u64) -> Result<()> {
        self.with(true, |s| {
            let free = s.free_pages;
            let others: u64 = s
                .domains
                .values()
                .filter(|g| g.info.domid != domid)
                .map(|g| g.info.outstanding_pages)
                .sum();
            if count > 0 && count.checked_add(others).is_none_or(|c| c > free) {
                return Err(Error::Backend(format!(
                    "claim of {count} pages for domain {domid}: only {} unclaimed pages free",
                    free.saturating_sub(others)
                )));
            }
            s.guest_mut(domid)?.info.outstanding_pages = count;
            Ok(())
        })
    }
}

impl Clock for FakeHost {
    fn now(&self) -> f64 {
        self.with(false, |s| Ok(s.time)).unwrap_or(0.0)
    }

    fn sleep(&self, seconds: f64) {
        if seconds.is_finite() && seconds > 0.0 {
            if let Err(e) = self.advance(seconds) {
                log::warn!("fake host: cannot advance time: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> FakeHost {
        FakeHost::in_memory(FakeConfig {
            total_kib: 8 << 20,
            xen_kib: 0,
            dom0_kib: 1 << 20,
            boot_delay_s: 1.0,
            referee_slush_kib: Some(1024),
        })
        .unwrap()
    }

    #[test]
    fn store_has_xenstore_semantics() {
        let h = host();
        let s: &dyn Store = &h;
        s.write("/a/b/c", "1").unwrap();
        assert_eq!(s.read("/a/b").unwrap().as_deref(), Some(""));
        s.write("/a/b", "v").unwrap();
        assert_eq!(
            s.read("/a/b/c").unwrap().as_deref(),
            Some("1"),
            "value and children coexist"
        );
        assert_eq!(s.directory("/a").unwrap(), vec!["b"]);
        assert!(s.directory("/nothing").unwrap().is_empty());
        s.rm("/a").unwrap();
        assert!(!s.exists("/a/b/c").unwrap());
        assert!(
            s.rm("/a").is_ok(),
            "removing a missing node is not an error"
        );
        assert!(s.write("relative", "x").is_err());
        assert!(s.write("/a//b", "x").is_err());
        assert!(s.write("/a", &"x".repeat(5000)).is_err());
    }

    #[test]
    fn time_cannot_be_pushed_to_infinity_or_beyond_any_simulation() {
        let dir = tempfile::tempdir().unwrap();
        let h = FakeHost::create(dir.path(), FakeConfig::default()).unwrap();
        h.advance(10.0).unwrap();
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e308] {
            assert!(
                matches!(h.advance(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        // Each half of the limit alone is fine; together they are not.
        h.advance(MAX_TIME_S / 2.0).unwrap();
        assert!(matches!(
            h.advance(MAX_TIME_S / 2.0),
            Err(Error::InvalidArgument(_))
        ));
        // Still usable, from this process and a fresh one.
        assert_eq!(h.now(), 10.0 + MAX_TIME_S / 2.0);
        let again = FakeHost::open(dir.path()).unwrap();
        again.advance(1.0).unwrap();
        assert_eq!(again.now(), 11.0 + MAX_TIME_S / 2.0);
    }

    #[test]
    fn temporary_state_files_of_killed_writers_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let h = FakeHost::create(dir.path(), FakeConfig::default()).unwrap();
        // What writers killed between writing their copy and renaming it leave behind.
        for stale in [
            "state.json.tmp",
            "state.json.tmp.4242.0",
            "state.json.tmp.77.3",
        ] {
            std::fs::write(dir.path().join(stale), b"{").unwrap();
        }
        h.advance(1.0).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["lock", "state.json"]);
        assert_eq!(FakeHost::open(dir.path()).unwrap().now(), 1.0);
    }

    #[test]
    fn the_store_accepts_exactly_the_characters_xenstored_does() {
        let h = host();
        let s: &dyn Store = &h;
        s.write("/ok/AZaz09-_@", "1").unwrap();
        for bad in ["/a+b", "/a.b", "/host:1", "/x~", "/caf\u{e9}", "/a b"] {
            assert!(
                matches!(s.write(bad, "1"), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
            assert!(s.read(bad).is_err(), "{bad}");
        }
        assert_eq!(s.directory("/").unwrap(), vec!["local", "ok"]);
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let h = host();
        let r = h.transaction(&mut |t| {
            t.write("/x", "1")?;
            Err(Error::Backend("boom".into()))
        });
        assert!(r.is_err());
        assert!(!Store::exists(&h, "/x").unwrap());
    }

    #[test]
    fn watches_report_changes_under_their_path() {
        let h = host();
        let mut w = h.watch("/local/domain/1").unwrap();
        Store::write(&h, "/local/domain/1/memory/target", "5").unwrap();
        Store::write(&h, "/local/domain/2/memory/target", "5").unwrap();
        assert_eq!(w.poll().unwrap(), vec!["/local/domain/1/memory/target"]);
        assert!(w.poll().unwrap().is_empty());
    }

    #[test]
    fn one_watch_follows_added_paths_and_domains_coming_and_going() {
        let h = host();
        let before = h.requests().unwrap();
        let mut w = h.watch(INTRODUCE_DOMAIN).unwrap();
        w.add(RELEASE_DOMAIN).unwrap();
        let d = h.create_domain(GuestSpec::fixed(1024)).unwrap();
        w.add(&format!("/local/domain/{d}/memory")).unwrap();
        assert_eq!(w.poll().unwrap(), vec![INTRODUCE_DOMAIN]);
        Store::write(&h, &format!("/local/domain/{d}/memory/target"), "512").unwrap();
        Store::write(&h, &format!("/local/domain/{d}/data/other"), "1").unwrap();
        assert_eq!(
            w.poll().unwrap(),
            vec![format!("/local/domain/{d}/memory/target")]
        );
        h.destroy_domain(d).unwrap();
        // The directory's removal fires the watch under it, reported with the watched path.
        assert_eq!(
            w.poll().unwrap(),
            vec![
                format!("/local/domain/{d}/memory"),
                RELEASE_DOMAIN.to_string()
            ]
        );
        w.remove(&format!("/local/domain/{d}/memory")).unwrap();
        assert!(w.remove("/local/domain/99").is_err());
        // watch, 2 adds, 3 polls, 2 single writes, 2 removes.
        assert_eq!(h.requests().unwrap() - before, 1 + 2 + 3 + 2 + 2);
    }

    #[test]
    fn a_booted_guest_balloons_to_its_target_plus_offset() {
        let h = host();
        let spec = GuestSpec {
            offset_kib: 1024,
            ..GuestSpec::ballooning(512 << 10, 1 << 20)
        };
        let d = h.create_domain(spec).unwrap();
        h.set_maxmem_kib(d, (1 << 20) + 1024).unwrap();
        h.build_domain(d, (1 << 20) + 1024).unwrap();
        h.unpause(d).unwrap();
        h.advance(1.0).unwrap();
        let snap = h.snapshot().unwrap();
        assert_eq!(
            snap.read("/local/domain/1/control/feature-balloon"),
            Some("1")
        );
        // 8 GiB − 1 GiB dom0 − (1 GiB + 1 MiB) guest.
        assert_eq!(snap.free_kib, (6 << 20) - 1024);
        Store::write(
            &h,
            "/local/domain/1/memory/target",
            &(768 << 10).to_string(),
        )
        .unwrap();
        h.advance(10.0).unwrap();
        let g = h.domain(d).unwrap().unwrap();
        // Stops 4 KiB short of 768 MiB + 1 MiB offset.
        assert_eq!(g.tot_kib(), (768 << 10) + 1024 + 4);
    }

    #[test]
    fn absurd_claims_and_sizes_are_refused_not_overflowed() {
        let h = host();
        let d = h.create_domain(GuestSpec::fixed(1024)).unwrap();
        assert!(h.claim_pages(d, u64::MAX).is_err());
        assert!(h.claim_pages(d, 1).is_ok());
        assert!(h
            .create_domain(GuestSpec {
                shadow_mib: u64::MAX,
                ..GuestSpec::fixed(1024)
            })
            .is_err());
        assert!(h.set_maxmem_kib(d, -1).is_err());
        assert!(h.advance(f64::NAN).is_err());
    }

    #[test]
    fn the_referee_catches_memory_promised_twice() {
        let h = host();
        // 7 GiB free, 1 MiB slush: a 7 GiB − 1 MiB reservation fits exactly.
        Store::write(&h, "/squeezed/state/s/a", &((7 << 20) - 1024).to_string()).unwrap();
        assert!(h.snapshot().unwrap().violations.is_empty());
        Store::write(&h, "/squeezed/state/s/b", "4").unwrap();
        let v = h.snapshot().unwrap().violations;
        assert_eq!(v.len(), 1);
        assert!(
            v[0].what.starts_with("overcommitted by 4 KiB"),
            "{}",
            v[0].what
        );
    }

    #[test]
    fn building_beyond_free_memory_fails_like_xen() {
        let h = host();
        let d = h.create_domain(GuestSpec::fixed(8 << 20)).unwrap();
        assert!(h.build_domain(d, 8 << 20).is_err());
        assert_eq!(h.domain(d).unwrap().unwrap().info.tot_pages, 0);
    }

    #[test]
    fn the_scrubber_returns_pages_evenly_and_a_stuck_one_never_does() {
        let h = host();
        // 7 GiB free; 1 GiB goes to the scrubber, back over 2 s: 512 MiB a second.
        h.scrub_over(1 << 20, 2.0).unwrap();
        let p = h.physinfo().unwrap();
        assert_eq!((p.free_pages, p.scrub_pages), (6 << 18, 1 << 18));
        h.advance(0.5).unwrap();
        let p = h.physinfo().unwrap();
        assert_eq!(
            (p.free_pages, p.scrub_pages),
            ((6 << 18) + (1 << 16), 3 << 16)
        );
        // Nothing can allocate what is still to scrub.
        let d = h
            .create_domain(GuestSpec::fixed((6 << 20) + (512 << 10)))
            .unwrap();
        assert!(h.build_domain(d, (6 << 20) + (512 << 10)).is_err());
        h.advance(1.5).unwrap();
        let p = h.physinfo().unwrap();
        assert_eq!((p.free_pages, p.scrub_pages), (7 << 18, 0));

        h.scrub_over(4, f64::INFINITY).unwrap();
        h.advance(1e6).unwrap();
        assert_eq!(h.physinfo().unwrap().scrub_pages, 1);
        assert_eq!(h.snapshot().unwrap().scrub_kib, 4);
        assert!(h.scrub_over(8 << 20, 1.0).is_err(), "more than is free");
        assert!(h.scrub_over(4, -1.0).is_err());
        assert!(h.scrub_over(4, f64::NAN).is_err());
    }
}
