"""The resources section, its placement groups, and the memory planner (python -m vt_ray plan)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from vt_ray.cli import main
from vt_ray.cluster.model_shapes import KNOWN_SHAPES, resolve_shape, shape_from_hf_config
from vt_ray.cluster.planner import plan_memory
from vt_ray.config import ConfigError, load_config
from vt_ray.config.resources import pack_bundles, placement_groups, total_resources
from vt_ray.config.schema import RecipeConfig

ROOT = Path(__file__).resolve().parents[3]
SCALE_1 = ROOT / "recipes/scale_1node.yaml"
ONE_SMALL_GPU = [
    "resources.gpus_per_node=1", "resources.gpu_memory_gib=24", "resources.learner.num_workers=1",
    "resources.rollout.num_workers=1", "resources.reward.num_workers=1",
]


def test_param_count_from_config_matches_the_real_module(tiny_model_dir: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    shape = shape_from_hf_config(json.loads((tiny_model_dir / "config.json").read_text()))
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.vision_params == sum(p.numel() for n, p in model.named_parameters() if ".visual." in n)


def test_known_sizes_match_published_counts() -> None:
    # Qwen2.5-VL-7B-Instruct's safetensors index: 8,292,166,656 parameters; 3B: 3.75B; 72B: 73.4B.
    assert KNOWN_SHAPES["7B"].total_params == 8_292_166_656
    assert round(KNOWN_SHAPES["3B"].total_params / 1e9, 2) == 3.75
    assert round(KNOWN_SHAPES["72B"].total_params / 1e9, 1) == 73.4


def test_config_json_wins_over_the_hint(tiny_model_dir: Path) -> None:
    shape, source = resolve_shape(str(tiny_model_dir), "72B")
    assert shape.hidden < 1024 and source.endswith("config.json")
    with pytest.raises(ConfigError) as info:
        resolve_shape("/nonexistent/model", "")
    assert info.value.key == "resources.model_size"


def test_7b_recipe_fits_on_8x80gb(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(SCALE_1)
    assert (cfg.resources.gpus_per_node, cfg.resources.gpu_memory_gib, cfg.resources.model_size) == (8, 80, "7B")
    plan = plan_memory(cfg)
    assert plan.first_overflow() is None
    names = {t.name for b in plan.budgets for t in b.terms}
    assert {"parameters", "gradients", "optimizer", "activations", "reference", "vllm_weights",
            "vllm_kv_cache"} <= names
    assert main(["plan", f"recipe={SCALE_1}"]) == 0
    out = capsys.readouterr().out
    assert "8.29B parameters" in out and "DOES NOT FIT" not in out


def test_one_24gb_gpu_is_refused_naming_the_term(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", f"recipe={SCALE_1}", *ONE_SMALL_GPU]) == 1
    captured = capsys.readouterr()
    assert "term 'parameters'" in captured.err  # 4P = 31 GiB of fp32 master weights alone exceed 22.8 GiB


@pytest.mark.parametrize(
    ("overrides", "micro_batch", "term"),
    [
        (["rollout.max_num_seqs=1024"], 1, "vllm_kv_cache"),  # 168 GiB of KV cache at max_model_len
        ([], 64, "activations"),  # 64 sequences of 2816 tokens per micro batch
        (["rollout.gpu_memory_utilization=0.9"], 1, "vllm_reserved"),  # colocated: no room left for the learner
    ],
)
def test_the_overflowing_term_is_named(overrides: list[str], micro_batch: int, term: str) -> None:
    plan = plan_memory(load_config(SCALE_1, overrides), micro_batch=micro_batch)
    found = plan.first_overflow()
    assert found is not None and found[1].name == term


def test_split_layout_has_learner_and_rollout_gpus() -> None:
    cfg = load_config(SCALE_1, ["resources.colocate=false", "resources.learner.num_workers=4",
                                "resources.rollout.num_workers=4", "rollout.gpu_memory_utilization=0.9"])
    plan = plan_memory(cfg)
    assert [b.title.split(" (")[0] for b in plan.budgets][::2] == ["learner GPU", "rollout GPU"]
    assert plan.first_overflow() is None
    # Sharding over half the GPUs doubles the per-GPU optimizer state.
    colocated = plan_memory(load_config(SCALE_1))
    opt = {b.title: t.gib for b in (plan.budgets + colocated.budgets) for t in b.terms if t.name == "optimizer"}
    assert opt["learner GPU"] == pytest.approx(2 * opt["colocated GPU, train phase (vLLM asleep)"])


def test_tensor_parallel_must_match_rollout_gpus() -> None:
    with pytest.raises(ConfigError) as info:
        plan_memory(load_config(SCALE_1, ["rollout.tensor_parallel_size=2"]))
    assert info.value.key == "resources.rollout.gpus_per_worker"


def test_colocated_bundles_host_one_learner_and_one_engine() -> None:
    res = load_config(SCALE_1).resources
    actor, reward = placement_groups(res)
    assert (actor.name, actor.roles, len(actor.bundles)) == ("actor", ("learner", "rollout"), 8)
    assert actor.bundles[0] == {"GPU": 1.0, "CPU": 8.0}
    assert sum(r["GPU"] for r in actor.requests.values()) == actor.bundles[0]["GPU"]
    assert (reward.strategy, len(reward.bundles)) == ("SPREAD", 8)
    assert total_resources([actor, reward]) == {"GPU": 8.0, "CPU": 72.0}


def test_split_bundles_and_packing() -> None:
    res = load_config(SCALE_1, ["resources.colocate=false", "resources.learner.num_workers=4",
                                "resources.rollout.num_workers=4"]).resources
    assert [g.name for g in placement_groups(res)] == ["learner", "rollout", "reward"]
    bundles = [{"GPU": 1.0, "CPU": 4.0}] * 3
    assert pack_bundles(bundles, 2, 2, 8) == [0, 0, 1]
    assert pack_bundles(bundles, 1, 2, 8) is None


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["resources.learner.num_workers=9"], "resources.rollout.num_workers"),  # colocate needs equal counts
        (["resources.learner.num_workers=9", "resources.rollout.num_workers=9", "resources.reward.num_workers=1"],
         "resources.num_nodes"),  # 9 GPUs on one 8-GPU node
        (["resources.rollout.gpus_per_worker=1.5", "resources.colocate=false"], "resources.rollout.gpus_per_worker"),
        (["resources.learner.gpus_per_worker=2", "resources.rollout.gpus_per_worker=2"],
         "resources.learner.gpus_per_worker"),
        (["resources.placement_strategy=STRICT_SPREAD"], "resources.placement_strategy"),  # 8 bundles, 1 node
        (["resources.placement_strategy=BALANCED"], "resources.placement_strategy"),
        (["resources.reward.cpus_per_worker=81"], "resources.reward.cpus_per_worker"),
        (["resources.model_size=13B"], "resources.model_size"),
        (["resources.gpus_per_node=0"], "resources.rollout.gpus_per_worker"),
    ],
)
def test_bad_resources_fail_at_load_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SCALE_1, overrides)
    assert info.value.key == key


def test_cpu_recipe_plans_without_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}", "model.path=/nonexistent"]) == 0
    assert "CPU-only" in capsys.readouterr().out


def test_learner_settings_change_the_plan() -> None:
    def term(overrides: list[str], name: str) -> float:
        plan = plan_memory(load_config(SCALE_1, overrides))
        return next(t.gib for b in plan.budgets if "train phase" in b.title for t in b.terms if t.name == name)

    assert term(["learner.activation_checkpointing=false"], "activations") > 5 * term([], "activations")
    assert term(["learner.reference=none"], "reference") == 0.0
    assert term(["algorithm.kl_coef=0"], "reference") == 0.0
    assert term(["learner.param_dtype=float32"], "reference") == pytest.approx(2 * term([], "reference"))
    # the communication-saving FSDP settings each hold one more unsharded copy (compute dtype c bytes x P)
    cfg = load_config(SCALE_1, [])
    shape, c = plan_memory(cfg).shape, 2 if cfg.learner.param_dtype == "bfloat16" else 4
    assert shape is not None
    gathered = shape.embedding_params + 2 * shape.text_layer_params
    assert term(["learner.reshard_after_forward=false"], "parameters") - term([], "parameters") == pytest.approx(
        c * (shape.total_params - gathered) / 2**30, rel=1e-3)
    assert term(["learner.reduce_every_micro_batch=false"], "gradients") - term([], "gradients") == pytest.approx(
        c * shape.total_params / 2**30, rel=1e-3)


MEGATRON_7B = ROOT / "recipes/grpo_qwen25vl_7b_megatron.yaml"
MEGATRON_72B = ROOT / "recipes/grpo_qwen25vl_72b_megatron.yaml"


def test_megatron_recipes_print_a_tp_pp_placement_that_fits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", f"recipe={MEGATRON_7B}"]) == 0
    assert "8 learner ranks (Megatron TP 4 x PP 1 x DP 2)" in capsys.readouterr().out
    assert main(["plan", f"recipe={MEGATRON_72B}"]) == 0
    out = capsys.readouterr().out
    assert "32 learner ranks (Megatron TP 8 x PP 4 x DP 1)" in out and "(first stage)" in out


def test_megatron_tp2_for_7b_is_refused_beside_vllm() -> None:
    # AdamW state is not sharded over data-parallel ranks: TP 2 leaves 4.5B parameters' fp32 state per GPU.
    plan = plan_memory(load_config(MEGATRON_7B, ["learner.megatron.tensor_parallel_size=2"]))
    found = plan.first_overflow()
    assert found is not None and found[0].title.startswith("colocated GPU, rollout phase")


def test_megatron_bf16_counts_float32_masters_and_transients_without_recompute() -> None:
    """bf16 parameters (2 B) + float32 masters (4 B) + AdamW moments (8 B) per local parameter; float32: the
    parameters are the masters (4 B). Without recompute the backward's transients are added to the activations."""
    def terms(overrides: list[str]) -> dict[str, Any]:
        plan = plan_memory(load_config(MEGATRON_72B, overrides))
        return {t.name: t for t in next(b for b in plan.budgets if b.title.startswith("learner GPU")).terms}

    bf16, fp32 = terms([]), terms(["learner.param_dtype=float32"])
    assert bf16["parameters"].gib == pytest.approx(6 / 8 * bf16["optimizer"].gib)
    assert bf16["gradients"].gib == pytest.approx(4 / 8 * bf16["optimizer"].gib)
    assert fp32["parameters"].gib == pytest.approx(4 / 8 * fp32["optimizer"].gib) == fp32["gradients"].gib
    assert "fp32 masters" in bf16["parameters"].formula
    no_recompute = terms(["learner.activation_checkpointing=false"])["activations"]
    assert "transients 0.4" in no_recompute.formula and "transients" not in bf16["activations"].formula


