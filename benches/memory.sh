#!/usr/bin/env bash
# Shows that the gateway keeps no state per session: its resident memory before and after
# 1,000,000 new sessions, and after a second million.
#
#     bash benches/memory.sh
#
# Builds the gateway and the bench backend, installs `wrk` from Debian's packages when
# it is missing, starts three bench backends and the gateway (one route with cookie session
# persistence) on loopback, and sends REQUESTS requests (default 1,000,000) twice, none with a
# cookie, so that every response issues a new session. It reads VmRSS (and VmHWM, the peak)
# from /proc/<pid>/status after a warm-up and after each million, and prints them with the
# difference per session. With the default sealed codec every token is different (a fresh
# nonce each); a sample of them is checked for it. Everything it started is stopped when it
# exits.
#
# Settings (environment): REQUESTS (1000000), CONNECTIONS (50), CODEC (sealed; or signed,
# plain), PROFILE (release).

source "$(dirname "$0")/lib.sh"

REQUESTS="${REQUESTS:-1000000}"
CONNECTIONS="${CONNECTIONS:-50}"
CODEC="${CODEC:-sealed}"

need_packages wrk wrk
build

free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
free_port; G=$PORT
start_backends "$B1" "$B2" "$B3"
bench_gateway_yaml "$G" "$(head -c 32 /dev/urandom | base64)" "sessionPersistence: {cookie: {name: SRV}, absoluteTimeout: 24h}
x-session-persistence: {codec: $CODEC}" "$B1" "$B2" "$B3" >"$WORK/gateway.yaml"
start_gateway "$WORK/gateway.yaml" gateway
PID=$GATEWAY_PID
URL="http://127.0.0.1:$G/"

# Stops after REQUESTS responses; counts non-200 answers, answers without a new session, and
# the distinct tokens among the first SAMPLE.
cat >"$WORK/sessions.lua" <<'EOF'
local limit = tonumber(os.getenv("REQUESTS"))
local sample = 10000
local count, bad, missing, distinct = 0, 0, 0, 0
local seen = {}
function response(status, headers, body)
  count = count + 1
  if status ~= 200 then bad = bad + 1 end
  local cookie = headers["set-cookie"] or headers["Set-Cookie"]
  if cookie == nil then
    missing = missing + 1
  elseif count <= sample then
    local token = cookie:match("^[^;]*")
    if not seen[token] then seen[token] = true; distinct = distinct + 1 end
  end
  if count == limit then
    io.stderr:write(string.format("responses %d, not 200: %d, without a new session: %d, distinct tokens in the first %d: %d\n",
      count, bad, missing, math.min(count, sample), distinct))
    wrk.thread:stop()
  end
end
EOF

status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
rss() { status "$PID" VmRSS; }
hwm() { status "$PID" VmHWM; }

# wrk runs for its whole duration even after the script stops its thread; an interrupt makes
# it report at once.
RUN=0
drive() {
    RUN=$((RUN + 1))
    local out="$WORK/wrk-$RUN.out" err="$WORK/wrk-$RUN.err"
    : >"$out"
    : >"$err"
    REQUESTS="$1" wrk -t1 -c"$CONNECTIONS" -d3600s -s "$WORK/sessions.lua" "$URL" \
        >"$out" 2>"$err" &
    local wrk_pid=$!
    started "$wrk_pid"
    while kill -0 "$wrk_pid" 2>/dev/null; do
        if grep -q '^responses' "$err"; then
            kill -INT "$wrk_pid"
            break
        fi
        sleep 0.2
    done
    wait "$wrk_pid" || true
    sed 's/^/  /' "$err" >&2
    awk '/requests in/ {print "  " $1, "requests in", $4}' "$out" >&2
}

MACHINE=$(machine)
log "warming up (100,000 sessions)"
drive 100000
sleep 1
R0=$(rss) H0=$(hwm)
log "first $REQUESTS"
drive "$REQUESTS"
sleep 1
R1=$(rss) H1=$(hwm)
log "second $REQUESTS"
drive "$REQUESTS"
sleep 1
R2=$(rss) H2=$(hwm)

echo
echo "## memory.sh"
echo
echo '```text'
echo "$MACHINE"
echo "settings: REQUESTS=$REQUESTS CONNECTIONS=$CONNECTIONS CODEC=$CODEC"
echo '```'
echo
echo "| gateway | VmRSS | VmHWM (peak) |"
echo "|---|---:|---:|"
echo "| after 100,000 sessions (warm-up) | $R0 kB | $H0 kB |"
echo "| after $REQUESTS more new sessions | $R1 kB | $H1 kB |"
echo "| after $REQUESTS more again | $R2 kB | $H2 kB |"
echo
awk -v r0="$R0" -v r1="$R1" -v r2="$R2" -v n="$REQUESTS" 'BEGIN {
    printf "Change over the first %d sessions: %+d kB (%+.4f bytes per session); over the second: %+d kB (%+.4f bytes per session).\n",
        n, r1 - r0, (r1 - r0) * 1024 / n, r2 - r1, (r2 - r1) * 1024 / n }'
