#!/usr/bin/env bash
# Change propagation to many blocking health reads (issue 20, item 2).
#
#   bench/watchers.sh              # measure, print a markdown report
#   bench/watchers.sh --write      # ... and put it into BENCHMARKS.md (section `watchers`)
#   WATCHERS=1000 WRITES=5 bench/watchers.sh                 # a quick check of the script
#   PROCONSUL_BIN=/path/to/older/proconsul bench/watchers.sh  # measure another build
#   SKIP_BUILD=1 bench/watchers.sh                            # use watch-bench as built
#
# One server (fsync, data in a temp dir) and AGENTS client agents on 127.0.0.1, with
# `limits` raised so that the watchers are admitted. `watch-bench` (bench/src/bin/watch.rs)
# registers SERVICES services, then holds WATCHERS blocking reads
# `GET /v1/health/service/NAME?index=&wait=10m`, one connection each, watcher i on
# service i % SERVICES and agent i % (1 + AGENTS), so about WATCHERS / SERVICES
# watchers per service; then WRITES writes, one at a time, each changing one service's
# check: the time from the write until every watcher of that service has its answer,
# each agent's RSS growth per held read, and CPU per write. About 2 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
AGENTS=${AGENTS:-3}
SERVICES=${SERVICES:-100}
WATCHERS=${WATCHERS:-10000}
WRITES=${WRITES:-20}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

# Each watcher is a connection: the driver and its agent each need a descriptor.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((WATCHERS + 1024)) ]; then
  echo "WATCHERS=$WATCHERS needs $((WATCHERS + 1024)) open files; the limit is $(ulimit -n)" >&2
  exit 1
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# PROCONSUL_BIN: another build to measure (an older commit's, for a before/after).
if [ -n "${PROCONSUL_BIN:-}" ]; then
  BIN=$PROCONSUL_BIN
else
  cargo build --release -q --bin proconsul
  BIN="$TARGET/release/proconsul"
fi
# SKIP_BUILD=1: use the watch-bench already built.
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p proconsul-bench --bin watch-bench
WB="$TARGET/release/watch-bench"

WORK=$(mktemp -d)
PIDS=()
CHILD=""
cleanup() {
  [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null || true
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && { kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; } || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Consul's defaults refuse thousands of long polls from one address: raised here.
cat > "$WORK/bench.json" <<JSON
{"limits": {"http_max_connections": $((WATCHERS + 1024)), "http_max_conns_per_client": 0,
            "http_max_blocking_queries": $((WATCHERS + 1024)), "http_max_blocking_queries_per_client": 0}}
JSON

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

URLS=()
SERF0=""
start_agent() {
  local name=$1 mode=$2 http serf rpc dir
  http=$(free_port); serf=$(free_port); rpc=$(free_port)
  dir="$WORK/$name"; mkdir -p "$dir"
  local extra=()
  if [ "$mode" = server ]; then
    extra=(-server -bootstrap-expect=1)
    SERF0=$serf
  else
    extra=(-join="127.0.0.1:$SERF0")
  fi
  "$BIN" agent "${extra[@]}" -node="$name" -data-dir="$dir" -config-file="$WORK/bench.json" \
    -bind=127.0.0.1 -client=127.0.0.1 -http-port="$http" -dns-port=-1 -server-port="$rpc" \
    -serf-lan-port="$serf" -log-level=warn > "$dir/log" 2>&1 &
  PIDS+=($!); URLS+=("http://127.0.0.1:$http")
}

started=$(date -u +"%Y-%m-%d %H:%M UTC")
t_start=$(date +%s)
start_agent s0 server
for i in $(seq 1 "$AGENTS"); do start_agent "c$i" client; done
# Ready: the server has a leader and every client agent answers a read through it.
ready() {
  for url in "${URLS[@]}"; do
    curl -sf -m 2 "$url/v1/catalog/nodes" > /dev/null || return 1
  done
}
for _ in $(seq 300); do ready && break; sleep 0.1; done
ready || { echo "the agents did not come up" >&2; exit 1; }

agents=$(IFS=,; echo "${URLS[*]}")
pids=$(IFS=,; echo "${PIDS[*]}")
timeout 280 "$WB" --agents "$agents" --pids "$pids" --servers 1 --services "$SERVICES" \
  --watchers "$WATCHERS" --writes "$WRITES" > "$WORK/out" 2> "$WORK/err" &
CHILD=$!
rc=0; wait "$CHILD" || rc=$?; CHILD=""
cat "$WORK/err" >&2
[ "$rc" -eq 0 ] || { echo "watch-bench failed ($rc)" >&2; exit "$rc"; }
echo "== done in $(( $(date +%s) - t_start )) s" >&2

REPORT=$(python3 - "$started" "$(git rev-parse --short HEAD)" "$(nproc)" "$AGENTS" "$SERVICES" "$WATCHERS" "$WRITES" "$(grep '^JSON' "$WORK/out" | cut -d' ' -f2-)" <<'PY'
import json, sys
started, commit, cpus, clients, services, watchers, writes, raw = sys.argv[1:9]
r = json.loads(raw)
def f(v, unit=""):
    return "—" if v is None else f"{v}{unit}"
print(f"Measured {started} on {cpus} CPUs; proconsul {commit}.")
print(f"Command: `AGENTS={clients} SERVICES={services} WATCHERS={watchers} WRITES={writes} bench/watchers.sh --write`.")
print()
print(f"One server and {clients} client agents on one machine; {r['watchers']} blocking reads "
      f"`GET /v1/health/service/NAME?index=&wait=10m` held at once, one connection each, "
      f"spread evenly over the {r['agents']} agents and {services} services "
      f"(about {r['watchers'] // int(services)} per service). Each write registers one service's check "
      "again with a new output; \"all\" is when the last watcher of that service has read it. "
      "Memory: RSS growth from before the watchers to when all are held, per held read. "
      f"CPU: per write, over {writes} writes (including the watchers' next blocking reads).")
print()
print("| held | reads per agent | memory per read, server | memory per read, client agents | write → all, p50 ms | p99 ms | write → first, p50 ms | write acknowledged, p50 ms | server CPU per write | client agents' CPU per write | other answers |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
kib = lambda b: "—" if b is None else "%.1f KiB" % (b / 1024)
print(f"| {r['watchers']} | {' / '.join(map(str, r['reads_per_agent']))} | {kib(r['server_bytes_per_read'])} | "
      f"{kib(r['client_bytes_per_read'])} | {f(r['all_p50_ms'])} | {f(r['all_p99_ms'])} | {f(r['first_p50_ms'])} | "
      f"{f(r['ack_p50_ms'])} | {r['server_cpu_ms_per_write']} ms | {r['client_cpu_ms_per_write']} ms | {r['unexpected']} |")
if r["timeouts"]:
    print()
    print(f"- {r['timeouts']} of {r['writes']} writes were not seen by every watcher of their service within 30 s")
PY
)
echo "$REPORT"
if [ "$WRITE" = 1 ]; then
  python3 bench/put_section.py "$BENCHMARKS_MD" watchers "$REPORT"
fi
