"""Python bindings for squeeze, host memory balancing for Xen (squeezed as a library).

A thin ctypes layer over the C ABI (include/squeeze.h). Failures raise :class:`SqueezeError`
subclasses carrying the structured details (``required_kib``/``free_kib`` for
:class:`CannotFreeThisMuchMemory`, ``domids`` for :class:`DomainsRefusedToCooperate`). An
exception raised by Python code inside a callback ends the call cleanly and is re-raised as
:class:`CallbackError`, with the original as ``__cause__``.

All memory sizes are KiB (Python ints, passed as int64: values outside int64 are refused rather
than wrapped).
"""

import ctypes
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import _native
from ._native import lib

__all__ = [
    "Behaviour",
    "BackendError",
    "BufferTooSmall",
    "CallbackError",
    "CancelToken",
    "Cancelled",
    "CannotFreeThisMuchMemory",
    "Cooperation",
    "DOMAIN_ZERO_BALLOON",
    "DOMAIN_ZERO_FIXED",
    "DeadlineCannotBeMet",
    "Domain",
    "DomainZero",
    "DomainsRefusedToCooperate",
    "FakeDomain",
    "FakeHost",
    "NoReservation",
    "Service",
    "UnknownReservation",
    "InternalError",
    "InvalidArgument",
    "InvalidMemoryValue",
    "Io",
    "Options",
    "POLICY_ADAPTIVE",
    "POLICY_CLASSIC",
    "Progress",
    "SqueezeError",
    "Simulator",
    "Squeezer",
    "StepResult",
    "Unsupported",
    "balance_memory",
    "change_host_free_memory",
    "free_memory_range",
    "is_host_memory_unbalanced",
    "log_to_python",
    "version",
    "version_number",
]

OK = 0
FIST_DISABLE_TWO_PHASE_TARGET_SETS = 1
FIST_DISABLE_INACCURACY_COMPENSATION = 2
VERDICT_SUCCESS, VERDICT_FAILED, VERDICT_ADJUST_TARGETS = 0, 1, 2
ITERATION_WAIT_SECONDS = 1.0

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# --- errors -------------------------------------------------------------------------------


class SqueezeError(Exception):
    """A failed call: ``status`` is the C status code, ``message`` the library's message."""

    status = -1

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(SqueezeError, ValueError):
    """SQZ_ERR_INVALID_ARGUMENT: a malformed argument (NULL, duplicate domid, bad time...)."""

    status = 1


class InvalidMemoryValue(SqueezeError, ValueError):
    """SQZ_ERR_INVALID_MEMORY_VALUE: a negative or absurd size, or min > max."""

    status = 2


class CannotFreeThisMuchMemory(SqueezeError):
    """SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY, with ``required_kib`` and ``free_kib``."""

    status = 3

    def __init__(self, message: str, required_kib: int, free_kib: int):
        super().__init__(message)
        self.required_kib = required_kib
        self.free_kib = free_kib


class DomainsRefusedToCooperate(SqueezeError):
    """SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE, with the ``domids`` that did not balloon."""

    status = 4

    def __init__(self, message: str, domids: List[int]):
        super().__init__(message)
        self.domids = domids


class BackendError(SqueezeError):
    """SQZ_ERR_BACKEND: the platform (a callback, the simulated host) failed."""

    status = 7


class CallbackError(BackendError):
    """A Python callback raised; the original exception is ``__cause__``."""


class Unsupported(SqueezeError):
    """SQZ_ERR_UNSUPPORTED."""

    status = 8


class BufferTooSmall(SqueezeError):
    """SQZ_ERR_BUFFER_TOO_SMALL (the binding sizes buffers itself, so this is a bug)."""

    status = 9


class InternalError(SqueezeError):
    """SQZ_ERR_INTERNAL: a bug inside squeeze."""

    status = 10


class Cancelled(SqueezeError):
    """SQZ_ERR_CANCELLED: the caller stopped a reservation (a :class:`CancelToken`, or a
    progress callback returning ``False``); nothing was reserved."""

    status = 11


class DeadlineCannotBeMet(SqueezeError):
    """SQZ_ERR_DEADLINE: the caller's deadline cannot be met at the balloon rates the guests
    have shown (the message says when the memory would be free), or it passed; nothing was
    reserved."""

    status = 12


_BY_STATUS = {
    cls.status: cls
    for cls in (InvalidArgument, InvalidMemoryValue, BackendError, Unsupported, BufferTooSmall,
                InternalError, Cancelled, DeadlineCannotBeMet)
}
# UnknownReservation and NoReservation are raised by the Service methods, which know the id or
# domid the error is about.


def _last_error() -> SqueezeError:
    status = lib.sqz_last_error_status()
    message = (lib.sqz_last_error_message() or b"").decode("utf-8", "replace")
    if status == CannotFreeThisMuchMemory.status:
        required, free = ctypes.c_int64(), ctypes.c_int64()
        lib.sqz_last_error_cannot_free(ctypes.byref(required), ctypes.byref(free))
        return CannotFreeThisMuchMemory(message, required.value, free.value)
    if status == DomainsRefusedToCooperate.status:
        n = lib.sqz_last_error_domids(None, 0)
        buf = (ctypes.c_int32 * max(n, 1))()
        lib.sqz_last_error_domids(buf, n)
        return DomainsRefusedToCooperate(message, list(buf[:n]))
    cls = _BY_STATUS.get(status, SqueezeError)
    return cls(message, status)


def _check(status: int) -> None:
    if status != OK:
        raise _last_error()


def _kib(name: str, value) -> int:
    """An int64 KiB value; ctypes would silently wrap anything wider."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (KiB), not {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidMemoryValue(f"{name} = {value} KiB does not fit in 64 bits")
    return value


def _domid(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"domid must be an int, not {type(value).__name__}")
    if not -(2**31) <= value < 2**31:
        raise InvalidArgument(f"domid {value} does not fit in 32 bits")
    return value


def _seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    return float(value)


def version() -> str:
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return lib.sqz_version().decode()


def version_number() -> int:
    """The library's version packed as (MAJOR << 16) | (MINOR << 8) | PATCH."""
    return lib.sqz_version_number()


# --- values -------------------------------------------------------------------------------


