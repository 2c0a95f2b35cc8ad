#!/usr/bin/env bash
# Read-path benchmark of a single proconsul agent: DNS against NSD as the reference,
# HTTP health reads with wrk, and the agent's memory. Everything runs on 127.0.0.1 in
# one invocation, so the agent and the reference see the same machine state.
#
#   bench/dns_http.sh            # build, measure, print a markdown report
#   bench/dns_http.sh --write    # ... and put the report into BENCHMARKS.md
#   RUNS=5 DURATION=20 bench/dns_http.sh
#
# Steps:
#   1. `cargo build --release`, then `target/release/proconsul agent -dev` on free ports;
#      a small catalog is registered with PUT /v1/catalog/register (web on node1-3,
#      db and api on node4/node5, cache on both) and checked with dig.
#   2. NSD, one server process, serving a static `consul.` zone with the records the
#      agent answers with (checked: the answer counts of both are compared per query).
#   3. dnsperf with the same query files and settings against NSD and the agent, one
#      after the other (the order alternates between runs): saturating runs (no rate
#      limit) for three query files, then fixed-rate runs (RATE q/s) whose per-query
#      latencies (dnsperf -v) give the unloaded p50/p99.
#   4. wrk against GET /v1/health/service/web and /v1/health/service/web?passing.
#   5. The agent's VmRSS after start, after registration, after DNS and after HTTP load.
# Server CPU comes from /proc/<pid>/stat (the process and its descendants), so each
# saturating run also gives q/s per fully used server core: on a small box dnsperf
# competes with the server for the same cores, so that figure is the fairer one.
#
# Environment (defaults):
#   RUNS=3            runs per measurement; the report gives medians
#   DURATION=10       seconds per dnsperf / wrk run
#   CLIENTS=4         dnsperf -c
#   THREADS=1         dnsperf -T
#   OUTSTANDING=100   dnsperf -q
#   RATE=2000         dnsperf -Q of the fixed-rate runs
#   WRK_THREADS=2     wrk -t
#   WRK_CONNS=32      wrk -c
#   IDLE_WAIT=300     seconds to wait for running compilers (rustc) to finish before
#                     the load phase; the report says if some were still running
#   PAIR_WAIT=60      the same before each pair of runs (NSD + agent, or one wrk pair)
#   NO_BUILD=1        skip `cargo build --release` and use the existing binary
#
# Needs: cargo, dnsperf, nsd, wrk, dig, curl, ss; jq for the HTTP answer check.
# On Debian: apt-get install dnsperf nsd wrk bind9-dnsutils curl iproute2 jq
# Every process started here is stopped by PID on exit; the temp dir is removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-1}
OUTSTANDING=${OUTSTANDING:-100}
RATE=${RATE:-2000}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}
IDLE_WAIT=${IDLE_WAIT:-300}
PAIR_WAIT=${PAIR_WAIT:-60}
NO_BUILD=${NO_BUILD:-0}

WRITE=0
for arg in "$@"; do
  case "$arg" in
    --write) WRITE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "dns_http: $*" >&2; exit 1; }
note() { echo "== $*" >&2; }

for tool in cargo dnsperf nsd nsd-checkconf wrk dig curl ss awk; do
  command -v "$tool" >/dev/null || die "$tool is missing (see the header for packages)"
done
HAVE_JQ=0; command -v jq >/dev/null && HAVE_JQ=1
TIME_BIN=""; [[ -x /usr/bin/time ]] && TIME_BIN=/usr/bin/time

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dns_http.XXXXXX")
AGENT_PID=""
NSD_PID=""
NSD_TREE=""

# The pid and every descendant of it, one per line.
tree_pids() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" 2>/dev/null || true); do tree_pids "$child"; done
}

