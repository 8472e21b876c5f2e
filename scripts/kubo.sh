#!/usr/bin/env bash
# Install Kubo (the `ipfs` daemon) at the pinned version from the Go module proxy, once.
#
# Pinned: v0.42.0. v0.43.1 cannot be built from the proxy (its go.mod replaces go-libp2p with
# a fork the proxy does not serve), and `go install pkg@version` refuses a module whose go.mod
# has replace/exclude directives, so the module is downloaded and built as the main module.
# The binary goes to $(go env GOPATH)/bin/ipfs; put that folder on PATH (or the tests find it).
set -euo pipefail
VERSION=v0.42.0
BIN="$(go env GOPATH)/bin"
if [ -x "$BIN/ipfs" ] && "$BIN/ipfs" version 2>/dev/null | grep -q "${VERSION#v}"; then
  exit 0
fi
command -v go >/dev/null || { echo "kubo: Go is needed (https://go.dev/dl or apt-get install golang)" >&2; exit 1; }
echo "kubo: building ipfs $VERSION (first time only, a few minutes)" >&2
DIR=$(go mod download -json "github.com/ipfs/kubo@$VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "$BIN"
(cd "$DIR" && go build -trimpath -o "$BIN/ipfs" ./cmd/ipfs)
"$BIN/ipfs" version >&2