@dataclass
class Domain:
    """One domain as the balancer sees it; sizes in KiB. ``weight`` (None: 1) is its weight
    in the proportional policy, a number between 0.001 and 1000: its share of the memory
    handed out is proportional to weight x dynamic range."""

    domid: int
    can_balloon: bool
    dynamic_min_kib: int
    target_kib: int
    dynamic_max_kib: int
    memory_actual_kib: int
    memory_max_kib: int
    inaccuracy_kib: int = 4
    weight: Optional[float] = None

    _SIZES = (
        "dynamic_min_kib",
        "target_kib",
        "dynamic_max_kib",
        "memory_actual_kib",
        "memory_max_kib",
        "inaccuracy_kib",
    )

    def _unweighted(self, where: str) -> "Domain":
        # Only a platform's snapshot (make_host) carries weights through the C API.
        if self.weight is not None:
            raise Unsupported(f"domain {self.domid}: {where} takes no weights (set one in make_host)")
        return self

    def _to_c(self) -> _native.sqz_domain:
        sizes = (
            self.dynamic_min_kib,
            self.target_kib,
            self.dynamic_max_kib,
            self.memory_actual_kib,
            self.memory_max_kib,
            self.inaccuracy_kib,
        )
        # The common case in one pass; the slow path names the offending field.
        if not all(type(v) is int and _INT64_MIN <= v <= _INT64_MAX for v in sizes):
            sizes = tuple(_kib(name, getattr(self, name)) for name in self._SIZES)
        return _native.sqz_domain(_domid(self.domid), bool(self.can_balloon), *sizes)

    @classmethod
    def _from_c(cls, d: _native.sqz_domain) -> "Domain":
        return cls(
            d.domid,
            bool(d.can_balloon),
            d.dynamic_min_kib,
            d.target_kib,
            d.dynamic_max_kib,
            d.memory_actual_kib,
            d.memory_max_kib,
            d.inaccuracy_kib,
        )


POLICY_CLASSIC = 0
"""squeezed's algorithm, decision for decision (the default)."""
POLICY_ADAPTIVE = 1
"""The adaptive squeezer: measured balloon rates, remembered limits, cooperation scores."""

DOMAIN_ZERO_FIXED = 0
"""Domain 0 is never ballooned (the service's default, as squeezed's)."""
DOMAIN_ZERO_BALLOON = 1
"""Domain 0 is ballooned like a guest between two sizes."""


@dataclass(frozen=True)
class DomainZero:
    """How the service manages domain 0's memory (KiB): ``policy`` is DOMAIN_ZERO_FIXED or
    DOMAIN_ZERO_BALLOON. Given to :class:`Service`, a ballooned domain 0's ``dynamic_max_kib``
    0 means what it holds when the first service of this boot opens (squeezed's ``auto``);
    answered by :meth:`Service.get_domain_zero_policy`, a fixed domain 0 has what it holds
    in both sizes."""

    policy: int
    dynamic_min_kib: int = 0
    dynamic_max_kib: int = 0


CONCERNS = {0: None, 1: "too slow", 2: "not moving", 3: "stalled and resumed"}
"""What :meth:`Squeezer.cooperation` may report as a domain's concern."""


@dataclass
class Options:
    """Squeezer options: ``fistpoints`` (FIST_* flags), ``stuck_after_seconds``, ``policy``
    (POLICY_CLASSIC or POLICY_ADAPTIVE) and the adaptive policy's ``deadline_s`` (None, the
    default, for no deadline: a request lasts as long as its guests make progress)."""

    fistpoints: int = 0
    stuck_after_seconds: float = 5.0
    policy: int = POLICY_CLASSIC
    deadline_s: Optional[float] = None


@dataclass
class Cooperation:
    """How a domain's balloon driver has been cooperating (see :meth:`Squeezer.cooperation`)."""

    score_s: float
    uncooperative: bool
    concern: Optional[str]


class _OptionsHandle:
    """A sqz_options for the duration of one call (the library copies it)."""

    def __init__(self, options: Optional[Options]):
        self.options = options
        self.ptr = ctypes.c_void_p()

    def __enter__(self):
        if self.options is None:
            return None
        _check(lib.sqz_options_new(ctypes.byref(self.ptr)))
        try:
            fist = self.options.fistpoints
            if isinstance(fist, bool) or not isinstance(fist, int) or not 0 <= fist < 2**32:
                raise InvalidArgument(f"fistpoints must be a 32-bit flag set, not {fist!r}")
            _check(lib.sqz_options_set_fistpoints(self.ptr, fist))
            stuck = _seconds("stuck_after_seconds", self.options.stuck_after_seconds)
            _check(lib.sqz_options_set_stuck_after(self.ptr, stuck))
            policy = self.options.policy
            if isinstance(policy, bool) or not isinstance(policy, int) or not -2**31 <= policy < 2**31:
                raise InvalidArgument(f"policy must be POLICY_CLASSIC or POLICY_ADAPTIVE, not {policy!r}")
            _check(lib.sqz_options_set_policy(self.ptr, policy))
            if self.options.deadline_s is not None:
                deadline = _seconds("deadline_s", self.options.deadline_s)
                _check(lib.sqz_options_set_deadline(self.ptr, deadline))
        except BaseException:
            lib.sqz_options_free(self.ptr)
            raise
        return self.ptr

    def __exit__(self, *exc):
        if self.options is not None:
            lib.sqz_options_free(self.ptr)


# --- the platform -------------------------------------------------------------------------


class Io:
    """A platform written in Python: subclass and implement the five methods.

    ``make_host`` returns ``(domains, free_mem_kib)``. Any exception raised by a method ends
    the library call, which then raises :class:`CallbackError` from it.
    """

    target_host_free_mem_kib: int = 0
    free_memory_tolerance_kib: int = 0

    def make_host(self) -> Tuple[Sequence[Domain], int]:
        raise NotImplementedError

    def set_maxmem(self, domid: int, kib: int) -> None:
        raise NotImplementedError

    def execute_action(self, domid: int, new_target_kib: int) -> None:
        raise NotImplementedError

    def wait(self, seconds: float) -> None:
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError


