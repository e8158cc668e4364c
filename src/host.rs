//! The host model: turns what the platform reports, plus the reservation ledger, into the
//! squeezer's [`Host`], and carries the squeezer's decisions back out. It behaves as squeezed's
//! Xen layer does:
//!
//! - A domain's keys live under `/local/domain/<domid>/`: `memory/{target, dynamic-min,
//!   dynamic-max, initial-reservation, memory-offset, uncooperative}`, `control/feature-balloon`
//!   (its balloon driver is up) and `data/updated` (its agent is up).
//! - A domain that shows a balloon driver or an agent has **booted**. The first time that is
//!   seen, the offset between its allocation and its target is measured and stored in
//!   `memory/memory-offset`; from then on its actual memory is its allocation (plus its shared
//!   pages) minus that offset.
//! - Unless [`HostConfig::offset_drift`] is off (squeezed's one-shot calibration), the offset is
//!   re-estimated whenever a ballooning domain that had reached its target shows a constant gap
//!   to that same, unchanged target over a quiet window: see [`OffsetDrift`]. The offset measured
//!   at boot is kept in `memory/memory-offset-at-boot` and bounds maxmem: a re-estimated offset
//!   may lower what a domain is allowed, never raise it.
//! - A domain that has not booted is counted at its initial reservation: the part not yet
//!   allocated (net of its shadow allocation and its outstanding claim) is taken off host free
//!   memory, and the domain is presented as fixed at its maxmem. A domain with no initial
//!   reservation and no driver is not the balancer's (it is accounted by what it holds).
//! - Host free memory is Xen's free and to-be-scrubbed pages, minus outstanding claims, minus
//!   shared pages (memory sharing only lends them: breaking a share takes a page again), minus
//!   the ledger's unbacked reservations, minus the unallocated part of initial reservations.
//!   squeezed waits for the scrubber inside its look; a look here never waits, but says when
//!   the scrubber is busy ([`HostView::scrubbing`]), and the service waits outside the host
//!   lock before deciding (see [`ScrubWait`]).
//! - maxmem follows the target (`target + offset`, the offset at most the one measured at boot,
//!   plus 1 MiB for HVM-like domains), set before
//!   the target when raising and after it when lowering; a ballooning domain whose maxmem is
//!   above its target has it lowered.
//! - A domain that has not been at its target for 20 s gets `memory/uncooperative` (squeezed's
//!   rule). When a squeezer judges cooperation itself (the adaptive one, see
//!   [`HostModel::set_cooperation_judged_by_squeezer`]), the flag follows its judgement instead:
//!   set when its non-cooperation score crosses the flagging threshold, removed when the score
//!   falls back under the clearing one.
//! - A booted domain's `memory/weight` (a number between 0.001 and 1000; 1 when absent) is its
//!   weight in the proportional policy. A weight that is not such a number is ignored (the
//!   domain weighs 1) and reported in the domain's view (`weight_error`).
//! - Domain 0 is left alone unless managed; dying and shut-down domains are not balanced.
//! - Transferred reservations whose domain has died are released.
//! - Unlike squeezed, it does not read every domain's keys at every look: it keeps them and
//!   reads again only those a store watch reports changed (see `KeyCache`), falling back to
//!   reading everything when the store cannot watch.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use log::{debug, info, warn};

use crate::adaptive::Cooperation;
use crate::driver::Io;
use crate::error::{Error, Result};
use crate::model::{kib, Action, DomId, Domain, Host, Kib, DEFAULT_INACCURACY_KIB, MAX_KIB};
use crate::platform::{
    pages, DomainInfo, Platform, Store, StoreOps, Watch, INTRODUCE_DOMAIN, RELEASE_DOMAIN,
};
use crate::reservations::{self, InvalidEntry, Layout, Reservation};

/// squeezed's slush: Xen's low-memory emergency pool (64 MiB) plus 8 MiB for the "ordinary"
/// memory domain creation takes.
pub const DEFAULT_SLUSH_KIB: Kib = (64 << 10) + (8 << 10);

/// How often a look reads Xen's claims again when one may have been made during it (see
/// [`HostModel::view`]).
const CLAIM_RE_READS: usize = 4;

/// Pages still to scrub from which a look is [`HostView::scrubbing`]: 1024 (4 MiB), the
/// point from which squeezed waits for the scrubber.
pub const SCRUBBING_PAGES: u64 = 1024;

/// Seconds between two looks while a round waits for Xen's scrubber (squeezed polls as often).
pub const SCRUB_POLL_S: f64 = 0.25;

/// How close to the slush counts as balanced (squeezed's value).
pub const DEFAULT_FREE_MEMORY_TOLERANCE_KIB: Kib = 512;

/// Seconds away from its target after which a domain is flagged uncooperative.
pub const DEFAULT_UNCOOPERATIVE_AFTER_S: f64 = 20.0;

/// Looks in a row a domain must hold still before its offset may be re-estimated.
pub const DEFAULT_DRIFT_WINDOW_LOOKS: u32 = 3;

/// Seconds a domain must hold still before its offset may be re-estimated.
pub const DEFAULT_DRIFT_WINDOW_S: f64 = 10.0;

/// How many offset corrections the host model remembers for the diagnostics.
const RECENT_DRIFTS: usize = 16;

/// The host model's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Memory kept free for Xen when balanced, in KiB.
    pub slush_kib: Kib,
    /// How close to the slush counts as balanced, in KiB.
    pub free_memory_tolerance_kib: Kib,
    /// Balance domain 0 too (its policy keys must be written, see
    /// [`HostModel::configure_domain_zero`]).
    pub manage_domain_zero: bool,
    /// Seconds away from target before `memory/uncooperative` is set.
    pub uncooperative_after_s: f64,
    /// Longest time a reservation or a balance waits for Xen's scrubber (looking again every
    /// [`SCRUB_POLL_S`], outside the host lock) before deciding with the pages still to scrub
    /// counted as free; 0 never waits. A look itself never waits.
    pub scrub_wait_s: f64,
    /// Where the reservation ledger lives in the store.
    pub layout: Layout,
    /// Re-estimate `memory/memory-offset` of a quiet domain that drifted off its unchanged
    /// target (see [`OffsetDrift`]); off, the offset is measured once at boot, as squeezed does.
    pub offset_drift: bool,
    /// Consecutive looks with the same target and allocation that make a domain quiet.
    pub drift_window_looks: u32,
    /// Seconds those looks must span.
    pub drift_window_s: f64,
    /// Turn a reservation transferred to a domain into a Xen claim on it, so nothing else can
    /// allocate that memory while the domain is built; the claim is cancelled once the domain
    /// boots. Leave it off when the toolstack makes its own claims (libxl does, with
    /// `claim_mode`).
    pub claim_transferred_reservations: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            slush_kib: DEFAULT_SLUSH_KIB,
            free_memory_tolerance_kib: DEFAULT_FREE_MEMORY_TOLERANCE_KIB,
            manage_domain_zero: false,
            uncooperative_after_s: DEFAULT_UNCOOPERATIVE_AFTER_S,
            scrub_wait_s: 30.0,
            layout: Layout::default(),
            offset_drift: true,
            drift_window_looks: DEFAULT_DRIFT_WINDOW_LOOKS,
            drift_window_s: DEFAULT_DRIFT_WINDOW_S,
            claim_transferred_reservations: false,
        }
    }
}