def test_megatron_distributed_optimizer_shards_masters_and_moments_over_dp() -> None:
    """``learner.megatron.distributed_optimizer``: each of the DP replicas keeps 1/DP of the float32 masters
    (4 B) and moments (8 B); the bf16 parameters and their gradients stay whole. The 7B recipe's TP 2 x DP 4,
    refused without it (the rollout phase overflows), fits with it."""
    def terms(overrides: list[str]) -> dict[str, Any]:
        plan = plan_memory(load_config(MEGATRON_7B, overrides))
        return {t.name: t for t in next(b for b in plan.budgets if "train phase" in b.title).terms}

    plain, sliced = terms([]), terms(["learner.megatron.distributed_optimizer=true"])  # TP 4 x DP 2, bf16
    assert sliced["optimizer"].gib == pytest.approx(plain["optimizer"].gib / 2)
    assert sliced["parameters"].gib == pytest.approx(plain["parameters"].gib * (2 + 4 / 2) / (2 + 4))
    assert sliced["gradients"].gib == pytest.approx(plain["gradients"].gib * (2 + 4 / 2) / 4)
    assert "DP" in sliced["optimizer"].formula
    tp2 = ["learner.megatron.tensor_parallel_size=2"]
    assert plan_memory(load_config(MEGATRON_7B, tp2)).first_overflow() is not None
    assert plan_memory(load_config(MEGATRON_7B, [*tp2, "learner.megatron.distributed_optimizer=true"])
                       ).first_overflow() is None


