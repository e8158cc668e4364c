#!/bin/sh
# Runs in dom0 (started by dom0's init from the test disk, mounted at /mnt/test): starts the
# Xen daemons, runs squeeze's real-Xen checks, and leaves their output on the disk.
T=/mnt/test
PATH=/usr/lib/xen-4.17/bin:$PATH
export PATH
stamp() { echo "[dom0 $(cut -d' ' -f1 /proc/uptime)s] $*"; }

stamp "starting the Xen daemons"
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd; do modprobe "$m" 2>/dev/null; done
mountpoint -q /proc/xen || mount -t xenfs xenfs /proc/xen
mkdir -p /run/xen /run/xenstored /var/log/xen /var/lib/xen /var/run/xen /run/squeeze
xenstored --pid-file /run/xenstore.pid || stamp "xenstored failed"
i=0
until xenstore-exists / 2>/dev/null || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
xen-init-dom0 || stamp "xen-init-dom0 failed"
xenconsoled --pid-file /run/xenconsoled.pid || stamp "xenconsoled failed"
stamp "xenstore: dom0 is $(xenstore-read /local/domain/0/name 2>/dev/null)"
ls -l /dev/xen/ 2>&1
stamp "xl info (before)"
xl info | grep -E '^(xen_version|nr_cpus|total_memory|free_memory|xen_commandline)'
xl list

stamp "running the checks"
SQUEEZE_REAL_XEN=1 RUST_BACKTRACE=1 \
  SQUEEZE_GUEST_KERNEL=$T/guest-vmlinux SQUEEZE_GUEST_RAMDISK=$T/guest-initrd.gz \
  "$T/xen_real"
rc=$?
stamp "checks exited with $rc"
echo "$rc" >"$T/exit-status"
if [ "$rc" != 0 ]; then
  stamp "xl dmesg (tail)"
  xl dmesg | tail -n 40
fi
# xl with squeeze (contrib/xl's preload library and `squeeze daemon`), when run.sh built them.
if [ -x "$T/xl-checks.sh" ] && [ -x "$T/squeeze" ]; then
  stamp "xl checks"
  T=$T "$T/xl-checks.sh"
  stamp "xl checks exited with $?"
fi
for d in /var/log/xen/console/guest-*.log; do
  [ -f "$d" ] && { stamp "$d"; tail -n 5 "$d"; }
done
stamp "done"
