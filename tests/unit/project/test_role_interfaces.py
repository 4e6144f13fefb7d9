"""Every built-in backend meets its role's contract (``vt_ray.rollout.engine_api``, ``vt_ray.learner.backend_api``),
method by method: the group and the worker call exactly these names with these parameters. (mypy checks the
same structurally wherever an engine or backend is typed with the protocol.)"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from vt_ray.learner.backend_api import LearnerBackend
from vt_ray.rollout.engine_api import RolloutEngine, StreamingRolloutEngine


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(protocol).items()
            if callable(fn) and not name.startswith("_")}


def _check(protocol: type, cls: type) -> list[str]:
    problems = []
    for name, wanted in _methods(protocol).items():
        impl = getattr(cls, name, None)
        if impl is None:
            problems.append(f"{cls.__name__} has no {name}()")
            continue
        have = inspect.signature(impl).parameters
        by_name = [n for n, p in wanted.parameters.items() if p.kind is not p.POSITIONAL_ONLY]
        missing = [n for n in by_name if n not in have]
        if missing:
            problems.append(f"{cls.__name__}.{name}() lacks parameter(s) {missing}")
        if len(have) < len(wanted.parameters):  # positional-only ones: called by position, any name
            problems.append(f"{cls.__name__}.{name}() takes fewer parameters than {list(wanted.parameters)}")
    return problems


def _engines() -> list[Any]:
    from vt_ray.rollout.hf_engine import HfEngine
    from vt_ray.rollout.vllm_engine import VllmEngine

    return [HfEngine, VllmEngine]


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_rollout_engines_meet_the_contract(name: str) -> None:
    cls = {c.__name__: c for c in _engines()}[{"hf": "HfEngine", "vllm": "VllmEngine"}[name]]
    assert _check(RolloutEngine, cls) == []
    assert _check(StreamingRolloutEngine, cls) == []  # both built-ins take streamed weight syncs
    assert "weight_version" in inspect.getsource(cls.__init__)  # the one attribute of the contract


def test_fsdp2_learner_meets_the_contract() -> None:
    from vt_ray.learner.worker import LearnerWorker

    assert _check(LearnerBackend, LearnerWorker) == []


def test_megatron_learner_meets_the_contract() -> None:
    from vt_ray.learner.megatron.backend import MegatronWorker

    assert _check(LearnerBackend, MegatronWorker) == []
    assert callable(MegatronWorker.stream_address)  # asked by the rollout group, outside the protocol


def test_the_check_finds_a_missing_method_and_parameter() -> None:
    class Partial:
        def generate(self, requests: Any) -> list[Any]:
            return []

    problems = _check(RolloutEngine, Partial)
    assert "Partial.generate() lacks parameter(s) ['sampling']" in problems
    assert "Partial has no update_weights()" in problems


# ---- choosing a backend by name or import path -------------------------------------------------------------
class EchoEngine:
    """A user's engine, named by import path in a recipe (docs/backends.md); a stand-in that generates nothing."""

    def __init__(self, model: Any, rollout: Any, seed: int, model_path: str | None) -> None:
        self.weight_version, self.seed = 0, seed

    def generate(self, requests: Any, sampling: Any) -> list[Any]:
        return []

    def prompt_logprobs(self, text: str) -> list[float]:
        return [0.0]

    def update_weights(self, weights: Any, version: int) -> int:
        self.weight_version = version
        return 1

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...


def test_a_backend_is_chosen_by_name_or_import_path_and_a_wrong_one_fails_at_load() -> None:
    from vt_ray.common.errors import ConfigError
    from vt_ray.config.backends import ROLLOUT_ENGINES
    from vt_ray.config.loader import load_config
    from vt_ray.rollout.engines import make_engine

    cfg = load_config(None, ["rollout.backend=test_role_interfaces:EchoEngine", "run.seed=5"])
    engine = make_engine(cfg.model, cfg.rollout, seed=cfg.run.seed)
    assert type(engine).__name__ == "EchoEngine" and engine.seed == 5 and _check(RolloutEngine, EchoEngine) == []

    # Without the streaming methods, auto sync pushes blobs to it, and asking for streams fails naming the key.
    from vt_ray.trainer.driver import weight_sync_mode

    assert weight_sync_mode(cfg) == "blob"
    assert weight_sync_mode(load_config(None, ["rollout.backend=hf"])) == "stream"
    assert weight_sync_mode(load_config(None, ["rollout.backend=hf", "rollout.weight_sync=blob"])) == "blob"
    with pytest.raises(ConfigError, match="rollout.weight_sync.: stream needs an engine"):
        weight_sync_mode(load_config(None, ["rollout.backend=test_role_interfaces:EchoEngine",
                                            "rollout.weight_sync=stream"]))

    ROLLOUT_ENGINES.register("echo")(EchoEngine)  # or registered by name, from the user's own module
    try:
        assert "echo" in ROLLOUT_ENGINES.names()
        echo = load_config(None, ["rollout.backend=echo"])
        assert type(make_engine(echo.model, echo.rollout)).__name__ == "EchoEngine"
    finally:
        ROLLOUT_ENGINES._entries.pop("echo")

    with pytest.raises(ConfigError, match=r"'learner.backend': unknown learner backend 'deepspeed'; "
                                          r"registered: \['fsdp2', 'megatron'\]"):
        load_config(None, ["learner.backend=deepspeed"])
    with pytest.raises(ConfigError, match=r"'rollout.backend': unknown rollout engine 'sglang'; "
                                          r"registered: \['hf', 'vllm'\]"):
        load_config(None, ["rollout.backend=sglang"])
    with pytest.raises(ConfigError, match="that key is learner.dist_backend now"):  # the key's old meaning
        load_config(None, ["learner.backend=nccl"])
    with pytest.raises(ConfigError, match="rollout.backend"):
        load_config(None, ["rollout.backend=test_role_interfaces:NoSuchEngine"])
    assert load_config(None, ["learner.dist_backend=gloo"]).learner.dist_backend == "gloo"


