"""TRL's side of the head-to-head benchmark: TRL's ``GRPOTrainer`` on vt_ray's tiny recipe inputs.

Run by ``benchmarks.trl_head_to_head`` with the Python of its throwaway environment (TRL and accelerate there,
torch, transformers and vt_ray seen through a .pth file); never imported by the project, which does not depend
on TRL. The same model directory, training prompts (vt_ray's own chat template text), reward (vt_ray's
``RewardScorer``), group size, prompts per step, micro-batch, lr, KL coefficient and generation length
(``min_new_tokens`` = ``max_completion_length``: exactly N tokens, as vt_ray's ``rollout.min_tokens`` +
``ignore_eos``) as the vt_ray run. vt_ray feeds 8 video frames; TRL's VLM path takes images, so it gets 4 of
those frames as images: Qwen2.5-VL merges frame pairs, so both see 64 visual tokens per prompt.

Writes ``--out`` JSON: per-step wall seconds (between optimizer-step ends), the seconds inside generation
(``_generate_single_turn``) and inside the whole batch preparation (generation + reward + reference and old
log-probs, ``_generate_and_score_completions``) per step, completion lengths, and the start-up seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--train-file", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    return p.parse_args()


def build_rows(recipe: str, model: str, train_file: str) -> tuple[list[dict[str, Any]], Any]:
    """vt_ray's prompts and targets as TRL conversational rows with 4 of each video's 8 frames as images."""
    from PIL import Image

    from vt_ray.config.loader import load_config
    from vt_ray.data.schema import read_samples, resolve_video_paths
    from vt_ray.prompts.chat import user_text
    from vt_ray.video.reader import read_video

    cfg = load_config(recipe, [f"model.path={model}", f"data.train_file={train_file}"])
    samples = resolve_video_paths(read_samples(train_file), Path(train_file).parent)
    rows = []
    for s in samples:
        video = read_video(s.video, cfg.video)
        images = [Image.fromarray(frame) for frame in video.frames[::2]]  # frame pairs -> one image each
        rows.append({"prompt": [{"role": "system", "content": cfg.prompt.system},
                                {"role": "user", "content": user_text(s, cfg.prompt)}],
                     "images": images, "target": json.dumps(s.reward_target().to_json())})
    return rows, cfg


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from vt_ray.rewards.composite import RewardScorer
    from vt_ray.rewards.target import RewardTarget

    torch.manual_seed(0)
    rows, cfg = build_rows(args.recipe, args.model, args.train_file)
    scorer = RewardScorer(cfg.reward)

    def reward(prompts: list[Any], completions: list[Any], target: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [scorer.score(t, RewardTarget.from_json(json.loads(g)))["total"] for t, g in zip(texts, target)]

    prompts_per_step, group = cfg.trainer.prompts_per_step, cfg.rollout.n
    micro = cfg.learner.micro_batch_size
    config = GRPOConfig(
        output_dir=args.workdir, max_steps=args.steps, learning_rate=cfg.learner.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=cfg.learner.weight_decay, max_grad_norm=cfg.learner.grad_clip,
        beta=cfg.algorithm.kl_coef, num_generations=group, per_device_train_batch_size=micro,
        gradient_accumulation_steps=prompts_per_step * group // micro, num_iterations=1,
        epsilon=cfg.algorithm.clip_ratio_low, epsilon_high=cfg.algorithm.clip_ratio_high,
        max_completion_length=args.tokens, generation_kwargs={"min_new_tokens": args.tokens},
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0, seed=cfg.run.seed, log_completions=False,
    )
    seconds: dict[str, list[float]] = {"generate": [], "prepare": []}
    step_ends: list[float] = []
    lengths: list[float] = []

    class Timed(GRPOTrainer):  # type: ignore[misc]
        """Times generation and the whole batch preparation without changing either."""

        def _generate_single_turn(self, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = super()._generate_single_turn(*a, **kw)
            seconds["generate"].append(time.perf_counter() - t0)
            return out

        def _generate_and_score_completions(self, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **kw)
            seconds["prepare"].append(time.perf_counter() - t0)
            lengths.append(float(out["completion_mask"].sum(dim=1).float().mean()))
            return out

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_ends.append(time.perf_counter())

    trainer = Timed(model=args.model, reward_funcs=[reward], args=config,
                    train_dataset=Dataset.from_list(rows), callbacks=[StepClock()])
    train_started = time.perf_counter()
    trainer.train()
    finished = time.perf_counter()
    steps = [b - a for a, b in zip([train_started, *step_ends[:-1]], step_ends)]
    payload = {"trl": __import__("trl").__version__, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "startup_s": train_started - started,
               "train_s": finished - train_started, "step_s": steps, "generate_s": seconds["generate"],
               "prepare_s": seconds["prepare"], "completion_len": lengths,
               "responses_per_step": prompts_per_step * group, "pid": os.getpid()}
    Path(args.out).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
