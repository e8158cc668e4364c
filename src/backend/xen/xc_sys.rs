//! The few libxenctrl declarations [`super::ctrl`] uses, written by hand.
//!
//! libxenctrl is LGPL-2.1; declaring its calls here (rather than through a generated binding
//! crate) keeps the Xen build under the project's own licence. Three rules keep this sound:
//!
//! - handles are opaque types that Rust never dereferences;
//! - C enums (`xc_error_code`, `xentoollog_level`) are plain `c_int`s, so a value a newer
//!   libxenctrl adds is just a number, never an invalid Rust enum;
//! - the structs libxenctrl writes into (`xc_domaininfo_t`, `xc_physinfo_t`, `xc_error`,
//!   `xentoollog_logger`) are `#[repr(C)]` copies of the installed headers, whose sizes and
//!   field offsets a test compares with a C program built against `/usr/include/xenctrl.h`.
//!
//! The layouts are those of Xen 4.17's interface (`XEN_DOMCTL_INTERFACE_VERSION` 0x15,
//! `XEN_SYSCTL_INTERFACE_VERSION` 0x15), on x86-64 and Arm.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

/// An open libxenctrl interface (`xc_interface`); only ever used behind a pointer.
#[repr(C)]
pub struct XcInterface {
    _opaque: [u8; 0],
}

/// `xentoollog_level` (`XTL_*`), read as the integer it is.
pub type XtlLevel = c_int;
/// `XTL_INFO`.
pub const XTL_INFO: XtlLevel = 5;
/// `XTL_NOTICE`.
pub const XTL_NOTICE: XtlLevel = 6;
/// `XTL_WARN`.
pub const XTL_WARN: XtlLevel = 7;
/// `XTL_ERROR`.
pub const XTL_ERROR: XtlLevel = 8;
/// `XTL_CRITICAL`.
pub const XTL_CRITICAL: XtlLevel = 9;

/// `xc_error_code`, read as an integer; only "no error" matters here.
pub type XcErrorCode = c_int;
/// `XC_ERROR_NONE`.
pub const XC_ERROR_NONE: XcErrorCode = 0;

/// `XC_MAX_ERROR_MSG_LEN`.
pub const XC_MAX_ERROR_MSG_LEN: usize = 1024;

/// `xc_error`: the last error recorded on a handle.
#[repr(C)]
pub struct XcError {
    /// An `xc_error_code`.
    pub code: XcErrorCode,
    /// A NUL-terminated message.
    pub message: [c_char; XC_MAX_ERROR_MSG_LEN],
}

/// The `va_list` a logger callback receives, never looked into: it is only handed on to
/// `vsnprintf`. On every ABI Xen runs on, a `va_list` argument travels as one pointer-sized
/// value (x86-64: an array decaying to a pointer; arm64: a 32-byte struct passed by reference;
/// 32-bit ABIs: a pointer or a struct holding one), so one opaque pointer type fits all.
pub type VaList = *mut c_void;

/// `xentoollog_logger`: three callbacks, each optional.
#[repr(C)]
pub struct XtlLogger {
    /// Receives one message.
    pub vmessage: Option<
        unsafe extern "C" fn(
            logger: *mut XtlLogger,
            level: XtlLevel,
            errnoval: c_int,
            context: *const c_char,
            format: *const c_char,
            al: VaList,
        ),
    >,
    /// Progress of a long operation.
    pub progress: Option<
        unsafe extern "C" fn(
            logger: *mut XtlLogger,
            context: *const c_char,
            doing_what: *const c_char,
            percent: c_int,
            done: c_ulong,
            total: c_ulong,
        ),
    >,
    /// Called when libxenctrl is done with the logger.
    pub destroy: Option<unsafe extern "C" fn(logger: *mut XtlLogger)>,
}

/// `XEN_DOMINF_dying`.
pub const XEN_DOMINF_DYING: u32 = 1 << 0;
/// `XEN_DOMINF_hvm_guest`.
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
/// `XEN_DOMINF_shutdown`.
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
/// `XEN_DOMINF_paused`.
pub const XEN_DOMINF_PAUSED: u32 = 1 << 3;

/// `XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION`.
pub const XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION: c_uint = 30;

/// `struct xen_arch_domainconfig` on x86.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ArchDomainConfig {
    /// `emulation_flags`.
    pub emulation_flags: u32,
    /// `misc_flags`.
    pub misc_flags: u32,
}

/// `struct xen_arch_domainconfig` on Arm.
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ArchDomainConfig {
    /// `gic_version`.
    pub gic_version: u8,
    /// `tee_type`.
    pub tee_type: u16,
    /// `nr_spis`.
    pub nr_spis: u32,
    /// `clock_frequency`.
    pub clock_frequency: u32,
}