class _Callbacks:
    """C callbacks over a Python Io (and success function), alive for one library call.

    The first exception raised by Python code is kept; every later callback then fails at
    once, so the library unwinds without running more Python, and the exception is re-raised
    when the call returns.
    """

    def __init__(self, io: Optional[Io], success: Optional[Callable[[int], bool]]):
        self.error: Optional[BaseException] = None
        self.io = io
        self.success_py = success
        self.success = _native.SUCCESS_FN(self._success) if success else _native.SUCCESS_FN()
        self.struct = None
        if io is not None:
            self.struct = _native.sqz_io(
                ctypes.sizeof(_native.sqz_io),
                None,
                _native.MAKE_HOST_FN(self._make_host),
                _native.DOMAIN_FN(self._set_maxmem),
                _native.DOMAIN_FN(self._execute_action),
                _native.WAIT_FN(self._wait),
                _native.NOW_FN(self._now),
                _kib("target_host_free_mem_kib", io.target_host_free_mem_kib),
                _kib("free_memory_tolerance_kib", io.free_memory_tolerance_kib),
            )

    def _guard(self, failed, f, *args):
        if self.error is not None:
            return failed
        try:
            return f(*args)
        except BaseException as e:  # noqa: BLE001 - nothing may unwind into C
            self.error = e
            return failed

    def _make_host(self, _ctx, builder):
        def run():
            domains, free = self.io.make_host()
            for d in domains:
                c = d._to_c()
                _check(lib.sqz_host_builder_add_domain(builder, ctypes.byref(c), ctypes.sizeof(c)))
                if d.weight is not None:
                    w = d.weight
                    if isinstance(w, bool) or not isinstance(w, (int, float)):
                        raise InvalidArgument(f"domain {d.domid}: weight must be a number, not {w!r}")
                    _check(lib.sqz_host_builder_set_weight(builder, c.domid, float(w)))
            _check(lib.sqz_host_builder_set_free_mem(builder, _kib("free_mem_kib", free)))
            return 0

        return self._guard(-1, run)

    def _set_maxmem(self, _ctx, domid, kib):
        return self._guard(-1, lambda: (self.io.set_maxmem(domid, kib), 0)[1])

    def _execute_action(self, _ctx, domid, target):
        return self._guard(-1, lambda: (self.io.execute_action(domid, target), 0)[1])

    def _wait(self, _ctx, seconds):
        self._guard(None, self.io.wait, seconds)

    def _now(self, _ctx):
        return self._guard(math.nan, lambda: float(self.io.now()))

    def _success(self, _ctx, free):
        return self._guard(False, lambda: bool(self.success_py(free)))

    def io_ptr(self):
        return ctypes.byref(self.struct)

    def finish(self, status: int) -> None:
        """Raises the kept Python exception, else the library's error, if any."""
        if isinstance(self.error, (KeyboardInterrupt, SystemExit)):
            raise self.error
        if self.error is not None:
            message = (lib.sqz_last_error_message() or b"").decode("utf-8", "replace")
            err = CallbackError(
                f"a Python callback raised {type(self.error).__name__}: {self.error}"
                + (f" ({message})" if message else ""),
                BackendError.status,
            )
            raise err from self.error
        _check(status)


def _call(io, success, fn_io, fn_sim):
    """Runs fn_io(io_ptr, success_fn) for a Python Io or fn_sim(sim, success_fn) for a
    Simulator, with the callbacks alive for the call."""
    if isinstance(io, Simulator):
        cb = _Callbacks(None, success)
        status = fn_sim(io._ptr(), cb.success)
    elif isinstance(io, Io):
        cb = _Callbacks(io, success)
        status = fn_io(cb.io_ptr(), cb.success)
    else:
        raise TypeError(f"io must be a squeeze.Io or a squeeze.Simulator, not {type(io).__name__}")
    cb.finish(status)


def change_host_free_memory(io, required_kib: int, success=None, options: Optional[Options] = None):
    """Balloons domains until ``success(free_kib)`` holds (default: at least
    ``required_kib`` free), on a fresh squeezer, like squeezed's function of that name."""
    required = _kib("required_kib", required_kib)
    with _OptionsHandle(options) as o:
        _call(
            io,
            success,
            lambda p, s: lib.sqz_change_host_free_memory(p, o, required, s, None),
            lambda sim, s: lib.sqz_sim_change_host_free_memory(sim, o, required, s, None),
        )


def free_memory_range(io, min_kib: int, max_kib: int, options: Optional[Options] = None) -> int:
    """Frees memory for a domain of ``min_kib..max_kib`` and returns how much it may have."""
    lo, hi = _kib("min_kib", min_kib), _kib("max_kib", max_kib)
    out = ctypes.c_int64()
    with _OptionsHandle(options) as o:
        _call(
            io,
            None,
            lambda p, _s: lib.sqz_free_memory_range(p, o, lo, hi, ctypes.byref(out)),
            lambda sim, _s: lib.sqz_sim_free_memory_range(sim, o, lo, hi, ctypes.byref(out)),
        )
    return out.value


def balance_memory(io, options: Optional[Options] = None) -> None:
    """Hands free memory back to the domains until only the slush is free."""
    with _OptionsHandle(options) as o:
        _call(
            io,
            None,
            lambda p, _s: lib.sqz_balance_memory(p, o),
            lambda sim, _s: lib.sqz_sim_balance_memory(sim, o),
        )


def is_host_memory_unbalanced(io, options: Optional[Options] = None) -> bool:
    """Whether a balancing pass would change any domain's target now."""
    out = ctypes.c_bool()
    with _OptionsHandle(options) as o:
        _call(
            io,
            None,
            lambda p, _s: lib.sqz_is_host_memory_unbalanced(p, o, ctypes.byref(out)),
            lambda sim, _s: lib.sqz_sim_is_host_memory_unbalanced(sim, o, ctypes.byref(out)),
        )
    return bool(out.value)


# --- the persistent squeezer --------------------------------------------------------------


@dataclass
class StepResult:
    """What one iteration decided: ``verdict`` (VERDICT_*), targets to set as
    ``[(domid, target_kib)]``, maxmem for every domain as ``[(domid, maxmem_kib)]``, the
    domains blamed for a failure, and the policy's judgement of each domain it has judged,
    as ``{domid: Cooperation}``."""

    verdict: int
    actions: List[Tuple[int, int]] = field(default_factory=list)
    maxmem: List[Tuple[int, int]] = field(default_factory=list)
    blamed_domids: List[int] = field(default_factory=list)
    judgements: Dict[int, "Cooperation"] = field(default_factory=dict)


