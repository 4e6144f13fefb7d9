"""Teach a tiny random model to *read lettered options* before it sees a task video: the skill a pretrained
model brings to multiple choice, which our randomly initialised one lacks.

Why: with options shuffled per sample (:mod:`vt_ray.data.learnable`), answering needs a look-up through the
prompt (find the colour among the options, answer the letter in front of it). A 2-layer transformer does that
with an induction-style circuit that forms only after a long plateau. Measured on this machine (tiny model,
AdamW 1e-3, 32-64 examples a step): in the recipe's chat format (~155 tokens) the look-up stayed at chance for
2,100 steps; in a short form (~36 tokens) it formed after 750-1,200 steps; then ~200 steps in the chat format at
3e-4 carry it over (at 1e-3 that phase swung between 0.45 and 0.78 held-out accuracy for 1,000 steps). So it is
taught in those two phases, each run until a held-out batch passes ``target``. (It reads; the SFT after it
erases the reading: docs/learning.md.)

This is base-model pretraining on text (no video, no Ray, one process), as a hub model's is: the examples name
the colour in the question ("Which option is red?"), so the binding of a *video's* colour to a letter is never
shown; SFT and GRPO come after it (:mod:`vt_ray.learning`). Loss on the answer token only: the rest of the trace
is SFT's job.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vt_ray.config.schema import PromptConfig
from vt_ray.data.learnable import TASK_COLORS, lookup_sample
from vt_ray.prompts.chat import user_text

PHASES = ("short", "chat")


@dataclass
class ReadingResult:
    """Steps and held-out accuracy per phase; ``history`` has (phase, step, loss, accuracy) at each check."""

    steps: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    history: list[tuple[str, int, float, float]] = field(default_factory=list)

    @property
    def reads(self) -> bool:
        return bool(self.accuracy) and all(self.accuracy.get(p, 0.0) >= 0.9 for p in PHASES)


def reading_example(rng: random.Random, phase: str, prompt: PromptConfig, tokenizer: Any) -> str:
    """One look-up, ending in its answer letter. ``short``: question, options, think and answer only; ``chat``:
    the recipe's system and user turns as the pipeline renders them, minus the video placeholder."""
    options, color = list(TASK_COLORS), rng.choice(TASK_COLORS)
    rng.shuffle(options)
    sample = lookup_sample(color, options, video="")
    trace = sample.trace or ""
    if phase == "short":
        return f"{sample.question}\n{sample.options_text()}\n{trace[trace.index('<think>'):]}"
    turns = [{"role": "system", "content": prompt.system}, {"role": "user", "content": user_text(sample, prompt)}]
    head = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return head + trace


def _answer_batch(texts: list[str], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs up to the answer token and the answer token itself (the letter merges with ``<answer>``'s ``>``
    in our tokenizer, so it is cut off as a token, not as characters)."""
    heads = [t[: t.rindex("</answer>")] for t in texts]
    ids = [tokenizer(h)["input_ids"] for h in heads]
    width = max(len(i) for i in ids) - 1
    pad = tokenizer.pad_token_id
    inputs = torch.tensor([[pad] * (width - len(i) + 1) + i[:-1] for i in ids])
    mask = torch.tensor([[0] * (width - len(i) + 1) + [1] * (len(i) - 1) for i in ids])
    return inputs, mask, torch.tensor([i[-1] for i in ids])


def _logits(model: Any, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=inputs, attention_mask=mask).logits[:, -1]


def teach_reading(model_dir: str | Path, prompt: PromptConfig, seed: int, *,
                  lr: tuple[float, float] = (1e-3, 3e-4), batch_size: int = 64,
                  max_steps: tuple[int, int] = (3000, 2000), target: float = 0.95,
                  check_every: int = 50, held_out: int = 128, log: Any = print) -> ReadingResult:
    """Train ``model_dir``'s model in place on look-ups (short, then chat); returns what it reached. A phase
    that does not pass ``target`` within its ``max_steps`` is reported (``ReadingResult.reads`` false), not
    raised: the learning benchmark then shows what GRPO does from a model that half reads."""
    from transformers import AutoTokenizer

    from vt_ray.models.hf_load import load_vl_model

    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_vl_model(str(model_dir), torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr[0], weight_decay=0.0)
    result = ReadingResult()
    for phase, limit, phase_lr in zip(PHASES, max_steps, lr):
        for group in optimizer.param_groups:
            group["lr"] = phase_lr
        rng, check_rng = random.Random(f"reading-{seed}-{phase}"), random.Random(f"reading-check-{seed}-{phase}")
        check = _answer_batch([reading_example(check_rng, phase, prompt, tokenizer) for _ in range(held_out)],
                              tokenizer)
        accuracy, step = 0.0, 0
        for step in range(1, limit + 1):
            inputs, mask, answers = _answer_batch(
                [reading_example(rng, phase, prompt, tokenizer) for _ in range(batch_size)], tokenizer)
            loss = torch.nn.functional.cross_entropy(_logits(model, inputs, mask), answers)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % check_every == 0:
                with torch.no_grad():
                    accuracy = (_logits(model, check[0], check[1]).argmax(-1) == check[2]).float().mean().item()
                result.history.append((phase, step, round(loss.item(), 4), accuracy))
                log(f"[reading] {phase} step {step}: loss {loss.item():.3f}, held-out accuracy {accuracy:.3f}")
                if accuracy >= target:
                    break
        result.steps[phase], result.accuracy[phase] = step, accuracy
    model.eval().save_pretrained(model_dir)
    result.seconds = round(time.perf_counter() - started, 1)
    return result
