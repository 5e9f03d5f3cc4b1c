#!/usr/bin/env bash
# Bring up the local dependencies of duijie (PostgreSQL + RabbitMQ) without
# systemd or Docker, idempotently.
#
# Usage: scripts/deps.sh [--fault] [--cluster]
#
#   (no flag)  main PostgreSQL cluster <ver>/main (5432) and RabbitMQ node
#              rabbit@<hostname -s> (AMQP 5672), role/user duijie/duijie
#              (the broker's operator: administrator; `guest` is deleted).
#              Each service's own broker user (duijie-court, …, duijie-audit)
#              is made by scripts/run.sh, with the permissions `duijie-bus
#              permissions` prints; their passwords are set here: the
#              environment's DUIJIE_BROKER_PASSWORD_<SERVICE>, else a local-only
#              default, and written to target/duijie-env.sh only (not stdout).
#              The node's open files are raised to the hard limit (a marked
#              line in /etc/rabbitmq/rabbitmq-env.conf, from its next start).
#   --fault    additionally a second RabbitMQ node duijie-fault@localhost
#              (AMQP 5673, dist 25673) and a second PostgreSQL cluster
#              <ver>/fault (5433) that fault-injection tests may restart;
#              proves that restarting both works and reports the timings.
#   --cluster  additionally a three-node RabbitMQ cluster for cluster fault
#              tests: duijie-c1@localhost, duijie-c2@localhost and
#              duijie-c3@localhost (AMQP 5681-5683, dist 25681-25683), each
#              with its own config, data and log directories under
#              /etc/rabbitmq, /var/lib/rabbitmq and /var/log/rabbitmq
#              (duijie-cN), the system Erlang cookie, c2 and c3 joined to c1;
#              user duijie as on the main node, no guest; partition handling
#              autoheal, net_ticktime 10 s, modest memory (rabbit_cluster_conf).
#              A node that is down is started again (rejoined if it left, its
#              app restarted if it is partitioned from the others). The URLs go
#              to target/duijie-env.sh only (DUIJIE_CLUSTER_AMQP_URLS, comma-
#              separated, with passwords); the node names, their env and pid
#              files to stdout too (DUIJIE_CLUSTER_RABBIT_*). Tests restart a
#              node as rabbit_start does.
#
# Every RabbitMQ node (main, fault, cluster) has the plugin
# rabbitmq_consistent_hash_exchange enabled (shipped with RabbitMQ).
#
# Progress goes to stderr (one line per step). Stdout carries only VAR=value
# lines, so callers can do:  eval "$(scripts/deps.sh)"
# The same lines (with `export `) are written to target/duijie-env.sh.
#
# Environment knobs:
#   DUIJIE_DEPS_RESTART_PROOF=auto|always|never   (default auto)
#       with --fault, restart the fault servers once to prove it works and
#       print the timings; "auto" does it only when this run created or
#       (re)started a fault server (first bring-up, CI), so re-runs stay fast.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_TAG=deps
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"; }

FAULT=0
CLUSTER=0
for arg in "$@"; do
	case $arg in
	--fault) FAULT=1 ;;
	--cluster) CLUSTER=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument: $arg (usage: scripts/deps.sh [--fault] [--cluster])" ;;
	esac
done

# ---------------------------------------------------------------- settings --
APP_USER=duijie
APP_PASS=duijie
APP_DB=duijie

PG_MAIN_CLUSTER=main
PG_MAIN_MIN_CONN=300
PG_FAULT_CLUSTER=fault
PG_FAULT_PORT=5433
PG_FAULT_MIN_CONN=100
PG_WAIT=60

RABBIT_MAIN_PORT=5672
RABBIT_FAULT_NODE=duijie-fault@localhost
RABBIT_FAULT_PORT=5673
RABBIT_FAULT_DIST_PORT=25673
RABBIT_FAULT_CONF_DIR=/etc/rabbitmq/duijie-fault
RABBIT_FAULT_ENV_FILE=$RABBIT_FAULT_CONF_DIR/rabbitmq-env.conf
RABBIT_FAULT_DATA_DIR=/var/lib/rabbitmq/duijie-fault
RABBIT_FAULT_LOG_DIR=/var/log/rabbitmq/duijie-fault
RABBIT_FAULT_PID_FILE=$RABBIT_FAULT_DATA_DIR/$RABBIT_FAULT_NODE.pid
RABBIT_WAIT=90
# Plugins every node needs (the topology's partitioned queues use the consistent-hash exchange).
RABBIT_PLUGINS=(rabbitmq_consistent_hash_exchange)

# The three-node cluster (--cluster): node i has AMQP port RABBIT_CLUSTER_PORTS[i] and dist
# port RABBIT_CLUSTER_DIST_PORTS[i]; directories as for the fault node (rabbit_conf_dir, ...).
RABBIT_CLUSTER_NODES=(duijie-c1@localhost duijie-c2@localhost duijie-c3@localhost)
RABBIT_CLUSTER_PORTS=(5681 5682 5683)
RABBIT_CLUSTER_DIST_PORTS=(25681 25682 25683)

START_TS=$SECONDS

# Serialise concurrent invocations (several engineers / CI jobs on one box).
# Re-run ourselves under `flock -o` so that the lock fd is NOT inherited by the
# daemons we start (they would otherwise hold the lock forever).
LOCK_FILE=${TMPDIR:-/tmp}/duijie-deps.$(id -u).lock  # per user: /tmp is sticky (protected_regular)
if [ -z "${DUIJIE_DEPS_LOCKED:-}" ] && have flock; then
	rc=0
	DUIJIE_DEPS_LOCKED=1 flock -o -E 75 -w 600 "$LOCK_FILE" bash "${BASH_SOURCE[0]}" "$@" || rc=$?
	[ "$rc" -ne 75 ] || die "another scripts/deps.sh still holds $LOCK_FILE after 600s"
	exit "$rc"
fi

