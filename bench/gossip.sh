#!/usr/bin/env bash
# LAN gossip benchmark: proconsul's gossip (engine + UDP/TCP transport) against
# HashiCorp's serf, same cluster sizes, same timing profile (memberlist's LAN defaults),
# same machine, same run, with 0% and 10% packet loss.
#
#   bench/gossip.sh              # measure, print a markdown report
#   bench/gossip.sh --write      # ... and put it into BENCHMARKS.md
#   SIZES=8,32 REPEATS=3 LOSSES="0 0.10" bench/gossip.sh
#   LARGE=1 bench/gossip.sh --write   # large pools: up to 1,000 members (section gossip-large)
#
# LARGE=1 measures cost against size instead: proconsul at SIZES (default
# 128,256,512,1000; all members in one process) and serf at SERF_SIZES (default 128,256;
# one process per agent, so the sizes this machine can run are smaller), one run each
# without loss, one join/leave and KILLS failures per size. It also reports the bench
# process's CPU use (cores) and the suspicions its members started, so that a process
# that cannot keep up is told apart from the protocol. A serf size that gives no data or
# runs past SERF_TIMEOUT seconds stops the serf series there (said in the report). Each
# observation waits at most PHASE_TIMEOUT seconds (default 120: a star join of 1,000
# members takes about a minute). The whole run is bounded (each driver by a timeout) and
# takes about 15 minutes.
#
# What is measured (per N, per repetition; medians over repetitions are reported):
#   converge  star join from N isolated members until every member lists all N alive
#   join      one extra member's join until every member lists it alive
#   leave     its graceful leave until every other member lists it left
#   fail      a member's death (kill -9 for serf; its sockets closed for proconsul) until
#             every survivor lists it failed
#   false     members ever listed failed without having been stopped
#   idle      loopback traffic per member while idle (UDP datagrams/s, IP bytes/s)
#   rss       memory per member (serf: each agent process; proconsul: the members share
#             one process, so this is the process's growth divided by N)
# serf is driven by serf_gossip.py from the team's reference benchmarks (SERF_BENCH,
# default ../shared/bench/serf_gossip.py next to the checkout); proconsul by
# target/release/gossip-bench, which measures the same things the same way.
#
# Loss: with LOSS > 0 both run inside a private network namespace (unshare -n) whose
# loopback drops that fraction of UDP datagrams at random (iptables statistic match),
# so both see exactly the same loss; TCP (serf's RPC, push-pull streams) is not touched.
# This needs root and iptables. Everything started is stopped by the two drivers; the
# namespace disappears with its last process.
#
# Needs: cargo, python3, serf, iptables (Debian: apt-get install serf iptables).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LARGE=${LARGE:-0}
if [ "$LARGE" = 1 ]; then
  SIZES=${SIZES:-128,256,512,1000}
  SERF_SIZES=${SERF_SIZES:-128,256}
  KILLS=${KILLS:-2}
  SERF_TIMEOUT=${SERF_TIMEOUT:-300}
  PROCONSUL_TIMEOUT=${PROCONSUL_TIMEOUT:-900}
  PHASE_TIMEOUT=${PHASE_TIMEOUT:-120}
fi
SIZES=${SIZES:-8,32,64}
REPEATS=${REPEATS:-2}
LOSSES=${LOSSES:-"0 0.10"}
IDLE=${IDLE:-5}
SERF_BENCH=${SERF_BENCH:-$ROOT/../shared/bench/serf_gossip.py}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

command -v serf >/dev/null || { echo "serf is needed: apt-get install serf" >&2; exit 1; }
[ -f "$SERF_BENCH" ] || { echo "serf_gossip.py not found at $SERF_BENCH (set SERF_BENCH)" >&2; exit 1; }
cargo build --release -q -p proconsul-bench
BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/gossip-bench"

