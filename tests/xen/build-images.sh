#!/usr/bin/env bash
# Builds the images the real-Xen test boots, into a cache folder (default target/xen-test):
#
#   xen.gz -> xen          the hypervisor (a multiboot image, gunzipped for QEMU's -kernel)
#   vmlinuz, initrd.img    Debian's kernel, for dom0 and (the same kernel) for the PV guests
#   dom0.img               ext4 root of a debootstrapped Debian 12 with Xen's dom0 tools
#
# Everything is installed into the folder, never into this machine's root. Xen comes from
# bookworm-security, the version this machine's libxen-dev has, so the test program built here
# talks to the same libxenctrl/libxenstore ABI as dom0's tools. The images are rebuilt only when
# the package versions or this script change (the key is in $OUT/images.key).
#
# Needs root (debootstrap, chroot), debootstrap, e2fsprogs and network access to deb.debian.org.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
OUT=${XEN_TEST_DIR:-$here/../../target/xen-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

log() { printf '[%(%H:%M:%S)T] build-images: %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap and chroot); SQUEEZE_SKIP_XEN=1 skips the real-Xen test"
for tool in debootstrap mkfs.ext4 apt-cache; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh xen installs it)"
done

# The Xen version dom0 must run: the one the test program is built against.
host_xen=$(dpkg-query -W -f '${Version}' libxen-dev 2>/dev/null) || die "libxen-dev is not installed"
kernel_of_the_day() {
  apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1
}
kernel_pkg=$(kernel_of_the_day)
if [[ -z $kernel_pkg ]]; then
  # A fresh machine may have no package lists yet.
  apt-get update -qq
  kernel_pkg=$(kernel_of_the_day)
fi
[[ -n $kernel_pkg ]] || die "cannot tell which kernel linux-image-amd64 is"
kernel_ver=$(apt-cache policy "$kernel_pkg" | sed -n 's/^ *Candidate: //p')
key="xen=$host_xen kernel=$kernel_pkg/$kernel_ver script=$(cat "$0" "$here/dom0-init" | sha256sum | cut -c1-16)"

if [[ -f $OUT/images.key && $(cat "$OUT/images.key") == "$key" && -f $OUT/dom0.img && -f $OUT/xen ]]; then
  log "images up to date ($key)"
  exit 0
fi
log "building images: $key"
start=$(date +%s)

root=$OUT/rootfs
cleanup() {
  for m in proc sys dev/pts dev; do
    mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
  done
  return 0
}
trap cleanup EXIT
cleanup
rm -rf "$root" "$OUT/images.key"

log "debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$MIRROR" \
  >"$OUT/debootstrap.log" 2>&1 || { tail -n 30 "$OUT/debootstrap.log"; die "debootstrap failed"; }

cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $SECURITY_MIRROR bookworm-security main
EOF
# No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

log "installing Xen $host_xen, $kernel_pkg and the dom0 tools into the image"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -c "
  set -e
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    xen-hypervisor-4.17-amd64=$host_xen xen-utils-4.17=$host_xen xenstore-utils=$host_xen \
    $kernel_pkg initramfs-tools busybox-static kmod procps util-linux cpio e2fsprogs
" >"$OUT/apt.log" 2>&1 || { tail -n 30 "$OUT/apt.log"; die "installing packages into the image failed"; }
dom0_xen=$(chroot "$root" dpkg-query -W -f '${Version}' xen-utils-4.17)
[[ $dom0_xen == "$host_xen" ]] || die "dom0 got xen-utils $dom0_xen, libxen-dev here is $host_xen"

cp "$root"/boot/vmlinuz-* "$OUT/vmlinuz"
cp "$root"/boot/initrd.img-* "$OUT/initrd.img"
zcat "$root"/boot/xen-4.17-amd64.gz >"$OUT/xen"

log "making the guests' busybox initramfs"
g=$root/srv/guest-root
mkdir -p "$g"/{bin,dev,proc,sys,tmp}
cp "$root/bin/busybox" "$g/bin/busybox"
cat >"$g/init" <<'EOF'
#!/bin/busybox sh
# A PV guest that does nothing but keep its balloon driver running.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "guest up: $(grep MemTotal /proc/meminfo)"
while :; do sleep 3600; done
EOF
chmod 755 "$g/init"
chroot "$root" sh -c 'cd /srv/guest-root && find . | cpio -o -H newc --quiet | gzip -1' >"$OUT/guest-initrd.gz"
rm -rf "$g"
mkdir -p "$root/srv/xen-test"
cp "$OUT/vmlinuz" "$root/srv/xen-test/vmlinuz"
cp "$OUT/guest-initrd.gz" "$root/srv/xen-test/guest-initrd.gz"

log "dom0 init and configuration"
install -m 755 "$here/dom0-init" "$root/sbin/xentest-init"
echo xentest-dom0 >"$root/etc/hostname"
mkdir -p "$root/mnt/test"
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"

cleanup
# Drivers dom0 never loads here (its "hardware" is QEMU's): a smaller image builds faster.
for d in drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
         sound drivers/bluetooth drivers/iio drivers/isdn drivers/hid; do
  rm -rf "$root"/lib/modules/*/kernel/$d
done
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
  "$root"/usr/share/man "$root"/usr/share/locale "$root"/boot/*

size_mib=$(( $(du -sm "$root" | cut -f1) + 200 ))
log "making dom0.img (${size_mib} MiB ext4)"
rm -f "$OUT/dom0.img"
mkfs.ext4 -q -F -L xentest-root -d "$root" "$OUT/dom0.img" "${size_mib}M"
rm -rf "$root"
echo "$key" >"$OUT/images.key"
log "images built in $(( $(date +%s) - start )) s"
