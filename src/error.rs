//! The errors every layer of the library reports.

use crate::model::{DomId, Kib};

/// What can go wrong when asking the squeezer for memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Even with every active domain ballooned down to dynamic-min, the host cannot reach the
    /// requested amount of free memory (squeezed's `Cannot_free_this_much_memory`).
    #[error("cannot free {required_kib} KiB: the host has {free_kib} KiB free and the balloonable domains cannot give more")]
    CannotFreeThisMuchMemory {
        /// The amount of host free memory that was asked for.
        required_kib: Kib,
        /// Host free memory when the squeezer gave up.
        free_kib: Kib,
    },
    /// These domains did not reach their balloon targets, so the request failed
    /// (squeezed's `Domains_refused_to_cooperate`).
    #[error("domains {domids:?} did not release memory when asked")]
    DomainsRefusedToCooperate {
        /// The domains that were asked to balloon and did not, in squeezed's order.
        domids: Vec<DomId>,
    },
    /// An argument is malformed: a duplicate domid, an invalid time, an unknown flag.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A memory value is negative, absurdly large, or a range has `min > max`.
    #[error("invalid memory value: {0}")]
    InvalidMemoryValue(String),
    /// The platform (Xen, the simulator, or a caller's callback) failed.
    #[error("backend failure: {0}")]
    Backend(String),
    /// The requested feature is not available in this build or on this host.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// No reservation with this id exists in this session (squeezed's `Unknown_reservation`).
    #[error("unknown reservation {0:?}")]
    UnknownReservation(String),
    /// The domain holds no reservation (squeezed's `No_reservation`).
    #[error("domain {0} holds no reservation")]
    NoReservation(DomId),
    /// The caller stopped the call (through a cancel token, or a progress callback asking to
    /// stop) before it finished; nothing was reserved.
    #[error("cancelled by the caller")]
    Cancelled,
    /// The caller's deadline cannot be met: at the balloon rates the guests have shown, the
    /// memory would be free only after `predicted` (from the start of the call), or the
    /// deadline passed first (`predicted` unknown). Nothing was reserved; the guests did
    /// nothing wrong.
    #[error("{}", deadline_message(deadline, predicted))]
    DeadlineCannotBeMet {
        /// The deadline the caller gave.
        deadline: std::time::Duration,
        /// When the memory would be free at the measured rates, if known.
        predicted: Option<std::time::Duration>,
    },
}

fn deadline_message(
    deadline: &std::time::Duration,
    predicted: &Option<std::time::Duration>,
) -> String {
    let d = deadline.as_secs_f64();
    match predicted {
        Some(p) => format!(
            "the deadline of {d:.1} s cannot be met: at the guests' measured balloon rates the \
             memory would be free after about {:.1} s",
            p.as_secs_f64()
        ),
        None => format!("the deadline of {d:.1} s passed before the memory was free"),
    }
}

/// Shorthand for results carrying the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
