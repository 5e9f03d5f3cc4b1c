# shellcheck shell=bash
# Reusable helpers for duijie scripts. Source it:  . "$(dirname "$0")/lib.sh"
#
# Conventions:
#   * progress/diagnostics go to stderr (one line per step), so stdout can
#     carry machine-readable output (e.g. `eval "$(scripts/deps.sh)"`);
#   * commands run via `quiet` are silent on success and dump their captured
#     output on failure.

# Server tools live in sbin directories that are not always in a non-root PATH.
case ":$PATH:" in *":/usr/sbin:"*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
export PATH

: "${LOG_TAG:=$(basename "${0:-duijie}" .sh)}"

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$LOG_TAG" "$*" >&2; }
die() {
	printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2
	exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# Seconds since the epoch with milliseconds (for measuring durations).
now_ms() { date +%s%3N; }
# fmt_ms <ms> -> "1.234s"
fmt_ms() { printf '%d.%03ds' "$(($1 / 1000))" "$(($1 % 1000))"; }

# as_root CMD...: run CMD as root (directly when we are root, else via sudo).
# To pass environment variables through sudo use: as_root env VAR=val CMD...
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif have sudo; then
		sudo "$@"
	else
		die "need root for: $* (not root and sudo is not installed)"
	fi
}

# as_user USER CMD...: run CMD as USER (used for the postgres superuser).
as_user() {
	local user=$1
	shift
	if [ "$(id -un)" = "$user" ]; then
		"$@"
	elif [ "$(id -u)" -eq 0 ]; then
		runuser -u "$user" -- "$@"
	elif have sudo; then
		sudo -u "$user" -- "$@"
	else
		die "need to run as $user: $* (not root and sudo is not installed)"
	fi
}

# quiet CMD...: run CMD, print its output only if it fails (returns its status).
quiet() {
	local out rc=0
	out=$("$@" 2>&1 </dev/null) || rc=$?
	if [ "$rc" -ne 0 ]; then
		printf '[%s] command failed (exit %d): %s\n' "$LOG_TAG" "$rc" "$*" >&2
		[ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /' >&2
	fi
	return "$rc"
}

# wait_for SECONDS DESCRIPTION CMD...: retry CMD (silently) until it succeeds
# or the deadline passes. Returns 1 on timeout (caller decides how to die).
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	while :; do
		if "$@" >/dev/null 2>&1 </dev/null; then
			return 0
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			warn "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}

# port_open HOST PORT: true if a TCP connection to HOST:PORT succeeds.
port_open() {
	# shellcheck disable=SC2016 # $1/$2 expand in the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# port_listening PORT: true if something listens on TCP PORT (any address).
port_listening() {
	if have ss; then
		ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
	else
		port_open 127.0.0.1 "$1"
	fi
}

# port_free PORT: true if nothing listens on TCP PORT.
port_free() { ! port_listening "$1"; }

# http_get HOST PORT PATH [HEADER]: the body of one HTTP/1.1 GET, with bash's /dev/tcp only
# (no curl on a fresh machine).
http_get() {
	local host=$1 port=$2 path=$3 extra=""
	[ -n "${4:-}" ] && extra="$4"$'\r\n'
	exec 3<>"/dev/tcp/$host/$port" || return 1
	printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s\r\n' "$path" "$host" "$extra" >&3
	# The body comes after the blank line; print it alone.
	sed '1,/^\r$/d' <&3
	exec 3<&-
}

# http_signin HOST PORT AGENCY: signs in to the demo console as AGENCY (kind:code) with its
# sign-in form, as a browser does, and prints the Cookie header that carries the signed session
# (empty when the console set none).
http_signin() {
	local host=$1 port=$2 body="as=$3"
	exec 3<>"/dev/tcp/$host/$port" || return 1
	printf 'POST /signin HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %s\r\n\r\n%s' \
		"$host" "${#body}" "$body" >&3
	# The headers only; `Set-Cookie: duijie_as=<value>; Path=/; …` becomes `Cookie: duijie_as=<value>`.
	sed -n '/^\r$/q; s/^[Ss]et-[Cc]ookie: *\([^;]*\).*/Cookie: \1/p' <&3
	exec 3<&-
}
