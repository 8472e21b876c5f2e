#!/usr/bin/env bash
# The test command (README, `.ci/run`): install what the tests need, then lint, types, tests.
# - Debian: PostgreSQL, Redis (started on loopback) and Chromium (browser tests), when missing;
# - Kubo (`ipfs`, pinned, built from the Go module proxy once: scripts/kubo.sh);
# - CometBFT (`cometbft`, pinned, from the Go module proxy once: scripts/cometbft.sh);
# - Debian's aarch64 cross compiler and qemu-user (the kernel's ARM paths: scripts/arm.sh);
# - Python: a venv with the project and its test extras;
# then ruff, ruff format --check, mypy --strict and pytest (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
export R3MES_WITH_BROWSER=1
eval "$(bash scripts/services.sh)"
bash scripts/kubo.sh
bash scripts/cometbft.sh
bash scripts/arm.sh
export PATH="$(go env GOPATH)/bin:$PATH"
python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
