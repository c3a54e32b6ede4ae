#!/usr/bin/env bash
# Throughput benchmark: Moongate (standalone dataplane) against nginx +
# lua-nginx-module running the same Lua, measured with wrk over loopback.
# A benchmark, not a test: it prints a table and exits 0 unless it cannot run.
#
# Usage: e2e/bench/run.sh
# Environment:
#   SCENARIOS    scenarios to run            (default "hello headers dict dict-get dict-durable dict-sync
#                                             proxy proxy-large")
#                  dict: incr on a memory dict; dict-get: get; dict-durable: incr on a
#                  Moongate durable dict (redb write-behind) against nginx's memory dict;
#                  dict-sync: the same incr with {sync = true} (each request waits for the
#                  group commit that includes its write), against nginx's memory dict incr;
#                  proxy: an access-phase header check (403 when X-Deny is present), then a
#                  reverse proxy with 64 idle keep-alive upstream connections to an
#                  upstream nginx serving a fixed 1 KiB file; proxy-large: the same, 1 MiB.
#                  nginx proxies with `upstream backend { keepalive 64; }`, proxy_http_version
#                  1.1, `Connection ""` and its default proxy buffering (which may spill a
#                  1 MiB body to a temp file in the work directory when the client lags)
#                  redis: lua-resty-redis (Debian's lua-nginx-redis, unmodified) GET of one key
#                  from a redis-server on loopback through a keep-alive cosocket pool, the same
#                  code on both sides (run it with SCENARIOS=redis; not in the default set)
#   CONFIGS      configurations to run       (default "pinned unpinned")
#                  pinned:   1 server worker on CPU 0, wrk -t1 on CPU 1
#                  unpinned: nproc server workers, wrk -t2, no pinning
#                The proxy scenarios' upstream is one nginx (1 worker) shared by both sides,
#                started once per configuration. pinned puts it on CPU 2 when there is one;
#                with 2 CPUs it is left unpinned and competes with the server and wrk alike
#                (the same for both sides, so the ratio stays fair; absolute numbers drop).
#   DURATION     seconds per measurement     (default 10)
#   ROUNDS       alternating runs per side; the table shows medians (default 3)
#   WARMUP       seconds of warm-up before   (default 2)
#   CONNECTIONS  wrk connections, both sides (default 64)
#   PROXY_CONNECTIONS  wrk connection counts for proxy and proxy-large, one table row
#                each (default "1 16 256")
#   DATAPLANE    moongate-dataplane binary   (default target/release/moongate-dataplane)
#   SKIP_BUILD=1 do not run cargo build
#   KEEP=1       keep the work directory (configs, logs, raw wrk output)
set -euo pipefail

SCENARIOS=${SCENARIOS:-"hello headers dict dict-get dict-durable dict-sync proxy proxy-large"}
CONFIGS=${CONFIGS:-"pinned unpinned"}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CONNECTIONS=${PROXY_CONNECTIONS:-"1 16 256"}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATAPLANE=${DATAPLANE:-$ROOT/target/release/moongate-dataplane}
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}
# lua-resty-redis as Debian packages it (lua-nginx-redis).
REDIS_LIB=/usr/share/lua/5.1/nginx/redis.lua
NEED_REDIS=0

die() { echo "error: $*" >&2; exit 2; }
note() { echo "# $*" >&2; }

for v in DURATION WARMUP CONNECTIONS ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done
for c in $PROXY_CONNECTIONS; do
    [[ $c =~ ^[0-9]+$ && $c -gt 0 ]] || die "PROXY_CONNECTIONS must be positive integers (got '$PROXY_CONNECTIONS')"
done
[[ -n ${PROXY_CONNECTIONS// /} ]] || die "PROXY_CONNECTIONS is empty"
NEED_UPSTREAM=0
for s in $SCENARIOS; do
    case $s in
    hello | headers | dict | dict-get | dict-durable | dict-sync) ;;
    proxy | proxy-large) NEED_UPSTREAM=1 ;;
    redis) NEED_REDIS=1 ;;
    *) die "unknown scenario '$s' (hello, headers, dict, dict-get, dict-durable, dict-sync, proxy, proxy-large, redis)" ;;
    esac
done
for c in $CONFIGS; do
    case $c in pinned | unpinned) ;; *) die "unknown config '$c' (pinned, unpinned)" ;; esac
done

# --- tools ------------------------------------------------------------------

