//! Xen claims and shared pages in host accounting: memory promised to a claim, or lent by
//! memory sharing, is never handed out a second time. The fake host's referee checks every
//! change: guests (shared pages included) + claims + reservations + what unbooted domains are
//! still owed + the slush must fit in the host.

mod common;

use common::*;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::platform::Hypervisor;
use squeeze::service::Service;
use squeeze::{DomId, Error, Kib};

const PAGE: Kib = 4;

fn pages(kib: Kib) -> u64 {
    (kib / PAGE) as u64
}

fn outstanding_kib(fake: &FakeHost, domid: DomId) -> Kib {
    fake.domain(domid).unwrap().unwrap().info.outstanding_pages as Kib * PAGE
}

#[test]
fn claims_and_shared_pages_are_counted_exactly_and_never_handed_out_twice() {
    let (_dir, fake, service) = setup_classic(small_host());
    // 3 GiB free; a 512 MiB..1 GiB guest at 1 GiB leaves 2 GiB.
    let a = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, GIB));
    // Another toolstack's domain claims 256 MiB before building it.
    let b = fake.create_domain(GuestSpec::fixed(256 * MIB)).unwrap();
    fake.claim_pages(b, pages(256 * MIB)).unwrap();
    // Sharing finds 128 MiB of the guest's pages duplicated elsewhere: Xen frees them.
    fake.share_pages(a, pages(128 * MIB)).unwrap();

    let v = service.host_view().unwrap();
    assert_eq!(v.xen_free_kib, 2 * GIB + 128 * MIB);
    assert_eq!(v.outstanding_kib, 256 * MIB);
    assert_eq!(v.shared_kib, 128 * MIB);
    // 2 GiB + 128 MiB − 256 MiB claimed − 128 MiB shared.
    assert_eq!(v.free_kib, 2 * GIB - 256 * MIB);
    // squeezed's sum (Xen's free pages less reservations) would offer 384 MiB that are not there.
    assert_eq!(v.xen_free_kib - v.free_kib, 384 * MIB);
    // Its shared pages are still the guest's memory: it is at its 1 GiB target, not below.
    let d = v.domains.iter().find(|d| d.domid == a).unwrap();
    assert_eq!(d.shared_kib, 128 * MIB);
    assert_eq!(d.domain.unwrap().memory_actual_kib, GIB);
    assert!(!d.drift_suspect && !d.uncooperative);

    // Everything the host can give: 1792 MiB free + 512 MiB the guest can balloon − the slush,
    // less the 4 KiB its driver stops short of a target.
    let all = 2 * GIB - 256 * MIB + 512 * MIB - SLUSH - 4;
    let id = service.reserve_memory("xenopsd", all).unwrap();
    let e = service.reserve_memory("xenopsd", MIB).unwrap_err();
    assert!(
        matches!(e, Error::CannotFreeThisMuchMemory { .. }),
        "one more MiB is not there: {e}"
    );

    // Now every promise is kept at once: the claimed domain is built, the guest breaks all its
    // shares, and a new domain takes the whole reservation.
    fake.build_domain(b, 256 * MIB).unwrap();
    assert_eq!(outstanding_kib(&fake, b), 0, "the build used up the claim");
    fake.unshare_pages(a, pages(128 * MIB)).unwrap();
    let c = fake.create_domain(GuestSpec::fixed(all)).unwrap();
    service
        .transfer_reservation_to_domain("xenopsd", &id, c)
        .unwrap();
    fake.build_domain(c, all).unwrap();
    let s = fake.snapshot().unwrap();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    // 4 GiB = dom0 1 GiB + guest 512 MiB + 4 KiB + 256 MiB + the reservation + the slush.
    assert_eq!(s.free_kib, SLUSH);
    let v = service.host_view().unwrap();
    assert_eq!((v.outstanding_kib, v.shared_kib), (0, 0));
    assert_eq!(v.free_kib, SLUSH);
}

