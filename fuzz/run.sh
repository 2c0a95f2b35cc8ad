#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each, then reports the
# executions and any crash.
#
#   fuzz/run.sh 60                 every target, 60 s each
#   fuzz/run.sh 300 dns gossip     two of them
#
# Needs the nightly toolchain; installs cargo-fuzz when it is missing. Each target
# starts from its seeds (seeds/<target>/, kept in git) and the corpus of earlier runs
# (corpus/<target>/, generated). libFuzzer stops a target at its first crash and writes
# the input to artifacts/<target>/; then
#
#   cd fuzz && cargo +nightly fuzz tmin <target> artifacts/<target>/crash-...
#
# minimizes it, and the minimized bytes become a #[test] next to the code they broke.
# Extra build flags (say `--sanitizer none` for speed) go in FUZZ_BUILD_FLAGS. Exits 1
# when a target crashed.
set -euo pipefail

usage() {
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[0-9]+$ ]] || usage
seconds=$1
shift

cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# Build with the versions the main workspace is tested with.
cp ../Cargo.lock Cargo.lock

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build flags must be the same for build and run, or run rebuilds.
# shellcheck disable=SC2206
build_flags=(${FUZZ_BUILD_FLAGS:-})
echo "==> building ${targets[*]}"
for target in "${targets[@]}"; do
    cargo +nightly fuzz build "${build_flags[@]}" "$target"
done

mkdir -p logs
summary=()
crashed=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    before=$(find "artifacts/$target" -type f | sort)
    log="logs/$target.log"
    echo "==> fuzzing $target for ${seconds}s (log: fuzz/$log)"
    status=0
    # -timeout: an input that takes this long is a hang, reported like a crash.
    cargo +nightly fuzz run "${build_flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    new=$(comm -13 <(echo "$before") <(find "artifacts/$target" -type f | sort) | sed '/^$/d')
    if [[ $status -ne 0 || -n $new ]]; then
        crashed=1
        summary+=("$(printf '%-10s CRASHED  execs=%s exec/s=%s (exit %s)' "$target" "${execs:-?}" "${rate:-?}" "$status")")
        grep -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" || true
        [[ -z $new ]] || echo "$new" | sed 's/^/    artifact: fuzz\//'
        tail -n 30 "$log"
    else
        summary+=("$(printf '%-10s ok       execs=%s exec/s=%s corpus=%s' "$target" "${execs:-?}" "${rate:-?}" "$corpus")")
    fi
done

echo
echo "==> summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [[ $crashed -ne 0 ]]; then
    echo "crashes are in fuzz/artifacts/<target>/; minimize with cargo +nightly fuzz tmin <target> <file>"
    exit 1
fi
