//! What the adaptive squeezer learns about each domain across iterations and calls: balloon
//! rates in both directions, whether the driver is falling short of what it was asked, and the
//! limits it has shown (a floor it will not shrink below, a ceiling it will not grow past).

use std::collections::BTreeMap;

use crate::model::{direction_of_actual, DomId, Domain, Host, Kib};

/// Weight of a new full-speed rate sample in the running estimate.
const RATE_SMOOTHING: f64 = 0.5;

/// A limit a balloon driver has shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Memory-actual at which the driver stopped, in KiB.
    pub at_kib: Kib,
    /// When it was learnt (seconds).
    pub since: f64,
}

/// Per-domain observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Memory-actual at the last observation.
    pub last_actual_kib: Kib,
    /// The target in force since the last observation.
    pub target_kib: Kib,
    /// Time of the last observation.
    pub last_time: f64,
    /// Measured shrinking speed, KiB/s.
    pub rate_down: Option<f64>,
    /// Measured growing speed, KiB/s.
    pub rate_up: Option<f64>,
    /// Since when the driver has been moving slower than the minimum acceptable rate while it
    /// had work to do.
    pub short_since: Option<f64>,
    /// A floor the driver would not shrink below.
    pub floor: Option<Limit>,
    /// A ceiling the driver would not grow past.
    pub ceiling: Option<Limit>,
    /// Direction of the last target written: -1 down, 1 up, 0 none yet.
    pub last_write_dir: i8,
    /// When the last target was written.
    pub last_write_time: f64,
    /// Input epoch at the last write (see `Adaptive`'s dwell rule).
    pub last_write_epoch: u64,
}

/// Observations for every domain on the host, forgotten when a domain disappears.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracker {
    per_domain: BTreeMap<DomId, Track>,
}

impl Tracker {
    /// Takes a snapshot at `now`: updates rates and shortfall for every domain, adds new ones
    /// and forgets those that are gone. `min_rate` is the slowest a driver with work to do may
    /// move (KiB/s) without falling short.
    pub fn observe(&mut self, host: &Host, now: f64, min_rate: f64) {
        self.per_domain
            .retain(|domid, _| host.domain(*domid).is_some());
        for d in host.domains() {
            match self.per_domain.get_mut(&d.domid) {
                None => {
                    self.per_domain.insert(
                        d.domid,
                        Track {
                            last_actual_kib: d.memory_actual_kib,
                            target_kib: d.target_kib,
                            last_time: now,
                            rate_down: None,
                            rate_up: None,
                            short_since: None,
                            floor: None,
                            ceiling: None,
                            last_write_dir: 0,
                            last_write_time: f64::NEG_INFINITY,
                            last_write_epoch: 0,
                        },
                    );
                }
                Some(t) => step(t, d, now, min_rate),
            }
        }
    }

    /// The observations for `domid`.
    pub fn get(&self, domid: DomId) -> Option<&Track> {
        self.per_domain.get(&domid)
    }

    /// Mutable observations for `domid`.
    pub fn get_mut(&mut self, domid: DomId) -> Option<&mut Track> {
        self.per_domain.get_mut(&domid)
    }

    /// Records that `domid`'s target is now `target_kib` (written at `now`, in `epoch`).
    pub fn note_write(&mut self, domid: DomId, target_kib: Kib, now: f64, epoch: u64) {
        if let Some(t) = self.per_domain.get_mut(&domid) {
            let dir = (target_kib - t.target_kib).signum() as i8;
            if dir != 0 {
                t.last_write_dir = dir;
                t.last_write_time = now;
                t.last_write_epoch = epoch;
            }
            t.target_kib = target_kib;
            // A new request starts a new judgement of the driver.
            t.short_since = None;
        }
    }
}

