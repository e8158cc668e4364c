"""A platform written in Python behind sqz_io: outcomes, callback failures, re-entry."""

import math

import pytest

import squeeze as sq

GIB = 1 << 20
MIB = 1 << 10


class PyHost(sq.Io):
    """Two 2 GiB guests that may shrink to 1 GiB, ballooning 256 MiB/s; nothing free."""

    def __init__(self):
        self.t = 0.0
        self.free = 0
        self.doms = {
            d: sq.Domain(d, True, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB) for d in (1, 2)
        }
        self.calls = []

    def make_host(self):
        self.calls.append("make_host")
        return list(self.doms.values()), self.free

    def set_maxmem(self, domid, kib):
        self.calls.append("set_maxmem")
        self.doms[domid].memory_max_kib = kib

    def execute_action(self, domid, target):
        self.calls.append("execute_action")
        self.doms[domid].target_kib = target
        self.doms[domid].memory_max_kib = target

    def wait(self, seconds):
        self.calls.append("wait")
        self.t += seconds
        for d in self.doms.values():
            step = int(256 * MIB * seconds)
            gap = d.target_kib - d.memory_actual_kib
            move = max(-step, min(step, gap))
            d.memory_actual_kib += move
            self.free -= move

    def now(self):
        return self.t


def test_a_python_host_frees_a_gib_half_from_each_guest():
    h = PyHost()
    sq.change_host_free_memory(h, GIB)
    assert h.free >= GIB
    for d in h.doms.values():
        assert abs(d.target_kib - (GIB + GIB // 2)) <= 16


def test_a_python_exception_in_a_callback_surfaces_as_a_callback_error():
    class Broken(PyHost):
        def execute_action(self, domid, target):
            raise RuntimeError(f"xenstore write for domain {domid} failed")

    h = Broken()
    with pytest.raises(sq.CallbackError) as e:
        sq.change_host_free_memory(h, GIB)
    assert isinstance(e.value.__cause__, RuntimeError)
    assert "xenstore write" in str(e.value)
    assert isinstance(e.value, sq.BackendError) and e.value.status == 7
    # After the failure no more Python ran: nothing waited.
    assert "wait" not in h.calls


def test_an_exception_in_wait_or_now_or_make_host_ends_the_call_cleanly():
    for method in ("wait", "now", "make_host", "set_maxmem"):

        class Broken(PyHost):
            pass

        def boom(self, *args, _m=method):
            raise KeyError(_m)

        setattr(Broken, method, boom)
        with pytest.raises(sq.CallbackError) as e:
            sq.change_host_free_memory(Broken(), GIB)
        assert isinstance(e.value.__cause__, KeyError), method


def test_an_exception_in_the_success_function_surfaces_too():
    h = PyHost()

    def success(free):
        raise ValueError("bad success test")

    with pytest.raises(sq.CallbackError) as e:
        sq.change_host_free_memory(h, GIB, success)
    assert isinstance(e.value.__cause__, ValueError)


def test_a_callback_returning_bad_values_is_a_backend_error_naming_it():
    class NaNClock(PyHost):
        def now(self):
            return math.nan

    with pytest.raises(sq.BackendError, match="now"):
        sq.change_host_free_memory(NaNClock(), GIB)

    class Backwards(PyHost):
        def now(self):
            self.calls.append("now")
            return 100.0 if self.calls.count("now") == 1 else 50.0

    with pytest.raises(sq.BackendError, match="backwards"):
        sq.change_host_free_memory(Backwards(), GIB)


def test_duplicate_domains_in_a_snapshot_fail_the_call():
    class Dup(PyHost):
        def make_host(self):
            doms, free = super().make_host()
            return doms + doms[:1], free

    with pytest.raises(sq.CallbackError) as e:
        sq.change_host_free_memory(Dup(), GIB)
    assert isinstance(e.value.__cause__, sq.InvalidArgument)
    assert "twice" in str(e.value.__cause__)


def test_reentering_the_same_squeezer_from_a_callback_is_refused_not_deadlocked():
    s = sq.Squeezer()
    seen = []

    class Reentrant(PyHost):
        def set_maxmem(self, domid, kib):
            if not seen:
                try:
                    s.balance_memory(PyHost())
                except sq.InvalidArgument as e:
                    seen.append(str(e))
            super().set_maxmem(domid, kib)

    h = Reentrant()
    s.change_host_free_memory(h, GIB)
    assert seen and "already in use" in seen[0]
    assert h.free >= GIB
    # A different squeezer, or the stateless functions, may be used from a callback.
    other_ok = []

    class Nested(PyHost):
        def wait(self, seconds):
            if not other_ok:
                sim = sq.Simulator()
                other_ok.append(sq.is_host_memory_unbalanced(sim))
            super().wait(seconds)

    s.change_host_free_memory(Nested(), GIB)
    assert other_ok == [False]


def test_the_binding_declares_every_function_of_the_header():
    import re
    from pathlib import Path

    from squeeze import _native

    header = (Path(__file__).resolve().parents[2] / "include" / "squeeze.h").read_text()
    declared = set(re.findall(r"^[\w ]*?[ *](sqz_\w+)\(", header, re.M))
    assert len(declared) > 30
    assert declared == set(_native.PROTOTYPES)
    for name in declared:
        f = getattr(_native.lib, name)
        assert f.argtypes is not None, name


def test_version_matches_the_packed_number():
    major, minor, patch = map(int, sq.version().split("."))
    assert sq.version_number() == (major << 16) | (minor << 8) | patch


def test_a_second_thread_is_refused_while_a_callback_runs_and_nothing_deadlocks():
    import threading

    s = sq.Squeezer()
    inside = threading.Event()
    release = threading.Event()
    results = {}

    class Blocking(PyHost):
        def wait(self, seconds):
            if not inside.is_set():
                inside.set()
                # Bounded: the test fails rather than hangs if the other thread never answers.
                assert release.wait(timeout=30)
            super().wait(seconds)

    def first():
        h = Blocking()
        s.change_host_free_memory(h, GIB)
        results["first"] = h.free

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(timeout=30)
    # Thread A sits inside a callback of s. The library holds no lock there, so this thread
    # gets an immediate refusal for s, and a different squeezer works normally.
    with pytest.raises(sq.InvalidArgument, match="already in use"):
        s.balance_memory(PyHost())
    other = PyHost()
    sq.Squeezer().change_host_free_memory(other, GIB)
    assert other.free >= GIB
    release.set()
    t.join(timeout=30)
    assert not t.is_alive()
    assert results["first"] >= GIB
