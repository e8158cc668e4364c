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
    finish_time_in(contributors, need_kib, &mut Workspace::default())
}

/// Working space of [`finish_time_in`], for a caller that keeps it from round to round (its
/// contents mean nothing between calls: every part is cleared or written before it is read).
#[derive(Debug, Default)]
pub struct Workspace {
    buckets: Vec<Bucket>,
    next: Vec<usize>,
    order: Vec<u128>,
    spare: Vec<u128>,
    counts: Vec<u32>,
}

/// The contributors whose run-out times fall in one range of times: their capacity (as an
/// integer, exact whatever their number and order), the sum of their rates, and a list of
/// them threaded through `Workspace::next` (`head` is the first one's index plus one, 0
/// for none).
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    cap: i128,
    rate: f64,
    head: usize,
}

/// The buckets cover run-out times from 2⁻¹⁶ s (15 µs) to 2³² s in equal slices of each
/// octave; shorter times fall in the first, longer ones (and +∞) in the last.
const LOW_EXPONENT: u64 = 1023 - 16;
/// See [`LOW_EXPONENT`].
const OCTAVES: u64 = 48;

/// [`finish_time`] in the working space `work`.
///
/// Finding `T` needs no full order of the contributors, only the interval between two run-out
/// times in which the freed total crosses `need_kib`. One pass puts each contributor in a
/// bucket by its run-out time (the buckets slice the times in order, so every contributor of a
/// bucket runs out before any of the next one) and sums the capacities and rates of each
/// bucket; a walk down the buckets finds the one in which the crossing lies; only that
/// bucket's few contributors are sorted and walked. Every sum is of non-negative terms, taken
/// in an order fixed by the input alone, so the result is deterministic; it may differ from a
/// walk over all the contributors in sorted order in its last bits.
pub fn finish_time_in(
    contributors: &[Contributor],
    need_kib: Kib,
    work: &mut Workspace,
) -> Option<f64> {
    if need_kib <= 0 {
        return Some(0.0);
    }
    let Workspace {
        buckets,
        next,
        order,
        spare,
        counts,
    } = work;
    let n = contributors.len();
    // A power of two of slices an octave, so that a bucket is a run of a time's bits: n/8 to
    // n/4 buckets over the 48 octaves (48 below 384 contributors). A host's run-out times
    // span a few octaves, so the walk down the buckets costs a fraction of the pass over the
    // contributors and the crossing's bucket holds a few of them.
    let slices = (n / (4 * OCTAVES as usize))
        .checked_ilog2()
        .unwrap_or(0)
        .min(12);
    let shift = 52 - slices;
    let base = LOW_EXPONENT << slices;
    let last = (OCTAVES << slices) - 1;
    buckets.clear();
    buckets.resize(last as usize + 1, Bucket::default());
    next.resize(n, 0);
    // Slices, whose lengths the loop below knows, so that its indexing is not checked again.
    let (buckets, next) = (&mut buckets[..=last as usize], &mut next[..n]);
    // Times outside the buckets' range count as its ends (`maxsd` and `minsd`: a time is
    // never NaN).
    let first_start = f64::from_bits(base << shift);
    let last_end = f64::from_bits(((base + last + 1) << shift) - 1);
    let bucket_of = |t: f64| {
        let t = if t > first_start { t } else { first_start };
        let t = if t < last_end { t } else { last_end };
        ((t.to_bits() >> shift) - base) as usize
    };

    // From the last contributor back, so that each bucket's list comes out in the
    // contributors' order (and the loop counts down to zero).
    for i in (0..n).rev() {
        let c = &contributors[i];
        if c.cap_kib > 0 && moves(c.rate_kib_per_s) {
            // Positive, or +∞ for a rate too small to divide by: its bits order as it does.
            let t = c.cap_kib as f64 / c.rate_kib_per_s;
            let bucket = &mut buckets[bucket_of(t)];
            bucket.cap += i128::from(c.cap_kib);
            bucket.rate += c.rate_kib_per_s;
            next[i] = bucket.head;
            bucket.head = i + 1;
        }
    }
    // The total capacity from the buckets: a few hundred additions rather than one a
    // contributor.
    let total: i128 = buckets.iter().map(|b| b.cap).sum();
    let need = i128::from(need_kib);
    if total < need {
        return None;
    }
    let need_f = need_kib as f64;
    // Whether, at time `t`, contributors of `saturated` KiB in all have run out and the rest
    // have freed `rate · t`, reaching `need`. Below `need`, `saturated` fits an i64.
    let reaches = |saturated: i128, rate: f64, t: f64| {
        saturated >= need || saturated as i64 as f64 + rate * t >= need_f
    };

    // Down the buckets: `above` sums the buckets above `b`. The crossing lies in the lowest
    // bucket `c` such that, at the end of the next one below it, the total is short of
    // `need`; `after` sums the buckets above `c`.
    let (mut above, mut after) = ((0i128, 0.0), (0i128, 0.0));
    let mut crossing = None;
    for (b, bucket) in buckets.iter().enumerate().rev() {
        if bucket.head == 0 {
            continue;
        }
        if crossing.is_some() {
            let end = f64::from_bits((base + b as u64 + 1) << shift);
            if !reaches(total - above.0, above.1, end) {
                break;
            }
        }
        crossing = Some(b);
        after = above;
        above = (above.0 + bucket.cap, above.1 + bucket.rate);
    }
    // Some bucket holds the capacity, as total >= need > 0.
    let crossing = crossing?;

    // That bucket's contributors in order of their run-out times (ties in the contributors'
    // order), as integer keys: the time's bits above the index.
    order.clear();
    let (mut lo, mut hi) = (u64::MAX, 0);
    let mut at = buckets[crossing].head;
    while at != 0 {
        let i = at - 1;
        let c = &contributors[i];
        let t_bits = (c.cap_kib as f64 / c.rate_kib_per_s).to_bits();
        (lo, hi) = (lo.min(t_bits), hi.max(t_bits));
        order.push((u128::from(t_bits) << 64) | i as u128);
        at = next[i];
    }
    sort_keys(order, (lo, hi), spare, counts);

    // Down its contributors: `after` sums those that run out after the one at hand. Once the
    // total at one's run-out time is short of `need`, the crossing lies between its time and
    // the next, where every contributor up to it has run out and the rest go on.
    for &k in order.iter().rev() {
        let c = &contributors[k as u64 as usize];
        let t = f64::from_bits((k >> 64) as u64);
        let from = (after.0 + i128::from(c.cap_kib), after.1 + c.rate_kib_per_s);
        if !reaches(total - from.0, from.1, t) {
            if after.1 == 0.0 {
                // Only through rounding: the last contributor runs out exactly at `need`.
                return Some(t);
            }
            // `need` less what has run out by `t`: below `need`, and above minus `c`'s
            // capacity (rounding may take it below zero), so it fits an i64. The time is no
            // earlier than `t`.
            let left = (need - (total - after.0)) as i64 as f64;
            return Some((left / after.1).max(t));
        }
        after = from;
    }
    // The total reaches `need` by the first one's run-out time: the crossing lies before it,
    // where every contributor from this bucket on is still going.
    Some((need - (total - after.0)) as i64 as f64 / after.1)
}

