#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, integration, generated files).
# Installs the system packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
apt_updated=""
# Installs Debian packages, running `apt-get update` at most once per run.
apt_install() {
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update
        apt_updated=1
    fi
    $sudo apt-get install -y "$@"
}

# The scale-out tests (tests/redis.rs, the Redis store suite) start a real redis-server.
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi

# The web page's test (tests/web.rs) drives Debian's Chromium with playwright-core from npm.
if [ "${WSCHAT_SKIP_BROWSER:-}" != 1 ]; then
    if ! command -v chromium >/dev/null 2>&1; then
        apt_install chromium
    fi
    if [ ! -d tests/web/node_modules/playwright-core ]; then
        npm ci --prefix tests/web --no-audit --no-fund
    fi
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