#[test]
fn without_counting_sharing_the_same_host_would_be_overcommitted() {
    // The referee is not fooled by freed shared pages: promising them is a violation.
    let cfg = small_host();
    let fake = FakeHost::in_memory(cfg).unwrap();
    let a = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, GIB));
    fake.share_pages(a, pages(128 * MIB)).unwrap();
    // Xen shows 2 GiB + 128 MiB free; a ledger entry for all of it less the slush...
    squeeze::platform::Store::write(
        &fake,
        "/squeezed/state/s/00000000-0000-0000-0000-000000000001",
        &(2 * GIB + 128 * MIB - SLUSH).to_string(),
    )
    .unwrap();
    // ...is 128 MiB more than the host has once the guest writes to its pages.
    let v = fake.snapshot().unwrap().violations;
    assert_eq!(v.len(), 1);
    assert!(
        v[0].what.starts_with("overcommitted by 131072 KiB"),
        "{}",
        v[0].what
    );
    // And breaking the shares with nothing free is caught as memory handed out twice.
    let d = fake
        .create_domain(GuestSpec::fixed(2 * GIB + 128 * MIB))
        .unwrap();
    fake.build_domain(d, 2 * GIB + 128 * MIB).unwrap();
    fake.unshare_pages(a, 1).unwrap();
    let v = fake.snapshot().unwrap().violations;
    assert!(
        v.iter()
            .any(|v| v.domid == a && v.what.contains("handed out twice")),
        "{v:?}"
    );
}

fn claiming_service(fake: &FakeHost, dir: &std::path::Path, claim: bool) -> Service {
    let mut cfg = classic_config(dir);
    cfg.host.claim_transferred_reservations = claim;
    Service::new(fake.platform(), cfg).unwrap()
}

#[test]
fn a_transferred_reservation_becomes_a_claim_on_the_new_domain_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = claiming_service(&fake, dir.path(), true);
    let id = service.reserve_memory("xl-1", 512 * MIB).unwrap();
    let before = service.host_view().unwrap().free_kib;
    assert_eq!(before, 3 * GIB - 512 * MIB);

    let d = fake
        .create_domain(GuestSpec::ballooning(256 * MIB, 512 * MIB))
        .unwrap();
    service
        .transfer_reservation_to_domain("xl-1", &id, d)
        .unwrap();
    assert_eq!(outstanding_kib(&fake, d), 512 * MIB);
    let v = service.host_view().unwrap();
    // Counted once: as Xen's outstanding claim, not again as an unallocated reservation.
    assert_eq!(v.outstanding_kib, 512 * MIB);
    assert_eq!(v.unallocated_initial_kib, 0);
    assert_eq!(v.reserved_kib, 0);
    assert_eq!(v.free_kib, before);
    // Another toolstack cannot claim the memory behind the reservation.
    let other = fake.create_domain(GuestSpec::fixed(GIB)).unwrap();
    assert!(fake.claim_pages(other, pages(3 * GIB - 511 * MIB)).is_err());
    fake.destroy_domain(other).unwrap();

    // The builder takes 384 MiB of it: the claim shrinks by as much, the books do not move.
    fake.build_domain(d, 384 * MIB).unwrap();
    assert_eq!(outstanding_kib(&fake, d), 128 * MIB);
    let v = service.host_view().unwrap();
    assert_eq!(
        (v.outstanding_kib, v.unallocated_initial_kib),
        (128 * MIB, 0)
    );
    assert_eq!(v.free_kib, before);

    // It boots with 384 MiB: the 128 MiB the builder never took go back to the host.
    fake.unpause(d).unwrap();
    fake.advance(1.0).unwrap();
    let v = service.host_view().unwrap();
    assert_eq!(outstanding_kib(&fake, d), 0);
    assert_eq!(v.outstanding_kib, 0);
    assert_eq!(v.free_kib, before + 128 * MIB);
    assert!(fake.snapshot().unwrap().violations.is_empty());
}