OUT=$(mktemp -d)
# A driver runs in a process group of its own (setsid); on exit, error or interrupt the
# group is killed, serf agents included, whatever state the driver was left in.
DRIVER_PGID=""
cleanup() {
  if [ -n "$DRIVER_PGID" ]; then
    kill -KILL -- "-$DRIVER_PGID" 2>/dev/null || true
  fi
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs "$@" in its own process group for at most $1 seconds (SIGINT first, so the serf
# driver stops its agents itself; SIGKILL to the group 30 s later). Output to stdout.
bounded() {
  local limit=$1
  shift
  setsid "$@" &
  DRIVER_PGID=$!
  (
    sleep "$limit"
    kill -INT -- "-$DRIVER_PGID" 2>/dev/null || exit 0
    sleep 30
    kill -KILL -- "-$DRIVER_PGID" 2>/dev/null
  ) &
  local watchdog=$!
  local rc=0
  wait "$DRIVER_PGID" || rc=$?
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  kill -KILL -- "-$DRIVER_PGID" 2>/dev/null || true
  DRIVER_PGID=""
  return "$rc"
}

if [ "$LARGE" = 1 ]; then
  started=$(date -u +"%Y-%m-%d %H:%M UTC")
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  serf_note=""
  : >"$OUT/serf-large.log"
  for n in ${SERF_SIZES//,/ }; do
    echo "== serf N=$n" >&2
    t0=$(date +%s)
    rc=0
    bounded "$SERF_TIMEOUT" python3 "$SERF_BENCH" --sizes "$n" --repeats 1 --joins 1 \
      --kills "$KILLS" --idle "$IDLE" --timeout "$PHASE_TIMEOUT" >"$OUT/serf-$n.log" || rc=$?
    grep -v '^JSON' "$OUT/serf-$n.log" >&2 || true
    cat "$OUT/serf-$n.log" >>"$OUT/serf-large.log"
    took=$(($(date +%s) - t0))
    if ! grep -q '^JSON' "$OUT/serf-$n.log"; then
      serf_note="serf at N = $n gave no data (driver exit $rc after ${took} s, limit ${SERF_TIMEOUT} s); larger sizes not tried."
      break
    fi
  done
  echo "== proconsul N=$SIZES" >&2
  bounded "$PROCONSUL_TIMEOUT" "$BENCH" --sizes "$SIZES" --repeats 1 --joins 1 --kills "$KILLS" \
    --idle "$IDLE" --timeout "$PHASE_TIMEOUT" >"$OUT/proconsul-large.log" || true
  grep -v '^JSON' "$OUT/proconsul-large.log" >&2 || true
  report=$(python3 - "$OUT" "$SIZES" "$SERF_SIZES" "$KILLS" "$IDLE" "$started" "$load" "$(nproc)" \
    "$(serf version | head -1)" "$serf_note" <<'PY'
import json, statistics, sys, os
out, sizes, serf_sizes, kills, idle, started, load, cpus, serf_version, serf_note = sys.argv[1:11]
def load_runs(path):
    if not os.path.exists(path):
        return {}
    return {r["n"]: r for r in (json.loads(l[5:]) for l in open(path) if l.startswith("JSON "))}
runs = {"serf": load_runs(os.path.join(out, "serf-large.log")),
        "proconsul": load_runs(os.path.join(out, "proconsul-large.log"))}
def t(v, field="all_s"):
    items = v if isinstance(v, list) else [v]
    ok = [x.get(field) for x in items if isinstance(x, dict) and x.get("ok")]
    bad = sum(1 for x in items if isinstance(x, dict) and not x.get("ok"))
    if not ok:
        return "—" if not bad else "not reached"
    text = f"{statistics.median(ok):.2f} s"
    return text + (f" ({bad} not reached)" if bad else "")
def fail(v):
    items = v if isinstance(v, list) else []
    ok = [x for x in items if x.get("ok")]
    if not ok:
        return "not reached" if items else "—"
    return f"{statistics.median(x['median_s'] for x in ok):.1f} / {statistics.median(x['all_s'] for x in ok):.1f} s"
def cpu(r, phase):
    c = r.get(f"cpu_{phase}")
    return "—" if not c else f"{c['cores']:.2f}"
def susp(r):
    parts = [r.get(f"cpu_{p}", {}).get("suspicions") for p in ("converge", "idle", "fail")]
    return "—" if parts[0] is None else " / ".join(str(x) for x in parts)
print(f"Measured {started} on {cpus} CPUs, load average at start {load}; serf {serf_version}; one run per size.")
print(f"Command: `LARGE=1 SIZES={sizes} SERF_SIZES={serf_sizes} KILLS={kills} IDLE={idle} bench/gossip.sh --write`.")
if serf_note:
    print()
    print(serf_note)
print()
print("| N | agent | converge (all) | join (all) | leave (all) | fail (median / all) | false failures | suspicions (converge / idle / fail) | CPU cores (converge / idle / fail) | idle bytes/s per member | memory per member |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
all_sizes = sorted({int(x) for x in (sizes + "," + serf_sizes).split(",") if x})
for n in all_sizes:
    for impl in ("serf", "proconsul"):
        r = runs[impl].get(n)
        if r is None:
            if str(n) in (serf_sizes if impl == "serf" else sizes).split(","):
                print(f"| {n} | {impl} | no data | | | | | | | | |")
            continue
        if impl == "serf":
            rss = r.get("rss_kb", {}).get("median")
            cores = "—"
        else:
            rss = r.get("rss_kb_per_member")
            cores = " / ".join(cpu(r, p) for p in ("converge", "idle", "fail"))
        rss_text = "—" if rss is None else f"{rss / 1024:.1f} MiB" if rss >= 1024 else f"{rss:.0f} KiB"
        idle_b = r.get("idle_per_agent", {}).get("ip_bytes_per_s")
        print(f"| {n} | {impl} | {t(r.get('converge'))} | {t(r.get('join'))} | {t(r.get('leave'))} | "
              f"{fail(r.get('fail'))} | {len(r.get('false_positives', []))} | {susp(r) if impl == 'proconsul' else '—'} | "
              f"{cores} | {'—' if idle_b is None else f'{idle_b:.0f}'} | {rss_text} |")
PY
  )
  echo "$report"
  if [ "$WRITE" = 1 ]; then
    python3 "$ROOT/bench/put_section.py" "$ROOT/BENCHMARKS.md" gossip-large "$report"
    echo "BENCHMARKS.md updated" >&2
  fi
  exit 0
fi

# Runs "$@" with LOSS applied to UDP on loopback (in a private namespace when > 0).
with_loss() {
  local loss=$1
  shift
  if [ "$loss" = "0" ]; then
    "$@"
  else
    [ "$(id -u)" -eq 0 ] || { echo "loss needs root (a network namespace)" >&2; exit 1; }
    command -v iptables >/dev/null || { echo "loss needs iptables" >&2; exit 1; }
    unshare -n bash -c '
      set -e
      ip link set lo up
      iptables -A INPUT -i lo -p udp -m statistic --mode random --probability "$0" -j DROP
      exec "$@"
    ' "$loss" "$@"
  fi
}

started=$(date -u +"%Y-%m-%d %H:%M UTC")
for loss in $LOSSES; do
  echo "== loss $loss: serf" >&2
  with_loss "$loss" python3 "$SERF_BENCH" --sizes "$SIZES" --repeats "$REPEATS" --idle "$IDLE" \
    | tee "$OUT/serf-$loss.log" | grep -v '^JSON' >&2 || true
  echo "== loss $loss: proconsul" >&2
  with_loss "$loss" "$BENCH" --sizes "$SIZES" --repeats "$REPEATS" --idle "$IDLE" \
    | tee "$OUT/proconsul-$loss.log" | grep -v '^JSON' >&2 || true
done

report=$(python3 - "$OUT" "$SIZES" "$REPEATS" "$LOSSES" "$started" "$(nproc)" "$(serf version | head -1)" <<'PY'
import json, statistics, sys, os
out, sizes, repeats, losses, started, cpus, serf_version = sys.argv[1:8]
sizes = [int(s) for s in sizes.split(",")]
def load(path):
    runs = []
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("JSON "):
                runs.append(json.loads(line[5:]))
    return runs
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def stat(runs, key, field="all_s"):
    vals = []
    for r in runs:
        v = r.get(key)
        if isinstance(v, list):
            vals.extend(x.get(field) for x in v if x.get("ok"))
        elif isinstance(v, dict) and v.get("ok"):
            vals.append(v.get(field))
    return med(vals)
def fmt(x, unit="s"):
    return "—" if x is None else (f"{x:.2f} {unit}" if unit == "s" else f"{x:.0f}")
print(f"Measured {started} on {cpus} CPUs; serf {serf_version}; medians of {repeats} runs per size.")
print(f"Command: `SIZES={','.join(map(str, sizes))} REPEATS={repeats} LOSSES=\"{losses}\" bench/gossip.sh --write`.")
print()
for loss in losses.split():
    pct = f"{float(loss) * 100:.0f}%"
    print(f"**{pct} UDP loss**")
    print()
    print("| N | agent | converge (all) | join (all) | leave (all) | fail (median / all) | unconverged | false failures | idle UDP/s per member | idle bytes/s per member | memory per member |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for impl in ("serf", "proconsul"):
            runs = [r for r in load(os.path.join(out, f"{impl}-{loss}.log")) if r.get("n") == n]
            if not runs:
                print(f"| {n} | {impl} | no data | | | | | | | | |")
                continue
            bad = 0
            for r in runs:
                for k in ("converge", "join", "leave", "fail"):
                    v = r.get(k)
                    items = v if isinstance(v, list) else [v]
                    bad += sum(1 for x in items if isinstance(x, dict) and not x.get("ok"))
            false = sum(len(r.get("false_positives", [])) for r in runs)
            idle_u = med([r.get("idle_per_agent", {}).get("udp_dgrams_per_s") for r in runs])
            idle_b = med([r.get("idle_per_agent", {}).get("ip_bytes_per_s") for r in runs])
            if impl == "serf":
                rss = med([r.get("rss_kb", {}).get("median") for r in runs])
            else:
                rss = med([r.get("rss_kb_per_member") for r in runs])
            rss_text = "—" if rss is None else f"{rss / 1024:.1f} MiB" if rss >= 1024 else f"{rss:.0f} KiB"
            print(f"| {n} | {impl} | {fmt(stat(runs, 'converge'))} | {fmt(stat(runs, 'join'))} | "
                  f"{fmt(stat(runs, 'leave'))} | {fmt(stat(runs, 'fail', 'median_s'))} / {fmt(stat(runs, 'fail'))} | "
                  f"{bad} | {false} | {fmt(idle_u, 'n')} | {fmt(idle_b, 'n')} | {rss_text} |")
    print()
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$ROOT/BENCHMARKS.md" gossip "$report"
  echo "BENCHMARKS.md updated" >&2
fi
