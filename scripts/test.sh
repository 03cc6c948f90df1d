#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, integration, generated files).
# Installs the system packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The web page's test (tests/web.rs) drives Debian's Chromium with playwright-core from npm.
if [ "${WSCHAT_SKIP_BROWSER:-}" != 1 ]; then
    if ! command -v chromium >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update
        $sudo apt-get install -y chromium
    fi
    if [ ! -d tests/web/node_modules/playwright-core ]; then
        npm ci --prefix tests/web --no-audit --no-fund
    fi
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
