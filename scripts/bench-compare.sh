#!/usr/bin/env bash
# Runs the scenarios of docs/performance.md against the Node `ws` relay (the baseline),
# `wschat serve` (JSON mode) and `wschat serve --raw`, in one run, and prints each figure with
# its ratio to Node ws. The server is pinned to one CPU and the bench to another (taskset).
#
#   scripts/bench-compare.sh                 # every scenario, 5 s each
#   DURATION=10s scripts/bench-compare.sh    # longer scenarios
#   REPEAT=3 scripts/bench-compare.sh        # each load scenario 3 times: the table shows medians
#   SERVERS="wschat raw" scripts/bench-compare.sh
#   BEFORE_BIN=/tmp/wschat-old SERVERS="node before wschat" scripts/bench-compare.sh
#                                            # another build of wschat (JSON mode) as "before"
#
# The latency scenarios are also drawn, every server's distribution in one picture each:
# OUT/latency-rate50.svg and OUT/latency-rate100.svg (scripts/latency-plot).
#
# Environment: DURATION (5s), REPEAT (1), SERVERS ("node wschat raw"), SERVER_CPU (0),
# BENCH_CPU (1), IDLE (10000 connections for the memory scenario), SWEEP ("100 1000 10000"
# receivers), OUT (target/bench-compare: one JSON file per run, and the logs).
# Servers take turns within each scenario, so a disturbance on a shared machine does not fall
# on one server's figures only.
# Needs node and npm (the relay is installed from scripts/node-ws-relay on first use).
# Every server listens on 127.0.0.1 only, and every bench run stops by itself.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
REPEAT=${REPEAT:-1}
SERVERS=${SERVERS:-node wschat raw}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
IDLE=${IDLE:-10000}
SWEEP=${SWEEP:-100 1000 10000}
OUT=${OUT:-target/bench-compare}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/wschat"
RELAY_DIR=scripts/node-ws-relay

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.err "$OUT"/*.log "$OUT"/*.svg

if command -v taskset >/dev/null; then
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_BENCH=(taskset -c "$BENCH_CPU")
else
    echo "taskset not found: server and bench are not pinned" >&2
    PIN_SERVER=()
    PIN_BENCH=()
fi

if [[ " $SERVERS " == *" node "* && ! -d "$RELAY_DIR/node_modules/ws" ]]; then
    echo "installing the Node ws relay (npm ci in $RELAY_DIR)" >&2
    (cd "$RELAY_DIR" && npm ci --no-audit --no-fund --silent)
fi
echo "building wschat (release)" >&2
cargo build --release --quiet

SERVER_PID=
URL=

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# start_server NAME: starts it on a free port; sets SERVER_PID and URL from the line it prints.
start_server() {
    local name=$1 log="$OUT/$1.server.log" line
    : >"$log"
    case $name in
        node) "${PIN_SERVER[@]}" node "$RELAY_DIR/relay.js" 0 >"$log" 2>&1 & ;;
        wschat) "${PIN_SERVER[@]}" "$BIN" serve --port 0 --rate 0 >"$log" 2>/dev/null & ;;
        raw) "${PIN_SERVER[@]}" "$BIN" serve --port 0 --raw --rate 0 >"$log" 2>/dev/null & ;;
        before) "${PIN_SERVER[@]}" "${BEFORE_BIN:?set BEFORE_BIN to the wschat binary to compare with}" \
            serve --port 0 --rate 0 >"$log" 2>/dev/null & ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    # Wait for the "listening on URL" line, at most 10 s.
    for _ in $(seq 100); do
        line=$(head -n 1 "$log")
        if [[ $line == "listening on "* ]]; then
            URL=${line#listening on }
            return
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name did not start; its log:" >&2
    cat "$log" >&2
    exit 1
}

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# bench SERVER SCENARIO ARGS...: one run on a fresh server (so no scenario inherits another's
# backlog), its JSON kept as OUT/SERVER.SCENARIO.json (SCENARIO ends with the repetition).
bench() {
    local server=$1 scenario=$2
    shift 2
    start_server "$server"
    echo "  $scenario: wschat bench $*" >&2
    if ! "${PIN_BENCH[@]}" "$BIN" bench --url "$URL" --json "$@" \
        >"$OUT/$server.$scenario.json" 2>"$OUT/$server.$scenario.err"; then
        echo "    failed: $(tail -n 1 "$OUT/$server.$scenario.err")" >&2
        echo '{"failed":true}' >"$OUT/$server.$scenario.json"
    fi
    stop_server
}

# idle SERVER: memory per idle connection, on a fresh server.
idle() {
    local server=$1 before after log="$OUT/$1.idle.log" bench_pid
    start_server "$server"
    before=$(rss_kib "$SERVER_PID")
    echo "  idle: wschat bench --idle $IDLE (server VmRSS before: $before KiB)" >&2
    "${PIN_BENCH[@]}" "$BIN" bench --url "$URL" --idle "$IDLE" --duration 120s >"$log" 2>&1 &
    bench_pid=$!
    # Wait for "open: N connections", at most 120 s.
    for _ in $(seq 1200); do
        grep -q '^open: ' "$log" && break
        kill -0 "$bench_pid" 2>/dev/null || break
        sleep 0.1
    done
    after=$(rss_kib "$SERVER_PID")
    kill -INT "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    local open
    open=$(sed -n 's/^open: \([0-9]*\) connections.*/\1/p' "$log" | head -n 1)
    printf '{"before_kib":%s,"after_kib":%s,"open":%s}\n' "$before" "$after" "${open:-0}" \
        >"$OUT/$server.idle.json"
    stop_server
}

