#!/usr/bin/env bash
# Benchmark: raw RabbitMQ ceiling vs the duijie bus (outbox -> relay -> inbox), and bus latency
# at 1,000 msg/s offered. Builds in release mode; prints the figures. Extra arguments go to
# duijie-bench (see --help), e.g. scripts/bench.sh --messages 20000.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT_DIR"
"$SCRIPT_DIR/deps.sh" >/dev/null
# shellcheck source=/dev/null
. "$ROOT_DIR/target/duijie-env.sh"
cargo build --quiet --release -p duijie-bench
exec "$ROOT_DIR/target/release/duijie-bench" "$@"
