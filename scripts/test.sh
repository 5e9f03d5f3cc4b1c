#!/usr/bin/env bash
# Runs every test of duijie against real servers, on a fresh Debian machine or this one:
#   1. scripts/deps.sh --fault --cluster: installs/starts RabbitMQ and PostgreSQL, plus the fault
#      servers (second RabbitMQ node on 5673, second PostgreSQL cluster on 5433) that fault tests
#      restart, and the three-node RabbitMQ cluster (5681-5683) whose nodes the cluster tests
#      kill and stop;
#   2. the contract (proto/) as other agencies' tooling checks it: `buf lint` with buf's STANDARD
#      rules and `buf breaking` against the last release, contract/released.binpb (buf is
#      installed into target/tools with npm when missing, and npm from Debian if need be); then
#      the Helm chart charts/duijie (scripts/chart-check.sh: lint, render, schemas);
#   3. clippy with warnings as errors;
#   4. every test of the workspace with cargo-nextest (one build, tests in parallel; fault and
#      replica tests, and cluster tests, each serialised in their own group, see
#      .config/nextest.toml), after the service binaries the replica test starts as processes;
#   (Chromium, ChromeDriver and a CJK font are installed first when missing: the console's
#   browser tests need them; their screenshots land in target/artifacts/browser/)
#   5. the README's run command as a smoke test: the five services start from their config
#      files and listen, then stop gracefully (skipped when nextest arguments select tests).
# Extra arguments go to nextest (e.g. scripts/test.sh -E 'binary(handoff)').
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_TAG=test
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
cd "$ROOT_DIR"

"$SCRIPT_DIR/deps.sh" --fault --cluster >/dev/null
# shellcheck source=/dev/null
. "$ROOT_DIR/target/duijie-env.sh"

# The browser tests drive Debian's Chromium through ChromeDriver; a CJK font makes their
# screenshots readable.
browser_pkgs=()
have chromium || browser_pkgs+=(chromium)
have chromedriver || browser_pkgs+=(chromium-driver)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || browser_pkgs+=(fonts-wqy-microhei)
if [ "${#browser_pkgs[@]}" -gt 0 ]; then
	log "installing ${browser_pkgs[*]} for the browser tests"
	quiet as_root apt-get update -q || die "apt-get update failed"
	quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${browser_pkgs[@]}" ||
		die "apt-get install ${browser_pkgs[*]} failed"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
	log "cargo-nextest missing; installing it"
	cargo install cargo-nextest --locked
fi

# buf, pinned: its STANDARD rules are what other agencies' tooling checks the contract with.
BUF_VERSION=1.75.0
BUF=$ROOT_DIR/target/tools/node_modules/.bin/buf
if [ "$("$BUF" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
	if ! have npm; then
		log "installing npm (Debian package) to install buf"
		quiet as_root apt-get update -q || die "apt-get update failed"
		quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm || die "apt-get install npm failed"
	fi
	log "installing buf $BUF_VERSION (npm package @bufbuild/buf) into target/tools"
	quiet npm install --prefix "$ROOT_DIR/target/tools" --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION" ||
		die "npm install @bufbuild/buf@$BUF_VERSION failed"
fi
log "contract: buf lint (STANDARD), buf breaking against contract/released.binpb"
"$BUF" lint || die "buf lint: the contract breaks buf's STANDARD rules (see buf.yaml)"
"$BUF" breaking --against contract/released.binpb ||
	die "buf breaking: the contract breaks clients of the last release (README, Contract changes)"

# The Helm chart, with Helm's own Go SDK (no helm binary): lint, render of the default values and
# every ci/*-values.yaml, manifests validated against Kubernetes 1.31 and the operators' CRD
# schemas, invalid values refused (python3-venv from Debian and a venv in target/ when missing).
log "chart: helm lint, render and validate charts/duijie (scripts/chart-check.sh)"
chart_out=$(LOG_TAG=chart "$SCRIPT_DIR/chart-check.sh" 2>&1) || {
	printf '%s\n' "$chart_out" >&2
	die "chart check failed (scripts/chart-check.sh)"
}
log "chart: $(grep '^summary:' <<<"$chart_out")"

# One build of the workspace, not a series of edits: incremental artifacts would only cost
# disk (several GB on a clean clone; a CI run once ran out of space linking). Set
# CARGO_INCREMENTAL=1 to keep them while iterating on the suite.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The service binaries (debug): the replica test runs them as processes it can SIGKILL.
log "service binaries"
cargo build --workspace --bins --quiet

log "tests"
cargo nextest run --workspace --profile ci "$@"

if [ "$#" -eq 0 ]; then
	log "smoke: scripts/run.sh brings the services and the console up with the demo data"
	"$SCRIPT_DIR/run.sh" >/dev/null
	# The README's commands answer against the running stack.
	DUIJIE=target/debug/duijie
	"$DUIJIE" verify >/dev/null
	stats=$("$DUIJIE" stats --region 431003)
	grep -q 'received' <<<"$stats" || die "duijie stats printed no figures"
	"$DUIJIE" timeline JF-431003-2026-D1M-0001 >/dev/null
	"$DUIJIE" dead list >/dev/null
	# The console answers, and the centre's inbox already shows demo cases.
	# (Read whole before grep: grep -q stopping early would fail the pipe under pipefail.)
	health=$(http_get 127.0.0.1 8080 /healthz) || die "the console does not answer"
	grep -q '^ok' <<<"$health" || die "the console does not answer /healthz"
	# Signed in as the centre through the sign-in form: the session cookie is signed, so a
	# hand-written one would be refused.
	session=$(http_signin 127.0.0.1 8080 mediation:431003) || die "the console does not answer"
	[ -n "$session" ] || die "signing in to the console set no session cookie"
	inbox=$(http_get 127.0.0.1 8080 /cases "$session") || die "the console does not answer"
	grep -q 'data-case=' <<<"$inbox" || die "the console shows no demo cases in the centre's inbox"
	# Prometheus can scrape the court (the port run.sh printed) and sees the demo's calls.
	metrics=$(http_get 127.0.0.1 9461 /metrics) || die "the court serves no /metrics on 9461"
	grep -q '^duijie_grpc_requests_total{.*SubmitReferral' <<<"$metrics" || die "the court's /metrics shows no SubmitReferral calls"
	"$SCRIPT_DIR/run.sh" stop
fi
