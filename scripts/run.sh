#!/usr/bin/env bash
# Brings the duijie bus up locally from nothing:
#   1. RabbitMQ and PostgreSQL (installed and started by scripts/deps.sh when missing);
#   2. the bus database migrated (outbox, inbox) and the topology declared (partition queues per
#      service kind and for the audit tap, the same for any number of agencies; as the broker's
#      operator, duijie), and each service's own broker user made with its
#      permissions (duijie-bus permissions);
#   3. the five agency services (court, procuratorate, police, petition, mediation), each acting
#      for every agency of its kind in config/directory.yaml, with its own database, in the background (logs and pids in target/run);
#      services already running from an earlier run are restarted on the fresh build;
#   4. the web console (http://127.0.0.1:8080), signing in as any demo agency;
#   5. a small demo data set (36 cases in different states across the four channels, sent and
#      handled through the services by `duijie demo`; a rerun adds nothing twice);
#   6. prints what runs where and how to reach it.
# `scripts/run.sh stop` stops the services (RabbitMQ and PostgreSQL keep running).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_TAG=run
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
cd "$ROOT_DIR"

redact_url() { sed -E 's#//([^:/]+):[^@]+@#//\1:***@#' <<<"$1"; }

# The audit service first: agency services take new referrals only while it records.
SERVICES=(audit court procuratorate police petition mediation console)
RUN_DIR="$ROOT_DIR/target/run"
mkdir -p "$RUN_DIR"

stop_services() {
	local svc pid
	for svc in "${SERVICES[@]}"; do
		[ -f "$RUN_DIR/$svc.pid" ] || continue
		pid=$(cat "$RUN_DIR/$svc.pid")
		# Only our own process: a stale pid file may name a reused pid.
		if kill -0 "$pid" 2>/dev/null && grep -q "duijie-$svc" "/proc/$pid/cmdline" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			# Graceful: the service drains its calls and tasks (grace 10 s) before exiting.
			wait_for 20 "duijie-$svc to stop" bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
			log "stopped duijie-$svc (pid $pid)"
		fi
		rm -f "$RUN_DIR/$svc.pid"
	done
}

if [ "${1:-}" = stop ]; then
	stop_services
	exit 0
fi

"$SCRIPT_DIR/deps.sh" >/dev/null
# shellcheck source=/dev/null
. "$ROOT_DIR/target/duijie-env.sh"

# The demo agencies: one court, procuratorate, police station and petition office of district
# 431003, and a district mediation centre with a town and a village committee.
DEMO_NODES=(court:431003 procuratorate:431003 police:431003-01 petition:431003
	mediation:431003 mediation:431003-102 mediation:431003-102-05)

log "building the bus tools, the audit service, the five agency services, the console and the CLI"
cargo build --quiet -p duijie-busctl -p duijie-audit -p duijie-court -p duijie-procuratorate -p duijie-police -p duijie-petition -p duijie-mediation \
	-p duijie-console -p duijie-cli
BUS="$ROOT_DIR/target/debug/duijie-bus"

"$BUS" migrate --database-url "$DUIJIE_DATABASE_URL" >&2
"$BUS" declare >&2
# Each service's own broker user (README, "Broker credentials"): the permissions `duijie-bus
# permissions` prints, the password deps.sh put in target/duijie-env.sh; `duijie`, the operator's,
# only declares. One `rabbitmqctl eval` for all six (each rabbitmqctl call costs about a second);
# idempotent: an existing user gets its password, tags and permissions set again.
broker_users() {
	local expr='A = <<"duijie-run">>, ' svc conf write read var pass user
	while IFS=$'\t' read -r svc conf write read; do
		var=DUIJIE_BROKER_PASSWORD_${svc^^}
		pass=${!var:-}
		[ -n "$pass" ] || die "$var is not set: run scripts/deps.sh (it writes target/duijie-env.sh)"
		case $pass$conf$write$read in *'"'* | *'\'*) die "$var or a permission holds a quote or backslash" ;; esac
		user="<<\"duijie-$svc\">>"
		expr+="case rabbit_auth_backend_internal:lookup_user($user) of {ok, _} -> ok = rabbit_auth_backend_internal:change_password($user, <<\"$pass\">>, A); _ -> ok = rabbit_auth_backend_internal:add_user($user, <<\"$pass\">>, A) end, "
		expr+="ok = rabbit_auth_backend_internal:set_tags($user, [], A), "
		expr+="ok = rabbit_auth_backend_internal:set_permissions($user, <<\"/\">>, <<\"$conf\">>, <<\"$write\">>, <<\"$read\">>, A), "
	done < <("$BUS" permissions)
	# The expression holds the passwords: never echoed, and not in the error message.
	[ "$(as_root rabbitmqctl -q eval "${expr}ok." 2>/dev/null </dev/null)" = ok ] ||
		die "creating the services' broker users failed (rabbitmqctl eval; RabbitMQ 3.10's internal API)"
	log "broker users duijie-{court,procuratorate,police,petition,mediation,audit} ok (duijie-bus permissions)"
}
broker_users
# Development CA, one mTLS certificate per demo agency (subject CN <kind>:<code>) and a server
# certificate per service. A CA from before the services had certificates is replaced.
if [ -f "$ROOT_DIR/target/pki/ca.pem" ] && [ ! -f "$ROOT_DIR/target/pki/service-audit.pem" ]; then
	rm -rf "$ROOT_DIR/target/pki"
