#!/usr/bin/env bash
# The gateway at the edge against HAProxy 2.6, in one run: memory per idle keep-alive client
# connection, and how long a new client waits while a slowloris flood (twice the connection
# limit, each connection holding half a request head) is dropped.
#
#     bash benches/edge.sh
#
# Builds the gateway and the bench backend, installs HAProxy from Debian's packages when it
# is missing, and starts one bench backend, the gateway and HAProxy on loopback, both with
# the same limits: request head 10 s, keep-alive idle 60 s, MAXCONN connections. Then, for
# each proxy in turn:
#   1. IDLE connections (default 4000) each send one request, read the answer and stay open;
#      VmRSS before and after gives the memory per idle connection;
#   2. FLOOD connections (default MAXCONN + 1000, within what the kernel queues) send half a
#      request head and stop; a new client (curl) then asks for a page: the time until it is
#      served is printed.
# MAXCONN must exceed IDLE, or the idle clients beyond it wait to be accepted.
# Everything it started is stopped when it exits.
#
# Settings (environment): IDLE (4000), MAXCONN (5000), FLOOD (MAXCONN + 1000), PROFILE
# (release), BEFORE (another gateway binary, e.g. an earlier commit's: started with the same
# configuration as the proxy `before`, measured in the same run).

PROFILE="${PROFILE:-release}"
source "$(dirname "$0")/lib.sh"

IDLE="${IDLE:-4000}"
MAXCONN="${MAXCONN:-5000}"
FLOOD="${FLOOD:-$((MAXCONN + 1000))}"

need_packages haproxy haproxy curl curl
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
build

free_port; B=$PORT
free_port; G=$PORT
free_port; H=$PORT
start_backends "$B"
TOP_LINES="timeouts: {requestHeader: 10s, clientIdle: 60s}
limits: {maxConnections: $MAXCONN}" bench_gateway_yaml "$G" "$(head -c 32 /dev/urandom | base64)" \
    "sessionPersistence: {cookie: {name: SRV}}" "$B" >"$WORK/gateway.yaml"
cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread 2
    maxconn $MAXCONN
defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$H
    maxconn $MAXCONN
    default_backend be
backend be
    cookie SRV insert indirect nocache
    server s1 127.0.0.1:$B cookie s1
CFG
start_gateway "$WORK/gateway.yaml" gateway
PROXIES="gateway haproxy"
if [ -n "${BEFORE:-}" ]; then
    free_port; GB=$PORT
    sed "s/^listen: 127.0.0.1:$G\$/listen: 127.0.0.1:$GB/" "$WORK/gateway.yaml" >"$WORK/before.yaml"
    NOW_GATEWAY="$GATEWAY" NOW_PID=$GATEWAY_PID
    GATEWAY="$BEFORE"
    start_gateway "$WORK/before.yaml" before
    BEFORE_PID=$GATEWAY_PID
    GATEWAY="$NOW_GATEWAY" GATEWAY_PID=$NOW_PID
    PROXIES="before gateway haproxy"
fi
start_haproxy "$H"

cat >"$WORK/clients.py" <<'PY'
import socket, sys, time
mode, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    if mode == "idle":
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
    else:
        s.setblocking(False)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        except BlockingIOError:
            pass
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
PY

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

machine
echo "idle connections: $IDLE; connection limit: $MAXCONN; flood: $FLOOD"
for proxy in $PROXIES; do
    case "$proxy" in
    gateway) pid=$GATEWAY_PID port=$G ;;
    before) pid=$BEFORE_PID port=$GB ;;
    *) pid=$HAPROXY_PID port=$H ;;
    esac
    curl -s -o /dev/null "http://127.0.0.1:$port/" # warm up
    before=$(rss "$pid")
    mkfifo "$WORK/hold-$proxy"
    python3 "$WORK/clients.py" idle "$port" "$IDLE" <"$WORK/hold-$proxy" >"$WORK/idle-$proxy.out" &
    holder=$!
    exec 7>"$WORK/hold-$proxy"
    until grep -q ready "$WORK/idle-$proxy.out" 2>/dev/null; do sleep 0.1; done
    sleep 1
    after=$(rss "$pid")
    exec 7>&-
    wait "$holder" 2>/dev/null || true
    echo "$proxy: RSS ${before} KiB -> ${after} KiB with $IDLE idle connections:" \
        "$(( (after - before) * 1024 / IDLE )) bytes per idle connection"
done
for proxy in gateway haproxy; do
    if [ "$proxy" = gateway ]; then port=$G; else port=$H; fi
    sleep 2
    mkfifo "$WORK/flood-$proxy"
    python3 "$WORK/clients.py" flood "$port" "$FLOOD" <"$WORK/flood-$proxy" >"$WORK/flood-$proxy.out" &
    holder=$!
    exec 7>"$WORK/flood-$proxy"
    until grep -q ready "$WORK/flood-$proxy.out" 2>/dev/null; do sleep 0.1; done
    start=$(date +%s.%N)
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 120 "http://127.0.0.1:$port/" || echo timeout)
    end=$(date +%s.%N)
    exec 7>&-
    wait "$holder" 2>/dev/null || true
    echo "$proxy: a new client during a flood of $FLOOD half heads got $code after" \
        "$(echo "$end - $start" | bc -l | xargs printf '%.1f') s"
done
