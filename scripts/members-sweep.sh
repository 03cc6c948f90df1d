#!/usr/bin/env bash
# Announced members joining one room of one `wschat serve` (docs/performance.md): for each
# size, a fresh server on 127.0.0.1 and `wschat bench --members N`, REPEAT times; prints one
# line per run with the figures the table uses, and keeps each run's JSON in OUT.
#
#   scripts/members-sweep.sh                       # 1,000, 10,000 and 18,900 members, 3 runs
#   SIZES="1000 5000" REPEAT=1 scripts/members-sweep.sh
#
# Each round also holds IDLE quiet connections (`bench --idle`) on a fresh server, the
# baseline a member's memory is read against: what a connection costs with no name, no
# announcements and no frames sent to it.
#
# Environment: SIZES ("1000 10000 18900": the last is as many as one server holds under an
# open-file limit of 20,000, next to the bench's sender), REPEAT (3), JOIN_RATE (max), IDLE (10000),
# OUT (target/members-sweep), BIN (target/release/wschat, built if missing).
# Every run stops by itself (a bench run is bounded by its timeouts, and by `timeout`).
set -euo pipefail

cd "$(dirname "$0")/.."
SIZES=${SIZES:-1000 10000 18900}
REPEAT=${REPEAT:-3}
JOIN_RATE=${JOIN_RATE:-max}
IDLE=${IDLE:-10000}
OUT=${OUT:-target/members-sweep}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/wschat}
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }
if [[ ! -x "$BIN" ]]; then
    echo "building wschat (release)" >&2
    cargo build --release --quiet
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.err "$OUT"/*.out "$OUT"/*.log

SERVER_PID=
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# Starts a fresh server; sets SERVER_PID and url.
start_server() {
    # A file per server: the shell truncates it only once the child runs.
    "$BIN" serve --port 0 >"$OUT/serve-$1.out" 2>"$OUT/serve-$1.log" &
    SERVER_PID=$!
    url=
    for _ in $(seq 100); do
        url=$(sed -n 's/^listening on //p' "$OUT/serve-$1.out" 2>/dev/null | head -n 1)
        [[ -n "$url" ]] && break
        sleep 0.1
    done
    [[ -n "$url" ]] || { echo "the server did not start" >&2; exit 1; }
    sleep 1
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

for run in $(seq 1 "$REPEAT"); do
    start_server "idle-$run"
    before=$(rss_kib "$SERVER_PID")
    "$BIN" bench --url "$url" --idle "$IDLE" --duration 30s >"$OUT/idle-$run.out" 2>&1 &
    bench=$!
    for _ in $(seq 300); do
        grep -q '^open:' "$OUT/idle-$run.out" && break
        sleep 0.1
    done
    after=$(rss_kib "$SERVER_PID")
    kill -INT "$bench" 2>/dev/null || true
    wait "$bench" 2>/dev/null || true
    stop_server
    awk -v a="$after" -v b="$before" -v n="$IDLE" \
        'BEGIN { printf "{\"idle\":%d,\"kib_per_idle_connection\":%.2f}\n", n, (a - b) / n }'
    for n in $SIZES; do
        start_server "$n-$run"
        timeout 300 "$BIN" bench --url "$url" --members "$n" --join-rate "$JOIN_RATE" \
            --server-pid "$SERVER_PID" --drain 30s --json \
            >"$OUT/members-$n-$run.json" 2>"$OUT/members-$n-$run.err" || true
        stop_server
        if [[ ! -s "$OUT/members-$n-$run.json" ]]; then
            echo "run $run, $n members: no report: $(cat "$OUT/members-$n-$run.err")" >&2
            continue
        fi
        jq -c '{members, join_s, server_cpu_ms_per_join, kib_per_member, closed, close_codes,
                message_reached, message_all_ms, max_presence_count}' "$OUT/members-$n-$run.json"
    done
done