class _Handle:
    _free = None

    def __init__(self):
        self._handle = ctypes.c_void_p()

    def _ptr(self):
        if not self._handle:
            raise InvalidArgument(f"this {type(self).__name__} is closed")
        return self._handle

    def close(self) -> None:
        """Releases the native object now (also done when garbage-collected)."""
        if self._handle:
            type(self)._free(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class Squeezer(_Handle):
    """A squeezer that remembers stuck balloon drivers between calls."""

    _free = staticmethod(lib.sqz_squeezer_free)

    def __init__(self, options: Optional[Options] = None):
        super().__init__()
        with _OptionsHandle(options) as o:
            _check(lib.sqz_squeezer_new(o, ctypes.byref(self._handle)))

    def change_host_free_memory(self, io, required_kib: int, success=None) -> None:
        required = _kib("required_kib", required_kib)
        with _SimIo(io) as (pyio, view):
            cb = _Callbacks(pyio, success)
            p = cb.io_ptr() if pyio else ctypes.byref(view)
            cb.finish(lib.sqz_squeezer_change_host_free_memory(self._ptr(), p, required, cb.success, None))

    def free_memory_range(self, io, min_kib: int, max_kib: int) -> int:
        lo, hi = _kib("min_kib", min_kib), _kib("max_kib", max_kib)
        out = ctypes.c_int64()
        with _SimIo(io) as (pyio, view):
            cb = _Callbacks(pyio, None)
            p = cb.io_ptr() if pyio else ctypes.byref(view)
            cb.finish(lib.sqz_squeezer_free_memory_range(self._ptr(), p, lo, hi, ctypes.byref(out)))
        return out.value

    def balance_memory(self, io) -> None:
        with _SimIo(io) as (pyio, view):
            cb = _Callbacks(pyio, None)
            p = cb.io_ptr() if pyio else ctypes.byref(view)
            cb.finish(lib.sqz_squeezer_balance_memory(self._ptr(), p))

    def cooperation(self, domid: int) -> Cooperation:
        """How ``domid``'s balloon driver has been cooperating, as this squeezer has seen it."""
        out = _native.sqz_cooperation()
        _check(lib.sqz_squeezer_cooperation(self._ptr(), _domid(domid), ctypes.byref(out)))
        return Cooperation(out.score_s, bool(out.uncooperative), CONCERNS.get(out.concern))

    def begin_operation(self, now: float) -> None:
        """Starts a new operation at ``now`` for :meth:`step` callers."""
        _check(lib.sqz_squeezer_begin_operation(self._ptr(), _seconds("now", now)))

    def step(
        self,
        domains: Sequence[Domain],
        free_mem_kib: int,
        host_target_kib: int,
        now: float,
        success: Optional[Callable[[int], bool]] = None,
    ) -> StepResult:
        """One iteration (classic) or round (adaptive) on a host snapshot, for callers with
        their own event loop; see ``sqz_squeezer_step`` in docs/c-api.md."""
        n = len(domains)
        arr = (_native.sqz_domain * max(n, 1))(*(d._unweighted("step")._to_c() for d in domains))
        actions = (_native.sqz_action * max(n, 1))()
        maxmem = (_native.sqz_maxmem * max(n, 1))()
        blamed = (ctypes.c_int32 * max(n, 1))()
        judged = (_native.sqz_judgement * max(n, 1))()
        r = _native.sqz_step_result(
            ctypes.sizeof(_native.sqz_step_result),
            0,
            actions, n, 0,
            maxmem, n, 0,
            blamed, n, 0,
            judged, n, 0,
        )
        cb = _Callbacks(None, success)
        status = lib.sqz_squeezer_step(
            self._ptr(),
            arr,
            n,
            ctypes.sizeof(_native.sqz_domain),
            _kib("free_mem_kib", free_mem_kib),
            _kib("host_target_kib", host_target_kib),
            _seconds("now", now),
            cb.success,
            None,
            ctypes.byref(r),
        )
        cb.finish(status)
        return StepResult(
            r.verdict,
            [(a.domid, a.new_target_kib) for a in actions[: r.actions_len]],
            [(m.domid, m.maxmem_kib) for m in maxmem[: r.maxmem_len]],
            list(blamed[: r.blamed_len]),
            {
                j.domid: Cooperation(
                    j.cooperation.score_s,
                    bool(j.cooperation.uncooperative),
                    CONCERNS.get(j.cooperation.concern),
                )
                for j in judged[: r.judgements_len]
            },
        )


class _SimIo:
    """Either a Python Io (callbacks) or a Simulator's own sqz_io view."""

    def __init__(self, io):
        if not isinstance(io, (Io, Simulator)):
            raise TypeError(f"io must be a squeeze.Io or a squeeze.Simulator, not {type(io).__name__}")
        self.io = io

    def __enter__(self):
        if isinstance(self.io, Simulator):
            view = _native.sqz_io()
            _check(lib.sqz_sim_io(self.io._ptr(), ctypes.byref(view), ctypes.sizeof(view)))
            return None, view
        return self.io, None

    def __exit__(self, *exc):
        return False


# --- the simulated host -------------------------------------------------------------------


@dataclass
class Behaviour:
    """A simulated balloon driver. Use the constructors below."""

    kind: int
    rate_kib_per_s: int = 0
    limit_kib: int = 0
    seconds: float = 0.0

    @classmethod
    def ideal(cls, rate_kib_per_s: int) -> "Behaviour":
        return cls(0, rate_kib_per_s)

    @classmethod
    def hidden_floor(cls, rate_kib_per_s: int, floor_kib: int) -> "Behaviour":
        return cls(1, rate_kib_per_s, floor_kib)

    @classmethod
    def hidden_ceiling(cls, rate_kib_per_s: int, ceiling_kib: int) -> "Behaviour":
        return cls(2, rate_kib_per_s, ceiling_kib)

    @classmethod
    def stuck(cls) -> "Behaviour":
        return cls(3)

    @classmethod
    def intermittently_stuck(cls, rate_kib_per_s: int, period_s: float) -> "Behaviour":
        return cls(4, rate_kib_per_s, 0, period_s)

    @classmethod
    def sluggish(cls, rate_kib_per_s: int, delay_s: float) -> "Behaviour":
        return cls(5, rate_kib_per_s, 0, delay_s)

    @classmethod
    def no_balloon_driver(cls) -> "Behaviour":
        return cls(6)

    @classmethod
    def trickle(cls, chunk_kib: int, period_s: float) -> "Behaviour":
        return cls(7, 0, chunk_kib, period_s)

    def _to_c(self) -> _native.sqz_behaviour:
        return _native.sqz_behaviour(
            self.kind,
            _kib("rate_kib_per_s", self.rate_kib_per_s),
            _kib("limit_kib", self.limit_kib),
            _seconds("seconds", self.seconds),
        )


class Simulator(_Handle):
    """A deterministic simulated host. Pass it wherever an ``io`` is taken."""

    _free = staticmethod(lib.sqz_sim_free)

    def __init__(
        self,
        free_mem_kib: int = 0,
        target_host_free_mem_kib: int = 0,
        free_memory_tolerance_kib: int = 0,
        fixed_tick_s: float = 0.0,
        time_limit_s: float = 0.0,
    ):
        super().__init__()
        config = _native.sqz_sim_config(
            ctypes.sizeof(_native.sqz_sim_config),
            _kib("free_mem_kib", free_mem_kib),
            _kib("target_host_free_mem_kib", target_host_free_mem_kib),
            _kib("free_memory_tolerance_kib", free_memory_tolerance_kib),
            _seconds("fixed_tick_s", fixed_tick_s),
            _seconds("time_limit_s", time_limit_s),
        )
        _check(lib.sqz_sim_new(ctypes.byref(config), ctypes.byref(self._handle)))

    def add_guest(self, domain: Domain, behaviour: Behaviour) -> None:
        d, b = domain._unweighted("the simulator")._to_c(), behaviour._to_c()
        _check(lib.sqz_sim_add_guest(self._ptr(), ctypes.byref(d), ctypes.sizeof(d), ctypes.byref(b)))

    def remove_guest(self, domid: int) -> None:
        _check(lib.sqz_sim_remove_guest(self._ptr(), _domid(domid)))

    def adjust_free_mem(self, delta_kib: int) -> None:
        _check(lib.sqz_sim_adjust_free_mem(self._ptr(), _kib("delta_kib", delta_kib)))

    def advance(self, seconds: float) -> None:
        _check(lib.sqz_sim_advance(self._ptr(), _seconds("seconds", seconds)))

    @property
    def free_mem_kib(self) -> int:
        out = ctypes.c_int64()
        _check(lib.sqz_sim_free_mem(self._ptr(), ctypes.byref(out)))
        return out.value

    @property
    def time(self) -> float:
        out = ctypes.c_double()
        _check(lib.sqz_sim_time(self._ptr(), ctypes.byref(out)))
        return out.value

    def guest(self, domid: int) -> Domain:
        out = _native.sqz_domain()
        _check(lib.sqz_sim_guest(self._ptr(), _domid(domid), ctypes.byref(out), ctypes.sizeof(out)))
        return Domain._from_c(out)

    @property
    def counters(self) -> dict:
        c = _native.sqz_sim_counters()
        _check(lib.sqz_sim_get_counters(self._ptr(), ctypes.byref(c)))
        return {name: getattr(c, name) for name, _ in c._fields_}

    @property
    def violations(self) -> int:
        out = ctypes.c_size_t()
        _check(lib.sqz_sim_violations(self._ptr(), ctypes.byref(out)))
        return out.value

    def change_host_free_memory(self, required_kib: int, success=None, options=None) -> None:
        change_host_free_memory(self, required_kib, success, options)

    def free_memory_range(self, min_kib: int, max_kib: int, options=None) -> int:
        return free_memory_range(self, min_kib, max_kib, options)

    def balance_memory(self, options=None) -> None:
        balance_memory(self, options)

    def is_host_memory_unbalanced(self, options=None) -> bool:
        return is_host_memory_unbalanced(self, options)


# --- logging --------------------------------------------------------------------------------

_LOG_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: 5}
_log_callback = None  # kept alive while the library may call it


