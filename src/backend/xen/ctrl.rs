//! The hypervisor through libxenctrl: the domain list, host memory figures, maxmem, claims,
//! shadow allocations and the memory-sharing counters.
//!
//! Only `xc_domain_getinfolist` is used to list domains: `xc_domain_getinfo` was removed in Xen
//! 4.18, and this module builds against Xen 4.17 (Debian 12) and newer headers alike.

use std::ffi::{c_char, c_int, c_uint, c_ulong, CStr};
use std::sync::Mutex;

use super::xc_sys as xc;

use crate::error::{Error, Result};
use crate::model::{DomId, Kib, MAX_KIB};
use crate::platform::{pages, DomainInfo, Hypervisor, PhysInfo};

/// The device libxenctrl talks to the hypervisor through; without it there is no Xen.
pub const PRIVCMD: &str = "/dev/xen/privcmd";

/// How many domains one `xc_domain_getinfolist` call fetches. Hosts with more domains are read
/// in several batches.
const GETINFO_BATCH: usize = 256;

/// The largest valid domain id (`DOMID_FIRST_RESERVED - 1`); ids above it name special domains.
const MAX_DOMID: u32 = 0x7FEF;

/// Decodes the fields squeeze uses from one `xc_domaininfo_t`.
fn decode_domain(info: &xc::XcDomainInfo) -> DomainInfo {
    let flag = |bit: u32| info.flags & bit != 0;
    DomainInfo {
        domid: DomId::from(info.domain),
        tot_pages: info.tot_pages,
        max_pages: info.max_pages,
        outstanding_pages: info.outstanding_pages,
        shared_pages: info.shr_pages,
        dying: flag(xc::XEN_DOMINF_DYING),
        shutdown: flag(xc::XEN_DOMINF_SHUTDOWN),
        paused: flag(xc::XEN_DOMINF_PAUSED),
        hvm: flag(xc::XEN_DOMINF_HVM_GUEST),
    }
}

/// Reads the whole domain list through `fetch(first_domid, buffer) -> entries written`
/// (`xc_domain_getinfolist`), one batch at a time: a full batch means there may be more after
/// its last domain.
fn list_in_batches(
    mut fetch: impl FnMut(u32, &mut [xc::XcDomainInfo]) -> Result<usize>,
) -> Result<Vec<DomainInfo>> {
    let mut out = Vec::new();
    let mut first: u32 = 0;
    let mut buf = vec![xc::XcDomainInfo::default(); GETINFO_BATCH];
    loop {
        let n = fetch(first, &mut buf)?.min(GETINFO_BATCH);
        let batch = &buf[..n];
        out.extend(batch.iter().map(decode_domain));
        match batch.last() {
            Some(last) if n == GETINFO_BATCH && u32::from(last.domain) < MAX_DOMID => {
                first = u32::from(last.domain) + 1;
            }
            _ => return Ok(out),
        }
    }
}

fn check_domid(domid: DomId) -> Result<u32> {
    u32::try_from(domid)
        .ok()
        .filter(|&d| d <= MAX_DOMID)
        .ok_or_else(|| Error::InvalidArgument(format!("{domid} is not a valid Xen domain id")))
}

/// An open libxenctrl interface.
///
/// Calls are serialised through a mutex: libxenctrl keeps the last error per handle, and one
/// caller's error must not be reported to another.
pub struct XenCtrl {
    handle: Mutex<Handle>,
}

struct Handle {
    xch: *mut xc::XcInterface,
    // libxenctrl keeps a pointer to the logger for as long as the interface is open, so the
    // logger lives in a box owned next to the interface and is freed after it is closed.
    _logger: Box<xc::XtlLogger>,
}

// SAFETY: the interface pointer is only used while the mutex is held, and libxenctrl handles
// may be used from any thread as long as calls on one handle do not overlap.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `xch` came from `xc_interface_open`, is closed exactly once, here, and the
        // logger it points to is still alive (it is dropped after this body).
        unsafe { xc::xc_interface_close(self.xch) };
    }
}

impl std::fmt::Debug for XenCtrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XenCtrl { .. }")
    }
}

