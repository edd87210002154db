#!/usr/bin/env bash
# The example gateway against HAProxy 2.6, end to end, on this machine:
#
#     bash benches/compare_haproxy.sh
#
# Builds the gateway and the bench backend (examples/bench_backend.rs), installs
# `haproxy` and `wrk` from Debian's packages when they are missing, and starts on loopback:
#   * three bench backends (s1, s2, s3; one thread each), shared by every proxy;
#   * HAProxy (`nbthread` = the number of cores, one thread per core) with two listeners over
#     them: `cookie SRV insert indirect nocache`, and the same without `cookie`;
#   * the gateway twice: a route with `sessionPersistence` (cookie SRV, insert, indirect,
#     nocache, the default signed codec), and the same route without it.
# Then it measures each target with `wrk --latency`, alternately, ROUNDS times, with no
# cookie (every response sets a new session) and with a valid session cookie on every
# request (one session per backend, in turn), and prints requests per second, p50 and
# p99 latency and the proxy's CPU time per request (medians over the rounds, with the range),
# then the ratios. Neither proxy logs requests during the runs, and both add the same
# X-Forwarded-For, -Proto and -Host headers (HAProxy: `option forwardfor` and two
# `set-header`). Everything it started is stopped when it exits.
#
# Settings (environment): ROUNDS (3), DURATION (10 seconds per run), CONNECTIONS (50),
# WRK_THREADS (1), WARMUP (2 seconds per target before the rounds), BACKENDS (3; 1 or 2 use
# the first ones only: with one, no route has a balancing choice), CODEC (signed; or sealed,
# plain), GATEWAY_LOG (warn: the gateway's RUST_LOG), PROFILE (release: the cargo profile the
# gateway is built with, as users build it; or dev), TARGETS (a space-separated subset of the target names
# below), BEFORE (another gateway binary, e.g. an earlier commit's: started with the sticky
# configuration as the targets before-sticky-*, measured in the same rounds), FEATURE_COSTS (1:
# also the sticky gateway with one feature changed each, targets feature-*-cookie, to price
# each feature against gateway-sticky-cookie in the same rounds: `metrics` turns the admin
# port's metrics on, `notimeouts` turns the backend and body timeouts off, `noredispatch`
# turns redispatch and its retry budget off).

source "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-2}"
CODEC="${CODEC:-signed}"
BACKENDS="${BACKENDS:-3}"
case "$BACKENDS" in 1 | 2 | 3) ;; *) log "BACKENDS must be 1, 2 or 3"; exit 2 ;; esac

need_packages haproxy haproxy wrk wrk
build

free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
free_port; H_STICKY=$PORT
free_port; H_PLAIN=$PORT
free_port; G_STICKY=$PORT
free_port; G_PLAIN=$PORT

PORTS=(- "$B1" "$B2" "$B3")
start_backends "${PORTS[@]:1:$BACKENDS}"

NPROC=$(nproc)
{
    haproxy_head
    haproxy_listen sticky "127.0.0.1:$H_STICKY" http yes "${PORTS[@]:1:$BACKENDS}"
    haproxy_listen plain "127.0.0.1:$H_PLAIN" http no "${PORTS[@]:1:$BACKENDS}"
} >"$WORK/haproxy.cfg"
start_haproxy "$H_STICKY" "$H_PLAIN"

