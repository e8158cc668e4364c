//! The adaptive squeezer: squeezed's goals without its known flaws.
//!
//! It keeps what it learns about every domain from one call to the next ([`tracker`]), and uses
//! it in three ways:
//!
//! - **Rate-aware freeing.** Each balloon driver's speed is measured, and a request to free X KiB
//!   is divided so that every domain finishes at about the same time
//!   ([`plan::finish_time`]). squeezed divides by dynamic range, so the slowest driver sets the
//!   pace.
//! - **Progress judged by rate; deadlines on stalls, not on the clock.** A driver moving slower
//!   than a minimum rate while it has work to do is, after a grace period, taken to have shown
//!   a limit (a floor or a ceiling). Its share goes to the others; if they cannot cover it the
//!   request fails at once naming it. A request whose guests keep making progress is waited
//!   for however long their measured rates take; one whose freed memory reaches no new high
//!   for a stall time fails, naming the guests it counted on that fell short. squeezed counts
//!   a driver that frees one page every few seconds as making progress, so such a request never
//!   ends. A caller may add a deadline of its own.
//! - **No oscillation.** A limit, once shown, is remembered across calls, so periodic balancing
//!   does not ask the same guest again and again and swing memory between the others. Targets are
//!   only written when they move by more than a deadband, and a domain's target does not reverse
//!   direction within a dwell time unless an outside input (the set of domains, their ranges, a
//!   new reservation, one deleted) changed. A limited domain keeps a small standing request (a passive probe)
//!   so that when the limit lifts the squeezer notices and forgets it.
//!
//! The invariants of the classic squeezer hold: targets stay inside each domain's dynamic
//! range, and no target is raised while memory is being freed. An inverted range (dynamic-min
//! above dynamic-max) is read as the single point dynamic-min until it is sane again: squeezed
//! caps a freeing target at dynamic-max there, below what the guest must have.

pub mod plan;
pub mod tracker;

use log::{debug, info};

use crate::driver::{is_balanced, range_request, settings, Clock, Io, RangeRequest, Stillness};
use crate::error::{Error, Result};
use crate::model::{
    direction_of_actual, has_hit_target, kib, Action, Direction, DomId, Domain, Host, Kib,
};
use crate::policy;
use plan::Contributor;
use tracker::{Concern, Judge, Limit, Track, Tracker};

/// Tunables of the adaptive squeezer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveOptions {
    /// A deadline for every freeing request, in seconds from its start; infinite (the
    /// default) for none. A request is not limited by the clock but by progress (see
    /// `stall_s`): honest slow guests are waited for. With a deadline, a request that the
    /// measured rates cannot finish in time fails as soon as that is predicted.
    pub deadline_s: f64,
    /// Longest a freeing request may go without the memory it has freed reaching a new high,
    /// in seconds, before it fails naming the guests it counted on that fell short. Guests
    /// that stall or trickle are dropped from the plan long before (after `grace_s`), so this
    /// only ends a request whose memory does not come free although every driver seems to
    /// move.
    pub stall_s: f64,
    /// Longest a balance waits for the drivers to reach the targets it wrote, in seconds.
    /// Stopping early is harmless: the drivers keep moving on their own and the next balance
    /// carries on, and the host lock is not held for as long as a slow guest takes.
    pub balance_wait_s: f64,
    /// Seconds between iterations.
    pub poll_s: f64,
    /// While a guest shrinks in a balance, the memory it has released goes to the growing
    /// guests within this many rounds of coming free: seen free (and guaranteed) in one
    /// round, it is handed on in that round or one of the `hand_on_rounds - 1` that follow,
    /// at once if it covers all the growth still to come. 1 hands it on every round; the
    /// default, 2, every other round behind a slow driver, which halves the target writes
    /// for one round's worth more idle memory. At least 1.
    pub hand_on_rounds: u32,
    /// Slowest acceptable balloon speed for a driver with work to do, KiB/s.
    pub min_rate_kib_per_s: f64,
    /// How long a driver may fall short of the minimum rate before it is taken to be at a limit.
    pub grace_s: f64,
    /// Speed assumed for a driver before its own has been measured, KiB/s.
    pub prior_rate_kib_per_s: f64,
    /// Largest deadband, KiB: target changes smaller than a domain's deadband are not written.
    /// A domain's deadband is the smaller of this and 1/64 of its dynamic range, but at least
    /// twice its balloon inaccuracy.
    pub deadband_kib: Kib,
    /// Seconds during which a domain's target may not reverse direction without an outside
    /// change.
    pub dwell_s: f64,
    /// Size of the standing request left on a limited domain, KiB.
    pub probe_kib: Kib,
    /// Time constant with which a domain's non-cooperation score leaks away, seconds.
    pub score_leak_s: f64,
    /// Non-cooperation score (seconds of work not done) at which a domain is flagged.
    pub flag_at_s: f64,
    /// Score at which the flag is cleared again.
    pub clear_at_s: f64,
}

impl Default for AdaptiveOptions {
    fn default() -> Self {
        AdaptiveOptions {
            deadline_s: f64::INFINITY,
            stall_s: 30.0,
            balance_wait_s: 120.0,
            poll_s: 1.0,
            hand_on_rounds: 2,
            min_rate_kib_per_s: 256.0,
            grace_s: 5.0,
            prior_rate_kib_per_s: 32.0 * 1024.0,
            deadband_kib: 1024,
            dwell_s: 60.0,
            probe_kib: 256,
            score_leak_s: 60.0,
            flag_at_s: 10.0,
            clear_at_s: 3.0,
        }
    }
}

