#!/usr/bin/env bash
# Memory of an idle client agent with 10 services and their checks, against serf's agent.
#
#   bench/client_rss.sh              # build, measure, print a markdown report
#   bench/client_rss.sh --write      # ... and put it into BENCHMARKS.md (section `client-rss`)
#   IDLE_SECONDS=5 bench/client_rss.sh                           # a quick check of the script
#   PROCONSUL_BIN=/path/to/older/proconsul bench/client_rss.sh   # measure another build
#   IDLE_SECONDS=60 bench/client_rss.sh --order link/client.order  # remake the function order
#
# One run starts, on free 127.0.0.1 ports: a `proconsul agent -dev` server; two client
# agents (each with a data dir) joined to it, each with SERVICES services from a config
# file and one check per service: TTL checks (passed once through the API) on one, HTTP
# checks of the client's own `GET /v1/status/leader` every 10 s on the other; and, with
# `serf` installed, two serf agents, the second joined to the first. Once every service
# is in the server's catalog, all of them sit idle for IDLE_SECONDS; then each client's
# and the joined serf agent's memory is read from /proc/PID/status (VmRSS, RssAnon,
# RssFile, VmHWM) and /proc/PID/smaps (how much of RssFile is the program's own
# executable, how much other files: shared libraries), with its thread count.
#
# RssFile counts the pages of files mapped into the process, which the kernel maps in
# blocks around each page touched when the file is in the page cache: it is shared with
# every process running the same executable, but it is resident all the same.
#
# --order FILE profiles the two clients instead of measuring them: each runs under
# valgrind's callgrind from its start until it has been idle IDLE_SECONDS, and FILE gets
# the executable's functions they ran (mangled, one per line), which build.rs hands to
# the linker so that they are laid out next to each other. Needs valgrind.
#
# Environment: SERVICES=10 IDLE_SECONDS=30 NO_BUILD=0 SERF=serf. Needs cargo, curl and
# python3; serf (Debian: apt-get install serf) for the reference row. Every process is
# stopped by PID on exit; the temp dir is removed. About IDLE_SECONDS + 15 s, plus the
# build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SERVICES=${SERVICES:-10}
IDLE_SECONDS=${IDLE_SECONDS:-30}
NO_BUILD=${NO_BUILD:-0}
SERF=${SERF:-serf}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
ORDER=""
case "${1:-}" in
  --write) WRITE=1 ;;
  --order)
    ORDER=${2:?--order needs a file}
    command -v valgrind >/dev/null || { echo "valgrind is needed for --order" >&2; exit 1; }
    ;;
esac

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
if [ -n "${PROCONSUL_BIN:-}" ]; then
  BIN=$PROCONSUL_BIN
else
  [ "$NO_BUILD" = 1 ] || cargo build --release -q --bin proconsul
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/proconsul"
fi

# How much of the function order the binary still has: names go stale when dependencies
# or the code an idle client runs change (BENCHMARKS.md, "Where a client's memory goes").
if [ -z "$ORDER" ] && [ -f "$ROOT/link/client.order" ] && command -v nm >/dev/null; then
  listed=$(grep -c . "$ROOT/link/client.order")
  found=$(nm "$BIN" 2>/dev/null | awk '{print $NF}' | sort -u \
    | comm -12 - <(sort -u "$ROOT/link/client.order") | wc -l)
  echo "link/client.order: $found of $listed functions are in the binary" >&2
  if [ $((found * 100)) -lt $((listed * 97)) ]; then
    echo "  stale: make it again (IDLE_SECONDS=60 bench/client_rss.sh --order link/client.order) and rebuild" >&2
  fi
fi

BENCH_NAME=client_rss
# shellcheck source=bench/lib/dev_agent.sh
. "$ROOT/bench/lib/dev_agent.sh"

# Processes started beside the dev server (the clients and serf agents), stopped by PID.
OTHERS=()
before_stop_agent() {
  local pid
  for pid in "${OTHERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${OTHERS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  OTHERS=()
}

# The server.
SERVER_LAN=$(free_port)
SERVER_HTTP=$(free_port)
"$BIN" agent -dev -log-level=warn -node=server -http-port="$SERVER_HTTP" -dns-port=-1 \
  -serf-lan-port="$SERVER_LAN" -serf-wan-port="$(free_port)" -server-port="$(free_port)" \
  >"$WORK/server.log" 2>&1 &
