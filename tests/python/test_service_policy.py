"""The service's policy through the Python binding: the adaptive one names a guest that frees
one page every 5 s at once and keeps its cooperation score. Sizes in KiB."""

import pytest

import squeeze

MIB = 1 << 10
GIB = 1 << 20


def booted(host, behaviour):
    # 1..2 GiB, at 2 GiB.
    d = host.create_domain(GIB, 2 * GIB, behaviour=behaviour)
    host.build_domain(d, 2 * GIB)
    host.unpause(d)
    host.advance(2.0)
    return d


def service(host, tmp_path, **kw):
    return squeeze.Service(
        host,
        lock_path=tmp_path / "host.lock",
        boot_time_record_path=tmp_path / "boot_time_memory",
        **kw,
    )


# The service is adaptive unless told otherwise: the default must behave as the named policy.
@pytest.mark.parametrize("policy", [{"policy": squeeze.POLICY_ADAPTIVE}, {}], ids=["named", "default"])
def test_adaptive_service_names_a_trickler_the_request_needs_and_scores_it(tmp_path, policy):
    # 8 GiB host, Xen 256 MiB, domain 0 1 GiB, two 2 GiB guests: 2.75 GiB free. 4 GiB needs
    # 1.25 GiB (+ 72 MiB slush) freed; the fast guest can give 1 GiB, so the trickler must help.
    with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as host:
        trickler = booted(host, squeeze.Behaviour.trickle(4, 5.0))
        fast = booted(host, squeeze.Behaviour.ideal(100 * MIB))
        with service(host, tmp_path, **policy) as s:
            session = s.login("xenopsd")
            with pytest.raises(squeeze.DomainsRefusedToCooperate) as e:
                s.reserve_memory(session, 4 * GIB)
            assert e.value.domids == [trickler]
            c = s.cooperation(trickler)
            assert c.score_s > 0 and c.concern is not None
            assert s.cooperation(fast).concern is None
            # A request the fast guest can cover alone succeeds.
            rid = s.reserve_memory(session, 3 * GIB)
            assert len(rid) == 36
            assert host.free_mem_kib() >= 3 * GIB + 72 * MIB


def test_classic_service_keeps_no_score_and_bad_policies_are_refused(tmp_path):
    with squeeze.FakeHost() as host:
        d = booted(host, squeeze.Behaviour.ideal(100 * MIB))
        with service(host, tmp_path, policy=squeeze.POLICY_CLASSIC) as s:
            s.balance_memory()
            with pytest.raises(squeeze.InvalidArgument, match="classic"):
                s.cooperation(d)
        # The default (adaptive) service keeps scores, but has not seen this guest yet.
        with service(host, tmp_path) as s:
            with pytest.raises(squeeze.InvalidArgument, match="not seen"):
                s.cooperation(d)
        for bad in (2, -1):
            with pytest.raises(squeeze.SqueezeError, match="unknown policy"):
                service(host, tmp_path, policy=bad)
        for bad in (True, "adaptive", 1.0, 2**40):
            with pytest.raises(squeeze.InvalidArgument):
                service(host, tmp_path, policy=bad)