def _on_log(_ctx, level, target, message):
    name = target.decode("utf-8", "replace").replace("::", ".")
    logging.getLogger(name).log(_LOG_LEVELS.get(level, logging.INFO), message.decode("utf-8", "replace"))


def log_to_python(level: Optional[int] = logging.INFO) -> None:
    """Sends the library's log records at ``level`` and above to Python's :mod:`logging`, on
    loggers named after the part of the library that wrote them (``squeeze.driver``,
    ``squeeze.adaptive`` ...). ``None`` stops them. Every target change is logged at INFO with
    its reason; each squeezer iteration at DEBUG."""
    global _log_callback
    if level is None:
        _check(lib.sqz_set_log_callback(_native.LOG_FN(), None, 0))
        _log_callback = None
        return
    if level <= 5:
        max_level = 5
    elif level <= logging.DEBUG:
        max_level = 4
    elif level <= logging.INFO:
        max_level = 3
    elif level <= logging.WARNING:
        max_level = 2
    else:
        max_level = 1
    callback = _native.LOG_FN(_on_log)
    _check(lib.sqz_set_log_callback(callback, None, max_level))
    _log_callback = callback


# --- the memory service -------------------------------------------------------------------


class UnknownReservation(SqueezeError, KeyError):
    """SQZ_ERR_UNKNOWN_RESERVATION: the session holds no reservation ``reservation_id``."""

    status = 5

    def __init__(self, message: str, reservation_id: Optional[str] = None):
        super().__init__(message)
        self.reservation_id = reservation_id

    def __str__(self):
        return self.message


class NoReservation(SqueezeError, LookupError):
    """SQZ_ERR_NO_RESERVATION: domain ``domid`` holds no reservation."""

    status = 6

    def __init__(self, message: str, domid: Optional[int] = None):
        super().__init__(message)
        self.domid = domid


def _text(name: str, value) -> bytes:
    """A string argument for the C ABI; the library itself checks its form."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidArgument(f"{name} holds a NUL character")
    return value.encode("utf-8")


def _check_service(status: int, reservation_id: Optional[str] = None, domid: Optional[int] = None):
    if status == UnknownReservation.status:
        raise UnknownReservation(_last_error().message, reservation_id)
    if status == NoReservation.status:
        raise NoReservation(_last_error().message, domid)
    _check(status)


@dataclass
class FakeDomain:
    """A fake host's domain as its hypervisor reports it; sizes in KiB."""

    tot_kib: int
    max_kib: int
    booted: bool


