//! Target computation: how host memory is divided between domains.
//!
//! The proportional policy is squeezed's: work out the surplus (host free memory plus what every
//! domain could free by going to dynamic-min, less the host's own free-memory goal), then give
//! every domain the same fraction γ of its dynamic range.
//!
//! Domains may carry weights ([`crate::model::Weight`]). When all weights are equal (the
//! default: all 1) the computation above is used unchanged, so results are squeezed's to the
//! KiB. Otherwise the surplus is shared in proportion to weight × range: a domain gets the
//! fraction min(1, λ·weight) of its range, with the level λ chosen so the fractions add up to
//! the surplus (a domain that reaches its dynamic-max leaves the rest to the others).

use crate::error::Result;
use crate::model::{kib, Domain, Kib};

/// The fraction of its dynamic range that every domain receives, and how it was derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allocation {
    /// Memory available above every domain's dynamic-min, after the host's goal, in KiB.
    pub surplus_kib: Kib,
    /// Sum of the domains' dynamic ranges, in KiB.
    pub total_range_kib: Kib,
    /// The fraction of its range each domain gets, in `[0, 1]`; with unequal weights, the
    /// fraction of the total range handed out (each domain's own fraction then depends on its
    /// weight: see [`target_for`](Allocation::target_for)).
    pub gamma: f64,
    /// With unequal weights, the level λ: a domain gets min(1, λ·weight) of its range.
    level: Option<f64>,
}

impl Allocation {
    /// Splits `surplus_kib` over `total_range_kib`.
    ///
    /// When the total range is zero, nobody can take or give anything through the policy: γ is
    /// then 1 if there is surplus and 0 if not. squeezed computes `surplus / 0` here and relies
    /// on its clamp to turn ∞ and NaN into those same values; we never form them.
    pub fn new(surplus_kib: Kib, total_range_kib: Kib) -> Self {
        let gamma = if total_range_kib <= 0 {
            if surplus_kib > 0 {
                1.0
            } else {
                0.0
            }
        } else {
            (surplus_kib as f64 / total_range_kib as f64).clamp(0.0, 1.0)
        };
        Allocation {
            surplus_kib,
            total_range_kib,
            gamma,
            level: None,
        }
    }

    /// Splits `surplus_kib` over `domains` in proportion to weight × range, each capped at its
    /// own range.
    pub fn weighted(surplus_kib: Kib, domains: &[Domain]) -> Result<Self> {
        let total_range = kib::sum(domains.iter().map(Domain::range_kib), "total range")?;
        let mut a = Allocation::new(surplus_kib, total_range);
        // Water filling: the heaviest domains reach their dynamic-max first. With the level λ,
        // unsaturated domain i gets λ·w_i·range_i; solve for λ over those not yet saturated.
        let mut open: Vec<(f64, f64)> = domains
            .iter()
            .filter(|d| d.range_kib() > 0)
            .map(|d| (d.weight.get(), d.range_kib() as f64))
            .collect();
        open.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut remaining = surplus_kib.max(0) as f64;
        let mut weighed: f64 = open.iter().map(|(w, r)| w * r).sum();
        let mut level = 0.0;
        for &(w, r) in &open {
            level = if weighed > 0.0 {
                remaining / weighed
            } else {
                0.0
            };
            if level * w < 1.0 {
                break;
            }
            // This domain gets its whole range; the others share what is left.
            remaining -= r;
            weighed -= w * r;
            level = 1.0 / w;
        }
        a.level = Some(level.max(0.0));
        Ok(a)
    }

    /// The target this allocation gives `domain`: dynamic-min plus γ of its range, rounded
    /// toward zero exactly as squeezed's `Int64.of_float` does.
    pub fn target_for(&self, domain: &Domain) -> Kib {
        // range ≤ MAX_KIB < 2^53, so the conversion to f64 is exact and the product fits.
        let fraction = match self.level {
            None => self.gamma,
            Some(level) => (level * domain.weight.get()).clamp(0.0, 1.0),
        };
        domain.dynamic_min_kib + (fraction * domain.range_kib() as f64) as Kib
    }

    /// Memory left unallocated because every domain is already at dynamic-max (for logs).
    pub fn unallocated_kib(&self) -> Kib {
        if self.gamma < 1.0 {
            0
        } else {
            (self.surplus_kib - self.total_range_kib).max(0)
        }
    }
}

/// Most that host free memory can reach if every domain in `domains` balloons to dynamic-min.
pub fn maximum_possible_free_kib<'a, I>(
    domains: I,
    free_mem_kib: Kib,
    compensate: bool,
) -> Result<Kib>
where
    I: IntoIterator<Item = &'a Domain>,
{
    let freeable = kib::sum(
        domains.into_iter().map(|d| d.min_freeable_kib(compensate)),
        "total freeable memory",
    )?;
    kib::add(free_mem_kib, freeable, "maximum possible free memory")
}