impl HostConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        kib::check_size("slush", self.slush_kib)?;
        kib::check_size("free memory tolerance", self.free_memory_tolerance_kib)?;
        for (name, v) in [
            ("uncooperative_after_s", self.uncooperative_after_s),
            ("scrub_wait_s", self.scrub_wait_s),
            ("drift_window_s", self.drift_window_s),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "{name} = {v} is not a duration"
                )));
            }
        }
        if self.drift_window_looks < 2 {
            return Err(Error::InvalidArgument(format!(
                "drift_window_looks = {} cannot tell a still domain from a moving one: use 2 or more",
                self.drift_window_looks
            )));
        }
        Ok(())
    }
}

/// A re-estimated memory offset.
///
/// A domain's offset (what it holds beyond its balloon target once settled: firmware, video
/// RAM, pages a device model populated) is measured when it boots. It can change later, and
/// then the domain sits at a constant distance from a target it does not consider missed.
/// squeezed's one-shot calibration reads that as a domain refusing to reach its target and
/// flags it uncooperative. The host model instead re-estimates the offset when all of these
/// hold: the domain balloons, it reached its current target at some point since that target was
/// set, the target has not changed since, and its allocation has been the same for
/// [`HostConfig::drift_window_looks`] looks spanning [`HostConfig::drift_window_s`]. A domain
/// still moving, or one that never reached a target it was given (stuck, or at a hidden
/// floor), is never re-estimated. A re-estimated offset changes how the domain is counted, but
/// its maxmem never makes room for more than the offset measured at boot: a guest that fills up
/// to maxmem would otherwise be read as drifting, given more, and grow without end.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OffsetDrift {
    /// The domain.
    pub domid: DomId,
    /// When it was corrected (the platform clock, seconds).
    pub time: f64,
    /// The offset before, in KiB.
    pub old_offset_kib: Kib,
    /// The offset after, in KiB.
    pub new_offset_kib: Kib,
}

/// What the host model tracks about a booted domain to tell drift from motion.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    target_kib: Kib,
    held_kib: Kib,
    since: f64,
    looks: u32,
    /// Seen at `target_kib` since it was set.
    reached: bool,
}

/// How a domain is virtualised; decides Xen's maxmem extra and whether shadow memory counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainType {
    /// Hardware-virtualised.
    Hvm,
    /// PVH.
    Pvh,
    /// A PV guest inside a PVH shim.
    PvInPvh,
    /// Paravirtualised.
    Pv,
}

impl DomainType {
    /// What Xen adds to maxmem for this type of domain beyond the guest's own memory.
    pub fn xen_max_offset_kib(self) -> Kib {
        match self {
            DomainType::Pv => 0,
            _ => 1024,
        }
    }

    fn parse(s: Option<&str>, hvm: bool) -> Self {
        match s {
            Some("hvm") => DomainType::Hvm,
            Some("pvh") => DomainType::Pvh,
            Some("pv-in-pvh") => DomainType::PvInPvh,
            Some("pv") => DomainType::Pv,
            // Hosts upgraded from toolstacks that did not write the key.
            _ if hvm => DomainType::Hvm,
            _ => DomainType::Pv,
        }
    }
}

/// One domain as the host model saw it in its last look.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DomainView {
    /// Domain id.
    pub domid: DomId,
    /// How it is virtualised.
    pub domain_type: DomainType,
    /// It has shown a balloon driver or an agent.
    pub booted: bool,
    /// It has a balloon driver.
    pub can_balloon: bool,
    /// Its calibrated memory offset, in KiB (0 before boot).
    pub offset_kib: Kib,
    /// Its initial reservation, in KiB, when it has one.
    pub initial_reservation_kib: Option<Kib>,
    /// The part of its initial reservation not allocated yet (taken off host free memory).
    pub unallocated_reservation_kib: Kib,
    /// Flagged `memory/uncooperative`.
    pub uncooperative: bool,
    /// Pages it shares with other domains, in KiB (counted as its memory).
    pub shared_kib: Kib,
    /// It reached its target, which has not changed since, and now sits off it: a drifted
    /// offset until proven otherwise, so not blamed for being off target.
    pub drift_suspect: bool,
    /// What the squeezer sees; `None` when the domain is not balanced (see `skipped`).
    #[serde(serialize_with = "serialize_domain")]
    pub domain: Option<Domain>,
    /// Why the domain is not balanced, when it is not.
    pub skipped: Option<String>,
    /// Why its `memory/weight` was ignored, when it was.
    pub weight_error: Option<String>,
}

fn serialize_domain<S: serde::Serializer>(
    d: &Option<Domain>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    d.map(|d| {
        serde_json::json!({
            "can_balloon": d.can_balloon,
            "dynamic_min_kib": d.dynamic_min_kib,
            "target_kib": d.target_kib,
            "dynamic_max_kib": d.dynamic_max_kib,
            "memory_actual_kib": d.memory_actual_kib,
            "memory_max_kib": d.memory_max_kib,
            "inaccuracy_kib": d.inaccuracy_kib,
            "weight": d.weight.get(),
        })
    })
    .serialize(s)
}

/// The host model's last look at the host.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct HostView {
    /// All memory of the host, in KiB.
    pub total_kib: Kib,
    /// Xen's free pages, in KiB.
    pub xen_free_kib: Kib,
    /// Pages waiting for the scrubber, in KiB.
    pub scrub_kib: Kib,
    /// Outstanding claims, in KiB.
    pub outstanding_kib: Kib,
    /// Pages domains share, in KiB: free only until the sharing breaks.
    pub shared_kib: Kib,
    /// Reservations not backed by a live domain, in KiB.
    pub reserved_kib: Kib,
    /// Unallocated parts of initial reservations of domains that have not booted, in KiB.
    pub unallocated_initial_kib: Kib,
    /// Host free memory as the squeezer sees it, in KiB.
    pub free_kib: Kib,
    /// Pages that dying domains still hold, in KiB: on their way back to the free pool as Xen
    /// relinquishes them, and not counted in `free_kib` until they are back.
    #[serde(default)]
    pub dying_kib: Kib,
    /// A domain counted at its initial reservation allocated memory while this look was
    /// taken: that memory is counted twice (still owed to the domain, no longer free), so
    /// `free_kib` understates what is free, possibly by a whole VM. A round should look again
    /// rather than shrink guests on such a look.
    #[serde(default)]
    pub in_flux: bool,
    /// Xen's scrubber still had at least [`SCRUBBING_PAGES`] pages (4 MiB) to scrub. They are
    /// counted as free (`scrub_kib` is in `free_kib`), but nothing can allocate them yet, so a
    /// round should look again rather than decide on such a look, for a while (see
    /// [`ScrubWait`]).
    #[serde(default)]
    pub scrubbing: bool,
    /// Every domain looked at.
    pub domains: Vec<DomainView>,
    /// The ledger.
    pub reservations: Vec<Reservation>,
    /// Ledger entries that could not be read.
    pub invalid_entries: Vec<InvalidEntry>,
    /// The time of the look.
    pub time: f64,
    /// Offsets re-estimated in this look.
    pub offset_drifts: Vec<OffsetDrift>,
    /// Offsets re-estimated since the host model was made.
    pub offset_drifts_total: u64,
    /// The last few offsets re-estimated, oldest first.
    pub recent_offset_drifts: Vec<OffsetDrift>,
    /// What the squeezer gets.
    #[serde(skip)]
    pub host: Host,
}

