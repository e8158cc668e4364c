"""Loading libsqueeze and declaring the C ABI of include/squeeze.h for ctypes.

Every function of the header has its argtypes and restype declared here; the test suite checks
that none is missing. The library is found through the SQUEEZE_LIB environment variable, then
the cargo target folder of a source checkout, then the system's library path.
"""

import ctypes
import ctypes.util
import os
from pathlib import Path

from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

sqz_status = c_int32


def _candidates():
    env = os.environ.get("SQUEEZE_LIB")
    if env:
        yield env
        return
    # A source checkout: bindings/python/squeeze/ -> the repository root.
    for parent in Path(__file__).resolve().parents:
        if (parent / "Cargo.toml").exists():
            target = Path(os.environ.get("CARGO_TARGET_DIR", parent / "target"))
            for profile in ("debug", "release"):
                lib = target / profile / "libsqueeze.so"
                if lib.exists():
                    yield str(lib)
            break
    found = ctypes.util.find_library("squeeze")
    if found:
        yield found
    yield "libsqueeze.so.0"


def _load():
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError(
        "cannot load libsqueeze (set SQUEEZE_LIB to its path or run `cargo build`): "
        + "; ".join(errors)
    )


class sqz_domain(Structure):
    _fields_ = [
        ("domid", c_int32),
        ("can_balloon", c_bool),
        ("dynamic_min_kib", c_int64),
        ("target_kib", c_int64),
        ("dynamic_max_kib", c_int64),
        ("memory_actual_kib", c_int64),
        ("memory_max_kib", c_int64),
        ("inaccuracy_kib", c_int64),
    ]


class sqz_host_builder(Structure):
    """Opaque."""


MAKE_HOST_FN = CFUNCTYPE(c_int32, c_void_p, POINTER(sqz_host_builder))
DOMAIN_FN = CFUNCTYPE(c_int32, c_void_p, c_int32, c_int64)
WAIT_FN = CFUNCTYPE(None, c_void_p, c_double)
NOW_FN = CFUNCTYPE(c_double, c_void_p)
SUCCESS_FN = CFUNCTYPE(c_bool, c_void_p, c_int64)
LOG_FN = CFUNCTYPE(None, c_void_p, c_int32, c_char_p, c_char_p)


class sqz_progress(Structure):
    _fields_ = [
        ("freed_kib", c_int64),
        ("needed_kib", c_int64),
        ("elapsed_s", c_double),
        ("eta_s", c_double),
    ]


PROGRESS_FN = CFUNCTYPE(c_int32, c_void_p, POINTER(sqz_progress))


class sqz_reserve_options(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("progress", PROGRESS_FN),
        ("ctx", c_void_p),
        ("cancel", c_void_p),
        ("deadline_s", c_double),
    ]


class sqz_io(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("ctx", c_void_p),
        ("make_host", MAKE_HOST_FN),
        ("set_maxmem", DOMAIN_FN),
        ("execute_action", DOMAIN_FN),
        ("wait", WAIT_FN),
        ("now", NOW_FN),
        ("target_host_free_mem_kib", c_int64),
        ("free_memory_tolerance_kib", c_int64),
    ]


class sqz_sim_config(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("free_mem_kib", c_int64),
        ("target_host_free_mem_kib", c_int64),
        ("free_memory_tolerance_kib", c_int64),
        ("fixed_tick_s", c_double),
        ("time_limit_s", c_double),
    ]


class sqz_behaviour(Structure):
    _fields_ = [
        ("kind", c_int32),
        ("rate_kib_per_s", c_int64),
        ("limit_kib", c_int64),
        ("seconds", c_double),
    ]


class sqz_sim_counters(Structure):
    _fields_ = [
        ("make_host", c_uint64),
        ("actions", c_uint64),
        ("target_changes", c_uint64),
        ("set_maxmem", c_uint64),
        ("waits", c_uint64),
    ]


class sqz_action(Structure):
    _fields_ = [("domid", c_int32), ("new_target_kib", c_int64)]


class sqz_maxmem(Structure):
    _fields_ = [("domid", c_int32), ("maxmem_kib", c_int64)]


