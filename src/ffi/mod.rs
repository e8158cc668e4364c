//! The C ABI (`include/squeeze.h`).
//!
//! Nothing here decides anything about memory: this module converts C values to the library's
//! types and back, maps [`Error`](crate::Error)s to status codes, keeps the calling thread's
//! last error, and makes sure no panic crosses into C. The header is generated from these files
//! by cbindgen (see `cbindgen.toml`) and checked in; a test fails when the two drift apart.
//!
//! Conventions, in the style of rustls-ffi and wasmtime's C API:
//! - every fallible function returns an [`sqz_status`] and writes results through
//!   out-parameters; details of the last failure on the calling thread are read with
//!   [`sqz_last_error_message`] and friends;
//! - handles are created by `*_new` and released by `*_free`, and freeing NULL does nothing;
//! - every exported function runs inside `guard::status` or `guard::value`, which turn a
//!   panic into [`SQZ_ERR_INTERNAL`];
//! - callbacks run on the calling thread only, and no lock is held while they run.

#![allow(non_camel_case_types)]
// The extern "C" functions check every pointer they dereference; their contracts are in the
// generated header, which is where C callers read them.
#![allow(clippy::missing_safety_doc)]

pub(crate) mod abi;
pub mod error;
pub mod fake_host;
pub(crate) mod guard;
pub mod guest_policy;
pub(crate) mod handle;
pub mod io;
pub mod log;
pub mod ops;
pub mod options;
pub mod platform;
pub mod progress;
pub mod service;
pub mod service_config;
pub mod sim;
pub mod step;
pub mod version;

pub use error::*;
pub use fake_host::*;
pub use guest_policy::*;
pub use io::*;
pub use log::*;
pub use ops::*;
pub use options::*;
pub use platform::*;
pub use progress::*;
pub use service::*;
pub use service_config::*;
pub use sim::*;
pub use step::*;
pub use version::*;
