//! The diagnostics document against its published schema (docs/diagnostics.schema.json), on a
//! fake host with guests and reservations, under both policies.

mod common;

use common::*;
use serde_json::Value;
use squeeze::backend::fake::{FakeHost, GuestSpec};
use squeeze::service::{Service, ServiceConfig};
use squeeze::Policy;

fn schema() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/diagnostics.schema.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema = schema();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the schema file is itself a valid JSON Schema"
    );
    jsonschema::validator_for(&schema).unwrap()
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// A 4 GiB host (3 GiB free): guest A balloons over 512 MiB..1 GiB (at 1 GiB), guest B is
/// fixed at 512 MiB, so 1.5 GiB is free. xenopsd holds 256 + 64 MiB, xl-42 holds 128 MiB.
fn busy_host(policy: Policy) -> (tempfile::TempDir, FakeHost, Service, i32, i32) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::in_memory(small_host()).unwrap();
    let service = Service::new(
        fake.platform(),
        ServiceConfig {
            policy,
            ..config(dir.path())
        },
    )
    .unwrap();
    let a = booted_guest(&fake, GuestSpec::ballooning(512 * MIB, GIB));
    let b = booted_guest(&fake, GuestSpec::fixed(512 * MIB));
    service.reserve_memory("xenopsd", 256 * MIB).unwrap();
    service.reserve_memory("xenopsd", 64 * MIB).unwrap();
    service.reserve_memory("xl-42", 128 * MIB).unwrap();
    (dir, fake, service, a, b)
}

fn doc(service: &Service) -> Value {
    serde_json::from_str(&service.get_diagnostics().unwrap()).unwrap()
}

#[test]
fn the_document_of_a_busy_host_validates_against_the_schema_under_both_policies() {
    let v = validator();
    for policy in [Policy::Classic, Policy::Adaptive] {
        let (_dir, _fake, service, a, b) = busy_host(policy);
        // 1088 MiB free after 448 MiB of reservations; 1200 MiB more needs the 72 MiB slush
        // on top, so guest A must give at least 184 MiB.
        service.reserve_memory("xenopsd", 1200 * MIB).unwrap();
        let d = doc(&service);
        assert_eq!(errors(&v, &d), Vec::<String>::new(), "{policy:?}: {d:#}");
        assert_eq!(d["schema_version"], 3);
        assert_eq!(
            d["pending"],
            serde_json::json!([]),
            "nothing waits once it returned"
        );
        assert_eq!(
            d["policy"],
            if policy == Policy::Classic {
                "classic"
            } else {
                "adaptive"
            }
        );
        assert_eq!(d["host"]["slush_kib"], SLUSH);
        assert_eq!(d["host"]["reserved_kib"], (256 + 64 + 128 + 1200) * MIB);

        // Reservations grouped by session, with their totals.
        let sessions = d["sessions"].as_array().unwrap();
        let xenopsd = sessions.iter().find(|s| s["session"] == "xenopsd").unwrap();
        assert_eq!(xenopsd["total_kib"], (256 + 64 + 1200) * MIB);
        assert_eq!(xenopsd["reservations"].as_array().unwrap().len(), 3);
        let xl = sessions.iter().find(|s| s["session"] == "xl-42").unwrap();
        assert_eq!(xl["total_kib"], 128 * MIB);

        // Guest A was ballooned down for the last reservation, and the document says so.
        let da = d["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["domid"] == a)
            .unwrap();
        let target = da["target_kib"].as_i64().unwrap();
        assert!((512 * MIB..=GIB - 184 * MIB).contains(&target), "{target}");
        assert_eq!(da["dynamic_min_kib"], 512 * MIB);
        assert_eq!(da["dynamic_max_kib"], GIB);
        assert_eq!(da["last_target_change"]["from_kib"], GIB);
        assert_eq!(da["last_target_change"]["to_kib"], target);
        assert_eq!(da["last_target_change"]["reason"], "reserve");
        let decision = &d["last_decision"];
        assert_eq!(decision["operation"], "reserve_memory");
        assert_eq!(decision["outcome"], "done");
        assert_eq!(decision["session"], "xenopsd");
        assert!(decision["target_changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["domid"] == a && c["to_kib"] == target));
        // Four reservations, none failed; at least one target written and one wait.
        let c = &d["counters"];
        assert_eq!(c["reservations_made"], 4);
        assert_eq!(c["reservations_failed"], 0);
        assert!(c["target_writes"].as_u64().unwrap() >= 1);
        assert!(c["waits"].as_u64().unwrap() >= 1);
        assert!(c["iterations"].as_u64().unwrap() > c["waits"].as_u64().unwrap());
        // The fake host counts store requests: the guests' keys, the ledger, the targets.
        assert!(c["store_requests"].as_u64().unwrap() > 0);

        // The fixed guest is never asked to move.
        let db = d["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["domid"] == b)
            .unwrap();
        assert_eq!(db["target_kib"], 512 * MIB);
        assert!(db["last_target_change"].is_null());

        // Cooperation and measured speed come from the adaptive policy only.
        match policy {
            Policy::Classic => {
                assert!(da["cooperation"].is_null() && da["rate"].is_null());
            }
            Policy::Adaptive => {
                assert_eq!(da["cooperation"]["state"], "cooperative");
                // The fake guest balloons at 100 MiB/s.
                let rate = da["rate"]["down_kib_per_s"].as_f64().unwrap();
                assert!(rate > 0.0 && rate <= 100.0 * 1024.0, "{rate}");
            }
        }
    }
}

#[test]
fn a_document_missing_a_field_or_with_an_unknown_one_does_not_validate() {
    let v = validator();
    let (_dir, _fake, service, _a, _b) = busy_host(Policy::Adaptive);
    service.balance_memory().unwrap();
    let good = doc(&service);
    assert!(v.is_valid(&good), "{:?}", errors(&v, &good));

    let removals: &[&[&str]] = &[
        &["schema_version"],
        &["host", "free_kib"],
        &["host", "slush_kib"],
        &["sessions"],
        &["pending"],
        &["domains", "0", "target_kib"],
        &["domains", "0", "cooperation"],
        &["domains", "0", "offset_kib"],
        &["last_decision", "reason"],
        &["counters", "target_writes"],
        &["counters", "iterations"],
    ];
    for path in removals {
        let mut d = good.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut node = &mut d;
        for p in parents {
            node = match p.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[*p],
            };
        }
        assert!(
            node.as_object_mut().unwrap().remove(*last).is_some(),
            "{path:?} is in the document"
        );
        assert!(!v.is_valid(&d), "the document without {path:?} validates");
    }

    let mut d = good.clone();
    d["schema_version"] = 1.into();
    assert!(!v.is_valid(&d), "another schema version validates");
    let mut d = good.clone();
    d["counters"]["store_reads"] = 1.into();
    assert!(!v.is_valid(&d), "an undocumented field validates");
}

#[test]
fn every_field_of_the_schema_is_described_in_the_guide() {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/diagnostics.md"))
            .unwrap();
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.push(p.clone());
                walk(sub, &p, out);
            }
        }
        for key in ["items"] {
            if let Some(sub) = node.get(key) {
                walk(sub, &format!("{path}[]"), out);
            }
        }
        if let Some(alts) = node.get("anyOf").and_then(Value::as_array) {
            for a in alts {
                walk(a, path, out);
            }
        }
    }
    let mut fields = Vec::new();
    walk(&schema(), "", &mut fields);
    assert!(fields.len() > 50, "{fields:?}");
    let missing: Vec<_> = fields
        .iter()
        .filter(|f| !guide.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not described in docs/diagnostics.md: {missing:?}"
    );
}