impl AdaptiveOptions {
    fn judge(&self) -> Judge {
        Judge {
            min_rate_kib_per_s: self.min_rate_kib_per_s,
            limit_slack_kib: self.probe_kib / 2,
            leak_s: self.score_leak_s,
            flag_at_s: self.flag_at_s,
            clear_at_s: self.clear_at_s,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.deadline_s.is_nan() || self.deadline_s <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "adaptive deadline must be a positive number of seconds (infinite for none), \
                 not {}",
                self.deadline_s
            )));
        }
        let positive = [
            ("stall time", self.stall_s),
            ("balance wait", self.balance_wait_s),
            ("poll interval", self.poll_s),
            ("minimum rate", self.min_rate_kib_per_s),
            ("grace period", self.grace_s),
            ("prior rate", self.prior_rate_kib_per_s),
            ("score leak", self.score_leak_s),
            ("flagging score", self.flag_at_s),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "adaptive {name} must be a positive number of seconds or KiB/s, not {v}"
                )));
            }
        }
        if !(self.dwell_s.is_finite() && self.dwell_s >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "adaptive dwell time must be zero or more seconds, not {}",
                self.dwell_s
            )));
        }
        if !(self.clear_at_s.is_finite() && (0.0..self.flag_at_s).contains(&self.clear_at_s)) {
            return Err(Error::InvalidArgument(format!(
                "adaptive clearing score {} must be at least 0 and below the flagging score {}",
                self.clear_at_s, self.flag_at_s
            )));
        }
        kib::check_size("adaptive deadband", self.deadband_kib)?;
        kib::check_size("adaptive probe size", self.probe_kib)?;
        if self.hand_on_rounds == 0 {
            return Err(Error::InvalidArgument(
                "adaptive hand-on rounds must be at least 1 (1 hands freed memory on every \
                 round)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The adaptive squeezer and everything it has learnt about the host's domains.
#[derive(Debug, Default)]
pub struct Adaptive {
    options: AdaptiveOptions,
    tracker: Tracker,
    /// Bumped whenever an outside input changes; reversals are allowed across epochs.
    epoch: u64,
    fingerprint: u64,
    /// Since when memory a shrinking guest released has been waiting to be handed on, if it
    /// is (kept across balances: one may end while a slow guest still shrinks). A cell, so
    /// that asking whether to balance ([`is_unbalanced`](Adaptive::is_unbalanced), on a copy)
    /// starts the wait too: a background balancer that only balances when asked to would
    /// otherwise wait a round longer.
    held_since: std::cell::Cell<Option<f64>>,
    /// What freed memory has been handed on since the last summary: each write is logged at
    /// debug level, and one info line sums them up when a balance ends.
    handed_on: HandOnTally,
    /// Working space of the freeing round, kept from round to round (see [`Scratch`]).
    scratch: Scratch,
}

impl Clone for Adaptive {
    fn clone(&self) -> Self {
        Adaptive {
            options: self.options,
            tracker: self.tracker.clone(),
            epoch: self.epoch,
            fingerprint: self.fingerprint,
            held_since: self.held_since.clone(),
            handed_on: self.handed_on.clone(),
            scratch: Scratch::default(),
        }
    }

    /// Becomes a copy of `source`, keeping its own working space: what a caller that
    /// restores a saved state before each round (a benchmark) needs for the rounds to reuse
    /// their memory as a long-lived squeezer's do.
    fn clone_from(&mut self, source: &Self) {
        let scratch = std::mem::take(&mut self.scratch);
        *self = source.clone();
        self.scratch = scratch;
    }
}

/// The per-domain vectors a freeing round builds, kept in the squeezer and cleared at the
/// start of each round rather than allocated afresh: on a host of thousands each is tens or
/// hundreds of KiB, and fresh memory of that size costs a page fault per page. Nothing in it
/// outlives a round, so a copy of the squeezer starts with none.
#[derive(Debug, Default)]
struct Scratch {
    /// What each domain counted on can give, and how fast.
    contributors: Vec<Contributor>,
    /// Where each contributor is in the host's domains.
    who: Vec<usize>,
    /// [`plan::finish_time_in`]'s working space.
    finish: plan::Workspace,
    /// When the look that starts a freeing round has already filled `contributors` and `who`
    /// in its walk: what the domains could still take from the host and the capacities' sum.
    collected: Option<(Kib, i128)>,
}

impl Adaptive {
    /// An adaptive squeezer with no history.
    pub fn new(options: AdaptiveOptions) -> Result<Self> {
        options.validate()?;
        Ok(Adaptive {
            options,
            ..Adaptive::default()
        })
    }

    /// The options in force.
    pub fn options(&self) -> &AdaptiveOptions {
        &self.options
    }

    /// What has been learnt about `domid`.
    pub fn track(&self, domid: DomId) -> Option<&tracker::Track> {
        self.tracker.get(domid)
    }

    /// How `domid`'s balloon driver has been cooperating, as far as this squeezer has seen.
    pub fn cooperation(&self, domid: DomId) -> Option<Cooperation> {
        self.tracker.get(domid).map(cooperation_of)
    }

    /// The judgement of every domain seen in the last look, in domid order: what the caller
    /// publishes (the host model's `memory/uncooperative`) after each operation, whatever way
    /// it ended.
    pub fn judgements(&self) -> Vec<(DomId, Cooperation)> {
        self.tracker
            .iter()
            .map(|(domid, t)| (domid, cooperation_of(t)))
            .collect()
    }

    /// Takes what another process learnt about `domid` (see [`crate::learnt`]), at `now` by
    /// this squeezer's clock.
    pub fn adopt(&mut self, domid: DomId, learnt: tracker::Learnt, now: f64) {
        self.tracker.adopt(domid, learnt, now);
    }

    /// What has been learnt about every domain seen, in domid order, for other processes.
    pub fn learnt(&self) -> Vec<(DomId, tracker::Learnt)> {
        self.tracker.learnt()
    }

    /// Forgets what was learnt about `domid`, whose domain was destroyed and whose domid a
    /// new domain now has (a snapshot cannot tell them apart: the caller learns it from the
    /// store, see [`crate::learnt::Sync`]). A new domain is an outside change, so earlier
    /// decisions about the others may be reversed at once.
    pub fn forget(&mut self, domid: DomId) {
        self.tracker.forget(domid);
        self.epoch += 1;
    }

    /// Takes one look at the host and learns from it without asking anything of the domains
    /// (except taking back a growth request a driver cannot follow): what a background monitor
    /// calls between requests.
    pub fn watch(&mut self, io: &mut dyn Io) -> Result<()> {
        let mut clock = Clock::default();
        self.observe(io, &mut clock).map(|_| ())
    }

    /// Frees memory until `required_kib` is free and guaranteed to stay free, or, where that
    /// cannot be reached, until `success` holds for what could be freed.
    pub fn change_host_free_memory(
        &mut self,
        io: &mut dyn Io,
        required_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<()> {
        settings(io)?;
        let op = self.begin(Goal::Free { required_kib })?;
        self.drive(io, op, success)
    }

    /// Starts an operation toward `goal`, for a caller that drives it one
    /// [`step`](Adaptive::step) at a time (the freeing and balancing calls do exactly that).
    pub fn begin(&mut self, goal: Goal) -> Result<Operation> {
        match goal {
            Goal::Free { required_kib } => {
                kib::check_size("required free memory", required_kib)?;
                // A request is an outside input: it may legitimately reverse earlier decisions.
                self.epoch += 1;
            }
            Goal::Balance { slush_kib } => {
                kib::check_size("target host free memory", slush_kib)?;
            }
        }
        Ok(Operation {
            goal,
            phase: OperationPhase::NotStarted,
            stillness: Stillness::default(),
        })
    }

    /// One round of `op` on `host` as seen at `now`: learns from the look, then decides. No
    /// I/O: the caller writes the returned targets (each with whatever maxmem it needs, as
    /// [`Io::execute_action`] does), and, while the outcome is [`Outcome::Continue`], waits
    /// [`AdaptiveOptions::poll_s`] and steps again with a fresh look. `success` judges host
    /// free memory as in [`change_host_free_memory`](Adaptive::change_host_free_memory). The
    /// judgement of every domain is [`judgements`](Adaptive::judgements).
    pub fn step(
        &mut self,
        op: &mut Operation,
        host: &Host,
        now: f64,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<Round> {
        if !now.is_finite() || now < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "now must be finite and not negative, not {now}"
            )));
        }
        // A round that may free memory has the look gather what each domain can give, in
        // the look's own walk over the domains.
        let freeing = matches!(op.goal, Goal::Free { .. })
            && matches!(
                op.phase,
                OperationPhase::NotStarted | OperationPhase::Freeing(_)
            );
        let mut writes = self.look_in(host, now, freeing);
        if let Err(e) = op.stillness.look(host, now) {
            return Ok(Round::ending(writes, Outcome::Failed(e)));
        }
        if let OperationPhase::NotStarted = op.phase {
            op.phase = match op.goal {
                Goal::Free { required_kib } => {
                    let guaranteed = guaranteed_free(host);
                    if host.free_mem_kib >= required_kib && guaranteed >= required_kib {
                        if success(guaranteed) {
                            return Ok(Round::ending(writes, Outcome::Done));
                        }
                        // More is free than asked for and the condition wants less: hand it
                        // out.
                        OperationPhase::Allocating { start: now }
                    } else {
                        OperationPhase::Freeing(FreeState::new(host, now))
                    }
                }
                Goal::Balance { .. } => OperationPhase::Allocating { start: now },
            };
        }
        let goal_kib = match op.goal {
            Goal::Free { required_kib } => required_kib,
            Goal::Balance { slush_kib } => slush_kib,
        };
        let round = match &mut op.phase {
            OperationPhase::Freeing(state) => {
                self.free_round(state, host, now, goal_kib, success)?
            }
            OperationPhase::Allocating { start } => {
                // Freed memory is handed on only in a round that sets no freeing target, the
                // look's withdrawals included.
                let hand_on = writes.is_empty();
                self.allocate_round(*start, host, now, goal_kib, success, hand_on)?
            }
            OperationPhase::NotStarted => unreachable!("started above"),
        };
        // Most rounds' look writes nothing: then the round's writes are the plan as they are.
        if writes.is_empty() {
            writes = round.writes;
        } else {
            writes.extend(round.writes);
        }
        Ok(Round::ending(writes, round.outcome))
    }

    /// Drives `op` to its end through the one loop of [`crate::engine::run`].
    fn drive(
        &mut self,
        io: &mut dyn Io,
        op: Operation,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<()> {
        crate::engine::run(
            io,
            &mut crate::engine::AdaptiveRound::new(self, op),
            success,
        )
    }

    /// Frees memory for a new domain of `min_kib..=max_kib` and returns how much it may have,
    /// sized by the proportional policy as squeezed does.
    pub fn free_memory_range(
        &mut self,
        io: &mut dyn Io,
        min_kib: Kib,
        max_kib: Kib,
    ) -> Result<Kib> {
        let RangeRequest {
            slush,
            required,
            enough,
        } = range_request(io, min_kib, max_kib)?;
        self.change_host_free_memory(io, required, &mut |free| free >= enough)?;
        let host = io.make_host()?;
        Ok((guaranteed_free(&host) - slush).min(max_kib).max(min_kib))
    }

    /// Makes `deadline_s` (seconds, if any) the deadline of the coming freeing requests when
    /// it is sooner than the one in force, and returns the one in force before, for
    /// [`restore_deadline`](Adaptive::restore_deadline).
    pub fn tighten_deadline(&mut self, deadline_s: Option<f64>) -> Result<f64> {
        let before = self.options.deadline_s;
        if let Some(d) = deadline_s {
            if d.is_nan() || d <= 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "a deadline must be a positive number of seconds, not {d}"
                )));
            }
            self.options.deadline_s = before.min(d);
        }
        Ok(before)
    }

    /// Puts back a deadline [`tighten_deadline`](Adaptive::tighten_deadline) returned.
    pub fn restore_deadline(&mut self, deadline_s: f64) {
        if deadline_s.is_nan() || deadline_s <= 0.0 {
            return;
        }
        self.options.deadline_s = deadline_s;
    }

    /// Whether a balance would write a target that differs from the one in force right now:
    /// one balancing round on a copy of this squeezer (nothing is learnt or written).
    pub fn is_unbalanced(&self, io: &mut dyn Io) -> Result<bool> {
        let (slush, tolerance) = settings(io)?;
        let now = Clock::default().now(io)?;
        let host = io.make_host()?;
        let mut copy = self.clone();
        // The copy decides nothing: it sums up nothing either.
        copy.handed_on = HandOnTally::muted();
        let mut op = copy.begin(Goal::Balance { slush_kib: slush })?;
        let round = copy.step(&mut op, &host, now, &mut |free| {
            is_balanced(free, slush, tolerance)
        })?;
        // A wait the look started counts; one the look ended by handing the memory on does
        // not end here, where nothing is written: the balance that follows hands it on.
        if self.held_since.get().is_none() {
            self.held_since.set(copy.held_since.get());
        }
        Ok(round
            .writes
            .iter()
            .any(|a| host.domain(a.domid).map(|d| d.target_kib) != Some(a.new_target_kib)))
    }

    /// Tells the squeezer that an input it cannot see in a host snapshot changed (a
    /// reservation deleted or dropped gives memory back to the host): its next decisions may
    /// reverse earlier ones without waiting for the dwell time.
    pub fn outside_change(&mut self) {
        self.epoch += 1;
    }

    /// Hands free memory above the slush to the domains, in proportion to their (learnt)
    /// ranges. Like squeezed's, this reports only invalid settings and platform failures.
    pub fn balance_memory(&mut self, io: &mut dyn Io) -> Result<()> {
        let (slush, tolerance) = settings(io)?;
        let op = self.begin(Goal::Balance { slush_kib: slush })?;
        self.drive(io, op, &mut |free| is_balanced(free, slush, tolerance))
    }

    /// Clock, snapshot, learning: the start of every iteration.
    fn observe(&mut self, io: &mut dyn Io, clock: &mut Clock) -> Result<(Host, f64)> {
        let now = clock.now(io)?;
        let host = io.make_host()?;
        let writes = self.look(&host, now);
        apply(io, &writes)?;
        Ok((host, now))
    }

    /// Learns from `host` as seen at `now` (rates, limits, scores), and returns the targets to
    /// write because of it: growth requests withdrawn from drivers that cannot follow them.
    /// No I/O: the caller applies the writes.
    pub fn look(&mut self, host: &Host, now: f64) -> Vec<Action> {
        self.look_in(host, now, false)
    }

    /// [`look`](Adaptive::look); with `collect`, the same walk also gathers the freeing
    /// round's contributors (see [`Scratch::collected`]).
    fn look_in(&mut self, host: &Host, now: f64, collect: bool) -> Vec<Action> {
        let options = self.options;
        // The few domains with a limit to learn: learnt once the walk has told the input
        // epoch their writes are made in.
        let mut learn = Vec::new();
        let Scratch {
            contributors, who, ..
        } = &mut self.scratch;
        contributors.clear();
        who.clear();
        // The fingerprint is mixed in the tracker's walk, each domain right after its update,
        // and the contributors gathered from the track as just updated.
        let start = LookSums {
            fingerprint: FINGERPRINT_START,
            could_take: 0,
            capacity: 0,
        };
        let walk = LookWalk {
            options: &options,
            now,
            collect,
            learn: &mut learn,
            contributors,
            who,
        };
        let sums = self
            .tracker
            .observe_fold(host, now, &options.judge(), start, walk);
        let fp = sums.fingerprint;
        if fp != self.fingerprint {
            self.fingerprint = fp;
            self.epoch += 1;
        }
        let mut writes = Vec::new();
        // A limit learnt now may take its domain out of the contributors (see
        // `add_contributor`): then the freeing round gathers them itself (a round in which
        // a driver is first seen to stall, not the usual one).
        let gathered = collect && learn.is_empty();
        for (i, stalled) in learn {
            let d = &host.domains()[i];
            if let Some(t) = self.tracker.get_mut_at(i, d.domid) {
                Self::learn_limit_of_stalled(&options, self.epoch, d, t, now, stalled, &mut writes);
            }
        }
        self.scratch.collected = gathered.then_some((sums.could_take, sums.capacity));
        writes
    }

    /// Whether `d` has a limit to learn: it can balloon, and its track `t` (as the look has
    /// just updated it) has stalled or fallen short for the grace period. If so, whether it
    /// stalled.
    #[inline(always)]
    fn limit_to_learn(grace: f64, d: &Domain, t: &Track, now: f64) -> Option<bool> {
        // Every limit needs a stall or a shortfall of a grace period's length: without one
        // (most domains, most looks) there is nothing to learn, which one test of the track's
        // flags tells.
        if !t.may_have_limit_to_learn() {
            return None;
        }
        let stalled = t.stalled_since().is_some_and(|s| now - s >= grace);
        (d.can_balloon && (stalled || t.lagging(now, grace))).then_some(stalled)
    }

    /// Turns `d`'s persistent stall into a remembered limit: a floor when it stopped
    /// shrinking after having moved, a ceiling when it does not grow. `t` is its track as the
    /// look (in input epoch `epoch`) has just updated it, which has stalled (`stalled`) or
    /// fallen short for the grace period (see [`limit_to_learn`](Self::limit_to_learn)).
    #[inline(never)]
    fn learn_limit_of_stalled(
        options: &AdaptiveOptions,
        epoch: u64,
        d: &Domain,
        t: &mut Track,
        now: f64,
        stalled: bool,
        writes: &mut Vec<Action>,
    ) {
        let grace = options.grace_s;
        let probe = options.probe_kib;
        let actual = d.memory_actual_kib;
        let limit = Some(Limit {
            at_kib: actual,
            since: now,
        });
        match direction_of_actual(d.inaccuracy_kib, actual, t.target_kib) {
            Some(Direction::Down)
                if t.floor().is_none()
                    && t.pinned().is_none()
                    && !t.moved_since_request
                    && stalled =>
            {
                debug!(
                    "domain {}: balloon driver has not moved from {actual} KiB toward its \
                     target {} KiB",
                    d.domid, t.target_kib
                );
                t.set_pinned(limit);
            }
            Some(Direction::Down) if t.floor().is_none() && t.moved_since_request && stalled => {
                // The lower target stays: it frees memory if the driver ever moves again,
                // and raising it would be a target increase while memory is wanted.
                debug!(
                    "domain {}: balloon driver stopped at {actual} KiB, above its target {} \
                     KiB; not counting on it to shrink further",
                    d.domid, t.target_kib
                );
                t.set_floor(limit);
            }
            Some(Direction::Up) if t.ceiling().is_none() && t.lagging(now, grace) => {
                // A standing growth request would hold memory nobody can use: take it back,
                // leaving a probe's worth so the squeezer notices if the limit lifts.
                // Never above the target it replaces: a withdrawal must not become a
                // larger request (a driver just short of its target would be asked for
                // more, and in a freeing round that is memory promised twice).
                let retract = (actual + probe)
                    .min(top_of_range(d))
                    .min(d.memory_max_kib.max(actual))
                    .min(d.target_kib);
                debug!(
                    "domain {}: balloon driver stopped at {actual} KiB, below its target {} \
                     KiB; target now {retract} KiB",
                    d.domid, t.target_kib
                );
                t.set_ceiling(limit);
                if retract < d.target_kib {
                    push_write(writes, d, retract, "cannot grow: request withdrawn");
                    t.note_write(retract, now, epoch);
                }
            }
            _ => {}
        }
    }

    /// Puts a target write in the plan `writes`, and into what the tracker expects.
    fn plan_write(
        &mut self,
        writes: &mut Vec<Action>,
        d: &Domain,
        target_kib: Kib,
        now: f64,
        reason: &str,
    ) {
        self.plan_write_logged(log::Level::Info, writes, d, target_kib, now, reason);
    }

    /// [`plan_write`](Self::plan_write), logging the change at `level`: freed memory handed
    /// on goes out up to every round, and is summed up at info level instead (see
    /// [`HandOnTally`]).
    fn plan_write_logged(
        &mut self,
        level: log::Level,
        writes: &mut Vec<Action>,
        d: &Domain,
        target_kib: Kib,
        now: f64,
        reason: &str,
    ) {
        push_write_logged(level, writes, d, target_kib, reason);
        self.tracker
            .note_write(d.domid, target_kib, now, self.epoch);
    }

    /// `target_kib`, or for a guest not yet seen to grow, at most a probe's worth above what
    /// it holds: a guest at a hidden ceiling then shows it before a target overshoots the
    /// ceiling by more than the probe the withdrawal would leave, so no target is ever taken
    /// back. A guest that follows is given its whole share in the next round.
    ///
    /// A guest that has fallen behind the growth it was asked for (it has not moved at the
    /// minimum rate since) is given no more until it moves: a driver that reacts late
    /// may start its delay again at every new target, and one rewritten before it starts
    /// would be judged unable to grow and have its request withdrawn, again at every
    /// balance, with its share swinging between the other guests.
    fn cautious(&self, d: &Domain, target_kib: Kib) -> Kib {
        let track = self.tracker.get(d.domid);
        let proven = track.is_none_or(|t| t.proven_up(&self.options.judge()));
        let behind = d.target_kib > d.memory_actual_kib + 2 * d.inaccuracy_kib;
        let lags = track.is_some_and(|t| t.short_since().is_some());
        if proven && !(behind && lags) {
            target_kib
        } else if behind {
            // Still short of what it was given: nothing more until it gets there (a guest
            // not yet seen to grow) or moves toward it (one that lags).
            target_kib.min(d.target_kib)
        } else {
            target_kib.min((d.memory_actual_kib + self.options.probe_kib).max(d.target_kib))
        }
    }

    /// One round of freeing toward `required_kib` free and guaranteed (or what `success`
    /// accepts), on `host` as looked at (and learnt from) at `now`. No I/O.
    fn free_round(
        &mut self,
        state: &mut FreeState,
        host: &Host,
        now: f64,
        required_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<Round> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let round = self.free_round_in(&mut scratch, state, host, now, required_kib, success);
        self.scratch = scratch;
        round
    }

    /// [`free_round`](Self::free_round) with its working space.
    fn free_round_in(
        &mut self,
        scratch: &mut Scratch,
        state: &mut FreeState,
        host: &Host,
        now: f64,
        required_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
    ) -> Result<Round> {
        let mut writes = Vec::new();
        // What each balloonable domain without a floor can still give, and how fast, and what
        // the domains could still take from the host ([`guaranteed_free`]): gathered by the
        // look in its walk (see `look_in`).
        let Scratch {
            contributors,
            who,
            finish,
            collected: scratch_collected,
        } = scratch;
        let (could_take, capacity) = match scratch_collected.take() {
            Some(sums) => sums,
            // Not gathered by the look, which learnt a limit that may take a domain out of
            // the contributors: gathered here, with the limit known.
            None => {
                contributors.clear();
                who.clear();
                let mut sums = (0, 0);
                for (i, d) in host.domains().iter().enumerate() {
                    let t = self.tracker.get(d.domid);
                    add_contributor(&self.options, now, i, d, t, contributors, who, &mut sums.1);
                    sums.0 += could_take_of(d);
                }
                sums
            }
        };
        let guaranteed = host.free_mem_kib - could_take;
        if guaranteed >= required_kib && success(guaranteed) {
            debug!(
                "{guaranteed} KiB free and guaranteed after {:.1} s",
                now - state.start
            );
            return Ok(Round::ending(writes, Outcome::Done));
        }
        let capacity = Kib::try_from(capacity).map_err(|_| {
            Error::InvalidMemoryValue("freeable: the sum of the capacities overflows".into())
        })?;
        let need = required_kib - guaranteed;
        let reachable = kib::add(guaranteed, capacity, "reachable free memory")?;
        if reachable < required_kib && !success(reachable) {
            let e = self.named(self.blame(host, now, required_kib));
            return Ok(Round::ending(writes, Outcome::Failed(e)));
        }
        if state.headway.stalled(guaranteed, now, self.options.stall_s) {
            debug!(
                "no new memory free for {} s ({guaranteed} KiB free and guaranteed, \
                 aiming for {required_kib} KiB)",
                self.options.stall_s
            );
            let counted_on: Vec<Domain> = who.iter().map(|&i| host.domains()[i]).collect();
            let e = self.named(self.blame_late(host, now, required_kib, &counted_on));
            return Ok(Round::ending(writes, Outcome::Failed(e)));
        }

        let t_star = plan::finish_time_in(contributors, need.min(capacity), finish).unwrap_or(0.0);
        // Each contributor's share is `plan::share(c, t_star)`, taken as the contributors are
        // walked rather than stored.
        // The caller's deadline: the request fails as soon as the rates the guests have
        // shown (not the prior) predict it cannot be met, three looks in a row so that one
        // slow first sample (a driver that reacts late) does not end it.
        let deadline = self.options.deadline_s;
        if deadline.is_finite() {
            let predicted = now - state.start + t_star;
            let measured = who.iter().zip(contributors.iter()).all(|(&i, c)| {
                plan::share(c, t_star) == 0
                    || self
                        .tracker
                        .get_at(i, host.domains()[i].domid)
                        .is_some_and(|t| t.rate_down().is_some())
            });
            state.late_looks = if measured && predicted > deadline {
                state.late_looks + 1
            } else {
                0
            };
            if state.late_looks >= 3 || now - state.start > deadline {
                debug!("the deadline of {deadline} s cannot be met: predicted {predicted:.1} s");
                let e = Error::DeadlineCannotBeMet {
                    deadline: std::time::Duration::from_secs_f64(deadline),
                    predicted: Some(std::time::Duration::from_secs_f64(predicted)),
                };
                return Ok(Round::ending(writes, Outcome::Failed(e)));
            }
        }
        // The plan: each contributor's new target. The loop reads only locals and the
        // contributor's domain and track (a big host writes thousands of targets a round).
        let (epoch, deadband_kib) = (self.epoch, self.options.deadband_kib);
        let log_changes = log::log_enabled!(log::Level::Info);
        let domains = host.domains();
        // The round follows a look at `host`, after which the tracker holds exactly the
        // host's domains in the same order: each write is noted in the domain's track by
        // position. (Counting them is enough to tell; the look guarantees the rest.)
        let aligned = self.tracker.tracks().len() == domains.len();
        debug_assert!(!aligned || self.tracker.holds_exactly(host));
        let mut tracks = aligned.then(|| self.tracker.tracks_mut());
        let mut wrote = false;
        for (&i, c) in who.iter().zip(contributors.iter()) {
            let share = plan::share(c, t_star);
            let d = &domains[i];
            // A driver may stop up to its inaccuracy short of a target, and a real host
            // rounds to whole pages on top, so ask for twice that much more; the capacity
            // held back twice the inaccuracy, so this stays in range.
            let ask = if share > 0 {
                share + 2 * d.inaccuracy_kib
            } else {
                0
            };
            // An inverted range is the single point dynamic-min (see `top_of_range`).
            let desired = (d.memory_actual_kib - ask).min(top_of_range(d));
            let growing = d.target_kib > d.memory_actual_kib + d.inaccuracy_kib;
            // No target is ever set above what a domain holds while memory is being freed.
            // A driver still on its way down keeps its target unless the plan moved by more
            // than the deadband (in either direction: an earlier plan, made before its
            // speed was known, may have asked it for too much); one at rest is always given
            // a lower target, however small the step.
            // For a driver in flight, a change smaller than an eighth of the way it still
            // has to go is noise in the rate estimates, not worth a write.
            let step = (desired - d.target_kib).abs();
            // (Sizes are at most 2⁵⁰ KiB, so the distance fits either way; unsigned, the
            // eighth is a shift.)
            let in_flight = ((d.memory_actual_kib - d.target_kib).unsigned_abs() / 8) as Kib;
            let worth = step > deadband_of(deadband_kib, d).max(in_flight);
            let write = if desired < d.target_kib {
                growing || d.has_hit_target() || worth
            } else {
                desired < d.memory_actual_kib - d.inaccuracy_kib && worth
            };
            if write {
                if writes.capacity() == 0 {
                    // At most one write per contributor: no regrowing on a big host.
                    writes.reserve_exact(who.len());
                }
                if log_changes && desired != d.target_kib {
                    log_change(log::Level::Info, d, desired, "free memory");
                }
                writes.push(Action {
                    domid: d.domid,
                    new_target_kib: desired,
                });
                if let Some(tracks) = tracks.as_deref_mut() {
                    tracks[i].note_write(desired, now, epoch);
                }
                wrote = true;
            }
        }
        if tracks.is_none() {
            // Not reached after a look at `host`, which leaves the tracker holding its
            // domains; noted by domid all the same.
            for a in &writes {
                self.tracker
                    .note_write(a.domid, a.new_target_kib, now, epoch);
            }
        }
        let moving = who.iter().any(|&i| !host.domains()[i].has_hit_target());
        if !wrote && !moving {
            // Everything that could be freed has been.
            let outcome = if success(guaranteed) {
                Outcome::Done
            } else {
                Outcome::Failed(self.named(self.blame(host, now, required_kib)))
            };
            return Ok(Round::ending(writes, outcome));
        }
        Ok(Round::ending(writes, Outcome::Continue))
    }

    /// One round of balancing toward `goal_kib` free, on `host` as looked at (and learnt
    /// from) at `now`, in a balance that started at `start_s`; with `hand_on`, memory already
    /// freed may go to growing guests while others still shrink. No I/O.
    fn allocate_round(
        &mut self,
        start_s: f64,
        host: &Host,
        now: f64,
        goal_kib: Kib,
        success: &mut dyn FnMut(Kib) -> bool,
        hand_on: bool,
    ) -> Result<Round> {
        let mut writes = Vec::new();
        // Each domain's range, narrowed to the limits it has shown.
        let limited: Vec<(Domain, bool)> = host
            .domains()
            .iter()
            .filter(|d| d.can_balloon)
            .map(|d| {
                let mut e = *d;
                // An inverted range is the single point dynamic-min: the policy's share for
                // it is that point, and so is the deadband's range (0).
                e.dynamic_max_kib = top_of_range(d);
                let mut is_limited = false;
                if let Some(t) = self.tracker.get(d.domid) {
                    if t.pinned().is_some() || t.lagging(now, self.options.grace_s) {
                        // Neither give it memory nor count on it to free any.
                        let pinned = d
                            .memory_actual_kib
                            .clamp(e.dynamic_min_kib, e.dynamic_max_kib);
                        e.dynamic_min_kib = pinned;
                        e.dynamic_max_kib = pinned;
                        is_limited = true;
                    }
                    if let Some(f) = t.floor() {
                        e.dynamic_min_kib = e.dynamic_min_kib.max(f.at_kib).min(e.dynamic_max_kib);
                        is_limited = true;
                    }
                    if let Some(c) = t.ceiling() {
                        e.dynamic_max_kib = e.dynamic_max_kib.min(c.at_kib).max(e.dynamic_min_kib);
                        // A balance does not take memory from a guest because it cannot grow
                        // (its narrowed range would give it a smaller share): it keeps what it
                        // holds, and its target, once raised, is never taken back down.
                        e.dynamic_min_kib = e
                            .dynamic_min_kib
                            .max(d.memory_actual_kib.min(e.dynamic_max_kib));
                        is_limited = true;
                    }
                }
                (e, is_limited)
            })
            .collect();
        // A limited domain's standing request (the probe) is memory it may still take if
        // its limit lifts: it is not free to hand to the others.
        let probes = kib::sum(
            limited.iter().filter(|(_, l)| *l).map(|(e, _)| {
                let d = host.domain(e.domid).expect("from this host");
                // The target in force: a limit found in this look may have withdrawn the
                // one the snapshot shows.
                let target = self
                    .tracker
                    .get(e.domid)
                    .map_or(d.target_kib, |t| t.target_kib);
                ((target + d.inaccuracy_kib).min(d.memory_max_kib) - d.memory_actual_kib).max(0)
            }),
            "standing requests",
        )?;
        let allocation = policy::proportional(
            limited.iter().map(|(e, _)| e),
            kib::sub(host.free_mem_kib, probes, "free memory")?,
            goal_kib,
            true,
        )?;
        let ideal: Vec<Kib> = limited
            .iter()
            .map(|(e, _)| allocation.target_for(e))
            .collect();

        // Two phases, as in the classic squeezer: freeing targets first.
        let opts = self.options;
        let wants = |(e, _): &(Domain, bool), ideal: Kib| -> Option<Direction> {
            if (ideal - e.target_kib).abs() <= deadband(&opts, e) {
                None
            } else if ideal < e.target_kib {
                Some(Direction::Down)
            } else {
                Some(Direction::Up)
            }
        };
        // As in the classic squeezer, a domain still on its way down (whether or not its
        // target needs rewriting) holds back every allocation: the policy already counts
        // the memory it has yet to release as free.
        let freeing = limited.iter().zip(&ideal).any(|((e, _), &i)| {
            !has_hit_target(e.inaccuracy_kib, e.memory_actual_kib, i) && i < e.memory_actual_kib
        });
        let phase = if freeing {
            Direction::Down
        } else {
            Direction::Up
        };
        let mut wrote = false;
        for (l, &i) in limited.iter().zip(&ideal) {
            let (e, is_limited) = (&l.0, l.1);
            let shrinking = !has_hit_target(e.inaccuracy_kib, e.memory_actual_kib, i)
                && i < e.memory_actual_kib;
            let write = match phase {
                // Every domain that must shrink gets its target, up or down from the one
                // it has, as long as the change is worth writing.
                Direction::Down => shrinking && wants(l, i).is_some(),
                // A limited driver keeps its lower target (a standing request that can
                // only free memory) unless it is really to be given more than it has.
                Direction::Up => {
                    let grows = wants(l, i) == Some(Direction::Up)
                        && !(is_limited && i <= e.memory_actual_kib + e.inaccuracy_kib)
                        && self.cautious(e, i) > e.target_kib;
                    // A growth request above the domain's share is cut back to it, however
                    // small the cut: the policy counts the memory the domain has not taken
                    // yet as free and hands it to the others in this same round.
                    let cut = !is_limited
                        && i < e.target_kib
                        && e.target_kib > e.memory_actual_kib + e.inaccuracy_kib;
                    grows || cut
                }
            };
            // A guest not yet seen to grow is given a probe's worth at a time (see
            // `cautious`); a cut never goes below the probe it has.
            let i = if phase == Direction::Up && i > e.target_kib {
                self.cautious(e, i)
            } else {
                i
            };
            if !write || self.dwell_blocks(e, i, now) {
                continue;
            }
            let d = host.domain(e.domid).expect("from this host");
            self.plan_write(&mut writes, d, i, now, "rebalance");
            wrote = true;
        }
        // Memory a shrinking guest has already released is handed on while it shrinks
        // instead of sitting idle until the slowest driver is done: in a freeing round that
        // sets no freeing target, growing guests are given up to what is free and guaranteed
        // above the goal (it stays free even if every guest went to its target + inaccuracy),
        // so the host never goes under the slush and nothing is promised twice. It goes out
        // within `hand_on_rounds` rounds of coming free, each time to as few guests as it
        // can, so that a slow driver costs at most a write every few rounds.
        if phase == Direction::Down && !wrote && hand_on {
            let mut spare = guaranteed_free(host) - goal_kib;
            // Only growth, and only to a guest that took what it was last given: a guest
            // still above its share is left to shrink, and one that does not follow its
            // target is not handed more (it waits for the growing phase, as before).
            let mut takers: Vec<(usize, Kib)> = limited
                .iter()
                .zip(&ideal)
                .enumerate()
                .filter(|(_, (l, &i))| {
                    let e = &l.0;
                    !l.1 && wants(l, i) == Some(Direction::Up)
                        && e.target_kib <= e.memory_actual_kib + 2 * e.inaccuracy_kib
                })
                .map(|(k, (l, &i))| (k, i - l.0.target_kib))
                .collect();
            let outstanding: Kib = takers.iter().map(|&(_, want)| want).sum();
            // Waited for as many rounds as allowed since it was first seen (rounds are whole
            // polls apart; the slack is for a clock that is not).
            let rounds_waited = f64::from(opts.hand_on_rounds - 1) * opts.poll_s;
            let since = self.held_since.get().unwrap_or(now);
            let waited = now - since >= rounds_waited - 0.01 * opts.poll_s;
            // Due once it has waited as many rounds as allowed, or at once if it covers all
            // the growth to come; otherwise it waits for what the next round adds, so that
            // one write hands on both.
            let due = waited || spare >= outstanding;
            if spare > 0 && !takers.is_empty() {
                // The guests furthest from their share first, so that what is free goes out
                // in as few writes as possible.
                takers.sort_by_key(|&(_, want)| std::cmp::Reverse(want));
                // Memory not yet due, given to a guest only as a probe, or worth no write yet
                // is still waiting.
                let mut waiting = !due;
                for (k, want) in takers {
                    if spare <= 0 {
                        break;
                    }
                    let e = &limited[k].0;
                    // Worth a write: the deadband, or all this guest still wants.
                    let worth = spare >= want || spare > deadband(&opts, e);
                    let grant = self.cautious(e, e.target_kib + want.min(spare)) - e.target_kib;
                    let probe = grant < want.min(spare);
                    waiting |= !worth || probe;
                    // A guest not yet seen to grow is asked for its probe as soon as there is
                    // memory for it, so that the first hand-on it is due is not one round
                    // late.
                    let grows = e.target_kib + grant > e.memory_actual_kib + e.inaccuracy_kib;
                    if !(due || probe)
                        || !grows
                        || !worth
                        || self.dwell_blocks(e, e.target_kib + grant, now)
                    {
                        continue;
                    }
                    let d = host.domain(e.domid).expect("from this host");
                    self.plan_write_logged(
                        log::Level::Debug,
                        &mut writes,
                        d,
                        e.target_kib + grant,
                        now,
                        "hand on freed memory",
                    );
                    self.handed_on.add(e.domid, grant, now);
                    spare -= grant;
                    wrote = true;
                }
                if wrote && !waiting {
                    self.held_since.set(None);
                } else if self.held_since.get().is_none() {
                    self.held_since.set(Some(now));
                }
            } else {
                self.held_since.set(None);
            }
        }
        // A driver within twice its inaccuracy of its target has nothing left to do (as
        // the tracker judges it: it may stop that short on a real host, which rounds to
        // whole pages), and one that has not moved for the grace period changes nothing
        // by being waited for.
        let grace = self.options.grace_s;
        let settled = limited.iter().all(|(e, is_limited)| {
            *is_limited
                || (e.memory_actual_kib - e.target_kib).abs() <= 2 * e.inaccuracy_kib
                || self
                    .tracker
                    .get(e.domid)
                    .and_then(|t| t.stalled_since())
                    .is_some_and(|s| now - s >= grace)
        });
        if !wrote && settled {
            if !success(host.free_mem_kib) {
                debug!(
                    "balanced as far as possible: {} KiB free, aiming for {goal_kib} KiB",
                    host.free_mem_kib
                );
            }
            self.handed_on.summarise(now);
            return Ok(Round::ending(writes, Outcome::Done));
        }
        if now - start_s > self.options.balance_wait_s {
            debug!(
                "balance returns after {} s; the drivers still moving carry on",
                self.options.balance_wait_s
            );
            self.handed_on.summarise(now);
            return Ok(Round::ending(writes, Outcome::Done));
        }
        Ok(Round::ending(writes, Outcome::Continue))
    }

    /// Whether setting `d`'s target to `target_kib` would reverse the flow of its memory (grow
    /// after being asked to shrink, or the other way round) too soon after the last write, with
    /// no outside change in between. Easing off a request (a target between what the domain
    /// holds and the target in force: a higher one still below, or a lower one still above)
    /// reverses nothing. The lower one must never wait: a round that cuts a growth request
    /// back to the domain's share hands the difference to the others at once.
    fn dwell_blocks(&self, d: &Domain, target_kib: Kib, now: f64) -> bool {
        let Some(t) = self.tracker.get(d.domid) else {
            return false;
        };
        let (near, far) = if d.target_kib < d.memory_actual_kib {
            (d.target_kib, d.memory_actual_kib)
        } else {
            (d.memory_actual_kib, d.target_kib)
        };
        if (near..=far).contains(&target_kib) {
            return false;
        }
        let flow = match direction_of_actual(d.inaccuracy_kib, d.memory_actual_kib, target_kib) {
            Some(Direction::Down) => -1,
            Some(Direction::Up) => 1,
            None => return false,
        };
        t.last_write_dir == -flow
            && t.last_write_epoch == self.epoch
            && now - t.last_write_time < self.options.dwell_s
    }

    /// `e`, after flagging every domain it names: a guest blamed for a failed request is
    /// uncooperative by the time the caller hears of it.
    fn named(&mut self, e: Error) -> Error {
        if let Error::DomainsRefusedToCooperate { domids } = &e {
            let judge = self.options.judge();
            for &domid in domids {
                if let Some(t) = self.tracker.get_mut(domid) {
                    t.blame(&judge);
                }
            }
        }
        e
    }

    /// The error for a request that cannot be met: the domains whose limits stood in the way,
    /// or, when none did, the dynamic-mins.
    fn blame(&self, host: &Host, now: f64, required_kib: Kib) -> Error {
        let grace = self.options.grace_s;
        let domids: Vec<DomId> = host
            .domains()
            .iter()
            .rev()
            .filter(|d| d.can_balloon && d.min_freeable_kib(true) > 0)
            .filter(|d| {
                self.tracker
                    .get(d.domid)
                    .is_some_and(|t| t.unreliable(now, grace))
            })
            .map(|d| d.domid)
            .collect();
        if domids.is_empty() {
            Error::CannotFreeThisMuchMemory {
                required_kib,
                free_kib: host.free_mem_kib,
            }
        } else {
            Error::DomainsRefusedToCooperate { domids }
        }
    }

    /// The error when a request stalls or its deadline passes: as [`blame`](Self::blame),
    /// or, when no limit stood in the way, the guests the plan counted on (`counted_on`) that
    /// are still short of their targets.
    fn blame_late(&self, host: &Host, now: f64, required_kib: Kib, counted_on: &[Domain]) -> Error {
        match self.blame(host, now, required_kib) {
            Error::CannotFreeThisMuchMemory { .. } => {
                let behind: Vec<DomId> = counted_on
                    .iter()
                    .rev()
                    .filter(|d| !d.has_hit_target())
                    .map(|d| d.domid)
                    .collect();
                if behind.is_empty() {
                    Error::CannotFreeThisMuchMemory {
                        required_kib,
                        free_kib: host.free_mem_kib,
                    }
                } else {
                    Error::DomainsRefusedToCooperate { domids: behind }
                }
            }
            e => e,
        }
    }
}