impl XenCtrl {
    /// Opens the hypervisor interface.
    ///
    /// Without a hypervisor (no [`PRIVCMD`] device) this returns [`Error::Unsupported`] saying
    /// so; any other failure libxenctrl reports is [`Error::Backend`] with its message.
    pub fn open() -> Result<Self> {
        let mut logger = Box::new(xc::XtlLogger {
            vmessage: Some(log_vmessage),
            progress: Some(log_progress),
            destroy: Some(log_destroy),
        });
        let logger_ptr: *mut xc::XtlLogger = &mut *logger;
        // SAFETY: the logger outlives the interface (see `Handle`); 0 asks for a reentrant
        // handle with libxenctrl's default flags.
        let xch = unsafe { xc::xc_interface_open(logger_ptr, logger_ptr, 0) };
        if xch.is_null() {
            let err = std::io::Error::last_os_error();
            if !std::path::Path::new(PRIVCMD).exists() {
                // The missing device says it all; errno would only repeat it.
                return Err(Error::Unsupported(format!(
                    "no Xen hypervisor: {PRIVCMD} not available"
                )));
            }
            return Err(Error::Backend(format!(
                "cannot open the Xen control interface: {err}"
            )));
        }
        Ok(XenCtrl {
            handle: Mutex::new(Handle {
                xch,
                _logger: logger,
            }),
        })
    }

    fn with<T>(&self, body: impl FnOnce(*mut xc::XcInterface) -> T) -> T {
        // A poisoned lock only means another caller panicked between calls; the handle itself
        // is still usable.
        let guard = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        body(guard.xch)
    }

    /// Every domain the hypervisor knows, including dying ones, in domid order.
    pub fn domains(&self) -> Result<Vec<DomainInfo>> {
        list_in_batches(|first, buf| {
            self.with(|xch| {
                // SAFETY: `buf` is a valid, writable slice and the call writes at most
                // `buf.len()` entries.
                let n = unsafe {
                    xc::xc_domain_getinfolist(xch, first, buf.len() as c_uint, buf.as_mut_ptr())
                };
                if n < 0 {
                    Err(last_error(xch, "xc_domain_getinfolist"))
                } else {
                    Ok(n as usize)
                }
            })
        })
    }

    /// One domain, or `None` when it does not exist (a domain that went away between two calls
    /// is normal).
    pub fn domain(&self, domid: DomId) -> Result<Option<DomainInfo>> {
        let id = check_domid(domid)?;
        let mut info = xc::XcDomainInfo::default();
        self.with(|xch| {
            // SAFETY: `info` is one writable entry, and one is asked for.
            let n = unsafe { xc::xc_domain_getinfolist(xch, id, 1, &mut info) };
            if n < 0 {
                return Err(last_error(xch, "xc_domain_getinfolist"));
            }
            // getinfolist returns the first domain at or after `id`: another id means ours is
            // gone.
            Ok((n == 1 && u32::from(info.domain) == id).then(|| decode_domain(&info)))
        })
    }

    /// Host-wide memory figures.
    pub fn physinfo(&self) -> Result<PhysInfo> {
        let mut info = xc::XcPhysInfo::default();
        self.with(|xch| {
            // SAFETY: `info` is a valid, writable xc_physinfo_t.
            if unsafe { xc::xc_physinfo(xch, &mut info) } != 0 {
                return Err(last_error(xch, "xc_physinfo"));
            }
            Ok(PhysInfo {
                total_pages: info.total_pages,
                free_pages: info.free_pages,
                scrub_pages: info.scrub_pages,
                outstanding_pages: info.outstanding_pages,
            })
        })
    }

    /// The shadow (paging) allocation of a domain, in MiB.
    pub fn shadow_allocation_mib(&self, domid: DomId) -> Result<u64> {
        let id = check_domid(domid)?;
        let mut mib: c_uint = 0;
        self.with(|xch| {
            // SAFETY: `mib` is a valid out-parameter; GET_ALLOCATION only writes it.
            let rc = unsafe {
                xc::xc_shadow_control(
                    xch,
                    id,
                    xc::XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION,
                    &mut mib,
                    0,
                )
            };
            if rc != 0 {
                return Err(last_error(xch, "xc_shadow_control(get allocation)"));
            }
            Ok(u64::from(mib))
        })
    }

    /// Sets the allocation limit of a domain, in KiB.
    pub fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> Result<()> {
        let id = check_domid(domid)?;
        if !(0..=MAX_KIB).contains(&kib) {
            return Err(Error::InvalidMemoryValue(format!(
                "maxmem of {kib} KiB for domain {domid}"
            )));
        }
        self.with(|xch| {
            // SAFETY: plain values; libxenctrl validates the domain.
            if unsafe { xc::xc_domain_setmaxmem(xch, id, kib as u64) } != 0 {
                return Err(last_error(xch, "xc_domain_setmaxmem"));
            }
            Ok(())
        })
    }

    /// Claims `pages` pages for a domain so no other allocation can take them; 0 releases the
    /// claim.
    pub fn claim_pages(&self, domid: DomId, pages: u64) -> Result<()> {
        let id = check_domid(domid)?;
        // A claim larger than any real host is a corrupted value, not a request.
        pages::to_kib(pages)?;
        let nr = c_ulong::try_from(pages)
            .map_err(|_| Error::InvalidMemoryValue(format!("a claim of {pages} pages")))?;
        self.with(|xch| {
            // SAFETY: plain values; the hypervisor validates the claim.
            if unsafe { xc::xc_domain_claim_pages(xch, id, nr) } != 0 {
                return Err(last_error(xch, "xc_domain_claim_pages"));
            }
            Ok(())
        })
    }

