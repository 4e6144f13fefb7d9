"""The transformers rollout backend generates all prompts of a call in one left-padded batch: greedy responses and
their log-probs equal one-prompt-per-call generation, sampled log-probs equal a forward over the response, stop
strings end each sequence on its own, and ``min_tokens`` / ``ignore_eos`` fix the response length."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vt_ray.config.schema import ModelConfig, PromptConfig, RolloutConfig
from vt_ray.rollout.types import GenerationRequest, RolloutResult, SamplingSettings

GREEDY = SamplingSettings(n=1, temperature=0.0, max_tokens=16, stop=[])


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from vt_ray.rollout.hf_engine import HfEngine

    return HfEngine(ModelConfig(path=str(tiny_model_dir)), RolloutConfig(backend="hf"))


@pytest.fixture(scope="module")
def requests(engine) -> list[GenerationRequest]:
    """Prompts of different lengths (2 to 8 frames, longer questions) and one image: real left padding."""
    from vt_ray.data.schema import VideoSample
    from vt_ray.prompts.chat import prompt_text

    rng = np.random.default_rng(0)
    out = []
    for i, (frames, media) in enumerate([(4, "video"), (1, "image"), (8, "video"), (2, "video")]):
        sample = VideoSample(uid=f"r{i}", video="", question="Which colour came first?" + " And then?" * i,
                             answer="A", options=["red", "green"], media=media)
        pixels = rng.integers(0, 255, (frames, 56, 56, 3), dtype=np.uint8)
        out.append(GenerationRequest(sample.uid, prompt_text(engine.processor, sample, PromptConfig()), pixels, {},
                                     media=media))
    return out


def _one_by_one(engine, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[RolloutResult]:
    engine.rollout = dataclasses.replace(engine.rollout, hf_batch_size=1)
    try:
        return engine.generate(requests, sampling)
    finally:
        engine.rollout = dataclasses.replace(engine.rollout, hf_batch_size=0)


def _assert_same(batched: list[RolloutResult], single: list[RolloutResult]) -> None:
    assert [r.uid for r in batched] == [r.uid for r in single]
    for a, b in zip(batched, single, strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids  # the padding is not part of the prompt
        for ca, cb in zip(a.completions, b.completions, strict=True):
            assert (ca.token_ids, ca.text, ca.finish_reason) == (cb.token_ids, cb.text, cb.finish_reason)
            torch.testing.assert_close(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-5, rtol=0)


def test_greedy_batched_equals_one_prompt_per_call(engine, requests) -> None:
    batched = engine.generate(requests, dataclasses.replace(GREEDY, n=2))
    single = _one_by_one(engine, requests, dataclasses.replace(GREEDY, n=2))
    _assert_same(batched, single)
    assert max(len(c.token_ids) for r in batched for c in r.completions) == 16
    assert len({tuple(r.completions[0].token_ids) for r in batched}) > 1  # rows differ: a mix-up would show


def test_stop_strings_end_each_sequence_on_its_own(engine, requests) -> None:
    free = engine.generate(requests, GREEDY)
    texts = [r.completions[0].text for r in free]
    tokens = free[2].completions[0].token_ids
    pieces = [engine.tokenizer.decode([t]) for t in tokens[2:10]]  # a word row 2 says early and row 0 never
    stop = next(p for p in pieces if p.strip() and "\ufffd" not in p and p not in texts[0])
    sampling = dataclasses.replace(GREEDY, stop=[stop])
    batched = engine.generate(requests, sampling)
    _assert_same(batched, _one_by_one(engine, requests, sampling))
    stopped = 0
    for r, f in zip(batched, free, strict=True):
        c, before = r.completions[0], f.completions[0]
        assert c.token_ids == before.token_ids[:len(c.token_ids)]
        if stop in before.text:  # ends where the stop string first completes, the string kept
            stopped += 1
            assert c.finish_reason == "stop" and c.text.endswith(stop) and stop not in c.text[:-len(stop)]
        else:  # runs on as without the stop string
            assert c.token_ids == before.token_ids
    assert 1 <= stopped < len(requests)
    first = len(batched[2].completions[0].token_ids)

    # min_tokens holds the stop string back: the response runs past where it stopped before.
    held = engine.generate(requests[2:3], dataclasses.replace(sampling, min_tokens=first + 1))[0].completions[0]
    assert len(held.token_ids) > first + 1 and held.token_ids == tokens[:len(held.token_ids)]


def test_sampled_logprobs_are_the_models_and_a_seed_repeats_the_call(engine, requests) -> None:
    from vt_ray.prompts.encode import encode_prompt

    sampling = SamplingSettings(n=2, temperature=1.0, max_tokens=10, stop=[], seed=5)
    first = engine.generate(requests, sampling)
    assert [[c.token_ids for c in r.completions] for r in engine.generate(requests, sampling)] == \
        [[c.token_ids for c in r.completions] for r in first]
    other = engine.generate(requests, dataclasses.replace(sampling, seed=6))
    assert [r.completions[0].token_ids for r in other] != [r.completions[0].token_ids for r in first]

    # Row 3 has the shortest prompt (the most padding): its log-probs equal an unpadded forward pass.
    req, result = requests[3], first[3]
    inputs = encode_prompt(engine.processor, req.prompt, req.frames, req.video_metadata, req.media)
    assert inputs["input_ids"][0].tolist() == result.prompt_token_ids
    for c in result.completions:
        response = torch.tensor([c.token_ids])
        full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], response], 1),
                "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + response.shape[1], dtype=torch.long),
                "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(response)], 1)}
        with torch.no_grad():
            logits = engine.model(**full).logits[0, inputs["input_ids"].shape[1] - 1:-1].float()
        expected = logits.log_softmax(-1).gather(-1, response[0, :, None])[:, 0]
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_min_tokens_and_ignore_eos_fix_the_length_of_an_eos_prone_model(engine, requests) -> None:
    from eos_prone import eos_prone_state

    eos = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    engine.update_weights(eos_prone_state(engine.model.state_dict(), eos), version=1)
    engine.rollout = dataclasses.replace(engine.rollout, hf_batch_size=2)  # and two batches of two prompts
    sampling = SamplingSettings(n=2, temperature=1.0, max_tokens=16, seed=0)

    def lengths(**knobs: object) -> set[tuple[int, str]]:
        results = engine.generate(requests, dataclasses.replace(sampling, **knobs))  # type: ignore[arg-type]
        return {(len(c.token_ids), c.finish_reason) for r in results for c in r.completions}

    try:
        assert lengths() == {(1, "stop")}  # the model ends every response at once
        assert lengths(min_tokens=16, ignore_eos=True) == {(16, "length")}
        assert lengths(ignore_eos=True) == {(16, "length")}  # EOS sampled and generated past
        assert lengths(min_tokens=5) == {(6, "stop")}  # EOS held back for 5 tokens, then sampled
    finally:
        engine.rollout = dataclasses.replace(engine.rollout, hf_batch_size=0)
        engine.update_weights(None, version=0)