# ---------------------------------------------------------------- packages --
pg_server_versions() {
	local d
	for d in /usr/lib/postgresql/*/bin/postgres; do
		[ -x "$d" ] || continue
		d=${d#/usr/lib/postgresql/}
		echo "${d%%/*}"
	done | sort -V
}

ensure_packages() {
	local missing=()
	if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! have rabbitmqctl; then
		missing+=(rabbitmq-server)
	fi
	if [ -z "$(pg_server_versions)" ] || ! have pg_ctlcluster || ! have pg_createcluster || ! have psql; then
		missing+=(postgresql)
	fi
	if [ ${#missing[@]} -eq 0 ]; then
		log "packages: rabbitmq-server and postgresql already installed"
		return
	fi
	have apt-get || die "missing ${missing[*]} and apt-get is not available"
	log "packages: installing ${missing[*]} (apt-get update + install)"
	quiet as_root apt-get update -q || die "apt-get update failed"
	quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" ||
		die "apt-get install ${missing[*]} failed"
	if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! have rabbitmqctl; then
		die "rabbitmq-server still missing after install"
	fi
	[ -n "$(pg_server_versions)" ] || die "PostgreSQL server still missing after install"
}

# -------------------------------------------------------------- PostgreSQL --
# pg_field VER NAME COLUMN -> column of `pg_lsclusters -h` (3 port, 4 status, 7 log)
pg_field() {
	pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v c="$2" -v f="$3" '$1 == v && $2 == c { print $f; exit }'
}

pg_pick_version() {
	local v best=""
	# Prefer the newest version that already has a 'main' cluster with a server binary.
	for v in $(pg_lsclusters -h 2>/dev/null | awk -v c="$PG_MAIN_CLUSTER" '$2 == c { print $1 }' | sort -V); do
		[ -x "/usr/lib/postgresql/$v/bin/postgres" ] && best=$v
	done
	[ -n "$best" ] || best=$(pg_server_versions | tail -n1)
	[ -n "$best" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
	echo "$best"
}

# psql as the postgres superuser over the local socket
pg_super() {
	local port=$1
	shift
	as_user postgres psql -X -A -t -q -v ON_ERROR_STOP=1 -p "$port" -d postgres "$@"
}

pg_wait_ready() {
	local ver=$1 name=$2 port=$3
	wait_for "$PG_WAIT" "PostgreSQL $ver/$name on 127.0.0.1:$port" pg_isready -q -h 127.0.0.1 -p "$port" ||
		die "PostgreSQL $ver/$name is not accepting connections on 127.0.0.1:$port after ${PG_WAIT}s; see $(pg_field "$ver" "$name" 7)"
}

# pg_ensure_cluster VER NAME WANT_PORT(or "") MIN_CONN
# Sets PG_PORT (the cluster's port) and PG_CHANGED=1 if it had to create/start it.
pg_ensure_cluster() {
	local ver=$1 name=$2 want_port=$3 min_conn=$4 status port cur what=""
	PG_CHANGED=0
	if [ -z "$(pg_field "$ver" "$name" 1)" ]; then
		local args=("$ver" "$name")
		[ -z "$want_port" ] || args+=(--port "$want_port")
		quiet as_root pg_createcluster "${args[@]}" -- ||
			die "pg_createcluster ${args[*]} failed"
		what="created, "
		PG_CHANGED=1
	fi
	port=$(pg_field "$ver" "$name" 3)
	status=$(pg_field "$ver" "$name" 4)
	if [ -n "$want_port" ] && [ "$port" != "$want_port" ]; then
		warn "PostgreSQL $ver/$name is configured for port $port, not $want_port; using $port"
	fi
	case $status in
	online*) ;;
	*)
		quiet as_root pg_ctlcluster "$ver" "$name" start ||
			die "pg_ctlcluster $ver $name start failed; see $(pg_field "$ver" "$name" 7)"
		what="${what}started, "
		PG_CHANGED=1
		;;
	esac
	pg_wait_ready "$ver" "$name" "$port"

	cur=$(pg_super "$port" -c 'SHOW max_connections') || die "cannot query PostgreSQL $ver/$name as postgres"
	if [ "$cur" -lt "$min_conn" ]; then
		quiet pg_super "$port" -c "ALTER SYSTEM SET max_connections = $min_conn" || die "ALTER SYSTEM failed on $ver/$name"
		quiet as_root pg_ctlcluster "$ver" "$name" restart -m fast ||
			die "pg_ctlcluster $ver $name restart failed; see $(pg_field "$ver" "$name" 7)"
		pg_wait_ready "$ver" "$name" "$port"
		cur=$(pg_super "$port" -c 'SHOW max_connections')
		[ "$cur" -ge "$min_conn" ] || die "max_connections on $ver/$name is $cur after restart (wanted >= $min_conn)"
		what="${what}max_connections raised, "
		PG_CHANGED=1
	fi
	log "postgres $ver/$name: ${what}online on 127.0.0.1:$port (max_connections=$cur)"
	PG_PORT=$port
}

pg_login_ok() {
	local port=$1
	[ "$(PGPASSWORD=$APP_PASS PGCONNECT_TIMEOUT=5 psql -X -A -t -q -h 127.0.0.1 -p "$port" -U "$APP_USER" -d "$APP_DB" \
		-c 'select 1' 2>/dev/null </dev/null)" = 1 ]
}

# pg_ensure_app VER NAME PORT: role + database + verified TCP password login
pg_ensure_app() {
	local ver=$1 name=$2 port=$3 state what="" hba
	# one round trip: "<role ok>|<db owner or empty>"
	state=$(pg_super "$port" -c "SELECT
		coalesce((SELECT rolcanlogin AND rolcreatedb AND pg_has_role(oid, 'pg_signal_backend', 'MEMBER')
		          FROM pg_roles WHERE rolname = '$APP_USER'), false)::text
		|| '|' || coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$APP_DB'), '')") ||
		die "cannot query roles on PostgreSQL $ver/$name"
	if [ "${state%%|*}" != true ]; then
		quiet pg_super "$port" -c "DO \$\$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP_USER') THEN
				CREATE ROLE $APP_USER LOGIN CREATEDB PASSWORD '$APP_PASS';
			ELSE
				ALTER ROLE $APP_USER LOGIN CREATEDB PASSWORD '$APP_PASS';
			END IF;
			-- Tests drop their databases WITH (FORCE), which must also end an autovacuum worker
			-- that happens to be in one (not a process of $APP_USER's).
			GRANT pg_signal_backend TO $APP_USER; END \$\$" || die "creating role $APP_USER on $ver/$name failed"
		what="role created/updated, "
	fi
	case ${state#*|} in
	"$APP_USER") ;;
	"")
		quiet pg_super "$port" -c "CREATE DATABASE $APP_DB OWNER $APP_USER" || die "CREATE DATABASE $APP_DB on $ver/$name failed"
		what="${what}database created, "
		;;
	*)
		quiet pg_super "$port" -c "ALTER DATABASE $APP_DB OWNER TO $APP_USER" || die "ALTER DATABASE $APP_DB on $ver/$name failed"
		what="${what}database owner fixed, "
		;;
	esac
	if ! pg_login_ok "$port"; then
		# Maybe the password differs (role pre-existed) or pg_hba has no
		# password rule for 127.0.0.1: fix both, then re-check.
		quiet pg_super "$port" -c "ALTER ROLE $APP_USER LOGIN CREATEDB PASSWORD '$APP_PASS'" || true
		if ! pg_login_ok "$port"; then
			hba=$(pg_super "$port" -c 'SHOW hba_file')
			warn "adding 'host all $APP_USER 127.0.0.1/32 scram-sha-256' to the top of $hba"
			quiet as_root sed -i "1i host all $APP_USER 127.0.0.1/32 scram-sha-256  # added by duijie scripts/deps.sh" "$hba"
			quiet as_root pg_ctlcluster "$ver" "$name" reload || true
			sleep 1
		fi
		pg_login_ok "$port" || die "password login 'PGPASSWORD=$APP_PASS psql -h 127.0.0.1 -p $port -U $APP_USER -d $APP_DB' fails on $ver/$name; see $(pg_field "$ver" "$name" 7)"
		what="${what}login fixed, "
	fi
	log "postgres $ver/$name: ${what}role/database $APP_USER ok, password login over 127.0.0.1:$port ok"
}

# ---------------------------------------------------------------- RabbitMQ --
# Always go through the Debian wrapper /usr/sbin/rabbitmqctl (via as_root): as
# root it switches to the rabbitmq user, whose HOME=/var/lib/rabbitmq holds the
# Erlang cookie that the servers (also started as rabbitmq) use.
rmqctl() { as_root rabbitmqctl "$@"; }
rmqdiag() { as_root rabbitmq-diagnostics "$@"; }

rabbit_log_hint() {
	local node=$1 logdir=$2
	echo "see $logdir/$node.log"
}

# Where a node other than the main one keeps everything (the fault node and the cluster
# nodes): NAME@localhost has /etc/rabbitmq/NAME (rabbitmq-env.conf, rabbitmq.conf,
# advanced.config, enabled_plugins), /var/lib/rabbitmq/NAME (mnesia, pid file) and
# /var/log/rabbitmq/NAME.
rabbit_conf_dir() { echo "/etc/rabbitmq/${1%@*}"; }
rabbit_data_dir() { echo "/var/lib/rabbitmq/${1%@*}"; }
rabbit_log_dir() { echo "/var/log/rabbitmq/${1%@*}"; }
rabbit_env_file() { echo "$(rabbit_conf_dir "$1")/rabbitmq-env.conf"; }
rabbit_pid_file() { echo "$(rabbit_data_dir "$1")/$1.pid"; }

# rabbit_start NODE: start the node detached (as rabbitmq via the wrapper); every node but
# the main one with its own RABBITMQ_CONF_ENV_FILE. Tests restart a node the same way.
rabbit_start() {
	local node=$1
	if [ "$node" != "$RABBIT_MAIN_NODE" ]; then
		# a pid file left by a killed node would confuse `rabbitmqctl wait`
		as_root rm -f "$(rabbit_pid_file "$node")"
		quiet as_root env RABBITMQ_CONF_ENV_FILE="$(rabbit_env_file "$node")" rabbitmq-server -detached
	else
		quiet as_root rabbitmq-server -detached
	fi
}

# rabbit_ensure_running NODE AMQP_PORT LOGDIR  (sets RABBIT_CHANGED=1 if it started something)
rabbit_ensure_running() {
	local node=$1 port=$2 logdir=$3 what="running"
	RABBIT_CHANGED=0
	if ! rmqdiag -q -n "$node" check_running >/dev/null 2>&1 </dev/null; then
		RABBIT_CHANGED=1
		if rmqdiag -q -n "$node" ping >/dev/null 2>&1 </dev/null; then
			# Erlang VM up but the rabbit app stopped (e.g. after stop_app)
			quiet rmqctl -q -n "$node" start_app || die "rabbitmqctl -n $node start_app failed; $(rabbit_log_hint "$node" "$logdir")"
			what="app started"
		else
			# A node that was just told to stop may still hold its port for a
			# few seconds (`rabbitmqctl stop` returns before the VM exits).
			wait_for 30 "port $port to be released" port_free "$port" ||
				die "port $port is in use but RabbitMQ node $node does not answer (wrong Erlang cookie or foreign process?); check 'ss -ltnp' and /var/lib/rabbitmq/.erlang.cookie"
			rabbit_start "$node" || die "rabbitmq-server -detached for $node failed; $(rabbit_log_hint "$node" "$logdir")"
			what="started"
		fi
		wait_for "$RABBIT_WAIT" "RabbitMQ $node startup" rmqctl -q -n "$node" await_startup --timeout 10 || {
			tail -n 20 "$logdir/$node.log" 2>/dev/null | sed 's/^/    /' >&2 || true
			die "RabbitMQ $node did not start within ${RABBIT_WAIT}s; $(rabbit_log_hint "$node" "$logdir")"
		}
		quiet rmqdiag -q -n "$node" check_port_connectivity ||
			die "RabbitMQ $node: check_port_connectivity failed; $(rabbit_log_hint "$node" "$logdir")"
	fi
	wait_for 10 "AMQP port 127.0.0.1:$port" port_open 127.0.0.1 "$port" ||
		die "RabbitMQ $node runs but 127.0.0.1:$port does not accept connections; $(rabbit_log_hint "$node" "$logdir")"
	log "rabbitmq $node: $what, AMQP 127.0.0.1:$port accepts connections"
}

# Erlang for `rabbitmqctl eval`: declare and delete a durable quorum queue
# through the broker's own API; evaluates to rabbit_quorum_queue.
RABBIT_QQ_PROBE='QN = rabbit_misc:r(<<"/">>, queue, <<"duijie.deps.quorum-probe">>),
{_, Q} = rabbit_amqqueue:declare(QN, true, false, [{<<"x-queue-type">>, longstr, <<"quorum">>}], none, <<"duijie-deps">>),
T = amqqueue:get_type(Q),
{ok, _} = rabbit_amqqueue:delete(Q, false, false, <<"duijie-deps">>),
T'

# Everything rabbit_ensure_running + rabbit_ensure_app would check, in ONE
# `rabbitmqctl eval` (each CLI call costs ~0.5-1 s of Erlang boot). Uses broker
# internals of 3.10; if it fails for any reason we just take the slow path.
RABBIT_QUICK_CHECK="U = <<\"$APP_USER\">>,
true = rabbit:is_running(),
{error, not_found} = rabbit_auth_backend_internal:lookup_user(<<\"guest\">>),
{ok, IU} = rabbit_auth_backend_internal:lookup_user(U),
true = lists:member(administrator, internal_user:get_tags(IU)),
{ok, _} = rabbit_access_control:check_user_pass_login(U, <<\"$APP_PASS\">>),
true = lists:member([{vhost, <<\"/\">>}, {configure, <<\".*\">>}, {write, <<\".*\">>}, {read, <<\".*\">>}],
                    rabbit_auth_backend_internal:list_user_permissions(U)),
[] = maps:keys(rabbit_feature_flags:list(disabled, stable)),
[] = [P || P <- [$(IFS=,; echo "${RABBIT_PLUGINS[*]}")], not lists:keymember(P, 1, application:which_applications(10000))],
rabbit_quorum_queue = begin $RABBIT_QQ_PROBE end,
ok."

# rabbit_quick_check NODE AMQP_PORT: true if the node is fully set up already
rabbit_quick_check() {
	local out
	out=$(rmqctl -q -n "$1" eval "$RABBIT_QUICK_CHECK" 2>/dev/null </dev/null) || return 1
	[ "$out" = ok ] && port_open 127.0.0.1 "$2"
}

# rabbit_ensure_app NODE: user duijie (administrator, full perms on /), feature flags, quorum queues
rabbit_ensure_app() {
	local node=$1 what="" users perms flags out
	users=$(rmqctl -q -n "$node" list_users --no-table-headers </dev/null) || die "rabbitmqctl -n $node list_users failed"
	if ! grep -qE "^${APP_USER}[[:space:]]" <<<"$users"; then
		quiet rmqctl -q -n "$node" add_user "$APP_USER" "$APP_PASS" || die "add_user $APP_USER on $node failed"
		what="user created, "
	elif ! quiet rmqctl -q -n "$node" authenticate_user "$APP_USER" "$APP_PASS" 2>/dev/null; then
		quiet rmqctl -q -n "$node" change_password "$APP_USER" "$APP_PASS" || die "change_password $APP_USER on $node failed"
		what="password reset, "
	fi
	if ! grep -qE "^${APP_USER}[[:space:]]+\[(.*[[:space:]])?administrator[],]" <<<"$users"; then
		quiet rmqctl -q -n "$node" set_user_tags "$APP_USER" administrator || die "set_user_tags on $node failed"
		what="${what}tags set, "
	fi
	perms=$(rmqctl -q -n "$node" list_permissions -p / --no-table-headers </dev/null) || die "list_permissions on $node failed"
	if ! grep -qxF "$APP_USER"$'\t.*\t.*\t.*' <<<"$perms"; then
		quiet rmqctl -q -n "$node" set_permissions -p / "$APP_USER" '.*' '.*' '.*' || die "set_permissions on $node failed"
		what="${what}permissions set, "
	fi
	flags=$(rmqctl -q -n "$node" list_feature_flags name state --no-table-headers </dev/null) || die "list_feature_flags on $node failed"
	if grep -qvE '[[:space:]]enabled$' <<<"$flags"; then
		quiet rmqctl -q -n "$node" enable_feature_flag all || die "enable_feature_flag all on $node failed"
		what="${what}feature flags enabled, "
	fi
	# guest (administrator, password guest) is what anyone tries first.
	if grep -qE "^guest[[:space:]]" <<<"$users"; then
		quiet rmqctl -q -n "$node" delete_user guest || die "delete_user guest on $node failed"
		what="${what}guest deleted, "
	fi
	rabbit_ensure_plugins "$node"
	[ "$RABBIT_PLUGINS_CHANGED" = 0 ] || what="${what}plugins enabled, "
	out=$(rmqctl -q -n "$node" eval "$RABBIT_QQ_PROBE." 2>&1 </dev/null) || true
	[ "$(tail -n1 <<<"$out")" = rabbit_quorum_queue ] || die "RabbitMQ $node: declaring a quorum queue failed: $out"
	log "rabbitmq $node: ${what}user $APP_USER (administrator, / .* .* .*) ok, no guest, plugins ${RABBIT_PLUGINS[*]} ok, quorum queues ok"
}

# rabbit_ensure_plugins NODE: RABBIT_PLUGINS enabled on the running NODE (rabbitmq-plugins
# writes the node's own enabled_plugins file and starts them without a restart).
# Sets RABBIT_PLUGINS_CHANGED=1 if it enabled any.
rabbit_ensure_plugins() {
	local node=$1 active p missing=()
	RABBIT_PLUGINS_CHANGED=0
	# The running applications (rabbit_plugins:active() reads the plugins' files through the
	# broker's file handle cache, and waits as long as that is exhausted).
	active=$(rmqctl -q -n "$node" eval "[A || {A, _, _} <- application:which_applications(10000)]." 2>/dev/null </dev/null) ||
		die "rabbitmqctl -n $node eval application:which_applications() failed"
	for p in "${RABBIT_PLUGINS[@]}"; do
		grep -qw "$p" <<<"$active" || missing+=("$p")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	quiet as_root rabbitmq-plugins -q -n "$node" enable "${missing[@]}" ||
		die "rabbitmq-plugins -n $node enable ${missing[*]} failed"
	active=$(rmqctl -q -n "$node" eval "[A || {A, _, _} <- application:which_applications(10000)]." 2>/dev/null </dev/null) || true
	for p in "${missing[@]}"; do
		grep -qw "$p" <<<"$active" || die "RabbitMQ $node: plugin $p is enabled but not active: $active"
	done
	RABBIT_PLUGINS_CHANGED=1
}

# rabbit_ensure NODE AMQP_PORT LOGDIR: quick check, else start + set up
rabbit_ensure() {
	RABBIT_CHANGED=0
	if rabbit_quick_check "$1" "$2"; then
		log "rabbitmq $1: running, AMQP 127.0.0.1:$2 open, user $APP_USER ok, quorum queues ok"
		return
	fi
	rabbit_ensure_running "$1" "$2" "$3"
	rabbit_ensure_app "$1"
}

# rabbit_write_node_config NODE AMQP_PORT DIST_PORT PURPOSE [RABBITMQ_CONF_LINES [ADVANCED_CONFIG]]
# Config for a node beside the main one (fault, cluster): everything (ports, data, logs,
# plugins) separate from the main node; RABBITMQ_CONF_ENV_FILE points rabbitmq-server at it.
# A running node whose config changed is stopped, to be started again with it.
rabbit_write_node_config() {
	local node=$1 port=$2 dist_port=$3 purpose=$4 conf_lines=${5:-} advanced=${6:-'[].'}
	local tmp changed=0 conf_dir data_dir log_dir
	conf_dir=$(rabbit_conf_dir "$node")
	data_dir=$(rabbit_data_dir "$node")
	log_dir=$(rabbit_log_dir "$node")
	tmp=$(mktemp -d)
	cat >"$tmp/rabbitmq-env.conf" <<EOF
# Generated by duijie scripts/deps.sh -- $purpose.
# Start:  RABBITMQ_CONF_ENV_FILE=$conf_dir/rabbitmq-env.conf rabbitmq-server -detached
NODENAME=$node
NODE_PORT=$port
DIST_PORT=$dist_port
MNESIA_BASE=$data_dir/mnesia
PID_FILE=$(rabbit_pid_file "$node")
LOG_BASE=$log_dir
CONFIG_FILE=$conf_dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$conf_dir/advanced.config
ENABLED_PLUGINS_FILE=$conf_dir/enabled_plugins
# Sourced by rabbitmq-server after \`su rabbitmq\`, which leaves 1024 open files: the broker's
# file handle cache keeps ~100 for sockets and files beyond those, and every quorum queue
# segment takes one. Up to the hard limit.
ulimit -n "\$(ulimit -Hn)" 2>/dev/null || true
EOF
	{
		echo "# Generated by duijie scripts/deps.sh"
		echo "listeners.tcp.default = $port"
		[ -z "$conf_lines" ] || printf '%s\n' "$conf_lines"
	} >"$tmp/rabbitmq.conf"
	# Only RABBIT_PLUGINS: management (15672), prometheus (15692), stream (5552) ...
	# would otherwise collide with the main node's listeners.
	echo "[$(IFS=,; echo "${RABBIT_PLUGINS[*]}")]." >"$tmp/enabled_plugins"
	echo "$advanced" >"$tmp/advanced.config"
	as_root install -d -o rabbitmq -g rabbitmq -m 0755 "$conf_dir"
	as_root install -d -o rabbitmq -g rabbitmq -m 0750 "$data_dir" "$log_dir"
	local f
	for f in rabbitmq-env.conf rabbitmq.conf enabled_plugins advanced.config; do
		if ! as_root cmp -s "$tmp/$f" "$conf_dir/$f"; then
			as_root install -o rabbitmq -g rabbitmq -m 0644 "$tmp/$f" "$conf_dir/$f"
			changed=1
		fi
	done
	rm -rf "$tmp"
	if [ "$changed" = 1 ] && rmqdiag -q -n "$node" ping >/dev/null 2>&1 </dev/null; then
		log "rabbitmq $node: config changed, stopping it to apply"
		quiet rmqctl -q -n "$node" shutdown || die "could not stop $node"
	fi
}

rabbit_fault_write_config() {
	rabbit_write_node_config "$RABBIT_FAULT_NODE" "$RABBIT_FAULT_PORT" "$RABBIT_FAULT_DIST_PORT" \
		"second RabbitMQ node for fault-injection tests"
}

# ----------------------------------------------------------------- cluster --
# rabbitmq.conf lines of a cluster node (beyond its listener). Five nodes share this machine
# (main, fault, three cluster nodes; CI has 2 cores): each cluster node flow-controls
# publishers at 512 MiB (one uses 130-200 MiB through the cluster tests), and quorum queues'
# write-ahead log rolls over at 64 MiB instead of 512 MiB (its entries are held in memory
# until then). net_ticktime 10 (default 60): the others notice a node that stopped answering within
# 7.5-12.5 s instead of 45-75 s, during which the cluster's metadata (declaring a queue, a
# queue's new leader) waits for it. autoheal: when a node cut off for longer comes back, the
# partition is healed by restarting the side with fewer client connections (its quorum queue
# members then catch up from the others' logs). pause_minority does not heal it: a node that
# was frozen (SIGSTOP, a paused VM) reconnects to the others before it sees itself in a
# minority, never pauses, and the cluster stays split (seen here with RabbitMQ 3.10.8).
rabbit_cluster_conf() {
	cat <<EOF
cluster_partition_handling = autoheal
net_ticktime = 10
vm_memory_high_watermark.absolute = 536870912
raft.wal_max_size_bytes = 67108864
EOF
}

RABBIT_CLUSTER_SIZE=${#RABBIT_CLUSTER_NODES[@]}

# Erlang list of the cluster's nodes, sorted: ['duijie-c1@localhost',...]
rabbit_cluster_erl_nodes() {
	local n out=""
	for n in $(printf '%s\n' "${RABBIT_CLUSTER_NODES[@]}" | sort); do
		out="$out${out:+,}'$n'"
	done
	echo "[$out]"
}

# Everything rabbit_cluster_ensure would check, in ONE `rabbitmqctl eval` on the first node:
# the three nodes are the cluster's members and all run, each has RABBIT_PLUGINS, and the
# first node passes the quick check (users, flags, a quorum queue, now across the cluster).
rabbit_cluster_quick_check() {
	local out expr i
	expr="Nodes = $(rabbit_cluster_erl_nodes),
Nodes = lists:usort(rabbit_nodes:all()),
Nodes = lists:usort(rabbit_nodes:all_running()),
[] = [{N, P} || N <- Nodes, P <- [$(IFS=,; echo "${RABBIT_PLUGINS[*]}")],
                not lists:keymember(P, 1, rpc:call(N, application, which_applications, [10000], 15000))],
[] = [N || N <- Nodes, not is_pid(rpc:call(N, erlang, whereis, [rabbit_fifo_dlx_sup], 10000))],
$RABBIT_QUICK_CHECK"
	out=$(rmqctl -q -n "${RABBIT_CLUSTER_NODES[0]}" eval "$expr" 2>/dev/null </dev/null) || return 1
	[ "$out" = ok ] || return 1
	for i in "${!RABBIT_CLUSTER_NODES[@]}"; do
		port_open 127.0.0.1 "${RABBIT_CLUSTER_PORTS[$i]}" || return 1
	done
}

# rabbit_cluster_member NODE: true if the first node counts NODE among the cluster's members
rabbit_cluster_member() {
	local out
	out=$(rmqctl -q -n "${RABBIT_CLUSTER_NODES[0]}" eval "lists:member('$1', rabbit_nodes:all())." 2>/dev/null </dev/null) || return 1
	[ "$out" = true ]
}

# rabbit_cluster_running_count NODE: how many of the cluster's nodes NODE sees running (0 if
# it does not answer)
rabbit_cluster_running_count() {
	rmqctl -q -n "$1" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null </dev/null || echo 0
}

# rabbit_cluster_restart_app NODE WHY: stop_app + start_app, waiting until it is up again
rabbit_cluster_restart_app() {
	log "rabbitmq $1: $2; restarting its rabbit app"
	quiet rmqctl -q -n "$1" stop_app || die "stop_app on $1 failed"
	quiet rmqctl -q -n "$1" start_app || die "start_app on $1 failed"
	wait_for "$RABBIT_WAIT" "RabbitMQ $1 startup" rmqctl -q -n "$1" await_startup --timeout 10 ||
		die "RabbitMQ $1 did not start again; $(rabbit_log_hint "$1" "$(rabbit_log_dir "$1")")"
}

# rabbit_cluster_heal: returns 1 if it had to restart a node's app (see step 3b below)
rabbit_cluster_heal() {
	local i node max=0 healed=0 counts=()
	for i in "${!RABBIT_CLUSTER_NODES[@]}"; do
		counts[i]=$(rabbit_cluster_running_count "${RABBIT_CLUSTER_NODES[$i]}")
		[ "${counts[i]}" -le "$max" ] || max=${counts[i]}
	done
	for i in "${!RABBIT_CLUSTER_NODES[@]}"; do
		if [ "${counts[i]}" -lt "$max" ]; then
			rabbit_cluster_restart_app "${RABBIT_CLUSTER_NODES[$i]}" "sees only part of the cluster running (a partition)"
			healed=1
		fi
	done
	for node in "${RABBIT_CLUSTER_NODES[@]}"; do
		if [ "$(rabbit_cluster_running_count "$node")" -lt "$RABBIT_CLUSTER_SIZE" ]; then
			rabbit_cluster_restart_app "$node" "sees only part of the cluster running (a partition)"
			healed=1
		fi
	done
	# RabbitMQ 3.10.8: when a node's quorum queue members churn (a partition healed, leaders
	# moving), their at-least-once dead-letter workers can fail together until the node's
	# rabbit_fifo_dlx_sup gives up (reached_max_restart_intensity) and is gone for good: that node
	# can then lead no quorum queue with x-dead-letter-strategy=at-least-once (declaring one it
	# should lead fails with INTERNAL_ERROR). Only a restart of its rabbit app brings it back.
	# (rabbitmq-server issue #16652.)
	for node in "${RABBIT_CLUSTER_NODES[@]}"; do
		if [ "$(rmqctl -q -n "$node" eval 'is_pid(whereis(rabbit_fifo_dlx_sup)).' 2>/dev/null </dev/null)" = false ]; then
			rabbit_cluster_restart_app "$node" "lost its rabbit_fifo_dlx_sup (at-least-once dead-lettering; rabbitmq-server #16652)"
			healed=1
		fi
	done
	[ "$healed" = 0 ]
}

# The three-node cluster: configs, every node up (all that are down started at once: a
# clustered node waits at boot for the peers it last saw), c2 and c3 joined to c1, the user,
# plugins, a quorum queue.
rabbit_cluster_ensure() {
	local i node port first=${RABBIT_CLUSTER_NODES[0]} t0 started=() what=""
	t0=$(now_ms)
	for i in "${!RABBIT_CLUSTER_NODES[@]}"; do
		rabbit_write_node_config "${RABBIT_CLUSTER_NODES[$i]}" "${RABBIT_CLUSTER_PORTS[$i]}" "${RABBIT_CLUSTER_DIST_PORTS[$i]}" \
			"node $((i + 1)) of the three-node cluster for cluster fault tests" "$(rabbit_cluster_conf)"
	done
	if rabbit_cluster_quick_check; then
		log "rabbitmq cluster ${RABBIT_CLUSTER_NODES[*]}: formed, all running, AMQP 127.0.0.1:${RABBIT_CLUSTER_PORTS[*]} open, user $APP_USER ok, quorum queues ok"
		return
	fi
	# 1) Start every node whose VM is down, all before waiting for any.
	for i in "${!RABBIT_CLUSTER_NODES[@]}"; do
		node=${RABBIT_CLUSTER_NODES[$i]}
		port=${RABBIT_CLUSTER_PORTS[$i]}
		rmqdiag -q -n "$node" ping >/dev/null 2>&1 </dev/null && continue
		wait_for 30 "port $port to be released" port_free "$port" ||
			die "port $port is in use but RabbitMQ node $node does not answer (wrong Erlang cookie or foreign process?); check 'ss -ltnp'"
		rabbit_start "$node" || die "rabbitmq-server -detached for $node failed; $(rabbit_log_hint "$node" "$(rabbit_log_dir "$node")")"
		started+=("$node")
	done
	[ ${#started[@]} = 0 ] || what="started ${started[*]}, "
	# 2) Wait for them; a VM that runs without the rabbit app (stop_app) gets start_app.
	for i in "${!RABBIT_CLUSTER_NODES[@]}"; do
		node=${RABBIT_CLUSTER_NODES[$i]}
		if [[ " ${started[*]} " == *" $node "* ]]; then
			wait_for "$RABBIT_WAIT" "RabbitMQ $node startup" rmqctl -q -n "$node" await_startup --timeout 10 || {
				tail -n 20 "$(rabbit_log_dir "$node")/$node.log" 2>/dev/null | sed 's/^/    /' >&2 || true
				die "RabbitMQ $node did not start within ${RABBIT_WAIT}s; $(rabbit_log_hint "$node" "$(rabbit_log_dir "$node")"). A node whose peers forgot it waits for them: to build the cluster afresh, stop the three nodes and remove /var/lib/rabbitmq/duijie-c*/mnesia"
			}
		fi
		rabbit_ensure_running "$node" "${RABBIT_CLUSTER_PORTS[$i]}" "$(rabbit_log_dir "$node")"
	done
	# 3) c2, c3: joined to c1 unless c1 already counts them.
	for node in "${RABBIT_CLUSTER_NODES[@]:1}"; do
		rabbit_cluster_member "$node" && continue
		log "rabbitmq $node: joining the cluster of $first"
		quiet rmqctl -q -n "$node" stop_app || die "stop_app on $node failed"
		quiet rmqctl -q -n "$node" reset || quiet rmqctl -q -n "$node" force_reset || die "reset of $node failed"
		quiet rmqctl -q -n "$node" join_cluster "$first" || die "join_cluster $first on $node failed"
		quiet rmqctl -q -n "$node" start_app || die "start_app on $node failed"
		wait_for "$RABBIT_WAIT" "RabbitMQ $node startup" rmqctl -q -n "$node" await_startup --timeout 10 ||
			die "RabbitMQ $node did not start after joining $first; $(rabbit_log_hint "$node" "$(rabbit_log_dir "$node")")"
		rabbit_cluster_member "$node" || die "$node joined $first but $first does not list it"
		what="${what}$node joined, "
	done
	# 3b) A partition left unhealed (a node that does not see the others running although
	#     they run): the rabbit app of the nodes that see fewer restarted, then of any still
	#     short, so it rejoins them (the documented recovery from a partition); likewise a node
	#     that lost its dead-letter supervisor (rabbit_cluster_heal).
	if ! rabbit_cluster_heal; then
		what="${what}healed (rabbit app restarted where needed), "
	fi
	# 4) Users, permissions and feature flags live in the cluster's shared schema: set up
	#    once; plugins are per node.
	rabbit_ensure_app "$first"
	for node in "${RABBIT_CLUSTER_NODES[@]:1}"; do
		rabbit_ensure_plugins "$node"
	done
	rabbit_cluster_quick_check || die "the cluster ${RABBIT_CLUSTER_NODES[*]} is still not formed and running; see rabbitmqctl -n $first cluster_status"
	log "rabbitmq cluster ${RABBIT_CLUSTER_NODES[*]}: ${what}formed, all running, AMQP 127.0.0.1:${RABBIT_CLUSTER_PORTS[*]} open, in $(fmt_ms $(($(now_ms) - t0)))"
}

