"""Every KubeRay manifest under cluster/ validates offline against the pinned v1.7.0 CRDs (closed objects), obeys
the CEL rules we re-implement, pins the same Ray as pyproject.toml, and provides exactly the GPUs its recipe's
placement groups ask for."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vt_ray.cluster.manifests import (
    KIND_FILES,
    cel_errors,
    cluster_spec,
    grace_errors,
    layout_errors,
    recipe_of,
    schema_errors,
    security_errors,
    version_errors,
)
from vt_ray.config import load_config

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "cluster" / "crds"  # vendored KubeRay v1.7.0 CRDs
CORE_KINDS = {"PersistentVolumeClaim"}  # plain Kubernetes objects that the Ray manifests refer to


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and "kind" in doc:  # runtime_env.yaml is not a manifest
                docs.append((f"{path.name}#{i}", doc))
    return docs


DOCS = _documents()
RAY_DOCS = [(name, doc) for name, doc in DOCS if doc["kind"] in KIND_FILES]
_PIN = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (ROOT / "pyproject.toml").read_text())
assert _PIN, "pyproject.toml must pin ray[...]==X"
RAY_PIN = _PIN.group(1)



def _ids(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in docs]


def test_there_are_a_raycluster_and_rayjobs() -> None:
    kinds = {doc["kind"] for _, doc in RAY_DOCS}
    assert kinds == {"RayCluster", "RayJob"}
    assert {doc["kind"] for _, doc in DOCS} <= set(KIND_FILES) | CORE_KINDS


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_manifest_validates_against_crd(name: str, doc: dict[str, Any]) -> None:
    assert schema_errors(doc, CRD_DIR) == []
    assert cel_errors(doc) == []


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_manifest_matches_its_recipe(name: str, doc: dict[str, Any]) -> None:
    recipe = recipe_of(doc)
    assert recipe, f"{name}: no recipe=... in the entrypoint (RayJob) or vt-ray/recipe annotation (RayCluster)"
    cfg = load_config(ROOT / recipe)
    assert layout_errors(doc, cfg.resources) == []


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_ray_version_pinned_everywhere(name: str, doc: dict[str, Any]) -> None:
    assert version_errors(doc, RAY_PIN) == []


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_rayjob_cleans_up_and_retries_from_shared_storage(name: str, doc: dict[str, Any]) -> None:
    spec = cluster_spec(doc)
    claims = {v["persistentVolumeClaim"]["claimName"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "PersistentVolumeClaim"}
    assert claims and claims <= pvcs, "every claimName must be defined under cluster/"
    cfg = load_config(ROOT / recipe_of(doc))  # type: ignore[operator]
    assert cfg.run.output_dir.startswith("/mnt/shared/"), "checkpoints must outlive the pods"
    if doc["kind"] == "RayJob":
        job = doc["spec"]
        assert job["shutdownAfterJobFinishes"] is True
        assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 1


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_pods_outlive_the_checkpoint_on_sigterm(name: str, doc: dict[str, Any]) -> None:
    cfg = load_config(ROOT / recipe_of(doc))  # type: ignore[operator]
    assert grace_errors(doc, cfg.trainer.stop_grace_s) == []


# The checks must be able to fail: each mutation below is caught by the check that guards it.
def _base(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in RAY_DOCS if doc["kind"] == kind))


def test_misspelt_field_fails_schema() -> None:
    doc = _base("RayJob")
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")
    worker = cluster_spec(doc)["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["resource"] = worker["template"]["spec"]["containers"][0].pop(
        "resources"
    )
    errors = schema_errors(doc, CRD_DIR)
    assert any("shutdownAfterJobFinish" in e for e in errors)
    assert any("'resource'" in e for e in errors)


def test_wrong_type_fails_schema() -> None:
    doc = _base("RayCluster")
    doc["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 8  # must be a string
    assert any("rayStartParams" in e for e in schema_errors(doc, CRD_DIR))


def test_cel_rules() -> None:
    doc = _base("RayJob")
    doc["spec"]["shutdownAfterJobFinishes"] = False
    doc["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}
    errors = cel_errors(doc)
    assert len(errors) == 2
    assert any("needs both onSuccess and onFailure" in e for e in errors)
    assert any("needs shutdownAfterJobFinishes" in e for e in errors)
    doc = _base("RayJob")
    doc["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"},
                                       "onFailure": {"policy": "DeleteNone"}, "deletionRules": []}
    assert cel_errors(doc) == ["deletionStrategy: onSuccess/onFailure and deletionRules are exclusive"]


def test_short_termination_grace_is_caught() -> None:
    doc = _base("RayJob")
    del cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["terminationGracePeriodSeconds"]  # k8s: 30 s
    errors = grace_errors(doc, 120)
    assert len(errors) == 1 and errors[0].startswith("head: terminationGracePeriodSeconds 30 < ")


def test_gpu_mismatch_is_caught() -> None:
    doc = _base("RayJob")
    cfg = load_config(ROOT / recipe_of(doc))  # type: ignore[operator]
    worker = cluster_spec(doc)["workerGroupSpecs"][0]
    worker["replicas"] = worker["maxReplicas"] = worker["replicas"] + 1
    assert any("num_nodes" in e for e in layout_errors(doc, cfg.resources))
    doc = _base("RayJob")
    container = cluster_spec(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "4"
    assert any("gpus_per_node" in e for e in layout_errors(doc, cfg.resources))
    # The recipe asks for fewer GPUs than the cluster has: idle GPUs are a mistake too.
    small = load_config(ROOT / recipe_of(doc), ["resources.learner.num_workers=4",  # type: ignore[operator]
                                                "resources.rollout.num_workers=4"])
    assert any("placement groups ask for 4" in e for e in layout_errors(_base("RayJob"), small.resources))


def test_version_mismatch_is_caught() -> None:
    doc = _base("RayCluster")
    doc["spec"]["rayVersion"] = "2.59.0"
    assert version_errors(doc, RAY_PIN)
    doc = _base("RayJob")
    cluster_spec(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "vt-ray:2.59.0-gpu"
    assert version_errors(doc, RAY_PIN) == [f"image vt-ray:2.59.0-gpu tag does not start with {RAY_PIN}"]


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_clusters_require_a_token_and_keep_the_dashboard_inside(name: str, doc: dict[str, Any]) -> None:
    assert security_errors(doc) == []
    if doc["kind"] == "RayCluster":  # the persistent one says so explicitly, not by an operator default
        assert doc["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_open_clusters_and_literal_secrets_are_caught() -> None:
    for kind in ("RayCluster", "RayJob"):
        doc = _base(kind)
        del cluster_spec(doc)["authOptions"]
        assert security_errors(doc) == ["authOptions.mode is None: Ray token authentication must be on ('token')"]
        doc = _base(kind)
        cluster_spec(doc)["authOptions"] = {"mode": "token"}
        assert security_errors(doc) == ["authOptions.secretName: name the Kubernetes Secret that holds auth_token"]
        assert schema_errors(doc, CRD_DIR) == []  # the schema alone would let both through
    doc = _base("RayCluster")
    doc["spec"]["headGroupSpec"].update(serviceType="LoadBalancer", enableIngress=True)
    container = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] += [{"name": "WANDB_API_KEY", "value": "abc"}, {"name": "RAY_AUTH_MODE", "value": "disabled"}]
    errors = security_errors(doc)
    assert len(errors) == 4, errors
    assert any("LoadBalancer" in e for e in errors) and any("enableIngress" in e for e in errors)
    assert any("WANDB_API_KEY is a literal value" in e for e in errors)
    assert any("RAY_AUTH_MODE='disabled'" in e for e in errors)
