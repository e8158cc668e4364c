# squeeze: the two commands a new user needs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo deps test lint test-rust
.PHONY: header install test-c test-python bench-ffi
.PHONY: test-xen-feature

all: build

build:
	$(CARGO) build --release

deps:
	scripts/install-deps.sh

## Builds and runs the demo: a simulated host, a reservation that forces ballooning, a rebalance;
## then a migration scenario with squeezed's algorithm and the adaptive one side by side, plotted.
demo: deps
	$(CARGO) run --release --quiet --example demo
	@echo
	$(CARGO) run --release --quiet -p squeeze-cli -- simulate scenarios/migration-reserve-half.toml \
		--policy both --svg target/demo.svg --csv target/demo.csv

## Runs every test suite (installs missing system packages first when run as root).
test: deps lint test-rust test-c test-python test-xen-feature

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# Every public item is documented, and no link in the documentation is broken.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p squeeze

test-rust:
	$(CARGO) test --workspace

## Builds, lints and tests the Xen platform (`--features xen`: libxenctrl, libxenstore) and
## the `squeeze` tool's status and repair commands built on it.
test-xen-feature: deps
	# The default library must not need any Xen library, and must load without Xen.
	$(CARGO) build --lib
	! readelf -d target/debug/libsqueeze.so | grep -i 'NEEDED.*xen'
	python3 -c 'import ctypes; ctypes.CDLL("target/debug/libsqueeze.so")'
	$(CARGO) build --features xen
	$(CARGO) clippy --features xen --all-targets -- -D warnings
	$(CARGO) clippy -p squeeze-cli --features xen --all-targets -- -D warnings
	# Includes the layout check of the hand-written libxenctrl declarations against xenctrl.h.
	$(CARGO) test --features xen --lib backend::xen
	# Nothing xl or xenopsd would load may be GPL-3.0 (xl is GPL-2.0-only).
	! $(CARGO) tree --workspace --features squeeze/xen -e normal,build -f '{p} {l}' | grep 'GPL-3'
	$(CARGO) test --features xen --test xenstore --test xen_no_hypervisor
	$(CARGO) test -p squeeze-cli --features xen
	# ...while the tool built with the feature does use libxenctrl and libxenstore.
	readelf -d target/debug/squeeze | grep -q 'NEEDED.*libxenctrl'
	readelf -d target/debug/squeeze | grep -q 'NEEDED.*libxenstore'

## Benchmarks, short runs (about a minute once built); results are kept in docs/benchmarks.md.
.PHONY: bench
bench:
	$(CARGO) bench --bench squeezer -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench --bench flaws

## The C ABI: header, install, C client and Python binding tests.
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
# Which cargo build `install` ships: release (default) or debug.
PROFILE ?= release
CC ?= cc
CXX ?= c++
PYTHON ?= python3
VALGRIND ?= valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
C_STAGE := $(CURDIR)/target/c-stage
C_CFLAGS := -std=c11 -O1 -g -Wall -Wextra -Werror

## Regenerates include/squeeze.h from src/ffi (the test suite fails when it is stale).
header:
	SQUEEZE_BLESS=1 $(CARGO) test --quiet --test ffi_surface the_checked_in_header

## Installs the shared and static library (with SONAME links), the header and squeeze.pc.
## FEATURES=xen builds the library with this host's Xen platform (for contrib/xl).
install:
	$(CARGO) build --lib $(if $(filter release,$(PROFILE)),--release,) $(if $(FEATURES),--features $(FEATURES),)
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)
	install -m 755 target/$(PROFILE)/libsqueeze.so $(DESTDIR)$(LIBDIR)/libsqueeze.so.$(VERSION)
	ln -sf libsqueeze.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libsqueeze.so.$(MAJOR)
	ln -sf libsqueeze.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libsqueeze.so
	install -m 644 target/$(PROFILE)/libsqueeze.a $(DESTDIR)$(LIBDIR)/libsqueeze.a
	install -m 644 include/squeeze.h $(DESTDIR)$(INCLUDEDIR)/squeeze.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' squeeze.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/squeeze.pc

