//! The reservation ledger, kept in the store with squeezed's layout.
//!
//! ```text
//! /squeezed/state/<session>/<reservation-id>              = <KiB>
//! /squeezed/state/<session>/<reservation-id>/in-transfer  = <domid>   (once transferred)
//! /local/domain/<domid>/memory/initial-reservation        = <KiB>     (written by transfer)
//! /local/domain/<domid>/memory/reservation-id             = <reservation-id>
//! ```
//!
//! A reservation is memory promised to a domain that does not exist yet, so it is subtracted
//! from host free memory. Once transferred to a live domain the domain itself accounts for it
//! (through its initial reservation until it boots, through its allocation afterwards), so the
//! entry no longer counts. Because the ledger is in the store, it outlives the process that
//! wrote it: a process killed at any point leaves a ledger the next one reads as it was.
//!
//! These functions work inside a store transaction ([`StoreOps`]); locking is the caller's.

use crate::error::{Error, Result};
use crate::model::{kib, DomId, Kib};
use crate::platform::StoreOps;

/// The store directory squeezed keeps its state under; using the same one lets a host move
/// between squeezed and this library without losing reservations.
pub const DEFAULT_ROOT: &str = "/squeezed";

/// The longest session (service) name accepted.
pub const MAX_SESSION_LEN: usize = 128;

/// One reservation in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reservation {
    /// The session (service name) that made it.
    pub session: String,
    /// Its id (a UUID).
    pub id: String,
    /// Its size in KiB.
    pub kib: Kib,
    /// The domain it was transferred to, if it was.
    pub in_transfer: Option<DomId>,
}

/// A ledger entry that could not be understood (a value written by hand or by a broken
/// client); it is reported, never counted and never deleted behind the operator's back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvalidEntry {
    /// Its store path.
    pub path: String,
    /// Why it is invalid.
    pub why: String,
}

/// Checks a session (service) name: 1 to 128 characters from `[A-Za-z0-9_@-]`, exactly what
/// xenstored accepts in a path element, so it is one store path element, cannot climb out of
/// the state directory, and the store never refuses it after guests were already ballooned.
pub fn check_session(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= MAX_SESSION_LEN && name.bytes().all(is_path_element_byte);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid session name {name:?}: use 1 to {MAX_SESSION_LEN} characters from A-Z a-z 0-9 - _ @ \
             (what xenstored accepts in a path element)"
        )))
    }
}

/// A byte xenstored accepts in a path element: `A-Z a-z 0-9 - _ @` (`/` separates elements).
pub fn is_path_element_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_@".contains(&b)
}

/// Parses a reservation id: anything that is not a UUID cannot be one of ours.
pub fn check_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::UnknownReservation(id.to_string()))
}

/// A fresh reservation id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// Where the ledger and a domain's reservation keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            root: DEFAULT_ROOT.to_string(),
        }
    }
}

impl Layout {
    /// A layout under `root` (for example `/squeezed`).
    pub fn new(root: &str) -> Result<Self> {
        let ok = root.starts_with('/')
            && root.len() > 1
            && !root.ends_with('/')
            && !root.contains("//")
            && root.split('/').skip(1).all(|p| check_session(p).is_ok());
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "invalid state root {root:?}"
            )));
        }
        Ok(Layout {
            root: root.to_string(),
        })
    }

    /// `/squeezed/state`.
    pub fn state_dir(&self) -> String {
        format!("{}/state", self.root)
    }

    /// `/squeezed/learnt`: what the adaptive policy learnt about each guest (see
    /// [`crate::learnt`]), beside squeezed's own state.
    pub fn learnt_dir(&self) -> String {
        format!("{}/learnt", self.root)
    }

    /// `/squeezed/pending`: reservations waiting for memory (see [`crate::pending`]), beside
    /// squeezed's own state.
    pub fn pending_dir(&self) -> String {
        format!("{}/pending", self.root)
    }

    /// `/squeezed/state/<session>`.
    pub fn session_dir(&self, session: &str) -> String {
        format!("{}/state/{session}", self.root)
    }

    /// `/squeezed/state/<session>/<id>`.
    pub fn reservation_path(&self, session: &str, id: &str) -> String {
        format!("{}/state/{session}/{id}", self.root)
    }

    /// `/squeezed/state/<session>/<id>/in-transfer`.
    pub fn in_transfer_path(&self, session: &str, id: &str) -> String {
        format!("{}/state/{session}/{id}/in-transfer", self.root)
    }
}