install_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    [[ -f $NGINX_MODULES/ngx_http_lua_module.so ]] || missing+=(libnginx-mod-http-lua)
    command -v wrk >/dev/null || missing+=(wrk)
    if ((NEED_REDIS)); then
        command -v redis-server >/dev/null || missing+=(redis-server)
        [[ -f $REDIS_LIB ]] || missing+=(lua-nginx-redis)
    fi
    ((${#missing[@]} == 0)) && return 0
    note "installing ${missing[*]}"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}
install_tools
command -v taskset >/dev/null || die "taskset (util-linux) is required"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || die "nginx not found"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    note "cargo build --release -p moongate-dataplane"
    (cd "$ROOT" && cargo build --release -p moongate-dataplane) ||
        note "building moongate-dataplane failed; Moongate columns will be n/a"
fi
HAVE_MOONGATE=1
if [[ ! -x $DATAPLANE ]]; then
    note "moongate-dataplane not found at $DATAPLANE (build it or set DATAPLANE); Moongate columns will be n/a"
    HAVE_MOONGATE=0
fi

NPROC=$(nproc)
if ((NPROC < 2)) && [[ " $CONFIGS " == *" pinned "* ]]; then
    note "pinned needs 2 CPUs, this machine has $NPROC; skipping it"
    kept=""
    for c in $CONFIGS; do [[ $c == pinned ]] || kept+="$c "; done
    CONFIGS=$kept
fi

# --- processes --------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/moongate-bench.XXXXXX")
chmod 755 "$WORK" # nginx workers run as nobody when we are root
PIDS=()
WRK_PID=""
UPSTREAM_PID=""

# Stops the servers started so far (one measurement runs at a time).
stop_servers() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    if [[ -n $WRK_PID ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
    stop_servers
    stop_upstream
    if [[ -n ${REDIS_PID:-} ]]; then kill -TERM "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
    if [[ ${KEEP:-0} == 1 ]]; then
        note "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a port nothing listens on, below the ephemeral range when there is
# room: with hundreds of client connections (wrk, proxies to their upstream) a
# port inside it may be some connection's local port, and bind() then fails.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local p lo=20000 span=40000
    ((EPHEMERAL_LOW > 11024)) && lo=10000 span=$((EPHEMERAL_LOW - 10000))
    for _ in $(seq 100); do
        p=$((lo + RANDOM % span))
        port_open "$p" || { echo "$p"; return 0; }
    done
    die "no free port found"
}

# wait_port PORT PID LOG: until PORT accepts connections (10 s), or the process exits.
wait_port() {
    for _ in $(seq 200); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || { note "server exited: $(tail -n 3 "$3" | tr '\n' ' ')"; return 1; }
        sleep 0.05
    done
    note "server did not listen on port $1 within 10 s: $(tail -n 3 "$3" | tr '\n' ' ')"
    return 1
}

# probe PORT [HEADER]: one request (with HEADER, a "Name: value" line, if given);
# prints the status line. Checks the server answers 200 before it is measured (a
# fast 500 would otherwise look like a win).
probe() {
    local line="" extra=""
    [[ -n ${2:-} ]] && extra="$2"$'\r\n'
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /t?x=1 HTTP/1.1\r\nHost: localhost\r\nX-Test: abc\r\n%sConnection: close\r\n\r\n' "$extra" >&3
    IFS= read -r -t 5 line <&3 || true
    exec 3<&-
    echo "${line%$'\r'}"
}

# --- server configurations --------------------------------------------------

# lua_for SCENARIO [KIND]: the handler. nginx has no sync writes: its dict-sync
# runs the plain memory-dict incr (the baseline the durable cost is compared to).
lua_for() {
    if [[ $1 == dict-sync && ${2:-moongate} == moongate ]]; then
        echo 'local v = ngx.shared.d:incr("k", 1, 0, 0, {sync = true}) ngx.say(v)'
        return
    fi
    case $1 in
    hello) echo 'ngx.say("hello")' ;;
    headers) echo 'local h = ngx.req.get_headers()["x-test"] or "-" local x = ngx.var.arg_x or "-" ngx.header["X-A"] = h ngx.header["X-B"] = x ngx.say("ok ", h, " ", x)' ;;
    dict | dict-durable | dict-sync) echo 'local v = ngx.shared.d:incr("k", 1, 0) ngx.say(v)' ;;
    dict-get) echo 'local v = ngx.shared.d:get("k") if not v then ngx.shared.d:set("k", "value") end ngx.say(v)' ;;
    proxy | proxy-large) echo 'if ngx.var.http_x_deny then return ngx.exit(403) end' ;;
    redis) echo "local red = require(\"resty.redis\"):new() red:set_timeouts(1000, 1000, 1000) local ok, err = red:connect(\"127.0.0.1\", $REDIS_PORT) if not ok then ngx.log(ngx.ERR, err) return ngx.exit(500) end local v = red:get(\"k\") if v == ngx.null then red:set(\"k\", \"value\") end red:set_keepalive(10000, 64) ngx.say(v)" ;;
    esac
}

