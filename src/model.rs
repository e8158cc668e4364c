//! The balancer's view of a host: domains, the host itself, and the actions the squeezer asks
//! for. All sizes are KiB in `i64`, as in xenstore and in squeezed.
//!
//! Values are validated when a [`Host`] is built, so that the arithmetic inside the squeezer can
//! rely on bounds: every domain size lies in `0..=MAX_KIB`, which keeps the differences and the
//! per-domain products used by the policy far away from `i64` overflow. Sums over many domains
//! still go through [`kib::sum`], which reports overflow instead of wrapping.

use crate::error::Error;

/// A memory size or amount, in KiB.
pub type Kib = i64;

/// A Xen domain id.
pub type DomId = i32;

/// The largest memory value the library accepts: 2^50 KiB (1 EiB). Xen hosts are measured in
/// TiB; anything beyond this is a corrupted value, not a large machine.
pub const MAX_KIB: Kib = 1 << 50;

/// The balloon inaccuracy squeezed assumes for every domain: a driver within 4 KiB of its target
/// has hit it.
pub const DEFAULT_INACCURACY_KIB: Kib = 4;

/// The smallest per-domain weight accepted.
pub const MIN_WEIGHT: f64 = 1e-3;

/// The largest per-domain weight accepted: weights further apart than a million to one are a
/// mistake, not a policy.
pub const MAX_WEIGHT: f64 = 1e3;

/// A domain's weight in the proportional policy: its share of the surplus is proportional to
/// its weight times its dynamic range. Every domain weighs 1 unless told otherwise, and when all
/// weights are equal the policy is exactly squeezed's.
///
/// Always a finite number in `MIN_WEIGHT..=MAX_WEIGHT` (so it compares and hashes by value).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Weight(f64);

impl Weight {
    /// The weight every domain has unless told otherwise.
    pub const ONE: Weight = Weight(1.0);

    /// Accepts a weight in `MIN_WEIGHT..=MAX_WEIGHT`; zero, negative, NaN, infinite and
    /// absurd weights are refused.
    pub fn new(value: f64) -> Result<Self, Error> {
        if value.is_finite() && (MIN_WEIGHT..=MAX_WEIGHT).contains(&value) {
            Ok(Weight(value))
        } else {
            Err(Error::InvalidArgument(format!(
                "weight {value} is not a number between {MIN_WEIGHT} and {MAX_WEIGHT}"
            )))
        }
    }

    /// The weight as a number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight::ONE
    }
}

// A Weight is never NaN, so equality by value is an equivalence and agrees with the bits.
impl Eq for Weight {}

impl std::hash::Hash for Weight {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One domain as the balancer sees it.
///
/// The field order and meaning follow squeezed's `Squeeze.domain`, with an optional weight
/// appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Domain {
    /// Xen domain id.
    pub domid: DomId,
    /// Whether the guest has a balloon driver we may ask to move (`control/feature-balloon`).
    pub can_balloon: bool,
    /// Lowest balloon target the policy may set (`memory/dynamic-min`).
    pub dynamic_min_kib: Kib,
    /// Current balloon target (`memory/target`).
    pub target_kib: Kib,
    /// Highest balloon target the policy may set (`memory/dynamic-max`).
    pub dynamic_max_kib: Kib,
    /// What the domain really uses, with its calibrated offset removed.
    pub memory_actual_kib: Kib,
    /// Xen's hard allocation limit for the domain (maxmem).
    pub memory_max_kib: Kib,
    /// How far `memory_actual_kib` may be from the target and still count as "hit".
    pub inaccuracy_kib: Kib,
    /// Its weight in the proportional policy (1 unless set with
    /// [`with_weight`](Domain::with_weight)).
    pub weight: Weight,
}