class sqz_cooperation(Structure):
    _fields_ = [("score_s", c_double), ("uncooperative", c_bool), ("concern", c_int32)]


class sqz_judgement(Structure):
    _fields_ = [("domid", c_int32), ("cooperation", sqz_cooperation)]


class sqz_step_result(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("verdict", c_int32),
        ("actions", POINTER(sqz_action)),
        ("actions_cap", c_size_t),
        ("actions_len", c_size_t),
        ("maxmem", POINTER(sqz_maxmem)),
        ("maxmem_cap", c_size_t),
        ("maxmem_len", c_size_t),
        ("blamed_domids", POINTER(c_int32)),
        ("blamed_cap", c_size_t),
        ("blamed_len", c_size_t),
        ("judgements", POINTER(sqz_judgement)),
        ("judgements_cap", c_size_t),
        ("judgements_len", c_size_t),
    ]


class sqz_fake_config(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("total_kib", c_int64),
        ("xen_kib", c_int64),
        ("dom0_kib", c_int64),
        ("boot_delay_s", c_double),
    ]


class sqz_fake_guest(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("target_kib", c_int64),
        ("dynamic_min_kib", c_int64),
        ("dynamic_max_kib", c_int64),
        ("offset_kib", c_int64),
        ("behaviour", sqz_behaviour),
    ]


class sqz_fake_domain(Structure):
    _fields_ = [("tot_kib", c_int64), ("max_kib", c_int64), ("booted", c_bool)]


class sqz_domain_info(Structure):
    _fields_ = [
        ("domid", c_int32),
        ("dying", c_bool),
        ("shutdown", c_bool),
        ("paused", c_bool),
        ("hvm", c_bool),
        ("tot_pages", c_uint64),
        ("max_pages", c_uint64),
        ("outstanding_pages", c_uint64),
        ("shared_pages", c_uint64),
    ]


RESERVATION_ID_SIZE = 37

_p = POINTER
_opaque = c_void_p  # sqz_options *, sqz_squeezer *, sqz_sim *

