#!/usr/bin/env bash
# The one gate (STYLE.md rule 13): what CI runs, and what to run before pushing.
#   formatting, clippy with warnings as errors, every test, the docs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# A fresh machine may lack the toolchain components; install them.
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
fi

step "install the services the tests use (RabbitMQ, Prometheus, Chromium with Playwright, a Python venv with pika, py-consul and grpcio)"
scripts/install-services.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "build the binaries the tests start (qm-node, qm)"
cargo build --workspace --bins

step "cargo test"
cargo test --workspace

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo
echo "verify: all checks passed"
