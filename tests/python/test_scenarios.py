"""squeezed's simulator scenarios, driven through the Python binding and the C ABI.

Each scenario frees `required` KiB on a simulated host whose clock ticks 0.1 s per wait (as in
squeezed's simulator), checks the memory would stay free even if every guest grew to target +
inaccuracy, then lets a new domain take 500 KiB and hands the rest back.
"""

import pytest

import squeeze as sq


def dom(domid, lo, target, hi, actual, maxmem, inacc):
    return sq.Domain(domid, True, lo, target, hi, actual, maxmem, inacc)


def simulate(guests, free_mem_kib, required_kib, fistpoints=0):
    sim = sq.Simulator(
        free_mem_kib=free_mem_kib,
        target_host_free_mem_kib=required_kib,
        fixed_tick_s=0.1,
        time_limit_s=600.0,
    )
    for d, b in guests:
        sim.add_guest(d, b)
    opts = sq.Options(fistpoints=fistpoints)
    ids = [d.domid for d, _ in guests]

    def guaranteed_free(required):
        could_take = sum(
            g.target_kib + g.inaccuracy_kib - g.memory_actual_kib for g in map(sim.guest, ids)
        )
        assert sim.free_mem_kib - could_take >= required

    sim.change_host_free_memory(required_kib, lambda free: free >= required_kib, opts)
    sim.advance(0.0)
    guaranteed_free(required_kib)
    sim.adjust_free_mem(-500)
    sim.change_host_free_memory(0, lambda free: free <= 32, opts)
    sim.advance(0.0)
    guaranteed_free(0)
    return sim


def scenario_a():
    return [
        (dom(0, 1000, 1500, 2000, 1500, 1500, 4), sq.Behaviour.hidden_floor(100, 1250)),
        (dom(1, 2500, 3500, 4500, 3500, 3500, 4), sq.Behaviour.intermittently_stuck(500, 0.25)),
    ]


def scenario_e():
    return [
        (dom(0, 5000, 7000, 7000, 7000, 7000, 0), sq.Behaviour.stuck()),
        (dom(1, 5000, 6000, 11000, 6000, 6000, 0), sq.Behaviour.ideal(100)),
    ]


def test_a_hidden_floor_and_a_sticky_guest_free_the_memory():
    sim = simulate(scenario_a(), 0, 1000)
    assert sim.violations == 0
    assert sim.guest(0).memory_actual_kib >= 1250


def test_two_sticky_guests_either_side_of_the_stuck_threshold_free_the_memory():
    sim = simulate(
        [
            (dom(1, 500, 3500, 4500, 3500, 3500, 4), sq.Behaviour.intermittently_stuck(100, 3.0)),
            (dom(0, 500, 1500, 2500, 1500, 1500, 4), sq.Behaviour.intermittently_stuck(100, 1.5)),
        ],
        0,
        1000,
    )
    assert sim.violations == 0


def test_dynamic_mins_too_high_is_cannot_free_with_both_amounts():
    # The guests can free 500 + 500 = 1000 KiB at most; 1500 KiB is asked for.
    with pytest.raises(sq.CannotFreeThisMuchMemory) as e:
        simulate(
            [
                (dom(0, 1000, 1500, 2000, 1500, 1500, 0), sq.Behaviour.ideal(100)),
                (dom(1, 2000, 2500, 3000, 2500, 2500, 0), sq.Behaviour.ideal(100)),
            ],
            0,
            1500,
        )
    assert (e.value.required_kib, e.value.free_kib) == (1500, 1000)
    assert e.value.status == 3


def test_a_guest_stuck_above_its_dynamic_min_is_blamed_by_domid():
    with pytest.raises(sq.DomainsRefusedToCooperate) as e:
        simulate(
            [
                (dom(0, 1000, 1500, 2000, 1500, 1500, 0), sq.Behaviour.ideal(100)),
                (dom(1, 2000, 2500, 3000, 2500, 2500, 0), sq.Behaviour.hidden_floor(100, 2250)),
            ],
            0,
            1000,
        )
    assert e.value.domids == [1]


