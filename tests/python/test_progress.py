"""Reservations that wait for ballooning, through the Python binding: progress reports,
cancellation from another thread, and the diagnostics document against its schema. Sizes in
KiB; GiB = 1 << 20."""

import json
import os
import threading
from pathlib import Path

import jsonschema
import pytest

import squeeze

MIB = 1 << 10
GIB = 1 << 20
SLUSH = 72 * MIB
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "diagnostics.schema.json"


@pytest.fixture
def slow(tmp_path):
    """8 GiB host (6.75 GiB free) with a 1..4 GiB guest at 4 GiB that balloons at 64 MiB/s:
    2.75 GiB free. Reserving 3.5 GiB needs 3.5 GiB + 72 MiB - 2.75 GiB = 840 MiB from it."""
    with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as h:
        d = h.create_domain(GIB, 4 * GIB, behaviour=squeeze.Behaviour.ideal(64 * MIB))
        h.build_domain(d, 4 * GIB)
        h.unpause(d)
        h.advance(2.0)
        assert h.free_mem_kib() == 2 * GIB + 768 * MIB
        with squeeze.Service(
            h, lock_path=tmp_path / "host.lock", boot_time_record_path=tmp_path / "boot"
        ) as s:
            yield h, s, d


def test_progress_is_reported_until_the_reservation_is_made(slow):
    host, service, _ = slow
    seen = []
    rid = service.reserve_memory("xenopsd", 3 * GIB + 512 * MIB, progress=seen.append)
    assert len(rid) == 36
    assert len(seen) >= 10
    assert all(p.needed_kib == 840 * MIB for p in seen)
    assert seen[0].freed_kib == 0 and seen[0].eta_s is None
    assert all(a.freed_kib <= b.freed_kib for a, b in zip(seen, seen[1:]))
    assert seen[-1].eta_s is not None and 0 <= seen[-1].eta_s <= 15


def test_a_reservation_cancelled_from_another_thread_reserves_nothing(slow):
    host, service, _ = slow
    token = squeeze.CancelToken()
    waiting, cancelled = threading.Event(), threading.Event()

    def canceller():
        waiting.wait()
        token.cancel()
        cancelled.set()

    t = threading.Thread(target=canceller)
    t.start()
    reports = []

    def progress(p):
        reports.append(p)
        if len(reports) == 3:
            waiting.set()
            assert cancelled.wait(30)

    with pytest.raises(squeeze.Cancelled):
        service.reserve_memory("xenopsd", 3 * GIB + 512 * MIB, progress=progress, cancel=token)
    t.join()
    assert len(reports) == 3
    diag = service.get_diagnostics()
    assert diag["sessions"] == []
    assert diag["host"]["reserved_kib"] == 0
    assert diag["counters"]["reservations_cancelled"] == 1
    assert diag["last_decision"]["outcome"] == "cancelled"
    # What the guest gave so far is free, not held by a reservation.
    assert host.free_mem_kib() > 2 * GIB + 768 * MIB


def test_a_progress_callback_that_returns_false_or_raises_stops_the_reservation(slow):
    host, service, _ = slow
    with pytest.raises(squeeze.Cancelled):
        service.reserve_memory_range("xl", 3 * GIB, 3 * GIB + 512 * MIB, progress=lambda p: False)

    def broken(p):
        raise KeyError("not in the table")

    with pytest.raises(squeeze.CallbackError) as e:
        service.reserve_memory("xl", 3 * GIB + 512 * MIB, progress=broken)
    assert isinstance(e.value.__cause__, KeyError)
    assert service.get_diagnostics()["sessions"] == []
    with pytest.raises(TypeError):
        service.reserve_memory("xl", MIB, cancel="soon")
    # Still usable afterwards.
    service.reserve_memory("xl", 3 * GIB + 512 * MIB)


def test_the_diagnostics_validate_against_the_published_schema(slow):
    host, service, guest = slow
    service.reserve_memory("xenopsd", GIB)
    service.reserve_memory("xl-7", 2 * GIB)
    diag = service.get_diagnostics()
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(diag, schema, cls=jsonschema.Draft202012Validator)
    assert diag["schema_version"] == 3
    assert {s["session"]: s["total_kib"] for s in diag["sessions"]} == {
        "xenopsd": GIB,
        "xl-7": 2 * GIB,
    }
    (d,) = [d for d in diag["domains"] if d["domid"] == guest]
    assert d["target_kib"] < 4 * GIB and d["last_target_change"]["reason"] == "reserve"
    del diag["counters"]["target_writes"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(diag, schema, cls=jsonschema.Draft202012Validator)


def test_a_waiting_reservation_is_in_the_diagnostics_as_pending_until_granted(slow, tmp_path):
    host, service, _ = slow
    # A second client of the same host looks, from another thread, while the first one waits
    # for the guest (outside the host lock, where progress is reported).
    with squeeze.Service(
        host, lock_path=tmp_path / "host.lock", boot_time_record_path=tmp_path / "boot"
    ) as other:
        looks = []
        waiting, looked = threading.Event(), threading.Event()

        def looker():
            waiting.wait(30)
            looks.append(other.get_diagnostics())
            looked.set()

        def hold_on(progress):
            if not waiting.is_set():
                waiting.set()
                looked.wait(30)

        t = threading.Thread(target=looker)
        t.start()
        rid = service.reserve_memory("xenopsd", 3 * GIB + 512 * MIB, progress=hold_on)
        t.join()
        (during,) = looks
        schema = json.loads(SCHEMA.read_text())
        jsonschema.validate(during, schema, cls=jsonschema.Draft202012Validator)
        (p,) = during["pending"]
        assert p["id"] == rid and p["session"] == "xenopsd"
        assert p["min_kib"] == p["max_kib"] == p["need_kib"] == 3 * GIB + 512 * MIB
        assert p["owner_alive"] and p["owner_pid"] == os.getpid()
        assert p["waited_s"] >= 0
        # Waiting is not holding: nothing in the ledger yet.
        assert during["sessions"] == []
        after = other.get_diagnostics()
        assert after["pending"] == []
        assert [r["id"] for s in after["sessions"] for r in s["reservations"]] == [rid]


def test_a_deadline_the_guest_cannot_meet_raises_early_saying_when(slow):
    host, service, _ = slow
    # 840 MiB at 64 MiB/s is about 13 s, against a 3 s deadline.
    seen = []
    with pytest.raises(squeeze.DeadlineCannotBeMet, match="deadline of 3.0 s cannot be met"):
        service.reserve_memory(
            "xenopsd", 3 * GIB + 512 * MIB, progress=seen.append, deadline=3.0
        )
    # It said so before the deadline passed.
    assert seen and seen[-1].elapsed_s < 3.0
    with pytest.raises(squeeze.InvalidArgument):
        service.reserve_memory("xenopsd", GIB, deadline=0)
    # A deadline the guest can meet changes nothing.
    rid, got = service.reserve_memory_range("xenopsd", GIB, GIB, deadline=60.0)
    assert len(rid) == 36 and got == GIB
