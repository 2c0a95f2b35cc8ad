#!/usr/bin/env bash
# ACLs on against ACLs off: the same agent build, one after the other in each run, on
# the same machine. What an operator pays for turning ACLs on, on the read paths.
#
#   bench/acl.sh            # build, measure, print a markdown report
#   bench/acl.sh --write    # ... and put it into BENCHMARKS.md (section `acl`)
#   RUNS=1 DURATION=3 TOKENS=500 bench/acl.sh    # a quick check of the script
#
# Each run starts `proconsul agent -dev` twice on free ports: once with ACLs off, once
# with `acl { enabled = true, default_policy = "deny" }` and an initial management
# token; the order alternates between runs. Both get the same catalog (50 services on
# 10 nodes); the ACL agent also gets POLICIES policies and TOKENS tokens (each token
# linking two policies), an anonymous token that may read every service and node (so
# that DNS answers the same as without ACLs), and a reader token that may read every
# service but one (so that the list below is filtered). Then:
#   - DNS: dnsperf, saturating, `web.service.consul A` (answered from the agent's
#     catalog copy under the anonymous token);
#   - HTTP: wrk on `GET /v1/catalog/services`, with the reader token when ACLs are on
#     (the answer is filtered and says so), without a token when they are off.
# The report gives medians and on/off ratios. Target (issue 18): at most 5 % fewer.
#
# Environment: RUNS=3 DURATION=10 POLICIES=100 TOKENS=10000 CLIENTS=4 OUTSTANDING=100
# WRK_THREADS=2 WRK_CONNS=32 NO_BUILD=0. Needs cargo, dnsperf, wrk, curl, python3.
# Every agent is stopped by PID on exit; the temp dir is removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
POLICIES=${POLICIES:-100}
TOKENS=${TOKENS:-10000}
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

BENCH_NAME=acl_bench
# shellcheck source=bench/lib/dev_agent.sh
. "$ROOT/bench/lib/dev_agent.sh"

MANAGEMENT=$(python3 -c 'import uuid; print(uuid.uuid4())')

# Starts an agent with ACLs on (1) or off (0); sets AGENT_PID, HTTP, DNS_PORT.
start_agent() {
  local acl=$1 http_port dns_port config="$WORK/config-$1.json"
  http_port=$(free_port); dns_port=$(free_port)
  if [ "$acl" = 1 ]; then
    printf '{"acl": {"enabled": true, "default_policy": "deny", "tokens": {"initial_management": "%s"}}}\n' "$MANAGEMENT" >"$config"
  else
    echo '{}' >"$config"
  fi
  start_dev_agent "$WORK/agent-$acl.log" -http-port="$http_port" -dns-port="$dns_port" \
    -config-file="$config"
  HTTP="http://127.0.0.1:$http_port"
  DNS_PORT=$dns_port
  if [ "$acl" = 1 ]; then
    wait_for_agent "$WORK/agent-$acl.log" \
      curl -sf --max-time 1 -o /dev/null -H "X-Consul-Token: $MANAGEMENT" "$HTTP/v1/acl/token/self"
  else
    wait_for_agent "$WORK/agent-$acl.log" leader_known "$HTTP"
  fi
}

