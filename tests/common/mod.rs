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