impl Domain {
    /// A domain with every field given, in squeezed's `domain_make` order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        domid: DomId,
        can_balloon: bool,
        dynamic_min_kib: Kib,
        target_kib: Kib,
        dynamic_max_kib: Kib,
        memory_actual_kib: Kib,
        memory_max_kib: Kib,
        inaccuracy_kib: Kib,
    ) -> Self {
        Domain {
            domid,
            can_balloon,
            dynamic_min_kib,
            target_kib,
            dynamic_max_kib,
            memory_actual_kib,
            memory_max_kib,
            inaccuracy_kib,
            weight: Weight::ONE,
        }
    }

    /// The same domain with weight `weight` in the proportional policy; a weight outside
    /// `MIN_WEIGHT..=MAX_WEIGHT` (or not a number) is refused.
    pub fn with_weight(self, weight: f64) -> Result<Self, Error> {
        let weight = Weight::new(weight).map_err(|e| match e {
            Error::InvalidArgument(m) => {
                Error::InvalidArgument(format!("domain {}: {m}", self.domid))
            }
            other => other,
        })?;
        Ok(Domain { weight, ..self })
    }

    /// Checks that every size is in `0..=MAX_KIB` and the domid is not negative.
    pub fn validate(&self) -> Result<(), Error> {
        if self.domid < 0 {
            return Err(Error::InvalidArgument(format!(
                "domain id {} is negative",
                self.domid
            )));
        }
        let fields = [
            ("dynamic_min_kib", self.dynamic_min_kib),
            ("target_kib", self.target_kib),
            ("dynamic_max_kib", self.dynamic_max_kib),
            ("memory_actual_kib", self.memory_actual_kib),
            ("memory_max_kib", self.memory_max_kib),
            ("inaccuracy_kib", self.inaccuracy_kib),
        ];
        for (name, value) in fields {
            kib::check_size(name, value).map_err(|e| match e {
                Error::InvalidMemoryValue(m) => {
                    Error::InvalidMemoryValue(format!("domain {}: {m}", self.domid))
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// True when `memory_actual_kib` is within the inaccuracy of `target_kib`.
    pub fn has_hit_target(&self) -> bool {
        has_hit_target(self.inaccuracy_kib, self.memory_actual_kib, self.target_kib)
    }

    /// The range the policy may move the target over: `dynamic_max − dynamic_min`, at least 0.
    pub fn range_kib(&self) -> Kib {
        (self.dynamic_max_kib - self.dynamic_min_kib).max(0)
    }

    /// The least this domain is sure to free if its target is set to dynamic-min.
    ///
    /// A balloon driver may stop up to `inaccuracy` short of its target, and the target itself
    /// may be off by as much again, so twice the inaccuracy is held back unless `compensate` is
    /// false (squeezed's `DisableInaccuracyCompensation` fistpoint).
    pub fn min_freeable_kib(&self, compensate: bool) -> Kib {
        let slack = if compensate {
            2 * self.inaccuracy_kib
        } else {
            0
        };
        (self.memory_actual_kib - self.dynamic_min_kib - slack).max(0)
    }
}

/// Which way a balloon driver still has to move to reach its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Actual is above target: the driver must give memory back.
    Down,
    /// Actual is below target: the driver must take memory.
    Up,
}

/// The direction `memory_actual_kib` must move to reach `target_kib`, or `None` when it is
/// within `inaccuracy_kib` of it.
pub fn direction_of_actual(
    inaccuracy_kib: Kib,
    memory_actual_kib: Kib,
    target_kib: Kib,
) -> Option<Direction> {
    let delta = memory_actual_kib - target_kib;
    if delta.abs() <= inaccuracy_kib {
        None
    } else if target_kib > memory_actual_kib {
        Some(Direction::Up)
    } else {
        Some(Direction::Down)
    }
}

/// True when `memory_actual_kib` is within `inaccuracy_kib` of `target_kib` (squeezed's
/// `has_hit_target`).
pub fn has_hit_target(inaccuracy_kib: Kib, memory_actual_kib: Kib, target_kib: Kib) -> bool {
    direction_of_actual(inaccuracy_kib, memory_actual_kib, target_kib).is_none()
}

/// A host: its domains, sorted by domid and unique, and its free memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Host {
    domains: Vec<Domain>,
    /// Free host memory in KiB, net of reservations; a host model may report less than zero
    /// when more has been promised than is free, which the squeezer treats as memory to free.
    pub free_mem_kib: Kib,
}

impl Host {
    /// Builds a host, checking every domain and sorting them by domid. Duplicate domids are an
    /// error: they mean the snapshot the host was built from is inconsistent.
    pub fn new(mut domains: Vec<Domain>, free_mem_kib: Kib) -> Result<Self, Error> {
        if !(-MAX_KIB..=MAX_KIB).contains(&free_mem_kib) {
            return Err(Error::InvalidMemoryValue(format!(
                "host free memory {free_mem_kib} KiB is outside ±{MAX_KIB} KiB"
            )));
        }
        for d in &domains {
            d.validate()?;
        }
        domains.sort_unstable_by_key(|d| d.domid);
        if let Some(w) = domains.windows(2).find(|w| w[0].domid == w[1].domid) {
            return Err(Error::InvalidArgument(format!(
                "domain {} appears twice in one host snapshot",
                w[0].domid
            )));
        }
        Ok(Host {
            domains,
            free_mem_kib,
        })
    }

    /// The domains, in ascending domid order.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }

    /// The domain with this domid, if the host has one.
    pub fn domain(&self, domid: DomId) -> Option<&Domain> {
        self.domains
            .binary_search_by_key(&domid, |d| d.domid)
            .ok()
            .map(|i| &self.domains[i])
    }
}

/// A new balloon target for one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action {
    /// The domain to act on.
    pub domid: DomId,
    /// The balloon target to set, in KiB.
    pub new_target_kib: Kib,
}

/// Checked KiB arithmetic: overflow is an error, never a wrap.
pub mod kib {
    use super::{Kib, MAX_KIB};
    use crate::error::Error;

    /// `a + b`, or an error naming what was being computed.
    pub fn add(a: Kib, b: Kib, what: &str) -> Result<Kib, Error> {
        a.checked_add(b)
            .ok_or_else(|| Error::InvalidMemoryValue(format!("{what}: {a} + {b} KiB overflows")))
    }

    /// `a - b`, or an error naming what was being computed.
    pub fn sub(a: Kib, b: Kib, what: &str) -> Result<Kib, Error> {
        a.checked_sub(b)
            .ok_or_else(|| Error::InvalidMemoryValue(format!("{what}: {a} - {b} KiB overflows")))
    }

    /// The sum of `values`, or an error naming what was being summed.
    pub fn sum<I: IntoIterator<Item = Kib>>(values: I, what: &str) -> Result<Kib, Error> {
        values
            .into_iter()
            .try_fold(0 as Kib, |acc, v| add(acc, v, what))
    }

    /// Accepts a size in `0..=MAX_KIB`; negative or absurd sizes are errors.
    pub fn check_size(name: &str, value: Kib) -> Result<Kib, Error> {
        if value < 0 {
            Err(Error::InvalidMemoryValue(format!(
                "{name} is negative ({value} KiB)"
            )))
        } else if value > MAX_KIB {
            Err(Error::InvalidMemoryValue(format!(
                "{name} is {value} KiB, above the {MAX_KIB} KiB limit"
            )))
        } else {
            Ok(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_target_allows_the_inaccuracy_both_ways() {
        assert!(has_hit_target(4, 1004, 1000));
        assert!(has_hit_target(4, 996, 1000));
        assert!(!has_hit_target(4, 1005, 1000));
        assert_eq!(direction_of_actual(4, 1005, 1000), Some(Direction::Down));
        assert_eq!(direction_of_actual(4, 995, 1000), Some(Direction::Up));
    }

    #[test]
    fn min_freeable_holds_back_twice_the_inaccuracy() {
        let d = Domain::new(1, true, 1000, 1500, 2000, 1500, 1500, 4);
        assert_eq!(d.min_freeable_kib(true), 492);
        assert_eq!(d.min_freeable_kib(false), 500);
        let at_min = Domain::new(1, true, 1000, 1000, 2000, 1002, 1500, 4);
        assert_eq!(at_min.min_freeable_kib(true), 0);
    }

    #[test]
    fn host_sorts_domains_and_refuses_duplicates() {
        let a = Domain::new(7, true, 1, 1, 1, 1, 1, 0);
        let b = Domain::new(3, true, 1, 1, 1, 1, 1, 0);
        let h = Host::new(vec![a, b], 10).unwrap();
        assert_eq!(h.domains()[0].domid, 3);
        assert_eq!(h.domain(7), Some(&a));
        assert!(matches!(
            Host::new(vec![a, a], 10),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn negative_and_absurd_sizes_are_refused() {
        let neg = Domain::new(1, true, -1, 1, 1, 1, 1, 0);
        assert!(matches!(
            Host::new(vec![neg], 0),
            Err(Error::InvalidMemoryValue(_))
        ));
        let huge = Domain::new(1, true, 0, 1, MAX_KIB + 1, 1, 1, 0);
        assert!(matches!(
            Host::new(vec![huge], 0),
            Err(Error::InvalidMemoryValue(_))
        ));
        assert!(kib::sum([i64::MAX, 1], "test").is_err());
    }

    #[test]
    fn bad_weights_are_refused_with_the_domain_named() {
        let d = Domain::new(5, true, 1, 1, 1, 1, 1, 0);
        assert_eq!(d.weight, Weight::ONE);
        assert_eq!(d.with_weight(3.0).unwrap().weight.get(), 3.0);
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e9,
            1e-9,
        ] {
            match d.with_weight(bad) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.contains("domain 5") && m.contains("weight"), "{m}")
                }
                other => panic!("weight {bad} accepted: {other:?}"),
            }
        }
    }
}
