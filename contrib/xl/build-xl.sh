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
# (Not `nm | grep -q`: under pipefail, grep leaving early makes nm die of SIGPIPE.)
grep -q ' T sqz_set_guest_policy$' < <(nm -D "$prefix/lib/libsqueeze.so") ||
  die "$prefix/lib/libsqueeze.so is too old for this patch (no sqz_set_guest_policy)"

# Debian's source package of the installed version or, when the archive no longer serves that
# one (security archives keep indexes of sources whose files are gone), the newest source of
# the same Xen branch that it does serve: xl only uses libxl's API, which is stable within a
# branch, so an xl from 4.17.5's source runs on 4.17.7's libxenlight. The archives that
# libxen-dev's versions come from are asked, with apt's lists in a private directory: the
# system's apt configuration is left as it is.
fetch_source() {
  if (cd "$out" && apt-get source -qq --only-source "xen=$version") >/dev/null 2>&1; then
    source_version=$version
    return
  fi
  local apt=$out/apt
  mkdir -p "$apt/lists/partial"
  apt-cache policy libxen-dev | awk '$2 ~ /^(https?|ftp):/ { split($3, d, "/"); print "deb-src", $2, d[1], d[2] }' |
    sort -u >"$apt/sources.list"
  [[ -s $apt/sources.list ]] || die "cannot tell which archives libxen-dev comes from"
  local opts=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$apt/lists")
  apt-get -qq "${opts[@]}" update >/dev/null || die "cannot read the archives' source indexes"
  # The installed version first, then the branch's others, newest first.
  local candidates
  candidates=$( { echo "$version"
                  apt-cache "${opts[@]}" showsrc xen 2>/dev/null |
                    awk -v b="$branch." '$1 == "Version:" && index($2, b) == 1 { print $2 }' |
                    sort -u -r -V; } | awk '!seen[$0]++')
  local v
  for v in $candidates; do
    if (cd "$out" && apt-get -qq "${opts[@]}" source --only-source "xen=$v") >/dev/null 2>&1; then
      source_version=$v
      return
    fi
    echo "build-xl: the archives do not serve xen $v's source; trying an older $branch"
  done
  die "no Xen $branch source package could be fetched (is dpkg-dev installed?)"
}

source_version=
if [[ -z ${XEN_SRC:-} ]]; then
  if ! ls -d "$out"/xen-*/tools/xl >/dev/null 2>&1; then
    echo "build-xl: fetching Debian's source package xen $version"
    fetch_source
  fi
  XEN_SRC=$(ls -d "$out"/xen-*/ | head -n 1)
  [[ -n $source_version ]] || source_version=$(basename "$XEN_SRC" | sed 's/^xen-//')
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
  -L"$prefix/lib" -lsqueeze -Wl,-rpath,"$prefix/lib"
echo "build-xl: built $out/xl (xl of Xen ${source_version:-$version}, for libxenlight $version, with squeeze)"
