//! Domain 0's memory policy: squeezed's `manage-domain-zero`, `domain-zero-dynamic-min` and
//! `domain-zero-dynamic-max` settings, and the answer to xapi's `get_domain_zero_policy`.
//!
//! As in squeezed, a fixed domain 0 is left out of the balancing altogether (the host model
//! does not see it); a ballooned one has its range written to the store when the service
//! opens and is then balanced like a guest, never capped through maxmem.

use crate::error::{Error, Result};
use crate::host::HostModel;
use crate::model::{kib, Kib};
use crate::platform::pages;

/// How the service manages domain 0's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainZeroPolicy {
    /// Never ballooned: domain 0 keeps what it holds (squeezed's default).
    #[default]
    Fixed,
    /// Ballooned like a guest between `dynamic_min_kib` and `dynamic_max_kib`; `None` for the
    /// maximum means what domain 0 holds when the first service of this boot opens (squeezed's
    /// `auto`), kept in the store for the services opened later.
    Balloon {
        /// Domain 0 never goes below this.
        dynamic_min_kib: Kib,
        /// Domain 0 never goes above this.
        dynamic_max_kib: Option<Kib>,
    },
}

impl DomainZeroPolicy {
    /// Checks the sizes: each in `0..=2^50` KiB, the minimum not above the maximum.
    pub fn validate(&self) -> Result<()> {
        if let DomainZeroPolicy::Balloon {
            dynamic_min_kib,
            dynamic_max_kib,
        } = *self
        {
            kib::check_size("domain 0 dynamic-min", dynamic_min_kib)?;
            if let Some(max) = dynamic_max_kib {
                kib::check_size("domain 0 dynamic-max", max)?;
                if dynamic_min_kib > max {
                    return Err(Error::InvalidMemoryValue(format!(
                        "domain 0 dynamic-min {dynamic_min_kib} KiB is above dynamic-max {max} KiB"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What `get_domain_zero_policy` answers (KiB; squeezed answers bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainZeroAnswer {
    /// Domain 0 is not ballooned and holds this much.
    FixedSize(Kib),
    /// Domain 0 is ballooned between these two sizes.
    AutoBalloon(Kib, Kib),
}

/// Writes domain 0's range when it is ballooned (called as the service opens, under the host
/// lock).
pub(crate) fn configure(model: &mut HostModel, policy: DomainZeroPolicy) -> Result<()> {
    match policy {
        DomainZeroPolicy::Fixed => Ok(()),
        DomainZeroPolicy::Balloon {
            dynamic_min_kib,
            dynamic_max_kib,
        } => model.configure_domain_zero(dynamic_min_kib, dynamic_max_kib),
    }
}

/// The policy in effect: a fixed domain 0's size is what it holds now; a ballooned one's
/// maximum is the one in the store (what the service wrote), else what it holds now.
pub(crate) fn answer(model: &HostModel, policy: DomainZeroPolicy) -> Result<DomainZeroAnswer> {
    let platform = model.platform();
    let holds = || -> Result<Kib> {
        let d = platform
            .hypervisor
            .domain(0)?
            .ok_or_else(|| Error::Backend("the hypervisor reports no domain 0".into()))?;
        pages::to_kib(d.tot_pages)
    };
    match policy {
        DomainZeroPolicy::Fixed => Ok(DomainZeroAnswer::FixedSize(holds()?)),
        DomainZeroPolicy::Balloon {
            dynamic_min_kib,
            dynamic_max_kib,
        } => {
            let max = match dynamic_max_kib {
                Some(m) => m,
                None => match platform.store.read("/local/domain/0/memory/dynamic-max")? {
                    Some(v) => v.trim().parse::<Kib>().map_err(|_| {
                        Error::Backend(format!("domain 0's dynamic-max is {v:?}, not KiB"))
                    })?,
                    None => holds()?,
                },
            };
            Ok(DomainZeroAnswer::AutoBalloon(dynamic_min_kib, max))
        }
    }
}