/// Sorts `keys` (distinct), with `spare` and `counts` as working space: a bucket sort on the
/// high 64 bits (the key proper), which lie in `lo..=hi`, about two keys a bucket, then each
/// bucket sorted on its own. A few passes over the keys instead of a comparison sort's
/// log₂ n; the same order, as the keys are distinct. At worst (every key in one bucket) it is
/// the comparison sort.
fn sort_keys(
    keys: &mut Vec<u128>,
    (lo, hi): (u64, u64),
    spare: &mut Vec<u128>,
    counts: &mut Vec<u32>,
) {
    let n = keys.len();
    if n < 256 {
        keys.sort_unstable();
        return;
    }
    let high = |k: u128| (k >> 64) as u64;
    let bits = (n / 2).next_power_of_two().trailing_zeros();
    let buckets = 1usize << bits;
    let shift = (u64::BITS - (hi - lo).leading_zeros()).saturating_sub(bits);
    let bucket = |k: u128| ((high(k) - lo) >> shift) as usize;
    counts.clear();
    counts.resize(buckets + 1, 0);
    for &k in keys.iter() {
        counts[bucket(k) + 1] += 1;
    }
    for b in 1..=buckets {
        counts[b] += counts[b - 1];
    }
    // counts[b] is where bucket b starts; as keys are placed it moves to where b ends. Every
    // one of the first n places of `spare` is written, so what it held is left as it was
    // rather than cleared.
    if spare.len() < n {
        spare.resize(n, 0);
    }
    for &k in keys.iter() {
        let at = &mut counts[bucket(k)];
        spare[*at as usize] = k;
        *at += 1;
    }
    let mut start = 0;
    for &end in &counts[..buckets] {
        let end = end as usize;
        match end - start {
            0 | 1 => {}
            // Most buckets hold a few keys: sorted in place, without a call.
            2..=8 => {
                for i in start + 1..end {
                    let mut j = i;
                    while j > start && spare[j - 1] > spare[j] {
                        spare.swap(j - 1, j);
                        j -= 1;
                    }
                }
            }
            _ => spare[start..end].sort_unstable(),
        }
        start = end;
    }
    std::mem::swap(keys, spare);
    keys.truncate(n);
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
    out.extend(contributors.iter().map(|c| share(c, t)));
}