    /// Pages freed by memory sharing (`xc_sharing_freed_pages`).
    pub fn sharing_freed_pages(&self) -> Result<u64> {
        self.sharing_counter("xc_sharing_freed_pages", xc::xc_sharing_freed_pages)
    }

    /// Frames used to back shared pages (`xc_sharing_used_frames`).
    pub fn sharing_used_frames(&self) -> Result<u64> {
        self.sharing_counter("xc_sharing_used_frames", xc::xc_sharing_used_frames)
    }

    fn sharing_counter(
        &self,
        what: &str,
        call: unsafe extern "C" fn(*mut xc::XcInterface) -> std::ffi::c_long,
    ) -> Result<u64> {
        self.with(|xch| {
            // SAFETY: the counter calls only read hypervisor state through the handle.
            let v = unsafe { call(xch) };
            u64::try_from(v).map_err(|_| last_error(xch, what))
        })
    }
}

impl Hypervisor for XenCtrl {
    fn domains(&self) -> Result<Vec<DomainInfo>> {
        XenCtrl::domains(self)
    }
    fn domain(&self, domid: DomId) -> Result<Option<DomainInfo>> {
        XenCtrl::domain(self, domid)
    }
    fn physinfo(&self) -> Result<PhysInfo> {
        XenCtrl::physinfo(self)
    }
    fn shadow_allocation_mib(&self, domid: DomId) -> Result<u64> {
        XenCtrl::shadow_allocation_mib(self, domid)
    }
    fn set_maxmem_kib(&self, domid: DomId, kib: Kib) -> Result<()> {
        XenCtrl::set_maxmem_kib(self, domid, kib)
    }
    fn claim_pages(&self, domid: DomId, pages: u64) -> Result<()> {
        XenCtrl::claim_pages(self, domid, pages)
    }
}

/// The error libxenctrl recorded for the last failed call on `xch`, or errno.
fn last_error(xch: *mut xc::XcInterface, what: &str) -> Error {
    let errno = std::io::Error::last_os_error();
    // SAFETY: `xch` is open; the returned pointer stays valid until the next call on it, and
    // we hold the handle's lock.
    let message = unsafe {
        let e = xc::xc_get_last_error(xch);
        if e.is_null() || (*e).code == xc::XC_ERROR_NONE {
            None
        } else {
            let m = CStr::from_ptr((*e).message.as_ptr()).to_string_lossy();
            (!m.is_empty()).then(|| m.into_owned())
        }
    };
    // SAFETY: as above.
    unsafe { xc::xc_clear_last_error(xch) };
    Error::Backend(match message {
        Some(m) => format!("{what} failed: {m} ({errno})"),
        None => format!("{what} failed: {errno}"),
    })
}

extern "C" {
    // From the C library: formats libxenctrl's log messages, whose arguments arrive as a
    // va_list, passed on exactly as received.
    fn vsnprintf(buf: *mut c_char, size: usize, format: *const c_char, ap: xc::VaList) -> c_int;
}

/// Forwards libxenctrl's messages to the `log` facade instead of letting them go to stderr.
unsafe extern "C" fn log_vmessage(
    _logger: *mut xc::XtlLogger,
    level: xc::XtlLevel,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    al: xc::VaList,
) {
    let mut buf = [0 as c_char; 512];
    // SAFETY: libxenctrl passes a format and its matching va_list; vsnprintf writes at most
    // buf.len() bytes including the terminator.
    let message = unsafe {
        if format.is_null() || vsnprintf(buf.as_mut_ptr(), buf.len(), format, al) < 0 {
            return;
        }
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    };
    let context = if context.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null context is a C string owned by libxenctrl for this call.
        unsafe { CStr::from_ptr(context) }
            .to_string_lossy()
            .into_owned()
    };
    let level = match level {
        xc::XTL_ERROR | xc::XTL_CRITICAL => log::Level::Error,
        // A level above CRITICAL (none today) is an error too; below INFO is debugging.
        l if l > xc::XTL_CRITICAL => log::Level::Error,
        xc::XTL_WARN => log::Level::Warn,
        xc::XTL_NOTICE | xc::XTL_INFO => log::Level::Info,
        _ => log::Level::Debug,
    };
    // Logging must not unwind into C.
    let _ = std::panic::catch_unwind(|| {
        if errnoval > 0 {
            let err = std::io::Error::from_raw_os_error(errnoval);
            log::log!(target: "squeeze::xen", level, "{context}: {message}: {err}");
        } else {
            log::log!(target: "squeeze::xen", level, "{context}: {message}");
        }
    });
}

