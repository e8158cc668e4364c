//! The host model keeps domain keys between looks and learns of changes through a store
//! watch: what another writer changes is seen by the next look, domains come and go, a store
//! without (working) watches is read in full, and a look on a quiet host costs the same store
//! requests for 10 guests as for 100.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::host::{HostConfig, HostModel, HostView};
use squeeze::platform::{Platform, Store, StoreOps, Watch};
use squeeze::{DomId, Error, Result};

/// Store requests of a look when nothing changed: one to sync the watch, then one transaction
/// over the empty ledger: start, the two listings of its directory (releasing reservations of
/// dead domains, then reading it), end.
const QUIET_LOOK: u64 = 1 + 4;

/// Requests to read one domain's keys: its directory, domain-type, feature-balloon,
/// data/updated and eight memory/ keys (target, dynamic-min, dynamic-max, initial-reservation,
/// memory-offset, memory-offset-at-boot, uncooperative, weight).
const DOMAIN_KEYS: u64 = 12;

/// A host with room for 100 guests of 256 MiB.
fn roomy_host() -> FakeConfig {
    FakeConfig {
        total_kib: 64 * GIB,
        ..small_host()
    }
}

fn model_over(platform: Platform) -> HostModel {
    HostModel::new(platform, HostConfig::default()).unwrap()
}

/// Store requests one look costs, and the look.
fn look(model: &mut HostModel) -> (u64, HostView) {
    let before = model.platform().store_requests().unwrap();
    let view = model.view().unwrap();
    (model.platform().store_requests().unwrap() - before, view)
}

fn dynamic_min(view: &HostView, domid: DomId) -> Option<i64> {
    view.domains
        .iter()
        .find(|d| d.domid == domid)
        .and_then(|d| d.domain)
        .map(|d| d.dynamic_min_kib)
}

/// Two booted 256 MiB guests (ids 1 and 2) that may balloon down to 128 MiB.
fn two_guests(fake: &FakeHost) {
    for _ in 0..2 {
        booted_guest(fake, GuestSpec::ballooning(128 * MIB, 256 * MIB));
    }
}

#[test]
fn a_key_another_process_writes_is_read_by_the_next_look_and_only_that_domain_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::create(dir.path(), small_host()).unwrap();
    two_guests(&fake);
    let mut model = model_over(fake.platform());
    // The first look reads both domains and calibrates their offsets; the second reads them
    // again because those writes fired the watch; then the host is quiet.
    look(&mut model);
    look(&mut model);
    assert!(model.watching());
    assert_eq!(look(&mut model).0, QUIET_LOOK);

    // Another process (a toolstack) lowers guest 1's dynamic-min to 64 MiB.
    let toolstack = FakeHost::open(dir.path()).unwrap();
    Store::write(&toolstack, "/local/domain/1/memory/dynamic-min", "65536").unwrap();

    let (requests, view) = look(&mut model);
    assert_eq!(dynamic_min(&view, 1), Some(64 * MIB));
    assert_eq!(dynamic_min(&view, 2), Some(128 * MIB));
    // Guest 1's keys were read again, guest 2's were not.
    assert_eq!(requests, QUIET_LOOK + DOMAIN_KEYS);
    assert_eq!(look(&mut model).0, QUIET_LOOK);
}

#[test]
fn a_domain_created_or_destroyed_between_looks_is_seen_or_forgotten() {
    let (_dir, fake, _service) = setup(small_host());
    two_guests(&fake);
    let mut model = model_over(fake.platform());
    look(&mut model);
    look(&mut model);
    let balanced = |v: &HostView| -> Vec<DomId> {
        v.domains
            .iter()
            .filter(|d| d.domain.is_some())
            .map(|d| d.domid)
            .collect()
    };

    let three = booted_guest(&fake, GuestSpec::ballooning(128 * MIB, 256 * MIB));
    let (_, view) = look(&mut model);
    assert_eq!(balanced(&view), [1, 2, three]);
    assert_eq!(dynamic_min(&view, three), Some(128 * MIB));

    fake.destroy_domain(2).unwrap();
    let (_, view) = look(&mut model);
    assert_eq!(balanced(&view), [1, three]);
    // The ledger and guests 1 and 3 are all a quiet look reads afterwards.
    look(&mut model);
    assert_eq!(look(&mut model).0, QUIET_LOOK);
}

/// A store that passes everything on to the fake's, but whose watches fail (`broken`) or do
/// not exist at all (`watches` false).
struct Unreliable {
    fake: FakeHost,
    watches: bool,
    broken: Arc<AtomicBool>,
}

struct UnreliableWatch {
    inner: Box<dyn Watch>,
    broken: Arc<AtomicBool>,
}

