"""Offline checks of KubeRay manifests: schema (pinned CRDs), a few CEL rules, and GPU counts against a recipe.

The CRDs' OpenAPI schemas allow unknown fields, so a misspelt key would pass silently; :func:`strict_schema`
closes every object that lists ``properties`` (``additionalProperties: false``), as the schemas README says.
Objects marked ``x-kubernetes-preserve-unknown-fields`` stay open, as the API server keeps them open.
The CEL rules (``x-kubernetes-validations``) are not evaluated by jsonschema; :func:`cel_errors` re-implements
the ones our manifests could trip.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from vt_ray.config.resources import ResourcesConfig, placement_groups, total_resources

KIND_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
RECIPE_ANNOTATION = "vt-ray/recipe"
GPU_KEY = "nvidia.com/gpu"


def strict_schema(node: Any) -> Any:
    """A copy of an OpenAPI schema with ``additionalProperties: false`` on every object listing properties."""
    node = copy.deepcopy(node)

    def visit(n: Any) -> None:
        if isinstance(n, dict):
            if "properties" in n and "additionalProperties" not in n and not n.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                n["additionalProperties"] = False
            for value in n.values():
                visit(value)
        elif isinstance(n, list):
            for value in n:
                visit(value)

    visit(node)
    return node


@cache
def crd_validator(crd_dir: str, kind: str) -> jsonschema.protocols.Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-1.4 MB: the C loader is 10x faster
    crd = yaml.load((Path(crd_dir) / KIND_FILES[kind]).read_text(), Loader=loader)  # noqa: S506 (safe loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def schema_errors(manifest: dict[str, Any], crd_dir: str | Path) -> list[str]:
    """Every schema violation as 'path: message' (empty when valid)."""
    kind = manifest.get("kind")
    if manifest.get("apiVersion") != "ray.io/v1" or kind not in KIND_FILES:
        return [f"not a ray.io/v1 RayCluster or RayJob: {manifest.get('apiVersion')} {kind}"]
    validator = crd_validator(str(crd_dir), kind)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(manifest)]


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    return spec["rayClusterSpec"] if manifest["kind"] == "RayJob" else spec


def cel_errors(manifest: dict[str, Any]) -> list[str]:
    """The CRD CEL rules and operator checks that apply to our fields."""
    errors = []
    spec = manifest["spec"]
    if manifest["kind"] == "RayJob":
        strategy = spec.get("deletionStrategy")
        if strategy is not None:
            legacy = "onSuccess" in strategy or "onFailure" in strategy
            if legacy and "deletionRules" in strategy:
                errors.append("deletionStrategy: onSuccess/onFailure and deletionRules are exclusive")
            if not (("onSuccess" in strategy and "onFailure" in strategy) or "deletionRules" in strategy):
                errors.append("deletionStrategy: needs both onSuccess and onFailure, or deletionRules")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes", False):
            errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    return errors


def recipe_of(manifest: dict[str, Any]) -> str | None:
    """The recipe a manifest runs: ``recipe=...`` in a RayJob entrypoint, or a RayCluster's annotation."""
    if manifest["kind"] == "RayJob":
        found = re.search(r"\brecipe=(\S+)", manifest["spec"].get("entrypoint", ""))
        return found.group(1) if found else None
    return manifest.get("metadata", {}).get("annotations", {}).get(RECIPE_ANNOTATION)


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _gpus(container: dict[str, Any]) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get(GPU_KEY, 0))


