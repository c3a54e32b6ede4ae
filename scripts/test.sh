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
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v memcached >/dev/null || need_apt+=(memcached)
# OpenResty libraries the cosocket tests run unmodified (Debian's names).
[ -f /usr/share/lua/5.1/nginx/redis.lua ] || need_apt+=(lua-nginx-redis)
[ -f /usr/share/lua/5.1/nginx/memcached.lua ] || need_apt+=(lua-nginx-memcached)
[ -f /usr/share/lua/5.1/nginx/websocket/server.lua ] || need_apt+=(lua-nginx-websocket)
# The reference the cjson differential test (dataplane/tests/cjson.rs) runs:
# a LuaJIT with Debian's lua-cjson. luajit2 (OpenResty's branch, installed as
# /usr/bin/luajit), not the luajit package: that one conflicts with
# libluajit2, which nginx's Lua modules pull in.
command -v luajit >/dev/null || need_apt+=(luajit2)
ls /usr/lib/*/lua/5.1/cjson.so >/dev/null 2>&1 || need_apt+=(lua-cjson)
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
  echo "conformance: ${passed}/${total} cases pass (${pct}%), floor 85%"
  if [ "$pct" -lt 85 ]; then
    echo "conformance fell below 85%" >&2
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
