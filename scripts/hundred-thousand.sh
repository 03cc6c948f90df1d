#!/usr/bin/env bash
# 100,000 announced members in one room, spread over several `wschat serve --redis` instances
# on this machine, each under the open-file limit (see docs/scaling.md):
#
#   starts one redis-server (loopback, a free port, no persistence) and INSTANCES instances;
#   runs one `wschat bench --members` worker per instance (its own processes, each under the
#   open-file limit, each from its own 127.0.K.x source addresses), all joining one room;
#   once every worker's members have joined, samples each instance's VmRSS and Redis's
#   INFO memory, sends one message through the first instance (`wschat send`) and waits
#   until every worker saw it reach all of its members; then prints the figures and stops
#   everything it started.
#
#   scripts/hundred-thousand.sh                        # 100,000 members over 6 instances
#   MEMBERS=20000 INSTANCES=2 scripts/hundred-thousand.sh
#
# Environment: MEMBERS (100000), INSTANCES (6), JOIN_RATE (max: per worker, joins/s),
# JOIN_TIMEOUT (600 s for all members to join), MESSAGE_WAIT (60 s for the message to reach
# them all after that), OUT (target/hundred-thousand: logs and each worker's JSON), BIN
# (target/release/wschat, built if missing). Everything listens on and connects to
# 127.0.0.1 only, and the run ends by itself within JOIN_TIMEOUT + MESSAGE_WAIT + a minute.
# Exit status 0 only when every member joined, none was closed, and the message reached all.
set -euo pipefail

cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:-100000}
INSTANCES=${INSTANCES:-6}
JOIN_RATE=${JOIN_RATE:-max}
JOIN_TIMEOUT=${JOIN_TIMEOUT:-600}
MESSAGE_WAIT=${MESSAGE_WAIT:-60}
OUT=${OUT:-target/hundred-thousand}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/wschat}
ROOM=hundred