is_proxy() { [[ $1 == proxy || $1 == proxy-large ]]; }

# upstream_port_for SCENARIO: the upstream nginx port serving that scenario's body.
upstream_port_for() {
    if [[ $1 == proxy-large ]]; then echo "$UPSTREAM_PORT_LARGE"; else echo "$UPSTREAM_PORT"; fi
}

# location_for SCENARIO: the routes file's location, after path and match.
location_for() {
    if is_proxy "$1"; then
        cat <<EOF
      access: |
        $(lua_for "$1")
      upstream: {url: "http://127.0.0.1:$(upstream_port_for "$1")", keepalive: {maxIdle: 64}}
EOF
    else
        cat <<EOF
      content: |
        $(lua_for "$1")
EOF
    fi
}

# modules_for SCENARIO: the routes file's modules (lua-resty-redis for redis).
modules_for() {
    [[ $1 == redis ]] || return 0
    echo "  modules:"
    echo "    resty.redis: |"
    sed 's/^/      /' "$REDIS_LIB"
}

write_routes() { # SCENARIO FILE
    cat >"$2" <<EOF
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: bench, namespace: default}
spec:
  sharedDicts: [{name: d, capacity: 1m, persistence: $([[ $1 == dict-durable || $1 == dict-sync ]] && echo Durable || echo Memory)}]
$(modules_for "$1")
  locations:
    - path: /t
      match: Exact
$(location_for "$1")
EOF
}

# nginx_conf WORKERS DIR HTTP: a complete nginx.conf with HTTP (server blocks
# and such) inside the http context; prints it.
nginx_conf() {
    local user=""
    ((EUID == 0)) && user="user nobody nogroup;"
    cat <<EOF
load_module $NGINX_MODULES/ndk_http_module.so;
load_module $NGINX_MODULES/ngx_http_lua_module.so;
worker_processes $1;
master_process on;
daemon off;
pid $2/nginx.pid;
error_log $2/error.log error;
$user
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $2/client_body_temp;
    proxy_temp_path $2/proxy_temp;
    fastcgi_temp_path $2/fastcgi_temp;
    uwsgi_temp_path $2/uwsgi_temp;
    scgi_temp_path $2/scgi_temp;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
$3
}
EOF
}

write_nginx_conf() { # SCENARIO WORKERS PORT DIR
    local http
    if is_proxy "$1"; then
        http=$(
            cat <<EOF
    upstream backend {
        server 127.0.0.1:$(upstream_port_for "$1");
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$3;
        location = /t {
            access_by_lua_block {
                $(lua_for "$1" nginx)
            }
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
        )
    else
        http=$(
            cat <<EOF
    lua_shared_dict d 1m;
    lua_package_path "$WORK/lualib/?.lua;;";
    server {
        listen 127.0.0.1:$3;
        location = /t {
            content_by_lua_block {
                $(lua_for "$1" nginx)
            }
        }
    }
EOF
        )
    fi
    nginx_conf "$2" "$4" "$http" >"$4/nginx.conf"
}

# start_upstream CONFIG: the upstream nginx of the proxy scenarios, one worker
# serving a fixed body for any path: 1 KiB on UPSTREAM_PORT, 1 MiB on
# UPSTREAM_PORT_LARGE (static files, so the upstream does little work per byte).
# pinned: on CPU 2 when there is one; unpinned otherwise (see the header).
start_upstream() {
    local dir="$WORK/upstream-$1" taskset=()
    mkdir -p "$dir"
    chmod 755 "$dir"
    head -c 1024 /dev/zero | tr '\0' x >"$dir/1k"
    head -c $((1024 * 1024)) /dev/zero | tr '\0' x >"$dir/1m"
    chmod 644 "$dir/1k" "$dir/1m"
    UPSTREAM_PORT=$(free_port)
    UPSTREAM_PORT_LARGE=$(free_port)
    [[ $UPSTREAM_PORT_LARGE != "$UPSTREAM_PORT" ]] || UPSTREAM_PORT_LARGE=$(free_port)
    nginx_conf 1 "$dir" "$(
        cat <<EOF
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { root $dir; try_files /1k =404; }
    }
    server {
        listen 127.0.0.1:$UPSTREAM_PORT_LARGE;
        location / { root $dir; try_files /1m =404; }
    }
EOF
    )" >"$dir/nginx.conf"
    if [[ $1 == pinned ]] && ((NPROC >= 3)); then
        taskset=(taskset -c 2)
        note "upstream nginx on CPU 2"
    elif [[ $1 == pinned ]]; then
        note "upstream nginx unpinned: no CPU left beside the server's (0) and wrk's (1)"
    fi
    "${taskset[@]}" "$NGINX" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/server.log" 2>&1 &
    UPSTREAM_PID=$!
    wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" "$dir/server.log" &&
        wait_port "$UPSTREAM_PORT_LARGE" "$UPSTREAM_PID" "$dir/server.log"
}

