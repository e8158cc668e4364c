//! Progress reports and cancellation for a reservation that waits for balloon drivers.
//!
//! Freeing memory for a new domain can take a while: the service asks domains to balloon down
//! and waits, iteration after iteration, until enough is free. A caller may watch that wait
//! through a progress callback, and stop it from another thread with a [`CancelToken`]. A
//! cancelled reservation ends with [`Error::Cancelled`] before anything
//! is written to the ledger, so nothing is left half-made; targets already lowered stay where
//! they are until the next balancing pass hands the memory back.
//!
//! `Watch` is what the service keeps over one operation: through `Watched`, the [`Io`] the
//! deciding algorithm sees in each round, it counts target writes and looks at the host for the
//! diagnostics; between rounds (outside the host lock) it reports progress while waiting and
//! turns a cancellation or a passed deadline into an error.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::driver::Io;
use crate::error::{Error, Result};
use crate::model::{Action, DomId, Host, Kib};

/// Longest stretch of one wait without a look at the cancel token, in seconds: a cancelled
/// reservation returns within about this long even when the platform's clock is real.
pub const CANCEL_CHECK_INTERVAL_S: f64 = 0.1;

/// Cancels a waiting reservation from another thread. Cheap to clone; clones share one flag.
/// Once cancelled it stays cancelled: use a fresh token for the next call.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Asks every call using this token to stop as soon as it can.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](CancelToken::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// How far a reservation that waits for ballooning has got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// How much host free memory has grown since the call started, in KiB (never negative).
    pub freed_kib: Kib,
    /// How much it had to grow when the call started, in KiB (the amount asked for, the slush
    /// included, minus what was already free).
    pub needed_kib: Kib,
    /// Seconds since the call started, on the platform's clock.
    pub elapsed_s: f64,
    /// Seconds still to wait at the speed seen so far; `None` until something has been freed.
    pub eta_s: Option<f64>,
}

/// What a progress callback receives; it returns [`ControlFlow::Break`] to stop the reservation
/// (which then ends as if cancelled).
pub type ProgressFn<'a> = dyn FnMut(&Progress) -> ControlFlow<()> + 'a;

/// Optional extras of [`Service::reserve_memory_with`](crate::service::Service::reserve_memory_with)
/// and [`Service::reserve_memory_range_with`](crate::service::Service::reserve_memory_range_with).
#[derive(Default)]
pub struct ReserveOptions<'a> {
    /// Called before every wait for the balloon drivers, on the calling thread. A callback
    /// that panics ends the reservation with [`Error::Backend`]; one that returns
    /// [`ControlFlow::Break`] ends it with [`Error::Cancelled`].
    pub progress: Option<Box<ProgressFn<'a>>>,
    /// Cancels the reservation when another thread calls [`CancelToken::cancel`].
    pub cancel: Option<CancelToken>,
    /// A deadline, in seconds from the start of the call (None: none). Under the adaptive
    /// policy the reservation fails with
    /// [`Error::DeadlineCannotBeMet`] as soon as the
    /// guests' measured balloon rates predict it cannot be met, saying when the memory would
    /// be free; under the classic policy, which predicts nothing, when it passes.
    pub deadline_s: Option<f64>,
}

impl<'a> ReserveOptions<'a> {
    /// Options with a progress callback.
    pub fn with_progress(mut self, f: impl FnMut(&Progress) -> ControlFlow<()> + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Options with a deadline, in seconds from the start of the call.
    pub fn with_deadline(mut self, seconds: f64) -> Self {
        self.deadline_s = Some(seconds);
        self
    }

    /// Options with a cancel token.
    pub fn with_cancel(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }
}

impl std::fmt::Debug for ReserveOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReserveOptions")
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .field("deadline_s", &self.deadline_s)
            .finish()
    }
}

/// One target change the service wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TargetWrite {
    pub(crate) domid: DomId,
    pub(crate) from_kib: Kib,
    pub(crate) to_kib: Kib,
}

/// What the service watches over one operation, across all its rounds: the caller's progress
/// callback, cancel token and deadline, and the counts for the diagnostics. Each round sees the
/// host through [`Watch::on`]; the waits between rounds happen outside the host lock, through
/// [`Watch::wait`].
pub(crate) struct Watch<'a, 'p> {
    progress: Option<&'a mut ProgressFn<'p>>,
    cancel: Option<CancelToken>,
    deadline_s: Option<f64>,
    /// Host free memory the call aims for (progress reports need it).
    required_kib: Option<Kib>,
    /// Time and host free memory at the first look.
    start: Option<(f64, Kib)>,
    last: Option<Host>,
    last_time: f64,
    /// Looks at the host taken.
    pub(crate) looks: u64,
    /// Waits for the balloon drivers.
    pub(crate) waits: u64,
    /// Targets changed, in order.
    pub(crate) writes: Vec<TargetWrite>,
}

impl<'a, 'p> Watch<'a, 'p> {
    pub(crate) fn new() -> Self {
        Watch {
            progress: None,
            cancel: None,
            deadline_s: None,
            required_kib: None,
            start: None,
            last: None,
            last_time: 0.0,
            looks: 0,
            waits: 0,
            writes: Vec::new(),
        }
    }

    /// Reports progress toward `required_kib` of host free memory, and honours cancellation.
    pub(crate) fn watch(
        mut self,
        required_kib: Kib,
        progress: Option<&'a mut ProgressFn<'p>>,
        cancel: Option<CancelToken>,
    ) -> Self {
        self.required_kib = Some(required_kib);
        self.progress = progress;
        self.cancel = cancel;
        self
    }

