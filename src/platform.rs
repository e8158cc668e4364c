//! What a host offers the memory service, and nothing more: a view of the hypervisor, a store
//! with xenstore's semantics, and a clock.
//!
//! These traits are the only seams between the service and Xen. The Xen backend implements them
//! over libxenctrl and xenstored; [`crate::backend::fake`] implements them for tests, shared
//! between processes.
//!
//! The hypervisor speaks in 4 KiB pages and the rest of the library in KiB; [`pages`] is the one
//! place that converts.

use crate::error::Result;
use crate::model::{DomId, Kib};

/// Page arithmetic: the hypervisor counts 4 KiB pages, everything else counts KiB.
pub mod pages {
    use crate::error::{Error, Result};
    use crate::model::{Kib, MAX_KIB};

    /// KiB in one page.
    pub const PAGE_KIB: Kib = 4;

    /// The KiB in `pages` pages. Page counts beyond [`MAX_KIB`] are a corrupted value.
    pub fn to_kib(pages: u64) -> Result<Kib> {
        i64::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_KIB))
            .filter(|&k| k <= MAX_KIB)
            .ok_or_else(|| {
                Error::InvalidMemoryValue(format!("{pages} pages is beyond any real host"))
            })
    }

    /// `kib` rounded up to whole pages: what a domain of `kib` KiB is built with.
    pub fn round_up_kib(kib: Kib) -> Kib {
        kib.div_euclid(PAGE_KIB) * PAGE_KIB + if kib % PAGE_KIB == 0 { 0 } else { PAGE_KIB }
    }

    /// `kib` rounded down to whole pages.
    pub fn round_down_kib(kib: Kib) -> Kib {
        kib.div_euclid(PAGE_KIB) * PAGE_KIB
    }

    /// The pages needed to hold `kib` KiB, rounding up. Negative sizes are refused.
    pub fn from_kib(kib: Kib) -> Result<u64> {
        if kib < 0 {
            return Err(Error::InvalidMemoryValue(format!(
                "cannot convert {kib} KiB to pages"
            )));
        }
        Ok(((kib + PAGE_KIB - 1) / PAGE_KIB) as u64)
    }
}

/// One domain as the hypervisor reports it (`xc_domain_getinfolist`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: DomId,
    /// Pages the domain has allocated (`tot_pages`).
    pub tot_pages: u64,
    /// The domain's allocation limit (`max_pages`).
    pub max_pages: u64,
    /// Pages claimed for the domain and not yet allocated (`outstanding_pages`).
    pub outstanding_pages: u64,
    /// Pages shared with other domains (`shr_pages`).
    pub shared_pages: u64,
    /// The domain is being destroyed.
    pub dying: bool,
    /// The domain has shut down (and waits for the toolstack to destroy or restart it).
    pub shutdown: bool,
    /// The domain is paused.
    pub paused: bool,
    /// The domain is a hardware-virtualised guest (its shadow allocation counts as memory).
    pub hvm: bool,
}

/// Host-wide memory figures (`xc_physinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PhysInfo {
    /// All pages of the host.
    pub total_pages: u64,
    /// Pages free now.
    pub free_pages: u64,
    /// Freed pages still waiting to be scrubbed (free once scrubbed).
    pub scrub_pages: u64,
    /// Pages promised to domains by claims and not yet allocated.
    pub outstanding_pages: u64,
}

/// The hypervisor, as far as memory goes.
///
/// Calls may fail with [`crate::Error::Backend`]; a domain that disappears between two calls is
/// normal (domains are created and destroyed around the service all the time).
pub trait Hypervisor: Send + Sync {
    /// Every domain the hypervisor knows, including dying ones.
    fn domains(&self) -> Result<Vec<DomainInfo>>;
    /// One domain, or `None` when it does not exist.
    fn domain(&self, domid: DomId) -> Result<Option<DomainInfo>>;
    /// Host-wide memory figures.
    fn physinfo(&self) -> Result<PhysInfo>;
    /// The shadow (paging) allocation of a domain, in MiB, as Xen reports it.
    fn shadow_allocation_mib(&self, domid: DomId) -> Result<u64>;
    /// Sets the allocation limit of a domain, in KiB (`xc_domain_setmaxmem` takes KiB).
    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> Result<()>;
    /// Claims `pages` for a domain so no other allocation can take them (0 cancels the claim).
    /// `pages` is what the domain may still allocate beyond what it holds, as reported back in
    /// `outstanding_pages`; Xen's `XENMEM_claim_pages` takes the total, so a Xen backend adds
    /// the domain's `tot_pages`.
    fn claim_pages(&self, domid: DomId, pages: u64) -> Result<()>;
}

