//! The host model: turns what the platform reports, plus the reservation ledger, into the
//! squeezer's [`Host`], and carries the squeezer's decisions back out. It behaves as squeezed's
//! Xen layer does:
//!
//! - A domain's keys live under `/local/domain/<domid>/`: `memory/{target, dynamic-min,
//!   dynamic-max, initial-reservation, memory-offset, uncooperative}`, `control/feature-balloon`
//!   (its balloon driver is up) and `data/updated` (its agent is up).
//! - A domain that shows a balloon driver or an agent has **booted**. The first time that is
//!   seen, the offset between its allocation and its target is measured and stored in
//!   `memory/memory-offset`; from then on its actual memory is its allocation minus that offset.
//! - A domain that has not booted is counted at its initial reservation: the part not yet
//!   allocated (net of its shadow allocation and its outstanding claim) is taken off host free
//!   memory, and the domain is presented as fixed at its maxmem. A domain with no initial
//!   reservation and no driver is not the balancer's (it is accounted by what it holds).
//! - Host free memory is Xen's free and to-be-scrubbed pages, minus outstanding claims, minus
//!   the ledger's unbacked reservations, minus the unallocated part of initial reservations.
//! - maxmem follows the target (`target + offset`, plus 1 MiB for HVM-like domains), set before
//!   the target when raising and after it when lowering; a ballooning domain whose maxmem is
//!   above its target has it lowered.
//! - A domain that has not been at its target for 20 s gets `memory/uncooperative`.
//! - Domain 0 is left alone unless managed; dying and shut-down domains are not balanced.
//! - Transferred reservations whose domain has died are released.

use std::collections::{BTreeMap, HashMap};

use log::{debug, info, warn};

use crate::driver::Io;
use crate::error::{Error, Result};
use crate::model::{kib, Action, DomId, Domain, Host, Kib, DEFAULT_INACCURACY_KIB, MAX_KIB};
use crate::platform::{pages, DomainInfo, Platform, StoreOps};
use crate::reservations::{self, InvalidEntry, Layout, Reservation};

/// squeezed's slush: Xen's low-memory emergency pool (64 MiB) plus 8 MiB for the "ordinary"
/// memory domain creation takes.
pub const DEFAULT_SLUSH_KIB: Kib = (64 << 10) + (8 << 10);

/// How close to the slush counts as balanced (squeezed's value).
pub const DEFAULT_FREE_MEMORY_TOLERANCE_KIB: Kib = 512;

/// Seconds away from its target after which a domain is flagged uncooperative.
pub const DEFAULT_UNCOOPERATIVE_AFTER_S: f64 = 20.0;

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
    /// Longest time to wait for Xen's scrubber before counting pages to scrub as free.
    pub scrub_wait_s: f64,
    /// Where the reservation ledger lives in the store.
    pub layout: Layout,
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
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "{name} = {v} is not a duration"
                )));
            }
        }
        Ok(())
    }
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
    /// What the squeezer sees; `None` when the domain is not balanced (see `skipped`).
    #[serde(serialize_with = "serialize_domain")]
    pub domain: Option<Domain>,
    /// Why the domain is not balanced, when it is not.
    pub skipped: Option<String>,
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
    /// Reservations not backed by a live domain, in KiB.
    pub reserved_kib: Kib,
    /// Unallocated parts of initial reservations of domains that have not booted, in KiB.
    pub unallocated_initial_kib: Kib,
    /// Host free memory as the squeezer sees it, in KiB.
    pub free_kib: Kib,
    /// Every domain looked at.
    pub domains: Vec<DomainView>,
    /// The ledger.
    pub reservations: Vec<Reservation>,
    /// Ledger entries that could not be read.
    pub invalid_entries: Vec<InvalidEntry>,
    /// The time of the look.
    pub time: f64,
    /// What the squeezer gets.
    #[serde(skip)]
    pub host: Host,
}

