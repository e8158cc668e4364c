//! A guest's ballooning policy from its configuration, for toolstacks that write none (xl,
//! libvirt's libxl driver).
//!
//! xapi writes each VM's dynamic range to `/local/domain/<domid>/memory/dynamic-{min,max}` (KiB)
//! and the VM's agent advertises its balloon driver in `control/feature-balloon`. xl writes
//! neither, so without this a guest created by xl is never ballooned. The policy comes from
//! keys in xl's configuration syntax (`key = value`, `#` comments; xl ignores keys it does not
//! know):
//!
//! | in the VM's config (or `/etc/xen/squeeze.d/<name>.cfg`) | host-wide default, in `/etc/xen/xl.conf` |
//! |---|---|
//! | `squeeze_dynamic_min` | `squeeze_default_dynamic_min` |
//! | `squeeze_dynamic_max` | `squeeze_default_dynamic_max` |
//! | `squeeze_weight`      | `squeeze_default_weight`      |
//!
//! Sizes are MiB like xl's own `memory =` (`squeeze_dynamic_min = 512`), or a percentage of the
//! VM's `memory` as a string (`squeeze_dynamic_min = "50%"`). A weight is a number from 0.001
//! to 1000 (1 when unset). A VM's own key wins over the host default.
//!
//! **What an unset VM gets:** `dynamic-max` defaults to its `memory` and `dynamic-min` to its
//! `dynamic-max`, so a VM with neither key nor host default is fixed at its size and never
//! ballooned, exactly as under stock xl. `dynamic-max` may be raised up to `maxmem`.
//!
//! **Guests without an agent:** a VM whose range is not a single point gets
//! `control/feature-balloon = 1` written by the integration, next to its range. Nothing in a
//! stock Linux guest writes that key (its balloon driver only follows `memory/target`, and libxl
//! does not let the guest write `control/`), so without it no xl guest could ever be ballooned.
//! A guest whose driver does not in fact follow its target is caught by the existing rule: it is
//! flagged `memory/uncooperative` after 20 s off target, and balancing works around it.

use crate::error::{Error, Result};
use crate::model::{kib, DomId, Kib};
use crate::platform::StoreOps;

/// The key prefix in a VM's config.
pub const VM_PREFIX: &str = "squeeze_";
/// The key prefix of host-wide defaults in xl.conf.
pub const HOST_PREFIX: &str = "squeeze_default_";

/// An amount of memory as written in a config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// MiB, as a plain number.
    Mib(i64),
    /// A percentage of the VM's `memory`, as a `"NN%"` string.
    PercentOfMemory(u32),
}

impl Amount {
    fn kib(self, memory_kib: Kib) -> Result<Kib> {
        match self {
            Amount::Mib(m) => m
                .checked_mul(1024)
                .ok_or_else(|| Error::InvalidMemoryValue(format!("{m} MiB"))),
            Amount::PercentOfMemory(p) => {
                Ok(memory_kib / 100 * i64::from(p) + memory_kib % 100 * i64::from(p) / 100)
            }
        }
    }
}

/// The policy keys found in one config (each may be absent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyKeys {
    /// `…dynamic_min`.
    pub dynamic_min: Option<Amount>,
    /// `…dynamic_max`.
    pub dynamic_max: Option<Amount>,
    /// `…weight`.
    pub weight: Option<f64>,
}

/// What a guest gets, ready to be written to the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestPolicy {
    /// `memory/dynamic-min`, KiB.
    pub dynamic_min_kib: Kib,
    /// `memory/dynamic-max`, KiB.
    pub dynamic_max_kib: Kib,
    /// `memory/weight`, when set.
    pub weight: Option<f64>,
}

impl GuestPolicy {
    /// Whether the guest may be ballooned at all (its range is more than one point).
    pub fn balloons(&self) -> bool {
        self.dynamic_min_kib < self.dynamic_max_kib
    }
}

/// Reads the keys `<prefix>dynamic_min`, `<prefix>dynamic_max` and `<prefix>weight` from text
/// in xl's config syntax. Other keys, and lines that are not simple `key = value` settings
/// (lists spanning lines, for instance), are ignored; a policy key with a bad value is an
/// error naming it.
pub fn parse_keys(text: &str, prefix: &str) -> Result<PolicyKeys> {
    let mut keys = PolicyKeys::default();
    for raw in text.split(['\n', ';']) {
        let line = strip_comment(raw).trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        let value = value.trim();
        let bad = |what: &str| Error::InvalidArgument(format!("{key} = {value}: {what}"));
        match name {
            "dynamic_min" | "dynamic_max" => {
                let amount = parse_amount(value).map_err(|w| bad(&w))?;
                if name == "dynamic_min" {
                    keys.dynamic_min = Some(amount);
                } else {
                    keys.dynamic_max = Some(amount);
                }
            }
            "weight" => {
                let w: f64 = unquote(value).parse().map_err(|_| bad("not a number"))?;
                if !(0.001..=1000.0).contains(&w) {
                    return Err(bad("a weight is between 0.001 and 1000"));
                }
                keys.weight = Some(w);
            }
            _ => {}
        }
    }
    Ok(keys)
}