AGENT_PID=$!
wait_for_agent "$WORK/server.log" leader_known "http://127.0.0.1:$SERVER_HTTP"

# start_client NAME CHECK: a client agent named NAME with SERVICES services, each with a
# `ttl` or an `http` check; sets CLIENT_PID and CLIENT_HTTP.
start_client() {
  local name=$1 kind=$2 http dir
  http=$(free_port)
  dir="$WORK/$name"
  mkdir -p "$dir/config"
  python3 - "$SERVICES" "$kind" "$http" >"$dir/config/services.json" <<'PY'
import json, sys
n, kind, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
services = []
for i in range(n):
    if kind == "ttl":
        check = {"id": f"svc-{i}-ttl", "name": f"svc-{i} ttl", "ttl": "1h"}
    else:
        check = {"id": f"svc-{i}-http", "name": f"svc-{i} http",
                 "http": f"http://127.0.0.1:{port}/v1/status/leader", "interval": "10s"}
    services.append({"id": f"svc-{i}", "name": f"svc-{i}", "port": 8000 + i,
                     "tags": ["v1"], "check": check})
print(json.dumps({"services": services}))
PY
  local wrap=()
  [ -z "$ORDER" ] || wrap=(valgrind --tool=callgrind --demangle=no --compress-strings=no
    --dump-instr=no "--callgrind-out-file=$WORK/$name.callgrind")
  "${wrap[@]}" "$BIN" agent -node="$name" -data-dir="$dir/data" -config-dir="$dir/config" -log-level=warn \
    -bind=127.0.0.1 -client=127.0.0.1 -http-port="$http" -dns-port="$(free_port)" \
    -serf-lan-port="$(free_port)" -join="127.0.0.1:$SERVER_LAN" >"$dir/log" 2>&1 &
  CLIENT_PID=$!
  OTHERS+=("$CLIENT_PID")
  CLIENT_HTTP=$http
}