KEY=$(head -c 32 /dev/urandom | base64)
# `$3`: extra top-level lines; `$4`: extra lines for the rule (both optional).
gateway_config() {
    local port="$1" persistence="$2" top="${3:-}" rule="${4:-}" lines=""
    if [ "$persistence" = yes ]; then
        lines="sessionPersistence: {cookie: {name: SRV}}
x-session-persistence: {strategy: insert, indirect: true, nocache: true, codec: $CODEC}"
    fi
    [ -z "$rule" ] || lines="${lines:+$lines
}$rule"
    TOP_LINES="$top" bench_gateway_yaml "$port" "$KEY" "$lines" "${PORTS[@]:1:$BACKENDS}"
}
gateway_config "$G_STICKY" yes >"$WORK/gateway-sticky.yaml"
gateway_config "$G_PLAIN" no >"$WORK/gateway-plain.yaml"
start_gateway "$WORK/gateway-sticky.yaml" gateway-sticky
GW_STICKY_PID=$GATEWAY_PID
start_gateway "$WORK/gateway-plain.yaml" gateway-plain
GW_PLAIN_PID=$GATEWAY_PID
GW_BEFORE_PID=
if [ -n "${BEFORE:-}" ]; then
    free_port; G_BEFORE=$PORT
    gateway_config "$G_BEFORE" yes >"$WORK/gateway-before.yaml"
    AFTER_BINARY="$GATEWAY" GATEWAY="$BEFORE"
    start_gateway "$WORK/gateway-before.yaml" gateway-before
    GW_BEFORE_PID=$GATEWAY_PID GATEWAY="$AFTER_BINARY"
fi

FEATURE_TARGETS=""
if [ "${FEATURE_COSTS:-0}" = 1 ]; then
    free_port; G_ADMIN=$PORT
    # name | extra top-level lines | extra rule lines
    while IFS='|' read -r feature top rule; do
        [ -n "$feature" ] || continue
        free_port
        gateway_config "$PORT" yes "$top" "$rule" >"$WORK/gateway-feature-$feature.yaml"
        start_gateway "$WORK/gateway-feature-$feature.yaml" "gateway-feature-$feature"
        FEATURE_TARGETS+="feature-$feature-cookie|$GATEWAY_PID|http://127.0.0.1:$PORT/|GW_LUA
"
    done <<EOF
metrics|admin: {listen: 127.0.0.1:$G_ADMIN}|
notimeouts|timeouts: {clientBody: 0s, backendResponse: 0s, backendIdle: 0s}|
noredispatch||x-balancer: {redispatches: 0}
EOF
fi

