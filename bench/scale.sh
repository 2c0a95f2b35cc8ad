#!/usr/bin/env bash
# Catalog at scale: one server with a data dir (fsync as by default) filled in steps up
# to Consul's benchmark size (10,000 nodes, 17 service instances each with one check:
# 170,000 instances), measured at each step.
#
#   bench/scale.sh              # measure, print a markdown report
#   bench/scale.sh --write      # ... and put it into BENCHMARKS.md (section `scale`)
#   SIZES="200 1000" SERVICES=5 READS=50 DNS_SECONDS=2 bench/scale.sh   # a quick run
#   BENCHMARKS_MD=/tmp/copy.md bench/scale.sh --write
#   PROCONSUL_BIN=/path/to/older/proconsul bench/scale.sh   # measure another build
#
# 1. The server starts empty; one node `solo-node` gets a service `solo` first, so that a
#    health read of a one-instance service can be timed at every size.
# 2. For each size in SIZES (cumulative node counts), nodes are registered up to it through
#    `PUT /v1/catalog/register`, one request per instance (service `svc-j` with its check),
#    by CLIENTS closed-loop clients of bench/src/bin/scale.rs (`scale-bench load`), each
#    on its own keep-alive connection. The last PROBE nodes of a step are loaded
#    separately: their rate is the registration rate *at* that size; the rest of the
#    step gives the step's average rate and its slowest registration (a write that waited
#    for a Raft snapshot's copy of the catalog shows there).
# 3. At each size: the server's RSS, then READS reads each (CLIENTS clients) of
#    `GET /v1/catalog/services` (18 names whatever the size), the same filtered by node
#    meta (`?node-meta=rack:r7`: each node's registration puts it in rack r<n/100>, so
#    100 nodes match at any size), `GET /v1/health/service/solo`
#    (one instance) and `GET /v1/health/service/svc-0` (one instance per node: its answer
#    grows with the catalog; BIG_READS reads), p50 and p99; with dnsperf installed, DNS
#    queries per second for `node-1.node.consul A` and `solo.service.consul SRV` over
#    DNS_SECONDS each.
# 4. After the last size: `proconsul snapshot save` timed; the server is stopped (SIGTERM)
#    and started again on the same data dir; the time from starting the process to the
#    first answered `GET /v1/catalog/services?consistent`; its RSS once idle, and per
#    instance (what it grew by since it started empty, divided by the instances); then
#    `proconsul snapshot restore` of the saved file timed (until it is applied).
#
# Figures are from one run on the machine as it is; on a shared host they are upper
# bounds. The data dir is in a temp dir, removed on exit; the server listens on free
# 127.0.0.1 ports and is stopped by PID on exit.
# Needs: cargo, python3, curl; dnsperf (apt-get install dnsperf) for the DNS column.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SIZES=${SIZES:-"1000 5000 10000"}
SERVICES=${SERVICES:-17}
CLIENTS=${CLIENTS:-8}
PROBE=${PROBE:-100}
READS=${READS:-300}
BIG_READS=${BIG_READS:-30}
DNS_SECONDS=${DNS_SECONDS:-5}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${PROCONSUL_BIN:-}" ]; then
  BIN=$PROCONSUL_BIN
else
  cargo build --release -q --bin proconsul
  BIN="$TARGET/release/proconsul"
fi
cargo build --release -q -p proconsul-bench --bin scale-bench
SB="$TARGET/release/scale-bench"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/scale.XXXXXX")
PID=""
stop_server() {
  [ -n "$PID" ] || return 0
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); DNS_PORT=$(free_port); RPC_PORT=$(free_port)
SERF_PORT=$(free_port); WAN_PORT=$(free_port)
ADDR=127.0.0.1:$HTTP_PORT
URL=http://$ADDR
mkdir -p "$WORK/data"

start_server() {
  "$BIN" agent -server -bootstrap-expect=1 -node=s0 -data-dir="$WORK/data" \
    -bind=127.0.0.1 -client=127.0.0.1 -http-port="$HTTP_PORT" -dns-port="$DNS_PORT" \
    -server-port="$RPC_PORT" -serf-lan-port="$SERF_PORT" -serf-wan-port="$WAN_PORT" \
    -log-level=warn >>"$WORK/log" 2>&1 &
  PID=$!
}

