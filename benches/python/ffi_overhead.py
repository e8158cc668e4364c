"""Cost of a call through the C ABI from Python (ctypes): the raw sqz_version call, the
binding's version(), and one squeezer step on a 10-domain host through the binding.
Prints "name ns_per_call" lines."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python"))

import squeeze as sq  # noqa: E402
from squeeze._native import lib  # noqa: E402


def measure(name, n, f):
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) * 1e9 / n)
    print(f"{name} {best:.1f}")


measure("version_raw", 200_000, lib.sqz_version)
measure("version", 200_000, sq.version)
doms = [sq.Domain(i + 1, True, 1 << 20, 2 << 20, 2 << 20, 2 << 20, 2 << 20) for i in range(10)]
s = sq.Squeezer()
clock = [0.0]


def step():
    clock[0] += 0.001
    s.step(doms, 72 << 10, 72 << 10, clock[0])


measure("step10", 5_000, step)
