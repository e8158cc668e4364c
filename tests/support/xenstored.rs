//! A small xenstored for tests: the xenstore wire protocol on a Unix socket, over an in-memory
//! tree, so that libxenstore (and Debian's `xenstore-*` tools, which use it) can be tested on a
//! machine without Xen. Debian's own xenstored needs a hypervisor to serve requests.
//!
//! Protocol: every message is a header of four native-endian u32 (type, request id,
//! transaction id, payload length) followed by the payload, at most 4096 bytes. Strings in
//! payloads are NUL-terminated, except a written value, which runs to the end. Errors are
//! replied as type `ERROR` with the errno name ("ENOENT") as payload. Watch events are sent
//! unsolicited as type `WATCH_EVENT` with "path\0token\0".
//!
//! Transactions are optimistic, as in xenstored: a transaction works on a snapshot, and its
//! commit fails with EAGAIN when a node it read, listed or wrote was modified by someone else
//! since it started (creating or removing a child modifies the parent). Otherwise its changes
//! are applied on top of the current tree.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_GET_PERMS: u32 = 3;
const XS_WATCH: u32 = 4;
const XS_UNWATCH: u32 = 5;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_MKDIR: u32 = 12;
const XS_RM: u32 = 13;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;
const PAYLOAD_MAX: usize = 4096;

type Tree = BTreeMap<String, Vec<u8>>;

struct Txn {
    conn: u64,
    base_generation: u64,
    tree: Tree,
    /// Nodes read, listed or written: a commit by someone else to any of them is a conflict.
    accessed: HashSet<String>,
    /// Nodes created, written or removed, with their subtrees, in order (for watches).
    changed: Vec<String>,
    /// Nodes whose value or existence the transaction changed (applied on commit).
    written: HashSet<String>,
}

struct WatchReg {
    conn: u64,
    path: String,
    token: String,
    out: Arc<Mutex<UnixStream>>,
}

struct State {
    tree: Tree,
    generation: u64,
    /// The generation of the last change to each node (its value, or its set of children).
    modified: HashMap<String, u64>,
    next_txn: u32,
    txns: HashMap<u32, Txn>,
    watches: Vec<WatchReg>,
    requests: u64,
}

/// A running test xenstored. It serves until the process ends.
pub struct Xenstored {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
}

impl Xenstored {
    /// Starts serving on a fresh socket under `dir`.
    pub fn start(dir: &Path) -> Xenstored {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("socket");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let mut tree = Tree::new();
        tree.insert("/".into(), Vec::new());
        let state = Arc::new(Mutex::new(State {
            tree,
            generation: 0,
            modified: HashMap::new(),
            next_txn: 1,
            txns: HashMap::new(),
            watches: Vec::new(),
            requests: 0,
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for (id, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(id as u64, stream, st));
            }
        });
        Xenstored { socket, state }
    }

    /// The socket to put in `XENSTORED_PATH`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Watches registered on `path`, over all connections.
    pub fn watches_on(&self, path: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.watches.iter().filter(|w| w.path == path).count()
    }

    /// Fires `@introduceDomain`, as xenstored does when the toolstack introduces a domain.
    pub fn introduce_domain(&self) {
        self.fire_special("@introduceDomain");
    }

    /// Fires `@releaseDomain`, as xenstored does when a domain shuts down, dies or is released.
    pub fn release_domain(&self) {
        self.fire_special("@releaseDomain");
    }

    fn fire_special(&self, path: &str) {
        let events: Vec<Event> = {
            let st = self.state.lock().unwrap();
            st.watches
                .iter()
                .filter(|w| w.path == path)
                .map(|w| (w.out.clone(), path.to_string(), w.token.clone()))
                .collect()
        };
        send_events(events);
    }

    /// Requests served so far, over all connections.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }
}

fn serve(conn: u64, stream: UnixStream, state: Arc<Mutex<State>>) {
    let out = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    let mut input = stream;
    loop {
        let mut header = [0u8; 16];
        if input.read_exact(&mut header).is_err() {
            break;
        }
        let word = |i: usize| u32::from_ne_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
        let (ty, req_id, tx_id, len) = (word(0), word(1), word(2), word(3) as usize);
        if len > PAYLOAD_MAX {
            break;
        }
        let mut payload = vec![0u8; len];
        if input.read_exact(&mut payload).is_err() {
            break;
        }
        let (rty, reply, events) = {
            let mut st = state.lock().unwrap();
            st.requests += 1;
            match handle(&mut st, conn, ty, tx_id, &payload, &out) {
                Ok((reply, events)) => (ty, reply, events),
                Err(errno) => (XS_ERROR, format!("{errno}\0").into_bytes(), Vec::new()),
            }
        };
        // Events go out before the reply, as xenstored queues them while it handles the
        // request: once a writer has its answer, every watcher has its event on the way, and
        // a watcher's own later request is answered after that event.
        send_events(events);
        if send(&out, rty, req_id, tx_id, &reply).is_err() {
            break;
        }
    }
    let mut st = state.lock().unwrap();
    st.watches.retain(|w| w.conn != conn);
    st.txns.retain(|_, t| t.conn != conn);
}

