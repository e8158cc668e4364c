//! Rate-aware division of a freeing request.
//!
//! Given what each domain can still free (`cap`) and how fast its balloon driver moves
//! (`rate`), the earliest time by which `need` KiB can be free is the smallest `T` with
//! `Σ min(cap_i, rate_i · T) ≥ need`. Asking each domain for `min(cap_i, rate_i · T)` makes all
//! of them finish at about `T`, instead of waiting for the slowest driver to free a share sized
//! by its dynamic range.

use crate::model::Kib;

/// One domain's capacity to free and its balloon rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contributor {
    /// KiB the domain can still free.
    pub cap_kib: Kib,
    /// Balloon speed in KiB per second.
    pub rate_kib_per_s: f64,
}

/// The smallest `T` (seconds) with `Σ min(cap_i, rate_i · T) ≥ need_kib`, or `None` when even
/// every capacity together is not enough. Contributors with no capacity or no rate add nothing.
pub fn finish_time(contributors: &[Contributor], need_kib: Kib) -> Option<f64> {
    finish_time_in(contributors, need_kib, &mut Vec::new())
}

/// [`finish_time`] with its working space `useful` (cleared first), for a caller that keeps
/// one from round to round.
pub fn finish_time_in(
    contributors: &[Contributor],
    need_kib: Kib,
    useful: &mut Vec<(f64, f64, f64)>,
) -> Option<f64> {
    if need_kib <= 0 {
        return Some(0.0);
    }
    useful.clear();
    useful.extend(
        contributors
            .iter()
            .filter(|c| c.cap_kib > 0 && c.rate_kib_per_s > 0.0 && c.rate_kib_per_s.is_finite())
            .map(|c| {
                let cap = c.cap_kib as f64;
                (cap / c.rate_kib_per_s, cap, c.rate_kib_per_s)
            }),
    );
    let total: f64 = useful.iter().map(|u| u.1).sum();
    let need = need_kib as f64;
    if total < need {
        return None;
    }
    // Walk the times at which contributors run out, in order. Between two such times the
    // freed total grows linearly with the sum of the rates of those still going.
    // Ties may come in any order: at a tie, saturating one contributor leaves
    // saturated + rate_sum · t_i unchanged, so the result does not depend on it.
    useful.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut saturated = 0.0; // capacity of contributors already exhausted
    let mut rate_sum: f64 = useful.iter().map(|u| u.2).sum();
    for &(t_i, cap, rate) in useful.iter() {
        // At t_i, everything not yet saturated has freed rate·t_i.
        if saturated + rate_sum * t_i >= need {
            return Some((need - saturated) / rate_sum);
        }
        saturated += cap;
        rate_sum -= rate;
    }
    // Only reachable through rounding: the last contributor saturates exactly at `need`.
    useful.last().map(|u| u.0)
}

/// Each contributor's share for finishing at `t` seconds: `min(cap, ⌈rate · t⌉)`.
pub fn shares(contributors: &[Contributor], t: f64) -> Vec<Kib> {
    let mut out = Vec::new();
    shares_into(contributors, t, &mut out);
    out
}

/// [`shares`] into `out` (cleared first), for a caller that keeps one from round to round.
pub fn shares_into(contributors: &[Contributor], t: f64, out: &mut Vec<Kib>) {
    out.clear();
    out.extend(contributors.iter().map(|c| {
        if c.rate_kib_per_s <= 0.0 || !c.rate_kib_per_s.is_finite() {
            0
        } else {
            let s = (c.rate_kib_per_s * t).ceil();
            if s >= c.cap_kib as f64 {
                c.cap_kib.max(0)
            } else {
                s as Kib
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: Kib = 1024;

    fn c(cap_kib: Kib, rate: f64) -> Contributor {
        Contributor {
            cap_kib,
            rate_kib_per_s: rate,
        }
    }

    #[test]
    fn a_fast_and_a_slow_guest_finish_together() {
        // 100 MiB/s and 4 MiB/s, plenty of capacity each, 2 GiB to free: T* = 2048/104 s.
        let cs = [c(4096 * MIB, 100.0 * 1024.0), c(4096 * MIB, 4.0 * 1024.0)];
        let t = finish_time(&cs, 2048 * MIB).unwrap();
        assert!((t - 2048.0 / 104.0).abs() < 1e-9, "{t}");
        let s = shares(&cs, t);
        assert!(s[0] + s[1] >= 2048 * MIB);
        // The fast guest takes 100/104 of the work.
        assert!((s[0] as f64 / (2048 * MIB) as f64 - 100.0 / 104.0).abs() < 1e-6);
    }

    #[test]
    fn a_contributor_that_runs_out_leaves_the_rest_to_the_others() {
        // The fast guest has only 100 MiB to give; the slow one must free the other 300.
        let cs = [c(100 * MIB, 100.0 * 1024.0), c(1000 * MIB, 10.0 * 1024.0)];
        let t = finish_time(&cs, 400 * MIB).unwrap();
        assert!((t - 30.0).abs() < 1e-9, "{t}");
        assert_eq!(shares(&cs, t), vec![100 * MIB, 300 * MIB]);
    }

    #[test]
    fn not_enough_capacity_is_none() {
        assert_eq!(finish_time(&[c(10, 1.0), c(10, 0.0)], 11), None);
        assert_eq!(finish_time(&[c(10, 1.0)], 0), Some(0.0));
        assert_eq!(finish_time(&[], 1), None);
    }
}
