//! What the adaptive policy has learnt about each guest, kept in the store beside the ledger so
//! that every process deciding for the host (a daemon, short-lived `xl` runs, xenopsd) judges a
//! guest the same way, and so that it outlives the process that learnt it:
//!
//! ```text
//! /squeezed/learnt/<domid> = {"version":2,"domain":"<id>","learnt":{...}}
//!                              (JSON, see `tracker::Learnt`)
//! /local/domain/<domid>/memory/squeeze-id = <id>
//! ```
//!
//! Xen reuses domids, so an entry names the domain it was learnt about: a random id that
//! squeeze writes into the domain's own directory the first time it keeps something about it.
//! The toolstack removes that directory with the domain, so a new domain that reuses the domid
//! has no id (or, once squeeze has written for it, another one), and an entry of an earlier
//! domain is never taken for it. The id sits under `memory/`, which a guest can read but not
//! write, so a guest cannot disown a bad judgement.
//!
//! squeezed's own keys (`/squeezed/state/...`) are untouched. The state is advice: an entry
//! that cannot be read, or written by another schema version, is ignored (and replaced by what
//! this process learns), and a failure to read or write the store is logged, never fails the
//! operation. An entry is removed once its domain is gone.

use std::collections::BTreeMap;

use log::{debug, warn};

use crate::adaptive::tracker::Learnt;
use crate::model::DomId;
use crate::platform::Store;
use crate::reservations::Layout;

/// The schema version written, and the only one read (version 1 entries named no domain).
pub const SCHEMA_VERSION: u32 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    version: u32,
    domain: String,
    learnt: Learnt,
}

/// Where the id of the domain `domid` is kept (see the module documentation).
pub fn id_path(domid: DomId) -> String {
    format!("/local/domain/{domid}/memory/squeeze-id")
}

/// `learnt` about the domain whose id is `domain`, as the store keeps it.
pub fn encode(domain: &str, learnt: &Learnt) -> String {
    serde_json::to_string(&Entry {
        version: SCHEMA_VERSION,
        domain: domain.to_string(),
        learnt: learnt.clone(),
    })
    .unwrap_or_default()
}

/// The domain id an entry names and what it says, or None for one of another version or
/// that cannot be read.
pub fn decode(raw: &str) -> Option<(String, Learnt)> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    if value.get("version")?.as_u64()? != u64::from(SCHEMA_VERSION) {
        return None;
    }
    let entry: Entry = serde_json::from_value(value).ok()?;
    (entry.learnt.is_sane() && !entry.domain.is_empty()).then_some((entry.domain, entry.learnt))
}

/// Keeps one process's view of the stored entries in step with the store. `synced` holds the
/// value this process last read or wrote for each domain, so unchanged entries are neither
/// adopted again nor rewritten; `ids` the domain ids it last saw.
///
/// It also tells when a domid has a new domain: the id this process saw for it is no longer
/// in the domain's directory ([`take_reborn`](Sync::take_reborn)), so what the process holds
/// in memory about the old domain can be dropped too. That is found where the store is read
/// anyway (the check for departed domains before every decision, an entry another process
/// changed, a write), at no extra request.
#[derive(Debug, Default)]
pub struct Sync {
    synced: BTreeMap<DomId, String>,
    ids: BTreeMap<DomId, String>,
    reborn: Vec<DomId>,
}

impl Sync {
    /// Removes the entries of domains that are gone, and finds the domids that have a new
    /// domain: for a domain whose id this process saw, its id is read instead of testing its
    /// directory (one request either way). Done before each decision, so that what this
    /// process holds about an earlier domain is dropped before it is used.
    fn prune(&mut self, store: &dyn Store, dir: &str) {
        let mut replaced = Vec::new();
        let ids = &self.ids;
        let gone = store.transaction(&mut |t| {
            replaced.clear();
            for name in t.directory(dir)? {
                let alive = match name.parse::<DomId>() {
                    // A new domain on the domid keeps the entry: another process may have
                    // written it for the new domain, and ours is replaced once this one
                    // learns afresh.
                    Ok(domid) => match ids.get(&domid) {
                        Some(seen) => match t.read(&id_path(domid))? {
                            Some(current) if current == *seen => true,
                            _ => {
                                let alive = t.exists(&format!("/local/domain/{domid}"))?;
                                if alive {
                                    replaced.push(domid);
                                }
                                alive
                            }
                        },
                        None => t.exists(&format!("/local/domain/{domid}"))?,
                    },
                    Err(_) => false,
                };
                if !alive {
                    t.rm(&format!("{dir}/{name}"))?;
                }
            }
            Ok(())
        });
        match gone {
            Ok(()) => replaced.into_iter().for_each(|domid| self.reborn(domid)),
            Err(e) => warn!("cannot remove the learnt state of departed domains: {e}"),
        }
    }