/// Keys read for one domain, in one transaction.
#[derive(Debug, Default)]
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
    uncooperative: bool,
}

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
        uncooperative: t.exists(&k("memory/uncooperative"))?,
    })
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
}

/// Per-domain facts the actions need.
#[derive(Debug, Clone, Copy)]
struct Known {
    xen_max_kib: Kib,
    domain_type: DomainType,
    offset_kib: Kib,
    can_balloon: bool,
    target_kib: Option<Kib>,
}

impl Known {
    fn new(info: &DomainInfo, k: &Keys, calibrated: Option<Kib>) -> Result<Self> {
        Ok(Known {
            xen_max_kib: pages::to_kib(info.max_pages)?,
            domain_type: DomainType::parse(k.domain_type.as_deref(), info.hvm),
            offset_kib: calibrated
                .or_else(|| {
                    k.memory_offset
                        .as_deref()
                        .and_then(|o| o.trim().parse().ok())
                })
                .unwrap_or(0),
            can_balloon: k.feature_balloon,
            target_kib: k.target.as_deref().and_then(|t| t.trim().parse().ok()),
        })
    }
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
    pub fn new(platform: Platform, config: HostConfig) -> Result<Self> {
        config.validate()?;
        Ok(HostModel {
            platform,
            config,
            last_cooperative: HashMap::new(),
            last_view: None,
            known: HashMap::new(),
        })
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

    fn alive(info: &[DomainInfo]) -> impl Fn(DomId) -> bool + '_ {
        move |domid| info.iter().any(|d| d.domid == domid && !d.dying)
    }

