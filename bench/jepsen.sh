#!/usr/bin/env bash
# The long run of the Jepsen-style tests (tests/it/jepsen.rs): three servers of
# dc1 in network namespaces, four clients registering, deregistering and reading with
# ?consistent, a nemesis killing the leader, restarting followers and partitioning one
# server at a time; then the history is checked for lost writes, undone deregistrations
# and non-linearizable reads. The second test sends the writes from a dc2 server with
# ?dc=dc1. The third runs a compare-and-set register in KV (?consistent reads, ?cas=
# writes) under the same nemesis and checks each key's history for linearizability.
# Each test runs JEPSEN_SECONDS of faults (600 here; 60, 30 and 60 in the normal suite),
# in release mode.
#
#   bench/jepsen.sh                          # 3 x 600 s of faults
#   JEPSEN_SECONDS=1800 bench/jepsen.sh      # longer
#   JEPSEN_SEED=123 bench/jepsen.sh          # repeat the random choices of a run
#   JEPSEN_KEEP=1 bench/jepsen.sh            # keep logs and history of a passing run
#   bench/jepsen.sh consistent_catalog       # only the first test (any test-name filter)
#   bench/jepsen.sh a_cas_register           # only the register
#
# Needs root and iproute2 (ip netns); otherwise the tests print "skipped" and pass. A
# failing run keeps the agents' logs, history.txt and nemesis.txt and prints where.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export JEPSEN_SECONDS=${JEPSEN_SECONDS:-600}
FILTER="jepsen::${1:-}"
exec cargo test --release --test it "$FILTER" -- --nocapture --test-threads=1
