#!/usr/bin/env bash
# Where each proxy spends its CPU on the sticky path, side by side, on this machine:
#
#     bash benches/profile_side_by_side.sh
#
# Starts three bench backends, HAProxy 2.6 (`cookie SRV insert indirect nocache`, `nbthread`
# = cores) and the gateway (the same rule: insert, indirect, nocache, signed codec), gets one
# valid session cookie from each, then for each proxy in turn runs `wrk -t1 -c50` with that
# cookie on every request while `perf record` samples the proxy alone. Prints, per proxy: the
# requests served, the CPU time per request (user and system, from /proc), the system calls
# and context switches per request (`perf stat`), and the share of samples per binary
# (kernel, the proxy, libc, …) and the top symbols. Needs `perf` (Debian: linux-perf) and
# permission to profile (root, or kernel.perf_event_paranoid <= 1).
#
# Settings (environment): DURATION (10 seconds per proxy), TOP (25 symbols), PROFILE (release),
# NEW_SESSIONS (1: no cookie on any request, so every response opens a new session: the
# balancing path instead of the pinned one).

source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-10}"
TOP="${TOP:-25}"
need_packages haproxy haproxy wrk wrk perf linux-perf
build

free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
free_port; H=$PORT
free_port; G=$PORT
start_backends "$B1" "$B2" "$B3"

{
    haproxy_head
    haproxy_listen sticky "127.0.0.1:$H" http yes "$B1" "$B2" "$B3"
} >"$WORK/haproxy.cfg"
start_haproxy "$H"

bench_gateway_yaml "$G" "$(head -c 32 /dev/urandom | base64)" "sessionPersistence: {cookie: {name: SRV}}
x-session-persistence: {strategy: insert, indirect: true, nocache: true}" "$B1" "$B2" "$B3" >"$WORK/gateway.yaml"
start_gateway "$WORK/gateway.yaml" gateway
GATEWAY_PROC=$GATEWAY_PID

# The first session cookie a proxy hands out; `$1`: its URL.
first_cookie() {
    curl -s -D - -o /dev/null "$1" | tr -d '\r' |
        awk -F': ' 'tolower($1)=="set-cookie"{print $2}' | cut -d';' -f1 | head -n 1
}

# `$1` name, `$2` pid, `$3` URL.
profile() {
    local name="$1" pid="$2" url="$3" cookie
    cookie=$(first_cookie "$url")
    [ -n "$cookie" ] || { log "$name handed out no cookie"; return 1; }
    local header=(-H "Cookie: $cookie")
    [ "${NEW_SESSIONS:-0}" != 1 ] || header=()
    wrk -t1 -c50 -d2s "${header[@]}" "$url" >/dev/null # warm-up
    local before after hz
    hz=$(getconf CLK_TCK)
    before=$(awk '{print $14, $15}' "/proc/$pid/stat")
    perf stat -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$WORK/$name.stat" -- sleep "$DURATION" &
    local stat=$!
    perf record -F 999 -g -p "$pid" -o "$WORK/$name.data" -- sleep "$DURATION" 2>/dev/null &
    local record=$!
    local out
    out=$(wrk -t1 -c50 -d"${DURATION}s" "${header[@]}" "$url")
    wait "$stat" "$record"
    after=$(awk '{print $14, $15}' "/proc/$pid/stat")
    local requests
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    echo "### $name"
    echo
    echo '```text'
    echo "requests: $requests in ${DURATION}s ($(awk '/^Requests\/sec:/ {print $2}' <<<"$out") req/s)"
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" -v r="$requests" 'BEGIN {
        printf "CPU per request: user %.2f us, system %.2f us (sampled with perf running)\n", u / hz * 1e6 / r, s / hz * 1e6 / r }'
    awk -v r="$requests" '/raw_syscalls:sys_enter|context-switches/ {
        gsub(",", "", $1); printf "%s per request: %.2f\n", $2, $1 / r }' "$WORK/$name.stat"
    echo "connections to the backends open after the run: $(ss -Htnp state established \
        "( dport = :$B1 or dport = :$B2 or dport = :$B3 )" | grep -c "pid=$pid," || true)"
    echo
    perf report -i "$WORK/$name.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 12 || true
    echo
    perf report -i "$WORK/$name.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n "$TOP" || true
    echo '```'
    echo
}

echo "## profile_side_by_side.sh"
echo
echo '```text'
machine
echo "haproxy: $(haproxy -v | head -n 1); new sessions only: ${NEW_SESSIONS:-0}"
echo '```'
echo
profile haproxy "$HAPROXY_PID" "http://127.0.0.1:$H/"
profile gateway "$GATEWAY_PROC" "http://127.0.0.1:$G/"
