# Shared by the benchmarks that run HashiCorp's serf beside proconsul (wan.sh,
# wan_scale.sh): checks that serf is installed and finds serf_gossip.py from the team's
# reference benchmarks (SERF_BENCH, by default next to the checkout); sourced with ROOT set.

SERF_BENCH=${SERF_BENCH:-$ROOT/../shared/bench/serf_gossip.py}
command -v serf >/dev/null || { echo "serf is needed: apt-get install serf" >&2; exit 1; }
[ -f "$SERF_BENCH" ] || { echo "serf_gossip.py not found at $SERF_BENCH (set SERF_BENCH)" >&2; exit 1; }
SERF_VERSION=$(serf version | head -1)
