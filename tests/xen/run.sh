#!/usr/bin/env bash
# squeeze on a real Xen hypervisor: boots Xen 4.17 with a Debian 12 dom0 under QEMU (software
# emulation, TCG) and runs tests/xen_real.rs in dom0, where it balloons real PV guests.
#
#   1. builds (or reuses) the images: tests/xen/build-images.sh, cached in target/xen-test
#   2. builds the test program here with --features xen, against this machine's libxen-dev,
#      which is the same Xen version as dom0's tools
#   3. puts it on a small second disk, boots, and dom0's init runs tests/xen/dom0-test.sh
#   4. reads the transcript back from that disk with debugfs and checks the result
#
# A boot that produces no result (the emulator occasionally livelocks or crashes) is tried once
# more. On failure the tail of the Xen/dom0 console is printed.
#
# Environment: SQUEEZE_SKIP_XEN=1 skips it all; XEN_TEST_DIR (cache, default target/xen-test);
# XEN_TEST_TIMEOUT (seconds for one boot, default 1500); XEN_TEST_STALL (seconds without console
# output after which a boot counts as livelocked, default 300); XEN_TEST_SMP (default 2);
# XEN_TEST_TCG_THREAD (QEMU's TCG threading: multi, the default, gives each vCPU a host thread;
# single runs them all on one);
# XEN_SRC (an unpacked Xen 4.17 source tree for the patched xl, instead of Debian's source
# package); XEN_TEST_VALGRIND=1 (one xl create and shutdown under valgrind, a
# diagnostic).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
export XEN_TEST_DIR=${XEN_TEST_DIR:-$top/target/xen-test}
OUT=$XEN_TEST_DIR
TIMEOUT=${XEN_TEST_TIMEOUT:-1500}
STALL=${XEN_TEST_STALL:-300}
SMP=${XEN_TEST_SMP:-2}
TCG_THREAD=${XEN_TEST_TCG_THREAD:-multi}
CARGO=${CARGO:-cargo}

