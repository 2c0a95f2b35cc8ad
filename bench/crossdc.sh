#!/usr/bin/env bash
# Cross-datacenter DNS benchmark: what `web.service.dc2.consul` costs when dc2 is one
# WAN round trip away, next to `web.service.consul` answered by dc1 itself.
#
#   bench/crossdc.sh              # measure, print a markdown report
#   bench/crossdc.sh --write      # ... and put it into BENCHMARKS.md
#   COUNT=2000 DELAY_MS=20 CONCURRENCY=32 DURATION=5 bench/crossdc.sh
#
# One process (target/release/crossdc-bench) runs two in-process servers on 127.0.0.1,
# a0 of dc1 and b0 of dc2, federated over QUIC with mutual TLS; b0's WAN port is reached
# only through a userspace UDP proxy that holds every datagram DELAY_MS in each
# direction (one round trip = 2 x DELAY_MS). It sends COUNT sequential A queries to a0's
# DNS port for each name, BASELINE_COUNT WAN pings and UDP echoes through the same kind
# of proxy (the link alone), then CONCURRENCY clients for DURATION seconds per name.
# A query unanswered after 2 s is an error, counted in the report. Needs: cargo, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
COUNT=${COUNT:-2000}
DELAY_MS=${DELAY_MS:-20}
CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-5}
BASELINE_COUNT=${BASELINE_COUNT:-200}
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1
cargo build --release -q -p proconsul-bench --bin crossdc-bench
BENCH="$ROOT/target/release/crossdc-bench"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
started=$(date -u +"%Y-%m-%d %H:%M UTC")
ARGS=(--count "$COUNT" --delay-ms "$DELAY_MS" --concurrency "$CONCURRENCY"
  --seconds "$DURATION" --baseline-count "$BASELINE_COUNT")
echo "== cross-datacenter DNS, a0 as configured by default" >&2
"$BENCH" "${ARGS[@]}" | tee "$OUT/plain.log" | grep -v '^JSON' >&2
# The same with a0 caching remote answers for up to 3 s (`dns_config.use_cache`).
echo "== cross-datacenter DNS, a0 with dns_config.use_cache" >&2
"$BENCH" "${ARGS[@]}" --agent-config '{"dns_config":{"use_cache":true}}' \
  | tee "$OUT/cache.log" | grep -v '^JSON' >&2

report=$(python3 - "$OUT" "$started" "$(nproc)" "$COUNT" "$DELAY_MS" "$CONCURRENCY" "$DURATION" "$BASELINE_COUNT" <<'PY'
import json, os, sys
out, started, cpus, count, delay, conc, duration, base = sys.argv[1:9]
def load(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return None
    runs = {}
    for line in open(p):
        if line.startswith("JSON "):
            r = json.loads(line[5:])
            key = r["bench"] + ("/" + r["which"] if "which" in r else "")
            runs[key] = r
    return runs
runs = [("a0 plain", load("plain.log"))]
cache = load("cache.log")
if cache is not None:
    runs.append(("a0 with `dns_config.use_cache`", cache))
def ms(x):
    return "—" if x is None else f"{x:.2f} ms"
def errors(r):
    e = r.get("errors") or {}
    return ", ".join(f"{n} {k}" for k, n in sorted(e.items())) or "0"
def pct(r, q):
    return None if not r or not r.get("ms") else r["ms"][q]
rtt = 2 * float(delay)
print(f"Measured {started} on {cpus} CPUs, both servers and the clients in one process "
      f"(2 tokio workers). Command: `COUNT={count} DELAY_MS={delay} CONCURRENCY={conc} "
      f"DURATION={duration} BASELINE_COUNT={base} bench/crossdc.sh --write`.")
print()
print(f"**Sequential requests**: A queries over UDP to a0's DNS port ({count} per name after 50 "
      f"uncounted), and {base} round trips for each link baseline; dc2's WAN port sits behind a "
      f"proxy holding each datagram {delay} ms each way (injected round trip {rtt:.0f} ms)")
print()
print("| run | request | p50 | p90 | p99 | max | errors |")
print("|---|---|---:|---:|---:|---:|---:|")
for label, r in runs:
    rows = [
        ("`web.service.consul` (dc1 answers)", r.get("sequential/local")),
        ("`web.service.dc2.consul` (dc2 answers over the WAN)", r.get("sequential/remote")),
        ("WAN ping a0 → b0 (QUIC stream, mTLS, through the proxy)", r.get("wan_ping")),
        ("UDP echo through the same kind of proxy (the link alone)", r.get("proxy_echo")),
    ]
    for what, m in rows:
        if m is None:
            continue
        print(f"| {label} | {what} | {ms(pct(m, 'p50'))} | {ms(pct(m, 'p90'))} | "
              f"{ms(pct(m, 'p99'))} | {ms(pct(m, 'max'))} | {errors(m)} |")
print()
print("**Cross-datacenter overhead** (what the agents add to the injected round trip; "
      "each cell is a difference of the two percentiles)")
print()
print("| run | measure | p50 | p99 |")
print("|---|---|---:|---:|")
# Only the uncached run: with the cache, dc2's answers come from a0's memory and there
# is no round trip to subtract.
for label, r in runs[:1]:
    o = r.get("overhead")
    if not o:
        continue
    a, b = o["remote_minus_rtt_ms"], o["remote_minus_local_minus_rtt_ms"]
    print(f"| {label} | dc2 answer − {rtt:.0f} ms | {ms(a['p50'])} | {ms(a['p99'])} |")
    print(f"| {label} | dc2 answer − dc1 answer − {rtt:.0f} ms | {ms(b['p50'])} | {ms(b['p99'])} |")
    remote = r.get("sequential/remote")
    for base, what in (("proxy_echo", "UDP echo through the proxy"),
                       ("wan_ping", "WAN ping (the QUIC transport alone)")):
        b = r.get(base)
        if b and b.get("ms") and remote and remote.get("ms"):
            print(f"| {label} | dc2 answer − {what} | "
                  f"{ms(remote['ms']['p50'] - b['ms']['p50'])} | {ms(remote['ms']['p99'] - b['ms']['p99'])} |")
print()
print(f"**Throughput**: {conc} clients, each asking one query at a time for {duration} s")
print()
print("| run | query | answers/s | p50 | p99 | errors |")
print("|---|---|---:|---:|---:|---:|")
for label, r in runs:
    for what, m in [("`web.service.dc2.consul`", r.get("load/remote")),
                    ("`web.service.consul`", r.get("load/local"))]:
        if m is None:
            continue
        print(f"| {label} | {what} | {m['qps']:.0f} | {ms(pct(m, 'p50'))} | {ms(pct(m, 'p99'))} | {errors(m)} |")
for label, r in runs:
    p = r.get("proxy")
    if p:
        print()
        print(f"Proxy in front of b0 ({label}): {p['relayed']} datagrams relayed, {p['dropped']} dropped; "
              f"held past their due time by {p['late_ms_mean']:.2f} ms on average (sleep precision, scheduling), "
              f"{p['late_ms_max']:.2f} ms at most.")
PY
)
echo "$report"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/put_section.py" "$ROOT/BENCHMARKS.md" crossdc "$report"
  echo "BENCHMARKS.md updated" >&2
fi
