#!/usr/bin/env bash
# The web UI's first page load from a cold start: bytes the browser receives and time
# to the first list of services.
#
#   bench/ui.sh            # build, measure, print a markdown report
#   bench/ui.sh --write    # ... and put it into BENCHMARKS.md (section `ui`)
#   RUNS=1 bench/ui.sh     # a quick check of the script
#
# Each run starts a new `proconsul agent -dev` (UI on) on free ports, registers
# SERVICES services on 10 nodes through the catalog API (each instance with one check,
# one in ten critical), then opens `/ui/` in a new headless Chromium with an empty
# profile (bench/ui_load.py): the page redirects itself to /ui/dc1/services, loads its
# script and style sheet, reads /v1/internal/ui/datacenters and
# /v1/internal/ui/services and draws the list. Figures, medians of RUNS runs: time from
# navigation start to the list drawn (the page's `proconsul:services-listed` mark), and
# bytes received by then (transfer sizes with headers: page, script, style sheet, API
# answers).
#
# Environment: RUNS=5 SERVICES=50 NO_BUILD=0 CHROMIUM=chromium. Needs cargo, curl,
# python3 and Chromium (Debian: apt-get install chromium). Every agent is stopped by
# PID on exit; the temp dir is removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-5}
SERVICES=${SERVICES:-50}
NO_BUILD=${NO_BUILD:-0}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

for tool in cargo curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
[ -n "$CHROMIUM" ] || { echo "Chromium is needed (apt-get install chromium, or set CHROMIUM)" >&2; exit 1; }
[ "$NO_BUILD" = 1 ] || cargo build --release -q --bin proconsul
BIN=${BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/proconsul"}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

BENCH_NAME=ui_bench
# shellcheck source=bench/lib/dev_agent.sh
. "$ROOT/bench/lib/dev_agent.sh"

start_agent() {
  local http_port
  http_port=$(free_port)
  start_dev_agent "$WORK/agent.log" -http-port="$http_port" -dns-port=-1
  HTTP="http://127.0.0.1:$http_port"
  wait_for_agent "$WORK/agent.log" leader_known "$HTTP"
}

seed() {
  python3 - "$HTTP" "$SERVICES" <<'PY'
import http.client, json, sys, urllib.parse
base, n = sys.argv[1], int(sys.argv[2])
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
for i in range(n):
    node = f"node{i % 10}"
    body = {"Node": node, "Address": f"10.0.0.{i % 10 + 1}",
            "Service": {"ID": f"svc-{i}", "Service": f"svc-{i}", "Port": 8000 + i, "Tags": ["v1", f"team-{i % 5}"]},
            "Check": {"CheckID": f"svc-{i}-check", "Name": f"svc-{i} answers", "ServiceID": f"svc-{i}",
                      "Status": "critical" if i % 10 == 0 else "passing", "Output": "HTTP GET: 200 OK"}}
    conn.request("PUT", "/v1/catalog/register", json.dumps(body))
    r = conn.getresponse(); text = r.read().decode()
    if r.status != 200:
        sys.exit(f"register {i}: {r.status} {text}")
PY
}

RESULTS="$WORK/results"
: >"$RESULTS"
for run in $(seq "$RUNS"); do
  start_agent
  seed
  python3 "$ROOT/bench/ui_load.py" "$CHROMIUM" "$HTTP/ui/" >>"$RESULTS"
  stop_agent
  echo "run $run: $(tail -1 "$RESULTS")" >&2
done

LOAD=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
report=$(python3 - "$RESULTS" "$RUNS" "$SERVICES" "$COMMIT" "$("$CHROMIUM" --version 2>/dev/null | head -1)" "$(nproc)" "$LOAD" <<'PY'
import datetime, json, statistics, sys
path, runs, services, commit, browser, cores, load = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
med = lambda f: statistics.median(f(r) for r in rows)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"Measured {now} on {cores} CPUs (load average {load} at the end); proconsul {commit}; {browser}; "
      f"medians of {runs} runs, each a new agent with {services} services on 10 nodes and a new browser profile.")
print(f"Command: `RUNS={runs} SERVICES={services} bench/ui.sh --write`.\n")
print("| figure | median | min | max |")
print("|---|---:|---:|---:|")
t = [r["first_list_ms"] for r in rows]
print(f"| time from navigation to the first list of services | {statistics.median(t):.0f} ms | {min(t):.0f} ms | {max(t):.0f} ms |")
b = [r["total_bytes"] for r in rows]
print(f"| bytes received by then (transfer sizes, headers included) | {statistics.median(b)/1024:.1f} KiB | {min(b)/1024:.1f} KiB | {max(b)/1024:.1f} KiB |")
labels = {"html": "the page (index.html)", "js": "the script", "css": "the style sheet",
          "api": "API answers (datacenters, services)"}
for k, label in labels.items():
    print(f"| … of which {label} | {med(lambda r: r['bytes'][k])/1024:.1f} KiB | | |")
print(f"| requests by then | {med(lambda r: r['requests']):.0f} | | |")
print(f"| services drawn | {med(lambda r: r['rows']):.0f} | | |")
if float(load) > float(cores) / 2:
    print(f"\nThe machine was busy (load average {load} on {cores} CPUs): the times are upper bounds; "
          "the byte counts do not depend on load.")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$BENCHMARKS_MD" ui "$report"
  echo "written to $BENCHMARKS_MD" >&2
fi
