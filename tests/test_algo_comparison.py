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
        "cispo": algo.policy_loss == "cispo",
    }[name]
    assert expected, (name, algo)


def test_an_unknown_family_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--families", "ppo"])