/// `xc_domaininfo_t` (`struct xen_domctl_getdomaininfo`). The hypervisor's `uint64_aligned_t`
/// is 8-byte aligned on every architecture, which `u64` fields plus `align(8)` reproduce.
#[repr(C, align(8))]
#[derive(Debug, Default, Clone, Copy)]
pub struct XcDomainInfo {
    /// The domain id.
    pub domain: u16,
    /// Padding.
    pub pad1: u16,
    /// `XEN_DOMINF_*` bits.
    pub flags: u32,
    /// Pages the domain holds.
    pub tot_pages: u64,
    /// Its allocation limit, in pages.
    pub max_pages: u64,
    /// Pages still claimed for it.
    pub outstanding_pages: u64,
    /// Pages it shares.
    pub shr_pages: u64,
    /// Pages paged out.
    pub paged_pages: u64,
    /// Frame of its shared-info page.
    pub shared_info_frame: u64,
    /// CPU time used, in ns.
    pub cpu_time: u64,
    /// vCPUs online.
    pub nr_online_vcpus: u32,
    /// Highest vCPU id.
    pub max_vcpu_id: u32,
    /// Security label.
    pub ssidref: u32,
    /// The domain's UUID.
    pub handle: [u8; 16],
    /// Its CPU pool.
    pub cpupool: u32,
    /// Guest physical address bits.
    pub gpaddr_bits: u8,
    /// Padding.
    pub pad2: [u8; 7],
    /// Architecture-specific configuration.
    pub arch_config: ArchDomainConfig,
}

/// `xc_physinfo_t` (`struct xen_sysctl_physinfo`).
#[repr(C, align(8))]
#[derive(Debug, Default, Clone, Copy)]
pub struct XcPhysInfo {
    /// Threads per core.
    pub threads_per_core: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// CPUs online.
    pub nr_cpus: u32,
    /// Largest possible CPU id.
    pub max_cpu_id: u32,
    /// NUMA nodes online.
    pub nr_nodes: u32,
    /// Largest possible node id.
    pub max_node_id: u32,
    /// CPU speed.
    pub cpu_khz: u32,
    /// `XEN_SYSCTL_PHYSCAP_*`.
    pub capabilities: u32,
    /// Architecture capabilities.
    pub arch_capabilities: u32,
    /// Padding.
    pub pad: u32,
    /// Pages of RAM.
    pub total_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// Pages waiting to be scrubbed.
    pub scrub_pages: u64,
    /// Pages claimed by domains but not yet allocated.
    pub outstanding_pages: u64,
    /// Largest machine frame number.
    pub max_mfn: u64,
    /// Hardware capabilities.
    pub hw_cap: [u32; 8],
}

#[link(name = "xenctrl")]
extern "C" {
    pub fn xc_interface_open(
        logger: *mut XtlLogger,
        dombuild_logger: *mut XtlLogger,
        open_flags: c_uint,
    ) -> *mut XcInterface;
    pub fn xc_interface_close(xch: *mut XcInterface) -> c_int;
    pub fn xc_domain_getinfolist(
        xch: *mut XcInterface,
        first_domain: u32,
        max_domains: c_uint,
        info: *mut XcDomainInfo,
    ) -> c_int;
    pub fn xc_physinfo(xch: *mut XcInterface, info: *mut XcPhysInfo) -> c_int;
    pub fn xc_shadow_control(
        xch: *mut XcInterface,
        domid: u32,
        sop: c_uint,
        mb: *mut c_uint,
        mode: c_uint,
    ) -> c_int;
    pub fn xc_domain_setmaxmem(xch: *mut XcInterface, domid: u32, max_memkb: u64) -> c_int;
    pub fn xc_domain_claim_pages(xch: *mut XcInterface, domid: u32, nr_pages: c_ulong) -> c_int;
    pub fn xc_sharing_freed_pages(xch: *mut XcInterface) -> c_long;
    pub fn xc_sharing_used_frames(xch: *mut XcInterface) -> c_long;
    pub fn xc_get_last_error(xch: *mut XcInterface) -> *const XcError;
    pub fn xc_clear_last_error(xch: *mut XcInterface);
}

#[cfg(test)]
mod tests {
    //! The declarations above against the installed headers: a C program built with
    //! `/usr/include/xenctrl.h` prints each size, offset and constant, and each must equal the
    //! Rust side's.

    use super::*;
    use std::mem::{offset_of, size_of};

    /// What the C program prints, one `name value` per line, in this order.
    const PROBES: &[&str] = &[
        "sizeof(xc_domaininfo_t)",
        "offsetof(xc_domaininfo_t, domain)",
        "offsetof(xc_domaininfo_t, flags)",
        "offsetof(xc_domaininfo_t, tot_pages)",
        "offsetof(xc_domaininfo_t, max_pages)",
        "offsetof(xc_domaininfo_t, outstanding_pages)",
        "offsetof(xc_domaininfo_t, shr_pages)",
        "offsetof(xc_domaininfo_t, cpupool)",
        "offsetof(xc_domaininfo_t, arch_config)",
        "sizeof(xc_physinfo_t)",
        "offsetof(xc_physinfo_t, total_pages)",
        "offsetof(xc_physinfo_t, free_pages)",
        "offsetof(xc_physinfo_t, scrub_pages)",
        "offsetof(xc_physinfo_t, outstanding_pages)",
        "offsetof(xc_physinfo_t, hw_cap)",
        "sizeof(xc_error)",
        "offsetof(xc_error, message)",
        "sizeof(enum xc_error_code)",
        "sizeof(xentoollog_level)",
        "sizeof(xentoollog_logger)",
        "offsetof(xentoollog_logger, progress)",
        "offsetof(xentoollog_logger, destroy)",
        "sizeof(va_list*)",
        "XEN_DOMINF_dying",
        "XEN_DOMINF_hvm_guest",
        "XEN_DOMINF_shutdown",
        "XEN_DOMINF_paused",
        "XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION",
        "XC_ERROR_NONE",
        "XC_MAX_ERROR_MSG_LEN",
        "XTL_INFO",
        "XTL_NOTICE",
        "XTL_WARN",
        "XTL_ERROR",
        "XTL_CRITICAL",
    ];

