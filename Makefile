# squeeze: the two commands a new user needs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo deps test lint test-rust

all: build

build:
	$(CARGO) build --release

deps:
	scripts/install-deps.sh

## Builds and runs the demo: a simulated host, a reservation that forces ballooning, a rebalance.
demo: deps
	$(CARGO) run --release --quiet --example demo

## Runs every test suite (installs missing system packages first when run as root).
test: deps lint test-rust

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test-rust:
	$(CARGO) test

## Builds libsqueeze and runs the OCaml binding's tests (ocaml/, a dune project).
.PHONY: test-ocaml
test: test-ocaml
SQUEEZE_LIB_DIR ?= $(CURDIR)/target/debug
test-ocaml: deps
	$(CARGO) build
	cd ocaml && SQUEEZE_LIB_DIR=$(SQUEEZE_LIB_DIR) SQUEEZE_INCLUDE_DIR=$(CURDIR)/include dune test --root . --force