unsafe extern "C" fn log_progress(
    _logger: *mut xc::XtlLogger,
    _context: *const c_char,
    _doing_what: *const c_char,
    _percent: c_int,
    _done: c_ulong,
    _total: c_ulong,
) {
    // Progress reports come from domain building and migration, which squeeze never does.
}

unsafe extern "C" fn log_destroy(_logger: *mut xc::XtlLogger) {
    // The logger is owned by `Handle` and freed by Rust.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dying_hvm_guest_is_decoded_with_its_page_counts() {
        let raw = xc::XcDomainInfo {
            domain: 7,
            flags: xc::XEN_DOMINF_DYING | xc::XEN_DOMINF_HVM_GUEST,
            tot_pages: 262_144,
            max_pages: 262_400,
            outstanding_pages: 16,
            shr_pages: 3,
            ..Default::default()
        };
        assert_eq!(
            decode_domain(&raw),
            DomainInfo {
                domid: 7,
                tot_pages: 262_144,
                max_pages: 262_400,
                outstanding_pages: 16,
                shared_pages: 3,
                dying: true,
                shutdown: false,
                paused: false,
                hvm: true,
            }
        );
    }

    #[test]
    fn a_paused_guest_that_shut_down_is_neither_dying_nor_hvm() {
        let raw = xc::XcDomainInfo {
            domain: 3,
            flags: xc::XEN_DOMINF_SHUTDOWN | xc::XEN_DOMINF_PAUSED,
            ..Default::default()
        };
        let d = decode_domain(&raw);
        assert!(d.shutdown && d.paused && !d.dying && !d.hvm);
    }

    /// A hypervisor holding domains `ids`: answers getinfolist like Xen (the first domains at
    /// or after `first`, as many as fit), counting calls.
    fn fake_getinfolist<'a>(
        ids: &'a [u16],
        calls: &'a mut u32,
    ) -> impl FnMut(u32, &mut [xc::XcDomainInfo]) -> Result<usize> + 'a {
        move |first, buf| {
            *calls += 1;
            let found: Vec<u16> = ids
                .iter()
                .copied()
                .filter(|&d| u32::from(d) >= first)
                .take(buf.len())
                .collect();
            for (slot, &d) in buf.iter_mut().zip(&found) {
                *slot = xc::XcDomainInfo {
                    domain: d,
                    tot_pages: 1000 + u64::from(d),
                    ..Default::default()
                };
            }
            Ok(found.len())
        }
    }

    #[test]
    fn six_hundred_domains_with_gaps_are_read_in_three_batches_each_once() {
        // dom0 and 599 guests with odd ids: 256 + 256 + 88 entries.
        let ids: Vec<u16> = std::iter::once(0)
            .chain((0..599).map(|i| 2 * i + 1))
            .collect();
        let mut calls = 0;
        let got = list_in_batches(fake_getinfolist(&ids, &mut calls)).unwrap();
        assert_eq!(calls, 3);
        let got_ids: Vec<u16> = got.iter().map(|d| d.domid as u16).collect();
        assert_eq!(got_ids, ids);
        assert_eq!(got[600 - 1].tot_pages, 1000 + 1197);
    }

    #[test]
    fn exactly_one_full_batch_needs_one_more_call_that_finds_nothing() {
        let ids: Vec<u16> = (0..256).collect();
        let mut calls = 0;
        let got = list_in_batches(fake_getinfolist(&ids, &mut calls)).unwrap();
        assert_eq!((got.len(), calls), (256, 2));
    }

    #[test]
    fn a_failing_list_call_is_reported_not_truncated() {
        let mut calls = 0;
        let r = list_in_batches(|first, buf| {
            calls += 1;
            if first == 0 {
                for (i, slot) in buf.iter_mut().enumerate() {
                    slot.domain = i as u16;
                }
                Ok(buf.len())
            } else {
                Err(Error::Backend("xc_domain_getinfolist failed: EPERM".into()))
            }
        });
        assert_eq!(
            r,
            Err(Error::Backend("xc_domain_getinfolist failed: EPERM".into()))
        );
        assert_eq!(calls, 2);
    }

    #[test]
    fn special_and_negative_domain_ids_are_refused() {
        assert_eq!(check_domid(0).unwrap(), 0);
        assert_eq!(check_domid(0x7FEF).unwrap(), 0x7FEF);
        // DOMID_SELF (0x7FF0) and beyond name no real domain.
        assert!(matches!(
            check_domid(0x7FF0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(check_domid(-1), Err(Error::InvalidArgument(_))));
    }
}
