//! The library's version, at compile time (macros) and at run time.

use std::ffi::c_char;

use super::guard;

/// Major version of the header. The shared library's SONAME carries it (`libsqueeze.so.0`).
pub const SQZ_VERSION_MAJOR: u32 = 0;
/// Minor version of the header.
pub const SQZ_VERSION_MINOR: u32 = 1;
/// Patch version of the header.
pub const SQZ_VERSION_PATCH: u32 = 0;
/// The three parts packed as `(MAJOR << 16) | (MINOR << 8) | PATCH`, for `#if` comparisons.
pub const SQZ_VERSION_NUMBER: u32 =
    (SQZ_VERSION_MAJOR << 16) | (SQZ_VERSION_MINOR << 8) | SQZ_VERSION_PATCH;

/// The crate version, NUL-terminated for C.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version as "MAJOR.MINOR.PATCH". The string is static; never NULL.
#[no_mangle]
pub extern "C" fn sqz_version() -> *const c_char {
    guard::value(VERSION.as_ptr().cast(), || VERSION.as_ptr().cast())
}

/// The library's version packed as `SQZ_VERSION_NUMBER` is: compare it with the macro to
/// detect a program running against a different library than it was compiled with.
#[no_mangle]
pub extern "C" fn sqz_version_number() -> u32 {
    guard::value(0, || SQZ_VERSION_NUMBER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_version_is_the_crate_version() {
        let part = |s: &str| s.parse::<u32>().unwrap();
        assert_eq!(SQZ_VERSION_MAJOR, part(env!("CARGO_PKG_VERSION_MAJOR")));
        assert_eq!(SQZ_VERSION_MINOR, part(env!("CARGO_PKG_VERSION_MINOR")));
        assert_eq!(SQZ_VERSION_PATCH, part(env!("CARGO_PKG_VERSION_PATCH")));
        assert_eq!(sqz_version_number(), 0x000100);
        // SAFETY: sqz_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(sqz_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