#[test]
fn without_the_setting_no_claim_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = claiming_service(&fake, dir.path(), false);
    let id = service.reserve_memory("xl-1", 512 * MIB).unwrap();
    let d = fake
        .create_domain(GuestSpec::ballooning(256 * MIB, 512 * MIB))
        .unwrap();
    service
        .transfer_reservation_to_domain("xl-1", &id, d)
        .unwrap();
    assert_eq!(outstanding_kib(&fake, d), 0);
    let v = service.host_view().unwrap();
    assert_eq!(v.unallocated_initial_kib, 512 * MIB);
    assert_eq!(v.free_kib, 3 * GIB - 512 * MIB);
    // A claim the toolstack makes itself is left to it, even once the domain boots.
    fake.claim_pages(d, pages(512 * MIB)).unwrap();
    fake.build_domain(d, 384 * MIB).unwrap();
    fake.unpause(d).unwrap();
    fake.advance(1.0).unwrap();
    service.host_view().unwrap();
    assert_eq!(outstanding_kib(&fake, d), 128 * MIB);
}

#[test]
fn a_claimed_domain_that_dies_gives_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = claiming_service(&fake, dir.path(), true);
    let id = service.reserve_memory("xl-1", GIB).unwrap();
    let d = fake.create_domain(GuestSpec::fixed(GIB)).unwrap();
    service
        .transfer_reservation_to_domain("xl-1", &id, d)
        .unwrap();
    fake.build_domain(d, 256 * MIB).unwrap();
    assert_eq!(service.host_view().unwrap().free_kib, 2 * GIB);
    fake.destroy_domain(d).unwrap();
    let v = service.host_view().unwrap();
    assert_eq!((v.outstanding_kib, v.reserved_kib), (0, 0));
    assert_eq!(v.free_kib, 3 * GIB);
}

/// Something a domain builder does, run in the middle of the service's next look.
type Deed = Box<dyn FnOnce() + Send>;

/// The fake host's hypervisor, with a domain builder acting at one chosen moment: just before
/// the next read of Xen's totals (a look reads them first after the domains and the store),
/// i.e. in the middle of the next look.
struct DuringLook {
    inner: std::sync::Arc<dyn Hypervisor>,
    /// What to do, and how many reads of the totals to let pass first.
    deed: std::sync::Mutex<Option<(u32, Deed)>>,
}

impl DuringLook {
    fn over(fake: &FakeHost) -> std::sync::Arc<Self> {
        std::sync::Arc::new(DuringLook {
            inner: fake.platform().hypervisor,
            deed: std::sync::Mutex::new(None),
        })
    }

    /// Does `deed` in the middle of the next look.
    fn next_look(&self, deed: Deed) {
        *self.deed.lock().unwrap() = Some((0, deed));
    }
}

impl Hypervisor for DuringLook {
    fn domains(&self) -> squeeze::Result<Vec<squeeze::platform::DomainInfo>> {
        self.inner.domains()
    }
    fn domain(&self, domid: DomId) -> squeeze::Result<Option<squeeze::platform::DomainInfo>> {
        self.inner.domain(domid)
    }
    fn physinfo(&self) -> squeeze::Result<squeeze::platform::PhysInfo> {
        let due = {
            let mut deed = self.deed.lock().unwrap();
            match deed.take() {
                Some((0, d)) => Some(d),
                Some((n, d)) => {
                    *deed = Some((n - 1, d));
                    None
                }
                None => None,
            }
        };
        if let Some(d) = due {
            d();
        }
        self.inner.physinfo()
    }
    fn shadow_allocation_mib(&self, domid: DomId) -> squeeze::Result<u64> {
        self.inner.shadow_allocation_mib(domid)
    }
    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> squeeze::Result<()> {
        self.inner.set_maxmem_kib(domid, kib)
    }
    fn claim_pages(&self, domid: DomId, pages: u64) -> squeeze::Result<()> {
        self.inner.claim_pages(domid, pages)
    }
}