def test_a_stuck_guest_is_worked_around_by_the_other_freeing():
    sim = simulate(scenario_e(), 0, 1000)
    assert sim.violations == 0
    assert sim.guest(0).memory_actual_kib == 7000


def test_without_two_phase_target_sets_a_guest_grows_into_memory_that_is_not_free():
    with pytest.raises(sq.BackendError) as e:
        simulate(scenario_e(), 0, 1000, sq.FIST_DISABLE_TWO_PHASE_TARGET_SETS)
    assert "safety violation" in str(e.value)


def test_without_inaccuracy_compensation_the_host_ends_4_kib_short():
    # Guest 0 stops at its floor (250 KiB freed); guest 1 is asked for the missing 750 and
    # stops 4 KiB short: 250 + 746 = 996 KiB free.
    with pytest.raises(sq.CannotFreeThisMuchMemory) as e:
        simulate(scenario_a(), 0, 1000, sq.FIST_DISABLE_INACCURACY_COMPENSATION)
    assert (e.value.required_kib, e.value.free_kib) == (1000, 996)


def test_a_hidden_ceiling_leaves_its_share_to_a_working_guest():
    sim = simulate(
        [
            (dom(0, 1000, 1500, 2000, 1500, 1500, 4), sq.Behaviour.hidden_ceiling(100, 1500)),
            (dom(1, 1000, 1500, 2000, 1500, 1500, 4), sq.Behaviour.ideal(100)),
        ],
        1000,
        0,
    )
    assert sim.violations == 0
    assert sim.guest(1).memory_actual_kib > 1500


def test_a_persistent_squeezer_drives_the_simulator_through_its_io_view():
    sim = sq.Simulator(time_limit_s=600.0)
    gib = 1 << 20
    for domid in (1, 2):
        sim.add_guest(sq.Domain(domid, True, gib, 2 * gib, 2 * gib, 2 * gib, 2 * gib), sq.Behaviour.ideal(256 << 10))
    s = sq.Squeezer()
    got = s.free_memory_range(sim, gib // 2, gib)
    assert gib // 2 <= got <= gib
    assert sim.free_mem_kib >= got
    s.balance_memory(sim)
    assert sim.is_host_memory_unbalanced() is False
    s.close()


def test_terabyte_guests_pass_through_python_intact():
    tib = 1 << 30
    sim = sq.Simulator(target_host_free_mem_kib=64 << 20, time_limit_s=600.0)
    sim.add_guest(sq.Domain(1, True, 4 * tib, 8 * tib, 8 * tib, 8 * tib, 8 * tib), sq.Behaviour.ideal(tib))
    assert sim.guest(1).dynamic_max_kib == 8 * tib == 8589934592
    with pytest.raises(sq.CannotFreeThisMuchMemory) as e:
        sim.change_host_free_memory(32 * tib)
    assert e.value.required_kib == 34359738368
    assert 4 * tib - 8 <= e.value.free_kib < 32 * tib


def test_one_step_at_a_time_frees_before_it_allocates():
    # Domain 1 must shrink from 3000; domain 2 at its minimum may grow. Only the freeing
    # target is set in the first step: 1000 + (2000 - 8) / 2 = 1996.
    s = sq.Squeezer()
    doms = [
        sq.Domain(1, True, 1000, 3000, 3000, 3000, 3000),
        sq.Domain(2, True, 1000, 1000, 3000, 1000, 1000),
    ]
    r = s.step(doms, free_mem_kib=0, host_target_kib=0, now=0.0)
    assert r.verdict == sq.VERDICT_ADJUST_TARGETS
    assert r.actions == [(1, 1996)]
    assert r.maxmem == [(1, 1996), (2, 1000)]
    assert r.blamed_domids == []