fn send_events(events: Vec<Event>) {
    for (target, path, token) in events {
        let _ = send(
            &target,
            XS_WATCH_EVENT,
            0,
            0,
            format!("{path}\0{token}\0").as_bytes(),
        );
    }
}

fn send(
    out: &Mutex<UnixStream>,
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(16 + payload.len());
    for w in [ty, req_id, tx_id, payload.len() as u32] {
        msg.extend_from_slice(&w.to_ne_bytes());
    }
    msg.extend_from_slice(payload);
    out.lock().unwrap().write_all(&msg)
}

type Event = (Arc<Mutex<UnixStream>>, String, String);
type Reply = Result<(Vec<u8>, Vec<Event>), &'static str>;

fn strings(payload: &[u8]) -> Vec<String> {
    payload
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn valid_path(p: &str) -> Result<String, &'static str> {
    // xenstored's characters: `A-Z a-z 0-9 - _ @` in an element, `/` between elements.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_@/".contains(&b);
    if !p.starts_with('/') || p.contains("//") || !p.bytes().all(allowed) {
        return Err("EINVAL");
    }
    let p = p.trim_end_matches('/');
    Ok(if p.is_empty() { "/".into() } else { p.into() })
}

fn is_under(path: &str, top: &str) -> bool {
    top == "/" || path == top || path.strip_prefix(top).is_some_and(|r| r.starts_with('/'))
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    let i = path.rfind('/').unwrap();
    Some(if i == 0 { "/" } else { &path[..i] })
}

fn write_node(tree: &mut Tree, path: &str, value: Vec<u8>, changed: &mut Vec<String>) {
    let mut p = parent(path);
    while let Some(q) = p {
        if !tree.contains_key(q) {
            tree.insert(q.into(), Vec::new());
            changed.push(q.into());
        }
        p = parent(q);
    }
    tree.insert(path.into(), value);
    changed.push(path.into());
}

fn children(tree: &Tree, path: &str) -> Vec<String> {
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    tree.range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, _)| {
            let rest = &k[prefix.len()..];
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
        })
        .collect()
}

