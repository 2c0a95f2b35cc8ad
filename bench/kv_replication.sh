#!/usr/bin/env bash
# KV replication lag: how long after dc1 acknowledges a write dc2's copy serves it, with
# the WAN between them one injected round trip long, under a steady write rate.
#
#   bench/kv_replication.sh              # measure, print a markdown report
#   bench/kv_replication.sh --write      # ... and put it into BENCHMARKS.md (section `kv-replication`)
#   RATE=1000 SECONDS_PER_RUN=20 KEYS="100 1000 10000" DELAY_MS=10 bench/kv_replication.sh
#   BENCHMARKS_MD=/tmp/copy.md bench/kv_replication.sh --write
#
# The release binary runs as two processes on 127.0.0.1: s1, the only server of dc1,
# and s2, the only server of dc2, configured with `kv_replication` to copy dc1's `repl/`.
# Each server's WAN port (QUIC) is reached only through a userspace proxy that holds
# every datagram DELAY_MS in each direction (round trip 2 x DELAY_MS); the proxies and
# the clients live in the driver, target/release/kv-replication-bench (bench/src/bin/
# kv_replication.rs). For each number of keys in KEYS (fresh servers each time), the
# driver writes that many keys once, waits for the copy, then sends RATE writes a second
# for SECONDS_PER_RUN s to s1 (open loop, keys in turn) while a blocking read of
# `repl/?recurse` on s2 notes when each write shows up there. Data dirs are temporary;
# the servers are stopped by the driver (and killed if it dies).
# Needs: cargo, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATE=${RATE:-1000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
KEYS=${KEYS:-"100 1000 10000"}
VALUE_SIZE=${VALUE_SIZE:-64}
DELAY_MS=${DELAY_MS:-10}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1
DRIVER_NAME=kv-replication-bench
# shellcheck source=bench/lib/federated_driver.sh
. "$ROOT/bench/lib/federated_driver.sh"

started=$(date -u +"%Y-%m-%d %H:%M UTC")
for keys in $KEYS; do
  echo "== KV replication, $RATE writes/s for $SECONDS_PER_RUN s over $keys keys, WAN ${DELAY_MS} ms each way" >&2
  # The driver stops its servers itself; the timeout bounds a driver that hangs.
  run_driver $((SECONDS_PER_RUN + 400)) "$OUT/run-$keys.log" "for $keys keys" \
    --rate "$RATE" --seconds "$SECONDS_PER_RUN" --keys "$keys" --value-size "$VALUE_SIZE" \
    --delay-ms "$DELAY_MS"
done

report=$(python3 - "$OUT" "$started" "$(nproc)" "$COMMIT" "$RATE" "$SECONDS_PER_RUN" "$KEYS" "$VALUE_SIZE" "$DELAY_MS" <<'PY'
import json, os, sys
out, started, cpus, commit, rate, secs, keys, size, delay = sys.argv[1:10]
runs = []
for k in keys.split():
    p = os.path.join(out, f"run-{k}.log")
    if os.path.exists(p):
        runs += [json.loads(l[5:]) for l in open(p) if l.startswith("JSON ")]
def ms(v):
    return "—" if v is None else f"{v:.1f} ms"
rtt = 2 * float(delay)
target = rtt + 50
print(f"Measured {started} on {cpus} CPUs; proconsul {commit}. "
      f"Command: `RATE={rate} SECONDS_PER_RUN={secs} KEYS=\"{keys}\" VALUE_SIZE={size} "
      f"DELAY_MS={delay} bench/kv_replication.sh --write`.")
print()
print(f"Two single-server datacenters, both the release binary; dc2 copies dc1's `repl/` "
      f"({size}-byte values) with `kv_replication`; every WAN datagram held "
      f"{float(delay):.0f} ms each way (round trip {rtt:.0f} ms). {rate} writes/s for {secs} s to dc1, "
      f"open loop, the keys in turn; lag = from dc1's acknowledgement of a write until a "
      f"blocking read on dc2 returns it (or a later value of the same key). Target: median "
      f"lag under one round trip plus 50 ms ({target:.0f} ms).")
print()
print("| keys under the prefix | writes acknowledged | errors | rate achieved | dc1 ack p50 | p99 | lag p50 | lag p90 | lag p99 | lag max | never seen | dc2 reads answered | target |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in runs:
    lag, ack = r["lag_ms"], r["ack_ms"]
    verdict = "met" if lag["p50"] is not None and lag["p50"] < target else "missed"
    print(f"| {r['keys']} | {r['acked']} of {r['planned']} | {r['errors']} | {r['achieved_per_s']:.0f}/s | "
          f"{ms(ack['p50'])} | {ms(ack['p99'])} | **{ms(lag['p50'])}** | {ms(lag['p90'])} | "
          f"{ms(lag['p99'])} | {ms(lag['max'])} | {r['unseen']} | {r['follower_reads']} | {verdict} |")
print()
print("`/v1/operator/kv-replication` on dc2 after each run, and the WAN proxies:")
print()
for r in runs:
    st = r.get("status") or {}
    p = (st.get("Prefixes") or [{}])[0]
    links = r.get("links") or []
    relayed = sum(l["relayed"] for l in links)
    dropped = sum(l["dropped"] for l in links)
    late = max((l["late_max_ms"] for l in links), default=0.0)
    print(f"- {r['keys']} keys: SourceDatacenter `{st.get('SourceDatacenter')}`, Prefix `{p.get('Prefix')}`, "
          f"Running {str(p.get('Running')).lower()}, ReplicatedIndex {p.get('ReplicatedIndex')} "
          f"(dc1's index {r['source_index']}), Keys {p.get('Keys')}, Writes {p.get('Writes')}, "
          f"FullRounds {p.get('FullRounds', '—')}, IncrementalRounds {p.get('IncrementalRounds', '—')}, "
          f"LastError {p.get('LastError') or 'none'}; proxies: {relayed} datagrams relayed, "
          f"{dropped} dropped, at most {late:.1f} ms late")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$BENCHMARKS_MD" kv-replication "$report"
  echo "$BENCHMARKS_MD updated" >&2
fi
