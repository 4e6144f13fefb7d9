"""Resources section of the recipe: the cluster shape, the roles on it and their placement-group bundles.

One function, :func:`placement_groups`, turns this section into Ray placement-group bundles. The driver creates
its placement groups from it, the planner sizes memory from it, and the manifest test checks the KubeRay GPU
counts against it, so the three cannot drift apart.

``num_nodes`` counts GPU worker nodes only: the Ray head runs the driver with ``num-cpus: 0`` and no GPUs
(cluster/README.md). A bundle never spans nodes, so every per-worker request must fit one node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from vt_ray.common.choices import set_choice
from vt_ray.common.errors import check


class PlacementStrategy(StrEnum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


STRATEGIES = tuple(PlacementStrategy)
MODEL_SIZES = ("", "3B", "7B", "32B", "72B")


MAX_WORKERS = 100_000
"""More actors of one role than any Ray cluster runs: a larger count is a typo, refused before the placement
groups are built (one bundle per worker; a fuzzed 10^12 ran the loader out of memory)."""

@dataclass(frozen=True)
class GpuRoleResources:
    """A GPU role (rollout engines, FSDP learner ranks): ``num_workers`` actors of one bundle each."""

    num_workers: int = 1
    """Actors of this role (learner: FSDP ranks; rollout: vLLM engines)."""
    gpus_per_worker: float = 0.0
    """GPUs in each actor's bundle: 0 on CPU; a whole number, or a fraction < 1 to share a GPU."""
    cpus_per_worker: float = 1.0
    """CPUs in each actor's bundle (data loading and video decoding run on these)."""


@dataclass(frozen=True)
class RewardResources:
    """CPU-only reward scorers (killable worker processes; never scored inline in the driver)."""

    num_workers: int = 1
    """Reward actors."""
    cpus_per_worker: float = 1.0
    """CPUs per reward actor."""


