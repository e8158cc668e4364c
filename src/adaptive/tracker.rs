//! What the adaptive squeezer learns about each domain across iterations and calls: balloon
//! rates in both directions, whether the driver keeps up with what it is asked, the limits it
//! has shown (a floor it will not shrink below, a ceiling it will not grow past), and a
//! non-cooperation score.
//!
//! The score is the work a driver failed to do, in seconds at its own measured speed (or the
//! minimum acceptable speed, whichever is higher), leaking away with a time constant. A driver
//! that stops after moving has shown a limit, and is not scored for not going past it; but if it
//! later moves past that limit after all, the whole stall is added to its score. So a guest at a
//! real floor is never flagged, while one that stalls and resumes, or trickles, or never moves
//! at all, is. Flagging has hysteresis: raised at one score, cleared at a lower one.

use std::collections::BTreeMap;

use crate::model::{Direction, DomId, Domain, Host, Kib};

/// Weight of a new full-speed rate sample in the running estimate.
const RATE_SMOOTHING: f64 = 0.5;

/// How drivers are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judge {
    /// Slowest acceptable balloon speed for a driver with work to do, KiB/s.
    pub min_rate_kib_per_s: f64,
    /// How far past a limit a driver must move for the limit to be forgotten, KiB.
    pub limit_slack_kib: Kib,
    /// Time constant of the score's leak, seconds.
    pub leak_s: f64,
    /// Score (seconds of missed work) at which a domain is flagged uncooperative.
    pub flag_at_s: f64,
    /// Score at which the flag is cleared again.
    pub clear_at_s: f64,
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            min_rate_kib_per_s: 256.0,
            limit_slack_kib: 128,
            leak_s: 60.0,
            flag_at_s: 10.0,
            clear_at_s: 3.0,
        }
    }
}

/// What most recently counted against a domain. Serialised (in the diagnostics) as its
/// [`name`](Concern::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Concern {
    /// The driver moves, but slower than the minimum acceptable rate.
    TooSlow,
    /// The driver does not move at all while it has work to do.
    NotMoving,
    /// The driver stopped as if at a limit, then moved past it.
    StalledAndResumed,
}

impl Concern {
    /// The concern's name, as the diagnostics spell it: `"too-slow"`, `"not-moving"` or
    /// `"stalled-and-resumed"`.
    pub fn name(self) -> &'static str {
        match self {
            Concern::TooSlow => "too-slow",
            Concern::NotMoving => "not-moving",
            Concern::StalledAndResumed => "stalled-and-resumed",
        }
    }
}

/// A limit a balloon driver has shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Memory-actual at which the driver stopped, in KiB.
    pub at_kib: Kib,
    /// When it was learnt (seconds).
    pub since: f64,
}

/// Per-domain observations.
///
/// What a look reads and writes for every domain comes first (`repr(C)` keeps the order), and
/// what is usually absent (measured rates, a shortfall or stall in progress, limits) is kept
/// behind one byte of flags, so that a look tests all of it at once. The optional parts are
/// read with the methods of their names ([`rate_down`](Track::rate_down),
/// [`floor`](Track::floor), ...), which give `None` when there is none.
#[derive(Clone)]
#[repr(C)]
pub struct Track {
    /// Memory-actual at the last observation.
    pub last_actual_kib: Kib,
    /// The target in force since the last observation.
    pub target_kib: Kib,
    /// Time of the last observation.
    pub last_time: f64,
    /// Measured shrinking speed, KiB/s, if `has & RATE_DOWN`.
    rate_down: f64,
    /// Measured growing speed, KiB/s, if `has & RATE_UP`.
    rate_up: f64,
    /// Seconds of work the driver failed to do, leaking away over time.
    pub score_s: f64,
    /// Which of the optional values are present (the `Has` bits).
    has: u8,
    /// Whether the driver has moved toward its target since the request changed direction.
    pub moved_since_request: bool,
    /// Whether the driver has been seen to reach a growth target it was given.
    pub grew: bool,
    /// Whether the domain is flagged uncooperative.
    pub uncooperative: bool,
    /// What most recently counted against it.
    pub concern: Option<Concern>,
    /// Direction of the last target written: -1 down, 1 up, 0 none yet.
    pub last_write_dir: i8,
    /// When the last target was written.
    pub last_write_time: f64,
    /// Input epoch at the last write (see `Adaptive`'s dwell rule).
    pub last_write_epoch: u64,
    /// Start of the shortfall, if `has & SHORT`.
    short_since: f64,
    /// Start of the stall, if `has & STALLED`.
    stalled_since: f64,
    /// The floor, if `has & FLOOR`.
    floor: Limit,
    /// The ceiling, if `has & CEILING`.
    ceiling: Limit,
    /// Where the driver is pinned, if `has & PINNED`.
    pinned: Limit,
}

/// The bits of [`Track`]'s `has`: which optional values it holds.
struct Has;

impl Has {
    const FLOOR: u8 = 1;
    const CEILING: u8 = 2;
    const PINNED: u8 = 4;
    const SHORT: u8 = 8;
    const STALLED: u8 = 16;
    const RATE_DOWN: u8 = 32;
    const RATE_UP: u8 = 64;
    /// Any limit: a look with none of them (the usual case) skips their tests at once.
    const LIMITS: u8 = Self::FLOOR | Self::CEILING | Self::PINNED;
}

/// A limit's place when there is none (never read).
const NO_LIMIT: Limit = Limit {
    at_kib: 0,
    since: 0.0,
};

impl Track {
    fn new(d: &Domain, now: f64) -> Self {
        Track {
            last_actual_kib: d.memory_actual_kib,
            target_kib: d.target_kib,
            last_time: now,
            rate_down: 0.0,
            rate_up: 0.0,
            score_s: 0.0,
            has: 0,
            moved_since_request: false,
            grew: false,
            uncooperative: false,
            concern: None,
            last_write_dir: 0,
            last_write_time: f64::NEG_INFINITY,
            last_write_epoch: 0,
            short_since: 0.0,
            stalled_since: 0.0,
            floor: NO_LIMIT,
            ceiling: NO_LIMIT,
            pinned: NO_LIMIT,
        }
    }

