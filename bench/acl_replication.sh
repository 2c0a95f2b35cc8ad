#!/usr/bin/env bash
# ACL replication: how long after a token's creation in the primary datacenter it works
# in a secondary one, with the WAN between them one injected round trip long.
#
#   bench/acl_replication.sh              # measure, print a markdown report
#   bench/acl_replication.sh --write      # ... and put it into BENCHMARKS.md (section `acl-replication`)
#   SAMPLES=100 DELAY_MS=10 bench/acl_replication.sh
#   BENCHMARKS_MD=/tmp/copy.md bench/acl_replication.sh --write
#
# The release binary runs as two processes on 127.0.0.1: s1, the only server of dc1 (the
# primary), and s2, the only server of dc2, which replicates dc1's ACLs. Each server's
# WAN port (QUIC) is reached only through a userspace proxy that holds every datagram
# DELAY_MS in each direction (round trip 2 x DELAY_MS); the proxies and the clients live
# in the driver, target/release/acl-replication-bench (bench/src/bin/acl_replication.rs).
# Two runs on fresh servers: with acl.enable_token_replication on, then off (dc2 then
# asks dc1 about each token). In each, SAMPLES tokens are created in dc1 one after the
# other, and for each the driver times, from dc1's acknowledgement, when dc2 first
# answers a read made with it, and (replication on) when dc2's tables hold it. Data dirs
# are temporary; the servers are stopped by the driver (and killed if it dies).
# Needs: cargo, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SAMPLES=${SAMPLES:-100}
DELAY_MS=${DELAY_MS:-10}
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1
DRIVER_NAME=acl-replication-bench
# shellcheck source=bench/lib/federated_driver.sh
. "$ROOT/bench/lib/federated_driver.sh"

started=$(date -u +"%Y-%m-%d %H:%M UTC")
for replication in true false; do
  echo "== ACL replication, $SAMPLES tokens, token replication $replication, WAN ${DELAY_MS} ms each way" >&2
  run_driver $((SAMPLES * 2 + 400)) "$OUT/run-$replication.log" "with token replication $replication" \
    --tokens "$SAMPLES" --delay-ms "$DELAY_MS" --token-replication "$replication"
done

report=$(python3 - "$OUT" "$started" "$(nproc)" "$COMMIT" "$SAMPLES" "$DELAY_MS" <<'PY'
import json, os, sys
out, started, cpus, commit, tokens, delay = sys.argv[1:7]
runs = []
for mode in ["true", "false"]:
    p = os.path.join(out, f"run-{mode}.log")
    if os.path.exists(p):
        runs += [json.loads(l[5:]) for l in open(p) if l.startswith("JSON ")]
def ms(v):
    return "—" if v is None else f"{v:.1f} ms"
rtt = 2 * float(delay)
print(f"Measured {started} on {cpus} CPUs; proconsul {commit}. "
      f"Command: `SAMPLES={tokens} DELAY_MS={delay} bench/acl_replication.sh --write`.")
print()
print(f"Two single-server datacenters, both the release binary, `default_policy = \"deny\"`; "
      f"dc1 is the primary; every WAN datagram held {float(delay):.0f} ms each way (round trip "
      f"{rtt:.0f} ms). {tokens} tokens created in dc1 one after the other; times from dc1's "
      f"acknowledgement of each.")
print()
print("| token replication | until a read in dc2 with it is answered: p50 | p90 | p99 | max | until dc2's tables hold it: p50 | p90 | p99 | max |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    w, c = r["works_ms"], r["replicated_ms"]
    on = "on" if r["token_replication"] else "off (dc2 asks dc1)"
    print(f"| {on} | **{ms(w['p50'])}** | {ms(w['p90'])} | {ms(w['p99'])} | {ms(w['max'])} | "
          f"{ms(c['p50'])} | {ms(c['p90'])} | {ms(c['p99'])} | {ms(c['max'])} |")
print()
for r in runs:
    links = r.get("links") or []
    relayed = sum(l["relayed"] for l in links)
    dropped = sum(l["dropped"] for l in links)
    late = max((l["late_max_ms"] for l in links), default=0.0)
    print(f"- token replication {'on' if r['token_replication'] else 'off'}: proxies relayed "
          f"{relayed} datagrams, dropped {dropped}, at most {late:.1f} ms late")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$BENCHMARKS_MD" acl-replication "$report"
  echo "$BENCHMARKS_MD updated" >&2
fi
