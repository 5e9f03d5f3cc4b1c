#!/usr/bin/env bash
# Checks charts/duijie with Helm's own Go SDK (PyPI helm-python-sdk; no helm binary needed):
# lint, render of the default values and every ci/*-values.yaml, every manifest validated against
# the Kubernetes 1.31 schemas (kubernetes-validate, strict) or the operators' CRD schemas kept in
# scripts/crd-schemas/ (jsonschema), and invalid values that values.schema.json must refuse.
# The Python packages live in a venv under target/chart-venv, made once and reused; python3-venv
# is installed from Debian when missing. See scripts/chart-check.py.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
: "${LOG_TAG:=chart-check}"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
cd "$ROOT_DIR"

# Pinned: the SDK's Helm version is part of what is checked.
PY_PKGS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)
VENV=$ROOT_DIR/target/chart-venv
STAMP=$VENV/.duijie-packages

have python3 || {
	log "installing python3 (Debian package) for the chart checks"
	quiet as_root apt-get update -q || die "apt-get update failed"
	quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 || die "apt-get install python3 failed"
}
if [ ! -x "$VENV/bin/python" ]; then
	if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
		log "installing python3-venv (Debian package) for the chart checks"
		quiet as_root apt-get update -q || die "apt-get update failed"
		quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv || die "apt-get install python3-venv failed"
	fi
	rm -rf "$VENV"
	quiet python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PY_PKGS[*]}" ]; then
	log "installing ${PY_PKGS[*]} into target/chart-venv"
	quiet "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}" || die "pip install failed"
	printf '%s' "${PY_PKGS[*]}" >"$STAMP"
fi

"$VENV/bin/python" "$SCRIPT_DIR/chart-check.py" "$@"