    /// `value` if the flag `bit` is set.
    #[inline(always)]
    fn get<T>(&self, bit: u8, value: T) -> Option<T> {
        (self.has & bit != 0).then_some(value)
    }

    /// Stores `value` (if any) in `slot`, and whether there is one in the flag `bit`.
    #[inline(always)]
    fn put<T>(has: &mut u8, bit: u8, slot: &mut T, value: Option<T>) {
        match value {
            Some(v) => {
                *slot = v;
                *has |= bit;
            }
            None => *has &= !bit,
        }
    }

    /// Measured shrinking speed, KiB/s.
    #[inline]
    pub fn rate_down(&self) -> Option<f64> {
        self.get(Has::RATE_DOWN, self.rate_down)
    }

    /// Measured growing speed, KiB/s.
    #[inline]
    pub fn rate_up(&self) -> Option<f64> {
        self.get(Has::RATE_UP, self.rate_up)
    }

    /// Since when the driver has been moving slower than the minimum acceptable rate while it
    /// had work to do.
    #[inline]
    pub fn short_since(&self) -> Option<f64> {
        self.get(Has::SHORT, self.short_since)
    }

    /// Since when the driver has not moved at all while it had work to do.
    #[inline]
    pub fn stalled_since(&self) -> Option<f64> {
        self.get(Has::STALLED, self.stalled_since)
    }

    /// A floor the driver would not shrink below.
    #[inline]
    pub fn floor(&self) -> Option<Limit> {
        self.get(Has::FLOOR, self.floor)
    }

    /// A ceiling the driver would not grow past.
    #[inline]
    pub fn ceiling(&self) -> Option<Limit> {
        self.get(Has::CEILING, self.ceiling)
    }

    /// Where a driver that has not moved at all since it was asked to shrink is stuck. Unlike a
    /// floor, this is no excuse: the driver keeps being scored.
    #[inline]
    pub fn pinned(&self) -> Option<Limit> {
        self.get(Has::PINNED, self.pinned)
    }

    /// Sets (or with `None` forgets) the measured shrinking speed.
    pub fn set_rate_down(&mut self, rate: Option<f64>) {
        Self::put(&mut self.has, Has::RATE_DOWN, &mut self.rate_down, rate);
    }

    /// Sets (or forgets) the measured growing speed.
    pub fn set_rate_up(&mut self, rate: Option<f64>) {
        Self::put(&mut self.has, Has::RATE_UP, &mut self.rate_up, rate);
    }

    /// Sets (or forgets) the floor.
    pub fn set_floor(&mut self, limit: Option<Limit>) {
        Self::put(&mut self.has, Has::FLOOR, &mut self.floor, limit);
    }

    /// Sets (or forgets) the ceiling.
    pub fn set_ceiling(&mut self, limit: Option<Limit>) {
        Self::put(&mut self.has, Has::CEILING, &mut self.ceiling, limit);
    }

    /// Sets (or forgets) where the driver is pinned.
    pub fn set_pinned(&mut self, limit: Option<Limit>) {
        Self::put(&mut self.has, Has::PINNED, &mut self.pinned, limit);
    }

    /// Whether the track may have a limit to learn: it has stalled or fallen short (for any
    /// time so far). One test of the flags, for the walk that asks it of every domain.
    #[inline(always)]
    pub(crate) fn may_have_limit_to_learn(&self) -> bool {
        self.has & (Has::SHORT | Has::STALLED) != 0
    }

    /// Records that the target is now `target_kib` (written at `now`, in `epoch`).
    pub(crate) fn note_write(&mut self, target_kib: Kib, now: f64, epoch: u64) {
        if retarget(self, target_kib) {
            self.last_write_time = now;
            self.last_write_epoch = epoch;
        }
    }

    /// Whether the driver has fallen short of the minimum rate for at least `grace_s`.
    #[inline]
    pub fn lagging(&self, now: f64, grace_s: f64) -> bool {
        self.short_since().is_some_and(|s| now - s >= grace_s)
    }

    /// Flags the domain now: a request failed naming it as the guest that would not free
    /// what it was asked. Its score is raised to the flagging score, so the flag clears by the
    /// usual hysteresis once the driver does its work.
    pub fn blame(&mut self, judge: &Judge) {
        self.score_s = self.score_s.max(judge.flag_at_s);
        self.uncooperative = true;
        if self.concern.is_none() {
            self.concern = Some(if self.moved_since_request {
                Concern::TooSlow
            } else {
                Concern::NotMoving
            });
        }
    }

    /// Whether the driver has shown it can grow: it reached a growth target, or grows at least
    /// at the minimum rate (as another process may have measured).
    pub fn proven_up(&self, judge: &Judge) -> bool {
        self.grew
            || self
                .rate_up()
                .is_some_and(|r| r >= judge.min_rate_kib_per_s)
    }

    /// Whether the squeezer should not count on this driver to free memory.
    #[inline]
    pub fn unreliable(&self, now: f64, grace_s: f64) -> bool {
        self.has & (Has::FLOOR | Has::PINNED) != 0 || self.lagging(now, grace_s)
    }
}

