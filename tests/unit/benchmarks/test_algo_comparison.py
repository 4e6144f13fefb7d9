"""The family comparison benchmark's overrides are valid recipes, and each one changes what it says it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.algo_comparison import FAMILIES, parse_args
from vt_ray.learning import LearningSpec, check_spec


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_loads_on_the_learning_recipe(name: str, tmp_path: Path) -> None:
    cfg = check_spec(LearningSpec(out=tmp_path, overrides=list(FAMILIES[name])))
    algo = cfg.algorithm
    expected = {
        "grpo": (algo.adv_estimator, algo.policy_loss) == ("grpo", "vanilla"),
        "dr_grpo": algo.adv_estimator == "dr_grpo" and algo.loss_agg_mode == "seq-mean-token-sum-norm",
        "gspo": algo.policy_loss == "gspo" and cfg.trainer.mini_batch_size == 64,
        "dapo": algo.dynamic_sampling and algo.clip_ratio_high == 0.28 and algo.overlong_buffer_len == 12,
        "tgrpo": algo.tgrpo,
        "tgrpo_dr": algo.tgrpo and algo.adv_estimator == "dr_grpo",
        "cispo": algo.policy_loss == "cispo",
        "grpo_2upd": algo.policy_loss == "vanilla" and cfg.trainer.mini_batch_size == 64,
    }[name]
    assert expected, (name, algo)


def test_an_unknown_family_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--families", "ppo"])


def test_combine_merges_families_per_seed(tmp_path: Path) -> None:
    """Runs made separately (e.g. one more family later, same SFT) end up in one table per seed."""
    import json

    from benchmarks.algo_comparison import combine

    curve = {"step": [1, 2], "step_s": [1.0, 1.0], "val_step": [0, 2], "val_elapsed_s": [1.0, 9.0],
             "val_accuracy": [0.25, 0.5]}
    summary = {"start_accuracy": 0.25, "final_accuracy": 0.5, "final_ci95": [0.38, 0.62], "best_accuracy": 0.5,
               "target_step": None, "target_elapsed_s": None, "verdict": "learned: ..."}

    def report(path: Path, families: list[str]) -> str:
        runs = [{"seed": 0, "task": "color", "families": {
            f: {"curve": curve, "summary": summary, "mean_step_s": 1.0} for f in families}}]
        path.write_text(json.dumps({"runs": runs}))
        return str(path)

    assert combine([report(tmp_path / "a.json", ["grpo", "gspo"]), report(tmp_path / "b.json", ["grpo_2upd"])],
                   tmp_path / "out") == 0
    merged = json.loads((tmp_path / "out" / "algo_comparison.json").read_text())
    assert [sorted(r["families"]) for r in merged["runs"]] == [["grpo", "grpo_2upd", "gspo"]]
    assert (tmp_path / "out" / "algo_comparison.png").is_file()
