//! The diagnostics document: what an operator looks at first when a VM start waits on
//! ballooning or a host does not balance.
//!
//! [`Service::diagnostics`](crate::service::Service::diagnostics) returns a [`Diagnostics`];
//! [`Service::get_diagnostics`](crate::service::Service::get_diagnostics), `sqz_get_diagnostics`,
//! the bindings and `squeeze status --json` give it as JSON. The document is described field by
//! field in `docs/diagnostics.md`, and `docs/diagnostics.schema.json` is its JSON Schema; the
//! tests check the one against the other. [`SCHEMA_VERSION`] changes whenever a field is added,
//! removed or changes meaning, and a new schema file is published with it.
//!
//! Counters and the last decision are this service's (this process's), since it was opened;
//! everything else is read from the host at the time of the call.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::adaptive::tracker::Concern;
use crate::error::{Error, Result};
use crate::host::DomainType;
use crate::model::{DomId, Kib};
use crate::progress::TargetWrite;

/// The version of the document's shape; the `schema_version` field of every document.
pub const SCHEMA_VERSION: u32 = 3;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostics {
    /// [`SCHEMA_VERSION`] of the library that wrote the document.
    pub schema_version: u32,
    /// When the host was read, on the platform's clock (seconds).
    pub time_s: f64,
    /// The deciding algorithm: `"classic"` (squeezed's) or `"adaptive"`.
    pub policy: String,
    /// Host-wide memory figures.
    pub host: HostMemory,
    /// The reservation ledger, by session.
    pub sessions: Vec<SessionReservations>,
    /// Reservations waiting for memory, oldest first (added in schema version 2).
    pub pending: Vec<PendingReservation>,
    /// Ledger entries that could not be read (never counted, never deleted).
    pub invalid_ledger_entries: Vec<InvalidLedgerEntry>,
    /// Every domain the host model looked at, balanced or not.
    pub domains: Vec<DomainDiagnostics>,
    /// The last operation of this service that decided about memory, if any yet.
    pub last_decision: Option<Decision>,
    /// What this service has done since it was opened.
    pub counters: Counters,
    /// Re-estimated memory offsets.
    pub offset_drifts: OffsetDrifts,
    /// The background balancer.
    pub balancer: BackgroundBalancer,
    /// The settings in force.
    pub settings: Settings,
}

/// Host-wide memory figures, in KiB.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostMemory {
    /// All memory of the host.
    pub total_kib: Kib,
    /// Host free memory as the balancer sees it: Xen's free memory less reservations not yet
    /// in a domain and the unallocated parts of domains being built.
    pub free_kib: Kib,
    /// The memory kept free for Xen (squeezed's host-reserved memory, the slush).
    pub slush_kib: Kib,
    /// Xen's free pages.
    pub xen_free_kib: Kib,
    /// Pages waiting for the scrubber.
    pub scrub_kib: Kib,
    /// Outstanding claims.
    pub outstanding_claims_kib: Kib,
    /// Pages domains share.
    pub shared_kib: Kib,
    /// Reservations not backed by a live domain.
    pub reserved_kib: Kib,
    /// Unallocated parts of initial reservations of domains that have not booted.
    pub unallocated_initial_kib: Kib,
    /// Memory domains being destroyed still hold: Xen frees it as they go, and a reservation
    /// waits for it rather than shrink guests (added in schema version 3).
    pub dying_kib: Kib,
}

/// The reservations of one session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionReservations {
    /// The session (service name).
    pub session: String,
    /// The sum of its reservations, in KiB.
    pub total_kib: Kib,
    /// Its reservations.
    pub reservations: Vec<ReservationEntry>,
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReservationEntry {
    /// Its id.
    pub id: String,
    /// Its size, in KiB.
    pub kib: Kib,
    /// The domain it was transferred to, if it was.
    pub domid: Option<DomId>,
}

/// A reservation waiting for memory: a pending entry in the store (see [`crate::pending`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingReservation {
    /// Its reservation id (the id the call returns once it is granted).
    pub id: String,
    /// The session that asked.
    pub session: String,
    /// The least it may be granted, in KiB.
    pub min_kib: Kib,
    /// The most it may be granted, in KiB.
    pub max_kib: Kib,
    /// What rounds free for it, in KiB: the size, or the policy's share for a range.
    pub need_kib: Kib,
    /// Its place in the queue: lower is older.
    pub order: u64,
    /// When it started waiting, on the host's clock (the same in every process).
    pub since_s: f64,
    /// How long it has waited: `time_s - since_s`, at least 0.
    pub waited_s: f64,
    /// The process waiting for it.
    pub owner_pid: u32,
    /// Whether that process still runs; an entry whose owner is gone is dropped by the next
    /// round of any caller.
    pub owner_alive: bool,
}

/// A ledger entry that could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvalidLedgerEntry {
    /// Its store path.
    pub path: String,
    /// Why it is invalid.
    pub why: String,
}

