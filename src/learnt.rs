//! What the adaptive policy has learnt about each guest, kept in the store beside the ledger so
//! that every process deciding for the host (a daemon, short-lived `xl` runs, xenopsd) judges a
//! guest the same way, and so that it outlives the process that learnt it:
//!
//! ```text
//! /squeezed/learnt/<domid> = {"version":1,"learnt":{...}}   (JSON, see `tracker::Learnt`)
//! ```
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

/// The schema version written, and the only one read.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    version: u32,
    learnt: Learnt,
}

/// `learnt` as the store keeps it.
pub fn encode(learnt: &Learnt) -> String {
    serde_json::to_string(&Entry {
        version: SCHEMA_VERSION,
        learnt: learnt.clone(),
    })
    .unwrap_or_default()
}

/// What an entry says, or None for one of another version or that cannot be read.
pub fn decode(raw: &str) -> Option<Learnt> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    if value.get("version")?.as_u64()? != u64::from(SCHEMA_VERSION) {
        return None;
    }
    let entry: Entry = serde_json::from_value(value).ok()?;
    entry.learnt.is_sane().then_some(entry.learnt)
}

/// Keeps one process's view of the stored entries in step with the store. `synced` holds the
/// value this process last read or wrote for each domain, so unchanged entries are neither
/// adopted again nor rewritten.
#[derive(Debug, Default)]
pub struct Sync {
    synced: BTreeMap<DomId, String>,
}

impl Sync {
    /// Entries written by another process since this one last looked.
    pub fn load(&mut self, store: &dyn Store, layout: &Layout) -> Vec<(DomId, Learnt)> {
        let dir = layout.learnt_dir();
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
                Some(l) => out.push((domid, l)),
                None => debug!("ignoring unreadable learnt state of domain {domid}: {raw:?}"),
            }
            self.synced.insert(domid, raw);
        }
        out
    }

    /// Writes what changed in `learnt`, and removes the entries of domains that are gone.
    pub fn save(&mut self, store: &dyn Store, layout: &Layout, learnt: &[(DomId, Learnt)]) {
        let dir = layout.learnt_dir();
        for (domid, l) in learnt {
            let raw = encode(l);
            if self.synced.get(domid) == Some(&raw) {
                continue;
            }
            let path = format!("{dir}/{domid}");
            let written = store.transaction(&mut |t| {
                // Never create an entry for a domain destroyed meanwhile.
                if t.exists(&format!("/local/domain/{domid}"))? {
                    t.write(&path, &raw)?;
                }
                Ok(())
            });
            match written {
                Ok(()) => {
                    self.synced.insert(*domid, raw);
                }
                Err(e) => warn!("cannot keep the learnt state of domain {domid}: {e}"),
            }
        }
        let gone = store.transaction(&mut |t| {
            for name in t.directory(&dir)? {
                let alive = match name.parse::<DomId>() {
                    Ok(domid) => t.exists(&format!("/local/domain/{domid}"))?,
                    Err(_) => false,
                };
                if !alive {
                    t.rm(&format!("{dir}/{name}"))?;
                }
            }
            Ok(())
        });
        if let Err(e) = gone {
            warn!("cannot remove the learnt state of departed domains: {e}");
        }
        let stored: Vec<DomId> = learnt.iter().map(|(d, _)| *d).collect();
        self.synced.retain(|d, _| stored.contains(d));
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
        assert_eq!(decode(&encode(&l)), Some(l.clone()));
        let v2 = encode(&l).replace("\"version\":1", "\"version\":2");
        assert_eq!(decode(&v2), None);
        assert_eq!(decode("not json"), None);
        assert_eq!(decode("{\"version\":1,\"learnt\":{}}"), None);
        let negative = encode(&Learnt {
            score_s: -1.0,
            ..l.clone()
        });
        assert_eq!(decode(&negative), None);
    }
}