    /// Ends the call once `deadline_s` seconds (if any) have passed since its first look.
    pub(crate) fn deadline(mut self, deadline_s: Option<f64>) -> Self {
        self.deadline_s = deadline_s;
        self
    }

    /// Aims progress reports at `required_kib` from now on (the amount is only known after a
    /// first look for a range).
    pub(crate) fn aim(&mut self, required_kib: Kib) {
        if self.required_kib.is_some() {
            self.required_kib = Some(required_kib);
        }
    }

    /// The host as `io` shows it, watched for one round.
    pub(crate) fn on<'i, 'w>(&'w mut self, io: &'i mut dyn Io) -> Watched<'i, 'w, 'a, 'p> {
        Watched { io, w: self }
    }

    pub(crate) fn check_cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(t) if t.is_cancelled() => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }

    fn check_deadline(&self) -> Result<()> {
        let (Some(d), Some((t0, _))) = (self.deadline_s, self.start) else {
            return Ok(());
        };
        if d.is_finite() && d > 0.0 && self.last_time - t0 > d {
            return Err(Error::DeadlineCannotBeMet {
                deadline: std::time::Duration::from_secs_f64(d),
                predicted: None,
            });
        }
        Ok(())
    }

    fn report(&mut self) -> Result<()> {
        let (Some(f), Some(required), Some((t0, free0)), Some(host)) = (
            self.progress.as_mut(),
            self.required_kib,
            self.start,
            self.last.as_ref(),
        ) else {
            return Ok(());
        };
        let needed_kib = (required - free0).max(0);
        let freed_kib = (host.free_mem_kib - free0).max(0);
        let elapsed_s = (self.last_time - t0).max(0.0);
        let eta_s = (freed_kib > 0 && elapsed_s > 0.0)
            .then(|| (needed_kib - freed_kib).max(0) as f64 / (freed_kib as f64 / elapsed_s));
        let p = Progress {
            freed_kib,
            needed_kib,
            elapsed_s,
            eta_s,
        };
        // The callback is the caller's code: a panic in it must not leave the service midway.
        match catch_unwind(AssertUnwindSafe(|| f(&p))) {
            Ok(ControlFlow::Continue(())) => Ok(()),
            Ok(ControlFlow::Break(())) => Err(Error::Cancelled),
            Err(_) => Err(Error::Backend("the progress callback panicked".into())),
        }
    }

    /// Waits `seconds` with `sleep` between two rounds: checks the cancel token and the
    /// deadline, reports progress, and sleeps in short slices when the call may be cancelled.
    pub(crate) fn wait(
        &mut self,
        seconds: f64,
        sleep: &mut dyn FnMut(f64) -> Result<()>,
    ) -> Result<()> {
        self.waits += 1;
        self.check_cancelled()?;
        self.check_deadline()?;
        self.report()?;
        if self.cancel.is_none() {
            return sleep(seconds);
        }
        // Wait in short slices so a cancellation is seen soon, not after a whole poll.
        if !(seconds.is_finite() && seconds > 0.0) {
            return sleep(seconds);
        }
        // Equal slices adding up to exactly `seconds` (bounded: a wait is at most a day).
        let slices = (seconds.min(86_400.0) / CANCEL_CHECK_INTERVAL_S)
            .ceil()
            .max(1.0) as u32;
        for _ in 0..slices {
            sleep(seconds / f64::from(slices))?;
            self.check_cancelled()?;
        }
        Ok(())
    }
}

/// The host model as the deciding algorithm sees it during one round of a service operation:
/// every call goes through to the host model, and on the way the [`Watch`] counts target
/// writes and looks, and a cancellation becomes an error.
pub(crate) struct Watched<'i, 'w, 'a, 'p> {
    io: &'i mut dyn Io,
    w: &'w mut Watch<'a, 'p>,
}

impl Watched<'_, '_, '_, '_> {
    /// Aims progress reports at `required_kib` (see [`Watch::aim`]).
    pub(crate) fn aim(&mut self, required_kib: Kib) {
        self.w.aim(required_kib);
    }
}

impl Io for Watched<'_, '_, '_, '_> {
    fn make_host(&mut self) -> Result<Host> {
        self.w.check_cancelled()?;
        let host = self.io.make_host()?;
        self.w.looks += 1;
        if self.w.required_kib.is_some() {
            let now = self.io.now()?;
            self.w.last_time = now;
            if self.w.start.is_none() {
                self.w.start = Some((now, host.free_mem_kib));
            }
        }
        self.w.last = Some(host.clone());
        Ok(host)
    }

    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> Result<()> {
        self.io.set_maxmem(domid, kib)
    }

    fn execute_action(&mut self, action: Action) -> Result<()> {
        let old = self
            .w
            .last
            .as_ref()
            .and_then(|h| h.domain(action.domid))
            .map(|d| d.target_kib);
        self.io.execute_action(action)?;
        if let Some(from_kib) = old.filter(|&t| t != action.new_target_kib) {
            self.w.writes.push(TargetWrite {
                domid: action.domid,
                from_kib,
                to_kib: action.new_target_kib,
            });
        }
        Ok(())
    }

    fn wait(&mut self, seconds: f64) -> Result<()> {
        let io = &mut *self.io;
        self.w.wait(seconds, &mut |s| io.wait(s))
    }

    fn now(&mut self) -> Result<f64> {
        self.io.now()
    }

    fn target_host_free_mem_kib(&self) -> Kib {
        self.io.target_host_free_mem_kib()
    }

    fn free_memory_tolerance_kib(&self) -> Kib {
        self.io.free_memory_tolerance_kib()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_shared_by_its_clones_and_stays_cancelled() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(!b.is_cancelled());
        a.cancel();
        assert!(b.is_cancelled());
        a.cancel();
        assert!(a.is_cancelled());
    }
}
