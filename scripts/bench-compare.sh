#!/usr/bin/env bash
# Runs the scenarios of docs/performance.md against the Node `ws` relay (the baseline),
# `wschat serve` (JSON mode) and `wschat serve --raw`, in one run, and prints each figure with
# its ratio to Node ws. The server is pinned to one CPU and the bench to another (taskset).
#
#   scripts/bench-compare.sh                 # every scenario, 5 s each
#   DURATION=10s scripts/bench-compare.sh    # longer scenarios
#   SERVERS="wschat raw" scripts/bench-compare.sh
#
# Environment: DURATION (5s), SERVERS ("node wschat raw"), SERVER_CPU (0), BENCH_CPU (1),
# IDLE (10000 connections for the memory scenario), SWEEP ("100 1000 10000" receivers),
# OUT (target/bench-compare: one JSON file per run, and the logs).
# Needs node and npm (the relay is installed from scripts/node-ws-relay on first use).
# Every server listens on 127.0.0.1 only, and every bench run stops by itself.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
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
rm -f "$OUT"/*.json

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
        wschat) "${PIN_SERVER[@]}" "$BIN" serve --port 0 >"$log" 2>/dev/null & ;;
        raw) "${PIN_SERVER[@]}" "$BIN" serve --port 0 --raw >"$log" 2>/dev/null & ;;
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
# backlog), its JSON kept as OUT/SERVER.SCENARIO.json.
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

for server in $SERVERS; do
    echo "== $server" >&2
    bench "$server" max --receivers 1000 --publishers 4 --rate max --duration "$DURATION"
    bench "$server" rate50 --receivers 1000 --publishers 1 --rate 50 --duration "$DURATION"
    bench "$server" rate100 --receivers 1000 --publishers 1 --rate 100 --duration "$DURATION"
    for n in $SWEEP; do
        # Quiet receivers: in JSON mode, announcing thousands of members to each other would
        # flood them before the run starts (a relay ignores the flag).
        bench "$server" "sweep$n" --receivers "$n" --publishers 4 --rate max \
            --duration "$DURATION" --quiet-receivers
    done
    idle "$server"
done

# The table: each figure, and its ratio to Node ws where Node ws was measured.
node - "$OUT" "$SERVERS" "$IDLE" "$SWEEP" <<'EOF'
const fs = require('fs');
const [out, serversArg, idle, sweepArg] = process.argv.slice(2);
const servers = serversArg.split(/\s+/).filter(Boolean);
const names = { node: 'Node ws', wschat: 'wschat JSON', raw: 'wschat --raw' };
const read = (server, scenario) => {
  try { return JSON.parse(fs.readFileSync(`${out}/${server}.${scenario}.json`, 'utf8')); }
  catch { return null; }
};
const rows = [];
const row = (label, pick, fmt, higherIsBetter) => {
  const values = servers.map((s) => { const r = read(s, pick.scenario); return r && !r.failed ? pick.value(r) : null; });
  const base = servers.indexOf('node') >= 0 ? values[servers.indexOf('node')] : null;
  const cells = values.map((v, i) => {
    if (v === null || v === undefined) return 'n/a';
    let cell = fmt(v);
    if (base && servers[i] !== 'node' && v > 0) {
      const ratio = higherIsBetter ? v / base : base / v;
      cell += ` (${ratio.toFixed(1)}x)`;
    }
    return cell;
  });
  rows.push([label, ...cells]);
};
const k = (v) => `${Math.round(v / 1000).toLocaleString('en-US')}k`;
const ms = (v) => `${v.toFixed(1)} ms`;
const delivery = (r) => `${(r.delivery_ratio * 100).toFixed(2)}%`;
row('1000 rcv, 4 pub, max: deliveries/s', { scenario: 'max', value: (r) => r.deliveries_per_s }, k, true);
row('  delivered', { scenario: 'max', value: (r) => r }, delivery, null);
row('1000 rcv, 50 msgs/s: p99 latency', { scenario: 'rate50', value: (r) => r.latency_ms.p99 }, ms, false);
row('  p50 / max', { scenario: 'rate50', value: (r) => r }, (r) => `${r.latency_ms.p50.toFixed(1)} / ${r.latency_ms.max.toFixed(1)} ms`, null);
row('1000 rcv, 100 msgs/s: p99 latency', { scenario: 'rate100', value: (r) => r.latency_ms.p99 }, ms, false);
row('  p50 / max', { scenario: 'rate100', value: (r) => r }, (r) => `${r.latency_ms.p50.toFixed(1)} / ${r.latency_ms.max.toFixed(1)} ms`, null);
for (const n of sweepArg.split(/\s+/).filter(Boolean)) {
  row(`${n} rcv, 4 pub, max: deliveries/s`, { scenario: `sweep${n}`, value: (r) => r.deliveries_per_s }, k, true);
}
row(`memory per idle connection (${idle})`, { scenario: 'idle', value: (r) => (r.open > 0 ? (r.after_kib - r.before_kib) / r.open : null) }, (v) => `${v.toFixed(1)} KiB`, false);
row('  connections held', { scenario: 'idle', value: (r) => r.open }, (v) => `${v}`, null);

const header = ['scenario', ...servers.map((s) => names[s] || s)];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
const line = (cells) => `| ${cells.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`;
console.log(line(header));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of rows) console.log(line(r));
console.log(`\n(x): ratio to Node ws in this run, higher is better. Raw figures: ${out}/*.json`);
EOF
