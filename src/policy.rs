//! Target computation: how host memory is divided between domains.
//!
//! The proportional policy is squeezed's: work out the surplus (host free memory plus what every
//! domain could free by going to dynamic-min, less the host's own free-memory goal), then give
//! every domain the same fraction γ of its dynamic range.

use crate::error::Result;
use crate::model::{kib, Domain, Kib};

/// The fraction of its dynamic range that every domain receives, and how it was derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allocation {
    /// Memory available above every domain's dynamic-min, after the host's goal, in KiB.
    pub surplus_kib: Kib,
    /// Sum of the domains' dynamic ranges, in KiB.
    pub total_range_kib: Kib,
    /// The fraction of its range each domain gets, in `[0, 1]`.
    pub gamma: f64,
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
        }
    }

    /// The target this allocation gives `domain`: dynamic-min plus γ of its range, rounded
    /// toward zero exactly as squeezed's `Int64.of_float` does.
    pub fn target_for(&self, domain: &Domain) -> Kib {
        // range ≤ MAX_KIB < 2^53, so the conversion to f64 is exact and the product fits.
        domain.dynamic_min_kib + (self.gamma * domain.range_kib() as f64) as Kib
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
    let total_range = kib::sum(domains.into_iter().map(Domain::range_kib), "total range")?;
    Ok(Allocation::new(surplus, total_range))
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
    fn rounding_is_toward_zero() {
        // γ = 1/3 of a 1000 KiB range is 333.33…, squeezed's Int64.of_float gives 333.
        let ds = [dom(1, 0, 1000, 0), dom(2, 0, 1000, 0), dom(3, 0, 1000, 0)];
        let a = proportional(&ds, 1000, 0, true).unwrap();
        assert_eq!(a.target_for(&ds[0]), 333);
    }
}