/// A service on the fake host whose builder acts in the middle of looks, a 512 MiB..1 GiB
/// guest at 1 GiB, and a new domain holding a transferred reservation of `kib`, not built
/// yet: what a toolstack has between handing a reservation over and building the domain.
fn new_domain_holding(
    kib: Kib,
) -> (
    tempfile::TempDir,
    FakeHost,
    std::sync::Arc<DuringLook>,
    Service,
    DomId,
    DomId,
) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let hv = DuringLook::over(&fake);
    let platform = squeeze::platform::Platform {
        hypervisor: hv.clone(),
        ..fake.platform()
    };
    let service = Service::new(platform, config(dir.path())).unwrap();
    let guest = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, GIB));
    service.login("xl").unwrap();
    let id = service.reserve_memory("xl", kib).unwrap();
    let domid = fake.create_domain(GuestSpec::fixed(kib)).unwrap();
    service
        .transfer_reservation_to_domain("xl", &id, domid)
        .unwrap();
    (dir, fake, hv, service, guest, domid)
}

#[test]
fn a_claim_made_while_the_host_is_looked_at_is_counted_once() {
    // Seen on a real host: xl's build claimed the new domain's 300 MiB while the daemon looked,
    // the look counted them as claimed and as still owed to the domain, found 225 MiB less
    // than nothing free, and its balance shrank both guests to their dynamic-min.
    // 2 GiB free. A VM's 300 MiB are reserved and handed to its domain, not yet built.
    let (_dir, fake, hv, service, _guest, domid) = new_domain_holding(300 * MIB);
    let before = service.host_view().unwrap();
    assert_eq!(before.free_kib, 2 * GIB - 300 * MIB);
    assert_eq!(before.unallocated_initial_kib, 300 * MIB);

    // The builder claims the 300 MiB while the next look is under way.
    let builder = fake.clone();
    hv.next_look(Box::new(move || {
        builder.claim_pages(domid, pages(300 * MIB)).unwrap()
    }));
    let during = service.host_view().unwrap();
    assert_eq!(outstanding_kib(&fake, domid), 300 * MIB);
    assert_eq!(during.outstanding_kib, 300 * MIB);
    // Counted once: claimed, no longer owed on top (without the second read of the claims,
    // 2 GiB − 600 MiB).
    assert_eq!(during.unallocated_initial_kib, 0);
    assert_eq!(during.free_kib, 2 * GIB - 300 * MIB);
    let after = service.host_view().unwrap();
    assert_eq!(after.free_kib, 2 * GIB - 300 * MIB);
}

#[test]
fn a_domain_built_while_the_host_is_looked_at_does_not_make_a_balance_shrink_guests() {
    // Seen on a real host: xl built the new domain's 300 MiB while the daemon looked. The look
    // read the domain with nothing allocated (still owed its 300 MiB) and Xen's free memory
    // after the build (300 MiB less): -228 MiB free, and the balance set both guests to their
    // dynamic-min. The look now knows it was in flux, and the balance looks again.
    let (_dir, fake, hv, service, guest, domid) = new_domain_holding(1536 * MIB);
    // 2 GiB free less the 1.5 GiB owed to the new domain: 512 MiB, the guest at its 1 GiB max.
    assert_eq!(service.host_view().unwrap().free_kib, 512 * MIB);
    let builder = fake.clone();
    hv.next_look(Box::new(move || {
        builder.build_domain(domid, 1536 * MIB).unwrap()
    }));
    service.balance_memory().unwrap();
    // Untouched: the look in flux counted 1 GiB less than nothing free.
    let target = fake
        .snapshot()
        .unwrap()
        .read(&format!("/local/domain/{guest}/memory/target"))
        .map(str::to_string);
    assert_eq!(target.as_deref(), Some("1048576"));
    let v = service.host_view().unwrap();
    assert!(!v.in_flux);
    assert_eq!(v.free_kib, 512 * MIB);
}