def test_megatron_stage_parameters_add_up_to_the_model() -> None:
    from vt_ray.cluster.megatron_memory import MegatronLayout, peak_stage

    shape = KNOWN_SHAPES["72B"]
    one = load_config(MEGATRON_72B, ["learner.megatron.tensor_parallel_size=1",
                                     "learner.megatron.pipeline_parallel_size=1"])
    whole = peak_stage(one, shape, MegatronLayout.of(one, shape), 1, 2, True, True, 0.0)
    assert whole.params == shape.total_params - shape.hidden  # every tensor but the final norm (replicated, tiny)
    cfg = load_config(MEGATRON_72B)
    split = peak_stage(cfg, shape, MegatronLayout.of(cfg, shape), 1, 2, True, True, 0.0)
    # the first stage: a quarter of the layers and the embedding over TP 8, plus the whole vision tower
    expected = (20 * shape.text_layer_params + shape.vocab * shape.hidden) // 8 + shape.vision_params
    assert split.name == "first stage" and abs(split.params - expected) <= 8
    # the Megatron vision tower (vision_impl megatron) is split over TP 8 too
    meg = load_config(MEGATRON_72B, ["learner.megatron.vision_impl=megatron"])
    tower_split = peak_stage(meg, shape, MegatronLayout.of(meg, shape), 1, 2, True, True, 0.0)
    assert abs(split.params - tower_split.params - (shape.vision_params - shape.vision_params // 8)) <= 8


@pytest.mark.parametrize("checkpointing", [False, True])
def test_megatron_sequence_parallel_splits_the_replicated_activations_over_tp(checkpointing: bool) -> None:
    """Without SP a layer keeps its norm inputs and residual (2h per token) on every TP rank; with SP each rank
    keeps its sequence slice: c S b 2h (1 - 1/t) less per layer in flight (and, checkpointing, the layer inputs
    c S b h are split too)."""
    from vt_ray.cluster.megatron_memory import MegatronLayout, peak_stage

    shape = KNOWN_SHAPES["72B"]
    flags = [f"learner.activation_checkpointing={str(checkpointing).lower()}"]
    off = load_config(MEGATRON_72B, flags)
    on = load_config(MEGATRON_72B, [*flags, "learner.megatron.sequence_parallel=true"])
    lay_off, lay_on = MegatronLayout.of(off, shape), MegatronLayout.of(on, shape)
    assert lay_on.sequence_parallel and "TP 8 (SP)" in lay_on.describe()
    first_off = peak_stage(off, shape, lay_off, 1, 2, checkpointing, False, 0.0)
    first_on = peak_stage(on, shape, lay_on, 1, 2, checkpointing, False, 0.0)
    assert first_on.params == first_off.params
    c, t, b, h = 2, lay_on.tp, 1, shape.hidden
    seq = on.data.max_prompt_tokens + on.rollout.max_tokens
    saved_per_layer = c * seq * b * 2 * h * (1 - 1 / t)
    if checkpointing:  # layer inputs of every layer in flight, plus the two recomputed layers' replicated part
        expected = c * shape.layers * seq * b * h * (1 - 1 / t) + 2 * saved_per_layer
    else:  # 1F1B: the first stage holds `layers` layers' worth
        expected = shape.layers * saved_per_layer
    assert first_off.activations - first_on.activations == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_megatron_context_parallel_divides_the_text_activations_by_cp(checkpointing: bool) -> None:
    """Each CP rank keeps 1/CP of every sequence: its layers' activations and logits are a CP-th; the vision
    tower (run whole on every CP rank) and the parameters are not divided; CP ranks come out of DP."""
    from vt_ray.cluster.megatron_memory import MegatronLayout, peak_stage

    shape = KNOWN_SHAPES["7B"]
    flags = [f"learner.activation_checkpointing={str(checkpointing).lower()}"]
    off = load_config(MEGATRON_7B, flags)
    on = load_config(MEGATRON_7B, [*flags, "learner.megatron.context_parallel_size=2"])
    lay_off, lay_on = MegatronLayout.of(off, shape), MegatronLayout.of(on, shape)
    assert (lay_off.dp, lay_on.dp, lay_on.cp) == (2, 1, 2) and "TP 4 x CP 2 x PP 1" in lay_on.describe()
    vision = 1e9
    st_off, st_on = (peak_stage(cfg, shape, lay, 1, 2, checkpointing, False, vision)
                     for cfg, lay in ((off, lay_off), (on, lay_on)))
    assert st_on.params == st_off.params
    assert st_on.activations - vision == pytest.approx((st_off.activations - vision) / 2, rel=1e-9)


@pytest.mark.parametrize(("overrides", "key"), [
    (["learner.megatron.tensor_parallel_size=16", "learner.megatron.pipeline_parallel_size=1"],
     "learner.megatron.tensor_parallel_size"),  # 16 does not divide the 8 KV heads
    (["learner.megatron.pipeline_parallel_size=3", "resources.learner.num_workers=48", "resources.num_nodes=8"],
     "learner.megatron.pipeline_parallel_size"),  # 3 does not divide the 80 layers
])
def test_megatron_layout_that_cannot_split_the_hinted_model_names_the_key(overrides: list[str], key: str) -> None:
    # No config.json on this machine: the recipe loads, the planner checks the layout against the 72B table shape.
    cfg = load_config(MEGATRON_72B, overrides)
    with pytest.raises(ConfigError) as info:
        plan_memory(cfg)
    assert info.value.key == key


def test_vision_activations_count_each_distinct_video_once_at_the_measured_bytes_per_block(
        tiny_model_dir: Path) -> None:
    from vt_ray.cluster.planner import videos_per_micro_batch, vision_activation_bytes

    def cfg(*extra: str) -> RecipeConfig:
        return load_config(ROOT / "recipes/tiny_cpu.yaml", [
            f"model.path={tiny_model_dir}", "resources.gpus_per_node=3", "resources.learner.gpus_per_worker=1",
            "resources.rollout.gpus_per_worker=1", "video.max_frames=8", "video.max_pixels=50176", *extra])

    # 4 rows in groups of G share at most ceil(3/G) + 1 videos (a micro-batch may start mid-group); G=1: every row
    assert [videos_per_micro_batch(cfg(f"rollout.n={g}"), 4) for g in (1, 2, 4, 16)] == [4, 3, 2, 2]
    assert videos_per_micro_batch(cfg("rollout.n=16"), 1) == 1
    assert videos_per_micro_batch(cfg("rollout.n=16", "learner.dedup_videos=false"), 4) == 4
    shape = plan_memory(cfg()).shape
    assert shape is not None
    one_video = vision_activation_bytes(cfg("rollout.n=16"), shape, 1, 4, False)
    # benchmarks/activation_bytes.py (docs/scaling/activation_bytes.json): autograd saved 0.0160 GiB in the tiny
    # model's vision tower for one 8-frame 224 x 224 video in float32; the formula before (16 h_v per block, no
    # patch input) gave 0.0078 GiB, half of it
    assert one_video / 2**30 == pytest.approx(0.0160, rel=0.2)
    assert vision_activation_bytes(cfg("rollout.n=16"), shape, 4, 4, False) == 2 * one_video
    # the `small` model's tower (4 blocks, 256 wide, MLP 512): 0.092 GiB measured the same way
    small = dataclasses.replace(shape, vision_depth=4, vision_hidden=256, vision_intermediate=512)
    assert vision_activation_bytes(cfg("rollout.n=16"), small, 1, 4, False) / 2**30 == pytest.approx(0.092, rel=0.2)



def test_activations_without_checkpointing_add_the_measured_transients_and_the_pixel_inputs(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vt_ray.cluster import planner

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [
        f"model.path={tiny_model_dir}", "resources.gpus_per_node=3", "resources.learner.gpus_per_worker=1",
        "resources.rollout.gpus_per_worker=1", "video.max_frames=8", "video.max_pixels=50176", "rollout.n=4",
        "learner.activation_checkpointing=false"])

    def activations(config: RecipeConfig) -> float:
        plan = plan_memory(config, micro_batch=4)
        return next(t.gib for b in plan.budgets for t in b.terms if t.name == "activations") * 2**30

    shape = plan_memory(cfg).shape
    assert shape is not None
    inputs = planner.pixel_input_bytes(cfg, shape, 4)
    assert inputs == 4 * 1024 * 4 * 1176  # float32 x (4 temporal x 256 spatial patches) x 4 rows x 3*2*14*14
    with_transients = activations(cfg)
    monkeypatch.setattr(planner, "BACKWARD_TRANSIENTS", 0.0)
    saved = activations(cfg) - inputs
    # docs/scaling.md: forward + backward peaks at 1.31-1.41x the saved bytes, a GRPO step's rank at 1.36-1.42x
    assert with_transients - inputs == pytest.approx(1.4 * saved)
    monkeypatch.undo()
    checkpointed = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, activation_checkpointing=True))
    assert "transients" not in next(t.formula for b in plan_memory(checkpointed, 4).budgets for t in b.terms
                                    if t.name == "activations")


@pytest.mark.parametrize("key", ["resources.learner.num_workers", "resources.rollout.num_workers",
                                 "resources.reward.num_workers"])
def test_a_worker_count_past_any_cluster_fails_at_load_naming_the_key(key: str) -> None:
    # a fuzzed 10^12 learner ranks used to build one placement bundle per rank and run out of memory
    with pytest.raises(ConfigError) as info:
        load_config(SCALE_1, [f"{key}={10**12}"])
    assert info.value.key == key
