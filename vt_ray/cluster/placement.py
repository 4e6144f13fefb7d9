"""Ray side of the layout: preflight against the cluster, placement groups, and per-actor options.

Only this module (and the actor-group wrappers that call it) knows about placement groups; roles stay plain
classes. The bundles come from :func:`vt_ray.config.resources.placement_groups`, the same function the planner
and the manifest test use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from vt_ray.config.resources import PlacementGroupSpec, ResourcesConfig, placement_groups, total_resources


class InsufficientResources(RuntimeError):
    """The cluster cannot hold the recipe's placement groups (raised before any actor or model starts)."""


def preflight(res: ResourcesConfig, available: Mapping[str, float]) -> None:
    """Fail fast with 'need N GPU, cluster has M' instead of waiting forever for a placement group."""
    need = total_resources(placement_groups(res))
    short = [f"need {n:g} {key}, cluster has {available.get(key, 0):g}" for key, n in need.items()
             if n > available.get(key, 0) + 1e-9]
    if short:
        raise InsufficientResources("; ".join(short) + " (recipe resources section vs ray.cluster_resources())")


@dataclass
class PlacedGroup:
    spec: PlacementGroupSpec
    pg: PlacementGroup

    def actor_options(self, role: str, rank: int) -> dict[str, Any]:
        """``.options(**...)`` for actor ``rank`` of ``role``: its share of bundle ``rank``. Child tasks stay
        in the group so a role's helpers cannot land on another node."""
        request = self.spec.requests[role]
        return {
            "num_cpus": request.get("CPU", 0),
            "num_gpus": request.get("GPU", 0),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=rank,
                placement_group_capture_child_tasks=True,
            ),
        }


def create_placement_groups(res: ResourcesConfig, timeout_s: float = 300.0) -> dict[str, PlacedGroup]:
    """Preflight, then one placement group per spec, all waited for with one deadline; the error names every
    group not placed in time."""
    preflight(res, ray.cluster_resources())
    placed: dict[str, PlacedGroup] = {}
    try:
        for spec in placement_groups(res):
            pg = placement_group([dict(b) for b in spec.bundles], strategy=spec.strategy, name=f"vt_{spec.name}")
            placed[spec.name] = PlacedGroup(spec, pg)
        ready = {p.pg.ready(): name for name, p in placed.items()}
        done, _ = ray.wait(list(ready), num_returns=len(ready), timeout=timeout_s)
        ray.get(done)
        if len(done) < len(ready):
            late = [placed[name].spec for ref, name in ready.items() if ref not in done]
            raise InsufficientResources(
                "placement group(s) not placed within "
                f"{timeout_s:.0f} s, the bundles do not fit the nodes: "
                + "; ".join(f"{s.name!r} ({len(s.bundles)} x {s.bundles[0]}, {s.strategy})" for s in late)
            )
    except BaseException:
        remove_placement_groups(placed)
        raise
    return placed


def remove_placement_groups(placed: Mapping[str, PlacedGroup]) -> None:
    for group in placed.values():
        remove_placement_group(group.pg)


def placement_report(placed: Mapping[str, PlacedGroup]) -> list[dict[str, Any]]:
    """Where each (role, rank) runs: its group's bundle ``rank`` and the node Ray reserved it on.

    Read from the placement-group table, not from the actors: an actor scheduled into bundle ``rank`` runs on
    that bundle's node, so this holds for every role without a call into it (and works before they start).
    """
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    rows: list[dict[str, Any]] = []
    for name, group in placed.items():
        nodes = ray.util.placement_group_table(group.pg)["bundles_to_node_id"]
        for role, request in group.spec.requests.items():
            for rank in range(len(group.spec.bundles)):
                node_id = nodes.get(rank, "")
                rows.append({"role": role, "rank": rank, "group": name, "strategy": group.spec.strategy,
                             "node_id": node_id, "node_ip": ips.get(node_id, ""), "resources": dict(request)})
    return rows