/// `/local/domain/<domid>/memory/initial-reservation`.
pub fn initial_reservation_path(domid: DomId) -> String {
    format!("/local/domain/{domid}/memory/initial-reservation")
}

/// `/local/domain/<domid>/memory/reservation-id`.
pub fn reservation_id_path(domid: DomId) -> String {
    format!("/local/domain/{domid}/memory/reservation-id")
}

/// Every reservation in the ledger, and the entries that could not be read.
pub fn list(
    t: &mut dyn StoreOps,
    layout: &Layout,
) -> Result<(Vec<Reservation>, Vec<InvalidEntry>)> {
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    for session in t.directory(&layout.state_dir())? {
        for id in t.directory(&layout.session_dir(&session))? {
            let path = layout.reservation_path(&session, &id);
            match read_entry(t, layout, &session, &id)? {
                Ok(r) => out.push(r),
                Err(why) => invalid.push(InvalidEntry { path, why }),
            }
        }
    }
    Ok((out, invalid))
}

fn read_entry(
    t: &mut dyn StoreOps,
    layout: &Layout,
    session: &str,
    id: &str,
) -> Result<std::result::Result<Reservation, String>> {
    let Some(value) = t.read(&layout.reservation_path(session, id))? else {
        return Ok(Err("vanished while being read".into()));
    };
    let kib = match value.trim().parse::<Kib>() {
        Ok(k) if kib::check_size("reservation", k).is_ok() => k,
        _ => return Ok(Err(format!("size {value:?} is not a valid KiB amount"))),
    };
    let in_transfer = match t.read(&layout.in_transfer_path(session, id))? {
        None => None,
        Some(d) => match d.trim().parse::<DomId>() {
            Ok(d) if d >= 0 => Some(d),
            _ => return Ok(Err(format!("in-transfer domain {d:?} is not a domid"))),
        },
    };
    Ok(Ok(Reservation {
        session: session.to_string(),
        id: id.to_string(),
        kib,
        in_transfer,
    }))
}

/// One reservation, or [`Error::UnknownReservation`].
pub fn get(t: &mut dyn StoreOps, layout: &Layout, session: &str, id: &str) -> Result<Reservation> {
    match read_entry(t, layout, session, id)? {
        Ok(r) if t.exists(&layout.reservation_path(session, id))? => Ok(r),
        Ok(_) => Err(Error::UnknownReservation(id.to_string())),
        Err(why) if t.exists(&layout.reservation_path(session, id))? => Err(Error::Backend(
            format!("reservation {id} of session {session} is corrupt: {why}"),
        )),
        Err(_) => Err(Error::UnknownReservation(id.to_string())),
    }
}

/// Records a new reservation.
pub fn add(t: &mut dyn StoreOps, layout: &Layout, session: &str, id: &str, kib: Kib) -> Result<()> {
    t.write(&layout.reservation_path(session, id), &kib.to_string())
}

/// Deletes a reservation (and its in-transfer marker); unknown ids are an error. A session
/// left without reservations loses its directory too.
pub fn remove(t: &mut dyn StoreOps, layout: &Layout, session: &str, id: &str) -> Result<()> {
    let path = layout.reservation_path(session, id);
    if !t.exists(&path)? {
        return Err(Error::UnknownReservation(id.to_string()));
    }
    t.rm(&path)?;
    remove_session_if_empty(t, layout, session)
}

/// Removes `/squeezed/state/<session>` once it holds nothing. Short-lived clients such as
/// `xl-<pid>` use a session per process, and nothing ever logs them out: without this each
/// would leave an empty node behind for good. Logging in again needs no node, so removing it
/// loses nothing.
fn remove_session_if_empty(t: &mut dyn StoreOps, layout: &Layout, session: &str) -> Result<()> {
    let dir = layout.session_dir(session);
    if t.exists(&dir)? && t.directory(&dir)?.is_empty() {
        t.rm(&dir)?;
    }
    Ok(())
}