/// How a goal stands after a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Met: the operation is over.
    Done,
    /// Cannot be met: the operation ends with this error (the domains it names are judged
    /// uncooperative).
    Failed(Error),
    /// Apply the writes, wait a poll interval and look again.
    Continue,
}

/// What one round decided: the targets to write, in order, and how the goal stands. Rounds do
/// no I/O; the loop that drives them writes, waits and looks.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// Balloon targets to set, in order.
    pub writes: Vec<Action>,
    /// How the goal stands.
    pub outcome: Outcome,
}

impl Round {
    fn ending(writes: Vec<Action>, outcome: Outcome) -> Self {
        Round { writes, outcome }
    }
}

/// Applies a round's target writes.
fn apply(io: &mut dyn Io, writes: &[Action]) -> Result<()> {
    writes.iter().try_for_each(|&a| io.execute_action(a))
}

/// What an operation aims for (see [`Adaptive::begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Free memory until `required_kib` is free and guaranteed to stay free (or, where that
    /// cannot be reached, until the success condition holds for what could be freed).
    Free {
        /// Host free memory to reach, KiB.
        required_kib: Kib,
    },
    /// Hand the memory above `slush_kib` back to the domains.
    Balance {
        /// Host free memory to keep (the slush), KiB.
        slush_kib: Kib,
    },
}