# The main node's open files: its env file is the system one, which rabbitmq-server sources
# after `su rabbitmq` (1024 open files; its file handle cache then holds 927, and a few
# hundred quorum queues of tests running side by side exhaust it: every queue operation
# waits). A marked line raises the limit to the hard limit at the node's next start; a running
# node is not restarted for it (others' tests may be using it), only told about.
RABBIT_MAIN_ENV_FILE=/etc/rabbitmq/rabbitmq-env.conf
# shellcheck disable=SC2016 # expanded where the env file is sourced
RABBIT_OPEN_FILES_LINE='ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # added by duijie scripts/deps.sh'
RABBIT_OPEN_FILES_MIN=4096
rabbit_main_open_files() {
	as_root grep -qxF "$RABBIT_OPEN_FILES_LINE" "$RABBIT_MAIN_ENV_FILE" 2>/dev/null && return 0
	log "rabbitmq: raising the main node's open files to the hard limit in $RABBIT_MAIN_ENV_FILE (at its next start)"
	# shellcheck disable=SC2016 # $1/$2 expand in the inner sh
	as_root sh -c 'printf "\n%s\n" "$1" >>"$2"' _ "$RABBIT_OPEN_FILES_LINE" "$RABBIT_MAIN_ENV_FILE" ||
		die "could not append to $RABBIT_MAIN_ENV_FILE"
}
rabbit_main_check_open_files() {
	local limit
	limit=$(rmqctl -q -n "$RABBIT_MAIN_NODE" eval 'file_handle_cache:get_limit().' 2>/dev/null </dev/null) || return 0
	[ "$limit" -ge "$RABBIT_OPEN_FILES_MIN" ] 2>/dev/null ||
		warn "rabbitmq $RABBIT_MAIN_NODE: its file handle cache holds only $limit handles (started with few open files); when nothing uses it, restart it to raise them: rabbitmqctl -n $RABBIT_MAIN_NODE shutdown && scripts/deps.sh"
}