# synced NAME: whether the server's catalog holds every service of client NAME.
synced() {
  local n
  n=$(curl -s --max-time 1 "http://127.0.0.1:$SERVER_HTTP/v1/catalog/node-services/$1" 2>/dev/null |
    python3 -c 'import json,sys
try: print(len(json.load(sys.stdin)["Services"]))
except Exception: print(0)')
  [ "$n" -ge "$SERVICES" ]
}

start_client client-ttl ttl
TTL_PID=$CLIENT_PID TTL_HTTP=$CLIENT_HTTP
start_client client-http http
HTTP_PID=$CLIENT_PID
if [ -n "$ORDER" ]; then
  # Under callgrind a client starts some fifty times slower.
  for _ in $(seq 20); do synced client-ttl && synced client-http && break; sleep 5; done
fi
wait_for_agent "$WORK/client-ttl/log" synced client-ttl
wait_for_agent "$WORK/client-http/log" synced client-http
for i in $(seq 0 $((SERVICES - 1))); do
  curl -sf -X PUT "http://127.0.0.1:$TTL_HTTP/v1/agent/check/pass/svc-$i-ttl" >/dev/null
done

if [ -n "$ORDER" ]; then
  echo "profiling: idle for $IDLE_SECONDS s" >&2
  sleep "$IDLE_SECONDS"
  for pid in "$TTL_PID" "$HTTP_PID"; do callgrind_control -d "$pid" >/dev/null; done
  sleep 2
  python3 - "$BIN" "$ORDER" "$WORK"/*.callgrind* <<'PY'
import os, re, sys
binary, out, files = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
names, obj = {}, None
for path in files:
    for line in open(path, errors="replace"):
        if line.startswith("ob="):
            obj = os.path.realpath(line[3:].strip())
        elif line.startswith("fn=") and obj == binary:
            # `fn=NAME`, and `NAME'2` for a deeper level of recursion.
            name = re.sub(r"'\d+$", "", line[3:].strip())
            if not name.startswith("0x"):
                names.setdefault(name, None)
with open(out, "w") as f:
    f.write("".join(n + "\n" for n in names))
print(f"{len(names)} functions written to {out}", file=sys.stderr)
PY
  exit 0
fi

SERF_PID="" SERF_VERSION=""
if command -v "$SERF" >/dev/null; then
  SERF_VERSION=$("$SERF" version 2>/dev/null | head -1)
  first_bind=$(free_port)
  "$SERF" agent -node=serf-1 -bind="127.0.0.1:$first_bind" -rpc-addr="127.0.0.1:$(free_port)" \
    -log-level=warn >"$WORK/serf-1.log" 2>&1 &
  OTHERS+=("$!")
  sleep 0.5
  "$SERF" agent -node=serf-2 -bind="127.0.0.1:$(free_port)" -rpc-addr="127.0.0.1:$(free_port)" \
    -join="127.0.0.1:$first_bind" -log-level=warn >"$WORK/serf-2.log" 2>&1 &
  SERF_PID=$!
  OTHERS+=("$SERF_PID")
fi

echo "idle for $IDLE_SECONDS s" >&2
sleep "$IDLE_SECONDS"

# memory PID: one JSON object with the process's memory figures in KiB (from
# /proc/PID/status, and from /proc/PID/smaps the file pages of its own executable and the
# pages of every other file, shared libraries mostly) and its thread count.
memory() {
  python3 - "$1" <<'PY'
import json, os, sys
pid = sys.argv[1]
status = {}
for line in open(f"/proc/{pid}/status"):
    key, _, value = line.partition(":")
    status[key] = value.split()
out = {k: int(status[k][0]) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
exe = os.readlink(f"/proc/{pid}/exe")
own = libs = 0
path = None
for line in open(f"/proc/{pid}/smaps"):
    fields = line.split()
    if "-" in fields[0] and ":" not in fields[0]:
        path = fields[5] if len(fields) > 5 else ""
    elif fields[0] in ("Rss:", "Anonymous:") and path and path.startswith("/"):
        sign = 1 if fields[0] == "Rss:" else -1
        if path == exe:
            own += sign * int(fields[1])
        else:
            libs += sign * int(fields[1])
out |= {"own": own, "libs": libs, "threads": len(os.listdir(f"/proc/{pid}/task"))}
print(json.dumps(out))
PY
}

ROWS=()
row() {
  local label=$1 pid=$2 mem
  kill -0 "$pid" 2>/dev/null || { echo "$label exited before it was measured" >&2; exit 1; }
  mem=$(memory "$pid")
  ROWS+=("$(python3 - "$label" "$mem" <<'PY'
import json, sys
label, m = sys.argv[1], json.loads(sys.argv[2])
mib = lambda k: f"{m[k] / 1024:.1f}"
print(f"| {label} | {mib('VmRSS')} | {mib('RssAnon')} | {mib('RssFile')} | {mib('own')} | {mib('libs')} | {mib('VmHWM')} | {m['threads']} |")
PY
)")
  echo "${ROWS[-1]}" >&2
}
row "proconsul client, $SERVICES services with TTL checks" "$TTL_PID"
row "proconsul client, $SERVICES services with HTTP checks (10 s)" "$HTTP_PID"
if [ -n "$SERF_PID" ]; then
  row "serf agent (joined to another)" "$SERF_PID"
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "${PROCONSUL_BIN:-}" ] && COMMIT="$COMMIT (checkout; the binary measured was given by PROCONSUL_BIN)"
LOAD=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
SERF_NOTE="serf ${SERF_VERSION#Serf }"
[ -n "$SERF_PID" ] || SERF_NOTE="serf not installed: no reference row (apt-get install serf)"
REPORT="Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs (load average $LOAD at the end); proconsul $COMMIT; $SERF_NOTE.
Command: \`SERVICES=$SERVICES IDLE_SECONDS=$IDLE_SECONDS bench/client_rss.sh --write\`. Each figure is read once, after $IDLE_SECONDS s idle.

| process | VmRSS MiB | RssAnon MiB | RssFile MiB | … its executable's pages | … other files' (libraries) | VmHWM MiB | threads |
|---|---:|---:|---:|---:|---:|---:|---:|
$(printf '%s\n' "${ROWS[@]}")"
echo "$REPORT"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$BENCHMARKS_MD" client-rss "$REPORT"
  echo "written to $BENCHMARKS_MD" >&2
fi