t0=$(date +%s)
log() { printf '[%(%H:%M:%S)T +%4ss] xen-test: %s\n' -1 "$(( $(date +%s) - t0 ))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

if [[ ${SQUEEZE_SKIP_XEN:-0} == 1 ]]; then
  log "skipped (SQUEEZE_SKIP_XEN=1)"
  exit 0
fi

log "step 1/4: images"
"$here/build-images.sh"

log "step 2/4: building tests/xen_real.rs with --features xen (libxen-dev $(dpkg-query -W -f '${Version}' libxen-dev))"
exe=$(cd "$top" && "$CARGO" test --features xen --test xen_real --no-run --message-format=json 2>"$OUT/cargo.log" \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "xen_real" and m.get("executable"):
        print(m["executable"])') || { tail -n 30 "$OUT/cargo.log"; die "cargo could not build the test program"; }
[[ -x $exe ]] || die "no test program built (see $OUT/cargo.log)"

disk=$OUT/test-disk
rm -rf "$disk" "$OUT/test.img"
mkdir -p "$disk"
cp "$exe" "$disk/xen_real"
strip --strip-debug "$disk/xen_real"
install -m 755 "$here/dom0-test.sh" "$disk/dom0-test.sh"

# xl with squeeze (tests/xen/xl-checks.sh): the squeeze tool, libsqueeze and contrib/xl's
# preload library, all with the Xen platform.
log "step 2b/4: squeeze, libsqueeze and the xl preload library with --features xen"
(cd "$top" && "$CARGO" build --features xen --lib 2>>"$OUT/cargo.log" &&
  "$CARGO" build -p squeeze-cli --features xen 2>>"$OUT/cargo.log") ||
  { tail -n 30 "$OUT/cargo.log"; die "cargo could not build squeeze with Xen support"; }
mkdir -p "$disk/lib"
cp "$top/target/debug/libsqueeze.so" "$disk/lib/libsqueeze.so.0"
ln -s libsqueeze.so.0 "$disk/lib/libsqueeze.so"
cp "$top/target/debug/squeeze" "$disk/squeeze"
strip --strip-debug "$disk/lib/libsqueeze.so.0" "$disk/squeeze"
${CC:-cc} -O2 -std=gnu11 -Wall -Wextra -Werror -fPIC -shared -I"$top/include" \
  -o "$disk/lib/squeeze-xl-preload.so" "$top/contrib/xl/preload/squeeze-xl-preload.c" \
  -L"$disk/lib" -lsqueeze -Wl,-rpath,'$ORIGIN' -ldl || die "the preload library does not build"
# contrib/xl's patched xl, built from Debian's Xen source (tools/xl only, seconds; the source
# is cached beside the images). A failure here is not fatal: the xl checks report it as the
# failure of the patched-xl check, with this log.
log "step 2c/4: xl with contrib/xl's patch"
stage=$OUT/squeeze-prefix
rm -rf "$stage" "$OUT/xl-squeeze/build"
mkdir -p "$stage/lib" "$stage/include"
cp "$top/target/debug/libsqueeze.so" "$stage/lib/libsqueeze.so"
cp "$top/include/squeeze.h" "$stage/include/squeeze.h"
if SQUEEZE_PREFIX=$stage bash "$top/contrib/xl/build-xl.sh" "$OUT/xl-squeeze" >"$OUT/build-xl.log" 2>&1; then
  cp "$OUT/xl-squeeze/xl" "$disk/xl-squeeze"
  strip --strip-debug "$disk/xl-squeeze"
  log "  $(tail -n 1 "$OUT/build-xl.log")"
else
  cp "$OUT/build-xl.log" "$disk/build-xl.log"
  log "  the patched xl did not build: $(tail -n 1 "$OUT/build-xl.log")"
fi
install -m 755 "$here/xl-checks.sh" "$disk/xl-checks.sh"
# Diagnostic: valgrind's memcheck (this machine's, Debian 12 as dom0) for one xl create and
# shutdown under it in xl-checks.sh.
if [[ ${XEN_TEST_VALGRIND:-0} == 1 ]]; then
  vg=/usr/libexec/valgrind
  [[ -x /usr/bin/valgrind.bin && -x $vg/memcheck-amd64-linux ]] || die "XEN_TEST_VALGRIND=1: valgrind is not installed"
  mkdir -p "$disk/valgrind"
  cp /usr/bin/valgrind.bin "$disk/valgrind/valgrind"
  cp "$vg/memcheck-amd64-linux" "$vg/vgpreload_core-amd64-linux.so" \
    "$vg/vgpreload_memcheck-amd64-linux.so" "$vg/default.supp" "$disk/valgrind/"
fi
# The guests boot the kernel as a plain ELF: xl's own XZ decompression of a bzImage is slow
# under emulation (half a minute per guest) and was seen to fail there.
python3 "$here/extract-vmlinux.py" "$OUT/vmlinuz" "$disk/guest-vmlinux"
cp "$OUT/guest-initrd.gz" "$disk/guest-initrd.gz"
mkfs.ext4 -q -F -L xentest -d "$disk" "$OUT/test.img" 160M >/dev/null

boot() {
  local console=$1
  # TCG: this machine has no usable hardware virtualisation for Xen. SMAP/SMEP make dom0
  # crash at once under emulation, and MONITOR/MWAIT made boots livelock. The emulated CPU is
  # an AMD one, for which Xen switches FPU state lazily (CR0.TS and #NM traps); under the
  # emulator, processes in dom0 then died now and then of heap corruption in libc (see
  # docs/xen-real.md), so Xen is told to switch it eagerly, as it does on Intel.
  timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    -machine pc -accel "tcg,thread=$TCG_THREAD" -cpu max,-smap,-smep,-monitor -smp "$SMP" -m 1280 \
    -kernel "$OUT/xen" \
    -append "console=com1 com1=115200,8n1 spec-ctrl=eager-fpu dom0_mem=512M,max:512M dom0_max_vcpus=$SMP loglvl=all guest_loglvl=all" \
    -initrd "$OUT/vmlinuz root=/dev/vda ro console=hvc0 init=/sbin/xentest-init,$OUT/initrd.img" \
    -drive "file=$OUT/dom0.img,if=virtio,format=raw,snapshot=on" \
    -drive "file=$OUT/test.img,if=virtio,format=raw" \
    -display none -monitor none -serial "file:$console" -nic none -no-reboot &
  local qemu=$! size last=-1 quiet=0
  # A livelocked emulator prints nothing more; the checks print at least every few minutes.
  while kill -0 "$qemu" 2>/dev/null; do
    sleep 5
    size=$(stat -c %s "$console" 2>/dev/null || echo 0)
    if [[ $size == "$last" ]]; then quiet=$((quiet + 5)); else quiet=0; last=$size; fi
    if ((quiet >= STALL)); then
      log "no console output for ${STALL}s: stopping QEMU"
      kill "$qemu" 2>/dev/null || true
      break
    fi
  done
  wait "$qemu"
}

result=""
for attempt in 1 2; do
  console=$OUT/console-$attempt.log
  log "step 3/4: booting Xen + dom0 under QEMU (attempt $attempt, timeout ${TIMEOUT}s, console in $console)"
  bstart=$(date +%s)
  # Nothing from an earlier boot may be taken for this one's result (debugfs leaves the
  # output file alone when the disk has no transcript).
  rm -f "$console" "$OUT/transcript.txt"
  set +e
  boot "$console"
  qrc=$?
  set -e
  log "QEMU exited with $qrc after $(( $(date +%s) - bstart )) s"
  debugfs -R "dump /transcript.txt $OUT/transcript.txt" "$OUT/test.img" >/dev/null 2>&1 || true
  # A boot counts once both sets of checks finished (each prints its result line).
  if [[ -s $OUT/transcript.txt ]] && result=$(grep -a '^RESULT:' "$OUT/transcript.txt") &&
    grep -aq '^RESULT-XL:' "$OUT/transcript.txt"; then
    break
  fi
  log "no result from this boot; console tail:"
  tail -n 40 "$console" | sed 's/^/    | /'
  # A fresh test disk for the retry, so nothing from the failed boot is mistaken for a result.
  mkfs.ext4 -q -F -L xentest -d "$disk" "$OUT/test.img" 160M >/dev/null
done

log "step 4/4: results"
if [[ -z $result ]]; then
  if [[ -s $OUT/transcript.txt ]]; then
    log "dom0 transcript tail (the checks did not finish):"
    tail -n 40 "$OUT/transcript.txt" | sed 's/^/    | /'
  fi
  die "no boot produced a result"
fi
grep -a -E '^(CHECK|RESULT)' "$OUT/transcript.txt" | sed 's/^/    /'
cp "$OUT/transcript.txt" "$OUT/last-transcript.txt"
xl_result=$(grep -a '^RESULT-XL:' "$OUT/transcript.txt" || echo "RESULT-XL: none (the xl checks did not finish) 1 failed")
result="$result; $xl_result"
if [[ $result == *" 0 failed"*" 0 failed"* ]]; then
  log "passed: $result; $(( $(date +%s) - t0 )) s in all"
else
  log "dom0 transcript tail:"
  tail -n 60 "$OUT/transcript.txt" | sed 's/^/    | /'
  log "console tail:"
  tail -n 30 "$console" | sed 's/^/    | /'
  die "$result"
fi