# ------------------------------------------------------------ restart proof --
prove_fault_restarts() {
	local t0 t1 t2 t3 pg_ver=$1 pg_port=$2
	# 1) RabbitMQ soft restart: stop/start the rabbit app, the Erlang VM stays up.
	t0=$(now_ms)
	quiet rmqctl -q -n "$RABBIT_FAULT_NODE" stop_app || die "stop_app on $RABBIT_FAULT_NODE failed"
	! port_open 127.0.0.1 "$RABBIT_FAULT_PORT" || die "port $RABBIT_FAULT_PORT still open after stop_app"
	quiet rmqctl -q -n "$RABBIT_FAULT_NODE" start_app || die "start_app on $RABBIT_FAULT_NODE failed"
	port_open 127.0.0.1 "$RABBIT_FAULT_PORT" || die "port $RABBIT_FAULT_PORT closed after start_app"
	t1=$(now_ms)
	# 2) RabbitMQ hard restart: stop the whole VM, start it again, wait for the app.
	quiet rmqctl -q -n "$RABBIT_FAULT_NODE" shutdown || die "shutdown of $RABBIT_FAULT_NODE failed"
	! port_open 127.0.0.1 "$RABBIT_FAULT_PORT" || die "port $RABBIT_FAULT_PORT still open after shutdown"
	rabbit_start "$RABBIT_FAULT_NODE" || die "restarting $RABBIT_FAULT_NODE failed"
	quiet rmqctl -q -n "$RABBIT_FAULT_NODE" wait "$RABBIT_FAULT_PID_FILE" --timeout "$RABBIT_WAIT" ||
		die "$RABBIT_FAULT_NODE did not come back; $(rabbit_log_hint "$RABBIT_FAULT_NODE" "$RABBIT_FAULT_LOG_DIR")"
	port_open 127.0.0.1 "$RABBIT_FAULT_PORT" || die "port $RABBIT_FAULT_PORT closed after restart"
	t2=$(now_ms)
	# 3) PostgreSQL fast restart.
	quiet as_root pg_ctlcluster "$pg_ver" "$PG_FAULT_CLUSTER" restart -m fast || die "pg_ctlcluster $pg_ver $PG_FAULT_CLUSTER restart failed"
	pg_wait_ready "$pg_ver" "$PG_FAULT_CLUSTER" "$pg_port"
	pg_login_ok "$pg_port" || die "login to $pg_ver/$PG_FAULT_CLUSTER failed after restart"
	t3=$(now_ms)
	log "restart proof: rabbit stop_app+start_app $(fmt_ms $((t1 - t0))), rabbit shutdown+start+wait $(fmt_ms $((t2 - t1))), pg restart -m fast $(fmt_ms $((t3 - t2)))"
}

