# The two commands: `make demo` and `make test`. Each installs what is missing first.
CARGO ?= cargo

.PHONY: demo test deps lint bench clean

deps:
	@scripts/install-deps.sh

demo:
	@scripts/install-deps.sh --demo
	$(CARGO) build --release
	./target/release/lmnt-bridge demo

test: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test
	scripts/check-systemd.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench:
	$(CARGO) bench

clean:
	$(CARGO) clean
	rm -rf .venv
