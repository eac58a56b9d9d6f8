#!/usr/bin/env bash
# The test command: formatting, lints with warnings denied, and the whole test
# suite. Longer runs are the same tests with bigger numbers; see docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