/// The proportional policy: the [`Allocation`] for `domains` when the host should keep
/// `host_target_kib` free.
pub fn proportional<'a, I>(
    domains: I,
    free_mem_kib: Kib,
    host_target_kib: Kib,
    compensate: bool,
) -> Result<Allocation>
where
    I: IntoIterator<Item = &'a Domain> + Clone,
{
    let max_free = maximum_possible_free_kib(domains.clone(), free_mem_kib, compensate)?;
    let surplus = kib::sub(max_free, host_target_kib, "surplus memory")?.max(0);
    let mut weights = domains.clone().into_iter().map(|d| d.weight);
    let first = weights.next();
    if weights.all(|w| Some(w) == first) {
        let total_range = kib::sum(domains.into_iter().map(Domain::range_kib), "total range")?;
        Ok(Allocation::new(surplus, total_range))
    } else {
        let ds: Vec<Domain> = domains.into_iter().copied().collect();
        Allocation::weighted(surplus, &ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(domid: i32, min: Kib, max: Kib, actual: Kib) -> Domain {
        Domain::new(domid, true, min, actual, max, actual, max, 0)
    }

    #[test]
    fn every_domain_gets_the_same_fraction_of_its_range() {
        // Ranges 1000 and 3000; actuals at mins; 2000 KiB free, goal 0: γ = 2000/4000 = 0.5.
        let ds = [dom(1, 1000, 2000, 1000), dom(2, 2000, 5000, 2000)];
        let a = proportional(&ds, 2000, 0, true).unwrap();
        assert_eq!(a.gamma, 0.5);
        assert_eq!(a.target_for(&ds[0]), 1500);
        assert_eq!(a.target_for(&ds[1]), 3500);
    }

    #[test]
    fn gamma_is_clamped_to_one_and_zero() {
        let ds = [dom(1, 1000, 2000, 1000)];
        assert_eq!(proportional(&ds, 1 << 20, 0, true).unwrap().gamma, 1.0);
        // Goal above everything the host could free: γ = 0, targets at dynamic-min.
        assert_eq!(proportional(&ds, 0, 1 << 20, true).unwrap().gamma, 0.0);
    }

    #[test]
    fn zero_total_range_gives_a_finite_gamma() {
        let ds = [dom(1, 1000, 1000, 1000)];
        let plenty = proportional(&ds, 1 << 30, 9216, true).unwrap();
        assert_eq!(plenty.gamma, 1.0);
        assert_eq!(plenty.target_for(&ds[0]), 1000);
        let none = proportional(&ds, 0, 0, true).unwrap();
        assert_eq!(none.gamma, 0.0);
        assert!(proportional(&[], 0, 0, true).unwrap().gamma.is_finite());
    }

    #[test]
    fn weights_1_and_3_split_the_surplus_1_to_3_within_the_ranges() {
        // Two guests of range 2 GiB (1..3 GiB) at their mins, 1 GiB free, goal 0: the surplus
        // of 1 GiB goes 256 MiB to the guest of weight 1 and 768 MiB to the one of weight 3.
        let gib = 1 << 20;
        let light = dom(1, gib, 3 * gib, gib).with_weight(1.0).unwrap();
        let heavy = dom(2, gib, 3 * gib, gib).with_weight(3.0).unwrap();
        let ds = [light, heavy];
        let a = proportional(&ds, gib, 0, true).unwrap();
        assert_eq!(a.target_for(&light), gib + 256 * 1024);
        assert_eq!(a.target_for(&heavy), gib + 768 * 1024);
        // 3 GiB of surplus: the heavy guest would get 2.25 GiB, more than its range; it stops
        // at dynamic-max (3 GiB) and the light one gets the remaining 1 GiB.
        let a = proportional(&ds, 3 * gib, 0, true).unwrap();
        assert_eq!(a.target_for(&heavy), 3 * gib);
        assert_eq!(a.target_for(&light), 2 * gib);
        // More than both ranges: both at dynamic-max.
        let a = proportional(&ds, 5 * gib, 0, true).unwrap();
        assert_eq!(
            (a.target_for(&light), a.target_for(&heavy)),
            (3 * gib, 3 * gib)
        );
        // Nothing to share: both at dynamic-min.
        let a = proportional(&ds, 0, 0, true).unwrap();
        assert_eq!((a.target_for(&light), a.target_for(&heavy)), (gib, gib));
    }

    #[test]
    fn equal_weights_give_exactly_the_unweighted_targets() {
        // Ranges 1000, 1000, 1000 and γ = 1/3: rounding toward zero shows any difference.
        let plain = [dom(1, 0, 1000, 0), dom(2, 0, 2000, 0), dom(3, 7, 1007, 7)];
        let same = plain.map(|d| d.with_weight(2.5).unwrap());
        for free in [0, 1, 999, 1000, 1001, 2345, 3999, 4000, 10_000] {
            let a = proportional(&plain, free, 0, true).unwrap();
            let b = proportional(&same, free, 0, true).unwrap();
            assert_eq!(a, b);
            for (p, s) in plain.iter().zip(&same) {
                assert_eq!(a.target_for(p), b.target_for(s), "free {free}");
            }
        }
    }

    #[test]
    fn rounding_is_toward_zero() {
        // γ = 1/3 of a 1000 KiB range is 333.33…, squeezed's Int64.of_float gives 333.
        let ds = [dom(1, 0, 1000, 0), dom(2, 0, 1000, 0), dom(3, 0, 1000, 0)];
        let a = proportional(&ds, 1000, 0, true).unwrap();
        assert_eq!(a.target_for(&ds[0]), 333);
    }
}
