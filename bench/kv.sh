#!/usr/bin/env bash
# KV benchmark: proconsul's /v1/kv against etcd, same machine, same run, same clients.
#
#   bench/kv.sh              # measure, print a markdown report
#   bench/kv.sh --write      # ... and put it into BENCHMARKS.md (section `kv`)
#   RUNS=1 SECONDS_PER_RUN=3 WATCHERS=500 bench/kv.sh      # a quick check of the script
#   BENCHMARKS_MD=/tmp/copy.md bench/kv.sh --write          # write the section elsewhere
#
# 1. Puts and gets on 1 and 3 servers (NODES) with 1, 8 and 32 closed-loop clients
#    (CLIENTS), one request in flight each, against the leader, through the team's
#    reference client kv_load.py (SHARED_BENCH, default ../shared/bench next to the
#    checkout) for both: proconsul `PUT/GET /v1/kv/bench/C/N`, etcd `/v3/kv/put` and
#    `/v3/kv/range` through its JSON gateway; 256-byte values. Gets read keys written
#    before (100 per client) in each system's default mode: proconsul's (Consul's)
#    default consistency, etcd's linearizable read.
# 2. Reads of a whole prefix of PREFIX_KEYS keys (256-byte values): `GET
#    /v1/kv/range/?recurse` against etcd's range with `range_end`, closed loop of
#    PREFIX_CLIENTS clients (bench/src/bin/kv.rs, `kv-bench range`).
# 3. Watchers (`kv-bench watch`), on a fresh single server / member for each row:
#    WATCHERS held at once, one key each and then all on one prefix; proconsul: a
#    blocking read per watcher on its own connection (`?index=&wait=10m`, sent again
#    when answered); etcd: a /v3/watch stream of the JSON gateway per watch. Figures:
#    the server's RSS growth per held watcher, and over WATCH_WRITES writes the time
#    from sending a write until every watcher of that key (or prefix) has read it.
#
# Every configuration is medians of RUNS runs of SECONDS_PER_RUN s. Servers keep their
# data in a temp dir, fsync as by default, listen on 127.0.0.1 only, and are stopped by
# PID on exit; proconsul runs with `limits` raised so that the watchers are admitted.
# Needs: cargo, python3, etcd and etcdctl (Debian: apt-get install etcd-server etcd-client).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NODES=${NODES:-"1 3"}
CLIENTS=${CLIENTS:-"1 8 32"}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
PREFIX_KEYS=${PREFIX_KEYS:-1000}
PREFIX_CLIENTS=${PREFIX_CLIENTS:-"1 8"}
WATCHERS=${WATCHERS:-10000}
WATCH_WRITES=${WATCH_WRITES:-20}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1
GET_KEYS=100   # keys per get client, written before the gets

for tool in etcd etcdctl python3 timeout; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install etcd-server etcd-client)" >&2; exit 1; }
done
[ -f "$SHARED_BENCH/kv_load.py" ] || { echo "kv_load.py not found in $SHARED_BENCH" >&2; exit 1; }
# Each watcher is a connection: the driver and the server each need a descriptor per
# watcher.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((WATCHERS + 1024)) ]; then
  echo "WATCHERS=$WATCHERS needs $((WATCHERS + 1024)) open files; the limit is $(ulimit -n)" >&2
  exit 1
fi
cargo build --release -q --bin proconsul
cargo build --release -q -p proconsul-bench --bin kv-bench
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/proconsul"
KVB="$TARGET/release/kv-bench"
KV_LOAD="$SHARED_BENCH/kv_load.py"