/// Operations on a store with xenstore's semantics.
///
/// Paths are absolute, `/`-separated. A node may hold a value and children at the same time;
/// writing a node creates its missing parents with empty values; removing a node removes its
/// subtree. Reading or listing a missing node is not an error: it gives `None` or nothing.
pub trait StoreOps {
    /// The value at `path`, or `None` when there is no such node.
    fn read(&mut self, path: &str) -> Result<Option<String>>;
    /// Writes `value` at `path`, creating parents as needed.
    fn write(&mut self, path: &str, value: &str) -> Result<()>;
    /// Removes `path` and everything under it; a missing node is not an error.
    fn rm(&mut self, path: &str) -> Result<()>;
    /// The names of the children of `path` (empty when it has none or does not exist).
    fn directory(&mut self, path: &str) -> Result<Vec<String>>;
    /// Whether a node exists at `path`.
    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.read(path)?.is_some())
    }
}

/// A store shared with other processes (xenstored, or the fake).
pub trait Store: Send + Sync {
    /// Runs `body` as one transaction: either everything it wrote is committed together, or
    /// nothing is. A store with optimistic transactions may run `body` more than once (after a
    /// conflict), so `body` must not have effects outside the store. An error from `body`
    /// aborts the transaction and is returned.
    fn transaction(&self, body: &mut dyn FnMut(&mut dyn StoreOps) -> Result<()>) -> Result<()>;

    /// Starts watching `path` and its subtree.
    fn watch(&self, path: &str) -> Result<Box<dyn Watch>>;