/// The line without a `#` comment outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' | '\'' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> &str {
    let v = value.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner.trim();
        }
    }
    v
}

fn parse_amount(value: &str) -> std::result::Result<Amount, String> {
    let v = unquote(value);
    if let Some(p) = v.strip_suffix('%') {
        return match p.trim().parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => Ok(Amount::PercentOfMemory(p)),
            _ => Err("a percentage of memory is from 1% to 100%".into()),
        };
    }
    match v.parse::<i64>() {
        Ok(m) if m > 0 => Ok(Amount::Mib(m)),
        _ => Err("not a size in MiB or a percentage such as \"50%\"".into()),
    }
}

/// The guest's policy from its own keys, the host defaults, its `memory` (the target it is
/// built with) and its `maxmem`, in KiB. See the module documentation for the rules.
pub fn resolve(
    vm: &PolicyKeys,
    host: &PolicyKeys,
    memory_kib: Kib,
    maxmem_kib: Kib,
) -> Result<GuestPolicy> {
    kib::check_size("memory", memory_kib)?;
    kib::check_size("maxmem", maxmem_kib)?;
    if memory_kib <= 0 || maxmem_kib < memory_kib {
        return Err(Error::InvalidMemoryValue(format!(
            "memory {memory_kib} KiB with maxmem {maxmem_kib} KiB"
        )));
    }
    let max = match vm.dynamic_max.or(host.dynamic_max) {
        Some(a) => a.kib(memory_kib)?,
        None => memory_kib,
    };
    let min = match vm.dynamic_min.or(host.dynamic_min) {
        Some(a) => a.kib(memory_kib)?,
        None => max,
    };
    if max > maxmem_kib {
        return Err(Error::InvalidArgument(format!(
            "dynamic-max of {max} KiB is above the VM's maxmem of {maxmem_kib} KiB"
        )));
    }
    if min > max {
        return Err(Error::InvalidArgument(format!(
            "dynamic-min of {min} KiB is above dynamic-max of {max} KiB"
        )));
    }
    Ok(GuestPolicy {
        dynamic_min_kib: min,
        dynamic_max_kib: max,
        weight: vm.weight.or(host.weight),
    })
}

