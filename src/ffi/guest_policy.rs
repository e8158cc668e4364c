//! `sqz_set_guest_policy`: a guest's dynamic range and weight from its configuration, written
//! for toolstacks that write none (xl, libvirt's libxl driver). See `crate::guest_policy`.

use std::ffi::c_char;

use crate::guest_policy::{parse_keys, resolve, PolicyKeys, HOST_PREFIX, VM_PREFIX};

use super::error::sqz_status;
use super::guard;
use super::service::{service, sqz_service, str_arg};

/// Writes the ballooning policy of domain `domid`, built with `memory_kib` (its target) and
/// `maxmem_kib`: its `memory/dynamic-min`, `memory/dynamic-max`, `memory/weight` and, when its
/// range is more than one point, `control/feature-balloon`.
///
/// `vm_config` is the text of the VM's configuration (xl syntax; its `squeeze_dynamic_min`,
/// `squeeze_dynamic_max` and `squeeze_weight` keys are used) and `host_config` that of the
/// host-wide defaults (`/etc/xen/xl.conf`: `squeeze_default_dynamic_min` ...); either may be
/// NULL. A VM with no key and no default is fixed at `memory_kib`.
///
/// Errors: a NULL service, texts that are not UTF-8, a bad key value or an impossible range
/// (above `maxmem_kib`, minimum above maximum) → `SQZ_ERR_INVALID_ARGUMENT` naming the key;
/// impossible sizes → `SQZ_ERR_INVALID_MEMORY_VALUE`. Nothing is written on error.
#[no_mangle]
pub unsafe extern "C" fn sqz_set_guest_policy(
    s: *mut sqz_service,
    domid: i32,
    vm_config: *const c_char,
    host_config: *const c_char,
    memory_kib: i64,
    maxmem_kib: i64,
) -> sqz_status {
    guard::status(|| {
        // SAFETY: the caller passes NULL or valid pointers.
        let svc = unsafe { service(s)? };
        let keys = |p: *const c_char, name: &str, prefix: &str| -> Result<PolicyKeys, _> {
            if p.is_null() {
                return Ok(PolicyKeys::default());
            }
            // SAFETY: not NULL; the caller passes a NUL-terminated string.
            let text = unsafe { str_arg(p, name)? };
            Ok::<_, super::error::Failure>(parse_keys(text, prefix)?)
        };
        let vm = keys(vm_config, "vm_config", VM_PREFIX)?;
        let host = keys(host_config, "host_config", HOST_PREFIX)?;
        let policy = resolve(&vm, &host, memory_kib, maxmem_kib)?;
        svc.set_guest_policy(domid, &policy)?;
        Ok(())
    })
}
