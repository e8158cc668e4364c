"""Per-domain weights from a Python platform: two guests of 1..3 GiB at 1 GiB with 1 GiB to
share; weights 1 and 3 split it 256 MiB to 768 MiB (less 16 KiB held back for the drivers'
inaccuracy, 2 x 4 KiB per guest, also split 1:3). Sizes in KiB."""

import math

import pytest

import squeeze as sq

GIB = 1 << 20
MIB = 1 << 10


class TwoGuests(sq.Io):
    def __init__(self, weights):
        self.t = 0.0
        self.free = GIB
        self.doms = {
            d: sq.Domain(d, True, GIB, GIB, 3 * GIB, GIB, GIB, weight=w)
            for d, w in zip((1, 2), weights)
        }

    def make_host(self):
        return list(self.doms.values()), self.free

    def set_maxmem(self, domid, kib):
        self.doms[domid].memory_max_kib = kib

    def execute_action(self, domid, target):
        self.doms[domid].target_kib = target
        self.doms[domid].memory_max_kib = max(self.doms[domid].memory_max_kib, target)

    def wait(self, seconds):
        self.t += seconds
        for d in self.doms.values():
            step = int(GIB * seconds)
            move = max(-step, min(step, d.target_kib - d.memory_actual_kib, self.free))
            d.memory_actual_kib += move
            self.free -= move

    def now(self):
        return self.t


def targets(h):
    return [h.doms[d].target_kib for d in (1, 2)]


def test_weights_1_and_3_split_the_surplus_1_to_3():
    h = TwoGuests([1, 3.0])
    sq.balance_memory(h)
    assert targets(h) == [GIB + 256 * MIB - 4, GIB + 768 * MIB - 12]


def test_equal_weights_are_exactly_no_weights():
    plain, equal = TwoGuests([None, None]), TwoGuests([2.5, 2.5])
    sq.balance_memory(plain)
    sq.balance_memory(equal)
    assert targets(plain) == [GIB + 512 * MIB - 8] * 2
    assert targets(equal) == targets(plain)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, 1e9, True, "3"])
def test_bad_weights_are_refused_and_nothing_changes(bad):
    h = TwoGuests([1, bad])
    with pytest.raises(sq.CallbackError) as e:
        sq.balance_memory(h)
    assert isinstance(e.value.__cause__, sq.InvalidArgument)
    assert "weight" in str(e.value.__cause__)
    assert targets(h) == [GIB, GIB]


def test_step_and_the_simulator_refuse_a_weight_rather_than_ignore_it():
    d = sq.Domain(1, True, GIB, GIB, 3 * GIB, GIB, GIB, weight=2.0)
    with pytest.raises(sq.Unsupported, match="weight"):
        sq.Squeezer().step([d], GIB, 0, 0.0)
    with sq.Simulator() as sim, pytest.raises(sq.Unsupported, match="weight"):
        sim.add_guest(d, sq.Behaviour.ideal(100 * MIB))