@dataclass(frozen=True)
class ResourcesConfig:
    """Cluster shape and role layout; validated here so a layout that cannot be placed fails at load time."""

    num_nodes: int = 1
    """GPU worker nodes (the head node, which runs the driver, is not counted)."""
    gpus_per_node: int = 0
    """GPUs per worker node (0: CPU-only, the tiny recipe)."""
    cpus_per_node: int = 4
    """Logical CPUs Ray may schedule on each worker node (may exceed physical cores on a CPU test machine)."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU in GiB, for the planner (python -m vt_ray plan)."""
    model_size: str = ""
    """Planner hint when ``<model.path>/config.json`` is absent (e.g. planning on a laptop): 3B | 7B | 32B | 72B
    (Qwen2.5-VL-Instruct). Empty: the config file must exist."""
    rollout: GpuRoleResources = field(default_factory=GpuRoleResources)
    """vLLM rollout engines. With tensor parallelism, gpus_per_worker = rollout.tensor_parallel_size."""
    learner: GpuRoleResources = field(default_factory=GpuRoleResources)
    """FSDP learner ranks, at most one GPU each (FSDP shards over all learner GPUs)."""
    reward: RewardResources = field(default_factory=RewardResources)
    """Reward scorers."""
    colocate: bool = False
    """Rollout and learner share GPUs: one bundle per learner rank holds one learner and one rollout actor, each
    asking for half the bundle's GPU. vLLM sleeps (frees weights and KV cache) while the learner trains.
    Needs equal worker counts and equal gpus_per_worker for both roles."""
    placement_strategy: PlacementStrategy = PlacementStrategy.PACK
    """Ray strategy for the GPU placement groups: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD. Reward actors
    always use a soft SPREAD group (CPU-only, any node)."""

    def __post_init__(self) -> None:
        check(self.num_nodes >= 1, "resources.num_nodes", "must be >= 1")
        check(self.gpus_per_node >= 0, "resources.gpus_per_node", "must be >= 0")
        check(self.cpus_per_node >= 1, "resources.cpus_per_node", "must be >= 1")
        check(self.gpu_memory_gib > 0, "resources.gpu_memory_gib", "must be > 0")
        check(self.model_size in MODEL_SIZES, "resources.model_size",
              f"unknown size {self.model_size!r} ({'|'.join(MODEL_SIZES[1:])})")
        set_choice(self, "placement_strategy", PlacementStrategy, "resources.placement_strategy")
        for role in ("rollout", "learner"):
            self._check_gpu_role(role, getattr(self, role))
        check(1 <= self.reward.num_workers <= MAX_WORKERS, "resources.reward.num_workers",
              f"must be 1 to {MAX_WORKERS}")
        check(self.reward.cpus_per_worker > 0, "resources.reward.cpus_per_worker", "must be > 0")
        check(self.reward.cpus_per_worker <= self.cpus_per_node, "resources.reward.cpus_per_worker",
              f"exceeds cpus_per_node ({self.cpus_per_node}): a bundle cannot span nodes")
        check(self.learner.gpus_per_worker <= 1, "resources.learner.gpus_per_worker",
              "an FSDP rank drives at most one GPU")
        if self.colocate:
            check(self.rollout.num_workers == self.learner.num_workers, "resources.rollout.num_workers",
                  f"colocate needs as many rollout as learner workers ({self.learner.num_workers})")
            check(self.rollout.gpus_per_worker == self.learner.gpus_per_worker, "resources.rollout.gpus_per_worker",
                  f"colocate needs the learner's gpus_per_worker ({self.learner.gpus_per_worker})")
            check(self.learner.gpus_per_worker > 0, "resources.colocate", "colocating needs GPU workers")
        self._check_fits()

    def _check_gpu_role(self, role: str, res: GpuRoleResources) -> None:
        key = f"resources.{role}"
        check(1 <= res.num_workers <= MAX_WORKERS, f"{key}.num_workers", f"must be 1 to {MAX_WORKERS}")
        check(res.cpus_per_worker >= 0, f"{key}.cpus_per_worker", "must be >= 0")
        g = res.gpus_per_worker
        check(g >= 0, f"{key}.gpus_per_worker", "must be >= 0")
        check(g < 1 or g == int(g), f"{key}.gpus_per_worker", "Ray accepts a fraction < 1 or a whole number")
        check(g == 0 or self.gpus_per_node > 0, f"{key}.gpus_per_worker", "resources.gpus_per_node is 0")
        check(g <= self.gpus_per_node, f"{key}.gpus_per_worker",
              f"{g} exceeds gpus_per_node ({self.gpus_per_node}): a bundle cannot span nodes")
        check(res.cpus_per_worker <= self.cpus_per_node, f"{key}.cpus_per_worker",
              f"{res.cpus_per_worker} exceeds cpus_per_node ({self.cpus_per_node})")

    def _check_fits(self) -> None:
        """Every bundle must land on some node: first-fit-decreasing bin packing of all groups' bundles."""
        groups = placement_groups(self)
        need = total_resources(groups)
        check(need.get("GPU", 0) <= self.num_nodes * self.gpus_per_node, "resources.num_nodes",
              f"the roles need {need.get('GPU', 0):g} GPUs, {self.num_nodes} node(s) x {self.gpus_per_node} "
              f"have {self.num_nodes * self.gpus_per_node}")
        check(need.get("CPU", 0) <= self.num_nodes * self.cpus_per_node, "resources.num_nodes",
              f"the roles need {need.get('CPU', 0):g} CPUs, {self.num_nodes} node(s) x {self.cpus_per_node} "
              f"have {self.num_nodes * self.cpus_per_node}")
        for group in groups:
            need_one = total_resources([group])
            if group.strategy == "STRICT_PACK":
                check(need_one.get("GPU", 0) <= self.gpus_per_node and need_one.get("CPU", 0) <= self.cpus_per_node,
                      "resources.placement_strategy", f"STRICT_PACK puts the whole {group.name} group "
                      f"({need_one}) on one node, which has {self.gpus_per_node} GPUs, {self.cpus_per_node} CPUs")
            if group.strategy == "STRICT_SPREAD":
                check(len(group.bundles) <= self.num_nodes, "resources.placement_strategy",
                      f"STRICT_SPREAD needs one node per {group.name} bundle ({len(group.bundles)}), "
                      f"there are {self.num_nodes}")
        bundles = [b for g in groups for b in g.bundles]
        check(pack_bundles(bundles, self.num_nodes, self.gpus_per_node, self.cpus_per_node) is not None,
              "resources.num_nodes", "the bundles do not pack onto the nodes (each bundle must fit one node)")