class FakeHost(_Handle):
    """A fake host for tests: a store with xenstore's semantics and simulated guests whose
    balloon drivers follow ``memory/target``. In this process only, or (with ``directory``) in
    a directory other processes open with :meth:`open`. Time is simulated."""

    _free = staticmethod(lib.sqz_fake_host_free)

    def __init__(
        self,
        total_kib: int = 8 << 20,
        xen_kib: int = 256 << 10,
        dom0_kib: int = 1 << 20,
        boot_delay_s: float = 1.0,
        directory: Optional[str] = None,
    ):
        super().__init__()
        c = _native.sqz_fake_config(
            ctypes.sizeof(_native.sqz_fake_config),
            _kib("total_kib", total_kib),
            _kib("xen_kib", xen_kib),
            _kib("dom0_kib", dom0_kib),
            _seconds("boot_delay_s", boot_delay_s),
        )
        if directory is None:
            _check(lib.sqz_fake_host_new(ctypes.byref(c), ctypes.byref(self._handle)))
        else:
            d = _text("directory", str(directory))
            _check(lib.sqz_fake_host_create(d, ctypes.byref(c), ctypes.byref(self._handle)))

    @classmethod
    def open(cls, directory: str) -> "FakeHost":
        """Opens the fake host another process created in ``directory``."""
        host = cls.__new__(cls)
        _Handle.__init__(host)
        _check(lib.sqz_fake_host_open(_text("directory", str(directory)), ctypes.byref(host._handle)))
        return host

    def create_domain(
        self,
        dynamic_min_kib: int,
        dynamic_max_kib: int,
        target_kib: Optional[int] = None,
        offset_kib: int = 0,
        behaviour: Optional["Behaviour"] = None,
    ) -> int:
        """Creates a paused, empty PV domain and returns its domid."""
        b = behaviour or Behaviour.ideal(256 << 10)
        g = _native.sqz_fake_guest(
            ctypes.sizeof(_native.sqz_fake_guest),
            _kib("target_kib", dynamic_max_kib if target_kib is None else target_kib),
            _kib("dynamic_min_kib", dynamic_min_kib),
            _kib("dynamic_max_kib", dynamic_max_kib),
            _kib("offset_kib", offset_kib),
            b._to_c(),
        )
        out = ctypes.c_int32(-1)
        _check(lib.sqz_fake_host_create_domain(self._ptr(), ctypes.byref(g), ctypes.sizeof(g), ctypes.byref(out)))
        return out.value

    def build_domain(self, domid: int, kib: int) -> None:
        """Allocates ``kib`` KiB to a domain, as the domain builder does."""
        _check(lib.sqz_fake_host_build_domain(self._ptr(), _domid(domid), _kib("kib", kib)))

    def unpause(self, domid: int) -> None:
        """Unpauses a domain: it boots after the boot delay."""
        _check(lib.sqz_fake_host_unpause(self._ptr(), _domid(domid)))

    def destroy_domain(self, domid: int, over_s: float = 0.0) -> None:
        """Destroys a domain: its memory returns to the host, at once, or evenly over
        ``over_s`` seconds of simulated time while the domain is dying (``math.inf``: a
        domain stuck dying)."""
        if over_s == 0:
            _check(lib.sqz_fake_host_destroy_domain(self._ptr(), _domid(domid)))
        else:
            s = _seconds("over_s", over_s)
            _check(lib.sqz_fake_host_destroy_domain_over(self._ptr(), _domid(domid), s))

    def scrub(self, kib: int, over_s: float) -> None:
        """Hands ``kib`` KiB of free memory to Xen's scrubber, as Xen does with a destroyed
        domain's pages: nothing can allocate them until they come back to the free pool,
        evenly over ``over_s`` seconds of simulated time (``math.inf``: a scrubber that never
        finishes)."""
        s = _seconds("over_s", over_s)
        _check(lib.sqz_fake_host_scrub_over(self._ptr(), _kib("kib", kib), s))

    def advance(self, seconds: float) -> None:
        """Lets simulated time pass."""
        _check(lib.sqz_fake_host_advance(self._ptr(), _seconds("seconds", seconds)))

    def domain(self, domid: int) -> FakeDomain:
        out = _native.sqz_fake_domain()
        _check(lib.sqz_fake_host_domain(self._ptr(), _domid(domid), ctypes.byref(out)))
        return FakeDomain(out.tot_kib, out.max_kib, out.booted)

    def free_mem_kib(self) -> int:
        out = ctypes.c_int64()
        _check(lib.sqz_fake_host_free_mem(self._ptr(), ctypes.byref(out)))
        return out.value


@dataclass(frozen=True)
class Progress:
    """How far a reservation that waits for ballooning has got: host free memory grown by
    ``freed_kib`` of the ``needed_kib`` it had to grow, after ``elapsed_s`` seconds; ``eta_s`` is
    the estimated time left at the speed seen so far (``None`` until something was freed)."""

    freed_kib: int
    needed_kib: int
    elapsed_s: float
    eta_s: Optional[float]


class CancelToken(_Handle):
    """Cancels the reservations it is given, from any thread: :meth:`cancel` makes a waiting
    :meth:`Service.reserve_memory` raise :class:`Cancelled` promptly, having reserved nothing.
    Once cancelled it stays cancelled."""

    _free = staticmethod(lib.sqz_cancel_free)

    def __init__(self):
        super().__init__()
        _check(lib.sqz_cancel_new(ctypes.byref(self._handle)))

    def cancel(self) -> None:
        """Asks every reservation using this token to stop."""
        _check(lib.sqz_cancel_request(self._ptr()))


class _ReserveCall:
    """The C options for one reservation, and the Python exception its callback raised."""

    def __init__(self, progress, cancel, deadline=None):
        self.error = None
        self._progress = progress
        self.c_options = None
        if progress is None and cancel is None and deadline is None:
            return
        deadline_s = 0.0 if deadline is None else _seconds("deadline", deadline)
        if deadline is not None and deadline_s <= 0.0:
            raise InvalidArgument(f"deadline must be a positive number of seconds, not {deadline!r}")
        if cancel is not None and not isinstance(cancel, CancelToken):
            raise TypeError(f"cancel must be a squeeze.CancelToken, not {type(cancel).__name__}")
        self._callback = _native.PROGRESS_FN(self._on_progress) if progress else _native.PROGRESS_FN()
        self.c_options = _native.sqz_reserve_options(
            ctypes.sizeof(_native.sqz_reserve_options),
            self._callback,
            None,
            cancel._ptr() if cancel is not None else None,
            deadline_s,
        )

    def _on_progress(self, _ctx, p):
        try:
            r = p.contents
            eta = r.eta_s if r.eta_s >= 0 else None
            keep_going = self._progress(Progress(r.freed_kib, r.needed_kib, r.elapsed_s, eta))
            return 0 if keep_going is None or keep_going else 1
        except BaseException as e:  # noqa: BLE001 - re-raised once the library returns
            self.error = e
            return 1

    def options(self):
        return ctypes.byref(self.c_options) if self.c_options is not None else None

    def check(self, status: int) -> None:
        if self.error is not None:
            raise CallbackError("the progress callback raised", BackendError.status) from self.error
        _check(status)


