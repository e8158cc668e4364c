//! Pending reservations: requests waiting for memory, kept in the store beside the ledger.
//!
//! ```text
//! /squeezed/pending/<reservation-id> = {"version": 1, "session": ..., "min_kib": ...,
//!                                       "max_kib": ..., "need_kib": ..., "order": ...,
//!                                       "since_s": ..., "owner": {"pid": ..., "start": ...}}
//! ```
//!
//! A reservation that cannot be served in the round that first looks at it is written here, so
//! that every round of every process plans for every waiting request at once, and grants any of
//! them that fits (see [`grants`] for the fairness rule). A grant turns the entry into a normal
//! reservation of the ledger in one store transaction; the caller that made the request finds
//! its entry gone and its reservation recorded. Pending entries are never counted as reserved
//! memory: only granted reservations are.
//!
//! The owner is a process id with the process's start time, so that an entry of a process that
//! died is dropped even when its pid has been reused. squeezed's `/squeezed/state` is untouched.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Kib;
use crate::platform::StoreOps;
use crate::reservations::{self, Layout};

/// The schema version of an entry.
pub const VERSION: u32 = 1;

/// Seconds the oldest pending request may be overtaken by younger ones that fit: after that,
/// the memory that becomes free is kept for it first (see [`grants`]).
pub const FAIRNESS_WINDOW_S: f64 = 20.0;

/// The process that waits for a pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its process id.
    pub pid: u32,
    /// Its start time (clock ticks since boot, `/proc/<pid>/stat` field 22), or 0 where that
    /// cannot be read.
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn this_process() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the owner still runs: its pid exists and started when it did. Where `/proc`
    /// cannot tell (another system), the owner is taken to be alive.
    pub fn is_alive(&self) -> bool {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return true;
        }
        match start_time(self.pid) {
            Some(start) => self.start == 0 || start == self.start,
            None => false,
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (after the command, which may hold spaces and parentheses),
/// or None when the process is gone or only a zombie waiting for its parent.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Fields after the command start at field 3, the state: a zombie has exited.
    if matches!(fields.next(), Some("Z") | Some("X") | None) {
        return None;
    }
    // Field 22 is the 19th after the state.
    fields.nth(18)?.parse().ok()
}

/// One pending request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// [`VERSION`].
    pub version: u32,
    /// Its reservation id (the entry's name in the store).
    #[serde(skip)]
    pub id: String,
    /// The session that asked.
    pub session: String,
    /// The least it may be granted, KiB (the size, for a fixed-size request).
    pub min_kib: Kib,
    /// The most it may be granted, KiB (the size, for a fixed-size request).
    pub max_kib: Kib,
    /// What rounds free for it, KiB: the size, or the policy's share for a range.
    pub need_kib: Kib,
    /// Its place in the queue: lower is older.
    pub order: u64,
    /// When it started waiting, on the platform's clock (seconds).
    pub since_s: f64,
    /// The process waiting for it.
    pub owner: Owner,
}

/// Every pending entry, oldest first. An entry that cannot be read is removed (only this
/// library writes there), with a warning.
pub fn list(t: &mut dyn StoreOps, layout: &Layout) -> Result<Vec<Entry>> {
    read_entries(t, layout, true)
}

/// Every pending entry, oldest first, changing nothing: an entry that cannot be read is left
/// for the next round to drop. For readers that only look (the diagnostics).
pub fn peek(t: &mut dyn StoreOps, layout: &Layout) -> Result<Vec<Entry>> {
    read_entries(t, layout, false)
}