    /// The value at `path`, read outside any transaction.
    fn read(&self, path: &str) -> Result<Option<String>> {
        let mut out = None;
        self.transaction(&mut |t| {
            out = t.read(path)?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes `value` at `path` outside any transaction.
    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.transaction(&mut |t| t.write(path, value))
    }

    /// Removes `path` and its subtree outside any transaction.
    fn rm(&self, path: &str) -> Result<()> {
        self.transaction(&mut |t| t.rm(path))
    }

    /// The children of `path`, read outside any transaction.
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.transaction(&mut |t| {
            out = t.directory(path)?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether `path` exists, read outside any transaction.
    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.read(path)?.is_some())
    }

    /// Requests sent to the store so far by this process through this store and its watches,
    /// counted as xenstored counts them (a transaction is a start, its operations and an end),
    /// or `None` when the store does not count.
    fn requests(&self) -> Option<u64> {
        None
    }
}

/// The special watch path xenstored fires when a domain is introduced to it.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";

/// The special watch path xenstored fires when a domain has shut down, died or been released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A watch on a subtree of a [`Store`], polled by its owner.
pub trait Watch: Send {
    /// The paths under the watched subtree that changed since the last poll (or since the watch
    /// was set). When the store lost track of individual changes it reports the watched path
    /// itself, meaning "something under here changed".
    fn poll(&mut self) -> Result<Vec<String>>;

    /// Also watches `path` (and its subtree, or one of the special paths [`INTRODUCE_DOMAIN`]
    /// and [`RELEASE_DOMAIN`]) through this watch. A store whose watches cannot grow says
    /// [`crate::Error::Unsupported`], and its users fall back to reading what they need.
    fn add(&mut self, path: &str) -> Result<()> {
        Err(crate::Error::Unsupported(format!(
            "this store cannot add {path} to an existing watch"
        )))
    }

    /// Stops watching `path`, added with [`add`](Watch::add).
    fn remove(&mut self, path: &str) -> Result<()> {
        Err(crate::Error::Unsupported(format!(
            "this store cannot remove {path} from a watch"
        )))
    }
}

/// Time, as the service sees it.
pub trait Clock: Send + Sync {
    /// Seconds since an arbitrary origin; never goes backwards.
    fn now(&self) -> f64;
    /// Lets `seconds` pass.
    fn sleep(&self, seconds: f64);
}

/// Turns readings of a clock that may step backwards (a wall clock set back, a caller's clock
/// with a bug) into time that neither goes backwards nor stops: a step back counts as no time
/// passing, and time carries on from there at the clock's own pace. Keeping the last reading
/// until the clock caught up instead would freeze time for as long as the step: after a 1 h
/// step back, a request that fails after 5 s would wait 3605 s, holding the host lock.
/// Readings that are not finite are ignored.
#[derive(Debug, Default, Clone, Copy)]
pub struct SteadyTime {
    raw: Option<f64>,
    now: f64,
}

impl SteadyTime {
    /// Time that has not started: the first reading sets it (negative readings count as 0).
    pub const fn new() -> Self {
        SteadyTime {
            raw: None,
            now: 0.0,
        }
    }

    /// Takes reading `t` of the underlying clock and returns the steady time.
    pub fn read(&mut self, t: f64) -> f64 {
        if !t.is_finite() {
            return self.now;
        }
        match self.raw {
            None => self.now = t.max(0.0),
            Some(raw) if t > raw => self.now += t - raw,
            Some(_) => {}
        }
        self.raw = Some(t);
        self.now
    }
}

/// A clock read through [`SteadyTime`]: whatever `inner` does, its time neither goes
/// backwards nor stops.
pub(crate) struct SteadyClock {
    inner: std::sync::Arc<dyn Clock>,
    time: parking_lot::Mutex<SteadyTime>,
}

impl SteadyClock {
    /// `inner`, made steady.
    pub(crate) fn wrap(inner: std::sync::Arc<dyn Clock>) -> std::sync::Arc<dyn Clock> {
        std::sync::Arc::new(SteadyClock {
            inner,
            time: parking_lot::Mutex::new(SteadyTime::new()),
        })
    }
}

impl Clock for SteadyClock {
    fn now(&self) -> f64 {
        let t = self.inner.now();
        self.time.lock().read(t)
    }

    fn sleep(&self, seconds: f64) {
        self.inner.sleep(seconds);
    }
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        // The wall clock can step backwards; squeezed uses it, but the monotonic clock is what
        // stuckness timing needs. CLOCK_BOOTTIME counts from the host's boot, so every process
        // on the host reads the same time: pending reservations record when they started
        // waiting, and another process's round compares that with its own now.
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    fn sleep(&self, seconds: f64) {
        if seconds.is_finite() && seconds > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
        }
    }
}

/// Everything the service needs from a host.
#[derive(Clone)]
pub struct Platform {
    /// The hypervisor.
    pub hypervisor: std::sync::Arc<dyn Hypervisor>,
    /// The store (xenstore).
    pub store: std::sync::Arc<dyn Store>,
    /// The clock.
    pub clock: std::sync::Arc<dyn Clock>,
}

impl Platform {
    /// Requests sent to the store so far (see [`Store::requests`]), when the store counts them.
    pub fn store_requests(&self) -> Option<u64> {
        self.store.requests()
    }
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Platform { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::pages;

    #[test]
    fn every_process_on_the_host_reads_the_same_system_clock() {
        use super::Clock;
        // Seconds since boot, as /proc/uptime says (it counts suspended time too): not since
        // this process's first call, so a time one process writes into the store means the
        // same to another.
        let uptime = |s: String| s.split_whitespace().next().unwrap().parse::<f64>().unwrap();
        let before = uptime(std::fs::read_to_string("/proc/uptime").unwrap());
        let now = super::SystemClock.now();
        let after = uptime(std::fs::read_to_string("/proc/uptime").unwrap());
        assert!(
            now >= before - 0.02 && now <= after + 0.02,
            "{before} <= {now} <= {after}"
        );
        assert!(now > 1.0, "{now}");
    }

    #[test]
    fn a_clock_set_back_an_hour_neither_freezes_time_nor_turns_it_back() {
        let mut t = super::SteadyTime::new();
        assert_eq!(t.read(7200.0), 7200.0);
        assert_eq!(t.read(7210.0), 7210.0);
        // Set back 1 h: no time passes across the step...
        assert_eq!(t.read(3610.0), 7210.0);
        // ...and 5 s later on the new clock, 5 s have passed (keeping the last reading until
        // the clock caught up would have taken 3605 s).
        assert_eq!(t.read(3615.0), 7215.0);
        // Bad readings are ignored.
        assert_eq!(t.read(f64::NAN), 7215.0);
        assert_eq!(t.read(f64::NEG_INFINITY), 7215.0);
        assert_eq!(t.read(3616.0), 7216.0);
    }

    #[test]
    fn pages_are_four_kib_and_partial_pages_round_up() {
        assert_eq!(pages::to_kib(256).unwrap(), 1024);
        assert_eq!(pages::from_kib(1024).unwrap(), 256);
        assert_eq!(pages::from_kib(1025).unwrap(), 257);
        assert!(pages::from_kib(-4).is_err());
        assert!(pages::to_kib(u64::MAX).is_err());
    }
}