wait_for_leader() {
  for _ in $(seq 600); do
    [[ "$(curl -s --max-time 1 "$URL/v1/status/leader" 2>/dev/null)" =~ ^\"[^\"]+\"$ ]] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "the server did not come up; its log:" >&2
  tail -20 "$WORK/log" >&2
  exit 1
}

rss_mib() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }

# Waits until the server uses at most 5% of a core over a second (60 s at most).
settle() {
  local before now
  for _ in $(seq 60); do
    before=$(cpu_ticks); sleep 1; now=$(cpu_ticks)
    [ $((now - before)) -le 5 ] && return 0
  done
}

# field JSON_LINE KEY
field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("NA" if v is None else v)' "$1" "$2"; }
json_of() { sed -n 's/^JSON //p'; }

# dns_qps NAME TYPE: queries per second from dnsperf over DNS_SECONDS, or NA.
dns_qps() {
  if ! command -v dnsperf >/dev/null || [ "$DNS_SECONDS" = 0 ]; then echo NA; return; fi
  printf '%s %s\n' "$1" "$2" >"$WORK/dnsq"
  timeout $((DNS_SECONDS + 30)) dnsperf -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/dnsq" \
    -l "$DNS_SECONDS" -c 4 -Q 200000 2>/dev/null |
    awk '/Queries per second/ {printf "%.0f", $4; found=1} END {if (!found) print "NA"}'
}

start_server
wait_for_leader
settle
RSS_EMPTY_KIB=$(rss_kib)
curl -sf -X PUT "$URL/v1/catalog/register" -d '{"Node":"solo-node","Address":"10.255.255.1",
  "Service":{"Service":"solo","ID":"solo","Port":9000},
  "Check":{"CheckID":"solo:alive","Name":"solo alive","Status":"passing","ServiceID":"solo"}}' >/dev/null

ROWS=()
prev=0
for size in $SIZES; do
  probe_from=$((size - PROBE))
  [ "$probe_from" -lt "$prev" ] && probe_from=$prev
  step_ops=NA
  step_max=NA
  if [ "$probe_from" -gt "$prev" ]; then
    line=$("$SB" load --addr "$ADDR" --from "$prev" --to "$probe_from" --services "$SERVICES" --clients "$CLIENTS" | json_of)
    step_ops=$(field "$line" ops_s)
    step_max=$(field "$line" max_ms)
  fi
  line=$("$SB" load --addr "$ADDR" --from "$probe_from" --to "$size" --services "$SERVICES" --clients "$CLIENTS" | json_of)
  probe_ops=$(field "$line" ops_s)
  probe_p99=$(field "$line" p99_ms)
  settle
  rss=$(rss_mib)
  services=$("$SB" read --addr "$ADDR" --path /v1/catalog/services --requests "$READS" --clients "$CLIENTS" | json_of)
  by_meta=$("$SB" read --addr "$ADDR" --path "/v1/catalog/services?node-meta=rack:r7" --requests "$READS" --clients "$CLIENTS" | json_of)
  solo=$("$SB" read --addr "$ADDR" --path /v1/health/service/solo --requests "$READS" --clients "$CLIENTS" | json_of)
  big=$("$SB" read --addr "$ADDR" --path /v1/health/service/svc-0 --requests "$BIG_READS" --clients "$CLIENTS" | json_of)
  dns_node=$(dns_qps node-1.node.consul A)
  dns_solo=$(dns_qps solo.service.consul SRV)
  instances=$((size * SERVICES + 1))
  row="| $size | $instances | $step_ops | $probe_ops | $probe_p99 | $step_max | $rss"
  row+=" | $(field "$services" p50_ms) / $(field "$services" p99_ms)"
  row+=" | $(field "$by_meta" p50_ms) / $(field "$by_meta" p99_ms)"
  row+=" | $(field "$solo" p50_ms) / $(field "$solo" p99_ms)"
  row+=" | $(field "$big" p50_ms) / $(field "$big" p99_ms) ($(( $(field "$big" bytes) / 1024 )) KiB)"
  row+=" | $dns_node | $dns_solo |"
  ROWS+=("$row")
  echo "$row" >&2
  prev=$size
done
INSTANCES=$((prev * SERVICES + 1))
RSS_LOADED=$(rss_mib)