/// One domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainDiagnostics {
    /// Domain id.
    pub domid: DomId,
    /// How it is virtualised.
    pub domain_type: DomainType,
    /// It has shown a balloon driver or an agent.
    pub booted: bool,
    /// It has a balloon driver.
    pub can_balloon: bool,
    /// Why the balancer leaves it alone, when it does (then the memory figures are null).
    pub skipped: Option<String>,
    /// Its dynamic-min, in KiB.
    pub dynamic_min_kib: Option<Kib>,
    /// Its balloon target, in KiB.
    pub target_kib: Option<Kib>,
    /// What it holds, less its offset, in KiB.
    pub actual_kib: Option<Kib>,
    /// Its dynamic-max, in KiB.
    pub dynamic_max_kib: Option<Kib>,
    /// Its maxmem as the balancer counts it, in KiB.
    pub maxmem_kib: Option<Kib>,
    /// How far from its target its balloon driver may settle, in KiB.
    pub inaccuracy_kib: Option<Kib>,
    /// Its weight in the proportional policy (null when the balancer leaves it alone).
    pub weight: Option<f64>,
    /// Why its `memory/weight` was ignored, when it was.
    pub weight_error: Option<String>,
    /// Its calibrated memory offset, in KiB (0 before boot).
    pub offset_kib: Kib,
    /// Its initial reservation, in KiB, when it has one.
    pub initial_reservation_kib: Option<Kib>,
    /// The part of its initial reservation not allocated yet, in KiB.
    pub unallocated_reservation_kib: Kib,
    /// Pages it shares with other domains, in KiB.
    pub shared_kib: Kib,
    /// Flagged `memory/uncooperative` in the store.
    pub uncooperative_flag: bool,
    /// It sits off a target it had reached: taken for a drifted offset, not blamed.
    pub drift_suspect: bool,
    /// Its balloon driver's measured speeds (adaptive policy only; null under the classic one,
    /// which measures nothing).
    pub rate: Option<Rate>,
    /// How its balloon driver has been cooperating, as the adaptive policy judged it (null
    /// under the classic policy).
    pub cooperation: Option<CooperationState>,
    /// The last target change this service wrote for it.
    pub last_target_change: Option<TargetChange>,
}

/// Measured balloon speeds, KiB/s; null until measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    /// Shrinking.
    pub down_kib_per_s: Option<f64>,
    /// Growing.
    pub up_kib_per_s: Option<f64>,
}

/// Whether a balloon driver is taken to be cooperating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CooperationFlag {
    /// Its score is below the flagging threshold.
    Cooperative,
    /// Its score crossed the flagging threshold and has not fallen back below the clearing one.
    Uncooperative,
}

/// What most recently counted against a balloon driver: the adaptive squeezer's
/// [`Concern`], defined once.
pub type ConcernKind = Concern;

/// The adaptive policy's judgement of a balloon driver.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CooperationState {
    /// Seconds of asked-for work it did not do, leaking away over time.
    pub score_s: f64,
    /// The state that score gives.
    pub state: CooperationFlag,
    /// What most recently counted against it.
    pub concern: Option<ConcernKind>,
    /// A floor it has shown (it would not shrink below this actual), in KiB.
    pub floor_kib: Option<Kib>,
    /// A ceiling it has shown (it would not grow past this actual), in KiB.
    pub ceiling_kib: Option<Kib>,
}

/// A target change written to a domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetChange {
    /// When (platform clock, seconds): the start of the operation that wrote it.
    pub time_s: f64,
    /// The target before, in KiB.
    pub from_kib: Kib,
    /// The target written, in KiB.
    pub to_kib: Kib,
    /// Why: `"reserve"` (memory freed for a reservation) or `"rebalance"` (free memory handed
    /// back to the domains).
    pub reason: String,
}

/// A service operation that decides about memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `reserve_memory`.
    ReserveMemory,
    /// `reserve_memory_range`.
    ReserveMemoryRange,
    /// `balance_memory`, called by a client.
    BalanceMemory,
    /// A pass of the background balancer, which found the host unbalanced.
    BackgroundBalance,
}

impl Operation {
    fn reason(self) -> &'static str {
        match self {
            Operation::ReserveMemory | Operation::ReserveMemoryRange => "reserve",
            Operation::BalanceMemory | Operation::BackgroundBalance => "rebalance",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It did what was asked.
    Done,
    /// It failed (see `error`).
    Failed,
    /// The caller cancelled it.
    Cancelled,
}

/// The last operation that decided about memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Which operation.
    pub operation: Operation,
    /// Why it ran, in words.
    pub reason: String,
    /// The session that asked, for a reservation.
    pub session: Option<String>,
    /// When it started (platform clock, seconds).
    pub started_at_s: f64,
    /// How long it took (platform clock, seconds).
    pub duration_s: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Looks at the host it took.
    pub iterations: u64,
    /// The target changes it wrote, in order.
    pub target_changes: Vec<DomainTargetChange>,
}

/// One target change of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DomainTargetChange {
    /// The domain.
    pub domid: DomId,
    /// The target before, in KiB.
    pub from_kib: Kib,
    /// The target written, in KiB.
    pub to_kib: Kib,
}