// Shown and compared as the fields they stand for: an absent value is `None`, whatever its
// (unused) storage holds.
impl std::fmt::Debug for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Track")
            .field("last_actual_kib", &self.last_actual_kib)
            .field("target_kib", &self.target_kib)
            .field("last_time", &self.last_time)
            .field("rate_down", &self.rate_down())
            .field("rate_up", &self.rate_up())
            .field("short_since", &self.short_since())
            .field("stalled_since", &self.stalled_since())
            .field("moved_since_request", &self.moved_since_request)
            .field("grew", &self.grew)
            .field("floor", &self.floor())
            .field("ceiling", &self.ceiling())
            .field("pinned", &self.pinned())
            .field("score_s", &self.score_s)
            .field("uncooperative", &self.uncooperative)
            .field("concern", &self.concern)
            .field("last_write_dir", &self.last_write_dir)
            .field("last_write_time", &self.last_write_time)
            .field("last_write_epoch", &self.last_write_epoch)
            .finish()
    }
}

impl PartialEq for Track {
    fn eq(&self, o: &Self) -> bool {
        self.last_actual_kib == o.last_actual_kib
            && self.target_kib == o.target_kib
            && self.last_time == o.last_time
            && self.rate_down() == o.rate_down()
            && self.rate_up() == o.rate_up()
            && self.short_since() == o.short_since()
            && self.stalled_since() == o.stalled_since()
            && self.moved_since_request == o.moved_since_request
            && self.grew == o.grew
            && self.floor() == o.floor()
            && self.ceiling() == o.ceiling()
            && self.pinned() == o.pinned()
            && self.score_s == o.score_s
            && self.uncooperative == o.uncooperative
            && self.concern == o.concern
            && self.last_write_dir == o.last_write_dir
            && self.last_write_time == o.last_write_time
            && self.last_write_epoch == o.last_write_epoch
    }
}

/// Observations for every domain on the host, forgotten when a domain disappears.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracker {
    per_domain: Tracks,
    /// What another process learnt about domains this tracker has not seen yet, applied when
    /// it first sees them.
    inherited: BTreeMap<DomId, Learnt>,
}

/// Tracks by domid: the domids in order beside their tracks, so that a lookup is a binary
/// search over a few KiB of domids, not a walk down a tree of large nodes (a round looks a
/// domain up several times, on hosts of thousands).
#[derive(Debug, Clone, Default, PartialEq)]
struct Tracks {
    ids: Vec<DomId>,
    tracks: Vec<Track>,
}

impl Tracks {
    fn get(&self, domid: &DomId) -> Option<&Track> {
        self.ids.binary_search(domid).ok().map(|i| &self.tracks[i])
    }

    fn get_mut(&mut self, domid: &DomId) -> Option<&mut Track> {
        self.ids
            .binary_search(domid)
            .ok()
            .map(|i| &mut self.tracks[i])
    }

    fn insert(&mut self, domid: DomId, t: Track) {
        match self.ids.binary_search(&domid) {
            Ok(i) => self.tracks[i] = t,
            Err(i) => {
                self.ids.insert(i, domid);
                self.tracks.insert(i, t);
            }
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&DomId, &mut Track) -> bool) {
        let mut k = 0;
        for i in 0..self.ids.len() {
            if keep(&self.ids[i], &mut self.tracks[i]) {
                self.ids.swap(k, i);
                self.tracks.swap(k, i);
                k += 1;
            }
        }
        self.ids.truncate(k);
        self.tracks.truncate(k);
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// The walk of the usual look, which sees the domains of the last one: both are in domid
    /// order, so they are walked together rather than looked up one by one, as far as they
    /// agree. Each domain is updated by [`step`], then given to `then` with the value
    /// carried from the domain before. Returns how many were walked, and the last value.
    #[inline(always)]
    fn walk<A, const NUMBER: bool>(
        &mut self,
        domains: &[Domain],
        mut pass: Pass<NUMBER>,
        mut acc: A,
        then: &mut impl AfterUpdate<A>,
    ) -> (usize, A) {
        let mut k = 0;
        for ((&id, t), d) in self.ids.iter().zip(self.tracks.iter_mut()).zip(domains) {
            if id != d.domid {
                break;
            }
            step(t, d, &mut pass);
            acc = then.after(acc, k, d, t);
            k += 1;
        }
        (k, acc)
    }

    fn iter(&self) -> impl Iterator<Item = (&DomId, &Track)> {
        self.ids.iter().zip(&self.tracks)
    }
}

/// The part of a [`Track`] worth keeping beyond one process: what the driver has shown about
/// itself (speeds, limits) and how it has been judged. Times are left out: every process has a
/// clock of its own origin. Kept in the store beside the ledger (see `docs/service.md`), so
/// every process deciding for the host judges a guest the same way.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Learnt {
    /// Measured shrinking speed, KiB/s.
    pub rate_down_kib_per_s: Option<f64>,
    /// Measured growing speed, KiB/s.
    pub rate_up_kib_per_s: Option<f64>,
    /// A floor the driver would not shrink below, KiB.
    pub floor_kib: Option<Kib>,
    /// A ceiling the driver would not grow past, KiB.
    pub ceiling_kib: Option<Kib>,
    /// Seconds of work the driver failed to do.
    pub score_s: f64,
    /// Whether the domain is flagged uncooperative.
    pub uncooperative: bool,
    /// What most recently counted against it.
    pub concern: Option<Concern>,
}

impl Learnt {
    /// What `t` has learnt.
    pub fn of(t: &Track) -> Self {
        Learnt {
            rate_down_kib_per_s: t.rate_down(),
            rate_up_kib_per_s: t.rate_up(),
            floor_kib: t.floor().map(|l| l.at_kib),
            ceiling_kib: t.ceiling().map(|l| l.at_kib),
            score_s: t.score_s,
            uncooperative: t.uncooperative,
            concern: t.concern,
        }
    }

    /// Whether the values are ones a tracker could have learnt (finite, non-negative), so
    /// that damaged data is ignored rather than trusted.
    pub fn is_sane(&self) -> bool {
        let rate_ok = |r: Option<f64>| r.is_none_or(|r| r.is_finite() && r > 0.0);
        rate_ok(self.rate_down_kib_per_s)
            && rate_ok(self.rate_up_kib_per_s)
            && self.floor_kib.is_none_or(|k| k >= 0)
            && self.ceiling_kib.is_none_or(|k| k >= 0)
            && self.score_s.is_finite()
            && self.score_s >= 0.0
    }

