"""The deployment files agree with each other and with the project (issue 11): cluster/ (KubeRay manifests, MLflow
server, `ray up` config, Dockerfile, runtime env), jobs/configs/, .dockerignore and the submit lines in the docs.

Each rule is a function that returns its violations (sentences), so every rule runs on the real files and, in the
negative tests, on a broken copy of a manifest, where it must fire. No Kubernetes is needed; the two MLflow tests start
real `mlflow server` processes with the manifests' own arguments.
"""

from __future__ import annotations

import copy
import fnmatch
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = "/mnt/shared"
SHARED_CLAIM = "trce-shared"

# Field names of KubeRay's ray.io/v1 types, from the generated CRD reference of KubeRay v1.6.2 (kuberay
# docs/reference/api.md, vendored in Ray's docs as doc/source/cluster/kubernetes/references/api.md).
RAYCLUSTER_SPEC_FIELDS = {
    "upgradeStrategy",
    "authOptions",
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {
    "template",
    "headService",
    "enableIngress",
    "resources",
    "labels",
    "rayStartParams",
    "serviceType",
}
WORKER_GROUP_FIELDS = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "resources",
    "labels",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
}
AUTH_OPTIONS_FIELDS = {"mode", "secretName", "enableK8sTokenAuth"}
AUTH_MODES = {"disabled", "token"}
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "preRunningDeadlineSeconds",
    "shutdownAfterJobFinishes",
    "suspend",
}
# Pod spec and container fields of the Kubernetes API (attribute maps of the `kubernetes` client 37.0.2 models
# V1PodSpec and V1Container); cluster/check_k8s_schema.py checks every other level with the models themselves.
POD_SPEC_FIELDS = {
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "evictionResponders", "hostAliases", "hostIPC", "hostNetwork",
    "hostPID", "hostUsers", "hostname", "hostnameOverride", "imagePullSecrets", "initContainers", "nodeName",
    "nodeSelector", "os", "overhead", "preemptionPolicy", "priority", "priorityClassName", "readinessGates",
    "resourceClaims", "resources", "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates",
    "schedulingGroup", "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations",
    "topologySpreadConstraints", "volumes",
}  # fmt: skip
CONTAINER_FIELDS = {
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name", "ports",
    "readinessProbe", "resizePolicy", "resources", "restartPolicy", "restartPolicyRules", "securityContext",
    "startupProbe", "stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty",
    "volumeDevices", "volumeMounts", "workingDir",
}  # fmt: skip

# The torchvision release built against each torch release: torchvision 0.28.0's wheel metadata on PyPI says
# "Requires-Dist: torch (==2.13.0)".
TORCHVISION_FOR_TORCH = {"2.13.0": "0.28.0"}


# ---------------------------------------------------------------------------------------------------------------
# Loading


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins for `package` (`name==X` or `name[extras]==X`)."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([0-9][^"]*)"', text)
    assert match, f"pyproject.toml pins no exact version of {package}"
    return match.group(1)


def yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def cluster_objects() -> list[dict]:
    """Every Kubernetes object (a mapping with apiVersion and kind) in cluster/*.yaml."""
    objs = []
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for doc in yaml_docs(path):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                objs.append(doc)
    return objs


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def ray_cluster_specs(obj: dict) -> list[tuple[str, dict]]:
    """(name, RayClusterSpec) of a RayCluster, or of the cluster a RayJob creates."""
    name = f"{obj['kind']} {obj.get('metadata', {}).get('name')}"
    if obj["kind"] == "RayCluster":
        return [(name, obj.get("spec", {}))]
    if obj["kind"] == "RayJob" and "rayClusterSpec" in obj.get("spec", {}):
        return [(f"{name} rayClusterSpec", obj["spec"]["rayClusterSpec"])]
    return []


def ray_groups(spec: dict) -> list[tuple[str, dict]]:
    """(role, group spec) of the head group and every worker group."""
    groups = [("head", spec.get("headGroupSpec", {}))]
    groups += [(f"worker group {g.get('groupName')}", g) for g in spec.get("workerGroupSpecs", [])]
    return groups


def pod_spec(group: dict) -> dict:
    return group.get("template", {}).get("spec", {})


def ray_container(group: dict) -> dict:
    """KubeRay runs Ray in the first container of a group's pod template (RayContainerIndex = 0)."""
    containers = pod_spec(group).get("containers") or [{}]
    return containers[0]


