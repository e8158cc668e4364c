"""Bad input through the binding gets a clear exception and changes nothing."""

import math

import pytest

import squeeze as sq

GIB = 1 << 20


def host():
    sim = sq.Simulator(time_limit_s=600.0)
    sim.add_guest(sq.Domain(1, True, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB), sq.Behaviour.ideal(GIB))
    return sim


def test_negative_and_absurd_sizes_are_invalid_memory_values():
    sim = host()
    with pytest.raises(sq.InvalidMemoryValue):
        sim.change_host_free_memory(-1)
    with pytest.raises(sq.InvalidMemoryValue):
        sim.change_host_free_memory(1 << 51)
    with pytest.raises(sq.InvalidMemoryValue):
        sim.add_guest(sq.Domain(2, True, -5, 1, 1, 1, 1), sq.Behaviour.stuck())
    assert sim.counters["make_host"] == 0


def test_values_wider_than_64_bits_are_refused_not_wrapped():
    sim = host()
    # ctypes alone would pass 2**64 + 5 as 5 KiB.
    with pytest.raises(sq.InvalidMemoryValue):
        sim.change_host_free_memory(2**64 + 5)
    with pytest.raises(sq.InvalidMemoryValue):
        sim.adjust_free_mem(-(2**63) - 1)
    assert sim.free_mem_kib == 0


def test_min_above_max_is_refused_before_anything_moves():
    sim = host()
    with pytest.raises(sq.InvalidMemoryValue, match="above maximum"):
        sim.free_memory_range(GIB, GIB // 2)
    assert sim.guest(1).target_kib == 2 * GIB


def test_wrong_types_are_type_errors():
    sim = host()
    with pytest.raises(TypeError):
        sim.change_host_free_memory(1.5)
    with pytest.raises(TypeError):
        sim.change_host_free_memory("1024")
    with pytest.raises(TypeError):
        sq.change_host_free_memory(object(), 1)


def test_bad_times_and_unknown_ids():
    sim = host()
    with pytest.raises(sq.InvalidArgument):
        sim.advance(math.nan)
    with pytest.raises(sq.InvalidArgument):
        sim.advance(-1.0)
    with pytest.raises(sq.InvalidArgument):
        sim.guest(42)
    with pytest.raises(sq.InvalidArgument):
        sim.remove_guest(42)
    with pytest.raises(sq.InvalidArgument, match="already exists"):
        sim.add_guest(sq.Domain(1, True, 1, 1, 1, 1, 1), sq.Behaviour.stuck())
    with pytest.raises(sq.InvalidArgument, match="unknown behaviour"):
        sim.add_guest(sq.Domain(3, True, 1, 1, 1, 1, 1), sq.Behaviour(99))
    with pytest.raises(sq.InvalidArgument):
        sq.Simulator(fixed_tick_s=-0.1)


def test_bad_options():
    sim = host()
    with pytest.raises(sq.Unsupported):
        sim.balance_memory(sq.Options(fistpoints=8))
    with pytest.raises(sq.InvalidArgument):
        sim.balance_memory(sq.Options(stuck_after_seconds=math.inf))
    with pytest.raises(sq.InvalidArgument):
        sq.Squeezer(sq.Options(stuck_after_seconds=-1))


def test_step_refuses_duplicates_and_backward_time_and_keeps_its_state():
    s = sq.Squeezer()
    d = sq.Domain(1, True, 1000, 3000, 3000, 3000, 3000)
    with pytest.raises(sq.InvalidArgument, match="twice"):
        s.step([d, d], 0, 0, 0.0)
    s.step([d], 0, 0, 5.0)
    with pytest.raises(sq.InvalidArgument, match="backwards"):
        s.step([d], 0, 0, 4.0)
    with pytest.raises(sq.InvalidArgument):
        s.step([d], 0, 0, math.nan)
    assert s.step([d], 0, 0, 6.0).verdict == sq.VERDICT_ADJUST_TARGETS


def test_a_closed_handle_is_refused():
    s = sq.Squeezer()
    s.close()
    s.close()
    with pytest.raises(sq.InvalidArgument, match="closed"):
        s.balance_memory(host())
