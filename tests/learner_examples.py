"""Learner batches for tests: prompts over random frames with gold-trace responses (a helper module, not tests;
``tests/`` is on sys.path through the rootdir conftest)."""

from __future__ import annotations

import numpy as np

from vt_ray.learner.batch import Example

SYSTEM = [{"role": "system", "content": [{"type": "text", "text": "You are a video analyst."}]}]


def make_examples(processor, n: int, seed: int = 0, frames_shape=(4, 56, 56, 3), extras: bool = False) -> list[Example]:
    """``n`` prompts over random frames with gold-trace responses of different lengths."""
    rng = np.random.default_rng(seed)
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for i in range(n):
        msgs = SYSTEM + [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": f"What happens? {'why ' * i}"}]}
        ]
        prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        trace = "<time>0.0-1.0</time> <caption>a red box moves</caption> <think>it moves</think> " * (1 + i % 3)
        response = tok(trace + f"<answer>{'ABCD'[i % 4]}</answer>", add_special_tokens=False)["input_ids"] + [im_end]
        token_extras = {"token_weight": [-0.1 * (j + 1) for j in range(len(response))]} if extras else {}
        seq_extras = {"seq_weight": float(i) - 1.5} if extras else {}
        frames = rng.integers(0, 256, size=frames_shape, dtype=np.uint8)
        out.append(Example(prompt, frames, response, {}, token_extras, seq_extras, uid=f"s{i}"))
    return out