for rep in $(seq "$REPEAT"); do
    echo "== round $rep of $REPEAT" >&2
    for server in $SERVERS; do
        bench "$server" "max.$rep" --receivers 1000 --publishers 4 --rate max --duration "$DURATION"
    done
    for server in $SERVERS; do
        bench "$server" "rate50.$rep" --receivers 1000 --publishers 10 --rate 50 --duration "$DURATION"
    done
    for server in $SERVERS; do
        bench "$server" "rate100.$rep" --receivers 1000 --publishers 10 --rate 100 --duration "$DURATION"
    done
    for n in $SWEEP; do
        for server in $SERVERS; do
            # Quiet receivers: in JSON mode, announcing thousands of members to each other
            # would flood them before the run starts (a relay ignores the flag).
            bench "$server" "sweep$n.$rep" --receivers "$n" --publishers 4 --rate max \
                --duration "$DURATION" --quiet-receivers
        done
    done
done
for server in $SERVERS; do
    echo "== $server, idle connections" >&2
    idle "$server"
done

# The table: each figure, and its ratio to Node ws where Node ws was measured.
node - "$OUT" "$SERVERS" "$IDLE" "$SWEEP" "$REPEAT" <<'EOF'
const fs = require('fs');
const [out, serversArg, idle, sweepArg, repeat] = process.argv.slice(2);
const servers = serversArg.split(/\s+/).filter(Boolean);
const names = { node: 'Node ws', wschat: 'wschat JSON', raw: 'wschat --raw', before: 'wschat before' };
const readOne = (file) => {
  try {
    const r = JSON.parse(fs.readFileSync(file, 'utf8'));
    return r.failed ? null : r;
  } catch {
    return null;
  }
};
// Every run of a scenario that succeeded.
const runs = (server, scenario) => {
  if (scenario === 'idle') return [readOne(`${out}/${server}.idle.json`)].filter(Boolean);
  const all = [];
  for (let i = 1; i <= Number(repeat); i++) all.push(readOne(`${out}/${server}.${scenario}.${i}.json`));
  return all.filter(Boolean);
};
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return null;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};
const rows = [];
// A row: the median over runs of value(run); higherIsBetter null: no ratio.
const row = (label, scenario, value, fmt, higherIsBetter) => {
  const values = servers.map((s) => median(runs(s, scenario).map(value).filter((v) => v !== null)));
  const baseIndex = servers.indexOf('node');
  const base = baseIndex >= 0 ? values[baseIndex] : null;
  rows.push([label, ...values.map((v, i) => {
    if (v === null) return 'n/a';
    let cell = fmt(v);
    if (higherIsBetter !== null && base && servers[i] !== 'node' && v > 0) {
      cell += ` (${(higherIsBetter ? v / base : base / v).toFixed(1)}x)`;
    }
    return cell;
  })]);
};
const k = (v) => `${Math.round(v / 1000).toLocaleString('en-US')}k`;
const ms = (v) => `${v.toFixed(1)} ms`;
const pct = (v) => `${(v * 100).toFixed(2)}%`;
row('1000 rcv, 4 pub, max: deliveries/s', 'max', (r) => r.deliveries_per_s, k, true);
row('  delivered', 'max', (r) => r.delivery_ratio, pct, null);
row('1000 rcv, 10 pub, 50 msgs/s: p99 latency', 'rate50', (r) => r.latency_ms.p99, ms, false);
row('  p50', 'rate50', (r) => r.latency_ms.p50, ms, null);
row('  max', 'rate50', (r) => r.latency_ms.max, ms, null);
row('1000 rcv, 10 pub, 100 msgs/s: p99 latency', 'rate100', (r) => r.latency_ms.p99, ms, false);
row('  p50', 'rate100', (r) => r.latency_ms.p50, ms, null);
row('  max', 'rate100', (r) => r.latency_ms.max, ms, null);
for (const n of sweepArg.split(/\s+/).filter(Boolean)) {
  row(`${n} rcv, 4 pub, max: deliveries/s`, `sweep${n}`, (r) => r.deliveries_per_s, k, true);
}
row(`memory per idle connection (${idle})`, 'idle', (r) => (r.open > 0 ? (r.after_kib - r.before_kib) / r.open : null), (v) => `${v.toFixed(1)} KiB`, false);
row('  connections held', 'idle', (r) => r.open, (v) => `${v}`, null);