# start_redis: the redis scenario's redis-server, unpinned, with no persistence.
start_redis() {
    local dir="$WORK/redis"
    mkdir -p "$dir" "$WORK/lualib/resty"
    cp "$REDIS_LIB" "$WORK/lualib/resty/redis.lua"
    chmod -R a+rX "$WORK/lualib"
    REDIS_PORT=$(free_port)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$dir" >"$dir/server.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$REDIS_PORT" "$REDIS_PID" "$dir/server.log"
}

stop_upstream() {
    [[ -n $UPSTREAM_PID ]] || return 0
    kill -TERM "$UPSTREAM_PID" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$UPSTREAM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$UPSTREAM_PID" 2>/dev/null || true
    wait "$UPSTREAM_PID" 2>/dev/null || true
    UPSTREAM_PID=""
}

# start_server KIND SCENARIO WORKERS PIN: starts it and sets PORT. Not run in
# a subshell, so that PIDS (what cleanup kills) sees the server.
start_server() {
    local kind=$1 scenario=$2 workers=$3 pin=$4 dir pid
    PORT=$(free_port)
    dir="$WORK/$kind-$scenario-$workers-${pin:-any}"
    mkdir -p "$dir"
    chmod 755 "$dir"
    local taskset=()
    [[ -n $pin ]] && taskset=(taskset -c "$pin")
    if [[ $kind == moongate ]]; then
        write_routes "$scenario" "$dir/routes.yaml"
        "${taskset[@]}" "$DATAPLANE" --routes "$dir/routes.yaml" --listen "127.0.0.1:$PORT" \
            --workers "$workers" --data-dir "$dir/data" --egress-allow 127.0.0.1/32 >"$dir/server.log" 2>&1 &
    else
        write_nginx_conf "$scenario" "$workers" "$PORT" "$dir"
        "${taskset[@]}" "$NGINX" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/server.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    wait_port "$PORT" "$pid" "$dir/server.log"
}

# --- measurement ------------------------------------------------------------

# latency_ms VALUE: wrk's "1.23ms" / "850.00us" / "1.02s" in milliseconds.
latency_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.2f", n
    }'
}

# run_wrk OUT CMD...: runs wrk in the background and waits for it, so that a
# signal's trap runs at once (bash defers traps while a foreground command runs).
run_wrk() {
    local out=$1
    shift
    "$@" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || true
    WRK_PID=""
}

