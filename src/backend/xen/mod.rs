//! The Xen platform: the hypervisor through libxenctrl ([`ctrl`]) and xenstore through
//! libxenstore ([`xs`]).
//!
//! Built only with the `xen` cargo feature. The feature links libxenctrl through `xenctrl-sys`,
//! which is GPL-3.0-only, so a binary built with it is distributed under the GPL-3.0; the
//! default build links no Xen library at all.
//!
//! On a machine without Xen, [`XenCtrl::open`] fails with [`crate::Error::Unsupported`] ("no
//! Xen hypervisor: /dev/xen/privcmd not available"), and [`XsHandle::open`] with
//! [`crate::Error::Backend`] naming the socket it tried.

pub mod ctrl;
pub mod xs;

pub use ctrl::{XcDomainInfo, XcPhysInfo, XenCtrl};
pub use xs::{Commit, XsHandle, XsTxn};