impl Watch for UnreliableWatch {
    fn poll(&mut self) -> Result<Vec<String>> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(Error::Backend("xenstore watch connection lost".into()));
        }
        self.inner.poll()
    }
    fn add(&mut self, path: &str) -> Result<()> {
        self.inner.add(path)
    }
    fn remove(&mut self, path: &str) -> Result<()> {
        self.inner.remove(path)
    }
}

impl Store for Unreliable {
    fn transaction(&self, body: &mut dyn FnMut(&mut dyn StoreOps) -> Result<()>) -> Result<()> {
        self.fake.transaction(body)
    }
    fn watch(&self, path: &str) -> Result<Box<dyn Watch>> {
        if !self.watches {
            return Err(Error::Unsupported("this store has no watches".into()));
        }
        Ok(Box::new(UnreliableWatch {
            inner: self.fake.watch(path)?,
            broken: self.broken.clone(),
        }))
    }
    fn requests(&self) -> Option<u64> {
        self.fake.requests()
    }
}

fn unreliable(fake: &FakeHost, watches: bool) -> (Platform, Arc<AtomicBool>) {
    let broken = Arc::new(AtomicBool::new(false));
    let p = fake.platform();
    let platform = Platform {
        store: Arc::new(Unreliable {
            fake: fake.clone(),
            watches,
            broken: broken.clone(),
        }),
        ..p
    };
    (platform, broken)
}

#[test]
fn a_store_without_watches_is_read_in_full_and_gives_the_same_answers() {
    let (_dir, fake, _service) = setup(small_host());
    two_guests(&fake);
    let (platform, _) = unreliable(&fake, false);
    let mut polling = model_over(platform);
    let mut watching = model_over(fake.platform());
    for m in [&mut polling, &mut watching] {
        look(m);
        look(m);
    }
    assert!(!polling.watching());
    assert!(watching.watching());
    // Every look reads both domains: the look of a quiet host, less the watch sync.
    assert_eq!(look(&mut polling).0, QUIET_LOOK - 1 + 2 * DOMAIN_KEYS);

    Store::write(&fake, "/local/domain/2/memory/dynamic-min", "98304").unwrap();
    let (_, a) = look(&mut polling);
    let (_, b) = look(&mut watching);
    assert_eq!(dynamic_min(&a, 2), Some(96 * MIB));
    assert_eq!(a.domains, b.domains);
    assert_eq!(a.free_kib, b.free_kib);
}

#[test]
fn a_failing_watch_falls_back_to_reading_everything_then_watches_again() {
    let (_dir, fake, _service) = setup(small_host());
    two_guests(&fake);
    let (platform, broken) = unreliable(&fake, true);
    let mut model = model_over(platform);
    look(&mut model);
    look(&mut model);
    assert_eq!(look(&mut model).0, QUIET_LOOK);

    // The watch connection breaks just as guest 1's dynamic-min changes: the event is lost
    // with it, yet the look must not use the stale value.
    broken.store(true, Ordering::SeqCst);
    Store::write(&fake, "/local/domain/1/memory/dynamic-min", "65536").unwrap();
    let (requests, view) = look(&mut model);
    assert!(!model.watching());
    assert_eq!(dynamic_min(&view, 1), Some(64 * MIB));
    // No successful sync: the ledger transaction and both domains.
    assert_eq!(requests, QUIET_LOOK - 1 + 2 * DOMAIN_KEYS);

    // Once the store answers again the model watches again (setting the watch, re-adding
    // both domains' keys, and reading them once more) and is back to quiet looks.
    broken.store(false, Ordering::SeqCst);
    let (_, view) = look(&mut model);
    assert!(model.watching());
    assert_eq!(dynamic_min(&view, 1), Some(64 * MIB));
    assert_eq!(look(&mut model).0, QUIET_LOOK);
}

/// Store requests of a quiet look at a host of `n` booted guests, watching or not.
fn quiet_look(n: usize, watches: bool) -> u64 {
    let (_dir, fake, _service) = setup(roomy_host());
    for _ in 0..n {
        booted_guest(&fake, GuestSpec::fixed(256 * MIB));
    }
    let (platform, _) = unreliable(&fake, watches);
    let mut model = model_over(platform);
    // Reads everything, calibrates; reads back what the calibration wrote; quiet.
    look(&mut model);
    look(&mut model);
    look(&mut model).0
}

#[test]
fn a_quiet_look_costs_the_same_store_requests_for_10_and_100_guests() {
    let watched = [quiet_look(10, true), quiet_look(100, true)];
    let polled = [quiet_look(10, false), quiet_look(100, false)];
    eprintln!("store requests per quiet look, 10 and 100 guests: watching {watched:?}, reading everything {polled:?}");
    assert_eq!(watched, [QUIET_LOOK, QUIET_LOOK]);
    assert_eq!(polled, [4 + 10 * DOMAIN_KEYS, 4 + 100 * DOMAIN_KEYS]);
}
