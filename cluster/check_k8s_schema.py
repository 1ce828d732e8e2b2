"""Strict field check of the Kubernetes objects in cluster/*.yaml, without a cluster.

    pip install kubernetes && python cluster/check_k8s_schema.py

Every key of every object must be a field of its type: the official `kubernetes` client's models for built-in
types (Deployment, Service, PersistentVolumeClaim, and the pod templates and head services inside RayCluster and
RayJob), and KubeRay's ray.io/v1 field lists (tests/test_manifests.py, from KubeRay v1.6.2's CRD reference) for the
Ray parts. A typo such as `volumeMount:` is silently dropped by a lenient apply; this reports it. Exit status 1 if
anything is reported. The test suite runs the KubeRay part and the pod/container keys on every run; this adds the
full depth, which needs the `kubernetes` package (not a project dependency).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from kubernetes.client import models

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_manifests import HEAD_GROUP_FIELDS, RAYCLUSTER_SPEC_FIELDS, RAYJOB_SPEC_FIELDS, WORKER_GROUP_FIELDS  # noqa: E402

BUILT_IN = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Secret": "V1Secret",
}


def walk(obj, typ: str, where: str, errors: list[str]) -> None:
    """Check `obj` against the client model named `typ` (e.g. 'V1PodSpec', 'List[V1Container]'), recursively."""
    if obj is None:
        return
    if m := re.match(r"[Ll]ist\[(.*)\]$", typ):
        for i, item in enumerate(obj if isinstance(obj, list) else []):
            walk(item, m.group(1), f"{where}[{i}]", errors)
        return
    if m := re.match(r"[Dd]ict\[(\w+), (.*)\]$", typ):
        for key, item in (obj if isinstance(obj, dict) else {}).items():
            walk(item, m.group(2), f"{where}.{key}", errors)
        return
    cls = getattr(models, typ, None)
    if cls is None:  # str, int, object, ...
        return
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a {typ} mapping, got {obj!r}")
        return
    python_name = {json_name: name for name, json_name in cls.attribute_map.items()}
    for key, value in obj.items():
        if key not in python_name:
            errors.append(f"{where}.{key}: not a field of {typ}")
        else:
            walk(value, cls.openapi_types[python_name[key]], f"{where}.{key}", errors)


def check_ray_cluster_spec(spec: dict, where: str, errors: list[str]) -> None:
    errors += [f"{where}.{k}: not a RayClusterSpec field" for k in spec if k not in RAYCLUSTER_SPEC_FIELDS]
    head = spec.get("headGroupSpec", {})
    errors += [f"{where}.headGroupSpec.{k}: not a HeadGroupSpec field" for k in head if k not in HEAD_GROUP_FIELDS]
    walk(head.get("template"), "V1PodTemplateSpec", f"{where}.headGroupSpec.template", errors)
    walk(head.get("headService"), "V1Service", f"{where}.headGroupSpec.headService", errors)
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        errors += [
            f"{where}.workerGroupSpecs[{i}].{k}: not a WorkerGroupSpec field"
            for k in group
            if k not in WORKER_GROUP_FIELDS
        ]
        walk(group.get("template"), "V1PodTemplateSpec", f"{where}.workerGroupSpecs[{i}].template", errors)


def main() -> int:
    errors: list[str] = []
    count = 0
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or "kind" not in doc:
                continue  # ray-up.yaml, runtime-env.yaml
            count += 1
            where = f"{path.name}:{doc['kind']}"
            if doc["kind"] == "RayCluster":
                check_ray_cluster_spec(doc["spec"], f"{where}.spec", errors)
            elif doc["kind"] == "RayJob":
                spec = doc["spec"]
                errors += [f"{where}.spec.{k}: not a RayJobSpec field" for k in spec if k not in RAYJOB_SPEC_FIELDS]
                check_ray_cluster_spec(spec.get("rayClusterSpec", {}), f"{where}.spec.rayClusterSpec", errors)
                walk(
                    spec.get("submitterPodTemplate"), "V1PodTemplateSpec", f"{where}.spec.submitterPodTemplate", errors
                )
            elif doc["kind"] in BUILT_IN:
                walk(doc, BUILT_IN[doc["kind"]], where, errors)
            else:
                errors.append(f"{where}: no schema known for kind {doc['kind']}")
    for line in errors:
        print(line)
    print(f"{count} objects checked, {len(errors)} unknown fields")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
