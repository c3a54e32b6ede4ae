#!/usr/bin/env bash
# Tenant isolation benchmark: what hostile routes cost the others, and what
# a tenant VM costs. A benchmark, not a test: it prints tables and exits 0
# unless it cannot run. Loopback only, bounded in time.
#
# 1. p99 under attack. wrk loads a benign route (namespace `good`) for
#    DURATION seconds, alone (baseline), then again while a second wrk sends
#    hostile requests to routes of namespace `evil` (each scenario in turn):
#      spin     while true do end                      (yieldable: sliced)
#      sort     a table.sort comparator that never ends (unyieldable stretch)
#      pattern  a backtracking string.find              (C work, charged)
#      regex    ngx.re.find near PCRE2's match limit    (C work, charged by time)
#      rep      string.rep of 1 GiB                     (memory limit)
#      alloc    concatenation in a loop                 (allocation charged)
#    and prints the benign route's p50/p99 and rps against the baseline, and
#    the hostile requests' status counts. Baseline and attack runs alternate
#    ROUNDS times; medians are shown.
# 2. Cost of a tenant VM. `--check` (one VM per namespace, as a worker
#    makes them) over N routes in one namespace and over N routes in N
#    namespaces: peak RSS and time, so RSS per VM = difference / N.
#
# Usage: e2e/bench/isolation.sh
# Environment:
#   DURATION     seconds per measurement   (default 10)
#   ROUNDS       alternations, medians     (default 3)
#   CONNECTIONS  benign wrk connections    (default 32)
#   ATTACKERS    hostile wrk connections   (default 4)
#   WORKERS      dataplane workers         (default 2)
#   SCENARIOS    hostile scenarios         (default "spin sort pattern regex rep alloc")
#   VMS          namespaces for the cost   (default 200)
#   DATAPLANE    moongate-dataplane binary (default target/release/moongate-dataplane)
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
ATTACKERS=${ATTACKERS:-4}
WORKERS=${WORKERS:-2}
SCENARIOS=${SCENARIOS:-"spin sort pattern regex rep alloc"}
VMS=${VMS:-200}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATAPLANE=${DATAPLANE:-$ROOT/target/release/moongate-dataplane}

die() { echo "error: $*" >&2; exit 2; }
note() { echo "# $*" >&2; }
command -v wrk >/dev/null || die "wrk is required (apt-get install wrk)"
[[ -x $DATAPLANE ]] || die "no dataplane at $DATAPLANE (cargo build --release -p moongate-dataplane)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/moongate-isolation.XXXXXX")
PID=""
cleanup() {
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

route() { # NAMESPACE NAME PATH LUA: a route for host NAMESPACE.example
    cat <<EOF
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: $2, namespace: $1}
spec:
  hostnames: [$1.example]
  locations:
  - path: $3
    match: Exact
    content: |
$(sed 's/^/      /' <<<"$4")
EOF
}

hostile_lua() {
    case $1 in
    spin) echo 'while true do end' ;;
    sort) echo 'local t = {} for i = 1, 100 do t[i] = i end
table.sort(t, function(a, b) while true do end end)' ;;
    pattern) echo 'string.find(("a"):rep(3000), ("a*"):rep(20) .. "b")' ;;
    regex) echo 'local s = ("a"):rep(26)
for i = 1, 400 do ngx.re.find(s, "(a+)+b", "o") end' ;;
    rep) echo 'local s = string.rep("x", 2^30) ngx.say(#s)' ;;
    alloc) echo 'local s = ("x"):rep(1 << 20) while true do local t = s .. "y" end' ;;
    *) die "unknown scenario $1" ;;
    esac
}

{
    route good hello /hello 'ngx.say("hello")'
    for s in $SCENARIOS; do route evil "$s" "/$s" "$(hostile_lua "$s")"; done
} >"$WORK/routes.yaml"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=$((20000 + RANDOM % 40000))
"$DATAPLANE" --routes "$WORK/routes.yaml" --listen "127.0.0.1:$PORT" --workers "$WORKERS" \
    --data-dir "$WORK/data" >"$WORK/dataplane.log" 2>&1 &
PID=$!
for _ in $(seq 200); do port_open "$PORT" && break; sleep 0.05; done
port_open "$PORT" || die "the dataplane did not start: $(tail -3 "$WORK/dataplane.log")"

