#!/usr/bin/env python3
"""Extracts the JSON schema of KEDA's ScaledObject from its CRD, for the offline check of
deploy/k8s/keda-scaledobject.yaml (scripts/check-deploy.sh, check-jsonschema).

    python3 scripts/vendor-keda-schema.py keda.sh_scaledobjects.yaml SOURCE > \
        deploy/k8s/schemas/keda-scaledobject-v1alpha1.json

The input is config/crd/bases/keda.sh_scaledobjects.yaml of github.com/kedacore/keda
(Apache-2.0); SOURCE (repository and commit) is recorded in the output's `$comment`. The
CRD's openAPIV3Schema of version v1alpha1 is taken as is, then made strict the way the API
server treats a structural schema: an object with `properties` and without
`x-kubernetes-preserve-unknown-fields` accepts no other property (the API server would
prune them silently; here a misspelt field is an error). apiVersion and kind are pinned.
"""
import json
import sys

import yaml


def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node \
                and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)


crd = yaml.safe_load(open(sys.argv[1]))
version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
schema = version["schema"]["openAPIV3Schema"]
strict(schema)
schema["properties"]["apiVersion"] = {"const": "keda.sh/v1alpha1"}
schema["properties"]["kind"] = {"const": "ScaledObject"}
schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
out = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$comment": "KEDA ScaledObject keda.sh/v1alpha1: the openAPIV3Schema of config/crd/bases/keda.sh_scaledobjects.yaml "
                f"of {sys.argv[2]} (Apache License 2.0, Copyright The KEDA Authors), made strict by "
                "scripts/vendor-keda-schema.py. See deploy/k8s/schemas/README.md.",
}
out.update(schema)
json.dump(out, sys.stdout, indent=1, sort_keys=False)
sys.stdout.write("\n")
