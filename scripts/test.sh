#!/usr/bin/env bash
# The test command: formatting, lints with warnings denied, and the whole test
# suite. Longer runs are the same tests with bigger numbers; see docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The real-process tests start shoald, shoal and shoal-bench from the target
# directory; build every binary first (cargo test alone builds only those of
# packages with integration tests).
echo "== cargo build --bins"
cargo build --workspace --locked --bins

echo "== cargo test"
cargo test --workspace --locked