    /// The same quantities on the Rust side, in [`PROBES`] order. `va_list` is passed as one
    /// pointer-sized value, which the C side's `sizeof(va_list*)` stands for.
    fn rust_values() -> Vec<u64> {
        let v = |x: usize| x as u64;
        vec![
            v(size_of::<XcDomainInfo>()),
            v(offset_of!(XcDomainInfo, domain)),
            v(offset_of!(XcDomainInfo, flags)),
            v(offset_of!(XcDomainInfo, tot_pages)),
            v(offset_of!(XcDomainInfo, max_pages)),
            v(offset_of!(XcDomainInfo, outstanding_pages)),
            v(offset_of!(XcDomainInfo, shr_pages)),
            v(offset_of!(XcDomainInfo, cpupool)),
            v(offset_of!(XcDomainInfo, arch_config)),
            v(size_of::<XcPhysInfo>()),
            v(offset_of!(XcPhysInfo, total_pages)),
            v(offset_of!(XcPhysInfo, free_pages)),
            v(offset_of!(XcPhysInfo, scrub_pages)),
            v(offset_of!(XcPhysInfo, outstanding_pages)),
            v(offset_of!(XcPhysInfo, hw_cap)),
            v(size_of::<XcError>()),
            v(offset_of!(XcError, message)),
            v(size_of::<XcErrorCode>()),
            v(size_of::<XtlLevel>()),
            v(size_of::<XtlLogger>()),
            v(offset_of!(XtlLogger, progress)),
            v(offset_of!(XtlLogger, destroy)),
            v(size_of::<VaList>()),
            u64::from(XEN_DOMINF_DYING),
            u64::from(XEN_DOMINF_HVM_GUEST),
            u64::from(XEN_DOMINF_SHUTDOWN),
            u64::from(XEN_DOMINF_PAUSED),
            u64::from(XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION),
            XC_ERROR_NONE as u64,
            v(XC_MAX_ERROR_MSG_LEN),
            XTL_INFO as u64,
            XTL_NOTICE as u64,
            XTL_WARN as u64,
            XTL_ERROR as u64,
            XTL_CRITICAL as u64,
        ]
    }

    /// Builds and runs the probe program against the installed headers.
    fn c_values() -> Vec<(String, u64)> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let src = dir.path().join("layout.c");
        let exe = dir.path().join("layout");
        let mut c = String::from(
            "#include <stdarg.h>\n#include <stddef.h>\n#include <stdio.h>\n\
             #include <xenctrl.h>\n#include <xentoollog.h>\nint main(void) {\n",
        );
        for p in PROBES {
            c.push_str(&format!(
                "  printf(\"%s %llu\\n\", \"{p}\", (unsigned long long)({p}));\n"
            ));
        }
        c.push_str("  return 0;\n}\n");
        std::fs::write(&src, c).expect("write the probe");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = std::process::Command::new(&cc)
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
        assert!(
            built.status.success(),
            "the probe does not build against xenctrl.h:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let out = std::process::Command::new(&exe)
            .output()
            .expect("run the probe");
        String::from_utf8(out.stdout)
            .expect("ASCII output")
            .lines()
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_owned(), value.parse().expect("a number"))
            })
            .collect()
    }

    #[test]
    fn hand_written_structs_and_constants_match_the_installed_xenctrl_h() {
        let c = c_values();
        assert_eq!(c.len(), PROBES.len());
        let mismatches: Vec<String> = c
            .iter()
            .zip(rust_values())
            .filter(|((_, cv), rv)| cv != rv)
            .map(|((name, cv), rv)| format!("{name}: C {cv}, Rust {rv}"))
            .collect();
        assert!(mismatches.is_empty(), "layout differs: {mismatches:#?}");
        // Numbers a reader can check against Xen 4.17's domctl.h on x86-64: domid, pad and
        // flags take 8 bytes; seven u64 counters end at 64; three u32, the 16-byte handle,
        // cpupool, gpaddr_bits and its 7 pad bytes end at 104; the 8-byte x86 arch_config
        // makes 112.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            (
                size_of::<XcDomainInfo>(),
                offset_of!(XcDomainInfo, tot_pages)
            ),
            (112, 8)
        );
    }
}
