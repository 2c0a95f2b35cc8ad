#!/usr/bin/env bash
# Every benchmark, one after the other, each against its reference in the same run, and
# BENCHMARKS.md regenerated from the results (each section names the machine, the
# command and the ratio to its reference):
#
#   bench/all.sh                 # install what is missing, run everything, --write
#   bench/all.sh dns_http kv     # only these (names of the scripts in bench/)
#   QUICK=1 bench/all.sh         # shorter runs (rough figures, for checking the scripts)
#
# The scripts: dns_http (DNS vs NSD, HTTP reads, memory), gossip (LAN gossip vs serf),
# raft (catalog writes and failover vs etcd), kv (KV puts, gets, prefix reads and
# watchers vs etcd), wan (QUIC requests vs a UDP echo, WAN pool vs serf -profile=wan),
# wan_scale (tens of single- and three-server datacenters, each server its own process:
# convergence, idle WAN traffic and memory vs serf -profile=wan, DNS to every datacenter),
# crossdc (cross-datacenter DNS with an injected WAN delay, with and without the cache),
# kv_replication (how far a KV copy in another datacenter lags behind its source, against
# the injected round trip: there is no reference program to run), acl (ACLs on against
# off), acl_replication (how long a new token takes to work in another datacenter, against
# the injected round trip), metrics (metrics on against off), client_rss (an idle client
# agent's memory against serf's agent), watchers (a write's way to 10,000 blocking health
# reads over client agents) and scale (the catalog from 1,000 to 10,000 nodes with 17
# instances each: registrations, reads, DNS, memory, restart, snapshot save and restore).
# A script that fails is reported and the others still run; the exit code is non-zero if
# any failed. Needs root for apt-get (Debian) and for gossip's iptables-made loss.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ALL=(dns_http gossip raft kv wan wan_scale crossdc kv_replication acl acl_replication metrics client_rss watchers scale)
if [ "$#" -gt 0 ]; then SELECTED=("$@"); else SELECTED=("${ALL[@]}"); fi

if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  missing=()
  for pair in dnsperf:dnsperf nsd:nsd wrk:wrk dig:bind9-dnsutils curl:curl jq:jq \
      serf:serf iptables:iptables etcd:etcd-server etcdctl:etcd-client python3:python3; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || echo "could not install some of: ${missing[*]}" >&2
  fi
fi

if [ "${QUICK:-0}" = 1 ]; then
  export RUNS=1 DURATION=3 REPEATS=1 SECONDS_PER_RUN=3 FAILOVERS=1 COUNT=300 SIZES=3 \
    BASELINE_COUNT=50 CLIENTS="1 8" NODES="1 3" PREFIX_CLIENTS=1 WATCHERS=1000 WATCH_WRITES=5 \
    SAMPLES=20 IDLE_SECONDS=5 LAYOUTS=10x1,5x3 IDLE=5 SETTLE=5 ROUNDS=2
fi

failed=()
started=$(date +%s)
for name in "${SELECTED[@]}"; do
  script="$ROOT/bench/$name.sh"
  if [ ! -x "$script" ]; then
    echo "== $name: no such benchmark (bench/$name.sh)" >&2
    failed+=("$name")
    continue
  fi
  echo "== $name" >&2
  t0=$(date +%s)
  env=()
  # scale.sh's SIZES and CLIENTS mean other things than the quick ones above.
  [ "${QUICK:-0}" = 1 ] && [ "$name" = scale ] &&
    env=(SIZES="200 1000" CLIENTS=8 READS=50 BIG_READS=10 DNS_SECONDS=2)
  if env "${env[@]}" "$script" --write; then
    echo "== $name done in $(( $(date +%s) - t0 )) s" >&2
  else
    echo "== $name FAILED after $(( $(date +%s) - t0 )) s" >&2
    failed+=("$name")
  fi
done
echo "== all done in $(( $(date +%s) - started )) s; BENCHMARKS.md updated" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  echo "== failed: ${failed[*]}" >&2
  exit 1
fi