## Builds the C client against an installed copy (found through pkg-config, loaded through its
## SONAME) and runs it under valgrind.
test-c:
	rm -rf $(C_STAGE)
	$(MAKE) --no-print-directory install PROFILE=debug PREFIX=$(C_STAGE)
	$(CC) $(C_CFLAGS) -pthread -Itests/c tests/c/test_client.c -o $(C_STAGE)/test_client \
	    $$(PKG_CONFIG_PATH=$(C_STAGE)/lib/pkgconfig pkg-config --cflags --libs squeeze) -lm \
	    -Wl,-rpath,$(C_STAGE)/lib
	$(VALGRIND) $(C_STAGE)/test_client
	sed -n '/^```c$$/,/^```$$/p' docs/c-api.md | sed '1d;$$d' > $(C_STAGE)/guide_example.c
	$(CC) $(C_CFLAGS) $(C_STAGE)/guide_example.c -o $(C_STAGE)/guide_example \
	    $$(PKG_CONFIG_PATH=$(C_STAGE)/lib/pkgconfig pkg-config --cflags --libs squeeze) \
	    -Wl,-rpath,$(C_STAGE)/lib
	$(VALGRIND) $(C_STAGE)/guide_example
	sed -n '/^```c service$$/,/^```$$/p' docs/c-api.md | sed '1d;$$d' > $(C_STAGE)/service_example.c
	$(CC) $(C_CFLAGS) $(C_STAGE)/service_example.c -o $(C_STAGE)/service_example \
	    $$(PKG_CONFIG_PATH=$(C_STAGE)/lib/pkgconfig pkg-config --cflags --libs squeeze) \
	    -Wl,-rpath,$(C_STAGE)/lib
	$(VALGRIND) $(C_STAGE)/service_example
	$(CXX) -std=c++11 -Wall -Wextra -Werror -pedantic tests/c/cplusplus.cc -o $(C_STAGE)/cplusplus \
	    $$(PKG_CONFIG_PATH=$(C_STAGE)/lib/pkgconfig pkg-config --cflags --libs squeeze) \
	    -Wl,-rpath,$(C_STAGE)/lib
	$(C_STAGE)/cplusplus

## Runs the Python binding's tests against the debug build.
test-python:
	$(CARGO) build --lib
	SQUEEZE_LIB=$(CURDIR)/target/debug/libsqueeze.so PYTHONPATH=$(CURDIR)/bindings/python \
	    $(PYTHON) -m pytest -q tests/python

## Measures the cost of a call through the C ABI from C and from Python (release build).
bench-ffi:
	$(CARGO) build --lib --release
	scripts/bench-ffi.sh

## Builds libsqueeze and runs the OCaml binding's tests (ocaml/, a dune project).
.PHONY: test-ocaml
test: test-ocaml
SQUEEZE_LIB_DIR ?= $(CURDIR)/target/debug
test-ocaml: deps
	$(CARGO) build --lib
	cd ocaml && SQUEEZE_LIB_DIR=$(SQUEEZE_LIB_DIR) SQUEEZE_INCLUDE_DIR=$(CURDIR)/include dune test --root . --force

## Measures the cost of calls through the OCaml binding (release build).
.PHONY: bench-ocaml
bench-ocaml: deps
	$(CARGO) build --lib --release
	cd ocaml && SQUEEZE_LIB_DIR=$(CURDIR)/target/release SQUEEZE_INCLUDE_DIR=$(CURDIR)/include dune build --root . @bench/bench --force

## Proves squeeze on a real Xen hypervisor: boots Xen 4.17 and a Debian 12 dom0 under QEMU and
## balloons real PV guests (tests/xen/run.sh; needs root, and deb.debian.org the first time
## to build its images). SQUEEZE_SKIP_XEN=1 skips it, e.g. `SQUEEZE_SKIP_XEN=1 make test`.
.PHONY: test-xen
test: test-xen
test-xen:
	@if [ "$${SQUEEZE_SKIP_XEN:-0}" = 1 ]; then echo "test-xen: skipped (SQUEEZE_SKIP_XEN=1)"; \
	else scripts/install-deps.sh xen && tests/xen/run.sh; fi
