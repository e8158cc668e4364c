"""Domain 0's policy through the Python binding: fixed by default, ballooned when asked, and
what xapi reads back. Sizes in KiB."""

import pytest

import squeeze

MIB = 1 << 10
GIB = 1 << 20


def service(host, tmp_path, **kw):
    return squeeze.Service(
        host,
        lock_path=tmp_path / "host.lock",
        boot_time_record_path=tmp_path / "boot_time_memory",
        **kw,
    )


def test_domain_zero_is_fixed_at_what_it_holds_by_default(tmp_path):
    with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as host:
        with service(host, tmp_path) as s:
            assert s.get_domain_zero_policy() == squeeze.DomainZero(
                squeeze.DOMAIN_ZERO_FIXED, GIB, GIB
            )


def test_a_ballooned_domain_zero_reports_its_range(tmp_path):
    with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as host:
        # 0 for the maximum: what domain 0 holds now, 1 GiB.
        auto = squeeze.DomainZero(squeeze.DOMAIN_ZERO_BALLOON, 512 * MIB, 0)
        with service(host, tmp_path, domain_zero=auto) as s:
            assert s.get_domain_zero_policy() == squeeze.DomainZero(
                squeeze.DOMAIN_ZERO_BALLOON, 512 * MIB, GIB
            )


def test_a_domain_zero_range_upside_down_is_refused(tmp_path):
    with squeeze.FakeHost(total_kib=8 * GIB, xen_kib=256 * MIB, dom0_kib=GIB) as host:
        bad = squeeze.DomainZero(squeeze.DOMAIN_ZERO_BALLOON, 2 * GIB, GIB)
        with pytest.raises(squeeze.InvalidMemoryValue):
            service(host, tmp_path, domain_zero=bad)
        with pytest.raises(squeeze.Unsupported):
            service(host, tmp_path, domain_zero=squeeze.DomainZero(7))
