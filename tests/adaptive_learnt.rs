//! What the adaptive policy learnt about a guest, kept in the store, belongs to that domain
//! only: Xen reuses domids, and a new domain must not inherit an earlier one's judgement.

mod common;

use common::{booted_guest, config, GIB, MIB};
use squeeze::backend::fake::{FakeConfig, FakeHost, GuestSpec};
use squeeze::backend::sim::Behaviour;
use squeeze::service::Service;
use squeeze::DomId;

/// A 5 GiB fake host; domain 0 holds 1 GiB.
fn five_gib_host() -> FakeHost {
    FakeHost::in_memory(FakeConfig {
        total_kib: 5 * GIB,
        xen_kib: 0,
        dom0_kib: GIB,
        boot_delay_s: 1.0,
        referee_slush_kib: Some(common::SLUSH),
    })
    .unwrap()
}

fn read(fake: &FakeHost, path: &str) -> Option<String> {
    fake.snapshot().unwrap().read(path).map(str::to_string)
}

fn entry(fake: &FakeHost, domid: DomId) -> Option<serde_json::Value> {
    read(fake, &format!("/squeezed/learnt/{domid}")).map(|raw| serde_json::from_str(&raw).unwrap())
}

fn id_of(fake: &FakeHost, domid: DomId) -> Option<String> {
    read(fake, &format!("/local/domain/{domid}/memory/squeeze-id"))
}

#[test]
fn a_new_domain_on_a_reused_domid_does_not_inherit_the_earlier_domain_s_judgement() {
    let dir = tempfile::tempdir().unwrap();
    // Two 512 MiB..1 GiB guests at 1 GiB, 2 GiB free: one stuck, one at 100 MiB/s.
    let fake = five_gib_host();
    let spec = |behaviour| GuestSpec {
        behaviour,
        ..GuestSpec::ballooning(512 * MIB, GIB)
    };
    let stuck = booted_guest(&fake, spec(Behaviour::Stuck));
    let fast = booted_guest(
        &fake,
        spec(Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        }),
    );
    let first = Service::new(fake.platform(), config(dir.path())).unwrap();
    let session = first.login("xenopsd").unwrap();
    // 768 MiB to free: the fast guest gives its 512 MiB, the stuck one nothing.
    first
        .reserve_memory(&session, 2 * GIB + 768 * MIB)
        .unwrap_err();
    assert!(first.cooperation(stuck).unwrap().uncooperative);
    // Each entry names its domain by the id squeeze gave it, kept in the domain's directory.
    let stuck_id = id_of(&fake, stuck).expect("an id for the stuck guest");
    let stale = entry(&fake, stuck).unwrap();
    assert_eq!(stale["version"], 2);
    assert_eq!(stale["domain"], stuck_id.as_str());
    assert_eq!(stale["learnt"]["uncooperative"], true);
    assert_ne!(id_of(&fake, fast), Some(stuck_id.clone()));

    // The stuck guest goes and a new, honest domain takes a domid whose entry is still the
    // earlier domain's, as when Xen hands the domid out again before any decision has run.
    fake.destroy_domain(stuck).unwrap();
    let new = booted_guest(
        &fake,
        spec(Behaviour::Ideal {
            rate_kib_per_s: 100 * MIB,
        }),
    );
    assert_eq!(id_of(&fake, new), None, "a new domain starts with no id");
    fake.platform()
        .store
        .write(
            &format!("/squeezed/learnt/{new}"),
            &serde_json::to_string(&stale).unwrap(),
        )
        .unwrap();

    // Neither the process that wrote the entry nor a new one takes it for the new domain...
    drop(first);
    let second = Service::new(fake.platform(), config(dir.path())).unwrap();
    second.balance_if_unbalanced().unwrap();
    let c = second.cooperation(new).unwrap();
    assert!(!c.uncooperative && c.score_s == 0.0, "{c:?}");
    assert!(
        read(&fake, &format!("/local/domain/{new}/memory/uncooperative")).is_none(),
        "the new domain is not flagged"
    );
    // ...which gets an id and an entry of its own,
    let new_id = id_of(&fake, new).expect("an id for the new domain");
    assert_ne!(new_id, stuck_id);
    let own = entry(&fake, new).unwrap();
    assert_eq!(own["domain"], new_id.as_str());
    assert_eq!(own["learnt"]["uncooperative"], false);
    // while what was learnt about the domain still there is inherited: its measured rate.
    let rate = |s: &Service| {
        s.diagnostics()
            .unwrap()
            .domains
            .iter()
            .find(|d| d.domid == fast)
            .and_then(|d| d.rate)
            .and_then(|r| r.down_kib_per_s)
    };
    assert!(
        rate(&second).is_some(),
        "the fast guest's rate is inherited"
    );
    assert_eq!(
        entry(&fake, fast).unwrap()["domain"],
        id_of(&fake, fast).unwrap().as_str()
    );
}