for tool in redis-server redis-cli jq; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
if [[ ! -x "$BIN" ]]; then
    echo "building wschat (release)" >&2
    cargo build --release --quiet
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.err "$OUT"/*.log "$OUT"/*.out

PIDS=()
cleanup() {
    # Only the processes this script started, by their ids.
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { date +%s%3N; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Redis on a free port.
for _ in $(seq 50); do
    REDIS_PORT=$((20000 + RANDOM % 20000))
    listening "$REDIS_PORT" || break
done
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$OUT" --logfile redis.log &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 100); do
    [[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && break
    sleep 0.1
done
[[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] || {
    echo "redis-server did not start (see $OUT/redis.log)" >&2
    exit 1
}
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# The instances, each on a port of its own choosing.
URLS=()
SERVER_PIDS=()
for i in $(seq 0 $((INSTANCES - 1))); do
    "$BIN" serve --port 0 --redis "$REDIS_URL" >"$OUT/serve-$i.out" 2>"$OUT/serve-$i.log" &
    pid=$!
    PIDS+=("$pid")
    SERVER_PIDS+=("$pid")
    url=
    for _ in $(seq 100); do
        url=$(sed -n 's/^listening on //p' "$OUT/serve-$i.out" | head -n 1)
        [[ -n "$url" ]] && break
        sleep 0.1
    done
    [[ -n "$url" ]] || { echo "instance $i did not start (see $OUT/serve-$i.log)" >&2; exit 1; }
    URLS+=("$url")
done
sleep 1
RSS_BEFORE=()
for pid in "${SERVER_PIDS[@]}"; do RSS_BEFORE+=("$(rss_kib "$pid")"); done
REDIS_BEFORE=$(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | sed -n 's/^used_memory://p')

# One worker per instance, with its share of the members.
echo "joining $MEMBERS members to room '$ROOM' over $INSTANCES instances" >&2
WORKER_PIDS=()
started=$(now_ms)
for i in $(seq 0 $((INSTANCES - 1))); do
    share=$((MEMBERS / INSTANCES + (i < MEMBERS % INSTANCES ? 1 : 0)))
    timeout $((JOIN_TIMEOUT + MESSAGE_WAIT + 60)) "$BIN" bench --url "${URLS[$i]}" \
        --members "$share" --room "$ROOM" --name-prefix "i$i-" --join-rate "$JOIN_RATE" \
        --first-source "127.0.$((i + 1)).1" --server-pid "${SERVER_PIDS[$i]}" \
        --connect-timeout 60s --await-message --duration "$((JOIN_TIMEOUT + MESSAGE_WAIT))s" \
        --json >"$OUT/worker-$i.json" 2>"$OUT/worker-$i.err" &
    pid=$!
    PIDS+=("$pid")
    WORKER_PIDS+=("$pid")
done

# Wait until every worker says its members joined (or one ends early).
deadline=$(($(now_ms) + JOIN_TIMEOUT * 1000))
while :; do
    joined=0
    for i in $(seq 0 $((INSTANCES - 1))); do
        grep -q '^joined:' "$OUT/worker-$i.err" 2>/dev/null && joined=$((joined + 1))
    done
    [[ $joined -eq $INSTANCES ]] && break
    for i in "${!WORKER_PIDS[@]}"; do
        if ! kill -0 "${WORKER_PIDS[$i]}" 2>/dev/null; then
            echo "worker $i ended before the message:" >&2
            cat "$OUT/worker-$i.err" "$OUT/worker-$i.json" >&2
            exit 1
        fi
    done
    if [[ $(now_ms) -gt $deadline ]]; then
        echo "not every member joined within ${JOIN_TIMEOUT}s ($joined of $INSTANCES workers done)" >&2
        exit 1
    fi
    sleep 0.2
done
join_ms=$(($(now_ms) - started))
RSS_AFTER=()
for pid in "${SERVER_PIDS[@]}"; do RSS_AFTER+=("$(rss_kib "$pid")"); done
redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' >"$OUT/redis-memory.txt"
REDIS_AFTER=$(sed -n 's/^used_memory://p' "$OUT/redis-memory.txt")
REDIS_RSS=$(sed -n 's/^used_memory_rss://p' "$OUT/redis-memory.txt")

# The message after the last join, through the first instance.
"$BIN" send hundred-sender "wsb-final:$(date +%s%N)" --url "${URLS[0]}" --room "$ROOM" >/dev/null
status=0
for pid in "${WORKER_PIDS[@]}"; do wait "$pid" || status=1; done

# The figures.
jq -s --argjson join_ms "$join_ms" --argjson members "$MEMBERS" '{
    members: $members,
    instances: length,
    joined: (map(.joined) | add),
    join_s_all: ($join_ms / 1000),
    join_s_per_worker: map(.join_s),
    server_cpu_ms_per_join: map(.server_cpu_ms_per_join),
    closed: (map(.closed) | add),
    close_codes: (map(.close_codes | to_entries) | add | group_by(.key)
                  | map({key: .[0].key, value: (map(.value) | add)}) | from_entries),
    message_reached: (map(.message_reached) | add),
    message_all_ms: (if all(.message_all_ms != null) then map(.message_all_ms) | max else null end),
    max_presence_count: (map(.max_presence_count) | max)
}' "$OUT"/worker-*.json >"$OUT/summary.json"
per_member=()
for i in $(seq 0 $((INSTANCES - 1))); do
    share=$((MEMBERS / INSTANCES + (i < MEMBERS % INSTANCES ? 1 : 0)))
    per_member+=("$(awk -v a="${RSS_AFTER[$i]}" -v b="${RSS_BEFORE[$i]}" -v n="$share" \
        'BEGIN { printf "%.2f", (a - b) / n }')")
done
jq --argjson kib "[$(IFS=,; echo "${per_member[*]}")]" \
   --argjson rss "[$(IFS=,; echo "${RSS_AFTER[*]}")]" \
   --argjson redis_before "$REDIS_BEFORE" --argjson redis_after "$REDIS_AFTER" \
   --argjson redis_rss "$REDIS_RSS" \
   '. + {kib_per_member_per_instance: $kib, instance_rss_kib: $rss,
         redis_used_memory_before: $redis_before, redis_used_memory: $redis_after,
         redis_used_memory_rss: $redis_rss,
         redis_bytes_per_member: (($redis_after - $redis_before) / .members)}' \
   "$OUT/summary.json" >"$OUT/summary.tmp" && mv "$OUT/summary.tmp" "$OUT/summary.json"
cat "$OUT/summary.json"
jq -e --argjson members "$MEMBERS" \
    '.joined == $members and .closed == 0 and .message_reached == $members' \
    "$OUT/summary.json" >/dev/null || status=1
exit $status