# -------------------------------------------------------------------- main --
ensure_packages

PG_VER=$(pg_pick_version)
pg_ensure_cluster "$PG_VER" "$PG_MAIN_CLUSTER" "" "$PG_MAIN_MIN_CONN"
PG_MAIN_PORT=$PG_PORT
pg_ensure_app "$PG_VER" "$PG_MAIN_CLUSTER" "$PG_MAIN_PORT"

HOST_SHORT=$(hostname -s)
getent hosts "$HOST_SHORT" >/dev/null ||
	die "hostname '$HOST_SHORT' does not resolve; RabbitMQ node rabbit@$HOST_SHORT cannot start. Add '127.0.1.1 $HOST_SHORT' to /etc/hosts"
RABBIT_MAIN_NODE=rabbit@$HOST_SHORT
rabbit_main_open_files
rabbit_ensure "$RABBIT_MAIN_NODE" "$RABBIT_MAIN_PORT" /var/log/rabbitmq
rabbit_main_check_open_files

lines=(
	"DUIJIE_AMQP_URL=amqp://$APP_USER:$APP_PASS@127.0.0.1:$RABBIT_MAIN_PORT/%2f"
	"DUIJIE_DATABASE_URL=postgres://$APP_USER:$APP_PASS@127.0.0.1:$PG_MAIN_PORT/$APP_DB"
)