/// Refuses a transfer after which the reservation would stop counting while its memory is
/// still promised: only a domain being built, holding no reservation yet, may take one.
fn check_transfer_target(t: &mut dyn StoreOps, id: &str, domid: DomId) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::InvalidArgument(format!(
            "cannot transfer reservation {id} to domain {domid}: {why}"
        )))
    };
    if domid == 0 {
        return refuse("domain 0 is not built from a reservation".into());
    }
    let dir = format!("/local/domain/{domid}");
    if t.exists(&format!("{dir}/control/feature-balloon"))?
        || t.exists(&format!("{dir}/data/updated"))?
    {
        return refuse(
            "it has already booted and holds its memory; a reservation is for a domain being built"
                .into(),
        );
    }
    if let Some(other) = t.read(&reservation_id_path(domid))? {
        return refuse(format!("it already holds reservation {}", other.trim()));
    }
    if t.exists(&initial_reservation_path(domid))? {
        return refuse("it already has an initial reservation".into());
    }
    Ok(())
}

/// Marks a reservation as transferred to `domid` and gives the domain its initial reservation
/// and reservation id, all in the caller's transaction, so no one can ever see the memory
/// counted both by the ledger and by the domain.
pub fn transfer(
    t: &mut dyn StoreOps,
    layout: &Layout,
    session: &str,
    id: &str,
    domid: DomId,
) -> Result<Reservation> {
    let r = get(t, layout, session, id)?;
    match r.in_transfer {
        // Again to the same domain (a retry): nothing more to check, nothing changes.
        Some(other) if other == domid => {}
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "reservation {id} was already transferred to domain {other}"
            )))
        }
        None => check_transfer_target(t, id, domid)?,
    }
    t.write(&initial_reservation_path(domid), &r.kib.to_string())?;
    t.write(&reservation_id_path(domid), id)?;
    t.write(&layout.in_transfer_path(session, id), &domid.to_string())?;
    Ok(Reservation {
        in_transfer: Some(domid),
        ..r
    })
}

/// Drops the reservations of `session` that were never transferred (a client that logs in
/// again has forgotten their ids); returns them.
pub fn drop_untransferred(
    t: &mut dyn StoreOps,
    layout: &Layout,
    session: &str,
) -> Result<Vec<Reservation>> {
    let mut dropped = Vec::new();
    for id in t.directory(&layout.session_dir(session))? {
        match read_entry(t, layout, session, &id)? {
            Ok(r) if r.in_transfer.is_none() => {
                t.rm(&layout.reservation_path(session, &id))?;
                dropped.push(r);
            }
            _ => {}
        }
    }
    remove_session_if_empty(t, layout, session)?;
    Ok(dropped)
}

/// Releases the reservations transferred to domains that no longer live; returns them.
pub fn release_dead(
    t: &mut dyn StoreOps,
    layout: &Layout,
    alive: &dyn Fn(DomId) -> bool,
) -> Result<Vec<Reservation>> {
    let (all, _) = list(t, layout)?;
    let mut released: Vec<Reservation> = Vec::new();
    for r in all {
        if let Some(domid) = r.in_transfer {
            if !alive(domid) {
                t.rm(&layout.reservation_path(&r.session, &r.id))?;
                released.push(r);
            }
        }
    }
    let mut sessions: Vec<&str> = released.iter().map(|r| r.session.as_str()).collect();
    sessions.dedup();
    for session in sessions {
        remove_session_if_empty(t, layout, session)?;
    }
    Ok(released)
}

