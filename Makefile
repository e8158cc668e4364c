# squeeze: the two commands a new user needs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo deps test lint test-rust

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
test: deps lint test-rust

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

## Benchmarks, short runs (about a minute once built); results are kept in docs/benchmarks.md.
.PHONY: bench
bench:
	$(CARGO) bench --bench squeezer -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench --bench flaws
