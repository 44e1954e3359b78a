#!/usr/bin/env bash
# Build meshbridge's real Go peers from the Go module proxy into .peers/bin/ (see peers/README.md).
# Usage: peers/build.sh [PEER ...]   (default: every peer). Idempotent: a peer whose binaries exist and
# whose pinned module files (peers/<peer>/go.mod, go.sum) have not changed since its last build is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.peers/bin
STAMPS=$ROOT/.peers/stamps
mkdir -p "$BIN" "$STAMPS"
# cgo stays on (Go's default where gcc exists): spire-server's SQLite datastore needs it.
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

# peer -> "tool-module-dir|package ...|binary ...|extra -ldflags"
declare -A PEERS=(
  [ghostunnel]="ghostunnel|github.com/ghostunnel/ghostunnel|ghostunnel|-X main.version=v1.11.2"
  [spire]="spire|github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent|spire-server spire-agent"
  [istioctl]="istioctl|istio.io/istio/istioctl/cmd/istioctl|istioctl"
  [kube-apiserver]="kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|kube-apiserver"
  [spire-controller-manager]="spire-controller-manager|github.com/spiffe/spire-controller-manager/cmd|spire-controller-manager"
  [etcd]="etcd|meshbridge.local/peers/etcd/cmd/etcd|etcd"
)
ORDER=(ghostunnel spire istioctl kube-apiserver spire-controller-manager etcd)

if ! command -v go >/dev/null 2>&1; then
  echo "peers: 'go' is not on PATH; install Go >= 1.26 to build the real peers (tests that need them skip)" >&2
  exit 0
fi

want=("$@")
[ ${#want[@]} -eq 0 ] && want=("${ORDER[@]}")
for peer in "${want[@]}"; do
  spec=${PEERS[$peer]:-}
  if [ -z "$spec" ]; then echo "peers: unknown peer '$peer' (known: ${ORDER[*]})" >&2; exit 2; fi
  IFS='|' read -r dir pkgs bins ldx <<<"$spec"
  moddir=$ROOT/peers/$dir
  sum=$( (cat "$moddir/go.mod" "$moddir/go.sum" 2>/dev/null; echo "$spec") | sha256sum | cut -c1-16)
  have=yes
  for b in $bins; do [ -x "$BIN/$b" ] || have=no; done
  if [ $have = yes ] && [ "$(cat "$STAMPS/$peer" 2>/dev/null)" = "$sum" ]; then
    echo "peers: $peer up to date ($bins in .peers/bin)"
    continue
  fi
  echo "peers: building $peer ($bins) ..."
  start=$(date +%s)
  tmp=$(mktemp -d "$ROOT/.peers/tmp.XXXXXX")
  (cd "$moddir" && GOBIN=$tmp go install -trimpath -ldflags="-s -w ${ldx:-}" $pkgs)
  for b in $bins; do
    src=$tmp/$b
    # spire-controller-manager's main package is its cmd/ directory: the binary is named 'cmd'
    [ -x "$src" ] || src=$tmp/$(basename "${pkgs%% *}")
    mv -f "$src" "$BIN/$b"
  done
  rmdir "$tmp" 2>/dev/null || rm -rf "$tmp"
  echo "$sum" >"$STAMPS/$peer"
  echo "peers: built $peer in $(( $(date +%s) - start ))s"
done
