#!/usr/bin/env bash
# Install CometBFT (the `cometbft` consensus node) at the pinned version from the Go module
# proxy, once.
#
# Pinned: v0.38.26, the newest v0.38 patch the proxy serves (2026-12). Its go.mod has no
# replace/exclude directives, so `go install pkg@version` builds it. The ABCI types under
# proto/tendermint/ were copied from this same version; bump both together.
# The binary goes to $(go env GOPATH)/bin/cometbft; put that folder on PATH (or the tests find it).
set -euo pipefail
VERSION=v0.38.26
command -v go >/dev/null || { echo "cometbft: Go is needed (https://go.dev/dl or apt-get install golang)" >&2; exit 1; }
BIN="$(go env GOPATH)/bin"
if [ -x "$BIN/cometbft" ] && [ "$("$BIN/cometbft" version 2>/dev/null)" = "${VERSION#v}" ]; then
  exit 0
fi
echo "cometbft: building cometbft $VERSION (first time only, a few minutes)" >&2
go install "github.com/cometbft/cometbft/cmd/cometbft@$VERSION"
"$BIN/cometbft" version >&2
