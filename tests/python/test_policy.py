"""The adaptive policy through the Python binding, beside squeezed's classic algorithm.

A 100 MiB/s guest and one that frees a single 4 KiB page every 5 s, 4 GiB each with a 1 GiB
dynamic-min, asked for 1 GiB (which the fast guest alone could give).
"""

import logging

import pytest

import squeeze as sq

MIB = 1024
GIB = 1024 * MIB
SLUSH = 72 * MIB


def trickler_host(time_limit_s=600.0):
    sim = sq.Simulator(
        free_mem_kib=SLUSH,
        target_host_free_mem_kib=SLUSH,
        time_limit_s=time_limit_s,
    )
    for domid, behaviour in [
        (1, sq.Behaviour.ideal(100 * MIB)),
        (2, sq.Behaviour.trickle(4, 5.0)),
    ]:
        sim.add_guest(sq.Domain(domid, True, GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4), behaviour)
    return sim


def test_classic_waits_on_the_trickler_until_the_time_limit():
    sim = trickler_host()
    with pytest.raises(sq.BackendError, match="time limit"):
        sq.change_host_free_memory(sim, SLUSH + GIB)


def test_adaptive_serves_the_request_from_the_fast_guest_and_scores_the_trickler():
    sim = trickler_host()
    with sq.Squeezer(sq.Options(policy=sq.POLICY_ADAPTIVE)) as s:
        s.change_host_free_memory(sim, SLUSH + GIB)
        assert sim.time < 30.0
        assert sim.free_mem_kib >= SLUSH + GIB
        trickler = s.cooperation(2)
        assert trickler.score_s > 0
        assert trickler.concern in ("too slow", "not moving")
        assert s.cooperation(1).concern is None
        with pytest.raises(sq.InvalidArgument, match="not seen domain 9"):
            s.cooperation(9)


def test_adaptive_fails_a_request_that_needs_the_trickler_naming_it():
    sim = trickler_host()
    with sq.Squeezer(sq.Options(policy=sq.POLICY_ADAPTIVE, deadline_s=60.0)) as s:
        with pytest.raises(sq.DomainsRefusedToCooperate) as e:
            s.change_host_free_memory(sim, SLUSH + 4 * GIB)
        assert e.value.domids == [2]
        assert sim.time < 60.0


def test_single_steps_run_adaptive_rounds_too():
    # One guest of 1..4 GiB holding 4 GiB, nothing free, 1 GiB wanted: the first round asks
    # it for 1 GiB and twice its 4 KiB inaccuracy (8 KiB) more.
    gib = 1024 * 1024
    d = sq.Domain(1, True, gib, 4 * gib, 4 * gib, 4 * gib, 4 * gib)
    with sq.Squeezer(sq.Options(policy=sq.POLICY_ADAPTIVE)) as s:
        s.begin_operation(0.0)
        r = s.step([d], 0, gib, 0.0)
        assert r.verdict == sq.VERDICT_ADJUST_TARGETS
        assert r.actions == [(1, 3 * gib - 8)]
        assert r.maxmem == [(1, 3 * gib - 8)]


def test_unknown_policies_and_bad_deadlines_are_refused():
    sim = trickler_host()
    with pytest.raises(sq.Unsupported, match="unknown policy 7"):
        sq.balance_memory(sim, sq.Options(policy=7))
    with pytest.raises(sq.InvalidArgument, match="deadline"):
        sq.balance_memory(sim, sq.Options(deadline_s=0.0))


def test_target_changes_reach_python_logging_with_their_reason(caplog):
    sim = sq.Simulator(free_mem_kib=SLUSH, target_host_free_mem_kib=SLUSH)
    for domid in (1, 2):
        sim.add_guest(
            sq.Domain(domid, True, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 4),
            sq.Behaviour.ideal(100 * MIB),
        )
    sq.log_to_python(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="squeeze"):
            sq.free_memory_range(sim, 512 * MIB, 512 * MIB)
        changes = [r for r in caplog.records if "target" in r.getMessage()]
        assert changes, caplog.text
        assert all(r.name.startswith("squeeze") for r in changes)
        assert any("(free memory)" in r.getMessage() for r in changes)
        caplog.clear()
        sq.log_to_python(None)
        with caplog.at_level(logging.DEBUG, logger="squeeze"):
            sq.balance_memory(sim)
        assert not [r for r in caplog.records if r.name.startswith("squeeze")]
    finally:
        sq.log_to_python(None)


def stalled_steps(policy, seconds):
    """Steps a squeezer once a second over one guest of 1..4 GiB holding 4 GiB whose driver
    never moves, asking for 1 GiB free; returns the last judgement of the guest it reported."""
    gib = 1024 * 1024
    last = None
    with sq.Squeezer(sq.Options(policy=policy)) as s:
        s.begin_operation(0.0)
        target = 4 * gib
        for t in range(seconds + 1):
            d = sq.Domain(1, True, gib, target, 4 * gib, 4 * gib, 4 * gib)
            try:
                r = s.step([d], 0, gib, float(t))
            except sq.DomainsRefusedToCooperate:
                break
            last = r.judgements.get(1, last)
            for domid, new_target in r.actions:
                target = new_target
    return last


def test_each_step_returns_the_judgement_of_the_domains_under_both_policies():
    # squeezed's rule: 5 s without moving makes a driver stuck, reported as a 5 s score.
    classic = stalled_steps(sq.POLICY_CLASSIC, 6)
    assert classic is not None and classic.uncooperative and classic.score_s == 5.0
    # The adaptive score counts the seconds of asked-for work not done, flagging at 10 s.
    adaptive = stalled_steps(sq.POLICY_ADAPTIVE, 30)
    assert adaptive is not None and adaptive.uncooperative, adaptive
    assert adaptive.score_s >= 10.0 and adaptive.concern == "not moving", adaptive
