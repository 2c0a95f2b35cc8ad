# Shared by the benchmarks that start `proconsul agent -dev` one after another
# (acl.sh, metrics.sh, ui.sh); sourced after BIN is set. Gives a temp dir ($WORK) removed
# on exit, a free-port helper, and one agent at a time ($AGENT_PID) started on free
# ports and stopped by PID on exit. A script may define `before_stop_agent` to stop
# what it started beside the agent.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/${BENCH_NAME:-bench}.XXXXXX")
AGENT_PID=""

stop_agent() {
  if declare -F before_stop_agent >/dev/null; then before_stop_agent; fi
  [ -n "$AGENT_PID" ] || return 0
  kill -TERM "$AGENT_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=""
}
cleanup() { stop_agent; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_dev_agent LOG [FLAG…]: a -dev agent with its gossip and server ports free, the
# given flags (HTTP and DNS ports among them), its output in LOG; sets AGENT_PID.
start_dev_agent() {
  local log=$1
  shift
  "$BIN" agent -dev -log-level=warn \
    -serf-lan-port="$(free_port)" -serf-wan-port="$(free_port)" -server-port="$(free_port)" \
    "$@" >"$log" 2>&1 &
  AGENT_PID=$!
}

# leader_known URL: whether the agent at URL names a leader.
leader_known() {
  [[ "$(curl -s --max-time 1 "$1/v1/status/leader" 2>/dev/null)" =~ ^\"[^\"]+\"$ ]]
}

# wait_for_agent LOG COMMAND…: runs COMMAND every 0.1 s until it succeeds (30 s at
# most); else prints the end of LOG and exits 1.
wait_for_agent() {
  local log=$1
  shift
  for _ in $(seq 300); do
    "$@" && return 0
    sleep 0.1
  done
  echo "the agent did not come up; its log:" >&2
  tail -20 "$log" >&2
  exit 1
}