    /// Entries written by another process since this one last looked.
    /// Entries of domains that are gone are removed first, and domids found to have a new
    /// domain are reported by [`take_reborn`](Sync::take_reborn).
    pub fn load(&mut self, store: &dyn Store, layout: &Layout) -> Vec<(DomId, Learnt)> {
        let dir = layout.learnt_dir();
        self.prune(store, &dir);
        let names = match store.directory(&dir) {
            Ok(names) => names,
            Err(e) => {
                warn!("cannot read learnt guest state under {dir}: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in names {
            let Ok(domid) = name.parse::<DomId>() else {
                continue;
            };
            let Ok(Some(raw)) = store.read(&format!("{dir}/{name}")) else {
                continue;
            };
            if self.synced.get(&domid) == Some(&raw) {
                continue;
            }
            match decode(&raw) {
                Some((id, l)) => match store.read(&id_path(domid)) {
                    Ok(Some(current)) if current == id => {
                        if self.ids.get(&domid).is_some_and(|seen| *seen != current) {
                            // Another process already wrote for the domain that now has
                            // this domid: ours is an earlier one.
                            self.reborn(domid);
                        }
                        self.ids.insert(domid, current);
                        out.push((domid, l));
                    }
                    Ok(current) => debug!(
                        "ignoring learnt state of an earlier domain {domid} (id {id}, the \
                         domain now has {current:?})"
                    ),
                    Err(e) => warn!("cannot read the id of domain {domid}: {e}"),
                },
                None => debug!("ignoring unreadable learnt state of domain {domid}: {raw:?}"),
            }
            self.synced.insert(domid, raw);
        }
        out
    }

    /// Forgets the id and entry of `domid`, whose domain is not the one this process knew,
    /// and reports it through [`take_reborn`](Sync::take_reborn).
    fn reborn(&mut self, domid: DomId) {
        debug!("domain {domid} is a new domain: what was learnt about the earlier one is dropped");
        self.ids.remove(&domid);
        self.synced.remove(&domid);
        if !self.reborn.contains(&domid) {
            self.reborn.push(domid);
        }
    }

    /// The domids found, since the last call, to belong to a new domain (the earlier one
    /// destroyed): the caller forgets what it holds about them
    /// ([`Adaptive::forget`](crate::adaptive::Adaptive::forget)) before it decides again.
    pub fn take_reborn(&mut self) -> Vec<DomId> {
        std::mem::take(&mut self.reborn)
    }

    /// Writes what changed in `learnt` (the entries of domains that are gone are removed by
    /// the next [`load`](Sync::load)). What is learnt about a domid whose domain is not the one this process knew is not
    /// written: it is about the earlier domain (see [`take_reborn`](Sync::take_reborn)).
    pub fn save(&mut self, store: &dyn Store, layout: &Layout, learnt: &[(DomId, Learnt)]) {
        let dir = layout.learnt_dir();
        for (domid, l) in learnt {
            if let Some(id) = self.ids.get(domid) {
                if self.synced.get(domid) == Some(&encode(id, l)) {
                    continue;
                }
            }
            let path = format!("{dir}/{domid}");
            let seen = self.ids.get(domid).cloned();
            let mut kept = None;
            let mut other = false;
            let written = store.transaction(&mut |t| {
                kept = None;
                other = false;
                // Never create an entry for a domain destroyed meanwhile.
                if !t.exists(&format!("/local/domain/{domid}"))? {
                    return Ok(());
                }
                let current = t.read(&id_path(*domid))?;
                if seen.is_some() && current != seen {
                    other = true;
                    return Ok(());
                }
                // The domain's id, given on first use.
                let id = match current {
                    Some(id) if !id.is_empty() => id,
                    _ => {
                        let id = uuid::Uuid::new_v4().to_string();
                        t.write(&id_path(*domid), &id)?;
                        id
                    }
                };
                let raw = encode(&id, l);
                t.write(&path, &raw)?;
                kept = Some((id, raw));
                Ok(())
            });
            match written {
                Ok(()) if other => self.reborn(*domid),
                Ok(()) => {
                    if let Some((id, raw)) = kept {
                        self.ids.insert(*domid, id);
                        self.synced.insert(*domid, raw);
                    }
                }
                Err(e) => warn!("cannot keep the learnt state of domain {domid}: {e}"),
            }
        }
        let stored: Vec<DomId> = learnt.iter().map(|(d, _)| *d).collect();
        self.synced.retain(|d, _| stored.contains(d));
        self.ids.retain(|d, _| stored.contains(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learnt_state_of_another_version_or_damaged_is_ignored() {
        let l = Learnt {
            rate_down_kib_per_s: Some(1024.0),
            rate_up_kib_per_s: None,
            floor_kib: Some(524_288),
            ceiling_kib: None,
            score_s: 12.5,
            uncooperative: true,
            concern: Some(crate::adaptive::tracker::Concern::NotMoving),
        };
        let id = "5f0c9a52-1c1e-4f8e-9a3b-2d7e6f1a0b4c";
        assert_eq!(decode(&encode(id, &l)), Some((id.to_string(), l.clone())));
        let v3 = encode(id, &l).replace("\"version\":2", "\"version\":3");
        assert_eq!(decode(&v3), None);
        // Version 1 named no domain.
        let v1 = format!(
            "{{\"version\":1,\"learnt\":{}}}",
            serde_json::to_string(&l).unwrap()
        );
        assert_eq!(decode(&v1), None);
        assert_eq!(decode(&encode("", &l)), None);
        assert_eq!(decode("not json"), None);
        assert_eq!(
            decode("{\"version\":2,\"domain\":\"x\",\"learnt\":{}}"),
            None
        );
        let negative = encode(
            id,
            &Learnt {
                score_s: -1.0,
                ..l.clone()
            },
        );
        assert_eq!(decode(&negative), None);
    }
}