# measure KIND SCENARIO CONFIG CONNECTIONS: sets RPS, P99 (ms) and ERRORS (non-2xx
# responses and socket errors, or why there is no measurement). Not run in a subshell
# (see start_server).
measure() {
    local kind=$1 scenario=$2 config=$3 conns=$4 workers pin wrk_pin threads status out
    RPS=n/a P99=n/a
    if [[ $config == pinned ]]; then
        workers=1 pin=0 wrk_pin=(taskset -c 1) threads=1
    else
        workers=$NPROC pin="" wrk_pin=() threads=2
    fi
    ((threads <= conns)) || threads=$conns # wrk wants a connection per thread at least
    if ! start_server "$kind" "$scenario" "$workers" "$pin"; then
        stop_servers
        ERRORS=start-failed
        return
    fi
    status=$(probe "$PORT" || true)
    if [[ $status != *" 200"* ]]; then
        note "$kind $scenario: probe answered '${status:-nothing}'"
        stop_servers
        ERRORS=probe-failed
        return
    fi
    # The access check runs: a proxy that skipped it would measure less work.
    if is_proxy "$scenario"; then
        status=$(probe "$PORT" "X-Deny: 1" || true)
        if [[ $status != *" 403"* ]]; then
            note "$kind $scenario: probe with X-Deny answered '${status:-nothing}', not 403"
            stop_servers
            ERRORS=deny-probe-failed
            return
        fi
    fi
    local url="http://127.0.0.1:$PORT/t?x=1"
    out="$WORK/wrk-$kind-$scenario-$config-c$conns.txt"
    run_wrk /dev/null "${wrk_pin[@]}" wrk -t"$threads" -c"$conns" -d"${WARMUP}s" -H "X-Test: abc" "$url"
    run_wrk "$out" "${wrk_pin[@]}" wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -H "X-Test: abc" "$url"
    stop_servers
    local rps p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    ERRORS=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
    if [[ -z $rps || -z $p99 ]]; then
        note "$kind $scenario $config: cannot parse wrk output: $(tr '\n' ' ' <"$out" | cut -c1-200)"
        ERRORS=wrk-failed
        return
    fi
    RPS=$rps P99=$(latency_ms "$p99")
}

# median VALUES...: the middle value (n/a when there is none; grep's status 1 then
# must not fail the pipeline under pipefail).
median() {
    printf '%s\n' "$@" | { grep -v '^n/a$' || true; } | sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "n/a"; else print v[int((NR + 1) / 2)] }'
}

note "duration ${DURATION}s, warm-up ${WARMUP}s, $CONNECTIONS connections (proxy: $PROXY_CONNECTIONS), $NPROC CPUs, $ROUNDS rounds (medians)"
ROWS=()
if ((NEED_REDIS)) && ! start_redis; then
    die "redis-server did not start"
fi
for config in $CONFIGS; do
    if ((NEED_UPSTREAM)) && ! start_upstream "$config"; then
        die "the upstream nginx of the proxy scenarios did not start"
    fi
    for scenario in $SCENARIOS; do
        conn_list=$CONNECTIONS
        is_proxy "$scenario" && conn_list=$PROXY_CONNECTIONS
        for conns in $conn_list; do
            note "$config $scenario $conns connections"
            # Alternate the two servers ROUNDS times and keep the medians, so a
            # burst of load from elsewhere on a shared machine hits both sides.
            m_rpss=() m_p99s=() n_rpss=() n_p99s=() m_err=0 n_err=0
            for ((round = 1; round <= ROUNDS; round++)); do
                if ((HAVE_MOONGATE)); then
                    measure moongate "$scenario" "$config" "$conns"
                    m_rpss+=("$RPS") m_p99s+=("$P99")
                    [[ $ERRORS != 0 ]] && m_err=$ERRORS
                else
                    m_err=missing
                fi
                measure nginx "$scenario" "$config" "$conns"
                n_rpss+=("$RPS") n_p99s+=("$P99")
                [[ $ERRORS != 0 ]] && n_err=$ERRORS
            done
            m_rps=$(median "${m_rpss[@]}") m_p99=$(median "${m_p99s[@]}")
            n_rps=$(median "${n_rpss[@]}") n_p99=$(median "${n_p99s[@]}")
            ratio=$(awk -v m="$m_rps" -v n="$n_rps" 'BEGIN { if (m + 0 > 0 && n + 0 > 0) printf "%.2f", m / n; else print "n/a" }')
            notes=""
            [[ $m_err != 0 ]] && notes+="moongate:$m_err "
            [[ $n_err != 0 ]] && notes+="nginx:$n_err"
            ROWS+=("$(printf '%-9s %-12s %5s %14s %14s %7s %13s %13s  %s' "$config" "$scenario" "$conns" "$m_rps" \
                "$n_rps" "$ratio" "$m_p99" "$n_p99" "${notes:--}")")
        done
    done
    stop_upstream
done

printf '\n%-9s %-12s %5s %14s %14s %7s %13s %13s  %s\n' config scenario conns "moongate rps" "nginx rps" ratio \
    "moongate p99" "nginx p99" "errors"
printf '%-9s %-12s %5s %14s %14s %7s %13s %13s  %s\n' "" "" "" "" "" "m/n" "(ms)" "(ms)" ""
printf '%s\n' "${ROWS[@]}"