@dataclass(frozen=True)
class PlacementGroupSpec:
    """One Ray placement group: which roles live in it, one bundle per worker, and its strategy."""

    name: str
    bundles: tuple[dict[str, float], ...]
    strategy: str
    requests: dict[str, dict[str, float]]
    """Per role hosted here: what one actor asks for inside its bundle (``num_gpus``/``num_cpus`` with
    ``PlacementGroupSchedulingStrategy(placement_group_bundle_index=rank)``). Colocated roles split the GPU."""

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.requests)


def _bundle(gpus: float, cpus: float) -> dict[str, float]:
    return {"GPU": gpus, "CPU": cpus} if gpus else {"CPU": cpus}


def placement_groups(res: ResourcesConfig) -> list[PlacementGroupSpec]:
    """The placement groups for a recipe's resources, GPU groups first.

    Split: a ``learner`` and a ``rollout`` group. Colocated: one ``actor`` group whose bundles each host one
    learner rank and one rollout engine. Always a ``reward`` group of CPU bundles (soft SPREAD).
    """
    groups: list[PlacementGroupSpec] = []
    ln, ro = res.learner, res.rollout
    if res.colocate:
        bundle = _bundle(ln.gpus_per_worker, ln.cpus_per_worker + ro.cpus_per_worker)
        half = ln.gpus_per_worker / 2
        requests = {"learner": _bundle(half, ln.cpus_per_worker), "rollout": _bundle(half, ro.cpus_per_worker)}
        groups.append(PlacementGroupSpec("actor", (bundle,) * ln.num_workers, res.placement_strategy, requests))
    else:
        for name, role in (("learner", ln), ("rollout", ro)):
            bundle = _bundle(role.gpus_per_worker, role.cpus_per_worker)
            groups.append(PlacementGroupSpec(name, (bundle,) * role.num_workers, res.placement_strategy,
                                             {name: bundle}))
    reward = {"CPU": res.reward.cpus_per_worker}
    groups.append(PlacementGroupSpec("reward", (reward,) * res.reward.num_workers, "SPREAD", {"reward": reward}))
    return groups


def total_resources(groups: list[PlacementGroupSpec]) -> dict[str, float]:
    """Sum of all bundles: what the cluster must offer before any actor starts (the preflight check)."""
    total: dict[str, float] = {}
    for group in groups:
        for bundle in group.bundles:
            for key, value in bundle.items():
                total[key] = total.get(key, 0.0) + value
    return total


def pack_bundles(
    bundles: list[dict[str, float]], num_nodes: int, gpus_per_node: float, cpus_per_node: float
) -> list[int] | None:
    """Node index per bundle by first-fit decreasing (GPU, then CPU), or None when they do not pack.

    Not Ray's scheduler, only a feasibility check: FFD can miss a packing that exists, which would make us
    refuse a layout Ray could place. With identical bundles per role (our case) FFD is exact enough.
    """
    free = [[float(gpus_per_node), float(cpus_per_node)] for _ in range(num_nodes)]
    order = sorted(range(len(bundles)), key=lambda i: (-bundles[i].get("GPU", 0), -bundles[i].get("CPU", 0)))
    where = [0] * len(bundles)
    eps = 1e-9
    for i in order:
        g, c = bundles[i].get("GPU", 0.0), bundles[i].get("CPU", 0.0)
        for node, (fg, fc) in enumerate(free):
            if g <= fg + eps and c <= fc + eps:
                free[node] = [fg - g, fc - c]
                where[i] = node
                break
        else:
            return None
    return where