#[test]
fn a_background_pass_that_hands_memory_back_is_the_last_decision() {
    let v = validator();
    let (_dir, _fake, service, a, _b) = busy_host(Policy::Classic);
    // Guest A gives memory for 1200 MiB, which is then deleted: the host is unbalanced.
    let id = service.reserve_memory("xenopsd", 1200 * MIB).unwrap();
    service.delete_reservation("xenopsd", &id).unwrap();
    let before = doc(&service);
    let lowered = before["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["domid"] == a)
        .unwrap()["target_kib"]
        .as_i64()
        .unwrap();
    assert!(lowered < GIB, "{lowered}");
    let writes_before = before["counters"]["target_writes"].as_u64().unwrap();

    assert!(service.balance_if_unbalanced().unwrap());
    let d = doc(&service);
    assert!(v.is_valid(&d), "{:?}", errors(&v, &d));
    assert_eq!(d["last_decision"]["operation"], "background_balance");
    assert_eq!(d["last_decision"]["outcome"], "done");
    assert!(d["last_decision"]["session"].is_null());
    let da = d["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["domid"] == a)
        .unwrap();
    assert_eq!(da["last_target_change"]["reason"], "rebalance");
    assert_eq!(da["last_target_change"]["from_kib"], lowered);
    assert!(da["target_kib"].as_i64().unwrap() > lowered);
    assert!(d["counters"]["target_writes"].as_u64().unwrap() > writes_before);
    assert_eq!(d["balancer"]["passes"], 1);
}

#[test]
fn a_waiting_reservation_is_listed_as_pending_until_it_is_granted() {
    use squeeze::backend::sim::Behaviour;
    use squeeze::platform::Clock;
    let v = validator();
    for policy in [Policy::Classic, Policy::Adaptive] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::in_memory(small_host()).unwrap();
        // A guest at 2 GiB that balloons down to 1 GiB at 8 MiB/s: 1 GiB free, of which
        // 952 MiB above the 72 MiB slush. 1 GiB asked needs 72 MiB more: 9 s of ballooning.
        booted_guest(
            &fake,
            GuestSpec {
                behaviour: Behaviour::Ideal {
                    rate_kib_per_s: 8 * MIB,
                },
                ..GuestSpec::ballooning(GIB, 2 * GIB)
            },
        );
        let time = SharedTime::new(&fake);
        let cfg = ServiceConfig {
            policy,
            ..config(dir.path())
        };
        let service = Service::new(time.platform(), cfg).unwrap();
        let t0 = fake.now_s();
        let (p_reserve, p_look) = (time.participant(), time.participant());
        let waiting = {
            let service = service.clone();
            std::thread::spawn(move || {
                p_reserve.enter();
                service.reserve_memory("xenopsd", GIB)
            })
        };
        // 5 s in, an operator looks.
        let look = {
            let (service, time) = (service.clone(), time.clone());
            std::thread::spawn(move || {
                p_look.enter();
                time.sleep(5.0);
                let d = doc(&service);
                drop(p_look);
                d
            })
        };
        let during = look.join().unwrap();
        let id = waiting.join().unwrap().unwrap();
        assert!(fake.now_s() - t0 >= 9.0, "{policy:?}: served too soon");
        assert_eq!(errors(&v, &during), Vec::<String>::new(), "{during:#}");
        let pending = during["pending"].as_array().unwrap();
        assert_eq!(pending.len(), 1, "{policy:?}: {during:#}");
        let p = &pending[0];
        assert_eq!(p["id"], id.as_str());
        assert_eq!(p["session"], "xenopsd");
        assert_eq!(p["min_kib"], GIB);
        assert_eq!(p["max_kib"], GIB);
        assert_eq!(p["need_kib"], GIB);
        assert_eq!(p["order"], 1);
        assert_eq!(p["since_s"], t0);
        assert_eq!(p["waited_s"], 5.0);
        assert_eq!(p["owner_pid"], std::process::id());
        assert_eq!(p["owner_alive"], true);
        // Waiting is not holding: the ledger has nothing yet.
        assert_eq!(during["sessions"], serde_json::json!([]));
        assert_eq!(during["host"]["reserved_kib"], 0);

        let after = doc(&service);
        assert_eq!(after["pending"], serde_json::json!([]));
        assert_eq!(after["sessions"][0]["reservations"][0]["id"], id.as_str());
        assert_eq!(after["sessions"][0]["total_kib"], GIB);
    }
}

#[test]
fn a_pending_entry_of_a_process_that_is_gone_is_listed_as_not_alive() {
    use squeeze::platform::Store;
    let (_dir, fake, service, _a, _b) = busy_host(Policy::Adaptive);
    // What a killed caller leaves until the next round drops it: written as the library
    // writes it, for a pid that cannot be running.
    fake.write(
        "/squeezed/pending/6d1f2a34-7a52-4b1e-9a8e-0c9f4d2b7e11",
        r#"{"version":1,"session":"xl-4242","min_kib":262144,"max_kib":524288,"need_kib":393216,"order":7,"since_s":0.0,"owner":{"pid":4294967294,"start":1}}"#,
    )
    .unwrap();
    let d = doc(&service);
    assert_eq!(errors(&validator(), &d), Vec::<String>::new(), "{d:#}");
    let p = &d["pending"][0];
    assert_eq!(p["session"], "xl-4242");
    assert_eq!(p["min_kib"], 256 * MIB);
    assert_eq!(p["max_kib"], 512 * MIB);
    assert_eq!(p["need_kib"], 384 * MIB);
    assert_eq!(p["order"], 7);
    assert_eq!(p["owner_pid"], 4_294_967_294u32);
    assert_eq!(p["owner_alive"], false);
    // The look changes nothing: the entry is still there for the next round to drop.
    assert_eq!(doc(&service)["pending"], d["pending"]);
}

/// The published schema of an earlier version.
fn schema_of_version(version: u32) -> jsonschema::Validator {
    let path = format!(
        "{}/docs/diagnostics.schema.v{version}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(jsonschema::meta::is_valid(&schema));
    jsonschema::validator_for(&schema).unwrap()
}

/// Today's document as version 2 wrote it: without what version 3 added.
fn as_version_2(mut d: Value) -> Value {
    d["host"]
        .as_object_mut()
        .unwrap()
        .remove("dying_kib")
        .unwrap();
    let settings = d["settings"].as_object_mut().unwrap();
    settings.remove("dying_wait_s").unwrap();
    settings.remove("scrub_wait_s").unwrap();
    d["schema_version"] = 2.into();
    d
}

#[test]
fn version_3_only_adds_dying_memory_and_the_waits_to_version_2() {
    let v2 = schema_of_version(2);
    let (_dir, _fake, service, _a, _b) = busy_host(Policy::Adaptive);
    let d = doc(&service);
    assert!(!v2.is_valid(&d), "a version 3 document passes as version 2");
    assert_eq!(errors(&v2, &as_version_2(d)), Vec::<String>::new());
}

#[test]
fn version_2_only_adds_the_pending_list_to_version_1() {
    let v1 = schema_of_version(1);
    let (_dir, _fake, service, _a, _b) = busy_host(Policy::Adaptive);
    let mut d = as_version_2(doc(&service));
    assert!(!v1.is_valid(&d), "a version 2 document passes as version 1");
    // Without `pending` and with the old number, a version 2 document is a version 1 one.
    d.as_object_mut().unwrap().remove("pending").unwrap();
    d["schema_version"] = 1.into();
    assert_eq!(errors(&v1, &d), Vec::<String>::new());
}
