#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine:
# Debian packages through apt-get when root (otherwise prints the exact line to run), and the
# pinned Python test peers (and the example bots' websockets) into .venv, and the pinned npm
# packages of the browser test and the Node example bot. Idempotent: does nothing when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

# libopus-dev: audiopus links the system libopus. pkg-config: finds it. espeak-ng: local-tts
# speech voice. systemd: systemd-analyze for the unit checks.
# libmp3lame-dev: local-tts MP3 output (LGPL LAME, linked dynamically).
# libssl-dev: OpenSSL for str0m, the sans-IO WebRTC stack of the load tool's callers
# (benches/loadtest.rs, a dev-dependency).
# python3-venv: the test peers' venv. chromium, firefox-esr + nodejs/npm: the browsers that
# drive the demo page in tests (Debian's Chromium through playwright-core, Debian's Firefox ESR
# through puppeteer-core over WebDriver BiDi; no browser download).
# haproxy: the load balancer in front of three nodes in tests/load_balancer.rs, running
# deploy/haproxy/haproxy.cfg.
if [[ "${1:-}" == "--demo" ]]; then
  PACKAGES=(libopus-dev pkg-config espeak-ng libmp3lame-dev)
elif [[ "${1:-}" == "--fuzz" ]]; then
  # The library's native links, and a C toolchain and make for cargo-afl's AFL++ build.
  PACKAGES=(libopus-dev pkg-config libmp3lame-dev build-essential)
else
  PACKAGES=(libopus-dev pkg-config espeak-ng systemd python3-venv libmp3lame-dev libssl-dev chromium firefox-esr haproxy)
  command -v npm >/dev/null || PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only needed when the interpreter lacks a working venv module (pyenv builds have it).
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
read -r -a missing <<< "${missing[*]:-}"

if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install-deps: missing Debian packages. Run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found. Install Rust (>= 1.87) with rustup: https://rustup.rs" >&2
  exit 1
fi

if [[ "${1:-}" == "--fuzz" ]]; then
  # cargo-afl, pinned: AFL++ for the stable toolchain (`make fuzz`). Its AFL++ runtime is
  # built per rustc version; `config --build` says "already built" when it is.
  AFL_VERSION=0.18.2
  if [[ "$(cargo afl --version 2>/dev/null)" != *"$AFL_VERSION"* ]]; then
    echo "install-deps: cargo install cargo-afl --locked --version $AFL_VERSION"
    cargo install cargo-afl --locked --version "$AFL_VERSION"
  fi
  if ! out=$(cargo afl config --build 2>&1); then
    grep -q "already built" <<<"$out" || { echo "$out" >&2; exit 1; }
  fi
  exit 0
fi

if [[ "${1:-}" != "--demo" ]]; then
  req=tests/peers/requirements.txt
  stamp=.venv/.installed-$(sha256sum "$req" | cut -c1-16)
  if [[ ! -f "$stamp" ]]; then
    echo "install-deps: creating .venv with $(grep -v '^#' "$req" | tr '\n' ' ')"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r "$req"
    touch "$stamp"
  fi
  if [[ ! -d tests/browser/node_modules/playwright-core || ! -d tests/browser/node_modules/puppeteer-core ]]; then
    echo "install-deps: npm ci in tests/browser (playwright-core, puppeteer-core, pinned by package-lock.json)"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
  fi
  if [[ ! -d examples/node_modules/ws ]]; then
    echo "install-deps: npm ci in examples (ws for the Node example bot, pinned by package-lock.json)"
    npm ci --prefix examples --no-audit --no-fund --loglevel=error
  fi
fi
