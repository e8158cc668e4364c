//! Memory on its way back: a reservation waits for the pages of dying domains instead of
//! ballooning guests for them.
//!
//! When a domain is destroyed, Xen gives its pages back to the free pool over a while (it
//! relinquishes them in preemptible chunks, driven by the toolstack's destroy loop): seconds
//! for a large domain, longer on a loaded host. Meanwhile the domain is listed as dying and its
//! pages are neither free nor any guest's. A reservation made in that window (a VM rebooted
//! by a toolstack that destroys the old domain and creates the new one, or a create retried
//! right after a failed one) sees too little free memory; squeezed, and this library before,
//! shrank the guests for it and, once the dying domain was gone, gave the surplus back: every
//! guest's balloon driver worked twice for nothing.
//!
//! The rule ([`DyingWait::wait`]): a reservation that the memory dying domains hold would
//! cover, together with what is free, waits round by round (outside the host lock) instead of
//! setting targets, as long as that memory keeps coming back: it stops waiting, and the
//! policy balloons guests as before, when the dying domains have given nothing back for
//! [`STALL_S`] (a domain stuck dying, whose pages some backend still maps, never gives them
//! back), or after the configured wait in all, or when free memory and the dying domains'
//! pages together would not be enough anyway. Only free memory is ever granted: the wait
//! changes when guests are asked to shrink, never what a reservation may take.

#![forbid(unsafe_code)]

use crate::model::Kib;

/// Seconds without [`PROGRESS_KIB`] coming back after which dying domains are not waited
/// for: a teardown slower than that (under 1 MiB/s) is no faster than ballooning.
pub const STALL_S: f64 = 5.0;

/// What must come back within [`STALL_S`] for the wait to go on.
pub const PROGRESS_KIB: Kib = 4 << 10;

/// Seconds between two looks while a reservation waits for dying domains.
pub const POLL_S: f64 = 1.0;

/// A reservation's wait for the memory of dying domains.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DyingWait {
    /// When it started waiting (simulated or real seconds, the service's clock).
    since_s: Option<f64>,
    /// What the dying domains held when the wait last saw them give [`PROGRESS_KIB`] back,
    /// and when that was.
    least_kib: Kib,
    progress_s: f64,
    /// Whether it stopped waiting for good (the wait in all ran out).
    given_up: bool,
}

impl DyingWait {
    /// Whether this round should wait for the dying domains' memory instead of asking guests
    /// for it: `dying_kib` is what dying domains hold, `usable_kib` what is free as the policy
    /// counts it, `required_kib` what the round aims for (the slush included), `limit_s` the
    /// longest wait in all (0: never wait, squeezed's behaviour).
    pub fn wait(
        &mut self,
        dying_kib: Kib,
        usable_kib: Kib,
        required_kib: Kib,
        now: f64,
        limit_s: f64,
    ) -> bool {
        if self.given_up
            || limit_s <= 0.0
            || dying_kib <= 0
            || usable_kib >= required_kib
            || usable_kib.saturating_add(dying_kib) < required_kib
        {
            return false;
        }
        let Some(since) = self.since_s else {
            self.since_s = Some(now);
            self.least_kib = dying_kib;
            self.progress_s = now;
            return true;
        };
        if dying_kib <= self.least_kib - PROGRESS_KIB {
            self.least_kib = dying_kib;
            self.progress_s = now;
        }
        if now - since >= limit_s {
            self.given_up = true;
            return false;
        }
        now - self.progress_s < STALL_S
    }

    /// Seconds it has waited so far (0 if it never did).
    pub fn waited_s(&self, now: f64) -> f64 {
        self.since_s.map_or(0.0, |s| (now - s).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: Kib = 1024;

    #[test]
    fn waits_while_a_dying_domain_gives_its_pages_back() {
        let mut w = DyingWait::default();
        // 238 MiB free, 376 MiB wanted, a dying domain holds 300 MiB giving 100 MiB/s back.
        for (t, dying, free) in [(0.0, 300, 238), (1.0, 200, 338), (2.0, 100, 438)] {
            let waits = w.wait(dying * MIB, free * MIB, 376 * MIB, t, 60.0);
            assert_eq!(waits, free < 376, "at {t} s");
        }
        assert_eq!(w.waited_s(2.0), 2.0);
    }

    #[test]
    fn a_domain_stuck_dying_is_waited_for_five_seconds_at_most() {
        let mut w = DyingWait::default();
        let waits: Vec<bool> = (0..8)
            .map(|t| w.wait(300 * MIB, 238 * MIB, 376 * MIB, f64::from(t), 60.0))
            .collect();
        assert_eq!(waits, [true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn a_teardown_slower_than_ballooning_is_not_waited_for() {
        let mut w = DyingWait::default();
        // 512 KiB/s back: 2.5 MiB in 5 s, under the 4 MiB that keep the wait going.
        let waits: Vec<bool> = (0..8)
            .map(|t| w.wait(300 * MIB - t * 512, 238 * MIB, 376 * MIB, t as f64, 60.0))
            .collect();
        assert_eq!(waits, [true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn nothing_is_waited_for_that_could_not_cover_the_request() {
        let mut w = DyingWait::default();
        // 238 + 100 < 376: the guests must give something anyway.
        assert!(!w.wait(100 * MIB, 238 * MIB, 376 * MIB, 0.0, 60.0));
        // Nothing dying, or enough free already, or waiting switched off.
        assert!(!w.wait(0, 238 * MIB, 376 * MIB, 0.0, 60.0));
        assert!(!w.wait(300 * MIB, 400 * MIB, 376 * MIB, 0.0, 60.0));
        assert!(!w.wait(300 * MIB, 238 * MIB, 376 * MIB, 0.0, 0.0));
    }

    #[test]
    fn the_wait_in_all_is_bounded_even_while_pages_keep_coming_back() {
        let mut w = DyingWait::default();
        // A steady teardown: 4 MiB/s back from 300 MiB, with a 10 s limit.
        let waits: Vec<bool> = (0..13)
            .map(|t| w.wait((300 - 4 * t) * MIB, 238 * MIB, 376 * MIB, t as f64, 10.0))
            .collect();
        assert_eq!(waits.iter().filter(|&&b| b).count(), 10);
        assert!(!waits[10] && !waits[11] && !waits[12]);
        // Once given up, it stays given up.
        assert!(!w.wait(300 * MIB, 238 * MIB, 376 * MIB, 13.0, 10.0));
    }
}
