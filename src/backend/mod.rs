//! Platforms the squeezer can run on.
//!
//! [`sim`] is a deterministic simulated host used by the tests, the benchmarks and the demo.

pub mod sim;
