# The two commands: `make demo` and `make test`. Each installs what is missing first.
CARGO ?= cargo
# Where `make demo` serves its call page.
DEMO_LISTEN ?= 127.0.0.1:8080

# The release binary (`make demo` runs it; the browser test in `make test` drives it).
RELEASE_BIN = $(abspath $(or $(CARGO_TARGET_DIR),target))/release/lmnt-bridge

.PHONY: demo test deps lint bench fuzz clean

deps:
	@scripts/install-deps.sh

demo:
	@scripts/install-deps.sh --demo
	$(CARGO) build --release
	$(RELEASE_BIN) demo --listen $(DEMO_LISTEN)

test: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) build --release
	LMNT_BRIDGE_DEMO_BIN=$(RELEASE_BIN) $(CARGO) test
	scripts/check-systemd.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: deps
	$(CARGO) bench

# Coverage-guided fuzzing (AFL++ via cargo-afl, stable toolchain): every target of fuzz/ for
# FUZZ_SECONDS each (default 60), then executions, paths, crashes and hangs per target.
fuzz:
	@scripts/install-deps.sh --fuzz
	scripts/fuzz.sh

clean:
	$(CARGO) clean
	rm -rf .venv tests/browser/node_modules examples/node_modules
