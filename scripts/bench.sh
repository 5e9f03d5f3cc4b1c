#!/usr/bin/env bash
# Benchmark: raw RabbitMQ ceiling vs the duijie bus (outbox -> relay -> inbox), and bus latency
# at 1,000 msg/s offered. Builds in release mode; prints the figures. Extra arguments go to
# duijie-bench (see --help), e.g. scripts/bench.sh --messages 20000.
# `scripts/bench.sh --audit` runs the audit store benchmark instead (10M log records).
# `scripts/bench.sh --system` runs the system benchmark instead: the real stack (the audit service
# and the five agency services, release builds, one process each) under N cases at C in flight,
# idle CPU, audit lag, the gate, and in the same run the audit append rate and the bus's rate
# (see duijie-system-bench --help).
# `scripts/bench.sh --topology` runs the topology benchmark instead: directories of 1,000, 10,000 and
# 100,000 agencies; the broker's queues, memory and declare time for each, and referrals to randomly
# chosen agencies through the real audit, court and mediation services (see
# duijie-bench --topology --help).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT_DIR"
"$SCRIPT_DIR/deps.sh" >/dev/null
# shellcheck source=/dev/null
. "$ROOT_DIR/target/duijie-env.sh"
if [ "${1:-}" = --system ]; then
	shift
	cargo build --quiet --release -p duijie-bench -p duijie-audit -p duijie-court -p duijie-procuratorate \
		-p duijie-police -p duijie-petition -p duijie-mediation
	exec "$ROOT_DIR/target/release/duijie-system-bench" "$@"
fi
if [ "${1:-}" = --topology ]; then
	shift
	cargo build --quiet --release -p duijie-bench -p duijie-audit -p duijie-court -p duijie-mediation
	exec "$ROOT_DIR/target/release/duijie-bench" --topology "$@"
fi
cargo build --quiet --release -p duijie-bench
# scripts/bench.sh --audit [args]: the audit store at 10M records (see duijie-audit-bench --help).
if [ "${1:-}" = --audit ]; then
	shift
	exec "$ROOT_DIR/target/release/duijie-audit-bench" "$@"
fi
exec "$ROOT_DIR/target/release/duijie-bench" "$@"