/// An operation in progress: its goal and what it carries from round to round.
#[derive(Debug, Clone)]
pub struct Operation {
    goal: Goal,
    phase: OperationPhase,
    stillness: Stillness,
}

impl Operation {
    /// The goal.
    pub fn goal(&self) -> Goal {
        self.goal
    }

    /// Aims a freeing operation at `required_kib` from its next round on (a service that
    /// plans for several waiting requests at once moves the goal as they come and go); a
    /// balance keeps its goal.
    pub fn set_required(&mut self, required_kib: Kib) {
        if let Goal::Free { .. } = self.goal {
            self.goal = Goal::Free { required_kib };
        }
    }
}

#[derive(Debug, Clone)]
enum OperationPhase {
    NotStarted,
    Freeing(FreeState),
    Allocating { start: f64 },
}

/// What a freeing request carries from round to round.
#[derive(Debug, Clone)]
struct FreeState {
    start: f64,
    headway: Headway,
    /// Looks in a row whose measured rates predicted the caller's deadline missed.
    late_looks: u32,
}

impl FreeState {
    fn new(host: &Host, now: f64) -> Self {
        FreeState {
            start: now,
            headway: Headway::new(guaranteed_free(host), now),
            late_looks: 0,
        }
    }
}

/// Whether a freeing request still makes headway: the most memory it has had free and
/// guaranteed, and since when.
#[derive(Debug, Clone)]
struct Headway {
    best_kib: Kib,
    since: f64,
}