class _ServiceConfig:
    """An ``sqz_service_config`` with the given settings (``None``: the default), for the
    duration of a ``with`` block."""

    def __init__(
        self, lock_path, slush_kib, boot_time_record_path, options, balance_interval_s,
        domain_zero=None, lock_timeout_s=None, dying_wait_s=None,
    ):
        self._cfg = ctypes.c_void_p()
        _check(lib.sqz_service_config_new(ctypes.byref(self._cfg)))
        cfg = self._cfg
        try:
            if lock_path is not None:
                _check(lib.sqz_service_config_set_lock_path(cfg, _text("lock_path", str(lock_path))))
            if slush_kib is not None:
                _check(lib.sqz_service_config_set_slush(cfg, _kib("slush_kib", slush_kib)))
            if boot_time_record_path is not None:
                p = _text("boot_time_record_path", str(boot_time_record_path))
                _check(lib.sqz_service_config_set_boot_time_record_path(cfg, p))
            if balance_interval_s is not None:
                s = _seconds("balance_interval_s", balance_interval_s)
                _check(lib.sqz_service_config_set_balance_interval(cfg, s))
            if lock_timeout_s is not None:
                s = _seconds("lock_timeout_s", lock_timeout_s)
                _check(lib.sqz_service_config_set_lock_timeout(cfg, s))
            if dying_wait_s is not None:
                s = _seconds("dying_wait_s", dying_wait_s)
                _check(lib.sqz_service_config_set_dying_wait(cfg, s))
            with _OptionsHandle(options) as o:
                _check(lib.sqz_service_config_set_options(cfg, o))
            if domain_zero is not None:
                if not isinstance(domain_zero, DomainZero):
                    raise TypeError("domain_zero must be a squeeze.DomainZero")
                _check(lib.sqz_service_config_set_domain_zero(
                    cfg,
                    domain_zero.policy,
                    _kib("dynamic_min_kib", domain_zero.dynamic_min_kib),
                    _kib("dynamic_max_kib", domain_zero.dynamic_max_kib),
                ))
        except BaseException:
            lib.sqz_service_config_free(cfg)
            raise

    def __enter__(self):
        return self._cfg

    def __exit__(self, *exc):
        lib.sqz_service_config_free(self._cfg)
        return False