/// The memory the ledger holds back from the host: every reservation not (yet) backed by a
/// live domain.
pub fn unbacked_kib(all: &[Reservation], alive: &dyn Fn(DomId) -> bool) -> Result<Kib> {
    kib::sum(
        all.iter()
            .filter(|r| !r.in_transfer.is_some_and(alive))
            .map(|r| r.kib),
        "reservations",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::{FakeConfig, FakeHost};
    use crate::platform::Store;

    #[test]
    fn session_names_cannot_leave_the_state_directory() {
        assert!(check_session("xenopsd").is_ok());
        assert!(check_session("xl-1234").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129), "é"] {
            assert!(check_session(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_must_be_uuids() {
        let id = new_id();
        assert_eq!(check_id(&id).unwrap(), id);
        assert!(matches!(
            check_id("../x"),
            Err(Error::UnknownReservation(_))
        ));
    }

    #[test]
    fn transferred_reservations_stop_counting_while_their_domain_lives() {
        let h = FakeHost::in_memory(FakeConfig::default()).unwrap();
        let l = Layout::default();
        h.transaction(&mut |t| {
            add(t, &l, "s", "a", 1000)?;
            add(t, &l, "s", "b", 300)?;
            transfer(t, &l, "s", "b", 7)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            Store::read(&h, "/squeezed/state/s/b/in-transfer")
                .unwrap()
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            Store::read(&h, "/local/domain/7/memory/initial-reservation")
                .unwrap()
                .as_deref(),
            Some("300")
        );
        let mut all = Vec::new();
        h.transaction(&mut |t| {
            all = list(t, &l)?.0;
            Ok(())
        })
        .unwrap();
        assert_eq!(unbacked_kib(&all, &|d| d == 7).unwrap(), 1000);
        assert_eq!(unbacked_kib(&all, &|_| false).unwrap(), 1300);
        let mut dropped = Vec::new();
        h.transaction(&mut |t| {
            dropped = drop_untransferred(t, &l, "s")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(Store::exists(&h, "/squeezed/state/s/b").unwrap());
    }

    /// The sessions under `/squeezed/state`, read outside any transaction.
    fn sessions(h: &FakeHost) -> Vec<String> {
        Store::directory(h, "/squeezed/state").unwrap()
    }

    #[test]
    fn an_xl_session_whose_only_reservation_is_deleted_leaves_no_node() {
        let h = FakeHost::in_memory(FakeConfig::default()).unwrap();
        let l = Layout::default();
        h.transaction(&mut |t| {
            add(t, &l, "xenopsd", "a", 1000)?;
            add(t, &l, "xl-4242", "b", 307_200)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(sessions(&h), ["xenopsd", "xl-4242"]);
        h.transaction(&mut |t| remove(t, &l, "xl-4242", "b"))
            .unwrap();
        assert_eq!(sessions(&h), ["xenopsd"]);
        assert!(!Store::exists(&h, "/squeezed/state/xl-4242").unwrap());
    }

    #[test]
    fn a_session_keeps_its_node_while_it_still_holds_a_reservation() {
        let h = FakeHost::in_memory(FakeConfig::default()).unwrap();
        let l = Layout::default();
        h.transaction(&mut |t| {
            add(t, &l, "xl-7", "a", 1000)?;
            add(t, &l, "xl-7", "b", 2000)?;
            remove(t, &l, "xl-7", "a")
        })
        .unwrap();
        assert_eq!(sessions(&h), ["xl-7"]);
        assert_eq!(Store::directory(&h, "/squeezed/state/xl-7").unwrap(), ["b"]);
    }

    #[test]
    fn reservations_released_with_their_dead_domains_take_the_empty_sessions_along() {
        let h = FakeHost::in_memory(FakeConfig::default()).unwrap();
        let l = Layout::default();
        // xl-1 transferred to domain 5 and xl-2 to 7 (both now gone) and 6 (alive); xl-3 untouched.
        h.transaction(&mut |t| {
            add(t, &l, "xl-1", "a", 100)?;
            transfer(t, &l, "xl-1", "a", 5)?;
            add(t, &l, "xl-2", "b", 200)?;
            transfer(t, &l, "xl-2", "b", 7)?;
            add(t, &l, "xl-2", "c", 300)?;
            transfer(t, &l, "xl-2", "c", 6)?;
            add(t, &l, "xl-3", "d", 400)
        })
        .unwrap();
        let mut released = Vec::new();
        h.transaction(&mut |t| {
            released = release_dead(t, &l, &|d| d == 6)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(released.len(), 2);
        assert_eq!(sessions(&h), ["xl-2", "xl-3"]);
    }
}