def test_the_built_in_backends_are_the_registered_ones() -> None:
    from vt_ray.config.backends import LEARNER_BACKENDS, ROLLOUT_ENGINES
    from vt_ray.learner.worker import LearnerWorker

    assert LEARNER_BACKENDS.get("fsdp2") is LearnerWorker
    assert LEARNER_BACKENDS.get("megatron").__name__ == "MegatronWorker"
    assert {ROLLOUT_ENGINES.get(n).__name__ for n in ("vllm", "hf")} == {"vllm_engine", "hf_engine"}


def test_the_megatron_backend_refuses_what_it_cannot_run_naming_the_key() -> None:
    """What it does not run yet fails at setup (before any process group), naming the key."""
    from vt_ray.config.loader import load_config
    from vt_ray.learner.megatron.backend import refuse_unsupported

    base = ["learner.backend=megatron", "resources.learner.num_workers=2"]
    refuse_unsupported(load_config(None, base))
    refuse_unsupported(load_config(None, [*base, "learner.megatron.pipeline_parallel_size=2"]))  # runs now
    refuse_unsupported(load_config(None, [*base, "learner.activation_checkpointing=true"]))  # megatron's recompute
    refuse_unsupported(load_config(None, [*base, "learner.param_dtype=bfloat16"]))  # float32 masters
    for override, key in (("learner.param_dtype=float16", "learner.param_dtype"),
                          ("learner.reduce_dtype=bfloat16", "learner.reduce_dtype")):
        with pytest.raises(ValueError, match=key):
            refuse_unsupported(load_config(None, [*base, override]))


def test_activation_checkpointing_selects_megatron_recompute() -> None:
    """``learner.activation_checkpointing`` turns on megatron's recompute with the ``learner.megatron.recompute_*``
    keys (full, every layer, by default); without it there is none."""
    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.megatron.backend import recompute_of
    from vt_ray.learner.megatron.model import Recompute

    base = ["learner.backend=megatron", "resources.learner.num_workers=2"]
    assert recompute_of(LearnerRoleConfig.of(load_config(None, base))) is None
    on = [*base, "learner.activation_checkpointing=true"]
    full = recompute_of(LearnerRoleConfig.of(load_config(None, on)))
    assert full == Recompute("full", "uniform", 1)
    assert full.config_kwargs() == {"recompute_granularity": "full", "recompute_method": "uniform",
                                    "recompute_num_layers": 1}
    selective = recompute_of(LearnerRoleConfig.of(load_config(None, [*on, "learner.megatron.recompute_granularity="
                                                                          "selective"])))
    assert selective.config_kwargs() == {"recompute_granularity": "selective"}  # megatron: no method, no layers


def test_ipc_sync_is_auto_for_colocated_gpus_explicit_on_one_cpu_node_and_refused_where_it_cannot_work() -> None:
    from vt_ray.common.errors import ConfigError
    from vt_ray.config.loader import load_config
    from vt_ray.trainer.weights import stream_backend, weight_sync_mode

    gpus = ["resources.gpus_per_node=2", "resources.cpus_per_node=16", "resources.learner.num_workers=2",
            "resources.rollout.num_workers=2",
            "resources.learner.gpus_per_worker=1", "resources.rollout.gpus_per_worker=1"]
    colocated = load_config(None, [*gpus, "resources.colocate=true"])
    assert weight_sync_mode(colocated) == "ipc" and stream_backend(colocated.resources, "ipc") == "ipc"
    assert weight_sync_mode(load_config(None, [*gpus, "resources.gpus_per_node=4"])) == "stream"  # own GPUs: NCCL
    tp2 = load_config(None, [*gpus, "resources.colocate=true", "rollout.tensor_parallel_size=2",
                             "resources.rollout.gpus_per_worker=1"])
    assert weight_sync_mode(tp2) == "blob"  # a worker per GPU, not one per learner GPU: auto falls back
    cpu = load_config(None, ["rollout.weight_sync=ipc", "rollout.backend=hf"])
    assert weight_sync_mode(cpu) == "ipc" and stream_backend(cpu.resources, "ipc") == "ipc"
    refused = {
        "separate GPUs": [*gpus, "resources.gpus_per_node=4"],
        "several CPU nodes": ["resources.num_nodes=2", "resources.cpus_per_node=16"],
        "engines on GPU, learners on CPU": ["resources.gpus_per_node=1", "resources.cpus_per_node=16",
                                            "resources.rollout.gpus_per_worker=1"],
    }
    for case, overrides in refused.items():
        with pytest.raises(ConfigError) as info:
            load_config(None, [*overrides, "rollout.weight_sync=ipc"])
        assert info.value.key == "rollout.weight_sync" and "ipc" in str(info.value), case
    with pytest.raises(ConfigError, match="ipc needs an engine"):
        weight_sync_mode(load_config(None, ["rollout.backend=test_role_interfaces:EchoEngine",
                                            "rollout.weight_sync=ipc"]))