# One valid session per backend: ask without a cookie until each backend has answered.
# `$1`: the URL; prints BACKENDS `Cookie` values, s1's first.
sessions() {
    local url="$1" i server cookie
    declare -A found=()
    for i in $(seq 1 60); do
        local headers
        headers=$(curl -s -D - -o /dev/null "$url")
        server=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-server"{print $2}')
        cookie=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1)=="set-cookie"{print $2}' | cut -d';' -f1)
        [ -n "$server" ] && [ -n "$cookie" ] && found[$server]="$cookie"
        [ ${#found[@]} -eq "$BACKENDS" ] && break
    done
    [ ${#found[@]} -eq "$BACKENDS" ] || { log "no session for every backend at $url"; return 1; }
    for i in $(seq 1 "$BACKENDS"); do printf '%s\n' "${found[s$i]}"; done
}
# Checks that a cookie reaches its backend; `$1` URL, `$2` cookie, `$3` backend.
check_pinned() {
    local got
    got=$(curl -s -D - -o /dev/null -H "Cookie: $2" "$1" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-server"{print $2}')
    [ "$got" = "$3" ] || { log "$1 with $2 reached '$got', not $3"; return 1; }
}

mapfile -t HAP_COOKIES < <(sessions "http://127.0.0.1:$H_STICKY/")
mapfile -t GW_COOKIES < <(sessions "http://127.0.0.1:$G_STICKY/")
for i in $(seq 0 $((BACKENDS - 1))); do
    check_pinned "http://127.0.0.1:$H_STICKY/" "${HAP_COOKIES[$i]}" "s$((i + 1))"
    check_pinned "http://127.0.0.1:$G_STICKY/" "${GW_COOKIES[$i]}" "s$((i + 1))"
done

# The feature gateways share the sticky gateway's key: its cookies are theirs.
while IFS='|' read -r _ _ url _; do
    [ -n "$url" ] || continue
    for i in $(seq 0 $((BACKENDS - 1))); do check_pinned "$url" "${GW_COOKIES[$i]}" "s$((i + 1))"; done
done <<<"$FEATURE_TARGETS"

# A wrk script sending each request with the next of three cookies.
cookie_script() {
    local file="$WORK/cookies-$1.lua"
    shift
    {
        echo 'local cookies = {'
        local c
        for c in "$@"; do printf '  "%s",\n' "$c"; done
        echo '}'
        cat <<'EOF'
local requests = {}
local n = 0
function init(args)
  for i, c in ipairs(cookies) do
    requests[i] = wrk.format("GET", "/", { ["Cookie"] = c })
  end
end
function request()
  n = n % #requests + 1
  return requests[n]
end
EOF
    } >"$file"
    echo "$file"
}
HAP_LUA=$(cookie_script haproxy "${HAP_COOKIES[@]}")
GW_LUA=$(cookie_script gateway "${GW_COOKIES[@]}")
# The route without persistence gets the same cookies: the same bytes to forward.
GW_PLAIN_LUA="$GW_LUA"

# name | pid | url | wrk script ("-" for none)
TARGETS_ALL="
haproxy-sticky-nocookie|$HAPROXY_PID|http://127.0.0.1:$H_STICKY/|-
haproxy-sticky-cookie|$HAPROXY_PID|http://127.0.0.1:$H_STICKY/|$HAP_LUA
gateway-sticky-nocookie|$GW_STICKY_PID|http://127.0.0.1:$G_STICKY/|-
gateway-sticky-cookie|$GW_STICKY_PID|http://127.0.0.1:$G_STICKY/|$GW_LUA
haproxy-plain-nocookie|$HAPROXY_PID|http://127.0.0.1:$H_PLAIN/|-
gateway-plain-nocookie|$GW_PLAIN_PID|http://127.0.0.1:$G_PLAIN/|-
gateway-plain-cookie|$GW_PLAIN_PID|http://127.0.0.1:$G_PLAIN/|$GW_PLAIN_LUA
"
if [ -n "$GW_BEFORE_PID" ]; then
    TARGETS_ALL+="before-sticky-nocookie|$GW_BEFORE_PID|http://127.0.0.1:$G_BEFORE/|-
before-sticky-cookie|$GW_BEFORE_PID|http://127.0.0.1:$G_BEFORE/|$GW_LUA
"
fi
TARGETS_ALL+="${FEATURE_TARGETS//GW_LUA/$GW_LUA}"
TARGET_LINES=()
while IFS= read -r line; do
    [ -n "$line" ] || continue
    name="${line%%|*}"
    if [ -n "${TARGETS:-}" ]; then
        case " $TARGETS " in *" $name "*) ;; *) continue ;; esac
    fi
    TARGET_LINES+=("$line")
done <<<"$TARGETS_ALL"

# Latency from wrk's distribution, in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") print n; else if (u == "ms") print n * 1000;
        else if (u == "s") print n * 1000000; else print n }'
}

