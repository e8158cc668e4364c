#!/usr/bin/env bash
# Installs the system packages the build and the test suites need, when they are missing.
# Run as root on Debian (CI does); as another user it only reports what is missing.
set -euo pipefail

# Debian packages, one per line: "<command or file that proves it is installed> <package>".
APT_NEEDS=(
  "cc gcc"
  "c++ g++"
  "make make"
  "pkg-config pkg-config"
  "/usr/include/xenctrl.h libxen-dev"
  "xenstore-read xenstore-utils"
  "readelf binutils"
  "valgrind valgrind"
  "nm binutils"
  "python3 python3"
  "ocamlopt ocaml-nox"
  "dune ocaml-dune"
  "ocamlfind ocaml-findlib"
)

# `install-deps.sh xen`: also what the real-Xen test (`make test-xen`) needs on this machine to
# build its images and boot Xen under QEMU (Xen and the kernels go into its own image folder).
if [[ ${1:-} == xen ]]; then
  APT_NEEDS+=(
    "qemu-system-x86_64 qemu-system-x86"
    "debootstrap debootstrap"
    "mkfs.ext4 e2fsprogs"
    "debugfs e2fsprogs"
    "timeout coreutils"
    "dpkg-source dpkg-dev"
    "/usr/include/yajl/yajl_gen.h libyajl-dev"
    "patch patch"
  )
fi

# Python packages for the ctypes binding's test suite: "<module> <pip package>".
PIP_NEEDS=(
  "pytest pytest"
  "jsonschema jsonschema"
)

missing=()
for entry in "${APT_NEEDS[@]}"; do
  probe=${entry%% *}
  pkg=${entry#* }
  if [[ $probe == /* ]]; then
    [[ -e $probe ]] || missing+=("$pkg")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "install-deps: missing Debian packages: ${missing[*]} (run as root to install)" >&2
    exit 1
  fi
fi

pip_missing=()
for entry in "${PIP_NEEDS[@]+"${PIP_NEEDS[@]}"}"; do
  mod=${entry%% *}
  pkg=${entry#* }
  python3 -c "import $mod" 2>/dev/null || pip_missing+=("$pkg")
done
if ((${#pip_missing[@]})); then
  echo "install-deps: installing Python packages ${pip_missing[*]}"
  python3 -m pip install -q "${pip_missing[@]}"
fi
