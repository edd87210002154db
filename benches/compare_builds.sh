#!/usr/bin/env bash
# Builds of the gateway against each other, end to end: the same three bench backends, the
# same route (cookie persistence, signed codec), measured alternately with wrk.
#
#     bash benches/compare_builds.sh before=/path/to/old/gateway after=target/release/examples/gateway
#
# Each argument is LABEL=BINARY. The bench backend is built (cargo profile PROFILE, default
# release) and everything listens on loopback. Each build is measured with a valid session cookie
# on every request (three sessions, one per backend, in turn) and without one, ROUNDS times,
# and the medians of requests per second, p99 latency and the gateway's CPU time per request
# are printed. Everything it started is stopped when it exits.
#
# Settings (environment): ROUNDS (3), DURATION (10), CONNECTIONS (50), WARMUP (2), PROFILE.

source "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
WARMUP="${WARMUP:-2}"
[ $# -ge 1 ] || { log "usage: $0 LABEL=BINARY..."; exit 2; }

need_packages wrk wrk
build

free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
start_backends "$B1" "$B2" "$B3"
KEY=$(head -c 32 /dev/urandom | base64)

LINES=()
for spec in "$@"; do
    label="${spec%%=*}" GATEWAY="${spec#*=}"
    [ -x "$GATEWAY" ] || { log "not an executable: $GATEWAY"; exit 2; }
    free_port
    bench_gateway_yaml "$PORT" "$KEY" "sessionPersistence: {cookie: {name: SRV}}" \
        "$B1" "$B2" "$B3" >"$WORK/$label.yaml"
    start_gateway "$WORK/$label.yaml" "$label"
    url="http://127.0.0.1:$PORT/"
    # Three sessions, one per backend (the same key everywhere: any build reads them).
    declare -A found=()
    for i in $(seq 1 60); do
        headers=$(curl -s -D - -o /dev/null "$url" | tr -d '\r')
        server=$(awk -F': ' 'tolower($1)=="x-server"{print $2}' <<<"$headers")
        cookie=$(awk -F': ' 'tolower($1)=="set-cookie"{print $2}' <<<"$headers" | cut -d';' -f1)
        [ -n "$server" ] && [ -n "$cookie" ] && found[$server]="$cookie"
        [ ${#found[@]} -eq 3 ] && break
    done
    [ ${#found[@]} -eq 3 ] || { log "$label: no session for every backend"; exit 1; }
    {
        echo 'local cookies = {'
        printf '  "%s",\n' "${found[s1]}" "${found[s2]}" "${found[s3]}"
        echo '}'
        cat <<'EOF'
local requests, n = {}, 0
function init(args)
  for i, c in ipairs(cookies) do requests[i] = wrk.format("GET", "/", { ["Cookie"] = c }) end
end
function request() n = n % #requests + 1; return requests[n] end
EOF
    } >"$WORK/$label.lua"
    unset found
    LINES+=("$label-cookie|$GATEWAY_PID|$url|$WORK/$label.lua" "$label-nocookie|$GATEWAY_PID|$url|-")
done

RESULTS="$WORK/results"
: >"$RESULTS"
run() {
    local name pid url script
    IFS='|' read -r name pid url script <<<"$1"
    local args=(-t1 -c"$CONNECTIONS" -d"$2s" --latency)
    [ "$script" = - ] || args+=(-s "$script")
    local before after out
    before=$(cpu_ticks "$pid")
    out=$(wrk "${args[@]}" "$url")
    after=$(cpu_ticks "$pid")
    [ "$3" = yes ] || return 0
    grep -e 'Non-2xx' -e 'Socket errors' <<<"$out" >&2 || true
    awk -v name="$name" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        function us(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u); return u == "ms" ? n * 1000 : u == "s" ? n * 1e6 : n }
        /^Requests\/sec:/ { rps = $2 } $1 == "99%" { p99 = us($2) } /requests in/ { req = $1 }
        END { printf "%s %.0f %.0f %.2f\n", name, rps, p99, ticks / hz * 1e6 / req }' <<<"$out" |
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
echo "## compare_builds.sh"
echo
echo '```text'
echo "$MACHINE"
echo "settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS; builds: $*"
echo '```'
echo
echo "| build, requests | req/s (median, range) | p99 (median) | gateway CPU per request |"
echo "|---|---:|---:|---:|"
awk '
function med(list, n,   a, i, j, t) { split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function lo(list,  a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
function hi(list,  a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
{ if (!($1 in c)) o[++k] = $1; c[$1]++; r[$1] = r[$1] " " $2; p[$1] = p[$1] " " $3; u[$1] = u[$1] " " $4 }
END { for (i = 1; i <= k; i++) { t = o[i]; printf "| %s | %.0f (%.0f–%.0f) | %.0f µs | %.2f µs |\n", t, med(r[t], c[t]), lo(r[t]), hi(r[t]), med(p[t], c[t]), med(u[t], c[t]) } }' "$RESULTS"
echo
echo "Raw runs (name, req/s, p99 µs, CPU µs per request):"
echo
echo '```text'
cat "$RESULTS"
echo '```'