# name: (restype, argtypes)
PROTOTYPES = {
    "sqz_last_error_message": (c_char_p, []),
    "sqz_last_error_status": (sqz_status, []),
    "sqz_last_error_cannot_free": (sqz_status, [_p(c_int64), _p(c_int64)]),
    "sqz_last_error_domids": (c_size_t, [_p(c_int32), c_size_t]),
    "sqz_status_name": (c_char_p, [sqz_status]),
    "sqz_host_builder_set_free_mem": (sqz_status, [_p(sqz_host_builder), c_int64]),
    "sqz_host_builder_add_domain": (
        sqz_status,
        [_p(sqz_host_builder), _p(sqz_domain), c_size_t],
    ),
    "sqz_host_builder_set_weight": (sqz_status, [_p(sqz_host_builder), c_int32, c_double]),
    "sqz_change_host_free_memory": (
        sqz_status,
        [_p(sqz_io), _opaque, c_int64, SUCCESS_FN, c_void_p],
    ),
    "sqz_free_memory_range": (
        sqz_status,
        [_p(sqz_io), _opaque, c_int64, c_int64, _p(c_int64)],
    ),
    "sqz_balance_memory": (sqz_status, [_p(sqz_io), _opaque]),
    "sqz_is_host_memory_unbalanced": (sqz_status, [_p(sqz_io), _opaque, _p(c_bool)]),
    "sqz_squeezer_new": (sqz_status, [_opaque, _p(_opaque)]),
    "sqz_squeezer_free": (None, [_opaque]),
    "sqz_squeezer_change_host_free_memory": (
        sqz_status,
        [_opaque, _p(sqz_io), c_int64, SUCCESS_FN, c_void_p],
    ),
    "sqz_squeezer_free_memory_range": (
        sqz_status,
        [_opaque, _p(sqz_io), c_int64, c_int64, _p(c_int64)],
    ),
    "sqz_squeezer_balance_memory": (sqz_status, [_opaque, _p(sqz_io)]),
    "sqz_squeezer_step": (
        sqz_status,
        [
            _opaque,
            _p(sqz_domain),
            c_size_t,
            c_size_t,
            c_int64,
            c_int64,
            c_double,
            SUCCESS_FN,
            c_void_p,
            _p(sqz_step_result),
        ],
    ),
    "sqz_squeezer_begin_operation": (sqz_status, [_opaque, c_double]),
    "sqz_options_new": (sqz_status, [_p(_opaque)]),
    "sqz_options_free": (None, [_opaque]),
    "sqz_options_set_fistpoints": (sqz_status, [_opaque, c_uint32]),
    "sqz_options_set_stuck_after": (sqz_status, [_opaque, c_double]),
    "sqz_options_set_policy": (sqz_status, [_opaque, c_int32]),
    "sqz_set_log_callback": (sqz_status, [LOG_FN, c_void_p, c_int32]),
    "sqz_options_set_deadline": (sqz_status, [_opaque, c_double]),
    "sqz_squeezer_cooperation": (sqz_status, [_opaque, c_int32, _p(sqz_cooperation)]),
    "sqz_sim_new": (sqz_status, [_p(sqz_sim_config), _p(_opaque)]),
    "sqz_sim_free": (None, [_opaque]),
    "sqz_sim_add_guest": (
        sqz_status,
        [_opaque, _p(sqz_domain), c_size_t, _p(sqz_behaviour)],
    ),
    "sqz_sim_remove_guest": (sqz_status, [_opaque, c_int32]),
    "sqz_sim_adjust_free_mem": (sqz_status, [_opaque, c_int64]),
    "sqz_sim_advance": (sqz_status, [_opaque, c_double]),
    "sqz_sim_free_mem": (sqz_status, [_opaque, _p(c_int64)]),
    "sqz_sim_time": (sqz_status, [_opaque, _p(c_double)]),
    "sqz_sim_guest": (sqz_status, [_opaque, c_int32, _p(sqz_domain), c_size_t]),
    "sqz_sim_get_counters": (sqz_status, [_opaque, _p(sqz_sim_counters)]),
    "sqz_sim_violations": (sqz_status, [_opaque, _p(c_size_t)]),
    "sqz_sim_io": (sqz_status, [_opaque, _p(sqz_io), c_size_t]),
    "sqz_sim_change_host_free_memory": (
        sqz_status,
        [_opaque, _opaque, c_int64, SUCCESS_FN, c_void_p],
    ),
    "sqz_sim_free_memory_range": (
        sqz_status,
        [_opaque, _opaque, c_int64, c_int64, _p(c_int64)],
    ),
    "sqz_sim_balance_memory": (sqz_status, [_opaque, _opaque]),
    "sqz_sim_is_host_memory_unbalanced": (sqz_status, [_opaque, _opaque, _p(c_bool)]),
    "sqz_fake_host_new": (sqz_status, [_p(sqz_fake_config), _p(_opaque)]),
    "sqz_fake_host_create": (sqz_status, [c_char_p, _p(sqz_fake_config), _p(_opaque)]),
    "sqz_fake_host_open": (sqz_status, [c_char_p, _p(_opaque)]),
    "sqz_fake_host_free": (None, [_opaque]),
    "sqz_fake_host_create_domain": (
        sqz_status,
        [_opaque, _p(sqz_fake_guest), c_size_t, _p(c_int32)],
    ),
    "sqz_fake_host_build_domain": (sqz_status, [_opaque, c_int32, c_int64]),
    "sqz_fake_host_unpause": (sqz_status, [_opaque, c_int32]),
    "sqz_fake_host_destroy_domain": (sqz_status, [_opaque, c_int32]),
    "sqz_fake_host_destroy_domain_over": (sqz_status, [_opaque, c_int32, c_double]),
    "sqz_fake_host_scrub_over": (sqz_status, [_opaque, c_int64, c_double]),
    "sqz_fake_host_advance": (sqz_status, [_opaque, c_double]),
    "sqz_fake_host_domain": (sqz_status, [_opaque, c_int32, _p(sqz_fake_domain)]),
    "sqz_fake_host_free_mem": (sqz_status, [_opaque, _p(c_int64)]),
    # The platform table is for C callers; Python tests use the fake host.
    "sqz_domain_list_add": (sqz_status, [c_void_p, _p(sqz_domain_info), c_size_t]),
    "sqz_strings_add": (sqz_status, [c_void_p, c_char_p]),
    "sqz_service_config_new": (sqz_status, [_p(_opaque)]),
    "sqz_service_config_free": (None, [_opaque]),
    "sqz_service_config_set_slush": (sqz_status, [_opaque, c_int64]),
    "sqz_service_config_set_lock_path": (sqz_status, [_opaque, c_char_p]),
    "sqz_service_config_set_boot_time_record_path": (sqz_status, [_opaque, c_char_p]),
    "sqz_service_config_set_options": (sqz_status, [_opaque, _opaque]),
    "sqz_service_config_set_policy": (sqz_status, [_opaque, c_int32]),
    "sqz_service_config_set_domain_zero": (sqz_status, [_opaque, c_int32, c_int64, c_int64]),
    "sqz_get_domain_zero_policy": (sqz_status, [_opaque, _p(c_int32), _p(c_int64), _p(c_int64)]),
    "sqz_service_cooperation": (sqz_status, [_opaque, c_int32, _p(sqz_cooperation)]),
    "sqz_service_config_set_balance_interval": (sqz_status, [_opaque, c_double]),
    "sqz_service_config_set_lock_timeout": (sqz_status, [_opaque, c_double]),
    "sqz_service_config_set_dying_wait": (sqz_status, [_opaque, c_double]),
    "sqz_service_start_balancer": (sqz_status, [_opaque]),
    "sqz_service_stop_balancer": (sqz_status, [_opaque]),
    "sqz_service_new_fake": (sqz_status, [_opaque, _opaque, _p(_opaque)]),
    "sqz_service_new_platform": (sqz_status, [c_void_p, _opaque, _p(_opaque)]),
    "sqz_service_new_xen": (sqz_status, [_opaque, _p(_opaque)]),
    "sqz_service_free": (None, [_opaque]),
    "sqz_login": (sqz_status, [_opaque, c_char_p]),
    "sqz_reserve_memory": (sqz_status, [_opaque, c_char_p, c_int64, c_char_p]),
    "sqz_reserve_memory_range": (
        sqz_status,
        [_opaque, c_char_p, c_int64, c_int64, c_char_p, _p(c_int64)],
    ),
    "sqz_transfer_reservation_to_domain": (sqz_status, [_opaque, c_char_p, c_char_p, c_int32]),
    "sqz_delete_reservation": (sqz_status, [_opaque, c_char_p, c_char_p]),
    "sqz_query_reservation_of_domain": (sqz_status, [_opaque, c_char_p, c_int32, c_char_p]),
    "sqz_set_guest_policy": (
        sqz_status,
        [_opaque, c_int32, c_char_p, c_char_p, c_int64, c_int64],
    ),
    "sqz_service_balance_memory": (sqz_status, [_opaque]),
    "sqz_get_host_reserved_memory": (sqz_status, [_opaque, _p(c_int64)]),
    "sqz_get_host_initial_free_memory": (sqz_status, [_opaque, _p(c_int64)]),
    "sqz_get_diagnostics": (sqz_status, [_opaque, c_char_p, c_size_t, _p(c_size_t)]),
    "sqz_cancel_new": (sqz_status, [_p(_opaque)]),
    "sqz_cancel_request": (sqz_status, [_opaque]),
    "sqz_cancel_free": (None, [_opaque]),
    "sqz_reserve_memory_with": (
        sqz_status,
        [_opaque, c_char_p, c_int64, _p(sqz_reserve_options), c_char_p],
    ),
    "sqz_reserve_memory_range_with": (
        sqz_status,
        [_opaque, c_char_p, c_int64, c_int64, _p(sqz_reserve_options), c_char_p, _p(c_int64)],
    ),
    "sqz_version": (c_char_p, []),
    "sqz_version_number": (c_uint32, []),
}

lib = _load()
for _name, (_restype, _argtypes) in PROTOTYPES.items():
    _f = getattr(lib, _name)
    _f.restype = _restype
    _f.argtypes = _argtypes
