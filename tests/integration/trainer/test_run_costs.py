"""The fixed costs of a run (issue 24 items 3 and 4) without a run: the KV cache sizing, its recipe key, the
grouping of phases, and the /proc readings. The end-to-end check (memory.json and phases.json of a real run) is
in test_trainer.py's fault-free run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vt_ray.common.memory import read_process, read_tree
from vt_ray.common.timeouts import ActorInfo
from vt_ray.config import ConfigError, load_config
from vt_ray.config.roles import RolloutRoleConfig, sequences_per_call
from vt_ray.rollout.kv_cache import BLOCK_TOKENS, GIB, kv_bytes_per_token, kv_cache_bytes, sized_for_role
from vt_ray.trainer.metrics import read_metrics
from vt_ray.trainer.run_costs import RunCosts, Span, summarize_phases

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
# The tiny model's text config (vt_ray/models/tiny.py): 2 layers, 4 heads of 32, 2 KV heads.
TINY_TEXT = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128}


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer_and_kv_head() -> None:
    assert kv_bytes_per_token({"text_config": TINY_TEXT}, "float32") == 2 * 2 * 2 * 32 * 4  # 1 KiB
    assert kv_bytes_per_token(TINY_TEXT, "bfloat16") == 512  # older configs keep the text keys at the top
    qwen7b = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584}
    assert kv_bytes_per_token(qwen7b, "bfloat16") == 57344  # 56 KiB a token, the published figure
    assert kv_bytes_per_token({**qwen7b, "head_dim": 64}, "bfloat16") == 28672  # an explicit head_dim wins


def test_kv_cache_bytes_scales_with_sequences_and_keeps_vllms_start_up_floor() -> None:
    per_token = 1024
    one = kv_cache_bytes(per_token, 1, 1280, 2048, margin=1.0)
    assert one == (2048 // BLOCK_TOKENS + 1) * BLOCK_TOKENS * per_token  # one max_model_len sequence + null block
    sixteen = kv_cache_bytes(per_token, 16, 1280, 2048, margin=1.0)
    assert sixteen == (16 * 10 + 1) * BLOCK_TOKENS * per_token  # 1280 tokens = 10 blocks each
    assert kv_cache_bytes(per_token, 16, 1280, 2048) == pytest.approx(1.25 * sixteen, abs=1)
    assert kv_cache_bytes(per_token, 16, 1281, 2048, margin=1.0) > sixteen  # a partial block is a whole block
    assert kv_cache_bytes(per_token, 4, 9999, 2048, margin=1.0) == kv_cache_bytes(per_token, 4, 2048, 2048, 1.0)
    with pytest.raises(ValueError):
        kv_cache_bytes(per_token, 0, 1280, 2048)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 16),  # 4 prompts x n=4 on one engine
        (["resources.rollout.num_workers=2", "resources.cpus_per_node=8"], 8),  # each engine gets half the prompts
        (["resources.rollout.num_workers=3", "resources.cpus_per_node=8"], 8),  # ceil(4 / 3) = 2 prompts x 4
        (["algorithm.tgrpo=true"], 32),  # + n shuffled-frame responses per prompt
        (["algorithm.dynamic_sampling=true", "algorithm.oversample_factor=1.5"], 24),  # 6 prompts drawn
        (["rollout.max_num_seqs=10"], 10),  # vLLM never runs more at once
    ],
)
def test_sequences_per_call_is_what_one_engine_gets_in_a_training_call(overrides: list[str], expected: int) -> None:
    assert sequences_per_call(load_config(TINY, overrides)) == expected


def test_auto_sizes_the_tiny_recipe_to_tens_of_mib_and_a_number_is_kept(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"text_config": TINY_TEXT}))
    cfg = load_config(TINY, [f"model.path={tmp_path}"])
    assert cfg.rollout.kv_cache_gib == "auto"
    sized = float(sized_for_role(RolloutRoleConfig.of(cfg)).kv_cache_gib) * GIB
    assert sized == pytest.approx(kv_cache_bytes(1024, 16, 1024 + 256, 2048), rel=1e-4)
    assert 20 * 2**20 < sized < 32 * 2**20  # ~25 MiB, against the 1 GiB the recipe used to reserve
    fixed = load_config(TINY, [f"model.path={tmp_path}", "rollout.kv_cache_gib=0.5"])
    assert sized_for_role(RolloutRoleConfig.of(fixed)).kv_cache_gib == "0.5" and fixed.rollout.kv_cache_fixed_gib == 0.5


def test_old_integer_kv_cache_gib_still_loads(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout:\n  kv_cache_gib: 1\n")
    assert load_config(recipe).rollout.kv_cache_fixed_gib == 1.0


@pytest.mark.parametrize("value", ["0", "-1", "lots", "nan", "inf"])
def test_bad_kv_cache_gib_fails_at_load_naming_the_key(tmp_path: Path, value: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"rollout:\n  kv_cache_gib: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert info.value.key == "rollout.kv_cache_gib"


def test_phases_are_grouped_into_start_up_steps_and_shut_down() -> None:
    spans = [Span("fit", 0.0, 30.0), Span("load_data", 0.1, 0.4), Span("start_roles", 0.5, 10.0),
             Span("validate_before", 12.0, 2.0), Span("step_1", 14.0, 4.0), Span("step_2", 18.0, 2.0),
             Span("checkpoint", 20.0, 0.5), Span("step_3", 20.5, 3.0), Span("validate", 23.5, 1.0),
             Span("checkpoint", 24.5, 1.0), Span("hf_export", 25.5, 0.5), Span("shutdown", 26.0, 3.0),
             Span("shutdown_learner", 26.0, 1.0), Span("wandb_close", 28.0, 0.5)]
    out = summarize_phases(spans)
    assert out["startup"]["phases"] == {"load_data": 0.4, "start_roles": 10.0, "validate_before": 2.0, "step_1": 4.0}
    assert out["startup"]["seconds"] == pytest.approx(16.4)
    assert out["steps"] == {"count": 3, "first_s": 4.0, "median_after_first_s": 2.5, "total_s": 9.0,
                            "between_steps": {"phases": {"checkpoint": 0.5}, "seconds": 0.5}}
    shut = out["shutdown"]
    assert shut["phases"] == {"validate": 1.0, "checkpoint": 1.0, "hf_export": 0.5, "shutdown": 3.0,
                              "shutdown_learner": 1.0, "wandb_close": 0.5}
    assert shut["seconds"] == pytest.approx(5.5)  # nested spans are listed, not counted twice
    assert out["fit_s"] == 30.0 and out["untracked_s"] == pytest.approx(30.0 - 16.4 - 5.0 - 0.5 - 5.5)


def test_process_readings_of_this_process() -> None:
    me = read_process(os.getpid())
    assert me is not None and me.pid == os.getpid()
    assert 0 < me.pss <= me.rss <= me.peak_rss  # PSS splits shared pages; the peak is at least today's
    assert read_tree()[0].pid == os.getpid()
    assert read_process(2**22 + 12345) is None  # beyond pid_max: gone


class _Group:
    """A role group as the run costs see it: where its actors run (here: plain child processes)."""

    def __init__(self, role: str, pids: list[int]) -> None:
        self.infos = {rank: ActorInfo(role, rank, pid) for rank, pid in enumerate(pids)}
        self.hf_dirs: list[str] = []

    def actor_infos(self) -> dict[int, ActorInfo]:
        return dict(self.infos)

    def save_hf(self, out_dir: str) -> str:
        self.hf_dirs.append(out_dir)
        return out_dir

    def shutdown(self) -> None:
        self.infos = {}


class _Trainer:
    """The driver's shape: the phases it opens and the hooks it calls, which vt_ray/trainer/run_costs.py records
    (the real driver's are checked end to end in test_trainer.py's fault-free run)."""

    def __init__(self, run_dir: Path, children: list[subprocess.Popen[bytes]]) -> None:
        self.run_dir, self.children, self.step = run_dir, children, 0
        self.tc = SimpleNamespace(total_steps=3)
        self.learner = self.rollout = self.rewards = None
        self.logger = None
        self.costs = RunCosts(run_dir, lambda: {"learner": self.learner, "rollout": self.rollout,
                                                "reward": self.rewards}, interval_s=0.05)

    def _start_roles(self) -> None:
        with self.costs.phase("start_roles"):
            pids = [c.pid for c in self.children]
            self.learner, self.rollout = _Group("learner", pids[:2]), _Group("rollout", pids[2:])
        self.costs.roles_started()

    def train_step(self) -> dict[str, float]:
        with self.costs.phase(f"step_{self.step + 1}"):
            self.step += 1
            metrics = {"time/step_s": 0.0}
        self.costs.step_done(self.step, self.tc.total_steps, metrics)
        return metrics

    def shutdown(self) -> None:
        with self.costs.phase("shutdown"):
            for name, group in (("rollout", self.rollout), ("learner", self.learner)):
                with self.costs.phase(f"shutdown_{name}"):
                    group.shutdown()

    def fit(self) -> list[dict[str, float]]:
        try:
            with self.costs.phase("fit"):
                with self.costs.phase("load_data"):
                    pass
                self._start_roles()
                with self.costs.phase("resume"):
                    pass
                with self.costs.phase("validate_before"):
                    pass
                logged = [self.train_step() for _ in range(self.tc.total_steps)]
                with self.costs.phase("checkpoint"):
                    pass
                with self.costs.phase("hf_export"):
                    self.learner.save_hf("hf")
                self.shutdown()
                return logged
        finally:
            self.costs.finish()


def test_run_costs_report_every_role_process_and_phase_of_a_driver_shaped_object(tmp_path: Path) -> None:
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    try:
        trainer = _Trainer(tmp_path, children)
        logged = trainer.fit()
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert set(logged[0]) > {"memory/learner0_peak_gib", "memory/learner1_peak_gib", "memory/rollout0_peak_gib",
                             "memory/driver_peak_gib", "memory/total_peak_gib"}
    assert not any(k.startswith("memory/") for k in logged[1])  # step 1 and the last step only
    assert "memory/rollout0_peak_gib" in logged[2]
    memory = json.loads((tmp_path / "memory.json").read_text())
    roles = memory["roles"]
    assert {"driver", "learner0", "learner1", "rollout0"} <= set(roles)
    assert [p["pid"] for p in roles["rollout0"]["processes"]] == [children[2].pid]
    for name in ("driver", "learner0", "rollout0"):
        assert 0 < roles[name]["peak_pss_gib"] <= roles[name]["peak_rss_gib"] + 1e-3
    peaks = [r["peak_pss_gib"] for r in roles.values()]  # all at once: at least the largest, at most their sum
    assert max(peaks) - 0.001 <= memory["total"]["peak_pss_gib"] <= sum(peaks) + 0.01
    phases = json.loads((tmp_path / "phases.json").read_text())
    names = [s["name"] for s in phases["timeline"]]
    assert names == ["fit", "load_data", "start_roles", "resume", "validate_before", "step_1", "step_2", "step_3",
                     "checkpoint", "hf_export", "shutdown", "shutdown_rollout", "shutdown_learner"]
    assert trainer.learner is not None and trainer.learner.hf_dirs == ["hf"]  # the timed call ran


def test_metrics_reach_wandb_in_order_when_it_starts_after_the_first_logs(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B starts in a thread (its start is off the driver's path): records logged meanwhile wait, then go in
    order; log() never waits for it. The W&B run here is a recorder (an external service, not our code)."""
    import threading

    from vt_ray.trainer.metrics import MetricsLogger

    up = threading.Event()
    sent: list[tuple[int, dict[str, float]]] = []
    run = SimpleNamespace(log=lambda record, step: sent.append((step, record)), finish=lambda: sent.append((-1, {})))

    def slow_start(self: MetricsLogger, *args: object) -> None:
        up.wait(30)  # the test opens it below: W&B "starts" after two records were logged
        self._wandb_run = run

    monkeypatch.setattr(MetricsLogger, "_start_wandb", slow_start)
    logger = MetricsLogger(tmp_path, "t", {}, wandb_mode="offline")
    logger.log(0, {"val/total": 0.5, "note": "text"})
    logger.log(1, {"reward/total": 1.0})
    assert sent == []  # neither call waited for W&B
    up.set()
    logger.close()
    assert sent == [(0, {"val/total": 0.5}), (1, {"reward/total": 1.0}), (-1, {})]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]
