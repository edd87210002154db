#!/usr/bin/env bash
# The example gateway against HAProxy 2.6, both terminating TLS with the same certificate:
#
#     bash benches/compare_haproxy_tls.sh
#
# Makes a self-signed ECDSA P-256 certificate (openssl), builds the gateway and the bench
# backend, installs `haproxy`, `wrk` and `openssl` from Debian's packages when they are
# missing, and starts on loopback:
#   * three bench backends (s1, s2, s3), shared by both proxies;
#   * HAProxy (`nbthread` = the number of cores) with one TLS listener
#     (`bind … ssl crt …`, `cookie SRV insert indirect nocache`);
#   * the gateway with a Gateway HTTPS listener, the certificate in a kubernetes.io/tls Secret,
#     and a route with `sessionPersistence` (cookie SRV, insert, indirect, nocache, signed);
#   * the same gateway once more with `admin:` on (its Prometheus recorder installed, every
#     request counted): metrics on against off.
# Then, alternately, ROUNDS times, `wrk --latency` over https with a valid session cookie on
# every request in two modes: keep-alive (connections reused: the cost of TLS records) and
# new connections (`Connection: close`: one TCP connect and one full TLS handshake per request,
# so requests per second are handshakes per second). It prints requests per second, p50 and
# p99 and the proxy's CPU time per request (medians over the rounds, with the range), then the
# ratios. Everything it started is stopped when it exits.
#
# Settings (environment): ROUNDS (3), DURATION (10 seconds per run), CONNECTIONS (50),
# WRK_THREADS (1), WARMUP (2), GATEWAY_LOG (warn), PROFILE (release), TARGETS (a
# space-separated subset of the target names below).

source "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-2}"

need_packages haproxy haproxy wrk wrk openssl openssl
build

free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
free_port; H_TLS=$PORT
free_port; G_TLS=$PORT
free_port; G_METRICS=$PORT
free_port; G_ADMIN=$PORT
start_backends "$B1" "$B2" "$B3"

# One certificate for both: what the handshakes cost depends on it (ECDSA P-256, as most
# sites now serve).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/haproxy.pem"

{
    # TLS 1.2 and 1.3 only, as the gateway.
    haproxy_head "ssl-default-bind-options ssl-min-ver TLSv1.2"
    haproxy_listen sticky "127.0.0.1:$H_TLS ssl crt $WORK/haproxy.pem alpn h2,http/1.1" https yes \
        "$B1" "$B2" "$B3"
} >"$WORK/haproxy.cfg"
start_haproxy "$H_TLS"

KEY=$(head -c 32 /dev/urandom | base64)
CRT64=$(base64 -w0 <"$WORK/tls.crt")
KEY64=$(base64 -w0 <"$WORK/tls.key")
gateway_config() {
    local port="$1" admin="$2"
    cat <<EOF
keys: ["$KEY"]
services:
  - name: bench
    endpoints:
      - {address: "127.0.0.1:$B1", id: s1}
      - {address: "127.0.0.1:$B2", id: s2}
      - {address: "127.0.0.1:$B3", id: s3}
gateways:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: bench}
    spec:
      addresses: [{type: IPAddress, value: 127.0.0.1}]
      listeners:
        - {name: https, protocol: HTTPS, port: $port, tls: {certificateRefs: [{name: bench-tls}]}}
secrets:
  - {apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {name: bench-tls},
     data: {tls.crt: "$CRT64", tls.key: "$KEY64"}}
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: bench}
    spec:
      rules:
        - backendRefs: [{name: bench, port: 80}]
          sessionPersistence: {cookie: {name: SRV}}
          x-session-persistence: {strategy: insert, indirect: true, nocache: true}
EOF
    [ "$admin" = no ] || echo "admin: {listen: 127.0.0.1:$admin}"
}
gateway_config "$G_TLS" no >"$WORK/gateway.yaml"
gateway_config "$G_METRICS" "$G_ADMIN" >"$WORK/gateway-metrics.yaml"
start_gateway "$WORK/gateway.yaml" gateway
GW_PID=$GATEWAY_PID
start_gateway "$WORK/gateway-metrics.yaml" gateway-metrics
GW_METRICS_PID=$GATEWAY_PID

# A valid session cookie for s1 from each proxy (ask until s1 answers).
session() {
    local url="$1" i headers server
    for i in $(seq 1 60); do
        headers=$(curl -sk -D - -o /dev/null "$url" | tr -d '\r')
        server=$(awk -F': ' 'tolower($1)=="x-server"{print $2}' <<<"$headers")
        if [ "$server" = s1 ]; then
            awk -F': ' 'tolower($1)=="set-cookie"{print $2}' <<<"$headers" | cut -d';' -f1
            return 0
        fi
    done
    log "no session for s1 at $url"
    return 1
}
HAP_COOKIE=$(session "https://127.0.0.1:$H_TLS/")
GW_COOKIE=$(session "https://127.0.0.1:$G_TLS/")
GW_METRICS_COOKIE=$(session "https://127.0.0.1:$G_METRICS/")

