# Shared by the benchmarks whose driver starts two federated datacenters itself
# (acl_replication.sh, kv_replication.sh); sourced with ROOT set and DRIVER_NAME the
# driver's binary in proconsul-bench. Builds the agent and the driver (BIN, DRIVER),
# gives a temp dir ($OUT) removed on exit and the commit measured ($COMMIT), and
# `run_driver LIMIT LOG WHAT ARG…`, which runs the driver bounded by `timeout LIMIT`.

command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
cargo build --release -q --bin proconsul
cargo build --release -q -p proconsul-bench --bin "$DRIVER_NAME"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/proconsul"
DRIVER="$TARGET/release/$DRIVER_NAME"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"

OUT=$(mktemp -d)
CHILD=""
# A driver that ends by itself stops its servers; one stopped by a signal (ours, or
# timeout's) cannot, so it lists their PIDs for us.
stop_servers() {
  local p
  [ -f "$OUT/pids" ] || return 0
  for p in $(cat "$OUT/pids"); do kill -9 "$p" 2>/dev/null || true; done
  rm -f "$OUT/pids"
}
cleanup() {
  if [ -n "$CHILD" ]; then
    kill "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
    stop_servers
  fi
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_driver LIMIT LOG WHAT ARG…: the driver with ARG… (and --bin, --pid-file), its
# report in LOG, its errors on stderr. A driver that fails is left out of the report,
# saying so with WHAT; one that timeout (124) or a signal stopped has its servers stopped.
run_driver() {
  local limit=$1 log=$2 what=$3 rc=0
  shift 3
  timeout "$limit" "$DRIVER" --bin "$BIN" --pid-file "$OUT/pids" "$@" > "$log" 2> "$OUT/run.err" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  cat "$OUT/run.err" >&2
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -ge 124 ] && stop_servers
    echo "the driver failed ($rc) $what; left out" >&2
  fi
  rm -f "$OUT/pids"
}