/// A caller's wait for Xen's scrubber, across the rounds of one reservation or balance.
///
/// squeezed waits for the scrubber inside its look, holding its lock, so every other caller
/// on the host waits as long as the scrubber takes (up to [`HostConfig::scrub_wait_s`] here
/// before). Instead, a round that would decide from a look that is
/// [`scrubbing`](HostView::scrubbing) ends without deciding, and the caller looks again
/// [`SCRUB_POLL_S`] later, outside the lock; once `scrub_wait_s` has passed since its first
/// such look, it decides as squeezed would after its wait, counting the pages still to scrub
/// as free, until a look finds the scrubber done.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScrubWait {
    /// When the first look of the current wait was taken.
    since: Option<f64>,
    /// The wait ran out while the scrubber was still busy.
    gave_up: bool,
}

impl ScrubWait {
    /// Whether to look again rather than decide from `view`: it is scrubbing and less than
    /// `limit_s` has passed since the first scrubbing look of this wait. A look that is not
    /// scrubbing ends the wait.
    pub fn look_again(&mut self, view: &HostView, limit_s: f64) -> bool {
        if !view.scrubbing {
            *self = ScrubWait::default();
            return false;
        }
        let since = *self.since.get_or_insert(view.time);
        let waited = view.time - since;
        if waited < limit_s {
            debug!(
                "Xen's scrubber still has {} KiB to scrub ({waited:.2} s so far): looking again",
                view.scrub_kib
            );
            return true;
        }
        if !self.gave_up {
            self.gave_up = true;
            warn!(
                "Xen's scrubber still has {} KiB to scrub after {waited:.1} s: counting it as free",
                view.scrub_kib
            );
        }
        false
    }
}

/// Keys read for one domain, in one transaction.
#[derive(Debug, Default, Clone)]
struct Keys {
    exists: bool,
    domain_type: Option<String>,
    feature_balloon: bool,
    data_updated: bool,
    target: Option<String>,
    dynamic_min: Option<String>,
    dynamic_max: Option<String>,
    initial_reservation: Option<String>,
    memory_offset: Option<String>,
    memory_offset_at_boot: Option<String>,
    uncooperative: bool,
    weight: Option<String>,
}

/// Where the offset measured at boot is kept, once drift re-estimation has rewritten
/// `memory/memory-offset`: what the domain's maxmem is bounded by for the rest of its life.
const OFFSET_AT_BOOT: &str = "memory/memory-offset-at-boot";

fn domain_path(domid: DomId, key: &str) -> String {
    format!("/local/domain/{domid}/{key}")
}

fn read_keys(t: &mut dyn StoreOps, domid: DomId) -> Result<Keys> {
    let k = |key: &str| domain_path(domid, key);
    Ok(Keys {
        exists: t.exists(&format!("/local/domain/{domid}"))?,
        domain_type: t.read(&k("domain-type"))?,
        feature_balloon: t.exists(&k("control/feature-balloon"))?,
        data_updated: t.exists(&k("data/updated"))?,
        target: t.read(&k("memory/target"))?,
        dynamic_min: t.read(&k("memory/dynamic-min"))?,
        dynamic_max: t.read(&k("memory/dynamic-max"))?,
        initial_reservation: t.read(&k("memory/initial-reservation"))?,
        memory_offset: t.read(&k("memory/memory-offset"))?,
        memory_offset_at_boot: t.read(&k(OFFSET_AT_BOOT))?,
        uncooperative: t.exists(&k("memory/uncooperative"))?,
        weight: t.read(&k("memory/weight"))?,
    })
}

/// What the host model watches of each domain: every key [`read_keys`] reads is at or under
/// one of these.
const WATCHED_KEYS: [&str; 4] = [
    "domain-type",
    "memory",
    "control/feature-balloon",
    "data/updated",
];

/// Which cached keys a watch event makes stale.
#[derive(Debug, PartialEq, Eq)]
enum Stale {
    /// One domain's.
    Domain(DomId),
    /// Every domain's.
    All,
    /// None the host model reads.
    Nothing,
}

