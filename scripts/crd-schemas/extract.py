#!/usr/bin/env python3
"""Extracts the openAPIV3Schema of the CRDs duijie's chart uses from the operators' repositories.

Usage: extract.py REPO_GIT_DIR TAG PATH_IN_REPO [...]  (run once per operator; see SOURCES.md)
Writes <group>_<kind>_<version>.json here: just the schema, with its source in "x-duijie-source".
"""
import json
import pathlib
import subprocess
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent


def strip_descriptions(node):
    """Drops the prose (string "description" keys), keeping a property that is named description."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main() -> None:
    git_dir, tag, *paths = sys.argv[1:]
    repo = subprocess.run(["git", "-C", git_dir, "config", "--get", "remote.origin.url"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", git_dir, "rev-parse", f"{tag}^{{commit}}"], capture_output=True, text=True, check=True).stdout.strip()
    for path in paths:
        text = subprocess.run(["git", "-C", git_dir, "show", f"{tag}:{path}"], capture_output=True, text=True, check=True).stdout
        for crd in yaml.safe_load_all(text):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for ver in crd["spec"]["versions"]:
                if not ver.get("served", True):
                    continue
                schema = strip_descriptions(ver["schema"]["openAPIV3Schema"])
                schema["x-duijie-source"] = {"repository": repo or pathlib.Path(git_dir).parent.name.replace("+", "/"), "tag": tag, "commit": commit, "path": path}
                out = HERE / f"{group}_{kind}_{ver['name']}.json"
                out.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True, ensure_ascii=False) + "\n")
                print(f"{out.name}: {group}/{ver['name']} {kind} from {path}@{tag} ({commit[:12]})")


if __name__ == "__main__":
    main()
