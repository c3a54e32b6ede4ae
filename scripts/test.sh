#!/usr/bin/env bash
# Runs every Moongate test on a fresh Debian machine with a Rust toolchain:
# installs what the tests need, checks formatting and lints, runs the
# conformance suite against the real dataplane, then the unit, integration
# and Kubernetes e2e tests. Everything builds once, in the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
# Real servers the integration tests run as upstreams and peers.
[ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
# Format-2 conformance cases run their own redis / memcached services.
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v memcached >/dev/null || need_apt+=(memcached)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets -- -D warnings

echo "==> build"
cargo build --release --workspace --bins

cases="${CONFORMANCE_CASES:-../shared/conformance/cases}"
if [ -d "$cases" ]; then
  echo "==> conformance ($cases)"
  out=$(mktemp)
  ./target/release/conformance -q -j 2 "$cases" | tee "$out"
  summary=$(tail -n 1 "$out")
  rm -f "$out"
  passed=${summary%% passed*}
  failed=${summary#*, }; failed=${failed%% failed*}
  total=$((passed + failed))
  pct=$((passed * 100 / total))
  echo "conformance: ${passed}/${total} cases pass (${pct}%), floor 75%"
  if [ "$pct" -lt 75 ]; then
    echo "conformance fell below 75%" >&2
    exit 1
  fi
else
  echo "==> conformance cases not found at $cases; skipping (set CONFORMANCE_CASES)"
fi

# The Kubernetes e2e tests run a real kube-apiserver and etcd, built from the
# pinned upstream Go modules (cached in .cache/e2e-bin; minutes when cold).
echo "==> kube-apiserver, kubectl and etcd for the e2e tests"
e2e/kube/build.sh

echo "==> cargo test"
cargo test --release --workspace