class Service(_Handle):
    """The memory service (sessions and reservations, squeezed's ``Memory_interface``) over a
    :class:`FakeHost`, or over this host's Xen with :meth:`open_xen`. Every process sharing a
    host must use the same ``lock_path``. ``policy`` is POLICY_ADAPTIVE (the default: one adaptive
    squeezer for the service's life; see :meth:`cooperation`) or POLICY_CLASSIC (squeezed's
    algorithm, a fresh squeezer per call). ``domain_zero`` (a :class:`DomainZero`; default fixed)
    says whether domain 0 is ballooned. ``lock_timeout_s`` bounds the wait for the host lock
    (default 60 s; then :class:`BackendError`). ``dying_wait_s`` bounds how long a reservation
    waits for memory that dying domains are giving back before guests are ballooned for it
    (default 60 s; 0 never waits, as squeezed). Use as a context manager, or call
    :meth:`close`. Thread-safe."""

    _free = staticmethod(lib.sqz_service_free)

    def __init__(
        self,
        fake: FakeHost,
        lock_path: Optional[str] = None,
        slush_kib: Optional[int] = None,
        boot_time_record_path: Optional[str] = None,
        options: Optional[Options] = None,
        balance_interval_s: Optional[float] = None,
        policy: Optional[int] = None,
        domain_zero: Optional[DomainZero] = None,
        lock_timeout_s: Optional[float] = None,
        dying_wait_s: Optional[float] = None,
    ):
        super().__init__()
        if policy is not None and (
            isinstance(policy, bool) or not isinstance(policy, int) or not -2**31 <= policy < 2**31
        ):
            raise InvalidArgument(f"policy must be POLICY_CLASSIC or POLICY_ADAPTIVE, not {policy!r}")
        if not isinstance(fake, FakeHost):
            raise TypeError(f"fake must be a squeeze.FakeHost, not {type(fake).__name__}")
        settings = (lock_path, slush_kib, boot_time_record_path, options, balance_interval_s,
                    domain_zero)
        with _ServiceConfig(
            *settings, lock_timeout_s=lock_timeout_s, dying_wait_s=dying_wait_s
        ) as cfg:
            if policy is not None:
                _check(lib.sqz_service_config_set_policy(cfg, policy))
            _check(lib.sqz_service_new_fake(fake._ptr(), cfg, ctypes.byref(self._handle)))

    @classmethod
    def open_xen(
        cls,
        lock_path: Optional[str] = None,
        slush_kib: Optional[int] = None,
        boot_time_record_path: Optional[str] = None,
        options: Optional[Options] = None,
        balance_interval_s: Optional[float] = None,
        policy: Optional[int] = None,
        domain_zero: Optional[DomainZero] = None,
        lock_timeout_s: Optional[float] = None,
        dying_wait_s: Optional[float] = None,
    ) -> "Service":
        """The service over this host's Xen (libxenctrl and xenstored). Raises
        :class:`Unsupported` when libsqueeze was built without Xen support (cargo feature
        ``xen``), :class:`BackendError` with the reason when there is no usable Xen here."""
        self = cls.__new__(cls)
        _Handle.__init__(self)
        settings = (lock_path, slush_kib, boot_time_record_path, options, balance_interval_s,
                    domain_zero)
        with _ServiceConfig(
            *settings, lock_timeout_s=lock_timeout_s, dying_wait_s=dying_wait_s
        ) as cfg:
            if policy is not None:
                _check(lib.sqz_service_config_set_policy(cfg, policy))
            _check(lib.sqz_service_new_xen(cfg, ctypes.byref(self._handle)))
        return self

    def login(self, service_name: str) -> str:
        """Starts a session; returns its id (the name). Drops the service's untransferred
        reservations, as squeezed does."""
        _check(lib.sqz_login(self._ptr(), _text("service_name", service_name)))
        return service_name

    def cooperation(self, domid: int) -> Cooperation:
        """How ``domid``'s balloon driver has been cooperating, as the service's adaptive
        squeezer has seen it (POLICY_ADAPTIVE only: the classic policy keeps no scores)."""
        out = _native.sqz_cooperation()
        _check(lib.sqz_service_cooperation(self._ptr(), _domid(domid), ctypes.byref(out)))
        return Cooperation(out.score_s, bool(out.uncooperative), CONCERNS.get(out.concern))

    def reserve_memory(
        self,
        session: str,
        kib: int,
        progress: Optional[Callable[[Progress], Optional[bool]]] = None,
        cancel: Optional[CancelToken] = None,
        deadline: Optional[float] = None,
    ) -> str:
        """Frees ``kib`` KiB and sets it aside; returns the reservation id.

        ``progress`` is called with a :class:`Progress` before each wait for the balloon
        drivers (on this thread); returning ``False`` stops the reservation. ``cancel`` lets
        another thread stop it. A stopped reservation raises :class:`Cancelled`; an exception
        raised by ``progress`` stops it too and is re-raised as :class:`CallbackError`.
        ``deadline`` (seconds; None for none): the reservation raises
        :class:`DeadlineCannotBeMet` as soon as the guests' measured balloon rates predict it
        cannot be met (adaptive policy) or when it passes (classic)."""
        buf = ctypes.create_string_buffer(_native.RESERVATION_ID_SIZE)
        s, k = _text("session", session), _kib("kib", kib)
        call = _ReserveCall(progress, cancel, deadline)
        if call.c_options is None:
            status = lib.sqz_reserve_memory(self._ptr(), s, k, buf)
        else:
            status = lib.sqz_reserve_memory_with(self._ptr(), s, k, call.options(), buf)
        call.check(status)
        return buf.value.decode()

    def reserve_memory_range(
        self,
        session: str,
        min_kib: int,
        max_kib: int,
        progress: Optional[Callable[[Progress], Optional[bool]]] = None,
        cancel: Optional[CancelToken] = None,
        deadline: Optional[float] = None,
    ) -> Tuple[str, int]:
        """Frees what the policy gives a domain of ``min_kib..=max_kib``; returns the
        reservation id and the amount. ``progress``, ``cancel`` and ``deadline`` as for
        :meth:`reserve_memory`."""
        buf = ctypes.create_string_buffer(_native.RESERVATION_ID_SIZE)
        got = ctypes.c_int64()
        s, lo, hi = _text("session", session), _kib("min_kib", min_kib), _kib("max_kib", max_kib)
        call = _ReserveCall(progress, cancel, deadline)
        if call.c_options is None:
            status = lib.sqz_reserve_memory_range(self._ptr(), s, lo, hi, buf, ctypes.byref(got))
        else:
            status = lib.sqz_reserve_memory_range_with(
                self._ptr(), s, lo, hi, call.options(), buf, ctypes.byref(got)
            )
        call.check(status)
        return buf.value.decode(), got.value

    def transfer_reservation_to_domain(self, session: str, reservation_id: str, domid: int) -> None:
        """Hands a reservation to a domain that now exists and is being built (not domain 0, not
        a booted guest, not one that already holds a reservation: those are refused)."""
        status = lib.sqz_transfer_reservation_to_domain(
            self._ptr(), _text("session", session), _text("reservation_id", reservation_id), _domid(domid)
        )
        _check_service(status, reservation_id=reservation_id, domid=domid)

    def delete_reservation(self, session: str, reservation_id: str) -> None:
        """Deletes a reservation, transferred or not."""
        status = lib.sqz_delete_reservation(
            self._ptr(), _text("session", session), _text("reservation_id", reservation_id)
        )
        _check_service(status, reservation_id=reservation_id)

    def query_reservation_of_domain(self, session: str, domid: int) -> str:
        """The id of the reservation transferred to ``domid``; :class:`NoReservation` if none."""
        buf = ctypes.create_string_buffer(_native.RESERVATION_ID_SIZE)
        status = lib.sqz_query_reservation_of_domain(self._ptr(), _text("session", session), _domid(domid), buf)
        _check_service(status, domid=domid)
        return buf.value.decode()

    def balance_memory(self) -> None:
        """Hands free memory above the slush back to the domains."""
        _check(lib.sqz_service_balance_memory(self._ptr()))

    def start_balancer(self) -> None:
        """Starts the background balancer (every ``balance_interval_s``, real time)."""
        _check(lib.sqz_service_start_balancer(self._ptr()))

    def stop_balancer(self) -> None:
        """Stops the background balancer and waits for its thread."""
        _check(lib.sqz_service_stop_balancer(self._ptr()))

    def get_host_reserved_memory(self) -> int:
        """The slush, in KiB."""
        out = ctypes.c_int64()
        _check(lib.sqz_get_host_reserved_memory(self._ptr(), ctypes.byref(out)))
        return out.value

    def get_domain_zero_policy(self) -> DomainZero:
        """How domain 0's memory is managed, as xapi asks at start-up (KiB; squeezed answers
        bytes)."""
        p, lo, hi = ctypes.c_int32(), ctypes.c_int64(), ctypes.c_int64()
        _check(lib.sqz_get_domain_zero_policy(
            self._ptr(), ctypes.byref(p), ctypes.byref(lo), ctypes.byref(hi)))
        return DomainZero(p.value, lo.value, hi.value)

    def get_host_initial_free_memory(self) -> int:
        """Host free memory at boot, in KiB."""
        out = ctypes.c_int64()
        _check(lib.sqz_get_host_initial_free_memory(self._ptr(), ctypes.byref(out)))
        return out.value

    def get_diagnostics(self) -> dict:
        """The host, the ledger and the settings, as parsed JSON."""
        import json

        need = ctypes.c_size_t()
        # The document can grow between the two calls (another process reserving): retry.
        for _ in range(5):
            status = lib.sqz_get_diagnostics(self._ptr(), None, 0, ctypes.byref(need))
            if status != BufferTooSmall.status:
                _check(status)
            buf = ctypes.create_string_buffer(need.value)
            status = lib.sqz_get_diagnostics(self._ptr(), buf, need.value, ctypes.byref(need))
            if status == OK:
                return json.loads(buf.value.decode())
            if status != BufferTooSmall.status:
                _check(status)
        raise BufferTooSmall("the diagnostics kept growing", BufferTooSmall.status)

