#!/usr/bin/env bash
# Raft write benchmark: catalog registrations on 1 and 3 proconsul servers against etcd
# puts on 1 and 3 etcd members, same machine, same run, both fsyncing every commit (the
# default of both); then leader failover time of both.
#
#   bench/raft.sh              # measure, print a markdown report
#   bench/raft.sh --write      # ... and put it into BENCHMARKS.md
#   NODES="1 3" CLIENTS="1 8 32" RUNS=3 SECONDS_PER_RUN=10 FAILOVERS=5 RESTARTS=5 bench/raft.sh
#
# Writes: closed-loop clients (one request in flight each) against the leader's HTTP API:
#   proconsul: PUT /v1/catalog/register, a new node with one service each time
#              (bench/catalog_load.py)
#   etcd:      puts through its JSON gateway (the team's reference etcd_bench.sh and
#              kv_load.py, SHARED_BENCH, default ../shared/bench next to the checkout)
# Failover: a 3-member cluster under a write every 10 ms through a follower; the leader
# is killed with SIGKILL; the figure is the time until a write is acknowledged again.
# Restart: the same, with the killed leader started again at once on its data dir (a
# crash and a supervisor's restart).
# Every process started here is stopped by PID on exit; data dirs live in a temp dir.
#
# Needs: cargo, python3, etcd and etcdctl (Debian: apt-get install etcd-server etcd-client).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NODES=${NODES:-"1 3"}
CLIENTS=${CLIENTS:-"1 8 32"}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
FAILOVERS=${FAILOVERS:-5}
RESTARTS=${RESTARTS:-5}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

