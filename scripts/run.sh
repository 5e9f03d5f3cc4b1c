#!/usr/bin/env bash
# Brings the duijie bus up locally from nothing:
#   1. RabbitMQ and PostgreSQL (installed and started by scripts/deps.sh when missing);
#   2. the bus database migrated (outbox, inbox) and the topology declared for the demo agencies;
#   3. every service that exists (today: none yet besides the bus itself — the agency services
#      come with issue #4), then prints what runs where.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_TAG=run
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
cd "$ROOT_DIR"

redact_url() { sed -E 's#//([^:/]+):[^@]+@#//\1:***@#' <<<"$1"; }

"$SCRIPT_DIR/deps.sh" >/dev/null
# shellcheck source=/dev/null
. "$ROOT_DIR/target/duijie-env.sh"

# The demo agencies: one court, procuratorate, police station and petition office of district
# 431003, and a district mediation centre with a town and a village committee.
DEMO_NODES=(court:431003 procuratorate:431003 police:431003-01 petition:431003
	mediation:431003 mediation:431003-102 mediation:431003-102-05)

log "building the bus tools"
cargo build --quiet -p duijie-busctl
BUS="$ROOT_DIR/target/debug/duijie-bus"

"$BUS" migrate --database-url "$DUIJIE_DATABASE_URL" >&2
"$BUS" declare "${DEMO_NODES[@]}" >&2
# Development CA and one mTLS certificate per demo agency (subject CN <kind>:<code>).
"$BUS" certs --dir "$ROOT_DIR/target/pki" "${DEMO_NODES[@]}" >&2

cat <<INFO

duijie bus is up.
  RabbitMQ    $(redact_url "$DUIJIE_AMQP_URL")   (management: rabbitmqctl list_queues name messages consumers)
  PostgreSQL  $(redact_url "$DUIJIE_DATABASE_URL")   (psql -h 127.0.0.1 -U duijie duijie)
  exchanges   duijie.handoff (topic, routing key <kind>.<code>.<message>), duijie.dead (fanout)
  queues      duijie.audit.tap, duijie.dead, duijie.inbox.<kind>.<code> per demo agency
  mTLS        development CA and agency certificates in target/pki (CN <kind>:<code>)

Queue depths now:
INFO
"$BUS" status "${DEMO_NODES[@]}"
cat <<INFO

Services: none yet besides the bus (agency services: issue #4). Benchmark: scripts/bench.sh
Credentials for local use only: user duijie, password duijie.
INFO