fi
SERVICE_ARGS=()
for svc in "${SERVICES[@]}"; do SERVICE_ARGS+=(--service "$svc"); done
# The district's supervisor (综治中心) reads the audit store's statistics and all its cases.
"$BUS" certs --dir "$ROOT_DIR/target/pki" "${SERVICE_ARGS[@]}" "${DEMO_NODES[@]}" supervisor:431003 >&2

stop_services
port_of() { sed -nE 's/^ *listen: *[^:]+:([0-9]+).*/\1/p' "$ROOT_DIR/config/$1/base.yaml"; }
metrics_port_of() { sed -nE 's/^metrics: *\{ *listen: *"?[^:]+:([0-9]+).*/\1/p' "$ROOT_DIR/config/$1/base.yaml"; }
# Our own services are stopped now: a port still taken belongs to another program, and a
# service started beside it would fail to bind while the check below saw the port open.
for svc in "${SERVICES[@]}"; do
	for port in "$(port_of "$svc")" "$(metrics_port_of "$svc")"; do
		if port_open 127.0.0.1 "$port"; then
			die "port $port (duijie-$svc, config/$svc/base.yaml) is taken by another program; nothing was started"
		fi
	done
done
# Secrets reach the services through the environment, never through the config files.
DB_BASE=${DUIJIE_DATABASE_URL%/*}
export DUIJIE_DATABASE__PASSWORD=duijie
# The audit service derives the parties' access codes (当事人查询码) from this; local use only.
export DUIJIE_AUDIT__LOOKUP__ACCESS_CODE_SECRET=duijie-local-access-codes
# The master key that wraps every case's data key (README, Party data): made once for this
# checkout (target/audit-master-key), readable by its owner only. Losing it loses the
# parties' data of every local case.
MASTER_KEY_FILE="$ROOT_DIR/target/audit-master-key"
if [ ! -s "$MASTER_KEY_FILE" ]; then
	(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$MASTER_KEY_FILE")
fi
DUIJIE_AUDIT__KEYS__MASTER_KEY=$(cat "$MASTER_KEY_FILE")
export DUIJIE_AUDIT__KEYS__MASTER_KEY
for svc in "${SERVICES[@]}"; do
	if [ "$svc" != console ]; then
		"$BUS" migrate --database-url "$DB_BASE/duijie_$svc" >/dev/null # creates the database if missing
	fi
	# Each service on its own broker user (the console speaks no AMQP).
	url_var=DUIJIE_AMQP_URL_${svc^^}
	amqp_env=()
	[ "$svc" = console ] || amqp_env=("DUIJIE_AMQP__URL=${!url_var:?run scripts/deps.sh: target/duijie-env.sh has no $url_var}")
	env "${amqp_env[@]}" DUIJIE_CONFIG_DIR="$ROOT_DIR/config/$svc" nohup "$ROOT_DIR/target/debug/duijie-$svc" \
		>"$RUN_DIR/$svc.log" 2>&1 </dev/null &
	echo $! >"$RUN_DIR/$svc.pid"
done
# Up when it listens; given up on as soon as the process exits.
listening_or_dead() { port_open 127.0.0.1 "$2" || ! kill -0 "$1" 2>/dev/null; }
for svc in "${SERVICES[@]}"; do
	pid=$(cat "$RUN_DIR/$svc.pid")
	wait_for 60 "duijie-$svc to listen" listening_or_dead "$pid" "$(port_of "$svc")" || true
	if ! kill -0 "$pid" 2>/dev/null || ! port_open 127.0.0.1 "$(port_of "$svc")"; then
		tail -20 "$RUN_DIR/$svc.log" >&2 || true
		# A start that fails partway stops what it started: otherwise those keep their ports and
		# the next start fails on them.
		stop_services
		die "duijie-$svc did not start (the services started with it are stopped again); log: $RUN_DIR/$svc.log"
	fi
done
log "the audit service, the five agency services and the console are up"

# Demo data through the real services (same seed, same cases: a rerun adds nothing twice).
DUIJIE="$ROOT_DIR/target/debug/duijie"
log "loading the demo data set (36 cases across the four channels)"
"$DUIJIE" demo --cases 36 --mixed --seed 1 >"$RUN_DIR/demo.log" 2>&1 || {
	tail -20 "$RUN_DIR/demo.log" >&2
	stop_services
	die "loading the demo data failed (the services are stopped again); log: $RUN_DIR/demo.log"
}

cat <<INFO

duijie bus is up.
  RabbitMQ    $(redact_url "$DUIJIE_AMQP_URL")   (management: rabbitmqctl list_queues name messages consumers)
  PostgreSQL  $(redact_url "$DUIJIE_DATABASE_URL")   (psql -h 127.0.0.1 -U duijie duijie)
  exchanges   duijie.handoff (topic, routing key <kind>.<code>.<message>), duijie.dead (fanout)
  queues      duijie.inbox.<kind>.p0..p3 (partitions by case, whatever the number of agencies),
              duijie.audit.tap.p0..p3, duijie.dead
  mTLS        development CA and agency certificates in target/pki (CN <kind>:<code>)
  signing     every envelope is signed with its sending node's key from target/pki (README, Signed handoffs)
  party data  sealed per case; the audit service's master key is target/audit-master-key (README, Party data)

Web console:  http://127.0.0.1:$(port_of console)/   (Simplified Chinese; pick an identity to sign in)
  Demo identities (each backed by its certificate in target/pki):
    court:431003              苏仙区人民法院 (court filing desk, 诉调)
    procuratorate:431003      苏仙区人民检察院 (检调)
    police:431003-01          苏仙公安分局城南派出所 (警调)
    petition:431003           苏仙区信访局 (访调)
    mediation:431003          苏仙区矛盾纠纷调解中心 (district mediation centre: inbox of all channels)
    mediation:431003-102      白露塘镇人民调解委员会 (town committee)
    mediation:431003-102-05   塘溪村人民调解委员会 (village committee)
    supervisor:431003         苏仙区综治中心 (supervisor: statistics dashboard)
  Demo data: 36 cases in different states ($RUN_DIR/demo.log)
  Parties' lookup (当事人查询, no sign-in): http://127.0.0.1:$(port_of console)/lookup  (a case page shows its 查询码)

Command line: target/debug/duijie --help   (send, intake, watch, timeline, overdue, stats, verify, dead, demo)

Services (gRPC over mTLS; health, reflection and duijie.v1.SessionService on each):
  audit          127.0.0.1:$(port_of audit)   the audit store (log of every handoff)    AuditService
  court          127.0.0.1:$(port_of court)   court:431003                      CasesService, ReferralsService, CourtService
  procuratorate  127.0.0.1:$(port_of procuratorate)   procuratorate:431003              CasesService, ReferralsService, ProcuratorateService
  police         127.0.0.1:$(port_of police)   police:431003-01                  CasesService, ReferralsService, PoliceService
  petition       127.0.0.1:$(port_of petition)   petition:431003                   CasesService, ReferralsService, PetitionService
  mediation      127.0.0.1:$(port_of mediation)   mediation:431003 (district centre), :431003-102 (town),
                                   :431003-102-05 (village)          CasesService, MediationService
  Call as an agency with its certificate, e.g. with grpcurl:
    grpcurl -cacert target/pki/ca.pem -cert target/pki/court-431003.pem -key target/pki/court-431003-key.pem
            127.0.0.1:$(port_of court) duijie.v1.CasesService/ListCases   (one command line)
  console        127.0.0.1:$(port_of console)    the web console (HTTP; calls the services with each agency's certificate)
  Logs: target/run/<service>.log   Stop: scripts/run.sh stop

Metrics (Prometheus text; README, Metrics), e.g. curl -s http://127.0.0.1:$(metrics_port_of court)/metrics:
  audit http://127.0.0.1:$(metrics_port_of audit)/metrics   court :$(metrics_port_of court)   procuratorate :$(metrics_port_of procuratorate)   police :$(metrics_port_of police)
  petition :$(metrics_port_of petition)   mediation :$(metrics_port_of mediation)   console :$(metrics_port_of console)

Audit store and dead letters from the command line (as the district supervisor by default):
  target/debug/duijie timeline JF-431003-2026-D1M-0001      target/debug/duijie watch <case> --until closed
  target/debug/duijie stats --region 431003                 target/debug/duijie overdue | open | verify
  target/debug/duijie dead list                             target/debug/duijie dead replay --id <message id>
  target/debug/duijie --as mediation:431003 watch           (an agency's case changes as they happen: its live feed)

  target/debug/duijie intake services/cli/examples/intake.yaml   (a dispute the centre took in itself: 自行受理)

What is configured (config/directory.yaml), which agencies a service serves, queue depths and
the audit gates now (again any time: target/debug/duijie-bus status):
INFO
"$BUS" status --directory "$ROOT_DIR/config/directory.yaml"
cat <<INFO

Benchmark: scripts/bench.sh
Credentials for local use only: user duijie, password duijie (PostgreSQL; RabbitMQ's operator,
who declares). Each service connects to RabbitMQ as its own user, duijie-<service>, which may only
read its own queues and publish to the bus's exchanges (passwords in target/duijie-env.sh).
INFO