    /// Looks at the host afresh: reads the hypervisor and the store, calibrates offsets of
    /// newly booted domains, updates uncooperative flags, lowers maxmem toward target, releases
    /// reservations of dead domains, and builds the squeezer's [`Host`].
    ///
    /// It writes to the store and the hypervisor, so it belongs under the host-wide lock, as
    /// [`crate::service::Service`] calls it.
    pub fn view(&mut self) -> Result<HostView> {
        let hv = self.platform.hypervisor.clone();
        let store = self.platform.store.clone();
        let clock = self.platform.clock.clone();

        // Let the scrubber finish so targets are not moved just because it is slow.
        let started = clock.now();
        while hv.physinfo()?.scrub_pages >= 1024 && clock.now() - started < self.config.scrub_wait_s
        {
            clock.sleep(0.25);
        }

        let infos = hv.domains()?;
        let alive = Self::alive(&infos);
        let candidates: Vec<DomainInfo> = infos
            .iter()
            .copied()
            .filter(|d| d.domid != 0 || self.config.manage_domain_zero)
            .filter(|d| !d.dying && !d.shutdown)
            .collect();

        // Release reservations of dead domains, then read the ledger and every domain's keys
        // in one transaction, for a consistent picture.
        let layout = self.config.layout.clone();
        let mut keys: BTreeMap<DomId, Keys> = BTreeMap::new();
        let mut ledger = (Vec::new(), Vec::new());
        let mut released = Vec::new();
        store.transaction(&mut |t| {
            released = reservations::release_dead(t, &layout, &alive)?;
            ledger = reservations::list(t, &layout)?;
            keys.clear();
            for d in &candidates {
                keys.insert(d.domid, read_keys(t, d.domid)?);
            }
            Ok(())
        })?;
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

        let mut views = Vec::new();
        let mut known = HashMap::new();
        let mut unallocated_total: Kib = 0;
        let mut offsets_to_write: Vec<(DomId, Kib)> = Vec::new();
        for info in &candidates {
            let k = &keys[&info.domid];
            let (view, unallocated, calibrated) = self.domain_view(info, k)?;
            known.insert(info.domid, Known::new(info, k, calibrated)?);
            if let Some(offset) = calibrated {
                offsets_to_write.push((info.domid, offset));
            }
            unallocated_total = kib::add(unallocated_total, unallocated, "initial reservations")?;
            views.push(view);
        }

        if !offsets_to_write.is_empty() {
            store.transaction(&mut |t| {
                for &(domid, offset) in &offsets_to_write {
                    // Never recreate the directory of a domain destroyed meanwhile.
                    if t.exists(&format!("/local/domain/{domid}"))? {
                        t.write(
                            &domain_path(domid, "memory/memory-offset"),
                            &offset.to_string(),
                        )?;
                    }
                }
                Ok(())
            })?;
        }

        // Host free memory is read only now, after every domain's allocation and keys. Domain
        // builders do not take the host lock, so memory can move from free to a domain at any
        // moment of this look: read in this order, such memory is counted twice (still owed by
        // the domain and no longer free), which is safe. Read the other way round it would be
        // counted as free and as no longer owed, and could be promised to someone else.
        let phys = hv.physinfo()?;
        let reserved = reservations::unbacked_kib(&ledger, &alive)?;
        let page_kib = |p: u64| pages::to_kib(p);
        let xen_free = page_kib(phys.free_pages)?;
        let scrub = page_kib(phys.scrub_pages)?;
        let outstanding = page_kib(phys.outstanding_pages)?;
        let free = kib::sub(
            kib::add(xen_free, scrub, "host free memory")?,
            kib::sum(
                [outstanding, reserved, unallocated_total],
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
            reserved_kib: reserved,
            unallocated_initial_kib: unallocated_total,
            free_kib: free,
            domains: views,
            reservations: ledger,
            invalid_entries: invalid,
            time: now,
            host,
        };
        debug!(
            "host: F{} S{} O{} R{} U{} T{} -> free {} KiB",
            view.xen_free_kib,
            view.scrub_kib,
            view.outstanding_kib,
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
            domain: None,
            skipped: None,
        };
        let skip = |mut view: DomainView, why: String| {
            debug!("not balancing domain {domid}: {why}");
            view.skipped = Some(why);
            Ok((view, 0, None))
        };
        if !k.exists {
            return skip(view, "no store directory".into());
        }
        let actual = pages::to_kib(info.tot_pages)?;
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
                    Some(i) => pages::to_kib(i.tot_pages)?,
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
        view.domain = Some(d);
        Ok((view, 0, calibrated))
    }

    fn update_cooperation(
        &mut self,
        host: &Host,
        views: &mut [DomainView],
        now: f64,
    ) -> Result<()> {
        self.last_cooperative
            .retain(|domid, _| host.domain(*domid).is_some());
        for d in host.domains() {
            let entry = self.last_cooperative.entry(d.domid).or_insert(now);
            if !d.can_balloon || d.has_hit_target() {
                *entry = now;
            }
        }
        let mut changes: Vec<(DomId, bool)> = Vec::new();
        for v in views.iter_mut() {
            if let Some(&last) = self.last_cooperative.get(&v.domid) {
                let flag = now - last > self.config.uncooperative_after_s;
                if flag != v.uncooperative {
                    changes.push((v.domid, flag));
                    v.uncooperative = flag;
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        for &(domid, flag) in &changes {
            if flag {
                warn!("domain {domid} has not reached its balloon target for {} s: flagging it uncooperative", self.config.uncooperative_after_s);
            } else {
                info!("domain {domid} is cooperating again");
            }
        }
        self.platform.store.transaction(&mut |t| {
            for &(domid, flag) in &changes {
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
        let k = Known::new(&info, &keys, None)?;
        self.known.insert(domid, k);
        Ok(Some(k))
    }

    /// Sets maxmem so the guest can hold `target_kib` plus its offset (and Xen's extra).
    fn set_maxmem_for_target(&mut self, domid: DomId, target_kib: Kib) -> Result<()> {
        let Some(k) = self.known(domid)? else {
            return Ok(());
        };
        let maxmem = kib::add(
            kib::add(k.domain_type.xen_max_offset_kib(), target_kib, "maxmem")?,
            k.offset_kib,
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
