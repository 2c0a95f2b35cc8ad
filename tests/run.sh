#!/usr/bin/env bash
# The whole test suite, with what it needs: installs the programs the tests drive the
# agent with (when apt-get and root or sudo are there), then runs `cargo test
# --workspace` with any arguments given (`tests/run.sh -- --nocapture`).
#
# The tests use: dig (dnsutils); Debian's python3-consul and python3-prometheus-client
# (a Consul client and Prometheus's text parser, neither written by us); py-consul from
# PyPI in a virtualenv beside the sources (.venv-py-consul); iproute2 for the tests
# that give agents hosts of their own (network namespaces, root only: skipped
# otherwise); chromium, which the web UI's tests drive headless (skipped without it).
# With those installed by other means, `cargo test --workspace` is enough.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(dnsutils python3-consul python3-prometheus-client python3-venv iproute2 chromium)
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
  fi
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$sudo" = none ]; then
      echo "tests/run.sh: install ${missing[*]} (apt-get, as root), then run this again" >&2
      exit 1
    fi
    echo "== installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
# py-consul (PyPI), the maintained Consul client, drives the key/value store in a test.
if [ ! -x .venv-py-consul/bin/python ]; then
  python3 -m venv .venv-py-consul
fi
.venv-py-consul/bin/python -c 'import consul' 2>/dev/null ||
  .venv-py-consul/bin/pip install -q py-consul

cargo test --workspace "$@"
