"""Rollout group on a local Ray cluster: order-preserving split across actors, weight versions, recovery
from an actor that dies mid-batch (a real process exit) with no sample lost or doubled, and a corrupt weight
blob rejected by every engine with nothing changed (more weight-sync cases:
tests/integration/rollout/test_weight_sync.py).

Uses the transformers backend: the group's fault handling does not depend on the engine, and it starts in a
second where two vLLM engines would compete for our two cores.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vt_ray.common.sharding import split_evenly
from vt_ray.config.loader import load_config
from vt_ray.data.schema import read_samples, resolve_video_paths
from vt_ray.rollout.types import SamplingSettings

ROOT = Path(__file__).resolve().parents[3]
SAMPLING = SamplingSettings(n=2, temperature=1.0, max_tokens=8)


@pytest.mark.parametrize("n_items,n_parts", [(0, 2), (1, 3), (5, 2), (8, 4), (7, 3)])
def test_split_evenly_covers_every_item_once(n_items: int, n_parts: int) -> None:
    parts = split_evenly(n_items, n_parts)
    assert len(parts) == n_parts
    covered = [i for a, b in parts for i in range(a, b)]
    assert covered == list(range(n_items))
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1


def _largest_array(obj: Any) -> int:
    """Bytes of the largest array or tensor reachable through dataclasses, lists and dicts."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, torch.Tensor):
        return int(obj.numel() * obj.element_size())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return max((_largest_array(x) for x in obj), default=0)
    return 0


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_actor_killed_mid_batch_is_restarted_and_nothing_is_lost(
    ray_cluster, tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    from vt_ray.rollout.group import RolloutGroup
    from vt_ray.rollout.vllm_engine import serialize_state_dict

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [f"model.path={tiny_model_dir}", "rollout.backend=hf"])
    samples = resolve_video_paths(read_samples(synthetic_dir / "train.jsonl"), synthetic_dir)[:6]
    marker = tmp_path / "crashed"
    env = {"env_vars": {"VT_RAY_CRASH_AT": "rollout.generate@1", "VT_RAY_CRASH_MARKER": str(marker)}}
    group = RolloutGroup(cfg, num_workers=2, num_cpus=0.5, runtime_env=env, timeout_s=600)
    try:
        weights = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()  # the learner's naming
        group.update_weights(serialize_state_dict(weights), version=3)
        batch = group.generate(samples, SAMPLING, learner_inputs=True)
        assert marker.exists()  # rank 1 really died
        assert group.metrics.actor_restarts == 1
        assert [r.uid for r in batch.results] == [s.uid for s in samples]  # none lost, none doubled, in order
        assert all(len(r.completions) == 2 for r in batch.results)
        assert group.weight_versions() == [3, 3]  # the restarted actor got the current weights back
    finally:
        group.shutdown()
    # Pixels by reference (docs/data-path.md): the driver holds ids, grids and references, never pixel arrays;
    # the pixels are the call's own returns, owned here, so they outlive the rollout actors (shut down above),
    # and are freed once the driver drops them.
    assert all(r.frames is None and r.encoded is not None for r in batch.results)
    assert _largest_array(batch.results) < 4096
    encs = [r.encoded for r in batch.results if r.encoded is not None]
    pixels = ray_cluster.get([e.pixels for e in encs])
    for enc, pix in zip(encs, pixels, strict=True):
        assert pix.patches.dtype == np.uint8 and pix.patches.shape == (int(enc.grid_thw.prod()), enc.patch_dim)
    del pixels
    ids = {e.pixels.hex().encode() for e in encs}  # the reference table keys ids by hex
    core = ray_cluster._private.worker.global_worker.core_worker
    assert ids <= set(core.get_all_reference_counts())
    del batch, encs, enc
    gc.collect()
    assert not ids & set(core.get_all_reference_counts())  # released: the owner frees them


@pytest.mark.slow
def test_corrupt_weight_blob_names_rank_and_tensor_and_changes_nothing(ray_cluster, tiny_model_dir: Path) -> None:
    """C8 item 6: a blob with a missing tensor or a wrong shape is rejected by every engine before any tensor
    is written; the error names the ranks and the tensor; versions and served log-probs stay as they were."""
    import torch

    from vt_ray.models.hf_load import load_vl_model
    from vt_ray.rollout.group import RolloutGroup
    from vt_ray.rollout.vllm_engine import serialize_state_dict
    from vt_ray.rollout.weight_sync import PROBE_TEXT, WeightSyncError

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [f"model.path={tiny_model_dir}", "rollout.backend=hf"])
    group = RolloutGroup(cfg, num_workers=2, num_cpus=0.5, timeout_s=600)
    state = load_vl_model(str(tiny_model_dir), torch.float32).state_dict()
    name = "model.language_model.layers.1.self_attn.o_proj.weight"
    missing = serialize_state_dict({k: v for k, v in state.items() if k != name})
    try:
        start = group.probe_logprobs_all(PROBE_TEXT)
        with pytest.raises(WeightSyncError) as info:  # the very first push: engines stay on the checkpoint
            group.update_weights(missing, version=1)
        assert (info.value.rank, info.value.tensor) == (0, name)
        assert "rollout rank(s) [0, 1]" in str(info.value) and f"rank 1: missing tensor '{name}'" in str(info.value)
        assert group.weight_versions() == [0, 0]
        assert group.probe_logprobs_all(PROBE_TEXT) == start

        gen = torch.Generator().manual_seed(3)
        new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        group.update_weights(serialize_state_dict(new), version=2)
        served = group.probe_logprobs_all(PROBE_TEXT)
        assert served != start
        wrong_shape = serialize_state_dict({**new, name: torch.zeros(3, 3)})
        with pytest.raises(WeightSyncError, match=rf"tensor '{name}' has shape \[3, 3\]") as info:
            group.update_weights(wrong_shape, version=3)
        assert info.value.tensor == name and sorted(info.value.failures) == [0, 1]
        assert group.weight_versions() == [2, 2]
        assert group.probe_logprobs_all(PROBE_TEXT) == served
        assert len(group.generate([], SAMPLING).results) == 0  # the group still serves
    finally:
        group.shutdown()