WORK=$(mktemp -d)
SERVER_PIDS=()
ETCD_PIDS=()
CHILD=""
cleanup() {
  [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null || true
  for p in "${SERVER_PIDS[@]:-}" "${ETCD_PIDS[@]:-}"; do
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The limits proconsul's default config would use to refuse thousands of long polls
# from one address (200 per client, 4096 in all): raised for the watchers.
cat > "$WORK/bench.json" <<EOF
{"limits": {"http_max_connections": $((WATCHERS + 1024)), "http_max_conns_per_client": 0,
            "http_max_blocking_queries": $((WATCHERS + 1024)), "http_max_blocking_queries_per_client": 0}}
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Runs a driver in the background (so that the trap can stop it), bounded by `timeout`;
# its output goes to the file $1.
run() {
  local out=$1; shift
  timeout "$@" > "$out" 2> "$out.err" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  if [ "$rc" -ne 0 ]; then
    echo "failed ($rc): ${*:2}" >&2
    tail -5 "$out.err" >&2 || true
    return "$rc"
  fi
}

# Starts N proconsul servers (bootstrap_expect=N); sets HTTP[i], SERVER_PIDS[i] and
# LEADER_HTTP.
start_servers() {
  local n=$1 tag=$2 i join=""
  HTTP=(); SERVER_PIDS=(); SERF=()
  for i in $(seq 0 $((n - 1))); do
    local http serf rpc dir
    http=$(free_port); serf=$(free_port); rpc=$(free_port)
    dir="$WORK/$tag-s$i"
    mkdir -p "$dir"
    "$BIN" agent -server -bootstrap-expect="$n" -node="s$i" -data-dir="$dir" \
      -config-file="$WORK/bench.json" -bind=127.0.0.1 -client=127.0.0.1 \
      -http-port="$http" -dns-port=-1 -server-port="$rpc" -serf-lan-port="$serf" \
      -log-level=warn $join > "$dir/log" 2>&1 &
    SERVER_PIDS+=($!); HTTP+=("$http"); SERF+=("$serf")
    join="-join=127.0.0.1:${SERF[0]}"
  done
  for _ in $(seq 300); do
    if LEADER_HTTP=$(leader_http "$n"); then return 0; fi
    sleep 0.1
  done
  echo "no leader among $n proconsul servers" >&2
  exit 1
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

# Stops the processes whose PIDs are given: SIGTERM, then SIGKILL after 5 s.
stop_pids() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# Data dirs are removed as soon as their servers stop (etcd preallocates 64 MiB of WAL).
stop_servers() { stop_pids "${SERVER_PIDS[@]}"; SERVER_PIDS=(); rm -rf "$WORK"/*-s[0-9]*; }

# Starts N etcd members; sets ETCD_PIDS[i] and ETCD_LEADER (its client URL).
start_etcd() {
  local n=$1 tag=$2 i cluster="" ports=() pports=()
  ETCD_PIDS=()
  for i in $(seq 0 $((n - 1))); do ports+=("$(free_port)"); pports+=("$(free_port)"); done
  for i in $(seq 0 $((n - 1))); do cluster+="e$i=http://127.0.0.1:${pports[$i]},"; done
  cluster=${cluster%,}
  for i in $(seq 0 $((n - 1))); do
    etcd --name "e$i" --data-dir "$WORK/$tag-e$i" \
      --listen-client-urls "http://127.0.0.1:${ports[$i]}" --advertise-client-urls "http://127.0.0.1:${ports[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${pports[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$tag" \
      --logger zap --log-outputs stderr --log-level error > "$WORK/$tag-e$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  local eps=""
  for i in $(seq 0 $((n - 1))); do eps+="http://127.0.0.1:${ports[$i]},"; done
  eps=${eps%,}
  ETCD_LEADER=""
  for _ in $(seq 100); do
    if etcdctl --endpoints="$eps" endpoint health >/dev/null 2>&1; then
      ETCD_LEADER=$(etcdctl --endpoints="$eps" endpoint status -w json | python3 -c '
import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print(s["Endpoint"])') || true
      [ -n "$ETCD_LEADER" ] && return 0
    fi
    sleep 0.2
  done
  echo "no etcd leader among $n members" >&2
  exit 1
}

stop_etcd() { stop_pids "${ETCD_PIDS[@]}"; ETCD_PIDS=(); rm -rf "$WORK"/*-e[0-9]*; }

RESULTS="$WORK/results"
: > "$RESULTS"
max_clients=$(printf '%s\n' $CLIENTS | sort -n | tail -1)

# Puts, gets and prefix reads against one system (consul|etcd) at URL; records
# "system op servers clients run JSON" lines. A run that fails is left out (and said).
measure() {
  local name=$1 api=$2 url=$3 n=$4 c r op keys
  for op in put get; do
    keys=()
    if [ "$op" = get ]; then
      # The keys the gets read: bench/C/0..GET_KEYS-1 for every client C.
      run "$WORK/out" $((60 + 30)) python3 "$KV_LOAD" --api "$api" --url "$url" --op put \
        --clients "$max_clients" --max-ops "$GET_KEYS" --keyspace "$GET_KEYS" --seconds 60
      grep -q 'errors=0 ' "$WORK/out" || { echo "writing the keys for the gets failed: $(cat "$WORK/out")" >&2; exit 1; }
      keys=(--keyspace "$GET_KEYS")
    fi
    for c in $CLIENTS; do
      for r in $(seq "$RUNS"); do
        run "$WORK/out" $((${SECONDS_PER_RUN%.*} + 60)) python3 "$KV_LOAD" --api "$api" --url "$url" \
          --op "$op" --clients "$c" --seconds "$SECONDS_PER_RUN" "${keys[@]}" || continue
        echo "  $name n=$n $op clients=$c run $r: $(grep '^RESULT' "$WORK/out" | cut -d' ' -f4-)" >&2
        echo "$name $op $n $c $r $(grep '^JSON' "$WORK/out" | cut -d' ' -f2-)" >> "$RESULTS"
      done
    done
  done
  run "$WORK/out" 300 "$KVB" load --api "$api" --url "$url" --prefix range/ --count "$PREFIX_KEYS"
  for c in $PREFIX_CLIENTS; do
    for r in $(seq "$RUNS"); do
      run "$WORK/out" $((${SECONDS_PER_RUN%.*} + 60)) "$KVB" range --api "$api" --url "$url" --prefix range/ \
        --expect "$PREFIX_KEYS" --clients "$c" --seconds "$SECONDS_PER_RUN" || continue
      echo "  $name n=$n prefix clients=$c run $r: $(grep '^RESULT' "$WORK/out" | cut -d' ' -f4-)" >&2
      echo "$name range $n $c $r $(grep '^JSON' "$WORK/out" | cut -d' ' -f2-)" >> "$RESULTS"
    done
  done
}

started=$(date -u +"%Y-%m-%d %H:%M UTC")
t_start=$(date +%s)
for n in $NODES; do
  echo "== proconsul: $n server(s), leader's HTTP API" >&2
  start_servers "$n" "p$n"
  measure proconsul consul "http://127.0.0.1:$LEADER_HTTP" "$n"
  stop_servers
  echo "== etcd: $n member(s), leader's JSON gateway" >&2
  start_etcd "$n" "e$n"
  measure etcd etcd "$ETCD_LEADER" "$n"
  stop_etcd
done

# Watchers: a fresh server for each row, so that its memory before the watchers is
# not inflated by an earlier row's.
for mode in key prefix; do
  echo "== proconsul: $WATCHERS watchers, mode $mode" >&2
  start_servers 1 "wp-$mode"
  if run "$WORK/out" 900 "$KVB" watch --api consul --url "http://127.0.0.1:$LEADER_HTTP" \
      --pid "${SERVER_PIDS[0]}" --mode "$mode" --watchers "$WATCHERS" --writes "$WATCH_WRITES"; then
    cat "$WORK/out.err" >&2
    echo "proconsul watch-$mode 1 $WATCHERS 1 $(grep '^JSON' "$WORK/out" | cut -d' ' -f2-)" >> "$RESULTS"
  fi
  stop_servers
  echo "== etcd: $WATCHERS watches, mode $mode" >&2
  start_etcd 1 "we-$mode"
  if run "$WORK/out" 900 "$KVB" watch --api etcd --url "$ETCD_LEADER" \
      --pid "${ETCD_PIDS[0]}" --mode "$mode" --watchers "$WATCHERS" --writes "$WATCH_WRITES"; then
    cat "$WORK/out.err" >&2
    echo "etcd watch-$mode 1 $WATCHERS 1 $(grep '^JSON' "$WORK/out" | cut -d' ' -f2-)" >> "$RESULTS"
  fi
  stop_etcd
done
echo "== done in $(( $(date +%s) - t_start )) s" >&2

etcd_version=$(etcd --version | head -1)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
report=$(python3 - "$RESULTS" "$started" "$(nproc)" "$etcd_version" "$commit" "$RUNS" \
  "$SECONDS_PER_RUN" "$NODES" "$CLIENTS" "$PREFIX_KEYS" "$PREFIX_CLIENTS" "$WATCHERS" "$WATCH_WRITES" <<'PY'
import json, statistics, sys
(path, started, cpus, etcd_version, commit, runs, secs, nodes, clients, prefix_keys,
 prefix_clients, watchers, writes) = sys.argv[1:14]
rows = {}
for line in open(path):
    sys_, op, n, c, r, js = line.rstrip("\n").split(" ", 5)
    try:
        rows.setdefault((sys_, op, n, c), []).append(json.loads(js))
    except ValueError:
        pass

def med(sys_, op, n, c, key):
    vals = [r[key] for r in rows.get((sys_, op, n, c), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def errors(sys_, op, n, c):
    return sum(r.get("errors", 0) for r in rows.get((sys_, op, n, c), []))

def fmt(v, digits=3):
    if v is None:
        return "—"
    return ("%.1f" % v) if digits == 1 else ("%g" % round(v, digits))

def table(op, what, cl):
    print(f"| servers | clients | proconsul {what}/s | p50 ms | p99 ms | etcd {what}/s | p50 ms | p99 ms | proconsul / etcd |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for n in nodes.split():
        for c in cl.split():
            o = [med("proconsul", op, n, c, k) for k in ("ops_per_s", "p50_ms", "p99_ms")]
            e = [med("etcd", op, n, c, k) for k in ("ops_per_s", "p50_ms", "p99_ms")]
            ratio = "**%.2f**" % (o[0] / e[0]) if o[0] and e[0] else "—"
            print(f"| {n} | {c} | {fmt(o[0], 1)} | {fmt(o[1])} | {fmt(o[2])} | {fmt(e[0], 1)} | {fmt(e[1])} | {fmt(e[2])} | {ratio} |")
            for s in ("proconsul", "etcd"):
                if errors(s, op, n, c):
                    notes.append(f"{s}, {n} server(s), {c} clients: {errors(s, op, n, c)} failed requests")
                cpu = med(s, op, n, c, "client_cpu_pct")
                if cpu is not None and cpu > 50 * int(cpus):
                    notes.append(f"{s}, {n} server(s), {c} clients: the Python client itself used {cpu:.0f}% "
                                 f"CPU of {100 * int(cpus)}%, so the figure is partly the client's")
    print()
    for note in notes:
        print(f"- {note}")
    if notes:
        print()

print(f"Measured {started} on {cpus} CPUs; proconsul {commit}; {etcd_version}; medians of {runs} runs of {secs} s.")
print(f"Command: `NODES=\"{nodes}\" CLIENTS=\"{clients}\" RUNS={runs} SECONDS_PER_RUN={secs} "
      f"PREFIX_KEYS={prefix_keys} PREFIX_CLIENTS=\"{prefix_clients}\" WATCHERS={watchers} "
      f"WATCH_WRITES={writes} bench/kv.sh --write`.")
print()
print("**Puts**: `PUT /v1/kv/KEY` against etcd's `POST /v3/kv/put`, 256-byte values, closed-loop "
      "clients of `kv_load.py` against the leader; both fsync before acknowledging.")
print()
table("put", "puts", clients)
print("**Gets**: `GET /v1/kv/KEY` in Consul's default consistency mode against etcd's default "
      "`POST /v3/kv/range`, which is linearizable. Consul's default: the leader answers from "
      "its own state once it knows itself leader, without a round trip to the followers "
      "(a deposed leader could answer stale data for a moment; a follower forwards the read "
      "to the leader); `?consistent` would confirm leadership with a quorum first, and "
      "`?stale` lets any server answer from its copy. etcd's linearizable read: the leader "
      "confirms its leadership with a heartbeat round to a quorum (ReadIndex) and answers "
      "once applied up to that index; `serializable` reads the local copy like `?stale`.")
print()
table("get", "gets", clients)
print(f"**Prefix reads** of {prefix_keys} keys (256-byte values): `GET /v1/kv/range/?recurse` "
      "(default consistency) against etcd's `POST /v3/kv/range` with `range_end` "
      "(linearizable), both as JSON, closed-loop clients of `kv-bench range`. etcd's figures "
      "include its gateway's conversion of the gRPC answer to JSON, which etcd's gRPC "
      "clients do not pay.")
print()
table("range", "reads", prefix_clients)

print(f"**Watchers**: {watchers} held at once on one server (proconsul, `limits` raised to "
      "admit them) or one member (etcd); "
      "proconsul: a blocking `GET /v1/kv/KEY?index=&wait=10m` per watcher on its own "
      "connection, sent again as soon as it is answered; etcd: a `POST /v3/watch` stream of "
      "its JSON gateway per watch, on its own connection. Memory: growth of the server's RSS "
      "from before the watchers to when all are held, per watcher. Then "
      f"{writes} writes, one at a time: the time from sending a write until every watcher "
      "of that key (one) or of that prefix (all) has read it, until the first has, and the "
      "write's own acknowledgement; the server's CPU time per write; answers from watchers "
      "the write did not concern.")
print()
print("| watchers | system | held | memory per watcher | write → all have it, p50 ms | p99 ms | write → first has it, p50 ms | write acknowledged, p50 ms | server CPU per write | other answers |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for mode, label in (("key", "one key each"), ("prefix", "all on one prefix")):
    for s in ("proconsul", "etcd"):
        got = rows.get((s, "watch-" + mode, "1", watchers), [])
        if not got:
            print(f"| {label} | {s} | — | — | — | — | — | — | — | — |")
            continue
        w = got[0]
        mem = "%.1f KiB" % (w["bytes_per_watcher"] / 1024)
        print(f"| {label} | {s} | {w['watchers']} | {mem} | {fmt(w['all_p50_ms'])} | {fmt(w['all_p99_ms'])} | "
              f"{fmt(w['first_p50_ms'])} | {fmt(w['ack_p50_ms'])} | {w['cpu_ms_per_write']:.1f} ms | {w['unexpected']} |")
        if w.get("timeouts"):
            notes.append(f"{s}, {label}: {w['timeouts']} of {w['writes']} writes were not seen by every watcher within 30 s")
        if w.get("lost"):
            notes.append(f"{s}, {label}: {w['lost']} watchers failed")
print()
if int(writes) <= 50:
    print(f"With {writes} writes, p99 is the slowest of them. ", end="")
print("etcd's gateway holds each stream with goroutines and an internal gRPC stream of its "
      "own; etcd's Go client would multiplex all its watches over one gRPC stream, which "
      "costs etcd less per watch than the gateway streams measured here.")
for note in notes:
    print()
    print(f"- {note}")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$BENCHMARKS_MD" kv "$report"
  echo "$BENCHMARKS_MD updated" >&2
fi