# A wrk script: every request with the cookie, and `Connection: close` for new connections.
script() {
    local file="$WORK/$1.lua" cookie="$2" close="$3"
    {
        printf 'local headers = { ["Cookie"] = "%s" }\n' "$cookie"
        [ "$close" = yes ] && printf 'headers["Connection"] = "close"\n'
        printf 'function request() return wrk.format("GET", "/", headers) end\n'
    } >"$file"
    echo "$file"
}

# name | pid | url | wrk script
TARGETS_ALL="
haproxy-keepalive|$HAPROXY_PID|https://127.0.0.1:$H_TLS/|$(script hap-ka "$HAP_COOKIE" no)
gateway-keepalive|$GW_PID|https://127.0.0.1:$G_TLS/|$(script gw-ka "$GW_COOKIE" no)
gateway-metrics-keepalive|$GW_METRICS_PID|https://127.0.0.1:$G_METRICS/|$(script gwm-ka "$GW_METRICS_COOKIE" no)
haproxy-newconn|$HAPROXY_PID|https://127.0.0.1:$H_TLS/|$(script hap-nc "$HAP_COOKIE" yes)
gateway-newconn|$GW_PID|https://127.0.0.1:$G_TLS/|$(script gw-nc "$GW_COOKIE" yes)
"
TARGET_LINES=()
while IFS= read -r line; do
    [ -n "$line" ] || continue
    name="${line%%|*}"
    if [ -n "${TARGETS:-}" ]; then
        case " $TARGETS " in *" $name "*) ;; *) continue ;; esac
    fi
    TARGET_LINES+=("$line")
done <<<"$TARGETS_ALL"

to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") print n; else if (u == "ms") print n * 1000;
        else if (u == "s") print n * 1000000; else print n }'
}

RESULTS="$WORK/results"
: >"$RESULTS"
run_wrk() {
    local line="$1" seconds="$2" record="$3"
    local name pid url script
    IFS='|' read -r name pid url script <<<"$line"
    local before after out
    before=$(cpu_ticks "$pid")
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency -s "$script" "$url")
    after=$(cpu_ticks "$pid")
    [ "$record" = yes ] || return 0
    if grep -q -e 'Non-2xx' -e 'Socket errors' <<<"$out"; then
        log "$name: errors during the run:"
        grep -e 'Non-2xx' -e 'Socket errors' <<<"$out" >&2
    fi
    local rps p50 p99 requests cpu
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v r="$requests" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
    echo "$name $rps $p50 $p99 $cpu" >>"$RESULTS"
    log "$(printf '  %-26s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu %6s us/req' "$name" "$rps" "$p50" "$p99" "$cpu")"
}

{
    echo "## compare_haproxy_tls.sh"
    echo
    echo '```text'
    machine
    echo "haproxy: $(haproxy -v | head -n 1)"
    echo "wrk: $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2); openssl: $(openssl version)"
    echo "settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS WRK_THREADS=$WRK_THREADS"
    echo "negotiated (gateway): $(echo | openssl s_client -connect "127.0.0.1:$G_TLS" 2>/dev/null | grep -m1 -E '^(New|Protocol)' | tr -s ' ')"
    echo "negotiated (HAProxy): $(echo | openssl s_client -connect "127.0.0.1:$H_TLS" 2>/dev/null | grep -m1 -E '^(New|Protocol)' | tr -s ' ')"
    echo '```'
} >"$WORK/header"

log "warming up"
for line in "${TARGET_LINES[@]}"; do run_wrk "$line" "$WARMUP" no; done
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for line in "${TARGET_LINES[@]}"; do run_wrk "$line" "$DURATION" yes; done
done

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
            R[t] = median(rps[t], n); P99[t] = median(p99[t], n); P50[t] = median(p50[t], n)
            printf "| %s | %.0f (%.0f–%.0f) | %.0f µs | %.0f µs (%.0f–%.0f) | %.1f µs |\n", t, R[t], lo(rps[t]), hi(rps[t]), P50[t], P99[t], lo(p99[t]), hi(p99[t]), median(cpu[t], n)
        }
        print ""
        print "| ratio | requests/s | p99 |"
        print "|---|---:|---:|"
        pair("gateway-keepalive", "haproxy-keepalive", "gateway / HAProxy, TLS keep-alive")
        pair("gateway-newconn", "haproxy-newconn", "gateway / HAProxy, a TLS handshake per request")
        pair("gateway-metrics-keepalive", "gateway-keepalive", "gateway metrics on / off, keep-alive")
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