if [ "$FAULT" = 1 ]; then
	pg_ensure_cluster "$PG_VER" "$PG_FAULT_CLUSTER" "$PG_FAULT_PORT" "$PG_FAULT_MIN_CONN"
	PG_FAULT_ACTUAL_PORT=$PG_PORT
	fault_changed=$PG_CHANGED
	pg_ensure_app "$PG_VER" "$PG_FAULT_CLUSTER" "$PG_FAULT_ACTUAL_PORT"

	rabbit_fault_write_config
	rabbit_ensure "$RABBIT_FAULT_NODE" "$RABBIT_FAULT_PORT" "$RABBIT_FAULT_LOG_DIR"
	[ "$RABBIT_CHANGED" = 0 ] || fault_changed=1

	case ${DUIJIE_DEPS_RESTART_PROOF:-auto} in
	always) prove_fault_restarts "$PG_VER" "$PG_FAULT_ACTUAL_PORT" ;;
	never) ;;
	auto)
		if [ "$fault_changed" = 1 ]; then
			prove_fault_restarts "$PG_VER" "$PG_FAULT_ACTUAL_PORT"
		else
			log "restart proof: skipped (fault servers were already up; DUIJIE_DEPS_RESTART_PROOF=always forces it)"
		fi
		;;
	*) die "DUIJIE_DEPS_RESTART_PROOF must be auto, always or never" ;;
	esac
	lines+=(
		"DUIJIE_FAULT_AMQP_URL=amqp://$APP_USER:$APP_PASS@127.0.0.1:$RABBIT_FAULT_PORT/%2f"
		"DUIJIE_FAULT_DATABASE_URL=postgres://$APP_USER:$APP_PASS@127.0.0.1:$PG_FAULT_ACTUAL_PORT/$APP_DB"
		"DUIJIE_FAULT_RABBIT_NODE=$RABBIT_FAULT_NODE"
		"DUIJIE_FAULT_RABBIT_CONF_ENV_FILE=$RABBIT_FAULT_ENV_FILE"
		"DUIJIE_FAULT_RABBIT_PID_FILE=$RABBIT_FAULT_PID_FILE"
		"DUIJIE_FAULT_PG_CLUSTER=$PG_VER/$PG_FAULT_CLUSTER"
	)
