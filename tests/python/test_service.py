"""The memory service through the Python binding, over the fake host: xenopsd's flow, the
failure flow, bad input, and two processes sharing one fake host. Sizes in KiB; GiB = 1 << 20.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import squeeze

MIB = 1 << 10
GIB = 1 << 20
SLUSH = 72 * MIB  # the default: 64 MiB + 8 MiB


@pytest.fixture
def host():
    # 8 GiB; Xen keeps 256 MiB, domain 0 holds 1 GiB: 6.75 GiB free.
    with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as h:
        yield h


@pytest.fixture
def service(host, tmp_path):
    with squeeze.Service(
        host,
        lock_path=tmp_path / "host.lock",
        boot_time_record_path=tmp_path / "boot_time_memory",
    ) as s:
        yield s


def test_xenopsd_reserves_a_range_hands_it_to_the_new_domain_and_deletes_it(host, service):
    # A running 4 GiB guest that may shrink to 1 GiB; 2.75 GiB free.
    d1 = host.create_domain(GIB, 4 * GIB)
    host.build_domain(d1, 4 * GIB)
    host.unpause(d1)
    host.advance(2.0)
    assert host.free_mem_kib() == 2 * GIB + 768 * MIB

    session = service.login("xenopsd")
    rid, got = service.reserve_memory_range(session, 3 * GIB, 4 * GIB)
    assert len(rid) == 36
    assert 3 * GIB <= got <= 4 * GIB
    assert host.free_mem_kib() >= got + SLUSH
    assert host.domain(d1).tot_kib < 4 * GIB  # it ballooned down to make room

    d2 = host.create_domain(got, got)
    service.transfer_reservation_to_domain(session, rid, d2)
    assert host.domain(d2).max_kib == got
    host.build_domain(d2, got)
    host.unpause(d2)
    host.advance(2.0)
    assert host.domain(d2).booted
    assert service.query_reservation_of_domain(session, d2) == rid

    service.delete_reservation(session, rid)
    with pytest.raises(squeeze.UnknownReservation) as e:
        service.delete_reservation(session, rid)
    assert e.value.reservation_id == rid

    assert service.get_host_reserved_memory() == SLUSH
    assert 0 < service.get_host_initial_free_memory() <= 8 * GIB
    diag = service.get_diagnostics()
    assert diag["settings"]["slush_kib"] == SLUSH
    service.start_balancer()
    assert service.get_diagnostics()["balancer"]["running"]
    service.stop_balancer()
    assert not service.get_diagnostics()["balancer"]["running"]


def test_the_failure_flow_reports_amounts_ids_and_domids(host, service):
    with pytest.raises(squeeze.CannotFreeThisMuchMemory) as e:
        service.reserve_memory("xl", 100 * GIB)
    assert e.value.required_kib == 100 * GIB
    assert e.value.free_kib == 6 * GIB + 768 * MIB - SLUSH

    stranger = "6f1e8a3c-55d2-4c1e-9a8e-0d4b5f6a7b8c"
    with pytest.raises(squeeze.UnknownReservation) as u:
        service.transfer_reservation_to_domain("xl", stranger, 0)
    assert u.value.reservation_id == stranger
    with pytest.raises(squeeze.NoReservation) as n:
        service.query_reservation_of_domain("xl", 0)
    assert n.value.domid == 0

    rid = service.reserve_memory("xl", GIB)
    with pytest.raises(squeeze.InvalidArgument, match="does not exist"):
        service.transfer_reservation_to_domain("xl", rid, 77)
    # A restarted xl logs in again: its untransferred reservation is gone, and the memory with it.
    service.login("xl")
    with pytest.raises(squeeze.UnknownReservation):
        service.delete_reservation("xl", rid)
    service.reserve_memory("xl", 6 * GIB + 768 * MIB - SLUSH)


def test_bad_input_is_refused_and_reserves_nothing(host, service):
    with pytest.raises(squeeze.InvalidMemoryValue):
        service.reserve_memory("xl", -1)
    with pytest.raises(squeeze.InvalidMemoryValue):
        service.reserve_memory("xl", 1 << 51)
    with pytest.raises(squeeze.InvalidMemoryValue, match="above maximum"):
        service.reserve_memory_range("xl", 2 * GIB, GIB)
    with pytest.raises(squeeze.InvalidMemoryValue):
        service.reserve_memory("xl", 1 << 64)
    for bad in ["", "../etc", "a/b", "x" * 129]:
        with pytest.raises(squeeze.InvalidArgument):
            service.login(bad)
    with pytest.raises(squeeze.InvalidArgument, match="NUL"):
        service.reserve_memory("x\0l", GIB)
    with pytest.raises(TypeError):
        service.reserve_memory(None, GIB)
    with pytest.raises(TypeError):
        service.reserve_memory("xl", 1.5)
    with pytest.raises(squeeze.UnknownReservation):
        service.delete_reservation("xl", "not-a-uuid")
    with pytest.raises(squeeze.InvalidArgument):
        service.query_reservation_of_domain("xl", -1)
    with pytest.raises(squeeze.InvalidArgument):
        service.query_reservation_of_domain("xl", 1 << 40)
    with pytest.raises(TypeError):
        squeeze.Service(object())
    with pytest.raises(squeeze.InvalidMemoryValue):
        squeeze.Service(host, slush_kib=-1)
    with pytest.raises(squeeze.InvalidArgument):
        squeeze.Service(host, lock_path="")
    with pytest.raises(squeeze.InvalidArgument):
        squeeze.Service(host, balance_interval_s=0)
    with pytest.raises(squeeze.BackendError):
        squeeze.FakeHost.open("/nonexistent/squeeze-fake")
    with pytest.raises(squeeze.InvalidMemoryValue):
        squeeze.FakeHost(total_kib=-1)
    with pytest.raises(squeeze.InvalidArgument):
        host.advance(float("nan"))
    # Invalid UTF-8 reaches the C layer only through the raw function; it is refused there.
    from squeeze._native import lib

    assert lib.sqz_login(service._ptr(), b"xl\xff") == squeeze.InvalidArgument.status
    # Nothing above reserved anything.
    service.reserve_memory("xl", 6 * GIB + 768 * MIB - SLUSH)
    service.close()
    with pytest.raises(squeeze.InvalidArgument, match="closed"):
        service.login("xl")


WORKER = textwrap.dedent(
    """
    import json, sys
    import squeeze
    directory, lock, session = sys.argv[1:4]
    host = squeeze.FakeHost.open(directory)
    ids = []
    with squeeze.Service(host, lock_path=lock) as s:
        s.login(session)
        while True:
            try:
                ids.append(s.reserve_memory(session, 512 << 10))
            except squeeze.CannotFreeThisMuchMemory:
                break
    print(json.dumps(ids))
    """
)


def test_two_processes_sharing_a_host_never_promise_the_same_memory_twice(tmp_path):
    directory = tmp_path / "host"
    squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB, directory=directory).close()
    lock = tmp_path / "host.lock"
    env_path = str(Path(squeeze.__file__).resolve().parents[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory), str(lock), name],
            stdout=subprocess.PIPE,
            env={**__import__("os").environ, "PYTHONPATH": env_path},
        )
        for name in ("xenopsd", "xl")
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        results.append(json.loads(out))
    # 6.75 GiB free less the 72 MiB slush holds 13 reservations of 512 MiB (6656 MiB), not 14.
    ids = results[0] + results[1]
    assert len(ids) == 13
    assert len(set(ids)) == 13
    with squeeze.Service(squeeze.FakeHost.open(directory), lock_path=lock) as s:
        ledger = s.get_diagnostics()
        text = json.dumps(ledger)
        assert all(i in text for i in ids)


def test_threads_of_one_process_share_a_service_without_double_spending(service):
    import threading

    ids, errors = [], []

    def worker(session):
        service.login(session)
        while True:
            try:
                ids.append(service.reserve_memory(session, 512 * MIB))
            except squeeze.CannotFreeThisMuchMemory:
                return
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # The same 13 reservations of 512 MiB as with two processes, shared among four threads.
    assert len(ids) == 13 and len(set(ids)) == 13


def test_a_service_over_xen_on_a_machine_without_xen_is_a_clear_error(tmp_path):
    # The default libsqueeze has no Xen support and says so; one built with it finds no
    # hypervisor here and says that instead. No service either way, and no hang.
    if Path("/dev/xen/privcmd").exists():
        pytest.skip("this machine runs Xen")
    with pytest.raises((squeeze.Unsupported, squeeze.BackendError)) as e:
        squeeze.Service.open_xen(lock_path=tmp_path / "host.lock")
    if isinstance(e.value, squeeze.Unsupported):
        assert "built without Xen support" in str(e.value)
    else:
        assert "no Xen hypervisor: /dev/xen/privcmd not available" in str(e.value)
    # Bad settings are refused before Xen is even looked for.
    with pytest.raises(squeeze.InvalidMemoryValue):
        squeeze.Service.open_xen(slush_kib=-1)


def test_a_lock_held_by_a_hung_process_ends_the_wait_after_lock_timeout_s(host, tmp_path):
    # Another process takes the host lock and never lets go (until killed).
    lock = tmp_path / "host.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, sys, time
            f = open({str(lock)!r}, "a")
            fcntl.flock(f, fcntl.LOCK_EX)
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(squeeze.InvalidArgument):
            squeeze.Service(host, lock_path=lock, lock_timeout_s=0)
        with squeeze.Service(host, lock_path=lock, lock_timeout_s=0.3) as s:
            with pytest.raises(squeeze.BackendError, match="gave up waiting for the host lock"):
                s.login("xenopsd")
    finally:
        holder.kill()
        holder.wait()


def test_the_wait_for_dying_domains_is_a_setting_and_zero_switches_it_off(host, tmp_path):
    lock = tmp_path / "host.lock"
    for bad in (-1, float("nan"), float("inf"), 86401):
        with pytest.raises(squeeze.InvalidArgument, match="dying domains"):
            squeeze.Service(host, lock_path=lock, dying_wait_s=bad)
    with pytest.raises(TypeError):
        squeeze.Service(host, lock_path=lock, dying_wait_s="soon")
    for ok in (0, 120.5):
        with squeeze.Service(host, lock_path=lock, dying_wait_s=ok) as s:
            s.login("xenopsd")


def test_a_reservation_waits_for_a_dying_domains_memory_instead_of_shrinking_a_guest(tmp_path):
    # A 4 GiB guest (1 GiB at least) and a 2 GiB VM just destroyed, its pages coming back over
    # 10 s; 768 MiB free. 1 GiB for a new VM (1096 MiB free with the slush) is there after
    # 1.6 s of the teardown: waiting for it leaves the guest alone. Without the wait
    # (squeezed's behaviour) the guest is asked to shrink at once and does, at 100 MiB/s.
    def guest_after_reserving(dying_wait_s, name):
        with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as h:
            guest = h.create_domain(GIB, 4 * GIB)
            old = h.create_domain(2 * GIB, 2 * GIB)
            for d, size in ((guest, 4 * GIB), (old, 2 * GIB)):
                h.build_domain(d, size)
                h.unpause(d)
            h.advance(2.0)
            assert h.free_mem_kib() == 768 * MIB
            with squeeze.Service(
                h,
                lock_path=tmp_path / f"{name}.lock",
                boot_time_record_path=tmp_path / f"{name}.boot",
                dying_wait_s=dying_wait_s,
            ) as s:
                session = s.login("xenopsd")
                h.destroy_domain(old, over_s=10.0)
                s.reserve_memory(session, GIB)
                assert h.free_mem_kib() >= GIB + SLUSH
                return h.domain(guest).tot_kib

    assert guest_after_reserving(60.0, "waits") == 4 * GIB
    assert guest_after_reserving(0.0, "squeezed") < 4 * GIB - 64 * MIB


def test_a_domain_stuck_dying_is_a_fake_host_state_and_bad_teardown_times_are_refused(host):
    d = host.create_domain(GIB, GIB)
    host.build_domain(d, GIB)
    host.unpause(d)
    host.advance(2.0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(squeeze.InvalidArgument):
            host.destroy_domain(d, over_s=bad)
    free = host.free_mem_kib()
    host.destroy_domain(d, over_s=float("inf"))
    host.advance(60.0)
    assert host.free_mem_kib() == free  # nothing comes back
    with pytest.raises(squeeze.InvalidArgument):
        host.destroy_domain(d, over_s=1.0)  # already dying


def test_a_reservation_waits_for_the_scrubber_and_a_look_does_not(tmp_path):
    # A 512 MiB..1.5 GiB guest at 1.5 GiB leaves 1.5 GiB free; 1 GiB of it goes to Xen's
    # scrubber, back over 2 s. A look does not wait for it; 1 GiB is reserved once it is back,
    # without touching the guest.
    with squeeze.FakeHost(total_kib=4 * GIB, xen_kib=0, dom0_kib=GIB) as h:
        guest = h.create_domain(512 * MIB, 1536 * MIB)
        h.build_domain(guest, 1536 * MIB)
        h.unpause(guest)
        h.advance(2.0)
        with squeeze.Service(
            h, lock_path=tmp_path / "host.lock", boot_time_record_path=tmp_path / "boot"
        ) as s:
            session = s.login("xl")
            h.scrub(GIB, over_s=2.0)
            assert h.free_mem_kib() == 512 * MIB
            before = s.get_diagnostics()
            assert before["host"]["scrub_kib"] == GIB
            assert s.get_diagnostics()["time_s"] == before["time_s"]
            s.reserve_memory(session, GIB)
            after = s.get_diagnostics()
            assert after["time_s"] - before["time_s"] == 2.0
            assert after["host"]["scrub_kib"] == 0
            assert h.free_mem_kib() == 1536 * MIB
            assert h.domain(guest).tot_kib == 1536 * MIB


def test_bad_scrubs_of_the_fake_host_are_refused(host):
    with pytest.raises(squeeze.InvalidMemoryValue):
        host.scrub(-1, over_s=1.0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(squeeze.InvalidArgument):
            host.scrub(GIB, over_s=bad)
    with pytest.raises(squeeze.InvalidArgument):
        host.scrub(host.free_mem_kib() + 4, over_s=1.0)