impl Headway {
    fn new(kib: Kib, now: f64) -> Self {
        Headway {
            best_kib: kib,
            since: now,
        }
    }

    /// Records `kib` free and guaranteed at `now`; true once no new high has been reached for
    /// `stall_s` seconds.
    fn stalled(&mut self, kib: Kib, now: f64, stall_s: f64) -> bool {
        if kib > self.best_kib {
            self.best_kib = kib;
            self.since = now;
        }
        now - self.since > stall_s
    }
}

/// Freed memory handed on since the last summary: how much went to each domain, in how many
/// writes, since when. The writes are logged one by one at debug level (behind a slow driver
/// there may be one every round or two); the info summary keeps a balance to one line.
#[derive(Debug, Clone, Default)]
struct HandOnTally {
    /// `(domid, KiB, writes)`, in the order the domains were first given memory.
    given: Vec<(DomId, Kib, u32)>,
    since: Option<f64>,
    /// A copy that only asks whether to balance: it says nothing.
    muted: bool,
}

impl HandOnTally {
    fn muted() -> Self {
        HandOnTally {
            muted: true,
            ..HandOnTally::default()
        }
    }

    fn add(&mut self, domid: DomId, kib: Kib, now: f64) {
        self.since.get_or_insert(now);
        match self.given.iter_mut().find(|g| g.0 == domid) {
            Some(g) => {
                g.1 += kib;
                g.2 += 1;
            }
            None => self.given.push((domid, kib, 1)),
        }
    }