    /// Puts what was learnt into `t`, as learnt at `now`.
    fn apply(&self, t: &mut Track, now: f64) {
        t.set_rate_down(self.rate_down_kib_per_s);
        t.set_rate_up(self.rate_up_kib_per_s);
        t.set_floor(self.floor_kib.map(|at_kib| Limit { at_kib, since: now }));
        t.set_ceiling(self.ceiling_kib.map(|at_kib| Limit { at_kib, since: now }));
        t.score_s = self.score_s;
        t.uncooperative = self.uncooperative;
        t.concern = self.concern;
    }
}

/// What a look does with each domain right after updating its track
/// ([`Tracker::observe_fold`]): given the value carried from the domain before, the domain's
/// place among the host's domains, the domain and its track, it gives the value for the next.
/// Any closure of that shape is one; a type of its own can have its `after` inlined into the
/// walk, where a closure past a few lines is called once per domain instead.
pub trait AfterUpdate<A> {
    /// The value for the next domain, from `acc` and the domain at `index` with its track.
    fn after(&mut self, acc: A, index: usize, d: &Domain, t: &mut Track) -> A;
}

impl<A, F: FnMut(A, usize, &Domain, &mut Track) -> A> AfterUpdate<A> for F {
    #[inline(always)]
    fn after(&mut self, acc: A, index: usize, d: &Domain, t: &mut Track) -> A {
        self(acc, index, d, t)
    }
}

impl Tracker {
    /// Takes a snapshot at `now`: updates rates, shortfall, limits and scores for every domain,
    /// adds new ones and forgets those that are gone.
    pub fn observe(&mut self, host: &Host, now: f64, judge: &Judge) {
        self.observe_then(host, now, judge, |_, _, _| {});
    }

    /// [`observe`](Tracker::observe), then `then(index, domain, track)` for every domain of
    /// `host`, in domid order, with its track as just updated. As far as the host has the
    /// domains of the last look (the usual case: all of them) this is one walk, each domain's
    /// `then` right after its update: on a big host a walk fewer over the tracks.
    pub fn observe_then(
        &mut self,
        host: &Host,
        now: f64,
        judge: &Judge,
        mut then: impl FnMut(usize, &Domain, &mut Track),
    ) {
        self.observe_fold(
            host,
            now,
            judge,
            (),
            |(), i: usize, d: &Domain, t: &mut Track| then(i, d, t),
        );
    }

    /// [`observe_then`](Tracker::observe_then) with a value carried from each domain's
    /// `then` to the next's: `then(value, index, domain, track)` gives the value for the next
    /// domain, starting from `init`; returns the last. On the usual look the value is kept
    /// in a register, not behind a reference.
    pub fn observe_fold<A>(
        &mut self,
        host: &Host,
        now: f64,
        judge: &Judge,
        init: A,
        mut then: impl AfterUpdate<A>,
    ) -> A {
        let domains = host.domains();
        // A copy of the walk for a minimum rate that is a number (always, from validated
        // options), which takes the larger of two rates in one comparison.
        let (k, mut acc) = if judge.min_rate_kib_per_s.is_nan() {
            let pass = Pass::<false>::new(now, judge);
            self.per_domain.walk(domains, pass, init, &mut then)
        } else {
            let pass = Pass::<true>::new(now, judge);
            self.per_domain.walk(domains, pass, init, &mut then)
        };
        if k == domains.len() && k == self.per_domain.len() {
            // What was inherited is only kept for domains not seen yet: none is on the host.
            self.inherited.clear();
            return acc;
        }
        // Domains came or went after the first `k`, which are done.
        let mut pass = Pass::<false>::new(now, judge);
        self.per_domain
            .retain(|domid, _| host.domain(*domid).is_some());
        self.inherited
            .retain(|domid, _| host.domain(*domid).is_some());
        for d in &domains[k..] {
            match self.per_domain.get_mut(&d.domid) {
                None => {
                    let mut t = Track::new(d, now);
                    if let Some(l) = self.inherited.remove(&d.domid) {
                        l.apply(&mut t, now);
                    }
                    self.per_domain.insert(d.domid, t);
                }
                Some(t) => step(t, d, &mut pass),
            }
        }
        for (i, d) in domains.iter().enumerate().skip(k) {
            if let Some(t) = self.get_mut_at(i, d.domid) {
                acc = then.after(acc, i, d, t);
            }
        }
        acc
    }

    /// The observations for `domid`.
    pub fn get(&self, domid: DomId) -> Option<&Track> {
        self.per_domain.get(&domid)
    }

    /// Every domain's observations, in domid order.
    pub fn iter(&self) -> impl Iterator<Item = (DomId, &Track)> {
        self.per_domain.iter().map(|(&domid, t)| (domid, t))
    }

    /// Whether the tracked domains are `host`'s, in the same order, as they are right after
    /// [`observe`](Tracker::observe) of `host`: then [`tracks`](Tracker::tracks) can be
    /// walked beside the host's domains.
    pub(crate) fn holds_exactly(&self, host: &Host) -> bool {
        let (ids, domains) = (&self.per_domain.ids, host.domains());
        ids.len() == domains.len() && ids.iter().zip(domains).all(|(&id, d)| id == d.domid)
    }

    /// Every track, in domid order.
    pub(crate) fn tracks(&self) -> &[Track] {
        &self.per_domain.tracks
    }

    /// [`tracks`](Tracker::tracks), mutable.
    pub(crate) fn tracks_mut(&mut self) -> &mut [Track] {
        &mut self.per_domain.tracks
    }

    /// The observations for `domid`, which is at `index` in the domains of the last look
    /// when that look is the one being decided on: then found without a search.
    pub fn get_at(&self, index: usize, domid: DomId) -> Option<&Track> {
        match self.per_domain.ids.get(index) {
            Some(&id) if id == domid => Some(&self.per_domain.tracks[index]),
            _ => self.get(domid),
        }
    }

