//! squeeze: host memory balancing for Xen, as a library.
//!
//! squeeze does what XenServer's `squeezed` daemon does (reserve host memory for new domains and
//! balance memory between running domains through their balloon drivers) as a library that a
//! toolstack links in-process.
//!
//! The layers, from the bottom:
//! - [`model`]: domains, the host, actions; KiB arithmetic that cannot wrap.
//! - [`policy`]: how memory is divided (squeezed's proportional policy).
//! - [`monitor`]: which balloon drivers have stopped making progress.
//! - [`squeezer`]: one iteration (classification, two phases, the decision).
//! - [`driver`]: the loop over a platform ([`driver::Io`]): change, free and balance memory.
//! - [`engine`]: both policies as pure rounds ([`engine::Engine`]) and the one loop that runs them.
//! - [`adaptive`]: a squeezer that learns balloon rates and limits, fixing squeezed's known flaws.
//! - [`balancer`]: a long-lived balancer with the policy chosen at creation.
//! - [`backend`]: platforms, starting with a deterministic simulator.
//! - [`ffi`]: the C ABI of `include/squeeze.h` (conversions, status codes, panic guards).
//! - [`platform`]: what the memory service needs from a host (hypervisor, store, clock).
//! - [`host`]: the platform's view plus the reservation ledger, turned into a [`Host`].
//! - [`reservations`]: the reservation ledger, kept in the store with squeezed's layout.
//! - [`pending`]: reservations waiting for memory, and the rule that grants them fairly.
//! - [`service`]: the memory service (sessions, reservations, host-wide locking, balancer).
//!
//! ```
//! use squeeze::backend::sim::{Behaviour, SimConfig, Simulator};
//! use squeeze::{free_memory_range, Domain, Options};
//!
//! // A host with 1 GiB free, keeping 72 MiB of slush, and one guest that can shrink to 1 GiB.
//! let mut host = Simulator::new(SimConfig {
//!     free_mem_kib: 1 << 20,
//!     target_host_free_mem_kib: 72 << 10,
//!     ..SimConfig::default()
//! });
//! host.add_guest(
//!     Domain::new(1, true, 1 << 20, 2 << 20, 2 << 20, 2 << 20, 2 << 20, 4),
//!     Behaviour::Ideal { rate_kib_per_s: 100 << 10 },
//! )?;
//! // A new VM wants between 1 and 1.5 GiB: the guest balloons down to make room.
//! let got = free_memory_range(&mut host, &Options::default(), 1 << 20, 3 << 19)?;
//! assert!(got >= 1 << 20);
//! assert!(host.free_mem_kib() >= got + (72 << 10));
//! # Ok::<(), squeeze::Error>(())
//! ```

#![warn(missing_docs)]

pub mod adaptive;
pub mod backend;
pub mod balancer;
pub mod diagnostics;
pub mod domain_zero;
pub mod driver;
pub mod dying;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod guest_policy;
pub mod host;
pub mod learnt;
mod lockfile;
pub mod model;
pub mod monitor;
pub mod pending;
pub mod platform;
pub mod policy;
pub mod progress;
pub mod reservations;
pub mod service;
pub mod squeezer;

pub use balancer::{Balancer, Policy};
pub use driver::{
    balance_memory, change_host_free_memory, free_memory_range, is_host_memory_unbalanced, Io,
    MAX_ROUNDS_WITHOUT_MOVEMENT,
};
pub use error::{Error, Result};
pub use model::{Action, DomId, Domain, Host, Kib};
pub use squeezer::{Fistpoints, Iteration, Options, Phase, Squeezer, Verdict};
