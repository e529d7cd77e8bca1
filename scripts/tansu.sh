#!/usr/bin/env bash
# Runs a Kafka-compatible broker (tansu) in the foreground, in memory, on
# 127.0.0.1:<port>. Used by the tests and benchmarks; install it with
# `cargo install tansu --features dynostore,libsql` (see DEVELOPERS.md).
# Usage: scripts/tansu.sh <port>
set -euo pipefail
port=${1:?usage: scripts/tansu.sh <port>}
PATH="$HOME/.cargo/bin:$PATH"
exec tansu broker \
  --listener-url "tcp://127.0.0.1:${port}" \
  --advertised-listener-url "tcp://127.0.0.1:${port}" \
  --storage-engine memory://tansu/