stop_pid() { # pid [more pids to kill if still there]
  local pid=$1 _
  shift
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $rc -ne 0 && -s "$WORK/agent.log" ]]; then
    echo "--- last lines of the agent's log ---" >&2
    tail -n 20 "$WORK/agent.log" >&2 || true
  fi
  stop_pid "$AGENT_PID"
  # NSD's first process forks the main and server processes: stop it, then any left.
  # shellcheck disable=SC2086
  stop_pid "$NSD_PID" $NSD_TREE
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
port_in_use() { ss -Hlntu 2>/dev/null | awk -v p="$1" '{n = split($5, a, ":"); if (a[n] == p) f = 1} END {exit !f}'; }
free_port() { # first port >= $1 free for both TCP and UDP
  local p=$1
  while port_in_use "$p"; do
    p=$((p + 1))
    ((p < $1 + 100)) || die "no free port in $1..$p"
  done
  echo "$p"
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # user+system ticks used so far by a process and its descendants
  local total=0 pid t
  for pid in $(tree_pids "$1"); do
    # drop "pid (comm) " first: a comm can contain spaces (NSD's does)
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
cpu_pct() { # ticks_before ticks_after seconds -> percent of one core
  awk -v a="$1" -v b="$2" -v s="$3" -v k="$CLK_TCK" 'BEGIN { if (s > 0) printf "%.0f", 100 * (b - a) / k / s; else print "NA" }'
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo NA; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo NA; }
mib() { awk -v k="$1" 'BEGIN { if (k ~ /^[0-9]+$/) printf "%.1f", k / 1024; else print "NA" }'; }

compilers_busy() { pgrep -x rustc >/dev/null || pgrep -x clippy-driver >/dev/null || pgrep -x rustdoc >/dev/null; }
wait_quiet() { # seconds: wait at most that long for no compiler to be running
  local _
  for _ in $(seq "$1"); do compilers_busy || return 0; sleep 1; done
}
# A run counts as disturbed when a compiler was running at its start or at its end.
BUSY_RUNS=0
TOTAL_RUNS=0
RUN_BUSY=0
mark_start() { RUN_BUSY=0; if compilers_busy; then RUN_BUSY=1; fi; }
count_busy() {
  TOTAL_RUNS=$((TOTAL_RUNS + 1))
  if compilers_busy; then RUN_BUSY=1; fi
  BUSY_RUNS=$((BUSY_RUNS + RUN_BUSY))
}

median() { # column of numbers on stdin (NA ignored) -> median
  grep -E '^-?[0-9.]+$' | sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) print "NA"
    else if (NR % 2) print v[(NR + 1) / 2]
    else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
col_median() { awk -v c="$2" '{print $c}' "$1" | median; }
col_max() { awk -v c="$2" '$c ~ /^[0-9.]+$/ && (!n++ || $c > m) {m = $c} END {print (n ? m : "NA")}' "$1"; }
fmt() { # number decimals -> formatted, NA kept
  awk -v v="$1" -v d="$2" 'BEGIN { if (v ~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) printf "%.*f", d, v; else print v }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "NA" }'; }

agent_alive() {
  kill -0 "$AGENT_PID" 2>/dev/null || die "the agent (pid $AGENT_PID) is gone: $1"
}

# ---------------------------------------------------------------- build
if [[ "$NO_BUILD" != 1 ]]; then
  note "cargo build --release"
  cargo build --release >&2 || die "cargo build --release failed"
fi
BIN=target/release/proconsul
[[ -x "$BIN" ]] || die "$BIN not found (build it, or unset NO_BUILD)"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain -- src lan api gateway wan Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
  COMMIT="$COMMIT + uncommitted changes"
fi

# ---------------------------------------------------------------- the agent
HTTP_PORT=$(free_port 18500)
DNS_PORT=$(free_port 18600)
NSD_PORT=$(free_port 18700)
HTTP="http://127.0.0.1:$HTTP_PORT"

note "agent: HTTP $HTTP_PORT, DNS $DNS_PORT"
"$BIN" agent -dev -log-level=warn -http-port="$HTTP_PORT" -dns-port="$DNS_PORT" \
  >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!

leader=""
for _ in $(seq 300); do
  agent_alive "it exited during start"
  leader=$(curl -s --max-time 1 "$HTTP/v1/status/leader" 2>/dev/null || true)
  [[ "$leader" =~ ^\"[^\"]+\"$ ]] && break
  sleep 0.1
done
[[ "$leader" =~ ^\"[^\"]+\"$ ]] || die "no leader after 30 s (GET /v1/status/leader said: ${leader:-nothing})"
RSS_START=$(rss_kb "$AGENT_PID")

# The catalog: node address, node, service, id, port, tags (JSON list).
CATALOG="10.0.0.1 node1 web web1 80 [\"rails\"]
10.0.0.2 node2 web web2 80 []
10.0.0.3 node3 web web3 80 []
10.0.0.4 node4 db db1 5432 []
10.0.0.5 node5 api api1 9090 []
10.0.0.4 node4 cache cache1 6379 []
10.0.0.5 node5 cache cache2 6379 []"
while read -r addr node svc id port tags; do
  body="{\"Node\":\"$node\",\"Address\":\"$addr\",\"Service\":{\"Service\":\"$svc\",\"ID\":\"$id\",\"Port\":$port,\"Tags\":$tags}}"
  out=$(curl -s --max-time 5 -X PUT --data "$body" "$HTTP/v1/catalog/register" || true)
  [[ "$out" == true ]] || die "PUT /v1/catalog/register $body answered: ${out:-nothing}"
done <<<"$CATALOG"

srv=$(dig +time=2 +tries=1 +short @127.0.0.1 -p "$DNS_PORT" web.service.consul SRV || true)
if [[ $(grep -c . <<<"$srv") -ne 3 ]]; then
  dig +time=2 +tries=1 @127.0.0.1 -p "$DNS_PORT" web.service.consul SRV >&2 || true
  die "the agent's DNS does not answer web.service.consul SRV with 3 records"
fi
note "agent answers web.service.consul SRV:"
sed 's/^/   /' <<<"$srv" >&2

if [[ $HAVE_JQ == 1 ]]; then
  for path in /v1/health/service/web "/v1/health/service/web?passing"; do
    n=$(curl -s --max-time 5 "$HTTP$path" | jq 'length' 2>/dev/null || echo "?")
    [[ "$n" == 3 ]] || die "GET $path returned $n entries instead of 3"
  done
else
  note "jq missing: the HTTP answers are not checked"
fi
HTTP_BYTES=$(curl -s --max-time 5 "$HTTP/v1/health/service/web" | wc -c)
RSS_REGISTERED=$(rss_kb "$AGENT_PID")

# ---------------------------------------------------------------- NSD
# The zone holds what the agent answers: A records per instance, SRV records whose
# targets are <node>.node.dc1.consul with their A records, and node A records. It has
# no NS records: NSD then answers exactly as the agent does (answers, and for SRV the
# targets' A records as additionals; no authority section), so both build the same
# packets. (With an NS set NSD would add it to every answer, or, with
# minimal-responses, drop the SRV additionals.)
{
  cat <<'EOF'
$ORIGIN consul.
$TTL 0
@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0
EOF
  while read -r addr node svc _ port _; do
    echo "$svc.service IN A $addr"
    echo "$svc.service IN SRV 1 1 $port $node.node.dc1.consul."
    [[ $svc == web ]] && echo "_web._tcp.service IN SRV 1 1 $port $node.node.dc1.consul."
  done <<<"$CATALOG"
  while read -r addr node _; do echo "$addr $node"; done <<<"$CATALOG" | sort -u |
    while read -r addr node; do
      echo "$node.node IN A $addr"
      echo "$node.node.dc1 IN A $addr"
    done
} >"$WORK/consul.zone"

cat >"$WORK/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$WORK"
  database: ""
  zonelistfile: "$WORK/zone.list"
  xfrdfile: "$WORK/xfrd.state"
  pidfile: "$WORK/nsd.pid"
  logfile: "$WORK/nsd.log"
  verbosity: 0
  hide-version: yes
  # NSD limits responses per source /24 by default; all load comes from 127.0.0.1.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: consul.
  zonefile: consul.zone
EOF
nsd-checkconf "$WORK/nsd.conf" || die "nsd-checkconf rejected the generated config"
note "NSD on port $NSD_PORT"
nsd -d -c "$WORK/nsd.conf" >"$WORK/nsd.out" 2>&1 &
NSD_PID=$!
ok=0
for _ in $(seq 100); do
  kill -0 "$NSD_PID" 2>/dev/null || { cat "$WORK/nsd.out" "$WORK/nsd.log" >&2 2>/dev/null; die "nsd exited"; }
  if [[ $(dig +time=1 +tries=1 +short @127.0.0.1 -p "$NSD_PORT" web.service.consul SRV 2>/dev/null | grep -c .) -eq 3 ]]; then
    ok=1
    break
  fi
  sleep 0.1
done
[[ $ok == 1 ]] || die "NSD does not answer web.service.consul SRV"
NSD_TREE=$(tree_pids "$NSD_PID" | tr '\n' ' ')

# ---------------------------------------------------------------- queries
printf 'web.service.consul A\n' >"$WORK/web_a.q"
printf 'web.service.consul SRV\n' >"$WORK/web_srv.q"
cat >"$WORK/mix.q" <<'EOF'
web.service.consul A
web.service.consul SRV
_web._tcp.service.consul SRV
db.service.consul A
db.service.consul SRV
api.service.consul A
api.service.consul SRV
cache.service.consul A
node1.node.consul A
node2.node.consul A
EOF

# Same question, same answer count and additional count from both servers?
note "rcode/answer/authority/additional counts, NSD vs agent:"
counts() { # port name type -> rcode/answers/authority/additionals, asked without EDNS like dnsperf
  dig +noedns +time=2 +tries=1 @127.0.0.1 -p "$1" "$2" "$3" |
    awk '/status:/ {s = $6; sub(/,/, "", s)}
         /ANSWER: / {for (i = 1; i < NF; i++) {if ($i == "ANSWER:") a = $(i + 1); if ($i == "AUTHORITY:") u = $(i + 1); if ($i == "ADDITIONAL:") d = $(i + 1)}}
         END {gsub(/,/, "", a); gsub(/,/, "", u); printf "%s/%s/%s/%s", s, a, u, d}'
}
mismatch=0
while read -r name type; do
  n=$(counts "$NSD_PORT" "$name" "$type")
  a=$(counts "$DNS_PORT" "$name" "$type")
  flag=""
  if [[ "$n" != "$a" ]]; then flag="  <- differs"; mismatch=1; fi
  printf '   %-30s %-4s NSD %-16s agent %s%s\n' "$name" "$type" "$n" "$a" "$flag" >&2
  [[ "$a" == NOERROR/* && "$a" != NOERROR/0/* ]] || die "the agent has no answer for $name $type ($a)"
done <"$WORK/mix.q"
[[ $mismatch == 0 ]] || note "warning: some answers differ between NSD and the agent (see above)"

# ---------------------------------------------------------------- wait for a quiet box
if compilers_busy; then
  note "rustc is running; waiting up to ${IDLE_WAIT}s for it to finish"
  for _ in $(seq "$IDLE_WAIT"); do compilers_busy || break; sleep 1; done
  compilers_busy && note "rustc still running: measuring anyway (the report says so)"
fi
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- DNS
# dnsperf output -> "qps avg_ms max_ms sd_ms lost runtime_s resp_bytes rcodes"
parse_dnsperf() {
  awk '
    /Queries per second:/ {q = $4}
    /Queries lost:/ {lost = $3}
    /Run time \(s\):/ {rt = $4}
    /Average packet size:/ {resp = $NF}
    /Average Latency \(s\):/ {avg = $4; mx = $NF; gsub(/[()]/, "", mx)}
    /Latency StdDev \(s\):/ {sd = $4}
    /Response codes:/ {
      rc = $0; sub(/.*codes: */, "", rc)
      gsub(/ [0-9]+ \(/, ":", rc); gsub(/\)/, "", rc); gsub(/, /, ",", rc)
    }
    END {
      if (rc == "") rc = "none"
      printf "%.0f %.3f %.3f %.3f %d %s %d %s\n", q, avg * 1000, mx * 1000, sd * 1000, lost, rt, resp, rc
    }'
}
percentiles() { # per-query latencies of dnsperf -v -> "p50_ms p99_ms"
  awk '/^> / && $NF ~ /^[0-9.]+$/ {print $NF * 1000}' "$1" | sort -g |
    awk '{v[NR] = $1} END {
      if (NR == 0) {print "NA NA"; exit}
      i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++; if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++; if (i99 < 1) i99 = 1
      printf "%.3f %.3f\n", v[i50], v[i99] }'
}

# One dnsperf run: server(nsd|agent) query_file mode(saturate|rate) run_no -> appends a result line
dns_run() {
  local server=$1 qfile=$2 mode=$3 i=$4 port pid out c0 c1 r pct core cli="NA" p50p99="NA NA"
  local extra=()
  if [[ $server == nsd ]]; then port=$NSD_PORT; pid=$NSD_PID; else port=$DNS_PORT; pid=$AGENT_PID; fi
  [[ $mode == rate ]] && extra=(-Q "$RATE" -v)
  out="$WORK/$qfile.$mode.$server.$i.out"
  mark_start
  c0=$(cpu_ticks "$pid")
  local cmd=(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/$qfile.q" -l "$DURATION" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" "${extra[@]}")
  if [[ -n "$TIME_BIN" ]]; then
    timeout $((DURATION + 30)) "$TIME_BIN" -o "$out.time" -f '%U %S' "${cmd[@]}" >"$out" 2>&1 || true
  else
    timeout $((DURATION + 30)) "${cmd[@]}" >"$out" 2>&1 || true
  fi
  c1=$(cpu_ticks "$pid")
  count_busy
  [[ $server == agent ]] && agent_alive "after dnsperf ($qfile, $mode, run $i)"
  grep -q 'Queries per second' "$out" || { cat "$out" >&2; die "dnsperf gave no statistics against $server"; }
  r=$(parse_dnsperf <"$out")
  read -r q avg mx sd lost rt resp rc <<<"$r"
  pct=$(cpu_pct "$c0" "$c1" "$rt")
  core=$(awk -v q="$q" -v p="$pct" 'BEGIN { if (p > 0) printf "%.0f", q / (p / 100); else print "NA" }')
  if [[ -f "$out.time" ]]; then
    cli=$(awk -v t="$rt" '{ if (t > 0) printf "%.0f", 100 * ($1 + $2) / t; else print "NA" }' "$out.time")
  fi
  [[ $mode == rate ]] && p50p99=$(percentiles "$out")
  # columns: qps avg max sd lost resp server_cpu per_core client_cpu p50 p99 rcodes
  echo "$q $avg $mx $sd $lost $resp $pct $core $cli $p50p99 $rc" >>"$WORK/res.$qfile.$mode.$server"
  printf '   %-8s %-6s run %d %-5s qps=%-7s avg=%sms max=%sms lost=%s resp=%sB server_cpu=%s%% q/s/core=%s dnsperf_cpu=%s%% p50/p99=%s rcodes=%s\n' \
    "$qfile" "$mode" "$i" "$server" "$q" "$avg" "$mx" "$lost" "$resp" "$pct" "$core" "$cli" "${p50p99// //}" "$rc" >&2
}

order() { if (($1 % 2)); then echo "nsd agent"; else echo "agent nsd"; fi; }

note "DNS, saturating: $RUNS x ${DURATION}s per server and query file (dnsperf -c $CLIENTS -T $THREADS -q $OUTSTANDING)"
for qfile in web_a web_srv mix; do
  for i in $(seq "$RUNS"); do
    wait_quiet "$PAIR_WAIT"
    for server in $(order "$i"); do dns_run "$server" "$qfile" saturate "$i"; done
  done
done
note "DNS, fixed rate $RATE q/s: $RUNS x ${DURATION}s per server (mix)"
for i in $(seq "$RUNS"); do
  wait_quiet "$PAIR_WAIT"
  for server in $(order "$i"); do dns_run "$server" mix rate "$i"; done
done
RSS_DNS=$(rss_kb "$AGENT_PID")

# ---------------------------------------------------------------- HTTP
# wrk output -> "rps avg_ms p50_ms p99_ms max_ms requests non2xx socket_errors seconds"
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000
      if (v ~ /s$/) return v * 1000
      return v + 0
    }
    /^ *Latency +[0-9]/ {avg = ms($2); mx = ms($4)}
    $1 == "50%" {p50 = ms($2)}
    $1 == "99%" {p99 = ms($2)}
    / requests in / {req = $1; secs = $4; sub(/s,?$/, "", secs)}
    /Non-2xx or 3xx responses:/ {bad = $NF}
    /Socket errors:/ {serr = ($4 + 0) + ($6 + 0) + ($8 + 0) + ($10 + 0)}
    /^Requests\/sec:/ {rps = $2}
    END {printf "%.0f %.3f %.3f %.3f %.3f %d %d %d %s\n", rps, avg, p50, p99, mx, req, bad, serr, secs}'
}
http_run() { # name path run_no
  local name=$1 path=$2 i=$3 out c0 c1 r pct
  out="$WORK/http.$name.$i.out"
  mark_start
  c0=$(cpu_ticks "$AGENT_PID")
  timeout $((DURATION + 30)) wrk -t "$WRK_THREADS" -c "$WRK_CONNS" -d "${DURATION}s" --latency "$HTTP$path" >"$out" 2>&1 || true
  c1=$(cpu_ticks "$AGENT_PID")
  count_busy
  agent_alive "after wrk ($path, run $i)"
  grep -q 'Requests/sec' "$out" || { cat "$out" >&2; die "wrk gave no statistics for $path"; }
  r=$(parse_wrk <"$out")
  read -r rps avg p50 p99 mx req bad serr secs <<<"$r"
  pct=$(cpu_pct "$c0" "$c1" "$secs")
  echo "$rps $avg $p50 $p99 $mx $req $bad $serr $pct" >>"$WORK/res.http.$name"
  printf '   %-7s run %d rps=%-7s avg=%sms p50=%sms p99=%sms max=%sms requests=%s non2xx=%s socket_errors=%s agent_cpu=%s%%\n' \
    "$name" "$i" "$rps" "$avg" "$p50" "$p99" "$mx" "$req" "$bad" "$serr" "$pct" >&2
}
note "HTTP: $RUNS x ${DURATION}s per path (wrk -t $WRK_THREADS -c $WRK_CONNS)"
for i in $(seq "$RUNS"); do
  wait_quiet "$PAIR_WAIT"
  http_run all /v1/health/service/web "$i"
  http_run passing "/v1/health/service/web?passing" "$i"
done
RSS_HTTP=$(rss_kb "$AGENT_PID")
HWM=$(hwm_kb "$AGENT_PID")
# what the agent logged after its start banner (it runs with -log-level=warn)
awk 'seen && NF; /Log data will now stream/ {seen = 1}' "$WORK/agent.log" >"$WORK/agent.warn"
LOG_LINES=$(grep -c . "$WORK/agent.warn" || true)

# ---------------------------------------------------------------- report
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
CMD="RUNS=$RUNS DURATION=$DURATION CLIENTS=$CLIENTS THREADS=$THREADS OUTSTANDING=$OUTSTANDING RATE=$RATE WRK_THREADS=$WRK_THREADS WRK_CONNS=$WRK_CONNS bench/dns_http.sh"
[[ $WRITE == 1 ]] && CMD="$CMD --write"

label() { case $1 in web_a) echo '`web.service.consul A`' ;; web_srv) echo '`web.service.consul SRV`' ;; mix) echo "mix of $(grep -c . "$WORK/mix.q") questions" ;; esac; }
sname() { if [[ $1 == nsd ]]; then echo "NSD $(nsd -v 2>&1 | awk 'NR == 1 {print $3}'), 1 server"; else echo "proconsul agent"; fi; }

