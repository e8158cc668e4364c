//! [`Store`] over xenstored, for the memory service.

use crate::error::Result;
use crate::platform::{Store, StoreOps, Watch};

use super::xs::{XsHandle, XsTxn};

/// The token squeeze puts on its watches (each watch has its own connection, so one token is
/// enough to recognise them).
const WATCH_TOKEN: &str = "squeeze";

/// xenstore as the memory service's [`Store`].
#[derive(Debug)]
pub struct XenStore {
    xs: XsHandle,
}

impl XenStore {
    /// Connects to xenstored (`XENSTORED_PATH`, else the standard socket, else xenbus).
    pub fn open() -> Result<Self> {
        Ok(XenStore {
            xs: XsHandle::open()?,
        })
    }

    /// Requests sent to xenstored so far through this store and its watches.
    pub fn requests(&self) -> u64 {
        self.xs.requests()
    }
}

struct Ops<'t, 'h>(&'t XsTxn<'h>);

impl StoreOps for Ops<'_, '_> {
    fn read(&mut self, path: &str) -> Result<Option<String>> {
        self.0.read(path)
    }
    fn write(&mut self, path: &str, value: &str) -> Result<()> {
        self.0.write(path, value)
    }
    fn rm(&mut self, path: &str) -> Result<()> {
        self.0.rm(path)
    }
    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        self.0.directory(path)
    }
}

impl Store for XenStore {
    fn transaction(&self, body: &mut dyn FnMut(&mut dyn StoreOps) -> Result<()>) -> Result<()> {
        self.xs.with_transaction(|t| body(&mut Ops(t)))
    }

    fn watch(&self, path: &str) -> Result<Box<dyn Watch>> {
        // A connection of its own, so that its events are exactly this watch's.
        let xs = self.xs.open_sharing_count()?;
        xs.watch(path, WATCH_TOKEN)?;
        Ok(Box::new(XenWatch {
            xs,
            paths: vec![path.to_owned()],
        }))
    }

    fn requests(&self) -> Option<u64> {
        Some(self.xs.requests())
    }

    // Single reads and writes go straight to xenstored: one request each instead of the three
    // (start, operation, end) a transaction costs. xenstored applies each atomically.
    fn read(&self, path: &str) -> Result<Option<String>> {
        self.xs.read(path)
    }
    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.xs.write(path, value)
    }
    fn rm(&self, path: &str) -> Result<()> {
        self.xs.rm(path)
    }
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        self.xs.directory(path)
    }
}

/// A watch on xenstore subtrees (and special paths), on a connection of its own.
///
/// Right after a path is watched, xenstored reports it once, which the next poll passes on
/// ("something under here may have changed").
#[derive(Debug)]
pub struct XenWatch {
    xs: XsHandle,
    paths: Vec<String>,
}

impl Watch for XenWatch {
    fn poll(&mut self) -> Result<Vec<String>> {
        // A round trip on the watch's connection first: xenstored queues a change's events
        // before it answers the writer, so once this reply is in, every event of a write that
        // finished before the poll has been received and is reported now, not next time.
        self.xs.read("/")?;
        self.xs.pending_events(0)
    }

    fn add(&mut self, path: &str) -> Result<()> {
        if self.paths.iter().any(|p| p == path) {
            return Ok(());
        }
        self.xs.watch(path, WATCH_TOKEN)?;
        self.paths.push(path.to_owned());
        Ok(())
    }

    fn remove(&mut self, path: &str) -> Result<()> {
        self.xs.unwatch(path, WATCH_TOKEN)?;
        self.paths.retain(|p| p != path);
        Ok(())
    }
}

impl Drop for XenWatch {
    fn drop(&mut self) {
        // Closing the connection drops the watches in xenstored anyway; unwatching first is
        // only tidiness, so a failure is not worth reporting.
        for p in &self.paths {
            let _ = self.xs.unwatch(p, WATCH_TOKEN);
        }
    }
}
