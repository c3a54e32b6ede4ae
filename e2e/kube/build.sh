#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the pinned Go modules beside this
# script into <repo>/.cache/e2e-bin (or $E2E_BIN_DIR), for the e2e tests.
#
# A cold build takes several minutes on 2 cores, so it is skipped when the stamp
# file records the same inputs (go.mod/go.sum files, this script, Go version)
# and all binaries exist. Needs only Go: CGO is off so no C toolchain is used.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${E2E_BIN_DIR:-$repo/.cache/e2e-bin}"
stamp="$out/.stamp"
bins=(kube-apiserver kubectl etcd)

# A fresh machine may have Go installed but not on PATH (e.g. non-login shells).
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null 2>&1 || { echo "build.sh: go not found on PATH" >&2; exit 1; }

mkdir -p "$out"

# Test binaries may start concurrently; only one of them should build.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out/.lock"
    flock 9
fi

inputs=(
    "$here/apiserver/go.mod" "$here/apiserver/go.sum"
    "$here/etcd/go.mod" "$here/etcd/go.sum"
    "$here/build.sh"
)
want="$(
    cd "$here"
    sha256sum "${inputs[@]#"$here/"}"
    go env GOVERSION GOOS GOARCH
)"

all_exist=1
for b in "${bins[@]}"; do
    [ -x "$out/$b" ] || all_exist=0
done
if [ "$all_exist" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    for b in "${bins[@]}"; do
        echo "reused $out/$b"
    done
    exit 0
fi

# The release tarballs are built this way: static, and VCS stamping would fail
# or differ between a git checkout and an unpacked tree.
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly"
# A toolchain line in a dependency must not make go try to download another Go.
export GOTOOLCHAIN=local

tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
rm -f "$stamp"

kube_version="$(cd "$here/apiserver" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
kube_minor="${kube_version#v1.}"
kube_minor="${kube_minor%%.*}"
# Without these the binaries report v0.0.0-master, which clients print in
# version-skew warnings; hack/lib/version.sh sets the same variables.
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean"
done

start=$SECONDS
(cd "$here/etcd" && go build -trimpath -ldflags='-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
echo "built $out/etcd ($((SECONDS - start))s)"

start=$SECONDS
# One invocation so the packages both commands share compile once.
(cd "$here/apiserver" && go build -trimpath -ldflags="$kube_ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
secs=$((SECONDS - start))
echo "built $out/kube-apiserver (${secs}s, with kubectl)"
echo "built $out/kubectl (${secs}s, with kube-apiserver)"

for b in "${bins[@]}"; do
    mv -f "$tmp/$b" "$out/$b"
done
printf '%s\n' "$want" >"$stamp"
