//! Platforms the squeezer can run on.
//!
//! [`sim`] is a deterministic simulated host used by the tests, the benchmarks and the demo.

/// A fake host (hypervisor, store and clock) for the memory service's tests, shareable
/// between processes.
pub mod fake;
pub mod sim;
