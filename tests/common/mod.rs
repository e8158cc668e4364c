//! Helpers shared by the service tests: fake hosts, booted guests, and an independent referee
//! that recomputes the host's books from a raw snapshot of the fake.

#![allow(dead_code)]

use std::path::Path;

use squeeze::backend::fake::{FakeConfig, FakeHost, FakeSnapshot, GuestSpec};
use squeeze::service::{Service, ServiceConfig};
use squeeze::{DomId, Kib};

/// 72 MiB, squeezed's slush.
pub const SLUSH: Kib = 72 << 10;
pub const MIB: Kib = 1 << 10;
pub const GIB: Kib = 1 << 20;

/// A 4 GiB host: Xen keeps nothing, domain 0 holds 1 GiB, so 3 GiB are free.
pub fn small_host() -> FakeConfig {
    FakeConfig {
        total_kib: 4 * GIB,
        xen_kib: 0,
        dom0_kib: GIB,
        boot_delay_s: 1.0,
        referee_slush_kib: Some(SLUSH),
    }
}

pub fn config(dir: &Path) -> ServiceConfig {
    ServiceConfig {
        lock_path: dir.join("host.lock"),
        boot_time_record_path: dir.join("boot_time_memory"),
        boot_time_interval_s: 0.5,
        ..ServiceConfig::default()
    }
}

/// [`config`] with squeezed's policy named: for tests of squeezed's behaviour, which the
/// service no longer runs by default.
pub fn classic_config(dir: &Path) -> ServiceConfig {
    ServiceConfig {
        policy: squeeze::Policy::Classic,
        ..config(dir)
    }
}

/// [`setup`] with squeezed's policy (see [`classic_config`]).
pub fn setup_classic(cfg: FakeConfig) -> (tempfile::TempDir, FakeHost, Service) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(cfg).unwrap();
    let service = Service::new(fake.platform(), classic_config(dir.path())).unwrap();
    (dir, fake, service)
}

/// A fake host in memory and a service over it with the default (adaptive) policy, with its
/// lock file in a fresh directory.
pub fn setup(cfg: FakeConfig) -> (tempfile::TempDir, FakeHost, Service) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(cfg).unwrap();
    let service = Service::new(fake.platform(), config(dir.path())).unwrap();
    (dir, fake, service)
}

/// Creates a guest, gives it `spec.target + spec.offset` KiB (as a toolstack that already had
/// the memory would), unpauses it and lets it boot.
pub fn booted_guest(fake: &FakeHost, spec: GuestSpec) -> DomId {
    use squeeze::platform::Hypervisor;
    let domid = fake.create_domain(spec).unwrap();
    let size = spec.target_kib + spec.offset_kib;
    fake.set_maxmem_kib(domid, size).unwrap();
    fake.build_domain(domid, size).unwrap();
    fake.unpause(domid).unwrap();
    fake.advance(1.0).unwrap();
    assert!(fake.domain(domid).unwrap().unwrap().booted);
    domid
}

/// The host's books recomputed from a raw snapshot, independently of the service's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Books {
    /// Xen's free memory.
    pub xen_free: Kib,
    /// Reservations not backed by a live domain.
    pub reserved: Kib,
    /// Initial reservations of domains that have not booted, minus what they hold.
    pub unallocated: Kib,
    /// What guests (domain 0 included) hold.
    pub guests: Kib,
    /// All memory minus what Xen keeps.
    pub host: Kib,
}

impl Books {
    pub fn free(&self) -> Kib {
        self.xen_free - self.reserved - self.unallocated
    }
}

/// The balloon target the store holds for `domid`, in KiB.
pub fn store_target_kib(fake: &FakeHost, domid: DomId) -> Kib {
    fake.snapshot()
        .unwrap()
        .read(&format!("/local/domain/{domid}/memory/target"))
        .unwrap()
        .parse()
        .unwrap()
}

pub fn books(s: &FakeSnapshot) -> Books {
    let alive = |d: DomId| s.domains.iter().any(|x| x.info.domid == d && !x.info.dying);
    let mut reserved = 0;
    for session in s.directory("/squeezed/state") {
        for id in s.directory(&format!("/squeezed/state/{session}")) {
            let kib: Kib = s
                .read(&format!("/squeezed/state/{session}/{id}"))
                .unwrap()
                .parse()
                .expect("ledger entries are KiB amounts");
            let backed = s
                .read(&format!("/squeezed/state/{session}/{id}/in-transfer"))
                .map(|d| alive(d.parse().unwrap()))
                .unwrap_or(false);
            if !backed {
                reserved += kib;
            }
        }
    }
    let mut unallocated = 0;
    for d in &s.domains {
        let domid = d.info.domid;
        let booted = s
            .read(&format!("/local/domain/{domid}/control/feature-balloon"))
            .is_some()
            || s.read(&format!("/local/domain/{domid}/data/updated"))
                .is_some();
        if let (false, Some(ir)) = (
            booted,
            s.read(&format!("/local/domain/{domid}/memory/initial-reservation")),
        ) {
            let ir: Kib = ir.parse().unwrap();
            unallocated += (ir - d.tot_kib() - d.spec.shadow_mib as Kib * 1024).max(0);
        }
    }
    let guests = s
        .domains
        .iter()
        .map(|d| {
            d.tot_kib()
                + if d.spec.hvm {
                    d.spec.shadow_mib as Kib * 1024
                } else {
                    0
                }
        })
        .sum();
    Books {
        xen_free: s.free_kib,
        reserved,
        unallocated,
        guests,
        host: s.total_kib - s.xen_kib,
    }
}