/// What this service has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Balloon targets changed.
    pub target_writes: u64,
    /// Looks at the host taken by the deciding algorithm (one per iteration of its loop).
    pub iterations: u64,
    /// Times it waited for balloon drivers to move.
    pub waits: u64,
    /// Reservations made.
    pub reservations_made: u64,
    /// Reservations that failed (not enough memory, stuck domains, platform errors).
    pub reservations_failed: u64,
    /// Reservations the caller cancelled.
    pub reservations_cancelled: u64,
    /// Requests this process has sent to the store through the service's store (xenstored
    /// counts a transaction as its start, its operations and its end), looks for the
    /// diagnostics included; `None` when the store does not count them.
    pub store_requests: Option<u64>,
}

/// Re-estimated memory offsets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffsetDrifts {
    /// How many since the service was opened.
    pub total: u64,
    /// The last few, oldest first.
    pub recent: Vec<OffsetDriftEntry>,
}

/// One re-estimated offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OffsetDriftEntry {
    /// The domain.
    pub domid: DomId,
    /// When (platform clock, seconds).
    pub time_s: f64,
    /// The offset before, in KiB.
    pub old_offset_kib: Kib,
    /// The offset after, in KiB.
    pub new_offset_kib: Kib,
}

/// The background balancer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BackgroundBalancer {
    /// Whether it runs.
    pub running: bool,
    /// Seconds between its checks.
    pub interval_s: f64,
    /// Balancing passes run by this service (by the background balancer or on request).
    pub passes: u64,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The slush, in KiB.
    pub slush_kib: Kib,
    /// How close to the slush counts as balanced, in KiB.
    pub free_memory_tolerance_kib: Kib,
    /// Whether domain 0 is balanced like a guest.
    pub manage_domain_zero: bool,
    /// Seconds off target after which a domain is flagged uncooperative.
    pub uncooperative_after_s: f64,
    /// Whether drifted offsets are re-estimated.
    pub offset_drift: bool,
    /// Looks a domain must sit still for before its offset is re-estimated.
    pub drift_window_looks: u32,
    /// Seconds those looks must span.
    pub drift_window_s: f64,
    /// Whether transferred reservations are claimed from Xen.
    pub claim_transferred_reservations: bool,
    /// The host-wide lock file.
    pub lock_path: String,
    /// Where the ledger lives in the store.
    pub state_dir: String,
    /// Longest a reservation waits for memory dying domains give back, in seconds (added in
    /// schema version 3).
    pub dying_wait_s: f64,
    /// Longest a round waits for Xen's scrubber, in seconds (added in schema version 3).
    pub scrub_wait_s: f64,
}

/// What a service records about its own operations for the diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) counters: Counters,
    pub(crate) last_decision: Option<Decision>,
    pub(crate) last_change: BTreeMap<DomId, TargetChange>,
}

/// How many domains' last target change are kept (domains come and go).
const MAX_REMEMBERED_DOMAINS: usize = 4096;

impl Recorder {
    /// Records one operation.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record<T>(
        &mut self,
        operation: Operation,
        reason: String,
        session: Option<&str>,
        started_at_s: f64,
        finished_at_s: f64,
        result: &Result<T>,
        iterations: u64,
        waits: u64,
        writes: &[TargetWrite],
    ) {
        let c = &mut self.counters;
        c.iterations += iterations;
        c.waits += waits;
        c.target_writes += writes.len() as u64;
        let reserving = matches!(
            operation,
            Operation::ReserveMemory | Operation::ReserveMemoryRange
        );
        let outcome = match result {
            Ok(_) => Outcome::Done,
            Err(Error::Cancelled) => Outcome::Cancelled,
            Err(_) => Outcome::Failed,
        };
        if reserving {
            match outcome {
                Outcome::Done => c.reservations_made += 1,
                Outcome::Failed => c.reservations_failed += 1,
                Outcome::Cancelled => c.reservations_cancelled += 1,
            }
        }
        for w in writes {
            if self.last_change.len() >= MAX_REMEMBERED_DOMAINS
                && !self.last_change.contains_key(&w.domid)
            {
                // Forget the oldest domid: long-gone domains are the likeliest there.
                self.last_change.pop_first();
            }
            self.last_change.insert(
                w.domid,
                TargetChange {
                    time_s: started_at_s,
                    from_kib: w.from_kib,
                    to_kib: w.to_kib,
                    reason: operation.reason().to_string(),
                },
            );
        }
        self.last_decision = Some(Decision {
            operation,
            reason,
            session: session.map(str::to_string),
            started_at_s,
            duration_s: (finished_at_s - started_at_s).max(0.0),
            outcome,
            error: result.as_ref().err().map(|e| e.to_string()),
            iterations,
            target_changes: writes
                .iter()
                .map(|w| DomainTargetChange {
                    domid: w.domid,
                    from_kib: w.from_kib,
                    to_kib: w.to_kib,
                })
                .collect(),
        });
    }
}