for tool in etcd etcdctl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install etcd-server etcd-client)" >&2; exit 1; }
done
[ -f "$SHARED_BENCH/etcd_bench.sh" ] || { echo "etcd_bench.sh not found in $SHARED_BENCH" >&2; exit 1; }
cargo build --release -q --bin proconsul
BIN="$ROOT/target/release/proconsul"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  # Leaders started again by time_failover.
  for p in $(cat "$WORK/restarted" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

median() { sort -n | awk '{v[NR]=$1} END{ if(NR==0) print "NA"; else if(NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2 }'; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts N proconsul servers (bootstrap_expect=N); sets HTTP[i], SERVER_PIDS[i], DIRS[i],
# and CMDS[i], the command that starts server i again.
start_servers() {
  local n=$1 i join=""
  HTTP=(); SERVER_PIDS=(); DIRS=(); SERF=(); CMDS=()
  for i in $(seq 0 $((n - 1))); do
    local http serf rpc dir
    http=$(free_port); serf=$(free_port); rpc=$(free_port)
    dir="$WORK/${RUN_TAG:-}p$n-s$i"
    mkdir -p "$dir"
    local cmd
    cmd=$(printf '%q ' "$BIN" agent -server -bootstrap-expect="$n" -node="s$i" -data-dir="$dir" \
      -bind=127.0.0.1 -client=127.0.0.1 -http-port="$http" -dns-port=-1 \
      -server-port="$rpc" -serf-lan-port="$serf" -log-level="$LOG_LEVEL" $join)
    cmd="exec $cmd >> $(printf '%q' "$dir/log") 2>&1"
    bash -c "$cmd" &
    SERVER_PIDS+=($!); PIDS+=($!); HTTP+=("$http"); DIRS+=("$dir"); SERF+=("$serf"); CMDS+=("$cmd")
    join="-join=127.0.0.1:${SERF[0]}"
  done
  wait_leader "$n"
}

# Prints the HTTP port of the leader once every one of the N servers answers and all of
# them report the same N voters and the same leader.
leader_http() {
  local n=$1
  python3 - "$n" "${HTTP[@]}" <<'PY'
import json, sys, urllib.request
n = int(sys.argv[1]); ports = sys.argv[2:]
views = set()
for port in ports:
    try:
        c = json.load(urllib.request.urlopen("http://127.0.0.1:%s/v1/operator/raft/configuration" % port, timeout=2))
    except Exception:
        sys.exit(1)
    servers = c.get("Servers", [])
    leaders = [s["Node"] for s in servers if s.get("Leader")]
    if len(servers) != n or not all(s.get("Voter") for s in servers) or len(leaders) != 1:
        sys.exit(1)
    views.add(leaders[0])
if len(views) != 1:
    sys.exit(1)
print(ports[int(views.pop()[1:])])
PY
}

wait_leader() {
  local n=$1
  for _ in $(seq 300); do
    if LEADER_HTTP=$(leader_http "$n"); then return 0; fi
    sleep 0.1
  done
  echo "no leader among $n servers" >&2
  exit 1
}

stop_servers() {
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# Milliseconds from killing the leader until a write through a survivor is acknowledged.
# Args: the leader's PID, the URL of the survivor's write endpoint, its JSON body, the
# method, and optionally a shell command that starts the leader again right after the
# kill (its PID goes to $WORK/restarted, for the cleanup).
time_failover() {
  python3 - "$WORK/restarted" "$@" <<'PY'
import json, os, signal, subprocess, sys, time, urllib.request
restarted, pid, url, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
method = sys.argv[5] if len(sys.argv) > 5 else "PUT"
restart = sys.argv[6] if len(sys.argv) > 6 else None
def write():
    req = urllib.request.Request(url, data=body.encode(), method=method)
    try:
        with urllib.request.urlopen(req, timeout=0.5) as r:
            return r.status == 200
    except Exception:
        return False
for _ in range(100):
    if write():
        break
    time.sleep(0.01)
t = time.perf_counter()
os.kill(pid, signal.SIGKILL)
def alive(pid):
    # The leader is the script's child, not ours: once killed it is gone or a zombie.
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
if restart:
    while alive(pid):
        time.sleep(0.001)
    child = subprocess.Popen(["bash", "-c", restart])
    with open(restarted, "a") as f:
        f.write("%d\n" % child.pid)
deadline = t + 60
while time.perf_counter() < deadline:
    if write():
        print(round((time.perf_counter() - t) * 1000))
        sys.exit(0)
    time.sleep(0.01)
print("timeout")
PY
}

LOG_LEVEL=warn
started=$(date -u +"%Y-%m-%d %H:%M UTC")
: > "$WORK/ours"
for n in $NODES; do
  echo "== proconsul: $n server(s)" >&2
  start_servers "$n"
  for c in $CLIENTS; do
    : > "$WORK/res"
    for r in $(seq "$RUNS"); do
      line=$(python3 bench/catalog_load.py --url "http://127.0.0.1:$LEADER_HTTP" --clients "$c" --seconds "$SECONDS_PER_RUN" | grep '^RESULT')
      echo "  n=$n clients=$c run $r: $line" >&2
      echo "$line" | sed -E 's/.*ops_s=([0-9.]+).*p50_ms=([0-9.]+).*p99_ms=([0-9.]+).*/\1 \2 \3/' >> "$WORK/res"
    done
    echo "proconsul $n $c $(awk '{print $1}' "$WORK/res" | median) $(awk '{print $2}' "$WORK/res" | median) $(awk '{print $3}' "$WORK/res" | median)" >> "$WORK/ours"
  done
  stop_servers
done

echo "== etcd (reference): $SHARED_BENCH/etcd_bench.sh" >&2
NODES="$NODES" CLIENTS="$CLIENTS" RUNS="$RUNS" SECONDS_PER_RUN="$SECONDS_PER_RUN" FSYNC=0 \
  bash "$SHARED_BENCH/etcd_bench.sh" > "$WORK/etcd.log" 2>&1 || true
grep -E '^MEDIAN|^#' "$WORK/etcd.log" >&2 || true
etcd_version=$(etcd --version | head -1)

stop_restarted() {
  for p in $(cat "$WORK/restarted" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  : > "$WORK/restarted"
}

# Failover (MODE fo) and restart (MODE rs), COUNT rounds each: proconsul. The servers log
# at info level; when a round times out, their logs are kept in
# target/bench-raft-MODE-ROUND/ to explain it.
proconsul_failovers() {
  local mode=$1 count=$2 r leader_idx survivor ms
  : > "$WORK/$mode-ours"
  LOG_LEVEL=info
  for r in $(seq "$count"); do
    RUN_TAG="$mode$r-" start_servers 3
    leader_idx=-1
    for i in 0 1 2; do [ "${HTTP[$i]}" = "$LEADER_HTTP" ] && leader_idx=$i; done
    survivor=$(( (leader_idx + 1) % 3 ))
    local again=()
    [ "$mode" = rs ] && again=(PUT "${CMDS[$leader_idx]}")
    ms=$(time_failover "${SERVER_PIDS[$leader_idx]}" "http://127.0.0.1:${HTTP[$survivor]}/v1/catalog/register" '{"Node":"failover","Address":"10.0.0.1"}' "${again[@]}")
    echo "  proconsul $mode run $r: $ms ms (killed s$leader_idx, wrote through s$survivor)" >&2
    echo "$ms" >> "$WORK/$mode-ours"
    stop_restarted
    stop_servers
    if [ "$ms" = timeout ]; then
      kept="$ROOT/target/bench-raft-$mode-$r"
      rm -rf "$kept"; mkdir -p "$kept"
      for i in 0 1 2; do cp "${DIRS[$i]}/log" "$kept/s$i.log"; done
      echo "  the servers' logs are kept in $kept" >&2
    fi
  done
}

# The same for etcd, 3 members.
etcd_failovers() {
  local mode=$1 count=$2 r i cluster ports pports cmds leader_idx survivor ms
  : > "$WORK/$mode-etcd"
  for r in $(seq "$count"); do
    cluster=""; ports=(); pports=(); EPIDS=(); cmds=()
    for i in 1 2 3; do ports+=($(free_port)); pports+=($(free_port)); done
    for i in 0 1 2; do cluster+="e$i=http://127.0.0.1:${pports[$i]},"; done
    cluster=${cluster%,}
    for i in 0 1 2; do
      cmds+=("exec $(printf '%q ' etcd --name "e$i" --data-dir "$WORK/etcd-$mode-$r-$i" \
        --listen-client-urls "http://127.0.0.1:${ports[$i]}" --advertise-client-urls "http://127.0.0.1:${ports[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${pports[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$mode$r" \
        --logger zap --log-outputs stderr --log-level error) >> $(printf '%q' "$WORK/etcd-$mode-$r-$i.log") 2>&1")
      bash -c "${cmds[$i]}" &
      EPIDS+=($!); PIDS+=($!)
    done
    eps="http://127.0.0.1:${ports[0]},http://127.0.0.1:${ports[1]},http://127.0.0.1:${ports[2]}"
    for _ in $(seq 100); do etcdctl --endpoints="$eps" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
    leader_ep=$(etcdctl --endpoints="$eps" endpoint status -w json | python3 -c '
import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print(s["Endpoint"])')
    leader_idx=0
    for i in 0 1 2; do [ "http://127.0.0.1:${ports[$i]}" = "$leader_ep" ] && leader_idx=$i; done
    survivor=$(( (leader_idx + 1) % 3 ))
    local again=()
    [ "$mode" = rs ] && again=("${cmds[$leader_idx]}")
    ms=$(time_failover "${EPIDS[$leader_idx]}" "http://127.0.0.1:${ports[$survivor]}/v3/kv/put" '{"key":"Zm8=","value":"YmFy"}' POST "${again[@]}")
    echo "  etcd $mode run $r: $ms ms" >&2
    echo "$ms" >> "$WORK/$mode-etcd"
    stop_restarted
    for p in "${EPIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  done
}

proconsul_failovers fo "$FAILOVERS"
etcd_failovers fo "$FAILOVERS"
proconsul_failovers rs "$RESTARTS"
etcd_failovers rs "$RESTARTS"

report=$(python3 - "$WORK" "$started" "$(nproc)" "$etcd_version" "$RUNS" "$SECONDS_PER_RUN" "$NODES" "$CLIENTS" "$FAILOVERS" "$RESTARTS" <<'PY'
import re, statistics, sys, os
work, started, cpus, etcd_version, runs, secs, nodes, clients, failovers, restarts = sys.argv[1:11]
ours = {}
for line in open(os.path.join(work, "ours")):
    _, n, c, ops, p50, p99 = line.split()
    ours[(n, c)] = (ops, p50, p99)
etcd = {}
for line in open(os.path.join(work, "etcd.log")):
    m = re.match(r"MEDIAN etcd nodes=(\d+) clients=(\d+): ops/s=([\d.NA]+) p50_ms=([\d.NA]+) p99_ms=([\d.NA]+)", line)
    if m:
        etcd[(m.group(1), m.group(2))] = m.groups()[2:]
def fo(name):
    vals = [int(x) for x in open(os.path.join(work, name)).read().split() if x.isdigit()]
    bad = sum(1 for x in open(os.path.join(work, name)).read().split() if not x.isdigit())
    if not vals:
        return "—"
    return "median %d ms, max %d ms over %d runs%s" % (statistics.median(vals), max(vals), len(vals),
                                                       (", %d timed out" % bad) if bad else "")
print(f"Measured {started} on {cpus} CPUs; {etcd_version}; medians of {runs} runs of {secs} s.")
print(f"Command: `NODES=\"{nodes}\" CLIENTS=\"{clients}\" RUNS={runs} SECONDS_PER_RUN={secs} FAILOVERS={failovers} RESTARTS={restarts} bench/raft.sh --write`.")
print()
print("| servers | clients | proconsul registrations/s | p50 ms | p99 ms | etcd puts/s | p50 ms | p99 ms | proconsul / etcd |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in nodes.split():
    for c in clients.split():
        o = ours.get((n, c), ("NA",) * 3)
        e = etcd.get((n, c), ("NA",) * 3)
        try:
            ratio = "%.2f" % (float(o[0]) / float(e[0]))
        except (ValueError, ZeroDivisionError):
            ratio = "—"
        print(f"| {n} | {c} | {o[0]} | {o[1]} | {o[2]} | {e[0]} | {e[1]} | {e[2]} | **{ratio}** |")
print()
print(f"Leader failover (3 members, SIGKILL of the leader until a write through a follower is acknowledged): proconsul {fo('fo-ours')}; etcd {fo('fo-etcd')}.")
print()
print(f"Leader restart (the same, with the killed leader started again at once on its data dir): proconsul {fo('rs-ours')}; etcd {fo('rs-etcd')}.")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$ROOT/BENCHMARKS.md" raft "$report"
  echo "BENCHMARKS.md updated" >&2
fi