fi

if [ "$CLUSTER" = 1 ]; then
	rabbit_cluster_ensure
	cluster_urls=()
	for port in "${RABBIT_CLUSTER_PORTS[@]}"; do
		cluster_urls+=("amqp://$APP_USER:$APP_PASS@127.0.0.1:$port/%2f")
	done
	cluster_env_files=()
	cluster_pid_files=()
	for node in "${RABBIT_CLUSTER_NODES[@]}"; do
		cluster_env_files+=("$(rabbit_env_file "$node")")
		cluster_pid_files+=("$(rabbit_pid_file "$node")")
	done
	lines+=(
		"DUIJIE_CLUSTER_RABBIT_NODES=$(IFS=,; echo "${RABBIT_CLUSTER_NODES[*]}")"
		"DUIJIE_CLUSTER_RABBIT_CONF_ENV_FILES=$(IFS=,; echo "${cluster_env_files[*]}")"
		"DUIJIE_CLUSTER_RABBIT_PID_FILES=$(IFS=,; echo "${cluster_pid_files[*]}")"
	)
fi

# Each service's own broker user (scripts/run.sh creates them with their permissions): the
# password from the environment, else a local-only default. Into the env file only.
secret_lines=()
for svc in court procuratorate police petition mediation audit; do
	var=DUIJIE_BROKER_PASSWORD_${svc^^}
	pass=${!var:-duijie-$svc-local}
	secret_lines+=(
		"$var=$pass"
		"DUIJIE_AMQP_URL_${svc^^}=amqp://duijie-$svc:$pass@127.0.0.1:$RABBIT_MAIN_PORT/%2f"
	)
done
# The cluster's URLs carry the password: into the env file only, like the services' URLs.
if [ "$CLUSTER" = 1 ]; then
	secret_lines+=("DUIJIE_CLUSTER_AMQP_URLS=$(IFS=,; echo "${cluster_urls[*]}")")
fi

mkdir -p "$ROOT_DIR/target"
env_file=$ROOT_DIR/target/duijie-env.sh
{
	echo "# Generated by scripts/deps.sh$([ "$FAULT" = 1 ] && echo ' --fault')$([ "$CLUSTER" = 1 ] && echo ' --cluster') -- source this file."
	printf 'export %s\n' "${lines[@]}" "${secret_lines[@]}"
} >"$env_file.tmp.$$"
chmod 600 "$env_file.tmp.$$"
mv -f "$env_file.tmp.$$" "$env_file"
printf '%s\n' "${lines[@]}"
log "done in $((SECONDS - START_TS))s; env written to ${env_file#"$ROOT_DIR"/}"
