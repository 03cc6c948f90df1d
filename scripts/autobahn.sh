#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn |Testsuite (wstest -m fuzzingclient, every case) against
# `wschat serve --raw --echo`, on loopback, no Docker. Exits non-zero if any case FAILED.
#
# usage: scripts/autobahn.sh [--record]
#   --record   also write docs/autobahn-summary.json (counts and per-case behaviour)
#
# wstest is Python 2.7 only (autobahntestsuite 25.10.1 still is). This uses the CPython 2.7 that
# pyenv provides ($(pyenv root)/versions/2.7*), or $PY27, and installs wstest once into a
# virtualenv ($AB_VENV, default /tmp/wstest-py27; about a minute the first time).
#
# env:
#   PY27       python2.7 to use (default: pyenv's 2.7*)
#   AB_VENV    where the py2.7 virtualenv lives (/tmp/wstest-py27); reused when present
#   AB_OUT     spec, logs and HTML/JSON reports (target/autobahn)
#   AB_CASES   JSON list of case globs to run (["*"])
#   AB_EXCLUDE JSON list of case globs to skip ([])
#   AB_EXPECTED a summary written by --record; any per-case difference fails the run
#   AB_TIMEOUT  seconds wstest may run in all (3600)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/scripts/autobahn"
AB_VENV=${AB_VENV:-/tmp/wstest-py27}
AB_OUT=${AB_OUT:-$ROOT/target/autobahn}
AB_CASES=${AB_CASES:-'["*"]'}
AB_EXCLUDE=${AB_EXCLUDE:-'[]'}
RECORD=0
for arg in "$@"; do
  case "$arg" in
    --record) RECORD=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "autobahn: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

PY27=${PY27:-$(ls "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/2.7*/bin/python2.7 2>/dev/null | head -1 || true)}
if [ -z "$PY27" ] || ! "$PY27" -c 'import ssl, zlib' 2>/dev/null; then
  echo "autobahn: no usable python2.7 (set PY27, or 'pyenv install 2.7.18')" >&2
  exit 2
fi
if [ ! -x "$AB_VENV/bin/wstest" ]; then
  echo "autobahn: installing wstest into $AB_VENV (once, about a minute)"
  python3 -m venv "$AB_VENV.tools"
  "$AB_VENV.tools/bin/pip" install -q 'virtualenv<20.22'   # the last virtualenv that makes py2.7 envs
  "$AB_VENV.tools/bin/virtualenv" -q -p "$PY27" "$AB_VENV"
  "$AB_VENV/bin/pip" install -q --no-python-version-warning -r "$HERE/requirements-wstest-py27.txt"
fi

echo "autobahn: building wschat (release)"
( cd "$ROOT" && cargo build --release --locked --quiet )
WSCHAT="${CARGO_TARGET_DIR:-$ROOT/target}/release/wschat"

rm -rf "$AB_OUT/reports"
mkdir -p "$AB_OUT"
# One client at a time makes the relay an echo server. 16 MiB messages so the large-message
# cases (9.x) apply; no rate limit, as wstest sends as fast as it can.
TESTEE=("$WSCHAT" serve --raw --echo --max-message-bytes 16777216 --rate 0 --host 127.0.0.1 --port 0)
: > "$AB_OUT/testee.out"
"${TESTEE[@]}" > "$AB_OUT/testee.out" 2> "$AB_OUT/testee.log" &
TESTEE_PID=$!
trap 'kill $TESTEE_PID 2>/dev/null || true' EXIT
URL=
for _ in $(seq 1 100); do   # the server prints "listening on ws://127.0.0.1:PORT/" once bound
  URL=$(sed -n 's/^listening on //p' "$AB_OUT/testee.out" 2>/dev/null || true)
  [ -n "$URL" ] && break
  kill -0 $TESTEE_PID 2>/dev/null || break
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "autobahn: the testee did not start (see $AB_OUT/testee.log)" >&2
  exit 1
fi
URL=${URL%/}
echo "autobahn: testee ${TESTEE[*]} -> $URL"

cat > "$AB_OUT/fuzzingclient.json" <<JSON
{
  "options": {"failByDrop": false},
  "outdir": "$AB_OUT/reports",
  "servers": [{"agent": "wschat", "url": "$URL"}],
  "cases": $AB_CASES,
  "exclude-cases": $AB_EXCLUDE,
  "exclude-agent-cases": {}
}
JSON
echo "autobahn: running wstest (log: $AB_OUT/wstest.log)"
START=$(date +%s)
if ! ( cd "$AB_OUT" && timeout "${AB_TIMEOUT:-3600}" "$AB_VENV/bin/wstest" -m fuzzingclient -s fuzzingclient.json > wstest.log 2>&1 ); then
  echo "autobahn: wstest failed or timed out (see $AB_OUT/wstest.log)" >&2
  exit 1
fi
echo "autobahn: wstest finished in $(( $(date +%s) - START )) s"
if ! kill -0 $TESTEE_PID 2>/dev/null; then
  echo "autobahn: the server died during the run (see $AB_OUT/testee.log)" >&2
  exit 1
fi

SUMMARY_ARGS=("$AB_OUT/reports/index.json" --write "$AB_OUT/summary.json"
  --meta "date=$(date -u +%Y-%m-%d)"
  --meta "wstest=autobahntestsuite $("$AB_VENV/bin/pip" show autobahntestsuite 2>/dev/null | sed -n 's/^Version: //p')"
  --meta "wschat=$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
  --meta "testee=wschat serve --raw --echo --max-message-bytes 16777216 --rate 0 --port 0")
[ -n "${AB_EXPECTED:-}" ] && SUMMARY_ARGS+=(--expected "$AB_EXPECTED")
set +e
python3 "$HERE/summary.py" "${SUMMARY_ARGS[@]}"
RC=$?
set -e
if [ "$RECORD" = 1 ]; then
  cp "$AB_OUT/summary.json" "$ROOT/docs/autobahn-summary.json"
  echo "autobahn: recorded docs/autobahn-summary.json"
fi
echo "autobahn: HTML report at $AB_OUT/reports/index.html"
exit $RC
