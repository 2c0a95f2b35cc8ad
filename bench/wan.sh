#!/usr/bin/env bash
# WAN benchmark: what a request over the WAN's QUIC connection (mutual TLS, one stream
# per request) costs above a plain UDP round trip on loopback, and how the WAN pool of
# N single-server datacenters converges and detects a dead server, against serf run with
# its WAN timing profile (memberlist's DefaultWANConfig, the timers proconsul's WAN pool
# uses too) in the same run.
#
#   bench/wan.sh              # measure, print a markdown report
#   bench/wan.sh --write      # ... and put it into BENCHMARKS.md
#   SIZES=3,5,10 COUNT=2000 bench/wan.sh
#
# Both members of the round-trip test live in one process (target/release/wan-bench);
# the pool test runs every proconsul datacenter in one process and every serf agent as
# its own process (serf_gossip.py from the team's reference benchmarks, SERF_BENCH).
# A proconsul server is "killed" by stopping its endpoint without a leave; serf by
# kill -9. Needs: cargo, python3, serf (apt-get install serf).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SIZES=${SIZES:-3,5,10}
COUNT=${COUNT:-2000}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1
# shellcheck source=bench/lib/serf_bench.sh
. "$ROOT/bench/lib/serf_bench.sh"
cargo build --release -q -p proconsul-bench --bin wan-bench
BENCH="$ROOT/target/release/wan-bench"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
started=$(date -u +"%Y-%m-%d %H:%M UTC")
echo "== round trip" >&2
"$BENCH" rtt --count "$COUNT" | tee "$OUT/rtt.log" | grep -v '^JSON' >&2
echo "== WAN pool: proconsul" >&2
"$BENCH" pool --sizes "$SIZES" --profile wan | tee "$OUT/pool.log" | grep -v '^JSON' >&2
echo "== WAN pool: serf -profile=wan" >&2
python3 "$SERF_BENCH" --sizes "$SIZES" --profile wan --repeats 1 --joins 1 --kills 1 --idle 2 \
  | tee "$OUT/serf.log" | grep -v '^JSON' >&2 || true

report=$(python3 - "$OUT" "$SIZES" "$COUNT" "$started" "$(nproc)" "$SERF_VERSION" <<'PY'
import json, sys, os
out, sizes, count, started, cpus, serf_version = sys.argv[1:7]
sizes = [int(s) for s in sizes.split(",")]
def load(name):
    p = os.path.join(out, name)
    return [json.loads(l[5:]) for l in open(p) if l.startswith("JSON ")] if os.path.exists(p) else []
rtt = load("rtt.log")[0]
q, u = rtt["quic_us"], rtt["udp_us"]
print(f"Measured {started} on {cpus} CPUs; serf {serf_version}. Command: `SIZES={','.join(map(str, sizes))} COUNT={count} bench/wan.sh --write`.")
print()
print(f"**Request round trip on loopback** ({count} sequential requests after a warm-up, one established connection)")
print()
print("| path | p50 | p90 | p99 |")
print("|---|---:|---:|---:|")
print(f"| UDP echo (reference) | {u['p50']:.0f} µs | {u['p90']:.0f} µs | {u['p99']:.0f} µs |")
print(f"| proconsul WAN request (QUIC stream, mTLS, JSON) | {q['p50']:.0f} µs | {q['p90']:.0f} µs | {q['p99']:.0f} µs |")
print(f"| overhead | {q['p50'] - u['p50']:.0f} µs | {q['p90'] - u['p90']:.0f} µs | {q['p99'] - u['p99']:.0f} µs |")
print()
print("**WAN pool of N single-server datacenters** (WAN timers: probe 5 s, probe timeout 3 s, suspicion ×6; star join)")
print()
print("| N | agent | converge (all) | failure seen by all | false failures |")
print("|---:|---|---:|---:|---:|")
pool = {r["n"]: r for r in load("pool.log")}
serf = {r["n"]: r for r in load("serf.log")}
def fmt(x):
    return "—" if x is None else f"{x:.2f} s"
for n in sizes:
    s = serf.get(n)
    if s:
        conv = s.get("converge", {})
        fails = s.get("fail", [])
        fail = next((f.get("all_s") for f in (fails if isinstance(fails, list) else [fails]) if f.get("ok")), None)
        print(f"| {n} | serf | {fmt(conv.get('all_s') if conv.get('ok') else None)} | {fmt(fail)} | {len(s.get('false_positives', []))} |")
    else:
        print(f"| {n} | serf | no data | | |")
    p = pool.get(n)
    if p:
        print(f"| {n} | proconsul | {fmt(p['converge_s'])} | {fmt(p['fail_s'])} | {1 if p['false_failures'] else 0} |")
    else:
        print(f"| {n} | proconsul | no data | | |")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$ROOT/BENCHMARKS.md" wan "$report"
  echo "BENCHMARKS.md updated" >&2
fi