fn stale_by(event: &str) -> Stale {
    if event.starts_with('@') {
        // A domain came or went. Its id may be reused by the next one, so nothing cached is
        // trusted across the change, whatever order the toolstack wrote and removed keys in:
        // a full read costs no more than polling does every look.
        return Stale::All;
    }
    if matches!(event, "/" | "/local" | "/local/domain") {
        return Stale::All;
    }
    event
        .strip_prefix("/local/domain/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| id.parse::<DomId>().ok())
        .map_or(Stale::Nothing, Stale::Domain)
}

/// The per-domain keys of the last looks, kept up to date through one store watch instead of
/// being read again at every look (squeezed reads them all, every time).
///
/// A domain's keys are read when it is first seen and again only after the watch reported a
/// change under one of its [`WATCHED_KEYS`]; the watch is polled before every look, so a key
/// written before a look starts is read by it. When the store offers no such watch, or the
/// watch fails, every look reads every domain, as before: the cache only ever saves reads.
#[derive(Default)]
struct KeyCache {
    watch: Option<Box<dyn Watch>>,
    /// The store cannot watch: never try again.
    unavailable: bool,
    /// Domains whose keys are watched.
    watched: HashSet<DomId>,
    /// Keys of watched domains, as last read, valid until an event says otherwise.
    keys: HashMap<DomId, Keys>,
}

impl KeyCache {
    /// Brings the watch up to date with `domains` (the domains about to be looked at) and
    /// drops what its events say changed. Afterwards, the domains without keys in the cache
    /// are the ones to read.
    fn refresh(&mut self, store: &dyn Store, domains: &[DomainInfo]) {
        if self.unavailable {
            return;
        }
        if let Err(e) = self.try_refresh(store, domains) {
            self.watch = None;
            self.watched.clear();
            self.keys.clear();
            if matches!(e, Error::Unsupported(_)) {
                self.unavailable = true;
                debug!("store watches unavailable ({e}): every look reads every domain's keys");
            } else {
                debug!(
                    "store watch failed ({e}): this look reads every domain's keys; \
                     watching again at the next"
                );
            }
        }
    }

    fn try_refresh(&mut self, store: &dyn Store, domains: &[DomainInfo]) -> Result<()> {
        if self.watch.is_none() {
            let mut w = store.watch(INTRODUCE_DOMAIN)?;
            w.add(RELEASE_DOMAIN)?;
            self.watch = Some(w);
            self.watched.clear();
            self.keys.clear();
        }
        let Some(w) = self.watch.as_mut() else {
            return Ok(());
        };
        let wanted: HashSet<DomId> = domains.iter().map(|d| d.domid).collect();
        let gone: Vec<DomId> = self.watched.difference(&wanted).copied().collect();
        for domid in gone {
            self.watched.remove(&domid);
            self.keys.remove(&domid);
            for key in WATCHED_KEYS {
                w.remove(&domain_path(domid, key))?;
            }
        }
        for &domid in &wanted {
            // Watched before its keys are read, so no change can fall between the two.
            if !self.watched.contains(&domid) {
                for key in WATCHED_KEYS {
                    w.add(&domain_path(domid, key))?;
                }
                self.watched.insert(domid);
            }
        }
        for event in w.poll()? {
            match stale_by(&event) {
                Stale::Domain(domid) => {
                    self.keys.remove(&domid);
                }
                Stale::All => self.keys.clear(),
                Stale::Nothing => {}
            }
        }
        Ok(())
    }

    /// Keeps keys just read, when a watch will say when they change.
    fn keep(&mut self, domid: DomId, keys: &Keys) {
        // A domain without a store directory is being created: read it again next time
        // rather than rely on events for a directory that does not exist yet.
        if self.watch.is_some() && self.watched.contains(&domid) && keys.exists {
            self.keys.insert(domid, keys.clone());
        }
    }
}

fn parse_kib(what: &str, v: &str) -> std::result::Result<Kib, String> {
    v.trim()
        .parse::<Kib>()
        .map_err(|_| format!("{what} {v:?} is not a number"))
}

/// The host model over a platform.
pub struct HostModel {
    platform: Platform,
    config: HostConfig,
    last_cooperative: HashMap<DomId, f64>,
    last_view: Option<HostView>,
    /// What the last look learnt per domain, so carrying out its decisions needs no re-reads
    /// (the look and the actions happen under the same host lock).
    known: HashMap<DomId, Known>,
    quiet: HashMap<DomId, Quiet>,
    drifts_total: u64,
    recent_drifts: VecDeque<OffsetDrift>,
    /// Domain keys between looks.
    cache: KeyCache,
    /// `memory/uncooperative` follows what the squeezer reports, not the 20 s rule.
    judged_by_squeezer: bool,
    /// The squeezer's latest judgement per domain.
    judged: HashMap<DomId, bool>,
}

/// Per-domain facts the actions need.
#[derive(Debug, Clone, Copy)]
struct Known {
    xen_max_kib: Kib,
    domain_type: DomainType,
    /// The offset maxmem makes room for: the current one, but never more than the one measured
    /// at boot, so a re-estimated offset can lower what the domain may hold, never raise it.
    allowed_offset_kib: Kib,
    can_balloon: bool,
    target_kib: Option<Kib>,
}

impl Known {
    /// `calibrated`: an offset just measured or re-estimated (not in `k` yet); `at_boot`: the
    /// offset measured at boot when `k` does not hold it yet.
    fn new(
        info: &DomainInfo,
        k: &Keys,
        calibrated: Option<Kib>,
        at_boot: Option<Kib>,
    ) -> Result<Self> {
        let offset = calibrated
            .or_else(|| {
                k.memory_offset
                    .as_deref()
                    .and_then(|o| o.trim().parse().ok())
            })
            .unwrap_or(0);
        let at_boot = at_boot.or_else(|| offset_at_boot(k)).unwrap_or(offset);
        Ok(Known {
            xen_max_kib: pages::to_kib(info.max_pages)?,
            domain_type: DomainType::parse(k.domain_type.as_deref(), info.hvm),
            allowed_offset_kib: offset.min(at_boot),
            can_balloon: k.feature_balloon,
            target_kib: k.target.as_deref().and_then(|t| t.trim().parse().ok()),
        })
    }
}

/// The offset recorded at boot, when there is a valid one.
fn offset_at_boot(k: &Keys) -> Option<Kib> {
    k.memory_offset_at_boot
        .as_deref()
        .and_then(|o| o.trim().parse().ok())
}

impl std::fmt::Debug for HostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HostModel {
    /// A host model over `platform`.
    pub fn new(mut platform: Platform, config: HostConfig) -> Result<Self> {
        config.validate()?;
        // Every time the model reads is steady: a platform clock set back must neither fail
        // an operation nor stop its time (see `SteadyTime`).
        platform.clock = crate::platform::SteadyClock::wrap(platform.clock);
        Ok(HostModel {
            platform,
            config,
            last_cooperative: HashMap::new(),
            last_view: None,
            known: HashMap::new(),
            quiet: HashMap::new(),
            drifts_total: 0,
            recent_drifts: VecDeque::new(),
            cache: KeyCache::default(),
            judged_by_squeezer: false,
            judged: HashMap::new(),
        })
    }

    /// With `on`, `memory/uncooperative` follows the judgement the squeezer returns, handed
    /// over with [`publish_cooperation`](HostModel::publish_cooperation) (flag and hysteresis
    /// are the squeezer's), instead of
    /// squeezed's rule of 20 s away from target. A domain not judged yet keeps its flag as it
    /// is.
    pub fn set_cooperation_judged_by_squeezer(&mut self, on: bool) {
        self.judged_by_squeezer = on;
        self.judged.clear();
    }

    /// Publishes a squeezer's judgement of the domains (see
    /// [`set_cooperation_judged_by_squeezer`](HostModel::set_cooperation_judged_by_squeezer)):
    /// sets or removes `memory/uncooperative` where the judgement changed it. Does nothing while
    /// squeezed's 20 s rule is in force.
    pub fn publish_cooperation(&mut self, reports: &[(DomId, Cooperation)]) -> Result<()> {
        if !self.judged_by_squeezer {
            return Ok(());
        }
        let mut changes = Vec::new();
        for &(domid, c) in reports {
            self.judged.insert(domid, c.uncooperative);
            let Some(v) = self
                .last_view
                .as_mut()
                .and_then(|view| view.domains.iter_mut().find(|v| v.domid == domid))
            else {
                continue;
            };
            if v.uncooperative != c.uncooperative {
                v.uncooperative = c.uncooperative;
                changes.push((domid, c.uncooperative));
                let why = c.concern.map(|c| format!(" ({c:?})")).unwrap_or_default();
                if c.uncooperative {
                    warn!(
                        "domain {domid}: its balloon driver left {:.1} s of asked-for work undone{why}: flagging it uncooperative",
                        c.score_s
                    );
                } else {
                    info!(
                        "domain {domid} is cooperating again (score {:.1} s)",
                        c.score_s
                    );
                }
            }
        }
        if changes.is_empty() {
            Ok(())
        } else {
            self.write_flags(&changes)
        }
    }

    /// The settings.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The platform.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The last look taken by [`view`](HostModel::view), if any.
    pub fn last_view(&self) -> Option<&HostView> {
        self.last_view.as_ref()
    }

    /// Whether domain keys are kept between looks and refreshed through a store watch (`false`
    /// before the first look, and when the store cannot watch or its watch failed: then every
    /// look reads every domain's keys).
    pub fn watching(&self) -> bool {
        self.cache.watch.is_some()
    }

    fn alive(info: &[DomainInfo]) -> impl Fn(DomId) -> bool + '_ {
        move |domid| info.iter().any(|d| d.domid == domid && !d.dying)
    }

    /// Looks at the host afresh: reads the hypervisor and the store, calibrates offsets of
    /// newly booted domains, updates uncooperative flags, lowers maxmem toward target, releases
    /// reservations of dead domains, and builds the squeezer's [`Host`].
    ///
    /// It writes to the store and the hypervisor, so it belongs under the host-wide lock, as
    /// [`crate::service::Service`] calls it. It never waits: pages Xen has yet to scrub count
    /// as free, and a look taken while the scrubber is busy says so
    /// ([`HostView::scrubbing`]); a caller about to decide from it waits outside the lock and
    /// looks again (see [`ScrubWait`]).
    pub fn view(&mut self) -> Result<HostView> {
        let hv = self.platform.hypervisor.clone();
        let store = self.platform.store.clone();
        let clock = self.platform.clock.clone();

        let infos = hv.domains()?;
        let alive = Self::alive(&infos);
        let candidates: Vec<DomainInfo> = infos
            .iter()
            .copied()
            .filter(|d| d.domid != 0 || self.config.manage_domain_zero)
            .filter(|d| !d.dying && !d.shutdown)
            .collect();

        // Release reservations of dead domains, then read the ledger and the keys of every
        // domain the cache cannot vouch for in one transaction, for a consistent picture.
        self.cache.refresh(&*store, &candidates);
        let to_read: Vec<DomId> = candidates
            .iter()
            .map(|d| d.domid)
            .filter(|domid| !self.cache.keys.contains_key(domid))
            .collect();
        let layout = self.config.layout.clone();
        let mut keys: BTreeMap<DomId, Keys> = BTreeMap::new();
        let mut ledger = (Vec::new(), Vec::new());
        let mut released = Vec::new();
        store.transaction(&mut |t| {
            released = reservations::release_dead(t, &layout, &alive)?;
            ledger = reservations::list(t, &layout)?;
            keys.clear();
            for &domid in &to_read {
                keys.insert(domid, read_keys(t, domid)?);
            }
            Ok(())
        })?;
        for (&domid, k) in &keys {
            self.cache.keep(domid, k);
        }
        for d in &candidates {
            if let Some(k) = self.cache.keys.get(&d.domid) {
                keys.entry(d.domid).or_insert_with(|| k.clone());
            }
        }
        for r in &released {
            info!(
                "released reservation {} ({} KiB) of session {}: domain {:?} is gone",
                r.id, r.kib, r.session, r.in_transfer
            );
        }
        let (ledger, invalid) = ledger;
        for e in &invalid {
            warn!("ignoring invalid reservation entry {}: {}", e.path, e.why);
        }

        let looked_at = clock.now();
        let mut views = Vec::new();
        let mut known = HashMap::new();
        let mut unallocated_total: Kib = 0;
        let mut shared_total: Kib = 0;
        // (domain, its offset, its offset at boot when that is not recorded yet)
        let mut offsets_to_write: Vec<(DomId, Kib, Option<Kib>)> = Vec::new();
        let mut drifts = Vec::new();
        let mut just_booted_with_claim = Vec::new();
        // Domains counted at their initial reservation: (index in `views`, the claim counted,
        // the pages it held).
        let mut unborn: Vec<(usize, Kib, u64)> = Vec::new();
        self.quiet.retain(|domid, _| keys.contains_key(domid));
        for info in &candidates {
            let k = &keys[&info.domid];
            let (mut view, unallocated, mut calibrated) = self.domain_view(info, k)?;
            // Just measured at boot: that is the offset at boot.
            let mut at_boot = calibrated;
            if self.config.offset_drift && calibrated.is_none() {
                if let Some(d) = self.track_quiet(&mut view, looked_at) {
                    calibrated = Some(d.new_offset_kib);
                    // Booted before the offset at boot was recorded: the one being replaced
                    // is the best record of it there is.
                    if offset_at_boot(k).is_none() {
                        at_boot = Some(d.old_offset_kib);
                    }
                    drifts.push(d);
                }
            } else if calibrated.is_some() {
                self.quiet.remove(&info.domid);
            }
            if view.booted && info.outstanding_pages > 0 {
                just_booted_with_claim.push(info.domid);
            }
            if unallocated > 0 {
                unborn.push((
                    views.len(),
                    pages::to_kib(info.outstanding_pages)?,
                    info.tot_pages,
                ));
            }
            known.insert(info.domid, Known::new(info, k, calibrated, at_boot)?);
            if let Some(offset) = calibrated {
                offsets_to_write.push((info.domid, offset, at_boot));
            }
            shared_total = kib::add(shared_total, view.shared_kib, "shared pages")?;
            unallocated_total = kib::add(unallocated_total, unallocated, "initial reservations")?;
            views.push(view);
        }

        if !offsets_to_write.is_empty() {
            store.transaction(&mut |t| {
                for &(domid, offset, at_boot) in &offsets_to_write {
                    // Never recreate the directory of a domain destroyed meanwhile.
                    if t.exists(&format!("/local/domain/{domid}"))? {
                        t.write(
                            &domain_path(domid, "memory/memory-offset"),
                            &offset.to_string(),
                        )?;
                        if let Some(o) = at_boot {
                            t.write(&domain_path(domid, OFFSET_AT_BOOT), &o.to_string())?;
                        }
                    }
                }
                Ok(())
            })?;
        }

        if self.config.claim_transferred_reservations {
            // A booted domain's builder is done: what its claim still holds goes back to the
            // host (with this setting on, the claims are ours).
            for &domid in &just_booted_with_claim {
                match hv.claim_pages(domid, 0) {
                    Ok(()) => debug!("domain {domid} has booted: cancelled its claim"),
                    Err(e) => warn!("cannot cancel the claim of domain {domid}: {e}"),
                }
            }
        }

        // Host free memory is read only now, after every domain's allocation and keys. Domain
        // builders do not take the host lock, so memory can move from free to a domain at any
        // moment of this look: read in this order, such memory is counted twice (still owed by
        // the domain and no longer free), which is safe. Read the other way round it would be
        // counted as free and as no longer owed, and could be promised to someone else.
        let mut phys = hv.physinfo()?;
        // A domain builder claims the new domain's memory (libxl does, with claim_mode on) at
        // the start of its build, which may fall inside this look: then Xen's outstanding pages
        // hold the claim, but the domain's outstanding pages read at the start did not, and
        // the same memory counts twice, as claimed and as initial reservation still owed (a
        // whole VM's memory, for one look: enough for a balance to shrink every guest to its
        // minimum). So the claims of domains counted at their initial reservation are read
        // again, between two reads of Xen's total that agree (at most a few tries, each a
        // couple of hypercalls; failing that, the safe double count stays).
        //
        // The same read tells whether such a domain allocated memory during the look: then
        // Xen's free pages (read last) no longer hold it while what the domain is owed (read
        // first) still does, which is safe for reservations but understates what is free, by
        // up to a whole VM; the look says so (`in_flux`) and rounds do not shrink guests on it.
        let mut in_flux = false;
        if !unborn.is_empty() {
            let mut again = Vec::new();
            let mut steady = false;
            for _ in 0..CLAIM_RE_READS {
                again = hv.domains()?;
                let after = hv.physinfo()?;
                steady = after.outstanding_pages == phys.outstanding_pages;
                phys = after;
                if steady {
                    break;
                }
            }
            for &(i, counted, tot) in &unborn {
                let view = &mut views[i];
                let Some(now) = again.iter().find(|d| d.domid == view.domid) else {
                    in_flux = true;
                    continue;
                };
                in_flux |= now.tot_pages != tot;
                if !steady {
                    continue;
                }
                let claim = pages::to_kib(now.outstanding_pages)?;
                // Only a claim that grew: one that shrank was used to build the domain, and
                // its pages are counted as the domain's from the first read.
                let cut = (claim - counted).clamp(0, view.unallocated_reservation_kib);
                if cut > 0 {
                    debug!(
                        "domain {}: claimed {claim} KiB during the look; counting it once",
                        view.domid
                    );
                    view.unallocated_reservation_kib -= cut;
                    unallocated_total -= cut;
                }
            }
            if in_flux {
                debug!("a domain being built allocated memory during the look");
            }
        }
        let reserved = reservations::unbacked_kib(&ledger, &alive)?;
        let page_kib = |p: u64| pages::to_kib(p);
        let xen_free = page_kib(phys.free_pages)?;
        let scrub = page_kib(phys.scrub_pages)?;
        let outstanding = page_kib(phys.outstanding_pages)?;
        let dying = kib::sum(
            infos
                .iter()
                .filter(|d| d.dying && d.domid != 0)
                .map(|d| page_kib(d.tot_pages))
                .collect::<Result<Vec<Kib>>>()?,
            "memory of dying domains",
        )?;
        let free = kib::sub(
            kib::add(xen_free, scrub, "host free memory")?,
            kib::sum(
                [outstanding, shared_total, reserved, unallocated_total],
                "reserved memory",
            )?,
            "host free memory",
        )?
        .max(-MAX_KIB);
        self.known = known;
        let domains: Vec<Domain> = views.iter().filter_map(|v| v.domain).collect();
        let host = Host::new(domains, free)?;

        let now = clock.now();
        self.update_cooperation(&host, &mut views, now)?;
        self.lower_maxmem_toward_target(&host)?;

        let view = HostView {
            total_kib: page_kib(phys.total_pages)?,
            xen_free_kib: xen_free,
            scrub_kib: scrub,
            outstanding_kib: outstanding,
            shared_kib: shared_total,
            reserved_kib: reserved,
            unallocated_initial_kib: unallocated_total,
            free_kib: free,
            dying_kib: dying,
            in_flux,
            scrubbing: phys.scrub_pages >= SCRUBBING_PAGES,
            domains: views,
            reservations: ledger,
            invalid_entries: invalid,
            time: now,
            offset_drifts: drifts,
            offset_drifts_total: self.drifts_total,
            recent_offset_drifts: self.recent_drifts.iter().cloned().collect(),
            host,
        };
        debug!(
            "host: F{} S{} D{} O{} H{} R{} U{} T{} -> free {} KiB",
            view.xen_free_kib,
            view.scrub_kib,
            view.dying_kib,
            view.outstanding_kib,
            view.shared_kib,
            view.reserved_kib,
            view.unallocated_initial_kib,
            view.total_kib,
            view.free_kib
        );
        self.last_view = Some(view.clone());
        Ok(view)
    }

    /// The view of one domain; the unallocated part of its initial reservation; and its newly
    /// calibrated offset, when it has just booted.
    fn domain_view(&self, info: &DomainInfo, k: &Keys) -> Result<(DomainView, Kib, Option<Kib>)> {
        let hv = &self.platform.hypervisor;
        let domid = info.domid;
        let domain_type = DomainType::parse(k.domain_type.as_deref(), info.hvm);
        let mut view = DomainView {
            domid,
            domain_type,
            booted: k.feature_balloon || k.data_updated,
            can_balloon: k.feature_balloon,
            offset_kib: 0,
            initial_reservation_kib: None,
            unallocated_reservation_kib: 0,
            uncooperative: k.uncooperative,
            shared_kib: 0,
            drift_suspect: false,
            domain: None,
            skipped: None,
            weight_error: None,
        };
        let skip = |mut view: DomainView, why: String| {
            debug!("not balancing domain {domid}: {why}");
            view.skipped = Some(why);
            Ok((view, 0, None))
        };
        if !k.exists {
            return skip(view, "no store directory".into());
        }
        // A shared page left the domain's allocation but is still its memory: breaking the
        // share allocates it again.
        let shared = pages::to_kib(info.shared_pages)?;
        view.shared_kib = shared;
        let actual = kib::add(pages::to_kib(info.tot_pages)?, shared, "domain memory")?;
        let shadow = if domain_type == DomainType::Pv {
            0
        } else {
            // Best effort, as squeezed: a domain without shadow memory reports an error.
            hv.shadow_allocation_mib(domid)
                .ok()
                .and_then(|m| i64::try_from(m).ok()?.checked_mul(1024))
                .unwrap_or(0)
        };
        let memory_max = if domid == 0 {
            // squeezed never caps domain 0 through maxmem.
            0
        } else {
            (pages::to_kib(info.max_pages)? - domain_type.xen_max_offset_kib()).max(0)
        };

        if !view.booted {
            let Some(ir) = k.initial_reservation.as_deref() else {
                return skip(view, "not booted and no initial reservation".into());
            };
            let ir = match parse_kib("initial-reservation", ir) {
                Ok(v) if kib::check_size("initial reservation", v).is_ok() => v,
                Ok(v) => return skip(view, format!("initial-reservation {v} is out of range")),
                Err(e) => return skip(view, e),
            };
            let claimed = pages::to_kib(info.outstanding_pages)?;
            let unallocated = (ir - actual - shadow - claimed).max(0);
            view.initial_reservation_kib = Some(ir);
            view.unallocated_reservation_kib = unallocated;
            let d = Domain::new(
                domid,
                false,
                memory_max,
                memory_max,
                memory_max,
                memory_max,
                memory_max,
                DEFAULT_INACCURACY_KIB,
            );
            if let Err(e) = d.validate() {
                return skip(view, e.to_string());
            }
            view.domain = Some(d);
            return Ok((view, unallocated, None));
        }

        let Some(target) = k.target.as_deref() else {
            return skip(view, "booted but has no memory/target".into());
        };
        let target = match parse_kib("target", target) {
            Ok(t) => t,
            Err(e) => return skip(view, e),
        };
        let (offset, calibrated) = match k
            .memory_offset
            .as_deref()
            .map(|o| parse_kib("memory-offset", o))
        {
            Some(Ok(o)) => (o, None),
            Some(Err(e)) => return skip(view, e),
            None => {
                // Resample the allocation now that the driver is known to be up: the sample
                // above was taken before the store was read.
                let now_actual = match hv.domain(domid)? {
                    Some(i) => kib::add(
                        pages::to_kib(i.tot_pages)?,
                        pages::to_kib(i.shared_pages)?,
                        "domain memory",
                    )?,
                    None => return skip(view, "vanished".into()),
                };
                let offset = now_actual - target;
                info!(
                    "domain {domid} has just {}; calibrating memory-offset = {offset} KiB",
                    match (k.feature_balloon, k.data_updated) {
                        (true, false) => "advertised a balloon driver",
                        (true, true) => "started an agent and advertised a balloon driver",
                        _ => "started an agent (but has no balloon driver)",
                    }
                );
                (offset, Some(offset))
            }
        };
        view.offset_kib = offset;
        let (min, max) = match (k.dynamic_min.as_deref(), k.dynamic_max.as_deref()) {
            (Some(a), Some(b)) => {
                match (parse_kib("dynamic-min", a), parse_kib("dynamic-max", b)) {
                    (Ok(a), Ok(b)) => (a, b),
                    // Written separately by the toolstack; until both are sane, pin to the target.
                    _ => (target, target),
                }
            }
            _ => (target, target),
        };
        let d = Domain::new(
            domid,
            k.feature_balloon,
            min,
            target,
            max,
            actual - offset,
            memory_max,
            DEFAULT_INACCURACY_KIB,
        );
        if let Err(e) = d.validate() {
            return skip(view, e.to_string());
        }
        let d = match k.weight.as_deref().map(|w| {
            w.trim()
                .parse::<f64>()
                .map_err(|_| format!("memory/weight {w:?} is not a number"))
                .and_then(|v| d.with_weight(v).map_err(|e| e.to_string()))
        }) {
            None => d,
            Some(Ok(weighted)) => weighted,
            Some(Err(why)) => {
                debug!("domain {domid}: ignoring its weight: {why}");
                view.weight_error = Some(why);
                d
            }
        };
        view.domain = Some(d);
        Ok((view, 0, calibrated))
    }

    /// Follows a booted domain's target and allocation across looks; when it has drifted off
    /// a target it had reached and has held still for the window, re-estimates its offset
    /// (correcting `view`) and returns the correction.
    fn track_quiet(&mut self, view: &mut DomainView, now: f64) -> Option<OffsetDrift> {
        let domid = view.domid;
        let Some(d) = view
            .domain
            .as_mut()
            .filter(|d| view.booted && d.can_balloon)
        else {
            self.quiet.remove(&domid);
            return None;
        };
        let at_target = d.has_hit_target();
        let held = d.memory_actual_kib + view.offset_kib;
        let fresh = Quiet {
            target_kib: d.target_kib,
            held_kib: held,
            since: now,
            looks: 0,
            reached: false,
        };
        let q = self.quiet.entry(domid).or_insert(fresh);
        if q.target_kib != d.target_kib {
            *q = fresh;
        } else if q.held_kib != held {
            // Still moving (or just moved): the window starts again.
            q.held_kib = held;
            q.since = now;
            q.looks = 0;
        }
        q.looks += 1;
        q.reached |= at_target;
        view.drift_suspect = q.reached && !at_target;
        if !view.drift_suspect
            || q.looks < self.config.drift_window_looks
            || now - q.since < self.config.drift_window_s
        {
            return None;
        }
        let held_for = now - q.since;
        let old = view.offset_kib;
        let new = old + (d.memory_actual_kib - d.target_kib);
        d.memory_actual_kib = d.target_kib;
        view.offset_kib = new;
        view.drift_suspect = false;
        q.since = now;
        q.looks = 1;
        info!(
            "domain {domid} has held {} KiB off its unchanged target for {:.0} s: \
             memory-offset drifted from {old} KiB to {new} KiB",
            new - old,
            held_for
        );
        let drift = OffsetDrift {
            domid,
            time: now,
            old_offset_kib: old,
            new_offset_kib: new,
        };
        self.drifts_total += 1;
        if self.recent_drifts.len() == RECENT_DRIFTS {
            self.recent_drifts.pop_front();
        }
        self.recent_drifts.push_back(drift.clone());
        Some(drift)
    }

    fn update_cooperation(
        &mut self,
        host: &Host,
        views: &mut [DomainView],
        now: f64,
    ) -> Result<()> {
        self.last_cooperative
            .retain(|domid, _| host.domain(*domid).is_some());
        let suspects: Vec<DomId> = views
            .iter()
            .filter(|v| v.drift_suspect)
            .map(|v| v.domid)
            .collect();
        for d in host.domains() {
            let entry = self.last_cooperative.entry(d.domid).or_insert(now);
            // A drift suspect was not asked to move: it is not refusing anything.
            if !d.can_balloon || d.has_hit_target() || suspects.contains(&d.domid) {
                *entry = now;
            }
        }
        self.judged.retain(|domid, _| host.domain(*domid).is_some());
        let mut changes: Vec<(DomId, bool)> = Vec::new();
        for v in views.iter_mut() {
            let flag = if self.judged_by_squeezer {
                self.judged.get(&v.domid).copied()
            } else {
                self.last_cooperative
                    .get(&v.domid)
                    .map(|&last| now - last > self.config.uncooperative_after_s)
            };
            if let Some(flag) = flag.filter(|&f| f != v.uncooperative) {
                changes.push((v.domid, flag));
                v.uncooperative = flag;
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        if !self.judged_by_squeezer {
            for &(domid, flag) in &changes {
                if flag {
                    warn!("domain {domid} has not reached its balloon target for {} s: flagging it uncooperative", self.config.uncooperative_after_s);
                } else {
                    info!("domain {domid} is cooperating again");
                }
            }
        }
        self.write_flags(&changes)
    }

    /// Sets or removes `memory/uncooperative` of each domain listed.
    fn write_flags(&mut self, changes: &[(DomId, bool)]) -> Result<()> {
        self.platform.store.transaction(&mut |t| {
            for &(domid, flag) in changes {
                if !t.exists(&format!("/local/domain/{domid}"))? {
                    continue;
                }
                let path = domain_path(domid, "memory/uncooperative");
                if flag {
                    t.write(&path, "")?;
                } else {
                    t.rm(&path)?;
                }
            }
            Ok(())
        })
    }

    /// Lowering maxmem toward the target is always safe; it catches domains a toolstack built
    /// with maxmem at static-max and a lower target.
    fn lower_maxmem_toward_target(&mut self, host: &Host) -> Result<()> {
        for d in host.domains() {
            if d.can_balloon && d.target_kib < d.memory_max_kib {
                self.set_maxmem_for_target(d.domid, d.target_kib)?;
            }
        }
        Ok(())
    }

    /// What the last look learnt about `domid`, or a fresh read when it did not see it.
    fn known(&mut self, domid: DomId) -> Result<Option<Known>> {
        if let Some(k) = self.known.get(&domid) {
            return Ok(Some(*k));
        }
        let Some(info) = self.platform.hypervisor.domain(domid)? else {
            return Ok(None);
        };
        let mut keys = Keys::default();
        self.platform.store.transaction(&mut |t| {
            keys = read_keys(t, domid)?;
            Ok(())
        })?;
        let k = Known::new(&info, &keys, None, None)?;
        self.known.insert(domid, k);
        Ok(Some(k))
    }

    /// Sets maxmem so the guest can hold `target_kib` plus its offset (and Xen's extra), the
    /// offset being at most the one measured at boot.
    fn set_maxmem_for_target(&mut self, domid: DomId, target_kib: Kib) -> Result<()> {
        let Some(k) = self.known(domid)? else {
            return Ok(());
        };
        let maxmem = kib::add(
            kib::add(k.domain_type.xen_max_offset_kib(), target_kib, "maxmem")?,
            k.allowed_offset_kib,
            "maxmem",
        )?
        .max(0);
        if k.xen_max_kib != maxmem {
            debug!(
                "setmaxmem domain {domid} to {maxmem} KiB (was {} KiB)",
                k.xen_max_kib
            );
            match self.platform.hypervisor.set_maxmem_kib(domid, maxmem) {
                Ok(()) => {
                    if let Some(k) = self.known.get_mut(&domid) {
                        k.xen_max_kib = maxmem;
                    }
                }
                // The domain may have gone meanwhile: nothing to do then.
                Err(e) if self.platform.hypervisor.domain(domid)?.is_none() => {
                    debug!("domain {domid} vanished while setting maxmem: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes domain 0's balloon policy so it can be managed: dynamic-min, dynamic-max (by
    /// default what domain 0 holds now, or what an earlier run recorded), a target when it has
    /// none, and `control/feature-balloon`.
    pub fn configure_domain_zero(
        &mut self,
        dynamic_min_kib: Kib,
        dynamic_max_kib: Option<Kib>,
    ) -> Result<()> {
        kib::check_size("domain 0 dynamic-min", dynamic_min_kib)?;
        if let Some(m) = dynamic_max_kib {
            kib::check_size("domain 0 dynamic-max", m)?;
        }
        let dom0 = self
            .platform
            .hypervisor
            .domain(0)?
            .ok_or_else(|| Error::Backend("the hypervisor reports no domain 0".into()))?;
        let current = pages::to_kib(dom0.tot_pages)?;
        self.platform.store.transaction(&mut |t| {
            let recorded = t
                .read(&domain_path(0, "memory/dynamic-max"))?
                .and_then(|v| v.trim().parse::<Kib>().ok());
            let max = dynamic_max_kib.or(recorded).unwrap_or(current);
            if dynamic_min_kib > max {
                return Err(Error::InvalidMemoryValue(format!(
                    "domain 0 dynamic-min {dynamic_min_kib} KiB is above dynamic-max {max} KiB"
                )));
            }
            t.write(
                &domain_path(0, "memory/dynamic-min"),
                &dynamic_min_kib.to_string(),
            )?;
            t.write(&domain_path(0, "memory/dynamic-max"), &max.to_string())?;
            if !t.exists(&domain_path(0, "memory/target"))? {
                t.write(&domain_path(0, "memory/target"), &max.to_string())?;
            }
            t.write(&domain_path(0, "control/feature-balloon"), "1")
        })
    }
}

impl Io for HostModel {
    fn make_host(&mut self) -> Result<Host> {
        Ok(self.view()?.host)
    }

    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> Result<()> {
        // squeezed routes maxmem through the same path as a target change.
        self.execute_action(Action {
            domid,
            new_target_kib: kib,
        })
    }

    fn execute_action(&mut self, action: Action) -> Result<()> {
        let Action {
            domid,
            new_target_kib: target,
        } = action;
        kib::check_size("balloon target", target)?;
        let Some(k) = self.known(domid)? else {
            debug!("domain {domid} vanished before its target could be set");
            return Ok(());
        };
        let maxmem = (k.xen_max_kib - k.domain_type.xen_max_offset_kib()).max(0);
        let write_target = |model: &mut HostModel| -> Result<()> {
            if k.target_kib == Some(target) {
                return Ok(());
            }
            model.platform.store.transaction(&mut |t| {
                if t.exists(&format!("/local/domain/{domid}"))? {
                    t.write(&domain_path(domid, "memory/target"), &target.to_string())?;
                }
                Ok(())
            })?;
            if let Some(k) = model.known.get_mut(&domid) {
                k.target_kib = Some(target);
            }
            Ok(())
        };
        // Only a domain with a balloon driver gets a target: writing one into a domain being
        // built would spoil its offset calibration.
        if target > maxmem {
            // Raise the cap first, so the driver never sees a target it may not reach.
            self.set_maxmem_for_target(domid, target)?;
            if k.can_balloon {
                write_target(self)?;
            }
        } else if k.can_balloon {
            // Lower the target first, so the cap never cuts under what the guest holds.
            write_target(self)?;
            self.set_maxmem_for_target(domid, target)?;
        }
        Ok(())
    }

    fn wait(&mut self, seconds: f64) -> Result<()> {
        self.platform.clock.sleep(seconds);
        Ok(())
    }

    fn now(&mut self) -> Result<f64> {
        Ok(self.platform.clock.now())
    }

    fn target_host_free_mem_kib(&self) -> Kib {
        self.config.slush_kib
    }

    fn free_memory_tolerance_kib(&self) -> Kib {
        self.config.free_memory_tolerance_kib
    }
}
