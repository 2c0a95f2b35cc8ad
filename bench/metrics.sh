#!/usr/bin/env bash
# Metrics on against metrics off: the same agent build, one after the other in each
# run, on the same machine. What recording Consul's series costs the hot read paths.
#
#   bench/metrics.sh            # build, measure, print a markdown report
#   bench/metrics.sh --write    # ... and put it into BENCHMARKS.md (section `metrics`)
#   RUNS=1 DURATION=3 bench/metrics.sh    # a quick check of the script
#
# Each run starts `proconsul agent -dev` twice on free ports: metrics on (the default
# recorder, Prometheus output enabled with `prometheus_retention_time`, and a scrape of
# both formats every second during the load, as a Prometheus server would), and metrics
# off (`telemetry { filter_default = false }`: every series is filtered out, so each
# recording point holds a handle that does nothing). The order alternates between runs.
# Both get the same catalog (50 services on 10 nodes). Then:
#   - DNS: dnsperf, saturating, `web.service.consul A` (each query times itself);
#   - HTTP: wrk on `GET /v1/health/service/web` (each request times itself).
# The report gives medians and on/off ratios. Target (issue 19): at most 3 % fewer.
#
# Environment: RUNS=5 DURATION=10 CLIENTS=4 OUTSTANDING=100 WRK_THREADS=2 WRK_CONNS=32
# NO_BUILD=0. Needs cargo, dnsperf, wrk, curl, python3. Every process started here is
# stopped by PID on exit; the temp dir is removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}
NO_BUILD=${NO_BUILD:-0}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

for tool in cargo dnsperf wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
[ "$NO_BUILD" = 1 ] || cargo build --release -q --bin proconsul
BIN=${BIN:-"$ROOT/target/release/proconsul"}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

BENCH_NAME=metrics_bench
# shellcheck source=bench/lib/dev_agent.sh
. "$ROOT/bench/lib/dev_agent.sh"
SCRAPER_PID=""
before_stop_agent() {
  [ -n "$SCRAPER_PID" ] || return 0
  kill "$SCRAPER_PID" 2>/dev/null || true
  wait "$SCRAPER_PID" 2>/dev/null || true
  SCRAPER_PID=""
}

# Starts an agent with metrics on (1) or off (0); sets AGENT_PID, HTTP, DNS_PORT.
start_agent() {
  local on=$1 http_port dns_port config="$WORK/config-$1.json"
  http_port=$(free_port); dns_port=$(free_port)
  if [ "$on" = 1 ]; then
    echo '{"telemetry": {"prometheus_retention_time": "60s"}}' >"$config"
  else
    echo '{"telemetry": {"filter_default": false}}' >"$config"
  fi
  start_dev_agent "$WORK/agent-$on.log" -http-port="$http_port" -dns-port="$dns_port" \
    -config-file="$config"
  HTTP="http://127.0.0.1:$http_port"
  DNS_PORT=$dns_port
  wait_for_agent "$WORK/agent-$on.log" leader_known "$HTTP"
}

seed() {
  python3 - "$HTTP" <<'PY'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
for i in range(50):
    node = f"node{i % 10}"
    body = {"Node": node, "Address": f"10.0.0.{i % 10 + 1}",
            "Service": {"ID": f"svc-{i}", "Service": "web" if i < 3 else f"svc-{i}", "Port": 80}}
    conn.request("PUT", "/v1/catalog/register", json.dumps(body))
    r = conn.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"register: {r.status}")
PY
}

# Scrapes both formats once a second until killed, as a Prometheus server and a
# dashboard would.
scrape() {
  while true; do
    curl -s -o /dev/null "$HTTP/v1/agent/metrics?format=prometheus" || true
    curl -s -o /dev/null "$HTTP/v1/agent/metrics" || true
    sleep 1
  done
}

RESULTS="$WORK/results"
: >"$RESULTS"
echo "web.service.consul A" >"$WORK/queries"
measure() { # on run
  local on=$1 qps rps series
  start_agent "$on"
  seed
  if [ "$on" = 1 ]; then
    scrape & SCRAPER_PID=$!
  fi
  qps=$(dnsperf -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/queries" -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" 2>/dev/null |
    awk '/Queries per second:/ {print $4}')
  rps=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" "$HTTP/v1/health/service/web" 2>/dev/null |
    awk '/Requests\/sec:/ {print $2}')
  series=$(curl -s "$HTTP/v1/agent/metrics" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["Counters"])+len(d["Samples"])+len(d["Gauges"]))')
  echo "$on $2 ${qps:-0} ${rps:-0} $series" >>"$RESULTS"
  echo "== run $2, metrics $( [ "$on" = 1 ] && echo on || echo off ): DNS ${qps:-?} q/s, HTTP ${rps:-?} req/s, $series series in the JSON" >&2
  stop_agent
}

for run in $(seq "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then measure 0 "$run"; measure 1 "$run"; else measure 1 "$run"; measure 0 "$run"; fi
done

REPORT=$(python3 - "$RESULTS" "$COMMIT" "$RUNS" "$DURATION" "$(nproc)" <<'PY'
import statistics, sys, datetime
path, commit, runs, duration, cpus = sys.argv[1:6]
rows = [l.split() for l in open(path) if l.strip()]
def med(on, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == on)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"Measured {now} on {cpus} CPUs; proconsul {commit}; medians of {runs} runs of {duration} s, metrics off and on alternating.")
print(f"Command: `RUNS={runs} DURATION={duration} bench/metrics.sh --write`.")
print()
print("| measure | metrics off | metrics on | on / off |")
print("|---|---:|---:|---:|")
for name, col in (("DNS `web.service.consul A`, q/s (dnsperf, saturating)", 2), ("HTTP `GET /v1/health/service/web`, req/s (wrk)", 3)):
    off, on = med("0", col), med("1", col)
    print(f"| {name} | {off:.0f} | {on:.0f} | **{on / off if off else 0:.3f}** |")
print()
print(f"Metrics on: the default recorder with Prometheus output, both formats scraped every second during the load ({med('1', 4):.0f} series in the JSON at the end). Metrics off: `telemetry {{ filter_default = false }}`, every series filtered out ({med('0', 4):.0f} series).")
PY
)
echo "$REPORT"
if [ "$WRITE" = 1 ]; then
  python3 bench/put_section.py BENCHMARKS.md metrics "$REPORT"
fi