    /// Logs what was handed on since the last summary, if anything, and starts afresh.
    fn summarise(&mut self, now: f64) {
        let Some(since) = self.since.take() else {
            return;
        };
        let given = std::mem::take(&mut self.given);
        if self.muted {
            return;
        }
        let writes: u32 = given.iter().map(|g| g.2).sum();
        let in_all = if given.len() > 1 {
            format!(" ({writes} writes in all)")
        } else {
            String::new()
        };
        let to_whom: Vec<String> = given
            .iter()
            .map(|(domid, kib, n)| {
                format!(
                    "{kib} KiB to domain {domid} in {n} write{}",
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect();
        info!(
            "freed memory handed on over {:.0} s while guests shrank: {}{in_all}",
            now - since,
            to_whom.join(", ")
        );
    }
}

/// How a domain's balloon driver has been cooperating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cooperation {
    /// Seconds of asked-for work the driver did not do, leaking away over time.
    pub score_s: f64,
    /// Whether the score has crossed the flagging threshold (and not yet fallen back below the
    /// clearing one).
    pub uncooperative: bool,
    /// What most recently counted against it.
    pub concern: Option<Concern>,
}

fn cooperation_of(t: &tracker::Track) -> Cooperation {
    Cooperation {
        score_s: t.score_s,
        uncooperative: t.uncooperative,
        concern: t.concern,
    }
}

/// The smallest target change worth writing for `d`: the configured deadband, or 1/64 of a
/// small domain's range, but never less than twice the balloon inaccuracy.
fn deadband(options: &AdaptiveOptions, d: &Domain) -> Kib {
    deadband_of(options.deadband_kib, d)
}

/// [`deadband`] for a configured deadband of `deadband_kib`.
#[inline(always)]
fn deadband_of(deadband_kib: Kib, d: &Domain) -> Kib {
    deadband_kib
        .min(d.range_kib() / 64)
        .max(2 * d.inaccuracy_kib)
}

/// The highest target the adaptive policy sets on `d`: its dynamic-max, or its dynamic-min
/// when the range is inverted (dynamic-min above dynamic-max, as a toolstack writing the two
/// keys one at a time can leave them for a while). Such a range is taken as the single point
/// dynamic-min, what the guest must have, until it is sane again: the guest is neither taken
/// below it (the freeing plan asks only for what it holds above dynamic-min) nor given more.
#[inline(always)]
fn top_of_range(d: &Domain) -> Kib {
    d.dynamic_max_kib.max(d.dynamic_min_kib)
}

/// Puts `d`'s new target in the plan `writes`, and logs it if it changes (the caller notes it
/// in the tracker).
#[inline]
fn push_write(writes: &mut Vec<Action>, d: &Domain, target_kib: Kib, reason: &str) {
    push_write_logged(log::Level::Info, writes, d, target_kib, reason);
}

/// [`push_write`], logging the change at `level`.
#[inline]
fn push_write_logged(
    level: log::Level,
    writes: &mut Vec<Action>,
    d: &Domain,
    target_kib: Kib,
    reason: &str,
) {
    if target_kib != d.target_kib {
        log_change(level, d, target_kib, reason);
    }
    writes.push(Action {
        domid: d.domid,
        new_target_kib: target_kib,
    });
}

/// Logs the change of `d`'s target to `target_kib` at `level`. Out of line: the loops that
/// write thousands of targets a round only test whether to call it.
#[cold]
#[inline(never)]
fn log_change(level: log::Level, d: &Domain, target_kib: Kib, reason: &str) {
    log::log!(
        level,
        "domain {}: target {} -> {target_kib} KiB ({reason})",
        d.domid,
        d.target_kib
    );
}

/// What a look's walk carries from each domain to the next (see [`Adaptive::look_in`]).
struct LookSums {
    /// The input fingerprint of the domains so far ([`fingerprint_mix`]).
    fingerprint: u64,
    /// What the domains so far could still take from the host ([`could_take_of`]).
    could_take: Kib,
    /// The capacities of the contributors so far (see [`add_contributor`]).
    capacity: i128,
}

/// What a look does with each domain right after its track's update (see
/// [`Adaptive::look_in`]): note a limit to learn, gather the freeing round's contributors,
/// mix the fingerprint. Its `after` is inlined into the tracker's walk.
struct LookWalk<'a> {
    options: &'a AdaptiveOptions,
    now: f64,
    collect: bool,
    /// The domains with a limit to learn (by place), and whether each stalled.
    learn: &'a mut Vec<(usize, bool)>,
    contributors: &'a mut Vec<Contributor>,
    who: &'a mut Vec<usize>,
}

impl tracker::AfterUpdate<LookSums> for LookWalk<'_> {
    #[inline(always)]
    fn after(&mut self, mut sums: LookSums, i: usize, d: &Domain, t: &mut Track) -> LookSums {
        let (options, now) = (self.options, self.now);
        if let Some(stalled) = Adaptive::limit_to_learn(options.grace_s, d, t, now) {
            self.learn.push((i, stalled));
        }
        if self.collect {
            let (c, w) = (&mut *self.contributors, &mut *self.who);
            add_contributor(options, now, i, d, Some(t), c, w, &mut sums.capacity);
            sums.could_take += could_take_of(d);
        }
        sums.fingerprint = fingerprint_mix(sums.fingerprint, d);
        sums
    }
}