fn step(t: &mut Track, d: &Domain, now: f64, min_rate: f64) {
    let dt = now - t.last_time;
    if dt <= 0.0 {
        return;
    }
    // The request in force during the interval: from last actual toward the target we set.
    let asked = direction_of_actual(d.inaccuracy_kib, t.last_actual_kib, t.target_kib);
    let moved = d.memory_actual_kib - t.last_actual_kib;
    if let Some(dir) = asked {
        use crate::model::Direction;
        let (toward, distance) = match dir {
            Direction::Down => (-moved, t.last_actual_kib - t.target_kib),
            Direction::Up => (moved, t.target_kib - t.last_actual_kib),
        };
        let toward = toward.max(0);
        let remaining = (distance - d.inaccuracy_kib).max(0);
        let sample = toward as f64 / dt;
        let still_asked =
            direction_of_actual(d.inaccuracy_kib, d.memory_actual_kib, t.target_kib) == Some(dir);
        let rate = match dir {
            Direction::Down => &mut t.rate_down,
            Direction::Up => &mut t.rate_up,
        };
        if toward > 0 {
            *rate = Some(match *rate {
                // The driver worked the whole interval: a full-speed sample.
                Some(r) if still_asked => r + RATE_SMOOTHING * (sample - r),
                // It finished early, so it is at least this fast.
                Some(r) => r.max(sample),
                None => sample,
            });
        }
        // Falling short: less than half of what the minimum rate would have done in the time.
        let expected = (min_rate * dt).min(remaining as f64);
        if expected > 0.0 && (toward as f64) * 2.0 < expected {
            t.short_since.get_or_insert(t.last_time);
        } else {
            t.short_since = None;
        }
    } else {
        t.short_since = None;
    }
    t.last_actual_kib = d.memory_actual_kib;
    t.last_time = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(actual: Kib, target: Kib) -> Host {
        Host::new(
            vec![Domain::new(1, true, 0, target, 1 << 30, actual, 1 << 30, 4)],
            0,
        )
        .unwrap()
    }

    #[test]
    fn rates_are_measured_in_the_direction_of_travel() {
        let mut tr = Tracker::default();
        tr.observe(&host(10_000, 10_000), 0.0, 256.0);
        tr.note_write(1, 5_000, 0.0, 0);
        tr.observe(&host(9_000, 5_000), 1.0, 256.0);
        assert_eq!(tr.get(1).unwrap().rate_down, Some(1000.0));
        tr.observe(&host(7_000, 5_000), 2.0, 256.0);
        // Smoothed: 1000 + 0.5 × (2000 − 1000).
        assert_eq!(tr.get(1).unwrap().rate_down, Some(1500.0));
        assert_eq!(tr.get(1).unwrap().rate_up, None);
        assert_eq!(tr.get(1).unwrap().short_since, None);
    }

    #[test]
    fn a_driver_slower_than_the_minimum_rate_falls_short() {
        let mut tr = Tracker::default();
        tr.observe(&host(10_000, 10_000), 0.0, 256.0);
        tr.note_write(1, 5_000, 0.0, 0);
        // 4 KiB in 1 s, far below half of 256 KiB/s.
        tr.observe(&host(9_996, 5_000), 1.0, 256.0);
        assert_eq!(tr.get(1).unwrap().short_since, Some(0.0));
        // Still short a second later: the start of the shortfall is kept.
        tr.observe(&host(9_996, 5_000), 2.0, 256.0);
        assert_eq!(tr.get(1).unwrap().short_since, Some(0.0));
        // Back to speed: cleared.
        tr.observe(&host(9_000, 5_000), 3.0, 256.0);
        assert_eq!(tr.get(1).unwrap().short_since, None);
    }

    #[test]
    fn a_driver_near_its_target_is_not_asked_for_more_than_remains() {
        let mut tr = Tracker::default();
        tr.observe(&host(5_100, 5_100), 0.0, 256.0);
        tr.note_write(1, 5_000, 0.0, 0);
        // 96 KiB remained beyond the inaccuracy; moving 60 is more than half of it.
        tr.observe(&host(5_040, 5_000), 1.0, 256.0);
        assert_eq!(tr.get(1).unwrap().short_since, None);
    }
}
