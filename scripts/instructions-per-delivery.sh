#!/usr/bin/env bash
# User-space instructions the server spends per delivery, counted by callgrind (for machines
# whose CPU counters `perf stat` cannot read): a server under valgrind on CPU 0, `wschat bench`
# on CPU 1, 1,000 receivers and 10 publishers at 10 msgs/s (callgrind runs the server some 50
# times slower, so 100 msgs/s would overload it; each delivery is alone at either rate). The
# counters are zeroed 3 s after the first delivery and dumped 10 s later; the deliveries in that
# window come from the server's /metrics.
#
#   scripts/instructions-per-delivery.sh                      # target/release/wschat
#   scripts/instructions-per-delivery.sh OLD_BIN NEW_BIN      # several builds, one after another
#
# Needs valgrind (callgrind_control) and curl. Listens on 127.0.0.1 only; each run stops by
# itself after about 25 s.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/wschat}
[[ -x "$BENCH" ]] || cargo build --release --quiet
for tool in valgrind callgrind_control curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

metric() { curl -s "http://$1/metrics" | awk -v name="wschat_$2" '$1 == name { print $2 }'; }

count() {
    local bin=$1 log="$OUT/serve.out" url hostport server bench d0 w0 d1 w1 ir
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
        "$bin" serve --port 0 --rate 0 >"$log" 2>"$OUT/valgrind.err" &
    server=$!
    for _ in $(seq 300); do grep -q '^listening on' "$log" && break; sleep 0.1; done
    url=$(sed -n 's/^listening on //p' "$log" | head -n 1)
    [[ -n "$url" ]] || { echo "$bin did not start" >&2; cat "$OUT/valgrind.err" >&2; exit 1; }
    hostport=${url#ws://}
    hostport=${hostport%/}
    taskset -c 1 "$BENCH" bench --url "$url" --receivers 1000 --publishers 10 --rate 10 \
        --duration 20s --quiet-receivers --connect-timeout 60s --json >/dev/null 2>&1 &
    bench=$!
    for _ in $(seq 600); do
        [[ $(metric "$hostport" deliveries_total) -gt 0 ]] 2>/dev/null && break
        sleep 0.1
    done
    sleep 3
    d0=$(metric "$hostport" deliveries_total)
    w0=$(metric "$hostport" deliveries_written_through_total)
    callgrind_control -z "$server" >/dev/null
    sleep 10
    callgrind_control -d "$server" >/dev/null
    d1=$(metric "$hostport" deliveries_total)
    w1=$(metric "$hostport" deliveries_written_through_total)
    wait "$bench" || true
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    # The dump asked for (cg.PID.1), not the one written at exit.
    ir=$(awk '/^totals:/ { print $2 }' "$OUT"/cg.*.1)
    rm -f "$OUT"/cg.*
    echo "$bin: $((d1 - d0)) deliveries, $((${w1:-0} - ${w0:-0})) written straight through," \
        "$ir instructions: $((ir / (d1 - d0))) per delivery"
}

if [[ $# -eq 0 ]]; then
    set -- "$BENCH"
fi
for bin in "$@"; do
    count "$bin"
done