/// One contributor's share for finishing at `t` seconds (see [`shares`]), for a caller that
/// walks the contributors anyway.
pub fn share(c: &Contributor, t: f64) -> Kib {
    if !moves(c.rate_kib_per_s) {
        return 0;
    }
    let x = c.rate_kib_per_s * t;
    match ceil_int(x) {
        // At most 2⁵², so compared with the capacity as integers as it would be as doubles.
        Some(s) if s < c.cap_kib => s,
        Some(_) => c.cap_kib.max(0),
        None => {
            let s = x.ceil();
            if s >= c.cap_kib as f64 {
                c.cap_kib.max(0)
            } else {
                s as Kib
            }
        }
    }
}

/// Whether `rate` is a speed to plan with: positive and finite, NaN excluded. The bits of
/// such a number, as an integer, lie in `1..` those of +∞ (the sign bit clear, the exponent
/// not all ones, not +0): one subtraction and one comparison, where `rate > 0.0 &&
/// rate.is_finite()` (or the same with `rate < f64::INFINITY`) compiles to a few dozen
/// instructions classifying the bits, once per contributor.
#[inline]
fn moves(rate: f64) -> bool {
    rate.to_bits().wrapping_sub(1) < f64::INFINITY.to_bits() - 1
}

/// `x.ceil()` as an integer, for a positive `x` below 2⁵² (any share on a real host), else
/// `None`. Computed inline, once per contributor: x86-64's baseline has no rounding
/// instruction (`ceil` is a library call), and Rust's conversion of a double to an integer
/// adds the checks of a saturating one.
#[inline]
fn ceil_int(x: f64) -> Option<i64> {
    const EXACT: f64 = (1u64 << 52) as f64;
    if x > 0.0 && x < EXACT {
        // x + 2⁵² lies in [2⁵², 2⁵³], where the doubles are exactly the integers: the sum is
        // x rounded to a nearest integer, exactly, and its bits less those of 2⁵² are that
        // integer (2⁵³ included: its exponent is one more, its mantissa zero). Rounded
        // down, the ceiling is one more.
        let sum = x + EXACT;
        let near = (sum.to_bits() - EXACT.to_bits()) as i64;
        Some(near + i64::from(sum - EXACT < x))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: Kib = 1024;
    const GIB_KIB: Kib = 1024 * MIB;

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

    /// The walk as first written (the contributors themselves sorted by a float comparison),
    /// with the rate of those still going summed afresh at each step from the last one back:
    /// the first version's running difference of the sum drifted by up to 10⁻¹¹ (relative) on
    /// the hosts below once most contributors had run out.
    fn finish_time_by_sorting_contributors(cs: &[Contributor], need_kib: Kib) -> Option<f64> {
        if need_kib <= 0 {
            return Some(0.0);
        }
        let mut useful: Vec<(f64, f64, f64)> = cs
            .iter()
            .filter(|c| c.cap_kib > 0 && c.rate_kib_per_s > 0.0 && c.rate_kib_per_s.is_finite())
            .map(|c| {
                (
                    c.cap_kib as f64 / c.rate_kib_per_s,
                    c.cap_kib as f64,
                    c.rate_kib_per_s,
                )
            })
            .collect();
        let total: f64 = useful.iter().map(|u| u.1).sum();
        let need = need_kib as f64;
        if total < need {
            return None;
        }
        useful.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut going = vec![0.0; useful.len()];
        let mut sum = 0.0;
        for (g, u) in going.iter_mut().zip(&useful).rev() {
            sum += u.2;
            *g = sum;
        }
        let mut saturated = 0.0;
        for (&(t_i, cap, _), &rate_sum) in useful.iter().zip(&going) {
            if saturated + rate_sum * t_i >= need {
                return Some((need - saturated) / rate_sum);
            }
            saturated += cap;
        }
        useful.last().map(|u| u.0)
    }

    /// Whether `a` and `b` are both `None` or equal within a relative `1e-12`: the sums of the
    /// rates are taken in a different order.
    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs()),
            _ => false,
        }
    }

    #[test]
    fn the_bucketed_crossing_is_the_walk_over_sorted_contributors() {
        // 300 guests of 0 to 4 GiB to give at 1 to 200 MiB/s (measured rates are not whole
        // numbers), one in three a copy of the one before (identical guests tie), some with
        // nothing to give or no rate; asked for 0 % to 100 % of what they can give together.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut work = Workspace::default();
        for round in 0..50 {
            let mut cs: Vec<Contributor> = Vec::new();
            for i in 0..300 {
                let c = if i % 3 == 2 {
                    cs[i - 1]
                } else {
                    let cap = (next() % (4096 * MIB as u64)) as Kib - 8 * MIB;
                    let rate = match next() % 10 {
                        0 => 0.0,
                        _ => 1024.0 + (next() % 200_000_000) as f64 / 1000.0,
                    };
                    c(cap, rate)
                };
                cs.push(c);
            }
            let capacity: Kib = cs.iter().map(|c| c.cap_kib.max(0)).sum();
            for tenth in 0..=10 {
                let need = capacity / 10 * tenth + round;
                let (got, want) = (
                    finish_time_in(&cs, need, &mut work),
                    finish_time_by_sorting_contributors(&cs, need),
                );
                assert!(
                    close(got, want),
                    "round {round}, {tenth}0 %: {got:?} {want:?}"
                );
            }
        }
    }

    /// What the contributors that move have freed by `t`, `Σ min(cap, rate · t)`: the
    /// capacities of those run out, summed exactly, and what the others have freed.
    fn freed_by(cs: &[Contributor], t: f64) -> (i128, f64) {
        let (mut saturated, mut going) = (0, 0.0);
        for c in cs {
            if c.cap_kib > 0 && c.rate_kib_per_s > 0.0 && c.rate_kib_per_s.is_finite() {
                let x = c.rate_kib_per_s * t;
                if x >= c.cap_kib as f64 {
                    saturated += i128::from(c.cap_kib);
                } else {
                    going += x;
                }
            }
        }
        (saturated, going)
    }

    #[test]
    fn the_finish_time_is_the_earliest_at_which_the_guests_free_what_is_needed() {
        // 400 hosts of 1 to 3000 guests. Most guests have 1 KiB to 4 GiB to give at measured
        // (fractional) rates of 1 to 200 MiB/s; some are copies of the guest before (ties),
        // some have a few KiB to give (run out in microseconds, before the first bucket),
        // some are stuck at 0.0001 to 1 KiB/s (run out after decades, past the last
        // bucket), some have nothing to give or a rate of 0, NaN, ±∞ or -1. One host in
        // five is of identical guests, one in five of guests that differ by a millionth of
        // their rate (all in one bucket). Each is asked for nothing, 1 KiB, three random
        // parts of what it can give, half, all of it, and 1 KiB more.
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let moves = |c: &Contributor| c.rate_kib_per_s > 0.0 && c.rate_kib_per_s.is_finite();
        let mut work = Workspace::default();
        for host in 0..400 {
            let n = 1 + (next() % [8, 100, 1000, 3000][host % 4]) as usize;
            let mut cs: Vec<Contributor> = Vec::with_capacity(n);
            for i in 0..n {
                let measured = 1024.0 + (next() % 200_000_000) as f64 / 1000.0 * 1.024;
                let cap = 1 + (next() % (4096 * MIB as u64)) as Kib;
                let guest = match (host % 5, next() % 20) {
                    (0, _) if i > 0 => cs[0],
                    (1, _) => c(GIB_KIB, 100.0 * 1024.0 * (1.0 + i as f64 * 1e-6)),
                    (_, 0) if i > 0 => cs[i - 1],
                    (_, 1) => c(0, measured),
                    (_, 2) => c(-(cap % 1024), measured),
                    (_, 3) => c(cap, 0.0),
                    (_, 4) => c(cap, f64::NAN),
                    (_, 5) => c(cap, f64::INFINITY),
                    (_, 6) => c(cap, f64::NEG_INFINITY),
                    (_, 7) => c(cap, -1.0),
                    (_, 8) => c(cap, (1 + next() % 10_000) as f64 * 1e-4),
                    (_, 9) => c(1 + cap % 64, measured),
                    _ => c(cap, measured),
                };
                cs.push(guest);
            }
            let capacity: Kib = cs
                .iter()
                .filter(|c| c.cap_kib > 0 && moves(c))
                .map(|c| c.cap_kib)
                .sum();
            let some = |r: u64| (r % (capacity as u64 + 1)) as Kib;
            let needs = [
                0,
                1,
                some(next()),
                some(next()),
                some(next()),
                capacity / 2,
                capacity,
                capacity + 1,
            ];
            for need in needs {
                let at = format!("host {host} of {n}, need {need} of {capacity}");
                let t = finish_time_in(&cs, need, &mut work);
                // A working space used before gives what a fresh one does, to the bit.
                assert_eq!(
                    t.map(f64::to_bits),
                    finish_time(&cs, need).map(f64::to_bits),
                    "{at}"
                );
                assert!(
                    close(t, finish_time_by_sorting_contributors(&cs, need)),
                    "{at}: {t:?}"
                );
                if need > capacity {
                    assert_eq!(t, None, "{at}");
                    continue;
                }
                let t = t.unwrap_or_else(|| panic!("{at}: none"));
                assert!(t >= 0.0 && t.is_finite(), "{at}: {t}");
                if need == 0 {
                    assert_eq!(t, 0.0, "{at}");
                    continue;
                }
                let shares: Kib = cs.iter().map(|c| share(c, t)).sum();
                assert!(shares >= need, "{at}: {t} s, shares {shares}");
                // Just before, the guests have not freed enough. (Shares are rounded up to
                // whole KiB, so their sum may still reach `need`: what the guests free
                // is compared instead.)
                let before = t * (1.0 - 1e-9);
                let (saturated, going) = freed_by(&cs, before);
                assert!(
                    saturated < i128::from(need) && saturated as f64 + going < need as f64,
                    "{at}: {t} s, {saturated} + {going} KiB by {before} s"
                );
            }
        }
    }

    #[test]
    fn the_bucket_sort_orders_as_a_comparison_sort() {
        // Times of 1000 guests as sort keys (time above index): spread out, all equal, and
        // clumped next to one guest whose time is +∞ (every other key in the first bucket).
        let key = |t: f64, i: usize| (u128::from(t.to_bits()) << 64) | i as u128;
        let spread: Vec<u128> = (0..1000)
            .map(|i| key(((i * 7919) % 1000) as f64 * 0.37 + 0.5, i))
            .collect();
        let equal: Vec<u128> = (0..1000).map(|i| key(12.5, i)).collect();
        let clumped: Vec<u128> = (0..1000)
            .map(|i| match i {
                500 => key(f64::INFINITY, i),
                _ => key(1.0 + ((i * 31) % 97) as f64 / 97.0, i),
            })
            .collect();
        let (mut spare, mut counts) = (Vec::new(), Vec::new());
        for keys in [spread, equal, clumped] {
            let mut expected = keys.clone();
            expected.sort();
            let high = |k: &u128| (k >> 64) as u64;
            let lo = keys.iter().map(high).min().unwrap();
            let hi = keys.iter().map(high).max().unwrap();
            let mut sorted = keys;
            sort_keys(&mut sorted, (lo, hi), &mut spare, &mut counts);
            assert_eq!(sorted, expected);
        }
    }

    #[test]
    fn a_rate_moves_when_positive_and_finite() {
        for r in [
            0.0,
            -0.0,
            f64::from_bits(1),
            -f64::from_bits(1),
            f64::MIN_POSITIVE / 2.0,
            f64::MIN_POSITIVE,
            1.0,
            32.0 * 1024.0,
            f64::MAX,
            f64::INFINITY,
            -1.0,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(f64::INFINITY.to_bits() + 1),
        ] {
            assert_eq!(moves(r), r > 0.0 && r.is_finite(), "{r}");
        }
    }

    #[test]
    fn ceil_int_is_the_library_ceil() {
        let exact = (1u64 << 52) as f64;
        for x in [
            0.0,
            -0.0,
            1e-300,
            0.5,
            1.0,
            1.0 + f64::EPSILON,
            2.5,
            4_095.999_999,
            1e15 + 0.5,
            exact - 0.5,
            exact,
            exact + 2.0,
            1e300,
            -2.5,
            f64::INFINITY,
            f64::NAN,
        ] {
            check_ceil(x);
        }
        // Halves (where rounding to nearest ties), eighths, and the neighbours of integers,
        // up to 2¹⁶ and just below 2⁵².
        for k in 0..(1u64 << 19) {
            for x in [
                k as f64 / 8.0,
                (exact - 1.0) - k as f64 / 8.0,
                f64::from_bits((k as f64).to_bits() + 1),
                f64::from_bits((k as f64).to_bits().saturating_sub(1)),
            ] {
                check_ceil(x);
            }
        }
    }

    /// `ceil_int(x)` is `x.ceil()` where it gives one, and gives one for every positive `x`
    /// below 2⁵².
    fn check_ceil(x: f64) {
        let exact = (1u64 << 52) as f64;
        match ceil_int(x) {
            Some(i) => assert_eq!((i as f64).to_bits(), x.ceil().to_bits(), "{x}"),
            None => assert!(!(x > 0.0 && x < exact), "{x}"),
        }
    }

    /// A share as first written: the ceiling as a double, compared with the capacity as one.
    fn share_as_doubles(c: &Contributor, t: f64) -> Kib {
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
    }

    #[test]
    fn a_share_is_the_same_as_computed_in_doubles() {
        // Measured (fractional) rates of 1 KiB/s to 200 MiB/s and finish times of 0 to 100 s,
        // against capacities around the share (below, at, just above) and far from it; and
        // the edges: no rate, an infinite one, a share beyond 2⁵² KiB, a negative capacity.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let rate = 1.0 + (next() % 200_000_000) as f64 / 1000.0 * 1.024;
            let t = (next() % 100_000) as f64 / 1000.0;
            let at = (rate * t).ceil() as Kib;
            for cap in [at - 1, at, at + 1, 0, -4, 1 << 40, Kib::MAX] {
                let c = c(cap, rate);
                assert_eq!(
                    share(&c, t),
                    share_as_doubles(&c, t),
                    "{rate} × {t}, cap {cap}"
                );
            }
        }
        for (rate, t) in [
            (0.0, 10.0),
            (f64::INFINITY, 1.0),
            (f64::NAN, 1.0),
            (1e9, 1e9),
            (1e300, 1e10),
            (1024.0, 0.0),
        ] {
            for cap in [0, 1, 1 << 62, Kib::MAX, -1] {
                let c = c(cap, rate);
                assert_eq!(
                    share(&c, t),
                    share_as_doubles(&c, t),
                    "{rate} × {t}, cap {cap}"
                );
            }
        }
    }

    #[test]
    fn capacities_too_large_for_an_i64_together_still_add_up() {
        // 2⁶² KiB each at 1, 2 and 4 KiB/s: 3 × 2⁶² in all, past i64::MAX. Asked for
        // i64::MAX: the fastest runs out at 2⁶⁰ s, having freed 2⁶² (7 × 2⁶⁰ by then in all,
        // short); after it the other two free 3 KiB/s, so T = (i64::MAX − 2⁶²) / 3 s, before
        // the next runs out at 2⁶¹ s.
        let cs = [c(1 << 62, 1.0), c(1 << 62, 2.0), c(1 << 62, 4.0)];
        let t = finish_time(&cs, Kib::MAX).unwrap();
        let expected = (Kib::MAX - (1 << 62)) as f64 / 3.0;
        assert!((t - expected).abs() <= 1e-12 * expected, "{t} {expected}");
        // The first two, 2⁶³ KiB together, are one KiB more than asked: the faster runs out
        // at 2⁶¹ s and the slower frees the rest by 2⁶² − 1 s.
        let t = finish_time(&cs[..2], Kib::MAX).unwrap();
        assert!((t - 2f64.powi(62)).abs() <= 1e-12 * t, "{t}");
        assert_eq!(finish_time(&cs[..1], Kib::MAX), None);
    }

    #[test]
    fn not_enough_capacity_is_none() {
        assert_eq!(finish_time(&[c(10, 1.0), c(10, 0.0)], 11), None);
        assert_eq!(finish_time(&[c(10, 1.0)], 0), Some(0.0));
        assert_eq!(finish_time(&[], 1), None);
    }
}