{
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs ($CPU_MODEL), agent built from $COMMIT."
  echo "Command: \`$CMD\` (medians of $RUNS runs of ${DURATION} s; load average at the start of the load: $LOAD_AT_START)."
  if ((BUSY_RUNS > 0)); then
    echo "Note: a compiler (rustc) was running at the start or the end of $BUSY_RUNS of the $TOTAL_RUNS runs, which then shared the CPUs with it."
  fi
  echo
  echo "**DNS, saturating** (dnsperf \`-c $CLIENTS -T $THREADS -q $OUTSTANDING -l $DURATION\`, UDP, dnsperf on the same cores):"
  echo
  echo "| queries | server | q/s | avg ms | max ms (worst run) | server CPU | q/s per server core | dnsperf CPU | lost | response B | rcodes (last run) |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for qfile in web_a web_srv mix; do
    for server in nsd agent; do
      f="$WORK/res.$qfile.saturate.$server"
      echo "| $(label "$qfile") | $(sname "$server") | $(fmt "$(col_median "$f" 1)" 0) | $(fmt "$(col_median "$f" 2)" 3) | $(fmt "$(col_max "$f" 3)" 1) | $(fmt "$(col_median "$f" 7)" 0)% | $(fmt "$(col_median "$f" 8)" 0) | $(fmt "$(col_median "$f" 9)" 0)% | $(col_median "$f" 5) | $(col_median "$f" 6) | $(tail -n 1 "$f" | awk '{print $NF}') |"
    done
  done
  echo
  echo "| queries | agent / NSD, q/s | agent / NSD, q/s (median of the back-to-back pairs) | agent / NSD, q/s per server core |"
  echo "|---|---:|---:|---:|"
  for qfile in web_a web_srv mix; do
    n="$WORK/res.$qfile.saturate.nsd"
    a="$WORK/res.$qfile.saturate.agent"
    paired=$(paste -d' ' <(awk '{print $1}' "$a") <(awk '{print $1}' "$n") | awk '$2 > 0 {print $1 / $2}' | median)
    echo "| $(label "$qfile") | **$(ratio "$(col_median "$a" 1)" "$(col_median "$n" 1)")** | $(fmt "$paired" 2) | $(ratio "$(col_median "$a" 8)" "$(col_median "$n" 8)") |"
  done
  echo
  echo "**DNS, fixed rate** ($RATE q/s, mix; p50/p99 from dnsperf's per-query latencies, \`-v\`):"
  echo
  echo "| server | q/s | avg ms | p50 ms | p99 ms | max ms (worst run) | server CPU | lost |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for server in nsd agent; do
    f="$WORK/res.mix.rate.$server"
    echo "| $(sname "$server") | $(fmt "$(col_median "$f" 1)" 0) | $(fmt "$(col_median "$f" 2)" 3) | $(fmt "$(col_median "$f" 10)" 3) | $(fmt "$(col_median "$f" 11)" 3) | $(fmt "$(col_max "$f" 3)" 1) | $(fmt "$(col_median "$f" 7)" 0)% | $(col_median "$f" 5) |"
  done
  echo
  echo "**HTTP** (wrk \`-t $WRK_THREADS -c $WRK_CONNS -d ${DURATION}s --latency\`; the answer is $HTTP_BYTES bytes, 3 instances):"
  echo
  echo "| request | req/s | avg ms | p50 ms | p99 ms | max ms (worst run) | non-2xx | socket errors | agent CPU |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for name in all passing; do
    f="$WORK/res.http.$name"
    path=/v1/health/service/web
    [[ $name == passing ]] && path="$path?passing"
    echo "| \`GET $path\` | $(fmt "$(col_median "$f" 1)" 0) | $(fmt "$(col_median "$f" 2)" 3) | $(fmt "$(col_median "$f" 3)" 3) | $(fmt "$(col_median "$f" 4)" 3) | $(fmt "$(col_max "$f" 5)" 1) | $(awk '{s += $7} END {print s + 0}' "$f") | $(awk '{s += $8} END {print s + 0}' "$f") | $(fmt "$(col_median "$f" 9)" 0)% |"
  done
  echo
  echo "(Medians over the runs, except the worst-run maxima and the totals of non-2xx responses and socket errors.)"
  echo
  echo "**Agent memory** (VmRSS):"
  echo
  echo "| after start | after registering the catalog | after the DNS load | after the HTTP load | peak (VmHWM) |"
  echo "|---:|---:|---:|---:|---:|"
  echo "| $(mib "$RSS_START") MiB | $(mib "$RSS_REGISTERED") MiB | $(mib "$RSS_DNS") MiB | $(mib "$RSS_HTTP") MiB | $(mib "$HWM") MiB |"
  if ((LOG_LINES > 0)); then
    echo
    echo "The agent logged $LOG_LINES line(s) at warn level or above during the run."
  fi
} >"$WORK/report.md"

echo
cat "$WORK/report.md"
if ((LOG_LINES > 0)); then
  note "agent warnings (last 20 lines):"
  tail -n 20 "$WORK/agent.warn" >&2
fi

if [[ $WRITE == 1 ]]; then
  doc="$ROOT/BENCHMARKS.md"
  [[ -f "$doc" ]] || die "BENCHMARKS.md not found"
  grep -q '^<!-- dns-http:begin -->$' "$doc" && grep -q '^<!-- dns-http:end -->$' "$doc" ||
    die "BENCHMARKS.md lacks the <!-- dns-http:begin --> / <!-- dns-http:end --> lines"
  awk -v section="$WORK/report.md" '
    $0 == "<!-- dns-http:begin -->" {print; while ((getline line < section) > 0) print line; skip = 1; next}
    $0 == "<!-- dns-http:end -->" {skip = 0}
    !skip {print}' "$doc" >"$WORK/BENCHMARKS.md.new"
  cat "$WORK/BENCHMARKS.md.new" >"$doc"
  note "BENCHMARKS.md updated"
fi