fn read_entries(
    t: &mut dyn StoreOps,
    layout: &Layout,
    drop_unreadable: bool,
) -> Result<Vec<Entry>> {
    let dir = layout.pending_dir();
    let mut out = Vec::new();
    for id in t.directory(&dir)? {
        let path = format!("{dir}/{id}");
        let Some(v) = t.read(&path)? else { continue };
        match serde_json::from_str::<Entry>(&v) {
            Ok(mut e) if e.version == VERSION => {
                e.id = id;
                out.push(e);
            }
            _ if drop_unreadable => {
                log::warn!("dropping unreadable pending reservation {path}: {v:?}");
                t.rm(&path)?;
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// Records `entry` (its `order` is set here: after every entry present) and returns its order.
pub fn add(t: &mut dyn StoreOps, layout: &Layout, entry: &Entry) -> Result<u64> {
    let order = list(t, layout)?
        .iter()
        .map(|e| e.order + 1)
        .max()
        .unwrap_or(1);
    let entry = Entry {
        order,
        ..entry.clone()
    };
    let json = serde_json::to_string(&entry)
        .map_err(|e| Error::Backend(format!("cannot encode a pending reservation: {e}")))?;
    t.write(&format!("{}/{}", layout.pending_dir(), entry.id), &json)?;
    Ok(order)
}

/// Removes the entry `id`; whether it was there.
pub fn remove(t: &mut dyn StoreOps, layout: &Layout, id: &str) -> Result<bool> {
    let path = format!("{}/{id}", layout.pending_dir());
    if t.exists(&path)? {
        t.rm(&path)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Removes every entry of `session` (a login: the restarted client has forgotten them) and
/// returns them.
pub fn drop_session(t: &mut dyn StoreOps, layout: &Layout, session: &str) -> Result<Vec<Entry>> {
    let mut dropped = Vec::new();
    for e in list(t, layout)? {
        if e.session == session {
            remove(t, layout, &e.id)?;
            dropped.push(e);
        }
    }
    Ok(dropped)
}

/// Turns the entry `id` into a reservation of `kib` in the ledger, if it is still pending;
/// whether it was.
pub fn grant(t: &mut dyn StoreOps, layout: &Layout, entry: &Entry, kib: Kib) -> Result<bool> {
    if !remove(t, layout, &entry.id)? {
        return Ok(false);
    }
    reservations::add(t, layout, &entry.session, &entry.id, kib)?;
    Ok(true)
}

/// Which pending requests the memory free above the slush (`free_kib`) covers now, and how
/// much each gets, by the fairness rule:
///
/// - Requests are taken oldest first; each one that fits (its minimum is at most what is left)
///   is granted, however many older ones do not fit: no head-of-line blocking.
/// - A request that does not fit and has waited `window_s` or more (by `now`) stops the walk:
///   nothing younger is granted until it is, so the memory rounds free is kept for it first
///   and no request is overtaken forever.
///
/// A fixed-size request gets its size; a range gets what is left, at most its maximum and, when
/// others wait too, at most its share (`need_kib`, never below its minimum). `entries` are
/// oldest first; the answer is (index into `entries`, KiB granted).
pub fn grants(free_kib: Kib, entries: &[Entry], now: f64, window_s: f64) -> Vec<(usize, Kib)> {
    let mut left = free_kib.max(0);
    let mut out = Vec::new();
    let crowded = entries.len() > 1;
    for (i, e) in entries.iter().enumerate() {
        if e.min_kib <= left {
            let mut kib = left.min(e.max_kib);
            if crowded {
                kib = kib.min(e.need_kib.max(e.min_kib));
            }
            out.push((i, kib));
            left -= kib;
        } else if now - e.since_s >= window_s {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: Kib = 1024;

    fn entry(order: u64, min: Kib, max: Kib, since_s: f64) -> Entry {
        Entry {
            version: VERSION,
            id: format!("r{order}"),
            session: "xenopsd".into(),
            min_kib: min,
            max_kib: max,
            need_kib: max,
            order,
            since_s,
            owner: Owner { pid: 1, start: 0 },
        }
    }

    #[test]
    fn a_small_request_that_fits_is_not_held_back_by_an_older_big_one() {
        // 1.5 GiB asked first, 256 MiB second; 300 MiB free above the slush, 5 s in.
        let q = [
            entry(1, 1536 * MIB, 1536 * MIB, 0.0),
            entry(2, 256 * MIB, 256 * MIB, 1.0),
        ];
        assert_eq!(
            grants(300 * MIB, &q, 5.0, FAIRNESS_WINDOW_S),
            vec![(1, 256 * MIB)]
        );
    }

    #[test]
    fn once_the_oldest_waited_a_window_memory_is_kept_for_it() {
        // The same queue 25 s in: the big one has waited 25 s > 20 s, so the 256 MiB waits.
        let q = [
            entry(1, 1536 * MIB, 1536 * MIB, 0.0),
            entry(2, 256 * MIB, 256 * MIB, 1.0),
        ];
        assert_eq!(grants(300 * MIB, &q, 25.0, FAIRNESS_WINDOW_S), vec![]);
        // And when 1.6 GiB is free, the big one goes first and 64 MiB is left: too little.
        assert_eq!(
            grants(1600 * MIB, &q, 25.0, FAIRNESS_WINDOW_S),
            vec![(0, 1536 * MIB)]
        );
    }

    #[test]
    fn every_request_that_fits_is_granted_in_order() {
        // 512 + 256 + 128 MiB asked, 800 MiB free: the first two fit (768), 32 MiB is left.
        let q = [
            entry(1, 512 * MIB, 512 * MIB, 0.0),
            entry(2, 256 * MIB, 256 * MIB, 0.0),
            entry(3, 128 * MIB, 128 * MIB, 0.0),
        ];
        assert_eq!(
            grants(800 * MIB, &q, 1.0, FAIRNESS_WINDOW_S),
            vec![(0, 512 * MIB), (1, 256 * MIB)]
        );
    }

    #[test]
    fn a_range_gets_its_share_when_others_wait_and_all_it_can_alone() {
        // A range of 256..=1024 MiB whose share is 512 MiB, 2 GiB free.
        let mut r = entry(1, 256 * MIB, 1024 * MIB, 0.0);
        r.need_kib = 512 * MIB;
        assert_eq!(
            grants(2048 * MIB, &[r.clone()], 1.0, 20.0),
            vec![(0, 1024 * MIB)]
        );
        let q = [r, entry(2, 1024 * MIB, 1024 * MIB, 0.0)];
        assert_eq!(
            grants(2048 * MIB, &q, 1.0, 20.0),
            vec![(0, 512 * MIB), (1, 1024 * MIB)]
        );
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_start_time_is_not() {
        let me = Owner::this_process();
        assert!(me.is_alive());
        assert!(me.start > 0);
        let reused = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!reused.is_alive());
        assert!(!Owner {
            pid: u32::MAX - 1,
            start: 1
        }
        .is_alive());
    }
}