const header = ['scenario', ...servers.map((s) => names[s] || s)];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
const line = (cells) => `| ${cells.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`;
console.log(line(header));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of rows) console.log(line(r));
console.log(`\nMedians of ${repeat} run(s) per figure. (x): ratio to Node ws in the same run, higher is better.`);
console.log(`Every run's figures: ${out}/*.json`);
EOF

# The latency pictures: one per latency scenario, a line per server measured, its REPEAT runs
# pooled by scripts/latency-plot.
declare -A LABELS=([node]="Node ws" [wschat]="wschat" [raw]="wschat --raw" [before]="wschat before")

# plottable FILE...: the files among these that hold a latency distribution (a failed run's
# file holds {"failed":true}, a run that delivered nothing an empty one), comma-separated.
plottable() {
    node -e '
        const fs = require("fs");
        const ok = process.argv.slice(1).filter((file) => {
            try {
                const cdf = JSON.parse(fs.readFileSync(file, "utf8")).latency_ms.cdf;
                return Array.isArray(cdf) && cdf.length > 0;
            } catch {
                return false;
            }
        });
        console.log(ok.join(","));
    ' "$@"
}

# plot SCENARIO RATE: OUT/latency-SCENARIO.svg from every server's runs of it, if there are any.
plot() {
    local scenario=$1 rate=$2 server files svg="$OUT/latency-$1.svg" series=()
    for server in $SERVERS; do
        files=$(plottable "$OUT/$server.$scenario".*.json)
        if [[ -n $files ]]; then
            series+=("${LABELS[$server]:-$server}=$files")
        fi
    done
    if [[ ${#series[@]} -eq 0 ]]; then
        echo "no $scenario run delivered anything: no $svg" >&2
        return
    fi
    if scripts/latency-plot --out "$svg" \
        --title "Latency, send to receipt, at $rate msgs/s" "${series[@]}"; then
        echo "Latency distribution, $rate msgs/s: $svg"
    fi
}

echo
plot rate50 50
plot rate100 100