    /// [`get_at`](Tracker::get_at), mutable.
    #[inline]
    pub fn get_mut_at(&mut self, index: usize, domid: DomId) -> Option<&mut Track> {
        match self.per_domain.ids.get(index) {
            Some(&id) if id == domid => Some(&mut self.per_domain.tracks[index]),
            _ => self.get_mut(domid),
        }
    }

    /// Mutable observations for `domid`.
    pub fn get_mut(&mut self, domid: DomId) -> Option<&mut Track> {
        self.per_domain.get_mut(&domid)
    }

    /// Takes what another process learnt about `domid` (at `now` by this tracker's clock):
    /// straight away if the domain is tracked, else when it is first seen.
    pub fn adopt(&mut self, domid: DomId, learnt: Learnt, now: f64) {
        match self.per_domain.get_mut(&domid) {
            Some(t) => learnt.apply(t, now),
            None => {
                self.inherited.insert(domid, learnt);
            }
        }
    }

    /// Forgets everything about `domid`, tracked or inherited: the domain that had it is gone
    /// and a new one reuses its domid. The next look sees it as a new domain.
    pub fn forget(&mut self, domid: DomId) {
        self.per_domain.retain(|&d, _| d != domid);
        self.inherited.remove(&domid);
    }

    /// What has been learnt about every tracked domain, in domid order.
    pub fn learnt(&self) -> Vec<(DomId, Learnt)> {
        self.per_domain
            .iter()
            .map(|(&domid, t)| (domid, Learnt::of(t)))
            .collect()
    }

    /// Records that `domid`'s target is now `target_kib` (written at `now`, in `epoch`).
    pub fn note_write(&mut self, domid: DomId, target_kib: Kib, now: f64, epoch: u64) {
        if let Some(t) = self.get_mut(domid) {
            t.note_write(target_kib, now, epoch);
        }
    }
}

/// Puts a new target in force; returns whether it changed. A request the other way starts a
/// new judgement of the driver.
#[inline(always)]
fn retarget(t: &mut Track, target_kib: Kib) -> bool {
    // The usual case, tested first: the target is the one already in force.
    if target_kib == t.target_kib {
        return false;
    }
    let dir = if target_kib > t.target_kib { 1 } else { -1 };
    if dir != t.last_write_dir {
        t.has &= !(Has::SHORT | Has::STALLED);
        t.moved_since_request = false;
    }
    t.last_write_dir = dir;
    t.target_kib = target_kib;
    true
}

/// The factor by which a score leaks away over an interval, remembered for the last interval
/// asked about: every domain of a look was last seen at the same time, so a look computes one
/// exponential rather than one per domain.
#[derive(Default)]
struct Decay {
    last: Option<(f64, f64, f64)>,
}

impl Decay {
    /// `exp(-dt / leak_s)`.
    fn factor(&mut self, dt: f64, leak_s: f64) -> f64 {
        match self.last {
            Some((d, l, f)) if d.to_bits() == dt.to_bits() && l.to_bits() == leak_s.to_bits() => f,
            _ => {
                let f = (-dt / leak_s).exp();
                self.last = Some((dt, leak_s, f));
                f
            }
        }
    }
}

/// What a look settles once for all its domains: its time, the judge, the leak factor and
/// what a score of zero comes to. `NUMBER`: the judge's minimum rate is known to be a number
/// (not NaN).
struct Pass<'a, const NUMBER: bool> {
    now: f64,
    judge: &'a Judge,
    /// The judge's minimum rate, at hand.
    min_rate: f64,
    decay: Decay,
    /// Whether the flagging rule clears the flag and the concern of a domain whose score is
    /// zero (the usual domain, under any judge whose thresholds are above zero).
    zero_clears: bool,
}

impl<'a, const NUMBER: bool> Pass<'a, NUMBER> {
    fn new(now: f64, judge: &'a Judge) -> Self {
        // The rule of `step`, applied to 0.
        let flags_at_zero = 0.0 >= judge.flag_at_s;
        let zero_clears = !flags_at_zero && 0.0 <= judge.clear_at_s;
        Pass {
            now,
            judge,
            min_rate: judge.min_rate_kib_per_s,
            decay: Decay::default(),
            zero_clears,
        }
    }
}

impl<const NUMBER: bool> Pass<'_, NUMBER> {
    /// `rate.max(min_rate_kib_per_s)`, as `f64::max` gives it (a NaN gives the other), in
    /// one comparison when the minimum rate is known to be a number (`NUMBER`).
    /// Of two zeros it may give either: only a rate above zero is ever divided by.
    #[inline(always)]
    fn max_with_min_rate(&self, rate: f64) -> f64 {
        let min = self.min_rate;
        if !NUMBER {
            rate.max(min)
        } else if rate > min {
            rate
        } else {
            min
        }
    }
}

/// `a.min(b)` for a `b` that is a number (not NaN): a NaN `a` gives `b`, as `f64::min`
/// does. Of two zeros it may give either, which no caller tells apart. A comparison, where
/// `f64::min` is several instructions to handle a NaN `b`.
#[inline(always)]
fn min_of_number(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else {
        b
    }
}

/// Learns from one look at `d`, last seen as `t` says. Inlined into the tracker's walk: a
/// call (registers saved and restored around it) was a tenth of a domain's update.
#[inline(always)]
fn step<const N: bool>(t: &mut Track, d: &Domain, pass: &mut Pass<N>) {
    let dt = pass.now - t.last_time;
    if dt <= 0.0 {
        retarget(t, d.target_kib);
        return;
    }
    // Most domains have no limit: one test of the flags, and a copy of the update that does
    // not ask again.
    if t.has & Has::LIMITS != 0 {
        step_with_limits(t, d, pass, dt);
    } else {
        step_by::<false, N>(t, d, pass, dt, 0.0);
    }
}