fn handle(
    st: &mut State,
    conn: u64,
    ty: u32,
    tx_id: u32,
    payload: &[u8],
    out: &Arc<Mutex<UnixStream>>,
) -> Reply {
    let args = strings(payload);
    let ok = || b"OK\0".to_vec();
    match ty {
        XS_TRANSACTION_START => {
            let id = st.next_txn;
            st.next_txn += 1;
            let txn = Txn {
                conn,
                base_generation: st.generation,
                tree: st.tree.clone(),
                accessed: HashSet::new(),
                changed: Vec::new(),
                written: HashSet::new(),
            };
            st.txns.insert(id, txn);
            Ok((format!("{id}\0").into_bytes(), Vec::new()))
        }
        XS_TRANSACTION_END => {
            let txn = st
                .txns
                .remove(&tx_id)
                .filter(|t| t.conn == conn)
                .ok_or("ENOENT")?;
            if args.first().map(String::as_str) != Some("T") {
                return Ok((ok(), Vec::new()));
            }
            if txn.changed.is_empty() {
                return Ok((ok(), Vec::new()));
            }
            let base = txn.base_generation;
            if txn
                .accessed
                .iter()
                .any(|p| st.modified.get(p).is_some_and(|&g| g > base))
            {
                return Err("EAGAIN");
            }
            for p in &txn.written {
                match txn.tree.get(p) {
                    Some(v) => st.tree.insert(p.clone(), v.clone()),
                    None => st.tree.remove(p),
                };
            }
            commit_marks(st, txn.written.iter());
            let events = fire(st, &txn.changed);
            Ok((ok(), events))
        }
        XS_WATCH | XS_UNWATCH => {
            let path = args.first().ok_or("EINVAL")?;
            let path = if path == "@introduceDomain" || path == "@releaseDomain" {
                path.clone()
            } else {
                valid_path(path)?
            };
            let token = args.get(1).ok_or("EINVAL")?.clone();
            if ty == XS_UNWATCH {
                let before = st.watches.len();
                st.watches
                    .retain(|w| !(w.conn == conn && w.path == path && w.token == token));
                return if st.watches.len() < before {
                    Ok((ok(), Vec::new()))
                } else {
                    Err("ENOENT")
                };
            }
            if st
                .watches
                .iter()
                .any(|w| w.conn == conn && w.path == path && w.token == token)
            {
                return Err("EEXIST");
            }
            st.watches.push(WatchReg {
                conn,
                path: path.clone(),
                token: token.clone(),
                out: out.clone(),
            });
            // A new watch fires once straight away, so the client can read the initial state.
            Ok((ok(), vec![(out.clone(), path, token)]))
        }
        XS_READ | XS_DIRECTORY | XS_GET_PERMS | XS_WRITE | XS_MKDIR | XS_RM => {
            let path = valid_path(args.first().ok_or("EINVAL")?)?;
            let in_txn = tx_id != 0;
            if in_txn && st.txns.get(&tx_id).is_none_or(|t| t.conn != conn) {
                return Err("ENOENT");
            }
            let mut changed = Vec::new();
            let reply = {
                let tree = if in_txn {
                    &mut st.txns.get_mut(&tx_id).unwrap().tree
                } else {
                    &mut st.tree
                };
                match ty {
                    XS_READ => tree.get(&path).cloned().ok_or("ENOENT")?,
                    XS_GET_PERMS => {
                        tree.get(&path).ok_or("ENOENT")?;
                        b"n0\0".to_vec()
                    }
                    XS_DIRECTORY => {
                        tree.get(&path).ok_or("ENOENT")?;
                        children(tree, &path)
                            .iter()
                            .flat_map(|c| format!("{c}\0").into_bytes())
                            .collect()
                    }
                    XS_WRITE => {
                        let start = payload.iter().position(|&b| b == 0).ok_or("EINVAL")? + 1;
                        write_node(tree, &path, payload[start..].to_vec(), &mut changed);
                        ok()
                    }
                    XS_MKDIR => {
                        if !tree.contains_key(&path) {
                            write_node(tree, &path, Vec::new(), &mut changed);
                        }
                        ok()
                    }
                    _ => {
                        if path == "/" {
                            return Err("EINVAL");
                        }
                        tree.get(&path).ok_or("ENOENT")?;
                        let doomed: Vec<String> = tree
                            .keys()
                            .filter(|k| is_under(k, &path))
                            .cloned()
                            .collect();
                        for k in &doomed {
                            tree.remove(k);
                        }
                        // The removed path first: watches report it.
                        changed.push(path.clone());
                        changed.extend(doomed.into_iter().filter(|k| *k != path));
                        ok()
                    }
                }
            };
            if in_txn {
                let txn = st.txns.get_mut(&tx_id).unwrap();
                txn.accessed.insert(path.clone());
                for c in &changed {
                    txn.accessed.insert(c.clone());
                    txn.written.insert(c.clone());
                }
                txn.changed.extend(changed);
                return Ok((reply, Vec::new()));
            }
            if changed.is_empty() {
                return Ok((reply, Vec::new()));
            }
            commit_marks(st, changed.iter());
            let events = fire(st, &changed);
            Ok((reply, events))
        }
        _ => Err("ENOSYS"),
    }
}

/// Records a commit: a new generation, and the changed nodes and their parents modified in it.
fn commit_marks<'a>(st: &mut State, changed: impl Iterator<Item = &'a String>) {
    st.generation += 1;
    let generation = st.generation;
    for p in changed {
        st.modified.insert(p.clone(), generation);
        if let Some(q) = parent(p) {
            st.modified.insert(q.to_string(), generation);
        }
    }
}

/// Watch events for the changed paths: a watch fires for changes at or under its path, and
/// for changes to its ancestors (xenstored fires those only for removals; the extra events are
/// harmless, clients must expect spurious events anyway).
fn fire(st: &State, changed: &[String]) -> Vec<Event> {
    let mut events = Vec::new();
    for p in changed {
        for w in &st.watches {
            if w.path.starts_with('@') {
                continue;
            }
            if is_under(p, &w.path) || is_under(&w.path, p) {
                events.push((w.out.clone(), p.clone(), w.token.clone()));
            }
        }
    }
    events
}
