//! Platforms the squeezer can run on.
//!
//! [`sim`] is a deterministic simulated host used by the tests, the benchmarks and the demo.
//! `xen` (built with the `xen` cargo feature) is a real Xen host.

/// A fake host (hypervisor, store and clock) for the memory service's tests, shareable
/// between processes.
pub mod fake;
pub mod sim;
#[cfg(feature = "xen")]
pub mod xen;
