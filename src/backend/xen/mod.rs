//! The Xen platform: the hypervisor through libxenctrl ([`ctrl`]) and xenstore through
//! libxenstore ([`xs`]).
//!
//! Built only with the `xen` cargo feature, which links libxenctrl and libxenstore (both
//! LGPL-2.1) through declarations written in this module ([`xs`] and a private `xc_sys`), so
//! the Xen build stays LGPL-2.1-or-later; the default build links no Xen library at all.
//!
//! [`platform`] puts both together, with the system clock, as the memory service's
//! [`crate::platform::Platform`].
//!
//! On a machine without Xen, [`XenCtrl::open`] fails with [`crate::Error::Unsupported`] ("no
//! Xen hypervisor: /dev/xen/privcmd not available"), and [`XsHandle::open`] with
//! [`crate::Error::Backend`] naming the socket it tried.

pub mod ctrl;
pub mod store;
mod xc_sys;
pub mod xs;

pub use ctrl::XenCtrl;
pub use store::{XenStore, XenWatch};
pub use xs::{Commit, XsHandle, XsTxn};

use std::sync::Arc;

use crate::error::Result;
use crate::platform::{Platform, SystemClock};

/// This host's Xen platform for the memory service: libxenctrl, xenstored and the system
/// clock. Fails with [`crate::Error::Unsupported`] on a machine without Xen.
pub fn platform() -> Result<Platform> {
    let hypervisor = XenCtrl::open()?;
    let store = XenStore::open()?;
    Ok(Platform {
        hypervisor: Arc::new(hypervisor),
        store: Arc::new(store),
        clock: Arc::new(SystemClock),
    })
}
