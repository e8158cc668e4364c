# squeeze: the two commands a new user needs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo deps test lint test-rust
.PHONY: test-xen-feature

all: build

build:
	$(CARGO) build --release

deps:
	scripts/install-deps.sh

## Builds and runs the demo: a simulated host, a reservation that forces ballooning, a rebalance.
demo: deps
	$(CARGO) run --release --quiet --example demo

## Runs every test suite (installs missing system packages first when run as root).
test: deps lint test-rust test-xen-feature

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test-rust:
	$(CARGO) test

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
	$(CARGO) test --features xen --lib backend::xen
	$(CARGO) test --features xen --test xenstore --test xen_no_hypervisor
	$(CARGO) test -p squeeze-cli --features xen
	# ...while the tool built with the feature does use libxenctrl and libxenstore.
	readelf -d target/debug/squeeze | grep -q 'NEEDED.*libxenctrl'
	readelf -d target/debug/squeeze | grep -q 'NEEDED.*libxenstore'

## Benchmarks, short runs (about a minute once built); results are kept in docs/benchmarks.md.
.PHONY: bench
bench:
	$(CARGO) bench --bench squeezer -- --warm-up-time 1 --measurement-time 3
