"""The reader base: look-ups answer the letter the shuffled options give the named colour, the reading stage
trains on exactly that token, and the learning benchmark wires it in only when asked."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from vt_ray.data.learnable import TASK_COLORS, lookup_samples, write_sft_file
from vt_ray.data.schema import OPTION_LETTERS, read_samples
from vt_ray.learning import LearningSpec, check_spec, learning_recipe
from vt_ray.trace import parse_trace


def test_a_look_up_answers_the_letter_its_options_give_the_named_colour() -> None:
    samples = lookup_samples(48, seed=1, video="videos/dark.mp4")
    assert {s.extra["color"] for s in samples} == set(TASK_COLORS)
    assert len({tuple(s.options) for s in samples}) > 4  # the options really are shuffled
    for s in samples:
        color = s.extra["color"]
        assert color in s.question
        assert s.answer == OPTION_LETTERS[s.options.index(color)]
        trace = parse_trace(s.trace)
        assert trace.answer == s.answer
        assert color not in (trace.steps[1].text or "")  # the caption says nothing of the colour


def test_sft_with_look_ups_keeps_the_task_and_adds_the_look_ups(tmp_path: Path) -> None:
    from vt_ray.data.learnable import LearnableTaskConfig, make_learnable_dataset

    make_learnable_dataset(tmp_path, LearnableTaskConfig(num_train=8, num_val=4, option_order="shuffled"))
    from vt_ray.data.schema import ANSWER_WEIGHT

    path = write_sft_file(tmp_path, lookups=12, seed=0)
    samples = read_samples(path)
    assert sorted(s.source for s in samples).count("lookup") == 12
    assert not any(ANSWER_WEIGHT in s.extra for s in samples)  # every token weighs 1
    assert {s.uid for s in read_samples(tmp_path / "train.jsonl")} <= {s.uid for s in samples}
    assert (tmp_path / "videos" / "dark.mp4").stat().st_size > 0


@pytest.mark.parametrize("phase", ["short", "chat"])
def test_the_reading_target_is_the_answer_token_after_the_prompt(phase: str, tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from vt_ray.trainer.reading import _answer_batch, reading_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = learning_recipe(LearningSpec(out=tmp_path)).prompt
    texts = [reading_example(random.Random(i), phase, prompt, tokenizer) for i in range(6)]
    inputs, mask, answers = _answer_batch(texts, tokenizer)
    for text, row, keep, answer in zip(texts, inputs, mask, answers):
        letter = text[text.rindex("<answer>") + len("<answer>")]
        color = text[text.rindex("The colour is ") + len("The colour is "):].split(".")[0]
        options = text[text.index("\nA. ") + 1:].split("\n")[:4]
        assert options[OPTION_LETTERS.index(letter)].endswith(f". {color}")
        assert tokenizer.decode([int(answer)]).endswith(letter)  # ">B": the letter with <answer>'s ">"
        prefix = tokenizer.decode([int(t) for t, k in zip(row, keep) if k])
        assert prefix.endswith("<answer") and letter not in prefix[prefix.rindex("colour is"):]
        if phase == "chat":
            assert prefix.startswith("<|im_start|>system\n" + prompt.system)


def test_teach_reading_trains_the_answer_token_and_saves_in_place(tiny_model_dir: Path, tmp_path: Path) -> None:
    from vt_ray.trainer.reading import teach_reading

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = (model / "model.safetensors").read_bytes()
    prompt = learning_recipe(LearningSpec(out=tmp_path)).prompt
    result = teach_reading(model, prompt, seed=0, batch_size=8, max_steps=(6, 2), check_every=2, held_out=8,
                           log=lambda _: None)
    assert result.steps == {"short": 6, "chat": 2} or result.steps["short"] < 6  # stops early only at target
    losses = [loss for phase, _, loss, _ in result.history if phase == "short"]
    assert losses[-1] < losses[0]  # 7-ish (random) falls as the answer token's distribution is learned
    assert not result.reads  # a few steps do not teach the look-up
    assert (model / "model.safetensors").read_bytes() != before


def test_sft_reads_its_own_file_only_with_look_ups_or_withheld_answers(tmp_path: Path) -> None:
    assert LearningSpec(out=tmp_path).sft_file is None
    assert LearningSpec(out=tmp_path, base="reader").sft_file == tmp_path / "data" / "train_sft.jsonl"
    assert LearningSpec(out=tmp_path, sft_answers="withheld").sft_file == tmp_path / "data" / "train_sft.jsonl"


def test_the_base_is_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base must be one of"):
        check_spec(LearningSpec(out=tmp_path, base="pretrained"))
    with pytest.raises(ValueError, match="lookups"):
        check_spec(LearningSpec(out=tmp_path, base="reader", lookups=-1))
    with pytest.raises(ValueError, match="lookup_answer_weight"):
        check_spec(LearningSpec(out=tmp_path, base="reader", lookup_answer_weight=-1.0))
    with pytest.raises(ValueError, match="sft_answers must be one of"):
        check_spec(LearningSpec(out=tmp_path, sft_answers="withhold"))


def test_uniform_answers_give_every_task_trace_each_letter_once_at_a_quarter_weight(tmp_path: Path) -> None:
    """SFT fits every letter equally at the task's answer: no video carries a letter of its own."""
    from collections import Counter

    from vt_ray.data.learnable import LearnableTaskConfig, make_learnable_dataset
    from vt_ray.data.schema import ANSWER_WEIGHT

    make_learnable_dataset(tmp_path, LearnableTaskConfig(num_train=8, num_val=4, option_order="shuffled"))
    task = read_samples(tmp_path / "train.jsonl")
    samples = read_samples(write_sft_file(tmp_path, lookups=4, seed=0, answers="uniform", lookup_answer_weight=5.0))
    copies = [s for s in samples if s.source != "lookup"]
    assert len(copies) == 4 * len(task)
    for original in task:
        own = [s for s in copies if s.uid.split("~")[0] == original.uid]
        assert sorted(parse_trace(s.trace).answer for s in own) == ["A", "B", "C", "D"]
        head = original.trace[: original.trace.rindex("<answer>")]
        assert all(s.trace.startswith(head) and s.extra[ANSWER_WEIGHT] == 0.25 for s in own)
        assert {(s.answer, tuple(s.options)) for s in own} == {(original.answer, tuple(original.options))}
    assert Counter(s.extra.get(ANSWER_WEIGHT) for s in samples if s.source == "lookup") == {5.0: 4}
    with pytest.raises(ValueError, match="sft answers must be one of"):
        write_sft_file(tmp_path, lookups=0, seed=0, answers="none")