/// Puts what `d` (at `index` among the host's domains, tracked as `t`) can still give and
/// how fast among the freeing round's `contributors` (its index in `who`), adding its
/// capacity to `capacity`: a balloonable domain without a floor or a pinned driver, and not
/// lagging. Summed wide: each capacity is at most `MAX_KIB` (2⁵⁰), so no host's sum comes
/// near the 2¹²⁷ of an `i128`, and it is checked once.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_contributor(
    options: &AdaptiveOptions,
    now: f64,
    index: usize,
    d: &Domain,
    t: Option<&Track>,
    contributors: &mut Vec<Contributor>,
    who: &mut Vec<usize>,
    capacity: &mut i128,
) {
    if !d.can_balloon || t.is_some_and(|t| t.unreliable(now, options.grace_s)) {
        return;
    }
    let cap_kib = d.min_freeable_kib(true);
    *capacity += i128::from(cap_kib);
    contributors.push(Contributor {
        cap_kib,
        rate_kib_per_s: t
            .and_then(|t| t.rate_down())
            .unwrap_or(options.prior_rate_kib_per_s),
    });
    who.push(index);
}

/// Host free memory that stays free even if every domain grows to its target + inaccuracy
/// (within its maxmem).
pub fn guaranteed_free(host: &Host) -> Kib {
    let could_take: Kib = host.domains().iter().map(could_take_of).sum();
    host.free_mem_kib - could_take
}

