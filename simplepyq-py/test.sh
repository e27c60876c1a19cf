#!/usr/bin/env bash
# Builds the Python package and runs its pytest suite, from nothing but CPython >= 3.9 and
# the Rust toolchain: a virtualenv with maturin and pytest from PyPI, the original
# simplepyq 0.1.3 installed apart (for the tests that read files it wrote), psycopg (a
# producer enqueueing in its own transaction on PostgreSQL), the package
# built into the virtualenv (a debug build, which reuses the workspace's test build; with
# SIMPLEPYQ_PY_RELEASE=1 a release build, for benchmarks).
#
#   bash simplepyq-py/test.sh [pytest arguments]
#
# SIMPLEPYQ_VENV chooses the virtualenv's folder (default: target/python-venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${SIMPLEPYQ_VENV:-$root/target/python-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" pytest mypy "psycopg[binary]>=3.1,<4" \
    "opentelemetry-api>=1.20,<2" "opentelemetry-sdk>=1.20,<2"
original="$venv/original-0.1.3"
if [ ! -d "$original/simplepyq" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --target "$original" simplepyq==0.1.3
fi
profile=()
if [ "${SIMPLEPYQ_PY_RELEASE:-0}" = 1 ]; then
    profile=(--release)
fi
(cd "$here" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop "${profile[@]}" --quiet)
cd "$here"
SIMPLEPYQ_ORIGINAL="$original" "$venv/bin/python" -m pytest -q "$@"