# wrk_run CONNS THREADS HOST PATH OUT: wrk with latency, into OUT.
wrk_run() {
    wrk -t"$2" -c"$1" -d"${DURATION}s" --latency --timeout 30s -H "Host: $3" "http://127.0.0.1:$PORT$4" >"$5" 2>&1 || true
}
# p LINE-PREFIX FILE: the latency at a percentile, in ms.
pct() {
    awk -v p="$1" '$1 == p { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.3f", v }' "$2"
}
rps() { awk '/Requests\/sec/ { printf "%.0f", $2 }' "$1"; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

DURATION=2 wrk_run "$CONNECTIONS" 1 good.example /hello "$WORK/warmup"
echo "## p99 of a benign route while another namespace's route is hostile"
echo "## ($WORKERS workers, $CONNECTIONS benign connections, $ATTACKERS hostile, ${DURATION}s, medians of $ROUNDS)"
printf "| %-8s | %9s | %9s | %9s | %9s | %8s | %8s | %s |\n" scenario "base p50" "base p99" "p50" "p99" "p99 x" "rps x" "hostile responses"
printf "|%s|\n" "----------|-----------|-----------|-----------|-----------|----------|----------|------------------"
for s in $SCENARIOS; do
    : >"$WORK/base"
    : >"$WORK/att"
    for round in $(seq "$ROUNDS"); do
        wrk_run "$CONNECTIONS" 1 good.example /hello "$WORK/b.$round"
        echo "$(pct 50% "$WORK/b.$round") $(pct 99% "$WORK/b.$round") $(rps "$WORK/b.$round")" >>"$WORK/base"
        wrk_run "$ATTACKERS" 1 evil.example "/$s" "$WORK/h.$round" &
        local_attacker=$!
        wrk_run "$CONNECTIONS" 1 good.example /hello "$WORK/a.$round"
        wait "$local_attacker" || true
        echo "$(pct 50% "$WORK/a.$round") $(pct 99% "$WORK/a.$round") $(rps "$WORK/a.$round")" >>"$WORK/att"
    done
    b50=$(cut -d' ' -f1 "$WORK/base" | median); b99=$(cut -d' ' -f2 "$WORK/base" | median); brps=$(cut -d' ' -f3 "$WORK/base" | median)
    a50=$(cut -d' ' -f1 "$WORK/att" | median); a99=$(cut -d' ' -f2 "$WORK/att" | median); arps=$(cut -d' ' -f3 "$WORK/att" | median)
    hostile=$(awk '/requests in/ { n = $1 } /Non-2xx/ { e = $5 } END { printf "%s requests, %s non-2xx", n, e + 0 }' "$WORK/h.$ROUNDS")
    printf "| %-8s | %7.2fms | %7.2fms | %7.2fms | %7.2fms | %8.2f | %8.2f | %s |\n" "$s" "$b50" "$b99" "$a50" "$a99" \
        "$(awk -v a="$a99" -v b="$b99" 'BEGIN { print a / b }')" "$(awk -v a="$arps" -v b="$brps" 'BEGIN { print a / b }')" "$hostile"
done
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
if grep -q "panicked\|SIGSEGV\|stack overflow" "$WORK/dataplane.log"; then
    note "the dataplane log shows a crash:"; grep -m3 "panicked\|SIGSEGV\|stack overflow" "$WORK/dataplane.log" >&2
fi

echo
echo "## Cost of a tenant VM (--check loads every route as one worker does)"
cost() { # DIR: "peak-KiB seconds"
    /usr/bin/time -f "%M %e" "$DATAPLANE" --check --routes "$1" 2>&1 >/dev/null | tail -1
}
mkdir -p "$WORK/one" "$WORK/many"
for i in $(seq "$VMS"); do
    route shared "r$i" "/r$i" 'ngx.say("hi")' >>"$WORK/one/routes.yaml"
    route "ns$i" "r$i" "/r$i" 'ngx.say("hi")' >>"$WORK/many/routes.yaml"
done
read -r one_kib one_s < <(cost "$WORK/one")
read -r many_kib many_s < <(cost "$WORK/many")
printf "| %-32s | %10s | %8s |\n" layout "peak RSS" time
printf "|%s|\n" "----------------------------------|------------|----------"
printf "| %-32s | %7d MiB | %7.2fs |\n" "$VMS routes, 1 namespace (1 VM)" $((one_kib / 1024)) "$one_s"
printf "| %-32s | %7d MiB | %7.2fs |\n" "$VMS routes, $VMS namespaces ($VMS VMs)" $((many_kib / 1024)) "$many_s"
awk -v a="$many_kib" -v b="$one_kib" -v n="$VMS" -v ta="$many_s" -v tb="$one_s" \
    'BEGIN { printf "per tenant VM: %.0f KiB, %.2f ms to create\n", (a - b) / (n - 1), (ta - tb) * 1000 / (n - 1) }'