/// [`step`] for a domain with a limit. Out of the walk: few domains have one.
#[cold]
#[inline(never)]
fn step_with_limits<const N: bool>(t: &mut Track, d: &Domain, pass: &mut Pass<N>, dt: f64) {
    // A limit the driver has now moved past was not a limit: the stall counts against it.
    let missed_s = limits_passed(t, d.memory_actual_kib, pass.now, pass.judge.limit_slack_kib);
    step_by::<true, N>(t, d, pass, dt, missed_s);
}

/// The rest of [`step`], `dt` after the last look, with `missed_s` seconds of work missed so
/// far, for a domain that may have limits (`LIMITS`) or has none.
#[inline(always)]
fn step_by<const LIMITS: bool, const N: bool>(
    t: &mut Track,
    d: &Domain,
    pass: &mut Pass<N>,
    dt: f64,
    missed_s: f64,
) {
    // The request in force during the interval: from last actual toward the target we set,
    // but not past a limit the driver has shown.
    let shortfall_s = match way_asked(d.inaccuracy_kib, t.last_actual_kib, t.target_kib) {
        Some(Direction::Down) => asked::<true, LIMITS, N>(t, d, dt, pass),
        Some(Direction::Up) => asked::<false, LIMITS, N>(t, d, dt, pass),
        None => {
            t.has &= !(Has::SHORT | Has::STALLED);
            None
        }
    };
    if !LIMITS && shortfall_s.is_none() && t.score_s == 0.0 && pass.zero_clears {
        // The usual domain: nothing missed (no limit passed, no shortfall) and no score, so
        // the rule of `score_and_finish` gives a zero score (`0 + 0`), cleared.
        t.score_s = 0.0;
        t.uncooperative = false;
        t.concern = None;
        finish(t, d, pass.now);
        return;
    }
    let missed_s = match shortfall_s {
        None => missed_s,
        Some(s) => missed_s + s,
    };
    score_and_finish(t, d, pass, dt, missed_s);
}

/// The last of [`step`]: takes in the look of `d` at `now`.
#[inline(always)]
fn finish(t: &mut Track, d: &Domain, now: f64) {
    t.last_actual_kib = d.memory_actual_kib;
    t.last_time = now;
    // Someone else (another toolstack component, an administrator) may have set the target.
    retarget(t, d.target_kib);
}

/// The end of [`step`]: scores `missed_s` seconds of missed work, flags, and takes in the
/// look.
#[inline(always)]
fn score_and_finish<const N: bool>(
    t: &mut Track,
    d: &Domain,
    pass: &mut Pass<N>,
    dt: f64,
    missed_s: f64,
) {
    let (now, judge) = (pass.now, pass.judge);
    // A zero score (a driver that has done its work) leaks nothing: `0 × factor + missed`
    // is `missed` to the bit (for -0 too), without asking for the factor.
    let score = if t.score_s == 0.0 {
        missed_s
    } else {
        t.score_s * pass.decay.factor(dt, judge.leak_s) + missed_s
    };
    t.score_s = score;
    if score == 0.0 && pass.zero_clears {
        // The usual case: the rule below, settled for zero once a look.
        t.uncooperative = false;
        t.concern = None;
    } else if score >= judge.flag_at_s {
        t.uncooperative = true;
    } else if score <= judge.clear_at_s {
        t.uncooperative = false;
        // Nothing worth reporting is left once the score has all but leaked away.
        if score < 0.1 {
            t.concern = None;
        }
    }
    finish(t, d, now);
}

/// The part of [`step`] for a domain that was asked to move during the interval, down
/// (`DOWN`) or up: rate, shortfall, stall, and (down only) the seconds of work it missed,
/// if any. One copy for each direction, so that neither asks which it is, and for a domain
/// that may have limits (`LIMITS`) or has none.
#[inline(always)]
fn asked<const DOWN: bool, const LIMITS: bool, const N: bool>(
    t: &mut Track,
    d: &Domain,
    dt: f64,
    pass: &Pass<N>,
) -> Option<f64> {
    let (actual, inaccuracy) = (d.memory_actual_kib, d.inaccuracy_kib);
    let (last, target) = (t.last_actual_kib, t.target_kib);
    // Kept in a register for the whole update, and stored once.
    let mut has = t.has;
    let (toward, distance) = if DOWN {
        let goal = if LIMITS && has & Has::FLOOR != 0 {
            target.max(t.floor.at_kib)
        } else {
            target
        };
        (last - actual, last - goal)
    } else {
        let goal = if LIMITS && has & Has::CEILING != 0 {
            target.min(t.ceiling.at_kib)
        } else {
            target
        };
        (actual - last, goal - last)
    };
    let toward = toward.max(0);
    let toward_f = toward as f64;
    // A driver within twice its inaccuracy of the goal has nothing left to do: it may stop
    // its inaccuracy short, and a real host rounds to whole pages on top.
    let remaining = (distance - 2 * inaccuracy).max(0);
    let (bit, rate) = if DOWN {
        (Has::RATE_DOWN, &mut t.rate_down)
    } else {
        (Has::RATE_UP, &mut t.rate_up)
    };
    let measured = if toward > 0 {
        let sample = toward_f / dt;
        t.moved_since_request = true;
        // Whether it is still asked the same way (see `way_asked`).
        let still_asked = if DOWN {
            actual - target > inaccuracy
        } else {
            target - actual > inaccuracy
        };
        // Grown to its target as far as the squeezer judges it (`cautious` then counts the
        // request met): within twice the inaccuracy, as a real host rounds to whole pages.
        // By the inaccuracy alone, a driver the look catches just short would be asked for
        // probe after probe and never be believed.
        if !DOWN && target - actual <= 2 * inaccuracy {
            t.grew = true;
        }
        let r = if has & bit == 0 {
            sample
        } else if still_asked {
            // The driver worked the whole interval: a full-speed sample.
            *rate + RATE_SMOOTHING * (sample - *rate)
        } else {
            // It finished early, so it is at least this fast.
            rate.max(sample)
        };
        *rate = r;
        has |= bit;
        r
    } else if has & bit != 0 {
        *rate
    } else {
        0.0
    };

    // Falling short: less than half of what the minimum rate would have done in the time.
    let remaining_f = remaining as f64;
    let minimum = min_of_number(pass.min_rate * dt, remaining_f);
    if minimum > 0.0 && toward_f * 2.0 < minimum {
        if has & Has::SHORT == 0 {
            t.short_since = t.last_time;
            has |= Has::SHORT;
        }
    } else {
        has &= !Has::SHORT;
    }
    if toward == 0 && remaining > 0 {
        if has & Has::STALLED == 0 {
            t.stalled_since = t.last_time;
            has |= Has::STALLED;
        }
    } else {
        has &= !Has::STALLED;
    }
    t.has = has;

    // Score what was missed against the driver's own speed. Growth it could not manage is
    // not held against it: a guest that cannot take memory hurts nobody.
    if !DOWN {
        return None;
    }
    let reference = pass.max_with_min_rate(measured);
    let expected = min_of_number(reference * dt, remaining_f);
    // `(expected - toward).max(0.0)`, tested for being above zero: a NaN is not.
    let shortfall = expected - toward_f;
    if shortfall > 0.0 {
        t.concern = Some(if toward > 0 {
            Concern::TooSlow
        } else {
            Concern::NotMoving
        });
        return Some(shortfall / reference);
    }
    None
}

