"""The binding's ctypes structs against include/squeeze.h, as a C compiler lays them out.

The structs in squeeze._native are copied by hand from the header. A small C program, compiled
here against the header, prints sizeof and offsetof of each one and of every field; a struct or
a field that differs from its ctypes copy fails the test, so the two cannot drift apart.
"""

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from squeeze import _native

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "include" / "squeeze.h"

# Structs of the header the binding does not need: the caller-supplied platform is for C
# programs that bring their own Xen access, which Python callers do not.
NOT_BOUND = {"sqz_physinfo", "sqz_platform"}


def header_structs():
    """Names of the structs the header defines with a body (not the opaque handles)."""
    return set(re.findall(r"^typedef struct (sqz_\w+) \{", HEADER.read_text(), re.M))


def binding_structs():
    """The binding's ctypes structs that have fields, by name."""
    return {
        name: cls
        for name, cls in vars(_native).items()
        if isinstance(cls, type)
        and issubclass(cls, ctypes.Structure)
        and cls is not ctypes.Structure
        and "_fields_" in vars(cls)
    }


def c_layout(structs, tmp_path):
    """{(struct, None): sizeof, (struct, field): offsetof} as the C compiler sees the header."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.fail(f"no C compiler ({cc}) to check the binding's structs against the header")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "squeeze.h"']
    lines.append("int main(void) {")
    for name, cls in sorted(structs.items()):
        lines.append(f'    printf("{name} - %zu\\n", sizeof({name}));')
        for field, *_ in cls._fields_:
            lines.append(f'    printf("{name} {field} %zu\\n", offsetof({name}, {field}));')
    lines += ["    return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(
        [cc, "-std=c11", "-Wall", "-Werror", "-I", str(HEADER.parent), str(src), "-o", str(exe)],
        check=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    layout = {}
    for line in out.splitlines():
        name, field, value = line.split()
        layout[(name, None if field == "-" else field)] = int(value)
    return layout


def mismatches(structs, layout):
    """Every size or offset where ctypes and the C compiler disagree."""
    found = []
    for name, cls in sorted(structs.items()):
        if ctypes.sizeof(cls) != layout[(name, None)]:
            found.append(f"sizeof({name}): ctypes {ctypes.sizeof(cls)}, C {layout[(name, None)]}")
        for field, *_ in cls._fields_:
            py, c = getattr(cls, field).offset, layout[(name, field)]
            if py != c:
                found.append(f"offsetof({name}, {field}): ctypes {py}, C {c}")
    return found


def test_every_ctypes_struct_matches_the_header(tmp_path):
    structs = binding_structs()
    assert len(structs) >= 15, f"found only {sorted(structs)}: is the scan broken?"
    layout = c_layout(structs, tmp_path)
    assert mismatches(structs, layout) == []


def test_every_struct_of_the_header_is_bound_or_knowingly_left_out():
    missing = header_structs() - set(binding_structs()) - NOT_BOUND
    assert missing == set(), f"structs of the header with no ctypes copy: {sorted(missing)}"


def test_the_check_catches_a_struct_copied_wrong(tmp_path):
    # sqz_action with its fields swapped: same size, offsets moved.
    class sqz_action(ctypes.Structure):
        _fields_ = [("new_target_kib", ctypes.c_int64), ("domid", ctypes.c_int32)]

    # sqz_maxmem with a field left out: smaller.
    class sqz_maxmem(ctypes.Structure):
        _fields_ = [("domid", ctypes.c_int32)]

    wrong = {"sqz_action": sqz_action, "sqz_maxmem": sqz_maxmem}
    found = mismatches(wrong, c_layout(wrong, tmp_path))
    assert found == [
        "offsetof(sqz_action, new_target_kib): ctypes 0, C 8",
        "offsetof(sqz_action, domid): ctypes 8, C 0",
        "sizeof(sqz_maxmem): ctypes 4, C 16",
    ]