def all_pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests create: Ray head and workers, Deployments, RayJob submitters."""
    pods = []
    for obj in objs:
        for name, spec in ray_cluster_specs(obj):
            pods += [(f"{name} {role}", pod_spec(group)) for role, group in ray_groups(spec)]
        if obj["kind"] == "Deployment":
            pods.append((f"Deployment {obj['metadata']['name']}", obj["spec"]["template"]["spec"]))
        if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
            pods.append((f"RayJob {obj['metadata']['name']} submitter", obj["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_ref(env_entry: dict | None) -> dict | None:
    return ((env_entry or {}).get("valueFrom") or {}).get("secretKeyRef")


def secrets_created_by_docs() -> set[str]:
    """Secrets the cluster README tells the user to create (`kubectl create secret generic NAME`)."""
    text = (ROOT / "cluster" / "README.md").read_text()
    return set(re.findall(r"kubectl create secret generic ([\w.-]+)", text))


# ---------------------------------------------------------------------------------------------------------------
# Rules: each returns a list of violations


def kuberay_field_violations(obj: dict) -> list[str]:
    """Keys of ray.io/v1 objects and of their pod templates are fields of their types."""
    out = []
    kind = obj["kind"]
    if kind in ("RayCluster", "RayJob") and obj["apiVersion"] != "ray.io/v1":
        out.append(f"{kind}: apiVersion is {obj['apiVersion']}, not ray.io/v1")
    if kind == "RayJob":
        out += [f"RayJob spec.{k} is not a RayJobSpec field" for k in obj["spec"] if k not in RAYJOB_SPEC_FIELDS]
        if not obj["spec"].get("entrypoint"):
            out.append("RayJob has no entrypoint")
    for name, spec in ray_cluster_specs(obj):
        out += [f"{name}: {k} is not a RayClusterSpec field" for k in spec if k not in RAYCLUSTER_SPEC_FIELDS]
        auth = spec.get("authOptions", {})
        out += [f"{name}: authOptions.{k} is not an AuthOptions field" for k in auth if k not in AUTH_OPTIONS_FIELDS]
        if "mode" in auth and auth["mode"] not in AUTH_MODES:
            out.append(f"{name}: authOptions.mode {auth['mode']!r} is not one of {sorted(AUTH_MODES)}")
        if "headGroupSpec" not in spec:
            out.append(f"{name}: no headGroupSpec")
        for role, group in ray_groups(spec):
            allowed = HEAD_GROUP_FIELDS if role == "head" else WORKER_GROUP_FIELDS
            kind_name = "HeadGroupSpec" if role == "head" else "WorkerGroupSpec"
            out += [f"{name} {role}: {k} is not a {kind_name} field" for k in group if k not in allowed]
            if role != "head":
                for key in ("groupName", "minReplicas", "maxReplicas"):
                    if key not in group:
                        out.append(f"{name} {role}: {key} is missing")
            if not all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()):
                out.append(f"{name} {role}: rayStartParams values must be strings")
    for where, spec in all_pod_specs([obj]):
        out += [f"{where}: pod spec field {k} is unknown" for k in spec if k not in POD_SPEC_FIELDS]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            out += [f"{where} container {c.get('name')}: {k} is unknown" for k in c if k not in CONTAINER_FIELDS]
    return out


def shared_mount_violations(objs: list[dict]) -> list[str]:
    """Every pod mounts the shared claim, always at /mnt/shared; the claim is defined in cluster/."""
    out = []
    claims = {o["metadata"]["name"] for o in of_kind(objs, "PersistentVolumeClaim")}
    for where, spec in all_pod_specs(objs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in claims:
                out.append(f"{where}: volume {v['name']} uses claim {claim}, which no manifest in cluster/ defines")
        shared = {n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == SHARED_CLAIM}
        if not shared and not where.endswith("submitter"):
            out.append(f"{where}: does not mount the shared claim {SHARED_CLAIM}")
        for c in spec.get("containers", []):
            mounts = [m for m in c.get("volumeMounts", []) if m["name"] in shared]
            if shared and not mounts:
                out.append(f"{where} container {c['name']}: does not mount the shared volume")
            out += [
                f"{where} container {c['name']}: shared volume mounted at {m['mountPath']}, not {SHARED}"
                for m in mounts
                if m["mountPath"] != SHARED
            ]
    return out


SHARED_PATH = re.compile(r"(?<![\w.:/~-])(/[\w.-]*(?:/[\w.*-]*)*)")


def shared_path_violations(text: str, where: str) -> list[str]:
    """Every absolute path that names shared storage (/shared..., /mnt/...) lies under /mnt/shared."""
    out = []
    for path in SHARED_PATH.findall(text.replace("sqlite:///", "sqlite: ")):
        path = path.rstrip(".")  # the end of a sentence
        if ("shared" in path or path.startswith("/mnt")) and not (path == SHARED or path.startswith(SHARED + "/")):
            out.append(f"{where}: path {path} is not under {SHARED}")
    return out


def image_violations(objs: list[dict], dockerfile: str, ray_version: str) -> list[str]:
    """rayVersion, every image tag and the Dockerfile's base image are the Ray version pinned in pyproject.toml."""
    out = []
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M)
    if not base or not re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}(-[\w.-]+)?", base.group(1)):
        out.append(f"Dockerfile: FROM {base.group(1) if base else '?'} is not rayproject/ray:{ray_version}[-...]")
    for obj in objs:
        for name, spec in ray_cluster_specs(obj):
            if spec.get("rayVersion") != ray_version:
                out.append(f"{name}: rayVersion {spec.get('rayVersion')!r} is not {ray_version}")
    for where, spec in all_pod_specs(objs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            image = c.get("image", "")
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if tag != ray_version and not tag.startswith(ray_version + "-"):
                out.append(f"{where} container {c.get('name')}: image {image!r} is not tagged {ray_version}")
    return out


def token_auth_violations(obj: dict, secrets: set[str]) -> list[str]:
    """A RayCluster or RayJob's cluster runs with RAY_AUTH_MODE=token and a token from a Secret the docs create."""
    out = []
    for name, spec in ray_cluster_specs(obj):
        auth = spec.get("authOptions")
        if auth is not None:
            if auth.get("mode", "token") != "token" or auth.get("enableK8sTokenAuth"):
                out.append(f"{name}: authOptions must be mode: token with a Secret")
            elif not auth.get("secretName"):
                out.append(f"{name}: authOptions has no secretName (KubeRay would invent a per-cluster Secret)")
            elif auth["secretName"] not in secrets:
                out.append(f"{name}: token Secret {auth['secretName']} is neither defined nor created in the README")
            continue
        # Without authOptions, every Ray container, the autoscaler and a RayJob's submitter need both variables.
        containers = [(role, ray_container(g)) for role, g in ray_groups(spec)]
        if spec.get("enableInTreeAutoscaling"):
            containers.append(("autoscaler", spec.get("autoscalerOptions", {})))
        if obj["kind"] == "RayJob":
            submitter = obj["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers") or [{}]
            containers.append(("submitter", submitter[0]))
        for role, c in containers:
            env = env_of(c)
            mode_ok = env.get("RAY_AUTH_MODE", {}).get("value") == "token"
            ref = secret_ref(env.get("RAY_AUTH_TOKEN"))
            if not mode_ok or not ref:
                out.append(f"{name} {role}: no token auth (authOptions, or RAY_AUTH_MODE=token + RAY_AUTH_TOKEN)")
            elif ref["name"] not in secrets:
                out.append(f"{name} {role}: token Secret {ref['name']} is neither defined nor created in the README")
    return out


def gpu_count(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def gpu_worker_violations(obj: dict) -> list[str]:
    """GPU worker groups: num-gpus = the GPU limit, /dev/shm in memory, HF token from a Secret."""
    out = []
    for name, spec in ray_cluster_specs(obj):
        for role, group in ray_groups(spec)[1:]:
            container = ray_container(group)
            gpus = gpu_count(container)
            if not gpus:
                continue
            if group.get("rayStartParams", {}).get("num-gpus") != str(gpus):
                out.append(f"{name} {role}: rayStartParams num-gpus must be {gpus!r} (the nvidia.com/gpu limit)")
            volumes = {v["name"]: v for v in pod_spec(group).get("volumes", [])}
            shm = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            if not shm or volumes.get(shm[0]["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
                out.append(f"{name} {role}: /dev/shm is not an emptyDir with medium: Memory")
            if not secret_ref(env_of(container).get("HF_TOKEN")):
                out.append(f"{name} {role}: HF_TOKEN does not come from a Secret")
    return out


def mlflow_command(obj: dict) -> list[str] | None:
    """`mlflow server ...` argv of a Deployment's first container, or None."""
    c = obj["spec"]["template"]["spec"]["containers"][0]
    argv = list(c.get("command", [])) + list(c.get("args", []))
    return argv if argv[:2] == ["mlflow", "server"] else None


def option(argv: list[str], name: str) -> str | None:
    """Value of `--name=value` or `--name value` in argv."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def mlflow_uri_violations(objs: list[dict]) -> list[str]:
    """Every Ray container's MLFLOW_TRACKING_URI is http://SERVICE:PORT of a Service in cluster/ whose Deployment
    runs `mlflow server` with its stores on the shared volume and accepts that host name."""
    out = []
    services = {o["metadata"]["name"]: o for o in of_kind(objs, "Service")}
    for obj in objs:
        for name, spec in ray_cluster_specs(obj):
            for role, group in ray_groups(spec):
                uri = env_of(ray_container(group)).get("MLFLOW_TRACKING_URI", {}).get("value")
                if not uri:
                    out.append(f"{name} {role}: no MLFLOW_TRACKING_URI")
                    continue
                url = urlparse(uri)
                host = url.hostname or ""
                service = services.get(host.split(".")[0])
                if url.scheme != "http" or service is None:
                    out.append(f"{name} {role}: MLFLOW_TRACKING_URI {uri} names no Service defined in cluster/")
                    continue
                port = service["spec"]["ports"][0]
                if url.port != port["port"]:
                    out.append(
                        f"{name} {role}: MLFLOW_TRACKING_URI port {url.port} is not the Service's {port['port']}"
                    )
                selector = service["spec"].get("selector", {})
                servers = [
                    d
                    for d in of_kind(objs, "Deployment")
                    if selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
                ]
                if not servers or not mlflow_command(servers[0]):
                    out.append(f"{name} {role}: Service {host} selects no Deployment running mlflow server")
                    continue
                argv = mlflow_command(servers[0])
                backend = option(argv, "--backend-store-uri") or ""
                artifacts = option(argv, "--artifacts-destination") or ""
                if not (backend.startswith(f"sqlite:///{SHARED}/") or backend.startswith("postgresql")):
                    out.append(f"mlflow server: backend {backend!r} is neither sqlite under {SHARED} nor postgresql")
                if not (artifacts.startswith(SHARED + "/") or re.match(r"(s3|gs|wasbs)://", artifacts)):
                    out.append(
                        f"mlflow server: artifacts {artifacts!r} are neither under {SHARED} nor an object store"
                    )
                allowed = (option(argv, "--allowed-hosts") or "").split(",")
                if not any(fnmatch.fnmatch(url.netloc, a) if "*" in a else url.netloc == a for a in allowed):
                    out.append(f"mlflow server: --allowed-hosts does not accept Host {url.netloc}")
    return out


PATH_FIELDS = {
    "model.path",
    "stage1.concept",
    "stage1.erase_prompts",
    "stage1.target_prompts",
    "stage1.preserve_prompts",
    "stage1.concepts",
    "stage1.concepts.names",
    "stage1.retain",
    "cache.root",
    "train.storage",
    "eval.data_dir",
    "eval.prompt_files.*",
    "eval.celebrity_erase",
    "eval.celebrity_retain",
    "eval.deltas",
    "eval.reference_model",
    "eval.image_dir",
    "eval.q16_clip",
    "eval.q16_embeddings",
    "eval.clip_model",
    "eval.fid_weights",
    "eval.fid_real_images",
    "tracking.uri",
    "output",
}
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name


def config_leaves(data, prefix: str = ""):
    """(dotted key, value) of every scalar in a config; sweep.grid values count as their swept key's values."""
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if dotted == "sweep.grid":
                for swept, values in value.items():
                    yield from ((swept, v) for v in values)
            else:
                yield from config_leaves(value, dotted + ".")
    elif isinstance(data, list):
        for item in data:
            yield from config_leaves(item, prefix)
    else:
        yield prefix.rstrip("."), data


def config_path_violations(data: dict, where: str) -> list[str]:
    """Every path in a jobs/configs file is absolute under /mnt/shared, or exists inside the repository."""
    out = []
    for key, value in config_leaves(data):
        if not isinstance(value, str):
            continue
        is_path_field = key in PATH_FIELDS or any(fnmatch.fnmatch(key, p) for p in PATH_FIELDS if "*" in p)
        looks_like_path = value.startswith(("/", "./", "../", "~")) or "://" in value
        if not (is_path_field or looks_like_path):
            continue
        path = value
        if "://" in value:
            if not value.startswith("sqlite:"):
                continue  # a server URI
            path = value.split(":///", 1)[1]
        if path.startswith("/"):
            if not path.startswith(SHARED + "/"):
                out.append(f"{where}: {key} = {value} is absolute but not under {SHARED}")
            continue
        if key == "model.path" and path == "toy":
            continue
        if key == "stage1.concept" and (ROOT / "trce_ray" / "packs" / f"{path}.yaml").is_file():
            continue
        if key in ("model.path", "eval.reference_model", "eval.q16_clip", "eval.clip_model") and HUB_ID.fullmatch(
            path
        ):
            continue
        if not (ROOT / path).exists():
            out.append(f"{where}: {key} = {value} is relative and does not exist in the repository")
    return out


def dockerignore_violations(text: str) -> list[str]:
    entries = {line.strip().rstrip("/") for line in text.splitlines() if line.strip() and not line.startswith("#")}
    needed = {".venv", ".git", "trce-cache", "mlartifacts", "mlruns", "mlflow.db", "demo-output", "runs"}
    out = [f".dockerignore does not list {n}" for n in sorted(needed - entries)]
    if not entries & {"**/__pycache__", "__pycache__"}:
        out.append(".dockerignore does not list __pycache__")
    return out


CONFIG_REF = re.compile(r"jobs/configs/[\w.-]+\.ya?ml")


def cited_config_violations(files: list[Path]) -> list[str]:
    out = []
    for f in files:
        for ref in sorted(set(CONFIG_REF.findall(f.read_text()))):
            if not (ROOT / ref).is_file():
                out.append(f"{rel(f)} cites {ref}, which does not exist")
    return out


def fenced_blocks(text: str, languages=("bash", "sh", "shell", "")) -> list[str]:
    """The fenced code blocks of a markdown text whose language is one of `languages`."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current, language = [], line.strip()[3:].strip()
            else:
                if language in languages:
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def shell_snippets(path: Path) -> list[str]:
    """Shell code in a file: fenced shell blocks of markdown, comment lines of YAML/Dockerfile, the docstrings of .py;
    backslash continuations joined."""
    text = path.read_text()
    if path.suffix == ".md":
        blocks = fenced_blocks(text)
    elif path.suffix == ".py":
        blocks = re.findall(r'"""(.*?)"""', text, re.S)
    else:
        blocks = ["\n".join(line.lstrip("# ") for line in text.splitlines() if line.lstrip().startswith("#"))]
    return [re.sub(r"\\\n\s*", " ", b) for b in blocks]


SUBMIT = re.compile(r"\s*(?:[A-Z_]+=\S*\s+)*ray job submit\b")  # a command line, not prose about it


def submit_line_violations(path: Path) -> list[str]:
    """Every `ray job submit` ships the checkout with --working-dir . and cluster/runtime-env.yaml; in the READMEs
    its code block also turns on token auth and says where the token comes from."""
    out = []
    where = rel(path)
    for block in shell_snippets(path):
        for line in block.splitlines():
            if not SUBMIT.match(line):
                continue
            if not re.search(r"--working-dir \.(\s|$)", line):
                out.append(f"{where}: submit line without --working-dir .: {line.strip()[:90]}")
            if "--runtime-env cluster/runtime-env.yaml" not in line:
                out.append(f"{where}: submit line without --runtime-env cluster/runtime-env.yaml: {line.strip()[:90]}")
            if path.suffix == ".md":
                if "RAY_AUTH_MODE=token" not in block:
                    out.append(f"{where}: a code block with ray job submit does not set RAY_AUTH_MODE=token")
                if "RAY_AUTH_TOKEN" not in block and "auth_token" not in block:
                    out.append(f"{where}: a code block with ray job submit does not say where the token comes from")
    return out


def ray_up_violations(cfg: dict) -> list[str]:
    """`ray up`: token on every node; Ray started with the venv first on PATH (job entry points run the first python
    there), RAY_AUTH_MODE=token and MLFLOW_TRACKING_URI naming the MLflow server the head starts, bound to the head's
    address (not 0.0.0.0, not loopback)."""
    out = []
    if not any(k.endswith("/.ray/auth_token") for k in cfg.get("file_mounts", {})):
        out.append("ray-up: file_mounts does not copy ~/.ray/auth_token to the nodes")
    head = cfg.get("head_start_ray_commands", [])
    starts = [c for c in head + cfg.get("worker_start_ray_commands", []) if "ray start" in c]
    if len(starts) < 2:
        out.append("ray-up: no ray start command for the head and the workers")
    servers = [c for c in head if "mlflow server" in c]
    if not servers:
        return out + ["ray-up: the head starts no mlflow server"]
    argv = re.search(r"mlflow server ([^'&>]*)", servers[0]).group(1).split()
    host, port = option(argv, "--host"), option(argv, "--port")
    if host in (None, "0.0.0.0", "127.0.0.1", "localhost"):
        out.append(f"ray-up: mlflow server binds {host}, not the head's private address")
    for c in starts:
        if not re.search(r"export PATH=/mnt/shared/trce-ray/\.venv/bin:\$PATH\b.*&& *ray start", c):
            out.append(f"ray-up: {c[:60]}... does not start Ray from PATH with the venv first (jobs' python)")
        if "RAY_AUTH_MODE=token" not in c:
            out.append(f"ray-up: {c[:60]}... starts Ray without RAY_AUTH_MODE=token")
        if f"MLFLOW_TRACKING_URI=http://{host}:{port}" not in c:
            out.append(f"ray-up: {c[:60]}... does not set MLFLOW_TRACKING_URI=http://{host}:{port}")
    backend = option(argv, "--backend-store-uri") or ""
    if not backend.startswith(f"sqlite:///{SHARED}/"):
        out.append(f"ray-up: mlflow backend {backend} is not under {SHARED}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The rules on the real files

RAY_VERSION = pinned("ray")
OBJS = cluster_objects()
RAY_OBJS = [o for o in OBJS if o["kind"] in ("RayCluster", "RayJob")]
DOCS = [ROOT / "README.md", ROOT / "jobs" / "README.md", ROOT / "cluster" / "README.md"]


def test_cluster_holds_a_raycluster_a_rayjob_and_the_mlflow_server():
    kinds = sorted(o["kind"] for o in OBJS)
    assert kinds == ["Deployment", "PersistentVolumeClaim", "RayCluster", "RayJob", "Service"]


def test_kuberay_and_pod_fields_are_those_of_the_crd_and_the_kubernetes_api():
    assert [v for o in OBJS for v in kuberay_field_violations(o)] == []


def test_every_pod_mounts_the_shared_claim_at_one_path():
    assert shared_mount_violations(OBJS) == []


def test_every_path_naming_shared_storage_is_under_mnt_shared():
    files = sorted((ROOT / "cluster").iterdir()) + sorted((ROOT / "jobs").rglob("*.*")) + DOCS
    files = [
        f for f in files if f.is_file() and f.suffix in (".yaml", ".md", ".py", "") and "__pycache__" not in f.parts
    ]
    out = []
    for f in files:
        text = f.read_text()
        if f.name == "README.md" and f.parent == ROOT:  # the project README: its "On a Ray cluster" section
            text = text.split("### On a Ray cluster", 1)[1].split("\n## ", 1)[0]
        out += shared_path_violations(text, str(f.relative_to(ROOT)))
    assert out == []


def test_images_and_ray_versions_are_the_ray_pinned_in_pyproject():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert image_violations(OBJS, dockerfile, RAY_VERSION) == []


def test_dockerfile_installs_pinned_torch_first_then_the_project_and_what_inception_fid_needs():
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.*)$", re.sub(r"\\\n", " ", text), re.M)
    torch = pinned("torch")
    torchvision = TORCHVISION_FOR_TORCH[torch]
    assert f"torch=={torch}" in runs[0] and f"torchvision=={torchvision}" in runs[0]
    assert "-e ." in runs[1] and "-c constraints.txt" in runs[1]
    assert f"torchvision=={torchvision}" in runs[1] and "torch-fidelity==" in runs[1]
    pins = (ROOT / "constraints.txt").read_text().split()
    assert pins[0] == f"torch=={torch}" and all(re.fullmatch(r"[\w.-]+==[\w.]+", p) for p in pins)
    copied = " ".join(re.findall(r"^COPY .*$", text, re.M))
    for needed in ("pyproject.toml", "README.md", "LICENSE", "constraints.txt", "trce_ray", "jobs"):
        assert needed in copied, f"the Dockerfile does not copy {needed}, which the install needs"


def test_raycluster_and_rayjob_use_token_auth_from_a_secret():
    assert {o["kind"] for o in RAY_OBJS} == {"RayCluster", "RayJob"}
    secrets = secrets_created_by_docs() | {o["metadata"]["name"] for o in of_kind(OBJS, "Secret")}
    assert [v for o in RAY_OBJS for v in token_auth_violations(o, secrets)] == []


def test_gpu_worker_groups_have_num_gpus_shm_and_the_hf_token():
    groups = [g for o in RAY_OBJS for _, s in ray_cluster_specs(o) for _, g in ray_groups(s)[1:]]
    assert groups and all(gpu_count(ray_container(g)) == 1 for g in groups)
    assert [v for o in RAY_OBJS for v in gpu_worker_violations(o)] == []


def test_mlflow_tracking_uri_points_at_the_mlflow_service_in_cluster():
    assert mlflow_uri_violations(OBJS) == []


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_jobs_config_paths_are_shared_or_in_the_repository(path):
    assert config_path_violations(yaml.safe_load(path.read_text()), path.name) == []


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    assert dockerignore_violations((ROOT / ".dockerignore").read_text()) == []


def test_every_config_cited_by_job_scripts_docs_and_manifests_exists():
    files = sorted((ROOT / "jobs").glob("*.py")) + sorted((ROOT / "cluster").glob("*")) + DOCS
    files += sorted((ROOT / "docs").glob("*.md"))
    assert cited_config_violations([f for f in files if f.is_file()]) == []


def test_submit_lines_use_the_working_dir_the_runtime_env_and_token_auth():
    files = DOCS + sorted((ROOT / "jobs").glob("*.py")) + sorted((ROOT / "cluster").glob("*.yaml"))
    blocks = [block for f in files for block in shell_snippets(f)]
    assert sum(bool(SUBMIT.match(line)) for block in blocks for line in block.splitlines()) >= 10
    assert [v for f in files for v in submit_line_violations(f)] == []


def test_ray_up_config_has_token_auth_and_an_mlflow_server_on_the_head():
    cfg = yaml.safe_load((ROOT / "cluster" / "ray-up.yaml").read_text())
    assert ray_up_violations(cfg) == []


def test_runtime_env_excludes_keep_local_state_out_of_job_uploads(tmp_path):
    """Ray's own packager, with the excludes of cluster/runtime-env.yaml and .gitignore ignored (the worst case),
    zips every tracked file and nothing of .venv, .git, caches, MLflow stores or outputs."""
    from ray._private.runtime_env.packaging import _zip_files

    excludes = yaml.safe_load((ROOT / "cluster" / "runtime-env.yaml").read_text())["excludes"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    tree = tmp_path / "checkout"
    junk = [
        ".venv/bin/python",
        ".git/HEAD",
        "trce-cache/0123abcd/shard-00000.parquet",
        "mlartifacts/1/abc/artifacts/stage1.safetensors",
        "mlruns/0/meta.yaml",
        "mlflow.db",
        "runs/sexual/stage1.safetensors",
        "demo-output/table.txt",
        "trce_ray/__pycache__/cli.cpython-311.pyc",
        "trce_ray.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/lastfailed",
    ]
    for rel in tracked + junk:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    _zip_files(str(tree), excludes, str(tmp_path / "job.zip"), include_gitignore=False)
    uploaded = {n for n in zipfile.ZipFile(tmp_path / "job.zip").namelist() if not n.endswith("/")}
    assert uploaded == set(tracked) - {".git"}


# ---------------------------------------------------------------------------------------------------------------
# Negative checks: a broken manifest makes each rule fire


def _raycluster() -> dict:
    return copy.deepcopy(of_kind(OBJS, "RayCluster")[0])


def _worker(obj: dict) -> dict:
    return obj["spec"]["workerGroupSpecs"][0]


def _break_mount(o):
    ray_container(o["spec"]["headGroupSpec"])["volumeMounts"][0]["mountPath"] = "/shared"


def _break_auth(o):
    del o["spec"]["authOptions"]


def _break_secret(o):
    o["spec"]["authOptions"]["secretName"] = "nobody-made-this"


def _break_num_gpus(o):
    _worker(o)["rayStartParams"].pop("num-gpus")


def _break_shm(o):
    pod_spec(_worker(o))["volumes"] = [v for v in pod_spec(_worker(o))["volumes"] if v["name"] != "dshm"]


def _break_hf_token(o):
    c = ray_container(_worker(o))
    c["env"] = [e for e in c["env"] if e["name"] != "HF_TOKEN"]


def _break_image(o):
    ray_container(_worker(o))["image"] = "REGISTRY/trce-ray:2.59.0"


def _break_ray_version(o):
    o["spec"]["rayVersion"] = "2.52.0"


def _break_mlflow_uri(o):
    env_of(ray_container(_worker(o)))["MLFLOW_TRACKING_URI"]["value"] = "http://mlflow.trce.svc:5000"


def _break_field(o):
    _worker(o)["workerGroupSpec"] = _worker(o).pop("rayStartParams")


def _break_container_field(o):
    c = ray_container(o["spec"]["headGroupSpec"])
    c["volumeMount"] = c.pop("volumeMounts")


def _break_claim(o):
    pod_spec(o["spec"]["headGroupSpec"])["volumes"][0]["persistentVolumeClaim"]["claimName"] = "scratch"


def _manual_auth_without_autoscaler(o):
    """The pre-1.6 form (env vars instead of authOptions) on head and workers, but not on the autoscaler."""
    secret = o["spec"].pop("authOptions")["secretName"]
    for _, group in ray_groups(o["spec"]):
        ray_container(group)["env"] += [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "auth_token"}}},
        ]


BREAKS = [
    (_break_mount, lambda o: shared_mount_violations([o, *of_kind(OBJS, "PersistentVolumeClaim")]), "not /mnt/shared"),
    (_break_claim, lambda o: shared_mount_violations([o, *of_kind(OBJS, "PersistentVolumeClaim")]), "no manifest"),
    (_break_auth, lambda o: token_auth_violations(o, secrets_created_by_docs()), "no token auth"),
    (_break_secret, lambda o: token_auth_violations(o, secrets_created_by_docs()), "nobody-made-this"),
    (_manual_auth_without_autoscaler, lambda o: token_auth_violations(o, secrets_created_by_docs()), "autoscaler: no"),
    (_break_num_gpus, gpu_worker_violations, "num-gpus"),
    (_break_shm, gpu_worker_violations, "/dev/shm"),
    (_break_hf_token, gpu_worker_violations, "HF_TOKEN"),
    (_break_image, lambda o: image_violations([o], "FROM rayproject/ray:2.60.0-py311-gpu", "2.60.0"), "2.59.0"),
    (_break_ray_version, lambda o: image_violations([o], "FROM rayproject/ray:2.60.0-py311-gpu", "2.60.0"), "2.52.0"),
    (
        _break_mlflow_uri,
        lambda o: mlflow_uri_violations([o, *of_kind(OBJS, "Service"), *of_kind(OBJS, "Deployment")]),
        "no Service",
    ),
    (_break_field, kuberay_field_violations, "workerGroupSpec is not a WorkerGroupSpec field"),
    (_break_container_field, kuberay_field_violations, "volumeMount is unknown"),
]


@pytest.mark.parametrize("brk,rule,expected", BREAKS, ids=[b[0].__name__.removeprefix("_break_") for b in BREAKS])
def test_each_rule_fires_on_a_broken_raycluster(brk, rule, expected):
    good = _raycluster()
    assert not [v for v in rule(good) if expected in v]  # the intact manifest passes this rule
    brk(good)
    fired = rule(good)
    assert any(expected in v for v in fired), fired


def test_mlflow_rule_fires_when_the_server_refuses_the_service_host_or_keeps_its_store_off_the_volume():
    objs = copy.deepcopy(OBJS)
    server = of_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    server["args"] = [a for a in server["args"] if not a.startswith("--allowed-hosts")]
    server["args"] = [a.replace(f"sqlite:///{SHARED}/mlflow", "sqlite:///mlflow") for a in server["args"]]
    fired = mlflow_uri_violations(objs)
    assert any("does not accept Host trce-mlflow:5000" in v for v in fired), fired
    assert any("backend 'sqlite:///mlflow/mlflow.db'" in v for v in fired), fired


def test_config_path_rule_fires_on_paths_off_the_shared_volume_or_missing():
    cfg = {
        "model": {"path": "CompVis/stable-diffusion-v1-4"},
        "stage1": {"concept": "sexual", "preserve_prompts": "trce_ray/toy/prompts/preserve-red.txt"},
        "cache": {"root": "/shared/trce-cache"},
        "train": {"storage": "trce-train"},
        "eval": {"image_dir": "/mnt/shared/images", "prompt_files": {"mma": "/data/mma.csv"}},
        "tracking": {"uri": "sqlite:///mlflow.db"},
        "sweep": {"grid": {"stage1.erase_prompts": ["/mnt/shared/a.txt", "missing.txt"]}},
    }
    fired = config_path_violations(cfg, "x.yaml")
    assert sorted(v.split(": ", 1)[1].split(" = ")[0] for v in fired) == [
        "cache.root",
        "eval.prompt_files.mma",
        "stage1.erase_prompts",
        "tracking.uri",
        "train.storage",
    ]


def test_doc_rules_fire_on_a_bare_submit_line_a_missing_config_and_a_thin_dockerignore(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("```bash\nray job submit -- \\\n    python jobs/erase.py --config jobs/configs/nope.yaml\n```\n")
    fired = submit_line_violations(doc)
    cited = cited_config_violations([doc])
    assert [v.split(": ", 1)[1][:30] for v in fired] == [
        "submit line without --working-",
        "submit line without --runtime-",
        "a code block with ray job subm",
        "a code block with ray job subm",
    ]
    assert cited == [f"{doc} cites jobs/configs/nope.yaml, which does not exist"]
    assert dockerignore_violations(".git\n**/__pycache__\n") == [
        f".dockerignore does not list {n}"
        for n in (".venv", "demo-output", "mlartifacts", "mlflow.db", "mlruns", "runs", "trce-cache")
    ]
    assert shared_path_violations("root: /shared/trce-cache, ok: /mnt/shared/x, /mnt/data", "f") == [
        "f: path /shared/trce-cache is not under /mnt/shared",
        "f: path /mnt/data is not under /mnt/shared",
    ]


def test_ray_up_rule_fires_without_token_or_with_mlflow_on_all_interfaces():
    cfg = yaml.safe_load((ROOT / "cluster" / "ray-up.yaml").read_text())
    cfg["file_mounts"] = {}
    cfg["worker_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token ", "") for c in cfg["worker_start_ray_commands"]
    ]
    cfg["head_start_ray_commands"] = [
        c.replace("--host HEAD_IP", "--host 0.0.0.0") for c in cfg["head_start_ray_commands"]
    ]
    fired = ray_up_violations(cfg)
    assert any("auth_token" in v for v in fired)
    assert any("without RAY_AUTH_MODE=token" in v for v in fired)
    assert any("binds 0.0.0.0" in v for v in fired)
    cfg["head_start_ray_commands"] = [c.replace("export PATH=", "export P=") for c in cfg["head_start_ray_commands"]]
    assert any("venv first" in v for v in ray_up_violations(cfg))


# ---------------------------------------------------------------------------------------------------------------
# The MLflow server commands, run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def _wait_healthy(port: int, pgid: int, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _get(port, "/health", f"127.0.0.1:{port}") == 200:
                return
        except OSError:
            pass
        if not _live_members(pgid):
            break
        time.sleep(0.5)
    raise AssertionError(f"mlflow server did not come up:\n{log.read_text()[-3000:]}")


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (an orphan's zombie waits for init to reap it)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _stop(pgid: int) -> None:
    """SIGTERM the whole process group, SIGKILL what is left after 20 s."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while _live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _live_members(pgid):
        os.kill(pid, signal.SIGKILL)


def _mlflow_bin() -> str:
    return str(Path(sys.executable).with_name("mlflow"))


@pytest.mark.slow
def test_mlflow_server_with_the_deployment_arguments_serves_the_service_and_keeps_artifacts_on_the_volume(tmp_path):
    """cluster/mlflow.yaml's exact arguments (the shared volume moved to a temp folder, bound to loopback on a free
    port): requests addressed to the Service name pass MLflow's Host check, a foreign host is refused, and an
    artifact a client logs over HTTP lands under mlflow/artifacts on the shared volume, beside the sqlite store."""
    import mlflow

    argv = mlflow_command(of_kind(OBJS, "Deployment")[0])
    port = _free_port()
    argv = [a.replace(SHARED, str(tmp_path)) for a in argv]
    argv = ["--host=127.0.0.1" if a.startswith("--host") else a for a in argv]
    argv = [f"--port={port}" if a.startswith("--port") else a for a in argv]
    log = tmp_path / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [_mlflow_bin(), *argv[1:]], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
        )
    try:
        _wait_healthy(port, proc.pid, log)
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        service_port = of_kind(OBJS, "Service")[0]["spec"]["ports"][0]["port"]
        assert _get(port, api, f"trce-mlflow:{service_port}") == 200
        assert _get(port, api, f"trce-mlflow.trce.svc.cluster.local:{service_port}") == 200
        assert _get(port, api, f"localhost:{service_port}") == 200  # kubectl port-forward
        assert _get(port, api, f"attacker.example:{service_port}") == 403

        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("trce-ray"))
        (tmp_path / "note.txt").write_text("kept")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"), "erased_model")
        assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied
        stored = list((tmp_path / "mlflow" / "artifacts").rglob("erased_model/note.txt"))
        assert [p.read_text() for p in stored] == ["kept"]
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    finally:
        _stop(proc.pid)
        proc.wait(timeout=30)


def test_ray_up_mlflow_command_replaces_exactly_its_own_server(tmp_path):
    """The head's MLflow command from cluster/ray-up.yaml, run by bash as written (HEAD_IP = 127.0.0.1, the shared
    volume and /tmp moved to a temp folder), with a stand-in for `mlflow` that, like the real server, keeps a worker
    process in its group: a second run stops the first server's whole process group and starts a new one with the
    same arguments; an unrelated process survives."""
    cfg = yaml.safe_load((ROOT / "cluster" / "ray-up.yaml").read_text())
    command = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    fake = tmp_path / "fake-mlflow"
    fake.write_text('#!/bin/sh\necho "$@" > "$0.args"\nsleep 300 &\nexec sleep 301\n')
    fake.chmod(0o755)
    command = (
        command.replace("/mnt/shared/trce-ray/.venv/bin/mlflow", str(fake))
        .replace("/tmp/trce-mlflow", str(tmp_path / "trce-mlflow"))
        .replace(SHARED, str(tmp_path))
        .replace("HEAD_IP", "127.0.0.1")
    )
    pid_file = tmp_path / "trce-mlflow.pid"
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    started: list[int] = []

    def start() -> int:
        """Run the command; the server's sh writes its pid just after bash has returned."""
        before = pid_file.read_text() if pid_file.exists() else ""
        subprocess.run(["bash", "-c", command], check=True, timeout=60)
        for _ in range(200):
            now = pid_file.read_text().strip() if pid_file.exists() else ""
            if now and now != before and len(_live_members(int(now))) == 2:
                started.append(int(now))
                return int(now)
            time.sleep(0.05)
        raise AssertionError("the command started no server")

    try:
        first = start()
        assert os.getsid(first) == first  # its own session: the pid names the process group to stop
        second = start()
        assert second != first
        assert _live_members(first) == []  # the first server and its worker are gone
        assert len(_live_members(second)) == 2
        assert bystander.poll() is None
        assert (tmp_path / "fake-mlflow.args").read_text().split() == [
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow/mlflow.db",
            "--artifacts-destination",
            f"{tmp_path}/mlflow/artifacts",
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            "5000",
            "--workers",
            "1",
        ]
    finally:
        for pgid in started:
            _stop(pgid)
        bystander.kill()
        bystander.wait()