/// [`direction_of_actual`](crate::model::direction_of_actual) for a domain of a [`Host`],
/// whose inaccuracy is not negative (the host checks it): two comparisons, where the general
/// function takes an absolute value first.
#[inline(always)]
fn way_asked(inaccuracy_kib: Kib, memory_actual_kib: Kib, target_kib: Kib) -> Option<Direction> {
    let delta = memory_actual_kib - target_kib;
    if delta > inaccuracy_kib {
        Some(Direction::Down)
    } else if -delta > inaccuracy_kib {
        Some(Direction::Up)
    } else {
        None
    }
}

/// Forgets the limits of `t` that the driver, now at `actual`, has moved past by more than
/// `slack`; returns the seconds of work missed by stalling at a floor that was none (0 if
/// it kept to its floor). Out of the walk: few domains have a limit.
#[cold]
#[inline(never)]
fn limits_passed(t: &mut Track, actual: Kib, now: f64, slack: Kib) -> f64 {
    let mut missed_s = 0.0;
    if let Some(f) = t.floor().filter(|f| actual < f.at_kib - slack) {
        missed_s += now - f.since;
        t.concern = Some(Concern::StalledAndResumed);
        t.has &= !Has::FLOOR;
    }
    if t.ceiling().is_some_and(|c| actual > c.at_kib + slack) {
        t.has &= !Has::CEILING;
    }
    if t.pinned()
        .is_some_and(|p| (actual - p.at_kib).abs() > slack)
    {
        t.has &= !Has::PINNED;
    }
    missed_s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge() -> Judge {
        Judge::default()
    }

    fn host(actual: Kib, target: Kib) -> Host {
        Host::new(
            vec![Domain::new(1, true, 0, target, 1 << 30, actual, 1 << 30, 4)],
            0,
        )
        .unwrap()
    }

    #[test]
    fn a_concern_is_spelt_the_same_in_the_diagnostics_and_by_name() {
        for c in [
            Concern::TooSlow,
            Concern::NotMoving,
            Concern::StalledAndResumed,
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
        }
        assert_eq!(Concern::StalledAndResumed.name(), "stalled-and-resumed");
    }

    #[test]
    fn the_way_a_domain_is_asked_is_the_models_direction() {
        use crate::model::direction_of_actual;
        // Inaccuracies 0, 1 and 4 KiB, targets around an actual of 1000 KiB: on either edge
        // of the inaccuracy, and far off.
        for inaccuracy in [0, 1, 4] {
            for target in [0, 990, 995, 996, 999, 1000, 1001, 1004, 1005, 1010, 1 << 40] {
                assert_eq!(
                    way_asked(inaccuracy, 1000, target),
                    direction_of_actual(inaccuracy, 1000, target),
                    "inaccuracy {inaccuracy}, target {target}"
                );
            }
        }
        assert_eq!(way_asked(4, 1005, 1000), Some(Direction::Down));
        assert_eq!(way_asked(4, 995, 1000), Some(Direction::Up));
        assert_eq!(way_asked(4, 1004, 1000), None);
    }

    /// Guests `domids`, each holding `actual` KiB with a target of 5000 KiB.
    fn guests(domids: &[DomId], actual: Kib) -> Host {
        let ds = domids
            .iter()
            .map(|&id| Domain::new(id, true, 0, 5_000, 1 << 30, actual, 1 << 30, 4))
            .collect();
        Host::new(ds, 0).unwrap()
    }

    #[test]
    fn domains_that_come_and_go_between_looks_keep_the_others_rates() {
        let mut tr = Tracker::default();
        tr.observe(&guests(&[1, 2, 4], 10_000), 0.0, &judge());
        // Domain 3 arrives and domain 4 leaves; 1 and 2 (walked before the change) shrink by
        // 1000 KiB in 1 s.
        let mut seen = Vec::new();
        tr.observe_then(&guests(&[1, 2, 3], 9_000), 1.0, &judge(), |i, d, _| {
            seen.push((i, d.domid))
        });
        assert_eq!(seen, [(0, 1), (1, 2), (2, 3)]);
        assert_eq!(tr.get(1).unwrap().rate_down(), Some(1000.0));
        assert_eq!(tr.get(2).unwrap().rate_down(), Some(1000.0));
        // New: first seen now, nothing measured yet.
        assert_eq!(tr.get(3).unwrap().last_time, 1.0);
        assert_eq!(tr.get(3).unwrap().rate_down(), None);
        assert!(tr.get(4).is_none());
        // Domain 1 leaves: 2 and 3 are measured again (500 KiB in 1 s).
        tr.observe(&guests(&[2, 3], 8_500), 2.0, &judge());
        assert!(tr.get(1).is_none());
        // 2: smoothed, 1000 + 0.5 × (500 − 1000); 3: its first sample.
        assert_eq!(tr.get(2).unwrap().rate_down(), Some(750.0));
        assert_eq!(tr.get(3).unwrap().rate_down(), Some(500.0));
    }

    #[test]
    fn the_update_for_a_minimum_rate_that_is_a_number_is_the_general_one() {
        let judge = judge();
        // Drivers at 10 000 KiB asked down to 5 000 or up to 15 000, moving by 0 to 1000 KiB
        // in half a second or a second, with no rate yet, a rate equal to the minimum
        // (256 KiB/s) or above it, at a score of 0 or 2 s, with or without a floor and a
        // ceiling on the way.
        let mut cases = 0;
        for target in [5_000, 15_000] {
            for moved in [0, 1, 100, 128, 255, 256, 1_000] {
                for dt in [0.5, 1.0] {
                    for rate in [None, Some(256.0), Some(1_000.0)] {
                        for score in [0.0, 2.0] {
                            for limits in [false, true] {
                                let before =
                                    Domain::new(1, true, 0, target, 1 << 30, 10_000, 1 << 30, 4);
                                let mut t = Track::new(&before, 0.0);
                                t.set_rate_down(rate);
                                t.set_rate_up(rate);
                                t.score_s = score;
                                if limits {
                                    let at = |at_kib| Some(Limit { at_kib, since: 0.0 });
                                    t.set_floor(at(9_500));
                                    t.set_ceiling(at(10_500));
                                }
                                let toward = if target < 10_000 { -moved } else { moved };
                                let now = Domain {
                                    memory_actual_kib: 10_000 + toward,
                                    ..before
                                };
                                let (mut fast, mut general) = (t.clone(), t);
                                step(&mut fast, &now, &mut Pass::<true>::new(dt, &judge));
                                step(&mut general, &now, &mut Pass::<false>::new(dt, &judge));
                                // Debug shows every float to the bit (-0 too).
                                assert_eq!(format!("{fast:?}"), format!("{general:?}"));
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 7 * 2 * 3 * 2 * 2);
    }

    #[test]
    fn rates_are_measured_in_the_direction_of_travel() {
        let mut tr = Tracker::default();
        tr.observe(&host(10_000, 10_000), 0.0, &judge());
        tr.note_write(1, 5_000, 0.0, 0);
        tr.observe(&host(9_000, 5_000), 1.0, &judge());
        assert_eq!(tr.get(1).unwrap().rate_down(), Some(1000.0));
        tr.observe(&host(7_000, 5_000), 2.0, &judge());
        // Smoothed: 1000 + 0.5 × (2000 − 1000).
        assert_eq!(tr.get(1).unwrap().rate_down(), Some(1500.0));
        assert_eq!(tr.get(1).unwrap().rate_up(), None);
        assert_eq!(tr.get(1).unwrap().short_since(), None);
    }

    #[test]
    fn a_driver_slower_than_the_minimum_rate_falls_short() {
        let mut tr = Tracker::default();
        tr.observe(&host(10_000, 10_000), 0.0, &judge());
        tr.note_write(1, 5_000, 0.0, 0);
        // 4 KiB in 1 s, far below half of 256 KiB/s.
        tr.observe(&host(9_996, 5_000), 1.0, &judge());
        assert_eq!(tr.get(1).unwrap().short_since(), Some(0.0));
        // Still short a second later: the start of the shortfall is kept.
        tr.observe(&host(9_996, 5_000), 2.0, &judge());
        assert_eq!(tr.get(1).unwrap().short_since(), Some(0.0));
        // Back to speed: cleared.
        tr.observe(&host(9_000, 5_000), 3.0, &judge());
        assert_eq!(tr.get(1).unwrap().short_since(), None);
    }

    #[test]
    fn a_score_leaks_away_and_a_zero_score_stays_zero() {
        let mut tr = Tracker::default();
        tr.observe(&host(10_000, 10_000), 0.0, &judge());
        // Nothing asked: no score.
        tr.observe(&host(10_000, 10_000), 1.0, &judge());
        assert_eq!(tr.get(1).unwrap().score_s.to_bits(), 0.0f64.to_bits());
        // Asked for 5000 KiB at 0 s, not moved by 2 s: 2 s of work missed at the minimum
        // rate of 256 KiB/s (512 KiB, well within what remains).
        tr.note_write(1, 5_000, 1.0, 0);
        tr.observe(&host(10_000, 5_000), 3.0, &judge());
        assert_eq!(tr.get(1).unwrap().score_s, 2.0);
        // Back to its target a leak time (60 s) later, all asked for done: 2 × e⁻¹ left.
        tr.observe(&host(5_000, 5_000), 63.0, &judge());
        let left = tr.get(1).unwrap().score_s;
        assert!((left - 2.0 * (-1.0f64).exp()).abs() < 1e-12, "{left}");
    }

    #[test]
    fn a_driver_near_its_target_is_not_asked_for_more_than_remains() {
        let mut tr = Tracker::default();
        tr.observe(&host(5_100, 5_100), 0.0, &judge());
        tr.note_write(1, 5_000, 0.0, 0);
        // 96 KiB remained beyond the inaccuracy; moving 60 is more than half of it.
        tr.observe(&host(5_040, 5_000), 1.0, &judge());
        assert_eq!(tr.get(1).unwrap().short_since(), None);
    }
}