/// Every reservation transferred to a domain is known to that domain and vice versa: the
/// transfer is all or nothing.
pub fn assert_transfers_whole(s: &FakeSnapshot) {
    for session in s.directory("/squeezed/state") {
        for id in s.directory(&format!("/squeezed/state/{session}")) {
            if let Some(domid) = s.read(&format!("/squeezed/state/{session}/{id}/in-transfer")) {
                if s.read(&format!("/local/domain/{domid}")).is_some() {
                    assert_eq!(
                        s.read(&format!("/local/domain/{domid}/memory/reservation-id")),
                        Some(id.as_str()),
                        "domain {domid} does not know the reservation transferred to it"
                    );
                    assert_eq!(
                        s.read(&format!("/local/domain/{domid}/memory/initial-reservation")),
                        s.read(&format!("/squeezed/state/{session}/{id}")),
                    );
                }
            }
        }
    }
    for d in &s.domains {
        let domid = d.info.domid;
        if let Some(id) = s.read(&format!("/local/domain/{domid}/memory/reservation-id")) {
            assert!(
                s.read(&format!("/local/domain/{domid}/memory/initial-reservation"))
                    .is_some(),
                "domain {domid} has reservation {id} but no initial reservation"
            );
            for session in s.directory("/squeezed/state") {
                if let Some(m) = s.read(&format!("/squeezed/state/{session}/{id}/in-transfer")) {
                    assert_eq!(m, domid.to_string());
                } else {
                    assert!(
                        s.read(&format!("/squeezed/state/{session}/{id}")).is_none(),
                        "reservation {id} is both the domain's and untransferred"
                    );
                }
            }
        }
    }
}

/// Simulated time shared by concurrent callers, for timing tests with several threads.
///
/// The fake host's own clock advances on every `sleep`, so two threads each sleeping 1 s make
/// 2 s pass. Here each participating thread's sleep instead waits until every participant is
/// asleep (or finished); then time jumps to the earliest wake-up and those sleepers go on: time
/// passes as it would for callers running side by side. Threads that are not participants
/// (test setup) advance the clock directly.
pub struct SharedTime {
    fake: FakeHost,
    state: parking_lot::Mutex<SharedState>,
    woken: parking_lot::Condvar,
}

#[derive(Default)]
struct SharedState {
    running: usize,
    /// (ticket, wake-up time) of every sleeper.
    sleepers: Vec<(u64, f64)>,
    next: u64,
}

thread_local! {
    static PARTICIPANT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A thread taking part in [`SharedTime`]; made before the thread starts, so time cannot run
/// ahead of a thread that has not started yet. Dropping it ends the thread's part.
pub struct Participant(std::sync::Arc<SharedTime>);

impl Participant {
    /// Marks the current thread as this participant (call first thing in the thread).
    pub fn enter(&self) {
        PARTICIPANT.with(|p| p.set(true));
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        PARTICIPANT.with(|p| p.set(false));
        let mut st = self.0.state.lock();
        st.running -= 1;
        self.0.advance_if_all_asleep(&mut st);
    }
}

impl SharedTime {
    pub fn new(fake: &FakeHost) -> std::sync::Arc<Self> {
        std::sync::Arc::new(SharedTime {
            fake: fake.clone(),
            state: parking_lot::Mutex::new(SharedState::default()),
            woken: parking_lot::Condvar::new(),
        })
    }

    /// The fake's platform, with this clock.
    pub fn platform(self: &std::sync::Arc<Self>) -> squeeze::platform::Platform {
        let mut p = self.fake.platform();
        p.clock = self.clone();
        p
    }

    pub fn participant(self: &std::sync::Arc<Self>) -> Participant {
        self.state.lock().running += 1;
        Participant(self.clone())
    }

    fn advance_if_all_asleep(&self, st: &mut SharedState) {
        if st.running > 0 || st.sleepers.is_empty() {
            return;
        }
        let t = st
            .sleepers
            .iter()
            .map(|s| s.1)
            .fold(f64::INFINITY, f64::min);
        let now = self.fake.now_s();
        if t > now {
            self.fake.advance(t - now).unwrap();
        }
        let before = st.sleepers.len();
        st.sleepers.retain(|s| s.1 > t);
        st.running += before - st.sleepers.len();
        self.woken.notify_all();
    }
}

impl squeeze::platform::Clock for SharedTime {
    fn now(&self) -> f64 {
        self.fake.now_s()
    }

    fn sleep(&self, seconds: f64) {
        if !PARTICIPANT.with(|p| p.get()) {
            self.fake.advance(seconds.max(0.0)).unwrap();
            return;
        }
        let mut st = self.state.lock();
        let ticket = st.next;
        st.next += 1;
        let wake = self.fake.now_s() + seconds.max(0.0);
        st.sleepers.push((ticket, wake));
        st.running -= 1;
        self.advance_if_all_asleep(&mut st);
        while st.sleepers.iter().any(|s| s.0 == ticket) {
            self.woken.wait(&mut st);
        }
    }
}

/// The fake host's clock, read as a caller of the library reads it.
pub trait NowS {
    fn now_s(&self) -> f64;
}

impl NowS for FakeHost {
    fn now_s(&self) -> f64 {
        squeeze::platform::Clock::now(self)
    }
}
