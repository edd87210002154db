# Helpers shared by the load scripts in benches/ (sourced, not run).
#
# Everything started here is recorded with `started PID` and stopped by PID when the script
# exits; everything listens on loopback addresses only.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tsp-bench.XXXXXX")"
PIDS=()

started() { PIDS+=("$1"); }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

# Installs Debian packages that are missing (as root, or with sudo).
need_packages() {
    local missing=()
    local cmd pkg
    while [ $# -gt 0 ]; do
        cmd="$1" pkg="$2"
        shift 2
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} from Debian's packages"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Sets PORT to a loopback TCP port that no socket uses (and that this script has not handed out
# yet), below the range the system picks ephemeral ports from.
TAKEN=" "
free_port() {
    local low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    while :; do
        PORT=$((10000 + RANDOM % (low - 10000)))
        case "$TAKEN" in *" $PORT "*) continue ;; esac
        if ! ss -Htan "sport = :$PORT" | grep -q .; then
            TAKEN="$TAKEN$PORT "
            return
        fi
    done
}

# Waits until something accepts connections on 127.0.0.1:PORT.
wait_port() {
    local port="$1" i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    log "nothing listens on 127.0.0.1:$port"
    return 1
}

# Builds the binaries the scripts run, with the cargo profile PROFILE: `release` (the default:
# the build users make, with link-time optimisation, see Cargo.toml) or `dev`.
PROFILE="${PROFILE:-release}"
build() {
    log "building the gateway and the bench backend (profile $PROFILE)"
    # FEATURES (environment): cargo features for the gateway, e.g. redis.
    (cd "$ROOT" && cargo build --profile "$PROFILE" --quiet ${FEATURES:+--features "$FEATURES"} --example gateway --example bench_backend)
    local dir="$PROFILE"
    [ "$PROFILE" = dev ] && dir=debug
    GATEWAY="$ROOT/target/$dir/examples/gateway"
    BACKEND="$ROOT/target/$dir/examples/bench_backend"
}

# Starts the bench backends on the given ports; waits until they listen.
start_backends() {
    local args=() port
    for port in "$@"; do args+=("127.0.0.1:$port"); done
    "$BACKEND" "${args[@]}" >"$WORK/backends.out" 2>&1 &
    started $!
    for port in "$@"; do
        wait_port "$port" || { cat "$WORK/backends.out" >&2; return 1; }
    done
}

# Starts the gateway with a config file; waits for its `listening on` line.
# Sets GATEWAY_PID.
start_gateway() {
    local config="$1" name="$2"
    RUST_LOG="${GATEWAY_LOG:-warn}" "$GATEWAY" --config "$config" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    GATEWAY_PID=$!
    started "$GATEWAY_PID"
    local i
    for i in $(seq 1 200); do
        grep -q '^listening on ' "$WORK/$name.out" 2>/dev/null && return 0
        kill -0 "$GATEWAY_PID" 2>/dev/null || break
        sleep 0.05
    done
    log "the gateway ($name) did not start:"
    cat "$WORK/$name.err" >&2
    return 1
}

# The machine, for the record.
machine() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), nproc $(nproc)"
    echo "kernel: $(uname -sr); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rustc: $(rustc -V 2>/dev/null || echo '?'); cargo profile: $PROFILE"
}

# CPU time (user + system) of a process and its threads, in clock ticks.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# Prints the benches' usual gateway configuration: listening on 127.0.0.1:`$1`, key `$2`, one
# route over the bench backends on the ports that follow `$3` (s1, s2, …), whose rule gets the
# lines of `$3` (indented for it, e.g. the `sessionPersistence` stanza; may be empty). TOP_LINES
# (environment): extra top-level lines.
bench_gateway_yaml() {
    local port="$1" key="$2" rule="$3"
    shift 3
    echo "listen: 127.0.0.1:$port"
    echo "keys: [\"$key\"]"
    [ -z "${TOP_LINES:-}" ] || printf '%s\n' "$TOP_LINES"
    cat <<EOF
services:
  - name: bench
    endpoints:
EOF
    local i=0 backend
    for backend in "$@"; do
        i=$((i + 1))
        echo "      - {address: \"127.0.0.1:$backend\", id: s$i}"
    done
    cat <<EOF
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: bench}
    spec:
      rules:
        - backendRefs: [{name: bench, port: 80}]
EOF
    [ -z "$rule" ] || printf '%s\n' "$rule" | sed 's/^/          /'
}

# Prints HAProxy's `global` and `defaults` sections as the comparisons run it: as many threads
# as the gateway has serving threads, each on its own core as they are, and the
# X-Forwarded-For header the gateway always adds (the listeners add the other two). `$@`:
# extra lines for `global` (indented), e.g. TLS settings.
haproxy_head() {
    local nproc
    nproc=$(nproc)
    echo "global"
    echo "    nbthread $nproc"
    echo "    cpu-map auto:1/1-$nproc 0-$((nproc - 1))"
    echo "    maxconn 4096"
    local line
    for line in "$@"; do echo "    $line"; done
    cat <<EOF

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    balance roundrobin
    option forwardfor
EOF
}

# Prints a HAProxy `listen` section over the bench backends: `$1` its name, `$2` its `bind`
# arguments, `$3` the X-Forwarded-Proto it sets (http or https), `$4` yes for cookie
# persistence (`cookie SRV insert indirect nocache`, a `cookie sN` per server), then the
# backends' ports (s1, s2, …). With `option forwardfor` (haproxy_head) it adds the same three
# headers the gateway does: the same work on both sides.
haproxy_listen() {
    local name="$1" bind="$2" proto="$3" cookies="$4"
    shift 4
    echo
    echo "listen $name"
    echo "    bind $bind"
    echo "    http-request set-header X-Forwarded-Proto $proto"
    echo "    http-request set-header X-Forwarded-Host %[req.hdr(host)]"
    [ "$cookies" != yes ] || echo "    cookie SRV insert indirect nocache"
    local i=0 port
    for port in "$@"; do
        i=$((i + 1))
        if [ "$cookies" = yes ]; then
            echo "    server s$i 127.0.0.1:$port cookie s$i"
        else
            echo "    server s$i 127.0.0.1:$port"
        fi
    done
}

# Starts HAProxy with "$WORK/haproxy.cfg"; waits until it listens on the ports `$@`. Sets
# HAPROXY_PID.
start_haproxy() {
    haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.out" 2>&1 &
    HAPROXY_PID=$!
    started "$HAPROXY_PID"
    local port
    for port in "$@"; do
        wait_port "$port" || { cat "$WORK/haproxy.out" >&2; return 1; }
    done
}
