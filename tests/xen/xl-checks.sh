#!/bin/bash
# xl with squeeze on the real hypervisor: runs in dom0 after xen_real (started by
# dom0-test.sh). Debian's own xl is used bare, then with contrib/xl's preload library
# (squeeze-xl-preload.so), with `squeeze daemon` running. Each check prints
# `CHECK xl <name>: PASS|FAIL (<numbers>)`; the last line is `RESULT-XL: <p> passed, <f> failed`.
#
# Host: 1280 MiB under QEMU, dom0 512 MiB. Two PV guests of 256 MiB whose policy file gives
# them 128..256 MiB leave about 238 MiB free: a new VM of 300 MiB needs ballooning.
T=${T:-/mnt/test}
SQ=$T/squeeze
PRELOAD=$T/lib/squeeze-xl-preload.so
PATCHED_XL=$T/xl-squeeze
KERNEL=$T/guest-vmlinux
RAMDISK=$T/guest-initrd.gz
SLUSH_MIB=72
passed=0
failed=0
known=0
stamp() { echo "[dom0 $(cut -d' ' -f1 /proc/uptime)s] $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

check() { # NAME OK(0|1) DETAIL
  if [ "$2" = 0 ]; then
    echo "CHECK xl $1: PASS ($3)"
    passed=$((passed + 1))
  else
    echo "CHECK xl $1: FAIL ($3)"
    failed=$((failed + 1))
  fi
}

# xl under emulation sometimes dies of a signal (see docs/xen-real.md): once more if so. A
# create (of /tmp/NAME.cfg) that died after making its domain leaves it behind, paused or
# running without its monitoring child: it is destroyed before the second try.
xl_() {
  "$@"
  local rc=$? a name=""
  if [ $rc -gt 128 ]; then
    stamp "$* died of signal $((rc - 128)); trying again"
    for a in "$@"; do
      case $a in /tmp/*.cfg) name=$(basename "$a" .cfg) ;; esac
    done
    [ -n "$name" ] && [ -n "$(domid_of "$name")" ] && xl destroy "$name"
    "$@"
    rc=$?
  fi
  return $rc
}

# A check that fails for a reason documented in docs/xen-real.md ("Known problems"): reported
# as KNOWN-FAIL, not counted as a failure, and as PASS as soon as it passes.
known_issue() { # NAME OK(0|1) DETAIL
  if [ "$2" = 0 ]; then
    check "$1" 0 "$3"
  else
    echo "CHECK xl $1: KNOWN-FAIL ($3)"
    known=$((known + 1))
  fi
}

domid_of() { xl domid "$1" 2>/dev/null; }
mem_mib() { # xl list itself sometimes dies under emulation: once more if it printed nothing
  local m
  m=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $3 }')
  [ -n "$m" ] || m=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $3 }')
  echo "$m"
}
free_mib() { xl info | awk '/^free_memory/ { print $3 }'; }
# The daemon's log from line $1 on (at most 40 lines), indented: what it did during a step.
daemon_log_mark() { wc -l </tmp/squeeze-daemon.log; }
daemon_log_since() {
  echo "    daemon log:"
  tail -n +"$(( $1 + 1 ))" /tmp/squeeze-daemon.log | head -n 40 | sed 's/^/      /'
}
# What Xen lists (a dying domain, state "d", still holds its pages) and what squeeze sees.
host_snapshot() {
  echo "    before: $(xl info | grep -E '^(free_memory|scrub)' | tr -s ' ' | tr '\n' ' ')"
  xl list -v 2>/dev/null | sed 's/^/      /'
  "$SQ" status 2>&1 | sed 's/^/      /' | head -n 20
}
target_kib() { xenstore-read "/local/domain/$1/memory/target" 2>/dev/null; }

guest_cfg() { # NAME MEMORY_MIB
  cat >"/tmp/$1.cfg" <<EOF
name = "$1"
type = "pv"
kernel = "$KERNEL"
ramdisk = "$RAMDISK"
extra = "console=hvc0 quiet"
memory = $2
maxmem = $2
vcpus = 1
on_crash = "preserve"
EOF
}

# The guest kernel writes control/feature-poweroff once its xenbus drivers are up; its
# balloon driver is up by then.
wait_booted() { # DOMID
  local i=0
  [ -n "$1" ] || return 1
  until xenstore-exists "/local/domain/$1/control/feature-poweroff" 2>/dev/null || [ $i -ge 180 ]; do
    sleep 1
    i=$((i + 1))
    # Something on the console now and then, so a slow boot is not taken for a hung run.
    [ $((i % 30)) = 0 ] && stamp "    domain $1 not booted after $i s"
  done
}

sessions() { xenstore-list /squeezed/state 2>/dev/null | wc -l; }
reservation_of() { xenstore-read "/local/domain/$1/memory/reservation-id" 2>/dev/null; }
# How many ledger nodes still name reservation $1.
left_behind() { xenstore-ls -f /squeezed/state 2>/dev/null | grep -c "${1:-none}"; }

stamp "xl checks: clean slate"
for d in $(xl list | awk 'NR > 1 && $2 != 0 { print $2 }'); do xl destroy "$d"; done
xenstore-rm /squeezed/state 2>/dev/null
mkdir -p /etc/xen/squeeze.d /run/squeeze
cat >/etc/xen/xl.conf <<EOF
autoballoon = "off"
EOF
for g in sqz-x1 sqz-x2; do
  guest_cfg "$g" 256
  echo 'squeeze_dynamic_min = 128' >"/etc/xen/squeeze.d/$g.cfg"
done
guest_cfg sqz-new 300
for g in sqz-c1 sqz-c2 sqz-c3; do guest_cfg "$g" 100; done

"$SQ" daemon --verbose >/tmp/squeeze-daemon.log 2>&1 &
daemon_pid=$!
sleep 2

stamp "two guests through the preload library"
for g in sqz-x1 sqz-x2; do
  t0=$(now)
  xl_ env LD_PRELOAD=$PRELOAD xl create -q "/tmp/$g.cfg"
  stamp "    xl create $g: domain $(domid_of "$g") in $(since "$t0") s"
done
d1=$(domid_of sqz-x1)
d2=$(domid_of sqz-x2)
wait_booted "$d1"
wait_booted "$d2"
min1=$(xenstore-read "/local/domain/$d1/memory/dynamic-min" 2>/dev/null)
fb1=$(xenstore-read "/local/domain/$d1/control/feature-balloon" 2>/dev/null)
[ -n "$d1" ] && [ -n "$d2" ] && [ "$min1" = 131072 ] && [ "$fb1" = 1 ]
check "policy from squeeze.d" $? "domains $d1 $d2; dynamic-min $min1 KiB, feature-balloon $fb1"
xl list
free0=$(free_mib)

stamp "a 300 MiB VM with Debian's xl (free $free0 MiB)"
t0=$(now)
xl_ xl create -q /tmp/sqz-new.cfg >/tmp/stock.log 2>&1
rc=$?
left=$(domid_of sqz-new)
[ -n "$left" ] && xl destroy sqz-new
[ $rc != 0 ] && [ -z "$left" ]
check "stock xl cannot create a VM that needs ballooning" $? \
  "exit $rc after $(since "$t0") s, free $free0 MiB < 300 MiB: $(grep -m1 -iE 'memory|error' /tmp/stock.log)"

stamp "the same VM through the preload library"
host_snapshot
mark=$(daemon_log_mark)
t0=$(now)
xl_ env LD_PRELOAD=$PRELOAD SQUEEZE_PRELOAD=debug xl create -q /tmp/sqz-new.cfg
rc=$?
took=$(since "$t0")
m1=$(mem_mib sqz-x1)
m2=$(mem_mib sqz-x2)
free1=$(free_mib)
xl list
[ $rc = 0 ] && [ -n "$(domid_of sqz-new)" ] &&
  [ "$m1" -ge 128 ] && [ "$m1" -lt 256 ] && [ "$m2" -ge 128 ] && [ "$m2" -lt 256 ] &&
  [ "$free1" -ge $((SLUSH_MIB - 4)) ]
check "preload xl creates it, guests shrink within their ranges" $? \
  "exit $rc in $took s; guests $m1 + $m2 MiB (range 128..256), free after $free1 MiB (slush $SLUSH_MIB)"
# A look taken while the new domain is built must not have the daemon shrink the guests for
# memory counted twice (docs/xen-real.md, "Over-freeing during a create").
[ "$free1" -le $((SLUSH_MIB + 32)) ]
check "preload xl takes no more from the guests than the VM needs" $? \
  "free after $free1 MiB, at most slush $SLUSH_MIB + 32 MiB; guests $m1 + $m2 MiB"
daemon_log_since "$mark"

stamp "xl destroy: the daemon grows the guests back"
rid=$(reservation_of "$(domid_of sqz-new)")
t0=$(now)
xl destroy sqz-new
until { [ "$(target_kib "$d1")" = 262144 ] && [ "$(target_kib "$d2")" = 262144 ] &&
        [ "$(mem_mib sqz-x1)" -ge 252 ] && [ "$(mem_mib sqz-x2)" -ge 252 ]; } ||
      [ "$(awk -v t="$(since "$t0")" 'BEGIN { print (t > 60) }')" = 1 ]; do
  sleep 0.5
done
took=$(since "$t0")
m1=$(mem_mib sqz-x1)
m2=$(mem_mib sqz-x2)
[ "$(awk -v t="$took" 'BEGIN { print (t <= 15) }')" = 1 ] && [ "$m1" -ge 252 ] && [ "$m2" -ge 252 ]
check "after xl destroy the daemon grows the guests back within 15 s" $? \
  "$m1 + $m2 MiB (dynamic-max 256) after $took s"
n=$(left_behind "$rid")
s=$(sessions)
# The two guests' own sessions stay: their reservations went to domains that still live.
[ -n "$rid" ] && [ "$n" = 0 ] && [ "$s" = 2 ]
check "a destroyed VM leaves no reservation" $? \
  "reservation ${rid:-unknown}: $n ledger nodes left; $s sessions (the two guests')"

stamp "the same VM through the patched xl (contrib/xl/xl-squeeze-4.17.patch, squeeze = 1)"
if [ -x "$PATCHED_XL" ]; then
  printf 'autoballoon = "off"\nsqueeze = 1\n' >/etc/xen/xl.conf
  host_snapshot
  mark=$(daemon_log_mark)
  t0=$(now)
  xl_ env LD_LIBRARY_PATH=$T/lib "$PATCHED_XL" create -q /tmp/sqz-new.cfg >/tmp/patched.log 2>&1
  rc=$?
  took=$(since "$t0")
  cat /tmp/patched.log
  dn=$(domid_of sqz-new)
  rid=$(reservation_of "$dn")
  m1=$(mem_mib sqz-x1)
  m2=$(mem_mib sqz-x2)
  free1=$(free_mib)
  xl list
  [ $rc = 0 ] && [ -n "$dn" ] && [ -n "$rid" ] &&
    [ "$m1" -ge 128 ] && [ "$m1" -lt 256 ] && [ "$m2" -ge 128 ] && [ "$m2" -lt 256 ] &&
    [ "$free1" -ge $((SLUSH_MIB - 4)) ]
  check "patched xl creates it, guests shrink within their ranges" $? \
    "exit $rc in $took s; domain ${dn:-none} holds reservation ${rid:-none}; guests $m1 + $m2 MiB (range 128..256), free after $free1 MiB (slush $SLUSH_MIB)"
  [ "$free1" -le $((SLUSH_MIB + 32)) ]
  check "patched xl takes no more from the guests than the VM needs" $? \
    "free after $free1 MiB, at most slush $SLUSH_MIB + 32 MiB; guests $m1 + $m2 MiB"
  daemon_log_since "$mark"
  t0=$(now)
  xl_ env LD_LIBRARY_PATH=$T/lib "$PATCHED_XL" destroy sqz-new
  # squeeze releases a dead domain's reservation at its next look (the daemon's, on
  # @releaseDomain), and the daemon grows the guests back.
  until { [ "$(left_behind "$rid")" = 0 ] && [ "$(mem_mib sqz-x1)" -ge 252 ] &&
          [ "$(mem_mib sqz-x2)" -ge 252 ]; } ||
        [ "$(awk -v t="$(since "$t0")" 'BEGIN { print (t > 60) }')" = 1 ]; do
    sleep 0.5
  done
  n=$(left_behind "$rid")
  [ -n "$rid" ] && [ "$n" = 0 ] && [ -z "$(domid_of sqz-new)" ]
  check "patched xl: a destroyed VM leaves no reservation" $? \
    "reservation ${rid:-unknown}: $n ledger nodes left after $(since "$t0") s; guests $(mem_mib sqz-x1) + $(mem_mib sqz-x2) MiB"
  printf 'autoballoon = "off"\n' >/etc/xen/xl.conf
else
  check "patched xl creates it, guests shrink within their ranges" 1 \
    "the patched xl was not built: $(tail -n 3 "$T/build-xl.log" 2>/dev/null | tr '\n' ' ')"
fi

# Three 100 MiB VMs created at the same moment by XL... (xl's lock is not taken: autoballoon is
# off); together they need the two guests ballooned. CHECK names the check.
three_at_once() { # CHECK XL...
  local name=$1 t0 took made=0 held=0 g dc m1 m2 free0 free1 pids=""
  shift
  xl list
  host_snapshot
  local mark
  mark=$(daemon_log_mark)
  free0=$(free_mib)
  t0=$(now)
  # Each create is bounded: one that hangs (seen once under emulation) is reported with the
  # others instead of stopping the whole run at the console watchdog.
  for g in sqz-c1 sqz-c2 sqz-c3; do
    { timeout -k 5 120 "$@" create -q "/tmp/$g.cfg" >"/tmp/$g.log" 2>&1
      echo "exit $? after $(since "$t0") s" >>"/tmp/$g.log"; } &
    pids="$pids $!"
  done
  for job in $pids; do wait "$job"; done
  took=$(since "$t0")
  for g in sqz-c1 sqz-c2 sqz-c3; do
    dc=$(domid_of "$g")
    [ -n "$dc" ] && made=$((made + 1))
    # Each reservation went to its domain.
    [ -n "$dc" ] && [ -n "$(reservation_of "$dc")" ] && held=$((held + 1))
    sed "s/^/    $g: /" "/tmp/$g.log"
  done
  m1=$(mem_mib sqz-x1)
  m2=$(mem_mib sqz-x2)
  free1=$(free_mib)
  xl list
  [ $made = 3 ] && [ $held = 3 ] && [ "$m1" -ge 126 ] && [ "$m2" -ge 126 ]
  check "$name" $? \
    "$made of 3 created in $took s, $held holding their reservation; free $free0 MiB before, $free1 after; guests $m1 + $m2 MiB (dynamic-min 128)"
  daemon_log_since "$mark"
  for g in sqz-c1 sqz-c2 sqz-c3; do xl destroy "$g" 2>/dev/null; done
}

# Waits (at most 60 s) for the daemon to grow both guests back to 256 MiB.
grown_back() {
  local t0
  t0=$(now)
  until { [ "$(mem_mib sqz-x1)" -ge 252 ] && [ "$(mem_mib sqz-x2)" -ge 252 ]; } ||
        [ "$(awk -v t="$(since "$t0")" 'BEGIN { print (t > 60) }')" = 1 ]; do
    sleep 0.5
  done
}

stamp "three 100 MiB VMs at the same moment through the preload library"
three_at_once "three concurrent creates that need ballooning all succeed" \
  env LD_PRELOAD=$PRELOAD SQUEEZE_PRELOAD=verbose xl

# xl built with contrib/xl/xl-squeeze-4.17.patch (run.sh builds it from Debian's Xen source).
if [ -x "$PATCHED_XL" ]; then
  grown_back
  stamp "three 100 MiB VMs at the same moment through the patched xl (squeeze = 1)"
  printf 'autoballoon = "off"\nsqueeze = 1\n' >/etc/xen/xl.conf
  three_at_once "patched xl: three concurrent creates that need ballooning all succeed" \
    env LD_LIBRARY_PATH=$T/lib "$PATCHED_XL"
  printf 'autoballoon = "off"\n' >/etc/xen/xl.conf
fi


stamp "xl shutdown of a VM created through squeeze"
xl_ timeout -k 5 120 env LD_PRELOAD=$PRELOAD xl create -q /tmp/sqz-new.cfg \
  >/tmp/sqz-new-create.log 2>&1
cat /tmp/sqz-new-create.log
dn=$(domid_of sqz-new)
stamp "    xl create sqz-new: domain ${dn:-none}"
rid=$(reservation_of "$dn")
wait_booted "$dn"
t0=$(now)
timeout 90 xl shutdown -w sqz-new >/dev/null 2>&1
gone=$([ -z "$(domid_of sqz-new)" ] && echo yes || echo no)
# squeeze releases a dead domain's reservation at its next look: the daemon's, which
# @releaseDomain brings within seconds (at most 15 s allowed, as for the grow-back).
t1=$(now)
until [ "$(left_behind "$rid")" = 0 ] ||
      [ "$(awk -v t="$(since "$t1")" 'BEGIN { print (t > 15) }')" = 1 ]; do
  sleep 0.5
done
n=$(left_behind "$rid")
[ "$gone" = yes ] && [ -n "$rid" ] && [ "$n" = 0 ] && [ "$(sessions)" = 2 ]
ok=$?
detail="domain $dn gone: $gone after $(since "$t0") s; reservation ${rid:-unknown}: $n ledger nodes left $(since "$t1") s later, $(sessions) sessions"
# Without xl's monitoring child nobody destroys the shut-down domain, so its reservation
# rightly stays: that run says nothing about squeeze and is reported as a known problem
# (docs/xen-real.md), never as a pass. Any other failure counts.
if [ $ok != 0 ] && grep -q 'monitoring.*died due to fatal signal' /tmp/sqz-new-create.log; then
  known_issue "xl shutdown leaves no reservation behind" $ok \
    "$detail; xl's monitoring child died: $(grep -m1 'died due to fatal signal' /tmp/sqz-new-create.log)"
else
  check "xl shutdown leaves no reservation behind" $ok "$detail"
fi
[ "$gone" = yes ] || xl destroy sqz-new 2>/dev/null

# Diagnostic, not a check (run.sh puts valgrind on the disk with XEN_TEST_VALGRIND=1): the same
# create and shutdown with xl, its monitoring child and libsqueeze under memcheck, to tell
# whether the preload library plays a part in the monitoring child's crashes.
waited() { # PID SECONDS: waits for PID at most SECONDS, saying so every 30 s
  local i=0
  while kill -0 "$1" 2>/dev/null && [ $i -lt "$2" ]; do
    sleep 5
    i=$((i + 5))
    [ $((i % 30)) = 0 ] && stamp "    still waiting for $1 after $i s"
  done
  kill -0 "$1" 2>/dev/null && kill "$1"
  wait "$1"
}
if [ -x "$T/valgrind/valgrind" ]; then
  stamp "diagnostic: xl create (preload library) and xl shutdown under valgrind"
  rm -f /tmp/vg.*.log
  t0=$(now)
  VALGRIND_LIB=$T/valgrind "$T/valgrind/valgrind" --trace-children=yes \
    --log-file=/tmp/vg.%p.log env LD_PRELOAD=$PRELOAD SQUEEZE_PRELOAD=verbose \
    xl create -q /tmp/sqz-new.cfg >/tmp/vg-create.log 2>&1 &
  waited $! 400
  stamp "    xl create under valgrind: exit $? after $(since "$t0") s"
  cat /tmp/vg-create.log
  dn=$(domid_of sqz-new)
  if [ -n "$dn" ]; then
    wait_booted "$dn"
    t0=$(now)
    xl shutdown sqz-new >/dev/null 2>&1
    # The monitoring child, under valgrind, destroys the domain once it has shut down.
    until [ -z "$(domid_of sqz-new)" ] || [ "$(awk -v t="$(since "$t0")" 'BEGIN { print (t > 200) }')" = 1 ]; do
      sleep 5
    done
    stamp "    domain $dn gone: $([ -z "$(domid_of sqz-new)" ] && echo yes || echo no) after $(since "$t0") s"
    sleep 10
    xl destroy sqz-new 2>/dev/null
  fi
  for f in /tmp/vg.*.log; do
    [ -f "$f" ] || continue
    echo "    --- $f: $(grep -m1 -E 'Command:' "$f" | sed 's/^==[0-9]*== *//')"
    grep -E 'ERROR SUMMARY|Process terminating|signal|Invalid (read|write|free)|uninitialised|Jump to|at 0x|by 0x' "$f" |
      head -n 60 | sed 's/^/    /'
  done
fi

"$SQ" status | head -n 6
kill -TERM "$daemon_pid"
wait "$daemon_pid"
drc=$?
[ $drc = 0 ] && [ ! -e /run/squeeze/daemon.pid ]
check "the daemon stops cleanly on SIGTERM" $? "exit $drc"
stamp "daemon log (tail)"
tail -n 15 /tmp/squeeze-daemon.log
for g in sqz-x1 sqz-x2; do xl destroy "$g" 2>/dev/null; done
echo "RESULT-XL: $passed passed, $failed failed, $known known failures"