t0=$(date +%s.%N)
"$BIN" snapshot save -http-addr="$ADDR" "$WORK/snap" >/dev/null
t1=$(date +%s.%N)
SAVE_S=$(python3 -c "print(round($t1 - $t0, 2))")
SNAP_MIB=$(python3 -c "import os; print(round(os.path.getsize('$WORK/snap') / 1048576, 1))")
RAFT_SNAP_MIB=$(python3 -c "
import os
p = '$WORK/data/raft/snapshot.json'
print(round(os.path.getsize(p) / 1048576, 1) if os.path.exists(p) else 'NA')")

stop_server
START_S=$(date +%s)
start_server
first=$("$SB" first --addr "$ADDR" --path "/v1/catalog/services?consistent" --timeout 120 | json_of)
FIRST_S=$(field "$first" seconds)
settle
# Then until the resident size stops falling (30 s at most): the snapshot load's freed
# memory goes back to the system about ten seconds after the start, when the allocator
# collects it (a blocking-pool thread exits), which can be after the CPU settles.
RSS_RESTART_KIB=$(rss_kib)
for _ in $(seq 30); do
  sleep 1
  now_kib=$(rss_kib)
  [ "$now_kib" -ge $((RSS_RESTART_KIB - RSS_RESTART_KIB / 100)) ] && [ "$now_kib" -le "$RSS_RESTART_KIB" ] &&
    [ "$(( $(date +%s) - START_S ))" -ge 15 ] && { RSS_RESTART_KIB=$now_kib; break; }
  RSS_RESTART_KIB=$now_kib
done
RSS_RESTART=$((RSS_RESTART_KIB / 1024))
PER_INSTANCE=$(python3 -c "print(round(($RSS_RESTART_KIB - $RSS_EMPTY_KIB) * 1024 / $INSTANCES))")
PER_INSTANCE_ALL=$(python3 -c "print(round($RSS_RESTART_KIB * 1024 / $INSTANCES))")

# Restore the snapshot saved above over the restarted server: from sending the file until
# the command returns (committed and applied), then until the catalog answers again.
t0=$(date +%s.%N)
"$BIN" snapshot restore -http-addr="$ADDR" "$WORK/snap" >/dev/null
t1=$(date +%s.%N)
RESTORE_S=$(python3 -c "print(round($t1 - $t0, 2))")
rm -f "$WORK/snap"
# The restored catalog must hold what was saved: every node and every service name.
NODES_AFTER=$(curl -sf "$URL/v1/catalog/nodes" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
NAMES_AFTER=$(curl -sf "$URL/v1/catalog/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
if [ "$NODES_AFTER" -lt $((prev + 1)) ] || [ "$NAMES_AFTER" -lt $((SERVICES + 1)) ]; then
  echo "after the restore: $NODES_AFTER nodes and $NAMES_AFTER service names, expected $((prev + 1))+ and $((SERVICES + 1))+" >&2
  exit 1
fi

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "${PROCONSUL_BIN:-}" ] && COMMIT="$COMMIT (checkout; the binary measured was given by PROCONSUL_BIN)"
REPORT="Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs, shared with other builds (figures are upper bounds); proconsul $COMMIT.
Command: \`SIZES=\"$SIZES\" SERVICES=$SERVICES CLIENTS=$CLIENTS PROBE=$PROBE READS=$READS BIG_READS=$BIG_READS DNS_SECONDS=$DNS_SECONDS bench/scale.sh --write\`.

| nodes | instances | reg/s step | reg/s at size | reg p99 ms | reg max ms (step) | RSS MiB | \`catalog/services\` p50 / p99 ms | \`catalog/services?node-meta=rack:r7\` p50 / p99 ms | \`health/service/solo\` p50 / p99 ms | \`health/service/svc-0\` p50 / p99 ms (answer) | DNS node A q/s | DNS solo SRV q/s |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
$(printf '%s\n' "${ROWS[@]}")

At $prev nodes ($INSTANCES instances): RSS $RSS_LOADED MiB loaded; \`snapshot save\` ${SAVE_S} s for ${SNAP_MIB} MiB; Raft snapshot file ${RAFT_SNAP_MIB} MiB; \`snapshot restore\` of that file after the restart ${RESTORE_S} s. After a restart from disk: first \`?consistent\` read ${FIRST_S} s after the process started; RSS $RSS_RESTART MiB once idle: $PER_INSTANCE_ALL bytes per instance with its check, $PER_INSTANCE bytes over the empty server's $((RSS_EMPTY_KIB / 1024)) MiB."

echo "$REPORT"
if [ "$WRITE" = 1 ]; then
  python3 bench/put_section.py "$BENCHMARKS_MD" scale "$REPORT"
  echo "written to $BENCHMARKS_MD (section scale)" >&2
fi