/// What `d` may still take from the host: up to its target + inaccuracy, within its maxmem.
fn could_take_of(d: &Domain) -> Kib {
    ((d.target_kib + d.inaccuracy_kib).min(d.memory_max_kib) - d.memory_actual_kib).max(0)
}

/// The fingerprint of no domains. A look's fingerprint is [`fingerprint_mix`] of each
/// domain in turn from this: a digest of the outside inputs (which domains exist, whether
/// they can balloon, and their dynamic ranges).
const FINGERPRINT_START: u64 = 0;

/// The fingerprint `h` of the domains before `d`, with `d` mixed in.
/// A multiply-rotate mix rather than SipHash: it runs over every domain on every look, and
/// needs to tell inputs apart, not to resist a chosen collision. Each domain is mixed on its
/// own (its domid in it) and only a rotate and an xor chain the domains together, so that
/// the domains' multiplications overlap instead of waiting on each other.
#[inline(always)]
fn fingerprint_mix(h: u64, d: &Domain) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, v: u64| (h.rotate_left(5) ^ v).wrapping_mul(K);
    let v = mix(0, d.domid as u64 ^ ((d.can_balloon as u64) << 63));
    let v = mix(v, d.dynamic_min_kib as u64);
    h.rotate_left(1) ^ mix(v, d.dynamic_max_kib as u64)
}

#[cfg(test)]
mod tests {
    use super::{Adaptive, Goal, Headway};
    use crate::model::{Domain, Host, Kib};

    const MIB: Kib = 1024;

    /// Three guests of dynamic range 1–4 GiB, holding `actual_mib` with targets `target_mib`.
    fn host(actual_mib: [Kib; 3], target_mib: [Kib; 3]) -> Host {
        let guests = (0..3)
            .map(|i| {
                let (actual, target) = (actual_mib[i] * MIB, target_mib[i] * MIB);
                Domain::new(
                    i as i32 + 1,
                    true,
                    1024 * MIB,
                    target,
                    4096 * MIB,
                    actual,
                    4096 * MIB,
                    4,
                )
            })
            .collect();
        Host::new(guests, 0).unwrap()
    }

    #[test]
    fn a_squeezer_reusing_its_working_space_decides_as_a_fresh_copy() {
        // Free 1.5 GiB from three guests of 3, 3.5 and 4 GiB. The first round sizes the
        // working space for three contributors; a copy taken after it has none. Given the
        // same second look (the guests have moved 100, 200 and 300 MiB), both plan the same.
        let mut adaptive = Adaptive::default();
        let mut op = adaptive
            .begin(Goal::Free {
                required_kib: 1536 * MIB,
            })
            .unwrap();
        let first = adaptive
            .step(
                &mut op,
                &host([3072, 3584, 4096], [3072, 3584, 4096]),
                0.0,
                &mut |_| false,
            )
            .unwrap();
        assert_eq!(first.writes.len(), 3);
        let targets = first.writes.iter().map(|a| a.new_target_kib / MIB);
        let [t1, t2, t3]: [Kib; 3] = targets.collect::<Vec<_>>().try_into().unwrap();
        let second_look = host([2972, 3384, 3796], [t1, t2, t3]);
        let (mut copy, mut copy_op) = (adaptive.clone(), op.clone());
        let reused = adaptive
            .step(&mut op, &second_look, 1.0, &mut |_| false)
            .unwrap();
        let fresh = copy
            .step(&mut copy_op, &second_look, 1.0, &mut |_| false)
            .unwrap();
        assert_eq!(reused, fresh);
        assert!(
            !reused.writes.is_empty(),
            "the measured rates move the plan"
        );
    }

    #[test]
    fn a_request_stalls_only_after_no_new_high_for_the_stall_time() {
        // 1 GiB free at 0 s; the stall time is 30 s.
        let mut h = Headway::new(1 << 20, 0.0);
        // A new high at 10 s restarts the count.
        assert!(!h.stalled((1 << 20) + 4, 10.0, 30.0));
        // Memory taken back and given again is no new high: 30 s after 10 s is still going,
        // 30.5 s after it the request has stalled.
        assert!(!h.stalled(1 << 20, 25.0, 30.0));
        assert!(!h.stalled((1 << 20) + 4, 40.0, 30.0));
        assert!(h.stalled((1 << 20) + 4, 40.5, 30.0));
    }
}