def layout_errors(manifest: dict[str, Any], res: ResourcesConfig) -> list[str]:
    """Where the manifest's nodes, GPUs and CPUs disagree with the recipe's resources and placement groups."""
    spec = cluster_spec(manifest)
    errors = []
    head = spec["headGroupSpec"]
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        errors.append("head: rayStartParams num-cpus must be '0' (no actors on the head)")
    if any(_gpus(c) for c in _containers(head)):
        errors.append("head: must not request GPUs")
    gpu_groups = [g for g in spec.get("workerGroupSpecs", []) if any(_gpus(c) for c in _containers(g))]
    nodes = sum(g.get("replicas", 0) * g.get("numOfHosts", 1) for g in gpu_groups)
    if nodes != res.num_nodes:
        errors.append(f"GPU worker pods: {nodes}, recipe resources.num_nodes: {res.num_nodes}")
    for g in gpu_groups:
        name = g["groupName"]
        per_pod = sum(_gpus(c) for c in _containers(g))
        if per_pod != res.gpus_per_node:
            errors.append(f"{name}: {per_pod} GPUs per pod, recipe resources.gpus_per_node: {res.gpus_per_node}")
        params = g.get("rayStartParams", {})
        if params.get("num-gpus", str(per_pod)) != str(per_pod):
            errors.append(f"{name}: rayStartParams num-gpus {params['num-gpus']} != the pod's {per_pod} GPUs")
        if params.get("num-cpus") != str(res.cpus_per_node):
            errors.append(f"{name}: rayStartParams num-cpus {params.get('num-cpus')} != resources.cpus_per_node "
                          f"{res.cpus_per_node}")
        if not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
            errors.append(f"{name}: replicas outside [minReplicas, maxReplicas]")
    cluster_gpus = nodes * res.gpus_per_node
    asked = total_resources(placement_groups(res)).get("GPU", 0)
    if asked != cluster_gpus:
        errors.append(f"the recipe's placement groups ask for {asked:g} GPUs, the manifest provides {cluster_gpus}")
    return errors


SIGTERM_MARGIN_S = 30  # process teardown after the checkpoint: actors, placement groups, W&B sync


def grace_errors(manifest: dict[str, Any], stop_grace_s: float) -> list[str]:
    """Every pod must give the driver time to checkpoint on SIGTERM: Kubernetes sends SIGKILL after the pod's
    terminationGracePeriodSeconds (default 30 s), well before a trainer.stop_grace_s of minutes."""
    spec = cluster_spec(manifest)
    errors = []
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        name = group.get("groupName", "head")
        grace = group["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if grace < stop_grace_s + SIGTERM_MARGIN_S:
            errors.append(f"{name}: terminationGracePeriodSeconds {grace} < trainer.stop_grace_s {stop_grace_s:g} "
                          f"+ {SIGTERM_MARGIN_S} s")
    return errors


def version_errors(manifest: dict[str, Any], ray_pin: str) -> list[str]:
    """rayVersion must equal the Ray pin and prefix every image tag, so the operator and the image agree."""
    spec = cluster_spec(manifest)
    errors = []
    if spec.get("rayVersion") != ray_pin:
        errors.append(f"rayVersion {spec.get('rayVersion')!r} != Ray pin {ray_pin!r}")
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for container in (c for g in groups for c in _containers(g)):
        tag = container["image"].rsplit(":", 1)[-1]
        if not tag.startswith(ray_pin):
            errors.append(f"image {container['image']} tag does not start with {ray_pin}")
    return errors


SECRET_ENV = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)($|_)", re.I)  # WANDB_API_KEY, not TOKENIZERS_*
EXPOSED_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def security_errors(manifest: dict[str, Any]) -> list[str]:
    """What would leave the cluster open or a secret in the manifest: Ray token auth must be on with the token
    from a Kubernetes Secret (KubeRay ``authOptions``: the operator sets ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` in
    every Ray container), no container may switch it off, a secret-looking env var must come from a
    ``secretKeyRef`` (never a literal ``value``), and the head (dashboard, job API: whoever reaches port 8265 can
    run code) must not be exposed outside the cluster by a LoadBalancer/NodePort service or an ingress."""
    spec = cluster_spec(manifest)
    errors = []
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        errors.append(f"authOptions.mode is {auth.get('mode')!r}: Ray token authentication must be on ('token')")
    elif not auth.get("secretName"):
        errors.append("authOptions.secretName: name the Kubernetes Secret that holds auth_token")
    head = spec["headGroupSpec"]
    if head.get("serviceType", "ClusterIP") in EXPOSED_SERVICE_TYPES:
        errors.append(f"head: serviceType {head['serviceType']} exposes the dashboard outside the cluster")
    if head.get("enableIngress"):
        errors.append("head: enableIngress exposes the dashboard outside the cluster")
    for group in [head, *spec.get("workerGroupSpecs", [])]:
        name = group.get("groupName", "head")
        for container in _containers(group):
            for env in container.get("env", []):
                if env.get("name") == "RAY_AUTH_MODE" and env.get("value") != "token":
                    errors.append(f"{name}/{container['name']}: RAY_AUTH_MODE={env.get('value')!r} turns auth off")
                elif SECRET_ENV.search(env.get("name", "")) and "value" in env:
                    errors.append(f"{name}/{container['name']}: {env['name']} is a literal value; use "
                                  "valueFrom.secretKeyRef")
    return errors