def test_a_withheld_answer_is_in_the_context_but_carries_no_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The task's traces in the reader's SFT file train everything but the answer; the look-ups train it, with
    the weight asked for."""
    import numpy as np
    from transformers import AutoProcessor

    from vt_ray.data.learnable import LearnableTaskConfig, make_learnable_dataset
    from vt_ray.data.schema import resolve_video_paths
    from vt_ray.learner.collate import collate
    from vt_ray.learner.sft_data import SftExampleBuilder, answer_loss_mask

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tokenizer = processor.tokenizer
    response = "<time>00:00-00:08</time> <answer>B</answer><|im_end|>"
    mask = answer_loss_mask(tokenizer, response)
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert len(mask) == len(ids) and mask.count(0) == 1
    assert tokenizer.decode([ids[mask.index(0)]]).endswith("B")
    assert answer_loss_mask(tokenizer, response, 3.0) == [3.0 if m == 0 else 1.0 for m in mask]

    make_learnable_dataset(tmp_path, LearnableTaskConfig(num_train=4, num_val=4, option_order="shuffled"))
    sft_file = write_sft_file(tmp_path, lookups=4, seed=0, answers="withheld", lookup_answer_weight=5.0)
    samples = resolve_video_paths(read_samples(sft_file), tmp_path)
    builder = SftExampleBuilder(learning_recipe(LearningSpec(out=tmp_path)), processor)
    examples = builder.build_many(samples)
    batch = collate(processor, examples)
    for i, (sample, example) in enumerate(zip(samples, examples)):
        trained = batch.response_mask[i].sum().item()
        # a task trace: its answer token weighs 0 (one less); a look-up's weighs 5 (four more)
        assert trained == len(example.response_ids) + (4 if sample.source == "lookup" else -1), sample.uid
    assert np.isclose(batch.response_mask.sum().item(), sum(len(e.response_ids) for e in examples) - 4 + 4 * 4)


def test_the_video_reading_stage_and_sft_only_overrides_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="video_lookups needs base 'reader'"):
        check_spec(LearningSpec(out=tmp_path, video_lookups=8))
    with pytest.raises(ValueError, match="video_lookup_epochs"):
        check_spec(LearningSpec(out=tmp_path, base="reader", video_lookups=8, video_lookup_epochs=0))
    with pytest.raises(Exception, match="learner.warmup_stepz"):
        check_spec(LearningSpec(out=tmp_path, sft_overrides=["learner.warmup_stepz=5"]))
    spec = LearningSpec(out=tmp_path, sft_overrides=["learner.warmup_steps=50"])
    assert check_spec(spec).learner.warmup_steps == 0  # GRPO's recipe keeps its own schedule


def test_the_video_reading_file_holds_only_look_ups_at_their_answer_weight(tmp_path: Path) -> None:
    from vt_ray.data.learnable import write_lookups_file
    from vt_ray.data.schema import ANSWER_WEIGHT

    lookups = lookup_samples(8, "video-0", "videos/dark.mp4")
    samples = read_samples(write_lookups_file(tmp_path / "lookups_sft.jsonl", lookups, 16.0))
    assert [s.uid for s in samples] == [s.uid for s in lookups]
    assert all(s.source == "lookup" and s.extra[ANSWER_WEIGHT] == 16.0 for s in samples)
    assert all(parse_trace(s.trace).answer == s.answer for s in samples)
