"""Recipes load strictly: unknown keys, wrong types and bad values fail at load time naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vt_ray.config import ConfigError, RecipeConfig, load_config, to_yaml
from vt_ray.config.loader import split_cli_args

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_checked_in_recipe_loads(recipe: Path) -> None:
    cfg = load_config(recipe)
    assert isinstance(cfg, RecipeConfig)


def test_overrides_apply_with_types() -> None:
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", ["rollout.n=2", "rollout.temperature=0.5", "run.name=x"])
    assert (cfg.rollout.n, cfg.rollout.temperature, cfg.run.name) == (2, 0.5, "x")
    assert cfg.video.num_frames == 8  # from the recipe file


def test_overrides_reach_into_lists() -> None:
    recipe = ROOT / "recipes/curate_activitynet_example.yaml"
    cfg = load_config(recipe, ["curate.sources.1.limit=5", "curate.sources.1.options={subset: training}"])
    youcook = cfg.curate.sources[1]
    assert (youcook.name, youcook.limit, dict(youcook.options)) == ("youcook2", 5, {"subset": "training"})
    assert cfg.curate.sources[0].limit == 0  # the other entries are untouched
    for bad, key in (("curate.sources.9.limit=1", "curate.sources.9.limit"),
                     ("curate.sources.1.bogus=1", "curate.sources.1.bogus")):
        with pytest.raises(ConfigError) as info:
            load_config(recipe, [bad])
        assert info.value.key == key
    with pytest.raises(ConfigError, match="limit"):
        load_config(recipe, ["curate.sources.1.limit=abc"])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("rollout:\n  tempreature: 1.0\n", "rollout.tempreature"),
        ("rollout:\n  n: many\n", "rollout.n"),
        ("video:\n  fps: [1, 2]\n", "video.fps"),
        ("nosuchsection:\n  a: 1\n", "nosuchsection"),
        ("rollout:\n  n: 0\n", "rollout.n"),
        ("model:\n  dtype: fp8\n", "model.dtype"),
        ("video:\n  backend: ffmpeg\n", "video.backend"),
        ("rollout:\n  max_model_len: 100\n", "rollout.max_model_len"),
        ("prompt:\n  question_template: 'no placeholder'\n", "prompt.question_template"),
        ("prompt:\n  question_template: '{question} {bogus}'\n", "prompt.question_template"),
        ("trainer:\n  mode: overlapped\n", "trainer.mode"),
        ("trainer:\n  mode: async\n  max_staleness: 0\n", "trainer.max_staleness"),
        ("trainer:\n  mode: one_step_off\n  max_staleness: 2\n", "trainer.max_staleness"),
        ("trainer:\n  mode: async\nrollout:\n  enable_sleep_mode: true\nresources:\n  gpus_per_node: 1\n",
         "trainer.mode"),
        ("rollout:\n  min_tokens: -1\n", "rollout.min_tokens"),
        ("rollout:\n  max_tokens: 16\n  min_tokens: 17\n", "rollout.min_tokens"),
        ("rollout:\n  ignore_eos: maybe\n", "rollout.ignore_eos"),
        ("rollout:\n  hf_batch_size: -1\n", "rollout.hf_batch_size"),
    ],
)
def test_bad_recipe_fails_naming_key_and_file(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = _write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_fixed_length_rollouts_load() -> None:
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", ["rollout.max_tokens=16", "rollout.min_tokens=16",
                                                       "rollout.ignore_eos=true", "rollout.hf_batch_size=2"])
    assert (cfg.rollout.min_tokens, cfg.rollout.ignore_eos, cfg.rollout.hf_batch_size) == (16, True, 2)
    defaults = load_config(ROOT / "recipes/tiny_cpu.yaml").rollout
    assert (defaults.min_tokens, defaults.ignore_eos, defaults.hf_batch_size) == (0, False, 0)


def test_bad_override_names_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "recipes/tiny_cpu.yaml", ["rollout.top_p=2"])
    assert info.value.key == "rollout.top_p"
    assert "command line" in str(info.value)


def test_missing_recipe_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(_write(tmp_path, "rollout: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_cli_args_split() -> None:
    assert split_cli_args(["recipe=a.yaml", "x.y=1"]) == ("a.yaml", ["x.y=1"])
    with pytest.raises(ConfigError):
        split_cli_args(["oops"])


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", ["rollout.n=3"])
    again = load_config(_write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_a_loaded_recipe_is_frozen_and_its_closed_choices_are_enums(tmp_path: Path) -> None:
    import dataclasses

    from vt_ray.config.loader import to_yaml
    from vt_ray.config.trainer import TrainerMode

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", ["trainer.mode=async", "trainer.max_staleness=2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trainer.total_steps = 99  # type: ignore[misc]
    assert cfg.trainer.mode is TrainerMode.async_ and cfg.trainer.mode == "async"  # a StrEnum compares as its value
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(cfg))
    assert "  mode: async\n" in saved.read_text()  # the value a recipe writes, not the member name
    assert load_config(saved) == cfg


@pytest.mark.parametrize(("override", "key"), [
    ("trainer.mode=asynchronous", "trainer.mode"),
    ("learner.param_dtype=fp8", "learner.param_dtype"),
    ("rollout.weight_sync=push", "rollout.weight_sync"),
    ("reward.isolation=none", "reward.isolation"),
    ("algorithm.behaviour_logprobs=vllm", "algorithm.behaviour_logprobs"),
])
def test_a_value_outside_a_closed_choice_fails_naming_the_key_and_the_choices(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "recipes/tiny_cpu.yaml", [override])
    assert info.value.key == key
    assert override.partition("=")[2] in str(info.value)


def test_a_section_built_in_python_gets_the_same_check_and_type() -> None:
    from vt_ray.rewards.config import Isolation, RewardConfig

    assert RewardConfig(isolation="thread").isolation is Isolation.thread  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        RewardConfig(isolation="fork")  # type: ignore[arg-type]
    assert info.value.key == "reward.isolation" and "process | thread" in str(info.value)