/// Writes the policy of domain `domid` where the service reads it, as xapi's toolstack does
/// (`memory/dynamic-min`, `memory/dynamic-max`, and `memory/weight` when set), plus
/// `control/feature-balloon` when the guest balloons (see the module documentation).
pub fn write(t: &mut dyn StoreOps, domid: DomId, policy: &GuestPolicy) -> Result<()> {
    if domid < 0 {
        return Err(Error::InvalidArgument(format!("domain id {domid}")));
    }
    let k = |key: &str| format!("/local/domain/{domid}/{key}");
    t.write(
        &k("memory/dynamic-min"),
        &policy.dynamic_min_kib.to_string(),
    )?;
    t.write(
        &k("memory/dynamic-max"),
        &policy.dynamic_max_kib.to_string(),
    )?;
    match policy.weight {
        Some(w) => t.write(&k("memory/weight"), &w.to_string())?,
        None => t.rm(&k("memory/weight"))?,
    }
    if policy.balloons() {
        t.write(&k("control/feature-balloon"), "1")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: Kib = 1024;

    #[test]
    fn a_vm_config_with_a_range_in_mib_and_a_weight() {
        let cfg = r#"
name = "web"
memory = 1024
maxmem = 2048
vif = [ 'bridge=xenbr0' ]
squeeze_dynamic_min = 512   # MiB, like memory
squeeze_dynamic_max = "1536"
squeeze_weight = 2.5
"#;
        let keys = parse_keys(cfg, VM_PREFIX).unwrap();
        let p = resolve(&keys, &PolicyKeys::default(), 1024 * MIB, 2048 * MIB).unwrap();
        assert_eq!(
            p,
            GuestPolicy {
                dynamic_min_kib: 524_288,
                dynamic_max_kib: 1_572_864,
                weight: Some(2.5)
            }
        );
        assert!(p.balloons());
    }

    #[test]
    fn an_unset_vm_is_fixed_at_its_memory_and_does_not_balloon() {
        let keys = parse_keys("name = \"db\"\nmemory = 4096\n", VM_PREFIX).unwrap();
        let p = resolve(&keys, &PolicyKeys::default(), 4096 * MIB, 4096 * MIB).unwrap();
        assert_eq!(
            (p.dynamic_min_kib, p.dynamic_max_kib),
            (4_194_304, 4_194_304)
        );
        assert!(!p.balloons());
    }

    #[test]
    fn host_defaults_in_xl_conf_apply_unless_the_vm_says_otherwise() {
        let xl_conf = "autoballoon = \"off\"\nsqueeze = 1\nsqueeze_default_dynamic_min = \"50%\"\n\
                       squeeze_default_weight = 1\n";
        let host = parse_keys(xl_conf, HOST_PREFIX).unwrap();
        // A 256 MiB guest with no keys of its own: 128..256 MiB.
        let p = resolve(&PolicyKeys::default(), &host, 256 * MIB, 256 * MIB).unwrap();
        assert_eq!((p.dynamic_min_kib, p.dynamic_max_kib), (131_072, 262_144));
        assert_eq!(p.weight, Some(1.0));
        // Its own minimum wins: 75% of 1000 MiB is 750 MiB.
        let vm = parse_keys("squeeze_dynamic_min='75%'", VM_PREFIX).unwrap();
        let p = resolve(&vm, &host, 1000 * MIB, 1000 * MIB).unwrap();
        assert_eq!(p.dynamic_min_kib, 768_000);
        // The host's "squeeze_default_" keys are not a VM's "squeeze_" keys, nor the reverse.
        assert_eq!(
            parse_keys(xl_conf, VM_PREFIX).unwrap(),
            PolicyKeys::default()
        );
    }

    #[test]
    fn impossible_ranges_and_bad_values_are_refused_with_the_key_named() {
        let none = PolicyKeys::default();
        let vm = parse_keys("squeeze_dynamic_max = 3072", VM_PREFIX).unwrap();
        let e = resolve(&vm, &none, 1024 * MIB, 2048 * MIB).unwrap_err();
        assert!(e.to_string().contains("above the VM's maxmem"), "{e}");
        let vm = parse_keys(
            "squeeze_dynamic_min = 900\nsqueeze_dynamic_max = 800",
            VM_PREFIX,
        )
        .unwrap();
        assert!(resolve(&vm, &none, 1024 * MIB, 1024 * MIB).is_err());
        for bad in [
            "squeeze_dynamic_min = \"lots\"",
            "squeeze_dynamic_min = 0",
            "squeeze_dynamic_min = \"150%\"",
            "squeeze_weight = 0",
            "squeeze_weight = heavy",
        ] {
            let e = parse_keys(bad, VM_PREFIX).unwrap_err();
            assert!(
                e.to_string().contains(bad.split(' ').next().unwrap()),
                "{e}"
            );
        }
        // A '#' inside quotes is not a comment.
        assert_eq!(
            parse_keys("name = \"a#b\"; squeeze_weight = 3 # heavy", VM_PREFIX)
                .unwrap()
                .weight,
            Some(3.0)
        );
    }

    #[test]
    fn the_policy_is_written_where_the_service_reads_it() {
        use crate::backend::fake::{FakeConfig, FakeHost};
        use crate::platform::Store;
        let h = FakeHost::in_memory(FakeConfig::default()).unwrap();
        let ballooning = GuestPolicy {
            dynamic_min_kib: 131_072,
            dynamic_max_kib: 262_144,
            weight: None,
        };
        h.transaction(&mut |t| write(t, 5, &ballooning)).unwrap();
        let read = |p: &str| Store::read(&h, &format!("/local/domain/5/{p}")).unwrap();
        assert_eq!(read("memory/dynamic-min").as_deref(), Some("131072"));
        assert_eq!(read("memory/dynamic-max").as_deref(), Some("262144"));
        assert_eq!(read("control/feature-balloon").as_deref(), Some("1"));
        assert_eq!(read("memory/weight"), None);
        // A fixed guest gets its range but no balloon driver is claimed for it.
        let fixed = GuestPolicy {
            dynamic_min_kib: 262_144,
            dynamic_max_kib: 262_144,
            weight: Some(0.5),
        };
        h.transaction(&mut |t| write(t, 6, &fixed)).unwrap();
        assert_eq!(
            Store::read(&h, "/local/domain/6/memory/weight")
                .unwrap()
                .as_deref(),
            Some("0.5")
        );
        assert_eq!(
            Store::read(&h, "/local/domain/6/control/feature-balloon").unwrap(),
            None
        );
    }
}
