//! Opening the Xen platform on a machine without Xen gives a clear error, not a crash or a
//! hang. On a Xen host the same tests check that the interfaces really open.

#![cfg(feature = "xen")]

use squeeze::backend::xen::{ctrl::PRIVCMD, XenCtrl, XsHandle};
use squeeze::Error;

#[test]
fn opening_the_hypervisor_without_xen_says_there_is_no_xen() {
    let opened = XenCtrl::open();
    if std::path::Path::new(PRIVCMD).exists() {
        // A Xen host: dom0 is always there, and the host has memory that is not free.
        let xc = opened.expect("open libxenctrl on a Xen host");
        let dom0 = xc.domain(0).unwrap().expect("dom0 exists");
        assert!(dom0.tot_pages > 0);
        let phys = xc.physinfo().unwrap();
        assert!(phys.total_pages > phys.free_pages);
        assert_eq!(xc.domains().unwrap()[0].domid, 0);
    } else {
        match opened {
            Err(Error::Unsupported(msg)) => assert!(
                msg.starts_with("no Xen hypervisor: /dev/xen/privcmd not available"),
                "{msg}"
            ),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn the_service_platform_without_xen_is_unsupported_not_a_crash() {
    let platform = squeeze::backend::xen::platform();
    if std::path::Path::new(PRIVCMD).exists() {
        // A Xen host: the hypervisor opens; only xenstored may be missing.
        if let Err(e) = platform {
            assert!(
                matches!(e, Error::Backend(ref m) if m.contains("xenstored")),
                "{e}"
            );
        }
        return;
    }
    match platform {
        Err(Error::Unsupported(msg)) => assert!(msg.contains("no Xen hypervisor"), "{msg}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn connecting_to_a_xenstored_that_is_not_there_names_the_socket() {
    let socket = std::env::temp_dir().join(format!("squeeze-no-xenstored-{}", std::process::id()));
    std::env::set_var("XENSTORED_PATH", &socket);
    match XsHandle::open() {
        Err(Error::Backend(msg)) => {
            assert!(msg.starts_with("cannot connect to xenstored"), "{msg}");
            assert!(msg.contains(&socket.display().to_string()), "{msg}");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
}

#[test]
fn the_c_service_over_xen_without_xen_is_a_backend_error_naming_privcmd() {
    use squeeze::ffi::*;
    use std::ffi::CStr;
    if std::path::Path::new(PRIVCMD).exists() {
        // A Xen host: whether this opens depends on the privileges the test runs with.
        return;
    }
    let mut svc: *mut sqz_service = std::ptr::null_mut();
    // SAFETY: a NULL config (defaults) and a valid out-pointer.
    let st = unsafe { sqz_service_new_xen(std::ptr::null(), &mut svc) };
    assert_eq!(st, SQZ_ERR_BACKEND);
    assert!(svc.is_null());
    // SAFETY: the message is a C string owned by the library, valid until the next call.
    let msg = unsafe { CStr::from_ptr(sqz_last_error_message()) }.to_string_lossy();
    assert!(
        msg.contains("no Xen hypervisor: /dev/xen/privcmd not available"),
        "{msg}"
    );
}