# Registers the catalog, and with ACLs the policies and tokens; prints the token the
# HTTP load uses (empty without ACLs).
seed() {
  python3 - "$HTTP" "$1" "$MANAGEMENT" "$POLICIES" "$TOKENS" <<'PY'
import http.client, json, sys, urllib.parse
base, acl, mgmt, policies, tokens = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
def put(path, body):
    headers = {"X-Consul-Token": mgmt} if acl else {}
    conn.request("PUT", path, json.dumps(body), headers)
    r = conn.getresponse(); text = r.read().decode()
    if r.status != 200:
        sys.exit(f"PUT {path}: {r.status} {text}")
    return json.loads(text) if text else None
for i in range(50):
    node = f"node{i % 10}"
    put("/v1/catalog/register", {"Node": node, "Address": f"10.0.0.{i % 10 + 1}",
        "Service": {"ID": f"svc-{i}", "Service": "web" if i < 3 else f"svc-{i}", "Port": 80}})
if not acl:
    print("")
    sys.exit(0)
ids = []
for i in range(policies):
    p = put("/v1/acl/policy", {"Name": f"p{i}", "Rules": f'service_prefix "svc-{i}" {{ policy = "read" }}\nkey_prefix "k{i}/" {{ policy = "write" }}'})
    ids.append(p["ID"])
everything = put("/v1/acl/policy", {"Name": "read-all", "Rules": 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'})
put("/v1/acl/token/00000000-0000-0000-0000-000000000002", {"Description": "Anonymous Token", "Policies": [{"ID": everything["ID"]}]})
for i in range(tokens):
    put("/v1/acl/token", {"Description": f"t{i}", "Policies": [{"ID": ids[i % policies]}, {"ID": ids[(i * 7 + 1) % policies]}]})
but_one = put("/v1/acl/policy", {"Name": "all-but-one", "Rules": 'service_prefix "" { policy = "read" }\nservice "svc-49" { policy = "deny" }\nnode_prefix "" { policy = "read" }'})
reader = put("/v1/acl/token", {"Description": "reader", "Policies": [{"ID": but_one["ID"]}]})
print(reader["SecretID"])
PY
}

RESULTS="$WORK/results"
: >"$RESULTS"
echo "web.service.consul A" >"$WORK/queries"
measure() { # acl run
  local acl=$1 token qps rps
  start_agent "$acl"
  token=$(seed "$acl")
  # The anonymous token's new rights reach DNS once its answer cache sees the index move.
  sleep 1
  answers=$(dig +short -p "$DNS_PORT" @127.0.0.1 web.service.consul A 2>/dev/null | wc -l || echo 0)
  qps=$(dnsperf -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/queries" -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" 2>/dev/null |
    awk '/Queries per second:/ {print $4}')
  local header=()
  [ -n "$token" ] && header=(-H "X-Consul-Token: $token")
  filtered=$(curl -s -D - -o /dev/null "${header[@]}" "$HTTP/v1/catalog/services" | grep -ic 'x-consul-results-filtered-by-acls: true' || true)
  rps=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" "${header[@]}" "$HTTP/v1/catalog/services" 2>/dev/null |
    awk '/Requests\/sec:/ {print $2}')
  echo "$acl $2 ${qps:-0} ${rps:-0} $answers $filtered" >>"$RESULTS"
  echo "== run $2, ACLs $( [ "$acl" = 1 ] && echo on || echo off ): DNS ${qps:-?} q/s ($answers answers), HTTP ${rps:-?} req/s (filtered header: $filtered)" >&2
  stop_agent
}

for run in $(seq "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then measure 0 "$run"; measure 1 "$run"; else measure 1 "$run"; measure 0 "$run"; fi
done

REPORT=$(python3 - "$RESULTS" "$COMMIT" "$RUNS" "$DURATION" "$POLICIES" "$TOKENS" "$(nproc)" <<'PY'
import statistics, sys, datetime
path, commit, runs, duration, policies, tokens, cpus = sys.argv[1:8]
rows = [l.split() for l in open(path) if l.strip()]
def med(acl, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == acl)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"Measured {now} on {cpus} CPUs; proconsul {commit}; medians of {runs} runs of {duration} s, ACLs off and on alternating.")
print(f"Command: `RUNS={runs} DURATION={duration} POLICIES={policies} TOKENS={tokens} bench/acl.sh --write`.")
print()
print("| measure | ACLs off | ACLs on | on / off |")
print("|---|---:|---:|---:|")
for name, col in (("DNS `web.service.consul A`, q/s (dnsperf, saturating)", 2), ("HTTP `GET /v1/catalog/services`, req/s (wrk; filtered with ACLs on)", 3)):
    off, on = med("0", col), med("1", col)
    print(f"| {name} | {off:.0f} | {on:.0f} | **{on / off if off else 0:.3f}** |")
print()
print(f"With ACLs on the agent held {policies} policies and {tokens} tokens besides the built-ins; DNS answered as the anonymous token (read on every service and node), the HTTP list as a token that may read every service but one, so its answer was filtered (`X-Consul-Results-Filtered-By-ACLs: true`).")
PY
)
echo "$REPORT"
if [ "$WRITE" = 1 ]; then
  python3 bench/put_section.py BENCHMARKS.md acl "$REPORT"
fi
