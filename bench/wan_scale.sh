#!/usr/bin/env bash
# WAN pool at scale: tens of datacenters federated on one machine, each server its own
# `proconsul agent` process with WAN TLS, against serf's WAN profile with as many members.
#
#   bench/wan_scale.sh              # measure, print a markdown report
#   bench/wan_scale.sh --write      # ... and put it into BENCHMARKS.md (section `wan-scale`)
#   LAYOUTS=10x1,50x1 IDLE=10 SETTLE=25 ROUNDS=5 bench/wan_scale.sh
#
# For each layout DATACENTERSxSERVERS the driver (bench/wan_scale.py) starts every server
# isolated, joins them all to dc1's first server over the WAN at once (a star join) and
# times until every server lists every server alive (`/v1/agent/members?wan=1`) and every
# datacenter (`/v1/catalog/datacenters`); then it counts the WAN traffic of the join
# until SETTLE s after that, reads each server's RSS, counts the WAN traffic over an idle
# window of IDLE s and asks dc1's first server for `web.service.dcN.consul
# SRV` of every datacenter ROUNDS times. serf_gossip.py runs serf with `-profile=wan`
# (memberlist's DefaultWANConfig, the timers of proconsul's WAN pool) at the same
# numbers of members with the same star join, and counts its idle traffic the same way.
#
# Each side runs in its own private network namespace (unshare -n) so that its traffic
# is the only traffic counted: proconsul's servers have 127.1.<dc>.<n> addresses with the
# standard ports, and an iptables rule counts the UDP datagrams to port 8302 (QUIC: all of
# the WAN's traffic, and nothing else); serf's figure is the namespace's IP octets in
# (its gossip over UDP and push-pull over TCP; no RPC polling meanwhile). Both count whole
# IP packets. Every process started is stopped by PID at exit, also on Ctrl-C.
# Needs root (unshare, iptables), cargo, python3, serf (apt-get install serf iptables).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LAYOUTS=${LAYOUTS:-10x1,25x1,50x1,10x3}
IDLE=${IDLE:-30}
SETTLE=${SETTLE:-25}
ROUNDS=${ROUNDS:-10}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1
# shellcheck source=bench/lib/serf_bench.sh
. "$ROOT/bench/lib/serf_bench.sh"
command -v iptables >/dev/null || { echo "iptables is needed" >&2; exit 1; }
command -v unshare >/dev/null || { echo "unshare is needed" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (a private network namespace)" >&2; exit 1; }
cargo build --release -q --bin proconsul
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/proconsul"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"

OUT=$(mktemp -d)
CHILD=""
# The driver stops its servers itself; one stopped by a signal may not get to, so it
# lists their PIDs for us. serf_gossip.py stops its agents in a `finally`.
cleanup() {
  local p
  if [ -n "$CHILD" ]; then
    kill "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  if [ -f "$OUT/pids" ]; then
    for p in $(cat "$OUT/pids"); do kill -9 "$p" 2>/dev/null || true; done
  fi
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# in_netns COMMAND…: COMMAND in a new network namespace with its loopback up and the
# WAN port's counting rule, in the background (CHILD) and waited for; its status is
# returned. The namespace goes away with its last process.
in_netns() {
  local rc=0
  unshare -n bash -c 'ip link set lo up && iptables -A INPUT -p udp --dport 8302 && exec "$@"' \
    in_netns "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

started=$(date -u +"%Y-%m-%d %H:%M UTC")
load=$(cut -d' ' -f1-3 /proc/loadavg)
# serf at the same numbers of members as the layouts.
SERF_SIZES=$(python3 -c 'import sys; print(",".join(str(int(a) * int(b)) for a, b in (l.split("x") for l in sys.argv[1].split(","))))' "$LAYOUTS")

echo "== proconsul: $LAYOUTS" >&2
in_netns timeout 900 python3 "$ROOT/bench/wan_scale.py" --bin "$BIN" --layouts "$LAYOUTS" \
  --idle "$IDLE" --settle "$SETTLE" --rounds "$ROUNDS" --pid-file "$OUT/pids" > "$OUT/proconsul.log" \
  || echo "the proconsul driver failed for some layouts; they are left out" >&2
echo "== serf -profile=wan: $SERF_SIZES" >&2
in_netns timeout 900 python3 "$SERF_BENCH" --sizes "$SERF_SIZES" --profile wan --repeats 1 \
  --joins 0 --kills 0 --idle "$IDLE" --timeout 120 > "$OUT/serf.log" \
  || echo "the serf driver failed; serf is left out" >&2
grep -v '^JSON' "$OUT/serf.log" >&2 || true

report=$(python3 - "$OUT" "$started" "$(nproc)" "$COMMIT" "$SERF_VERSION" "$load" "$LAYOUTS" "$IDLE" "$ROUNDS" "$SETTLE" <<'PY'
import json, os, sys
out, started, cpus, commit, serf_version, load, layouts, idle, rounds, settle = sys.argv[1:11]
def load_json(name):
    p = os.path.join(out, name)
    return [json.loads(l[5:]) for l in open(p) if l.startswith("JSON ")] if os.path.exists(p) else []
ours = {(r["dcs"], r["per_dc"]): r for r in load_json("proconsul.log")}
serf = {r["n"]: r for r in load_json("serf.log")}
def s(x):
    return "—" if x is None else f"{x:.2f} s"
def ms(x):
    return "—" if x is None else f"{x:.1f} ms"
def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"
print(f"Measured {started} on {cpus} CPUs (load average at the start {load}); proconsul {commit}, "
      f"serf {serf_version}. Command: `LAYOUTS={layouts} IDLE={idle} SETTLE={settle} ROUNDS={rounds} "
      f"bench/wan_scale.sh --write`.")
print()
print("Each server is its own process; convergence is from the star join until every server "
      "lists every server alive (and, for proconsul, every datacenter in "
      "`/v1/catalog/datacenters`); idle traffic is IP bytes in per second per server over "
      f"{idle} s (proconsul: UDP to the WAN port, from {settle} s after convergence, once the "
      "new members' announcements are no longer retransmitted; serf: its namespace's IP octets "
      "in, from 1 s after convergence); the join's traffic is proconsul's WAN bytes in per "
      f"server from the joins until {settle} s after convergence.")
print()
print("| datacenters × servers | members | agent | converge: all | median | joins issued | join's traffic per server | idle WAN bytes/s per server | datagrams/s per server | RSS per server (median / max) |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for layout in layouts.split(","):
    d, p = (int(x) for x in layout.split("x"))
    n = d * p
    r = ours.get((d, p))
    if r:
        c, i, m = r["converge"], r["idle_per_server"], r["rss_kib"]
        print(f"| {d} × {p} | {n} | proconsul | **{s(c['all_s'])}** | {s(c['median_s'])} | "
              f"{s(c['joins_issued_s'])} | {r['burst_kib_per_server']:.0f} KiB | **{i['wan_bytes_per_s']}** | {i['wan_datagrams_per_s']} | "
              f"{mib(m['median'])} / {mib(m['max'])} |")
    else:
        print(f"| {d} × {p} | {n} | proconsul | failed | | | | | | |")
    f = serf.get(n)
    if f and "converge" in f:
        c, i, m = f["converge"], f["idle_per_agent"], f["rss_kb"]
        if c.get("ok"):
            conv = f"{s(c['all_s'])} | {s(c['median_s'])}"
        else:
            conv = f"not all in 120 s ({c['done']} of {c['of']} agents) | —"
        print(f"| {n} members | {n} | serf -profile=wan | {conv} | "
              f"{s(c['joins_issued_s'])} | — | {i['ip_bytes_per_s']} | {i['udp_dgrams_per_s']} | "
              f"{mib(m['median'])} / {mib(m['max'])} |")
    else:
        print(f"| {n} members | {n} | serf -profile=wan | no data | | | | | | |")
print()
print(f"**Cross-datacenter DNS**: `web.service.dcN.consul SRV` asked of dc1's first server for "
      f"every datacenter N (dc1 included), {rounds} rounds, one query at a time; a failure is an "
      f"error code, an empty answer or no answer within 3.5 s (the agent's own deadline for a "
      f"remote datacenter is 3 s)")
print()
print("| datacenters × servers | queries | p50 | p99 | max | first round: p50 / max | failures |")
print("|---|---:|---:|---:|---:|---:|---:|")
for layout in layouts.split(","):
    d, p = (int(x) for x in layout.split("x"))
    r = ours.get((d, p))
    if not r:
        continue
    q = r["dns"]
    errs = ", ".join(f"{v} {k}" for k, v in sorted(q["errors"].items())) or "0"
    print(f"| {d} × {p} | {q['queries']} | {ms(q['ms']['p50'])} | {ms(q['ms']['p99'])} | "
          f"{ms(q['ms']['max'])} | {ms(q['first_round_ms']['p50'])} / {ms(q['first_round_ms']['max'])} | {errs} |")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$BENCHMARKS_MD" wan-scale "$report"
  echo "$BENCHMARKS_MD updated" >&2
fi
