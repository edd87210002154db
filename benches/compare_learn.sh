#!/usr/bin/env bash
# Learned sessions end to end: the same gateway, the same three bench backends, a route with
# insert (the gateway's signed cookie) and a route with learn (the application's JSESSIONID,
# in-process store), and a second gateway whose learn route uses a Redis store on loopback;
# every request carries a known session. Measured alternately with wrk.
#
#     bash benches/compare_learn.sh
#
# Builds the gateway with the redis feature and the bench backend (cargo profile PROFILE,
# default release), starts Debian's redis-server on a free port (installed when missing), and
# prints the medians of requests per second, p99 latency and the gateway's CPU time per
# request. Everything it started is stopped when it exits.
#
# Settings (environment): ROUNDS (3), DURATION (10), CONNECTIONS (50), WARMUP (2), PROFILE.

source "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
WARMUP="${WARMUP:-2}"
FEATURES=redis

need_packages wrk wrk
need_packages redis-server redis-server
build

free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
start_backends "$B1" "$B2" "$B3"
free_port; REDIS_PORT=$PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.out" 2>&1 &
started $!
wait_port "$REDIS_PORT"
KEY=$(head -c 32 /dev/urandom | base64)

config() { # listen port, store block
    cat <<EOF
listen: 127.0.0.1:$1
keys: ["$KEY"]
store: $2
services:
  - name: bench
    endpoints: ["127.0.0.1:$B1", "127.0.0.1:$B2", "127.0.0.1:$B3"]
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: bench}
    spec:
      rules:
        - matches: [{path: {type: PathPrefix, value: /insert}}]
          backendRefs: [{name: bench, port: 80}]
          sessionPersistence: {cookie: {name: SRV}}
        - matches: [{path: {type: PathPrefix, value: /learn}}]
          backendRefs: [{name: bench, port: 80}]
          sessionPersistence: {cookie: {name: JSESSIONID}}
          x-session-persistence: {strategy: learn, learn: {fromRequests: true}}
EOF
}
free_port; MEMORY_PORT=$PORT
config "$MEMORY_PORT" "{memory: {maxEntries: 1000000}}" >"$WORK/memory.yaml"
start_gateway "$WORK/memory.yaml" memory
MEMORY_PID=$GATEWAY_PID
free_port; REDIS_GW_PORT=$PORT
config "$REDIS_GW_PORT" "{redis: {url: \"redis://127.0.0.1:$REDIS_PORT/0\", timeout: 50ms}}" >"$WORK/redis.yaml"
start_gateway "$WORK/redis.yaml" redis
REDIS_PID=$GATEWAY_PID

# Sessions: three insert cookies (one per backend); three application ids, learned from the
# client's first request (fromRequests) on each gateway.
declare -A found=()
for i in $(seq 1 60); do
    headers=$(curl -s -D - -o /dev/null "http://127.0.0.1:$MEMORY_PORT/insert" | tr -d '\r')
    server=$(awk -F': ' 'tolower($1)=="x-server"{print $2}' <<<"$headers")
    cookie=$(awk -F': ' 'tolower($1)=="set-cookie"{print $2}' <<<"$headers" | cut -d';' -f1)
    [ -n "$server" ] && [ -n "$cookie" ] && found[$server]="$cookie"
    [ ${#found[@]} -eq 3 ] && break
done
[ ${#found[@]} -eq 3 ] || { log "no insert session for every backend"; exit 1; }
LEARNED=(JSESSIONID=bench-app-session-1 JSESSIONID=bench-app-session-2 JSESSIONID=bench-app-session-3)
for port in "$MEMORY_PORT" "$REDIS_GW_PORT"; do
    for c in "${LEARNED[@]}"; do curl -s -o /dev/null -H "cookie: $c" "http://127.0.0.1:$port/learn"; done
done
lua() { # path, cookies...
    local path="$1"; shift
    echo 'local cookies = {'
    printf '  "%s",\n' "$@"
    echo '}'
    cat <<EOF
local requests, n = {}, 0
function init(args)
  for i, c in ipairs(cookies) do requests[i] = wrk.format("GET", "$path", { ["Cookie"] = c }) end
end
function request() n = n % #requests + 1; return requests[n] end
EOF
}
lua /insert "${found[s1]}" "${found[s2]}" "${found[s3]}" >"$WORK/insert.lua"
lua /learn "${LEARNED[@]}" >"$WORK/learn.lua"
LINES=(
    "insert|$MEMORY_PID|http://127.0.0.1:$MEMORY_PORT/insert|$WORK/insert.lua"
    "learn-memory|$MEMORY_PID|http://127.0.0.1:$MEMORY_PORT/learn|$WORK/learn.lua"
    "learn-redis|$REDIS_PID|http://127.0.0.1:$REDIS_GW_PORT/learn|$WORK/learn.lua"
)

RESULTS="$WORK/results"
: >"$RESULTS"
run() {
    local name pid url script
    IFS='|' read -r name pid url script <<<"$1"
    local before after out
    before=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"$2s" --latency -s "$script" "$url")
    after=$(cpu_ticks "$pid")
    [ "$3" = yes ] || return 0
    grep -e 'Non-2xx' -e 'Socket errors' <<<"$out" >&2 || true
    awk -v name="$name" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        function us(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u); return u == "ms" ? n * 1000 : u == "s" ? n * 1e6 : n }
        /^Requests\/sec:/ { rps = $2 } $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) } /requests in/ { req = $1 }
        END { printf "%s %.0f %.0f %.0f %.2f\n", name, rps, p50, p99, ticks / hz * 1e6 / req }' <<<"$out" |
        tee -a "$RESULTS" >&2
}
MACHINE=$(machine)
log "warming up"
for line in "${LINES[@]}"; do run "$line" "$WARMUP" no; done
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for line in "${LINES[@]}"; do run "$line" "$DURATION" yes; done
done

echo
echo "## compare_learn.sh"
echo
echo '```text'
echo "$MACHINE"
echo "settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS"
echo '```'
echo
echo "| route | req/s (median, range) | p50 (median) | p99 (median) | gateway CPU per request |"
echo "|---|---:|---:|---:|---:|"
awk '
function med(list, n,   a, i, j, t) { split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function lo(list,  a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
function hi(list,  a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
{ if (!($1 in c)) o[++k] = $1; c[$1]++; r[$1] = r[$1] " " $2; m[$1] = m[$1] " " $3; p[$1] = p[$1] " " $4; u[$1] = u[$1] " " $5 }
END { for (i = 1; i <= k; i++) { t = o[i]; printf "| %s | %.0f (%.0f–%.0f) | %.0f µs | %.0f µs | %.2f µs |\n", t, med(r[t], c[t]), lo(r[t]), hi(r[t]), med(m[t], c[t]), med(p[t], c[t]), med(u[t], c[t]) } }' "$RESULTS"
echo
echo "Raw runs (name, req/s, p50 µs, p99 µs, CPU µs per request):"
echo
echo '```text'
cat "$RESULTS"
echo '```'
