#!/usr/bin/env bash
# Builds xl with xl-squeeze-4.17.patch from Debian's source package of the installed
# libxen-dev version, linked against libsqueeze. Only tools/xl is compiled (in seconds), against
# the installed libxenlight, libxlutil and libyajl: the rest of Xen is not built.
#
#   contrib/xl/build-xl.sh [OUTDIR]          default OUTDIR: ./xl-squeeze; result: OUTDIR/xl
#
# Needs: network access to the Debian archive, dpkg-dev, libxen-dev, libyajl-dev, a C compiler, and libsqueeze built with Xen support installed under
# SQUEEZE_PREFIX (default /usr/local): `make install FEATURES=xen PREFIX=/usr/local`.
# XEN_SRC=DIR uses an unpacked Xen source tree of the same version instead of downloading one.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-xl-squeeze}" && cd "${1:-xl-squeeze}" && pwd)
prefix=${SQUEEZE_PREFIX:-/usr/local}
cc=${CC:-cc}

die() { echo "build-xl: $*" >&2; exit 1; }

version=$(dpkg-query -W -f='${Version}' libxen-dev 2>/dev/null) ||
  die "libxen-dev is not installed (apt-get install libxen-dev libyajl-dev)"
upstream=${version%%+*}           # 4.17.7+13-g2445b30a44-0+deb12u1 -> 4.17.7
branch=${upstream%.*}             # 4.17
[[ $branch == 4.17 ]] || die "the patch is for Xen 4.17; the installed libxen-dev is $version"
[[ -f /usr/include/yajl/yajl_gen.h ]] || die "libyajl-dev is not installed"
[[ -f $prefix/include/squeeze.h && -e $prefix/lib/libsqueeze.so ]] ||
  die "no libsqueeze under $prefix: run 'make install FEATURES=xen PREFIX=$prefix' in squeeze"
# grep reads it all: with pipefail, grep -q stopping early would fail the pipeline (SIGPIPE).
nm -D "$prefix/lib/libsqueeze.so" | grep ' T sqz_set_guest_policy$' >/dev/null ||
  die "$prefix/lib/libsqueeze.so is too old for this patch (no sqz_set_guest_policy)"

# Debian's source package of exactly the installed version. Without deb-src lines in apt's
# sources, the archive the installed libxen-dev came from is asked alone, with apt's lists
# in a private directory: the system's apt configuration is left as it is.
fetch_source() {
  if (cd "$out" && apt-get source -qq --only-source "xen=$version") >/dev/null 2>&1; then
    return
  fi
  local origin url dist apt
  origin=$(apt-cache policy libxen-dev | awk -v v="$version" '
    $1 == "***" && $2 == v { found = 1; next }
    found && $2 ~ /^(https?|ftp):/ { print $2, $3; exit }
    found && $1 !~ /^[0-9]+$/ { exit }')
  [[ -n $origin ]] || die "cannot tell which archive libxen-dev $version came from"
  url=${origin% *}
  dist=${origin#* }
  apt=$out/apt
  mkdir -p "$apt/lists/partial"
  echo "deb-src $url ${dist%%/*} ${dist#*/}" >"$apt/sources.list"
  local opts=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$apt/lists")
  apt-get -qq "${opts[@]}" update >/dev/null ||
    die "cannot read the source index of $url ${dist%%/*}"
  (cd "$out" && apt-get -qq "${opts[@]}" source --only-source "xen=$version") >/dev/null ||
    die "apt-get source xen=$version failed (is dpkg-dev installed?)"
}

if [[ -z ${XEN_SRC:-} ]]; then
  if ! ls -d "$out"/xen-*/tools/xl >/dev/null 2>&1; then
    echo "build-xl: fetching Debian's source package xen $version"
    fetch_source
  fi
  XEN_SRC=$(ls -d "$out"/xen-*/ | head -n 1)
fi
[[ -f $XEN_SRC/tools/xl/xl_vmcontrol.c ]] || die "$XEN_SRC is not a Xen source tree"

build=$out/build
rm -rf "$build"
mkdir -p "$build/tools"
cp -r "$XEN_SRC/tools/xl" "$build/tools/xl"
patch -d "$build" -p1 --quiet < "$here/xl-squeeze-4.17.patch"

# What Xen's configure would generate: the paths Debian's xl is built with, and config.h's
# only setting that xl's headers use.
echo '#define HAVE_YAJL_YAJL_VERSION_H 1' > "$build/config.h"
cflags=(
  -O2 -g -Wall -Wno-format-zero-length -Wno-unused-but-set-variable
  -include "$build/config.h"
  -DXEN_CONFIG_DIR='"/etc/xen"'
  -DXEN_SCRIPT_DIR='"/etc/xen/scripts"'
  -DXEN_LOCK_DIR='"/var/lock"'
  -DXEN_DUMP_DIR='"/var/lib/xen/dump"'
  -DXENFIRMWAREDIR="\"/usr/lib/xen-$branch/boot\""
  -I"$XEN_SRC/tools/include" -I"$prefix/include"
)
objs=()
for src in "$build"/tools/xl/*.c; do
  # Intel's resource monitoring commands exist on x86 only, as in tools/xl/Makefile.
  if [[ $(basename "$src") == xl_psr.c && $(uname -m) != x86_64 ]]; then continue; fi
  obj=${src%.c}.o
  "$cc" "${cflags[@]}" -c "$src" -o "$obj"
  objs+=("$obj")
done
"$cc" -o "$out/xl" "${objs[@]}" -lxlutil -lxenlight -lxentoollog -lyajl \
  -L"$prefix/lib" -lsqueeze -ldl -Wl,-rpath,"$prefix/lib"
echo "build-xl: built $out/xl (Xen $version with squeeze)"
