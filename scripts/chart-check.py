#!/usr/bin/env python3
"""Checks charts/duijie with Helm's own code (helm-python-sdk: the Go SDK in a shared library):

  1. `helm lint` of the chart with its default values and each ci/*-values.yaml;
  2. renders the default values and every ci/*-values.yaml (`Chart.load(dir).render`);
  3. validates every rendered manifest: built-in kinds against the Kubernetes 1.31 schemas
     (kubernetes-validate, strict: unknown fields are errors), the operators' resources
     (RabbitmqCluster, CNPG Cluster/Database, Certificate, ServiceMonitor, PrometheusRule) against
     their CRDs' openAPIV3Schema kept in scripts/crd-schemas/ (jsonschema, unknown fields refused
     where the CRD does not preserve them), and a few chart rules (no Secret rendered, names fit,
     every config file and the dashboard parse);
  4. negative tests: values that must FAIL values.schema.json (and so `helm install`).

Exit status 0 when everything passes, 1 otherwise. Run by scripts/chart-check.sh.
"""
from __future__ import annotations

import copy
import json
import pathlib
import re
import sys
import time

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "duijie"
CRD_SCHEMAS = ROOT / "scripts" / "crd-schemas"
KUBE_VERSION = "1.31"
RELEASE, NAMESPACE = "duijie", "duijie"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def close_objects(node):
    """CRD schemas leave objects open (the API server prunes unknown fields); like
    `kubectl apply --validate=strict`, refuse unknown fields unless the CRD preserves them."""
    if isinstance(node, dict):
        out = {k: close_objects(v) for k, v in node.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [close_objects(v) for v in node]
    return node


def load_crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators = {}
    for path in sorted(CRD_SCHEMAS.glob("*.json")):
        group, kind, version = path.stem.rsplit("_", 2)
        schema = close_objects(json.loads(path.read_text()))
        schema.pop("x-duijie-source", None)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        validators[(f"{group}/{version}", kind)] = cls(schema)
    return validators


def value_sets() -> list[tuple[str, dict]]:
    sets = [("default values", {})]
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets.append((f"ci/{path.name}", yaml.safe_load(path.read_text()) or {}))
    return sets


def lint(label: str, values: dict) -> None:
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    for m in report.get("messages", []):
        if m.get("severity", 0) >= 2:  # warnings and errors (strict)
            fail(f"lint ({label}): {m.get('path')}: {m.get('error')}")
    for e in report.get("errors", []):
        fail(f"lint ({label}): {e}")


def check_doc(label: str, template: str, doc: dict, crds, seen: set, counts: dict) -> None:
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    name = (doc.get("metadata") or {}).get("name", "")
    where = f"{label}: {template}: {kind}/{name}"
    if kind == "Secret":
        fail(f"{where}: the chart must not render Secrets (secrets only by reference)")
    if not NAME_RE.match(name or "") or len(name) > 63:
        fail(f"{where}: name is not a DNS-1123 label of at most 63 characters")
    key = (api, kind, name)
    if key in seen:
        fail(f"{where}: rendered twice")
    seen.add(key)
    if (api, kind) in crds:
        errors = sorted(crds[(api, kind)].iter_errors(doc), key=lambda e: list(e.absolute_path))
        for e in errors[:5]:
            path = "/".join(str(p) for p in e.absolute_path)
            fail(f"{where}: CRD schema: /{path}: {e.message[:300]}")
        counts["crd"] += 1
    elif "." in api.split("/")[0] and not api.split("/")[0].endswith(".k8s.io"):
        fail(f"{where}: no CRD schema kept for {api} {kind} (add it to scripts/crd-schemas)")
    else:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in getattr(e, "path", []) or [])
            fail(f"{where}: Kubernetes {KUBE_VERSION} schema: /{path}: {str(e).splitlines()[0][:300]}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            fail(f"{where}: no Kubernetes {KUBE_VERSION} schema for {api} {kind}: {e}")
        counts["k8s"] += 1
    # The chart's own rules on what it renders.
    if kind == "ConfigMap":
        for k, v in (doc.get("data") or {}).items():
            try:
                json.loads(v) if k.endswith(".json") else yaml.safe_load(v)
            except Exception as e:  # noqa: BLE001
                fail(f"{where}: data {k} does not parse: {e}")
            if k == "base.yaml" and re.search(r"(password|master_key|secret|url)\s*:", v or "", re.I):
                fail(f"{where}: base.yaml holds what looks like a secret")
    if kind in ("Deployment", "Job"):
        spec = doc["spec"]["template"]["spec"]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c.get("securityContext") or {}
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
                fail(f"{where}: container {c['name']} must have a read-only root and no privilege escalation")
        if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
            fail(f"{where}: pods must run as non-root")


def render_and_validate(label: str, values: dict, crds, counts: dict) -> int:
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    seen: set = set()
    n = 0
    docs = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            check_doc(label, template.split("/", 1)[-1], doc, crds, seen, counts)
            docs.append(doc)
            n += 1
            counts["kinds"][doc.get("kind")] = counts["kinds"].get(doc.get("kind"), 0) + 1
    check_hooks(label, docs)
    return n


def hook_phases(doc: dict) -> set[str]:
    hooks = ((doc.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook", "")
    return {h.strip() for h in hooks.split(",") if h.strip()}


def check_hooks(label: str, docs: list[dict]) -> None:
    """A pre-install hook runs before the release's own objects exist: its pod may name only
    hook objects of an earlier or equal weight, or objects from outside the release. Names a
    pre-install Job's pod refers to (service account, ConfigMaps) that the release creates as
    ordinary resources would leave the pod unschedulable and `helm install` waiting."""
    ordinary = {(d.get("kind"), d["metadata"]["name"]) for d in docs if not hook_phases(d)}
    for d in docs:
        if d.get("kind") != "Job" or "pre-install" not in hook_phases(d):
            continue
        pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        refs = []
        if pod.get("serviceAccountName"):
            refs.append(("ServiceAccount", pod["serviceAccountName"]))
        for v in pod.get("volumes") or []:
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"].get("name")))
            for src in (v.get("projected") or {}).get("sources") or []:
                if "configMap" in src:
                    refs.append(("ConfigMap", src["configMap"].get("name")))
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            for e in c.get("envFrom") or []:
                if "configMapRef" in e:
                    refs.append(("ConfigMap", e["configMapRef"].get("name")))
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    refs.append(("ConfigMap", ref.get("name")))
        for ref in refs:
            if ref in ordinary:
                fail(f"{label}: pre-install Job {d['metadata']['name']} refers to {ref[0]} {ref[1]}, "
                     "which the release creates only after its pre-install hooks")


def set_path(values: dict, path: str, value) -> dict:
    out = copy.deepcopy(values)
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


# Values that must be refused by values.schema.json (and so by helm install/upgrade/template).
NEGATIVE = [
    ("negative replica count", "services.court.replicaCount", -1),
    ("replica count not a number", "services.audit.replicaCount", "two"),
    ("missing database password Secret name", "postgresql.external.existingSecret.name", ""),
    ("missing broker URLs Secret name", "rabbitmq.existingSecret", ""),
    ("missing broker URL key of a service", "rabbitmq.urlKeys.mediation", ""),
    ("missing signing keys (PKI) Secret name", "pki.existingSecret", ""),
    ("missing audit master key Secret name", "audit.masterKey.existingSecret", ""),
    ("declare Job without the operator's broker Secret", "rabbitmq.external.operatorSecret.name", ""),
    ("cert-manager without an issuer", "tls.certManager.issuerRef.name", ""),
    ("zero partitions", "topology.partitions", 0),
    ("zero tap partitions", "topology.tapPartitions", 0),
    ("a password written into values", "postgresql.external.password", "hunter2"),
    ("a password in a service's config override", "services.court.config", {"database": {"password": "hunter2"}}),
    ("a broker URL in a service's config override", "services.audit.config", {"amqp": {"url": "amqp://u:p@h/"}}),
    ("a misspelt top-level key", "replicas", 3),
    ("an unknown service", "services.notary", {"enabled": True}),
    ("invalid pull policy", "image.pullPolicy", "Sometimes"),
    ("agency id not kind:code", "directory.agencies", [{"id": "court-431003", "name": "x"}]),
    ("port out of range", "ports.metrics", 70000),
    ("busConnections below 1", "services.mediation.database.busConnections", 0),
    ("resources as a string", "services.console.resources", "lots"),
    ("HPA with zero minimum", "services.court.autoscaling.minReplicas", 0),
]


def negative_tests() -> int:
    helm_python.disable_logging()  # Helm's merge warnings about the deliberately wrong types
    chart = helm_python.Chart.load(str(CHART))
    refused = 0
    try:
        for label, path, value in NEGATIVE:
            values = set_path({}, path, value)
            try:
                chart.validate_schema(values)
            except helm_python.HelmValuesError as e:
                refused += 1
                first = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("- at")), str(e).splitlines()[0])
                print(f"  ok   refused: {label} ({path}={value!r}): {first[:140]}")
                continue
            fail(f"schema accepted invalid values: {label} ({path}={value!r})")
        # The schema is what `helm install` checks: rendering must fail too.
        try:
            chart.render(set_path({}, "services.court.replicaCount", -1), name=RELEASE, namespace=NAMESPACE, is_install=True)
            fail("render accepted a negative replica count (schema not applied when rendering)")
        except helm_python.HelmError:
            print("  ok   render refuses values the schema refuses")
    finally:
        chart.close()
    return refused


def main() -> int:
    t0 = time.monotonic()
    crds = load_crd_validators()
    sets = value_sets()
    print(f"chart {CHART.relative_to(ROOT)}: helm SDK {helm_python.helm_sdk_version()}, Kubernetes {KUBE_VERSION} schemas, "
          f"{len(crds)} CRD schemas, {len(sets)} value sets")
    print("lint:")
    for label, values in sets:
        lint(label, values)
        print(f"  {label}")
    print("render and validate:")
    counts = {"k8s": 0, "crd": 0, "kinds": {}}
    total = 0
    for label, values in sets:
        before = len(failures)
        try:
            n = render_and_validate(label, values, crds, counts)
        except helm_python.HelmError as e:
            fail(f"{label}: render failed: {e}")
            continue
        total += n
        print(f"  {label}: {n} manifests{'' if len(failures) == before else ' (with failures)'}")
    print("negative tests (values.schema.json must refuse):")
    refused = negative_tests()
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts["kinds"].items()))
    secs = time.monotonic() - t0
    print(
        f"summary: {len(sets)} value sets linted and rendered; {total} manifests validated "
        f"({counts['k8s']} against Kubernetes {KUBE_VERSION}, {counts['crd']} against CRD schemas); "
        f"{refused}/{len(NEGATIVE)} invalid value sets refused; {len(failures)} failures; {secs:.1f}s"
    )
    print(f"  kinds: {kinds}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