# Runs wrk once against a target; appends "name rps p50us p99us cpu_us_per_req" to RESULTS.
RESULTS="$WORK/results"
: >"$RESULTS"
run_wrk() {
    local line="$1" seconds="$2" record="$3"
    local name pid url script
    IFS='|' read -r name pid url script <<<"$line"
    local args=(-t"$WRK_THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency)
    [ "$script" = - ] || args+=(-s "$script")
    local before after out
    before=$(cpu_ticks "$pid")
    out=$(wrk "${args[@]}" "$url")
    after=$(cpu_ticks "$pid")
    [ "$record" = yes ] || return 0
    if grep -q -e 'Non-2xx' -e 'Socket errors' <<<"$out"; then
        log "$name: errors during the run:"
        grep -e 'Non-2xx' -e 'Socket errors' <<<"$out" >&2
    fi
    local rps p50 p99 requests ticks hz
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    hz=$(getconf CLK_TCK)
    ticks=$((after - before))
    local cpu
    cpu=$(awk -v t="$ticks" -v hz="$hz" -v r="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
    echo "$name $rps $p50 $p99 $cpu" >>"$RESULTS"
    log "$(printf '  %-26s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu %6s us/req' "$name" "$rps" "$p50" "$p99" "$cpu")"
}

{
    echo "## compare_haproxy.sh"
    echo
    echo '```text'
    machine
    echo "haproxy: $(haproxy -v | head -n 1)"
    echo "wrk: $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    echo "settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS WRK_THREADS=$WRK_THREADS BACKENDS=$BACKENDS CODEC=$CODEC"
    echo "gateway serving threads: $(cat /proc/"$GW_STICKY_PID"/task/*/comm | grep -c '^gateway-'); HAProxy: nbthread $NPROC"
    echo '```'
} >"$WORK/header"

log "warming up"
for line in "${TARGET_LINES[@]}"; do run_wrk "$line" "$WARMUP" no; done
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for line in "${TARGET_LINES[@]}"; do run_wrk "$line" "$DURATION" yes; done
done

# Medians (and ranges) per target, then the ratios.
summary() {
    awk '
    function median(list, n,    a, i, j, t) {
        split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        if (n % 2) return a[(n + 1) / 2]
        return (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lo(list,    a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
    function hi(list,    a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
    {
        if (!($1 in count)) order[++targets] = $1
        count[$1]++
        rps[$1] = rps[$1] " " $2; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; cpu[$1] = cpu[$1] " " $5
    }
    END {
        print "| target | req/s (median, range) | p50 | p99 (median, range) | proxy CPU per request |"
        print "|---|---:|---:|---:|---:|"
        for (k = 1; k <= targets; k++) {
            t = order[k]; n = count[t]
            R[t] = median(rps[t], n); P99[t] = median(p99[t], n); P50[t] = median(p50[t], n); C[t] = median(cpu[t], n)
            printf "| %s | %.0f (%.0f–%.0f) | %.0f µs | %.0f µs (%.0f–%.0f) | %.1f µs |\n", t, R[t], lo(rps[t]), hi(rps[t]), P50[t], P99[t], lo(p99[t]), hi(p99[t]), C[t]
        }
        print ""
        print "| ratio | requests/s | p99 |"
        print "|---|---:|---:|"
        pair("gateway-sticky-nocookie", "haproxy-sticky-nocookie", "gateway / HAProxy, no cookie")
        pair("gateway-sticky-cookie", "haproxy-sticky-cookie", "gateway / HAProxy, with a session cookie")
        pair("gateway-plain-nocookie", "haproxy-plain-nocookie", "gateway / HAProxy, no persistence")
        pair("gateway-sticky-nocookie", "gateway-plain-nocookie", "gateway with / without persistence, no cookie")
        pair("gateway-sticky-cookie", "gateway-plain-cookie", "gateway with / without persistence, with a cookie")
        pair("haproxy-sticky-nocookie", "haproxy-plain-nocookie", "HAProxy with / without persistence, no cookie")
        pair("before-sticky-nocookie", "haproxy-sticky-nocookie", "BEFORE gateway / HAProxy, no cookie")
        pair("before-sticky-cookie", "haproxy-sticky-cookie", "BEFORE gateway / HAProxy, with a session cookie")
        pair("gateway-sticky-nocookie", "before-sticky-nocookie", "gateway / BEFORE, no cookie")
        pair("gateway-sticky-cookie", "before-sticky-cookie", "gateway / BEFORE, with a session cookie")
        pair("feature-metrics-cookie", "gateway-sticky-cookie", "metrics on / off")
        pair("feature-notimeouts-cookie", "gateway-sticky-cookie", "backend and body timeouts off / on")
        pair("feature-noredispatch-cookie", "gateway-sticky-cookie", "redispatch and retry budget off / on")
    }
    function pair(a, b, label) {
        if (!(a in R) || !(b in R)) return
        printf "| %s | %.3f | %.3f |\n", label, R[a] / R[b], P99[a] / P99[b]
    }' "$RESULTS"
}

echo
cat "$WORK/header"
echo
summary
echo
echo "Raw runs (target, req/s, p50 µs, p99 µs, CPU µs per request), in the order they ran:"
echo
echo '```text'
cat "$RESULTS"
echo '```'
