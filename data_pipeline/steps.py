"""The curation steps on one row: bidirectional completion, then reverse-curation trace + hindsight verification.

A row is a JSON-able dict (see :func:`new_row`) that carries the source record, the sample being built, the
per-step outcome and the per-step cost. Each step either fills the row in or marks it ``dropped`` with a
reason; nothing here raises for a bad row (Ray Data would otherwise fail the whole block).

Steps and their model calls (one endpoint each, see vt_ray.config.curate):

* ``question``: caption-only records. The reasoning LLM reads the segment captions and returns JSON with a
  multi-hop multiple-choice question; the cited segments become the evidence windows and captions.
* ``caption``: QA-only records. For every key window the VLM writes an answer-conditioned caption from the
  window's frames (or from the window times only, when ``caption_frames`` is 0).
* ``trace``: the LLM writes a ``<time>/<caption>/<think>`` trace ending in ``<answer>`` from the answer, windows
  and captions. It must parse without violations, have a complete triple and give the gold answer.
* ``verify``: the verifier sees only the trace's ``<time>`` and ``<caption>`` contents and the question
  (+options) and must reach the gold answer (vt_ray.rewards accuracy functions). A trace that fails either
  check is regenerated (a new attempt, so a new request) up to ``max_regenerations`` times, then dropped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.client import ChatClient, ChatResult, EndpointError
from data_pipeline.prompts import load_template
from vt_ray.config.curate import STEPS, CurateConfig
from vt_ray.data.schema import OPTION_LETTERS, VideoSample
from vt_ray.rewards.accuracy import accuracy_reward, extract_choice
from vt_ray.rewards.config import RewardConfig
from vt_ray.rewards.target import RewardTarget
from vt_ray.trace import format_window, parse_trace

_VERIFY_REWARD = RewardConfig(answer_fallback=True)  # a verifier that forgets the tags but says "Answer: B" passes
_TRACE_REWARD = RewardConfig()  # the trace itself must use <answer>


@dataclass
class Clients:
    question: ChatClient
    caption: ChatClient
    trace: ChatClient
    verify: ChatClient


# --- row bookkeeping ------------------------------------------------------------------------------------------


def new_row(record: dict[str, Any], video_root: str) -> dict[str, Any]:
    video = record["video"]
    if video_root and not Path(video).is_absolute():  # absolute: outputs live elsewhere, workers on other nodes
        video = os.path.abspath(Path(video_root) / video)
    return {"uid": f"{record['source']}/{record['uid']}", "source": record["source"], "record": record,
            "video": video, "status": "ok", "reason": None, "dropped_at": None, "sample": None, "trace": None,
            "completion": None, "steps": {}, "usage": {}, "prompts": {}}


def _step(row: dict[str, Any], step: str) -> dict[str, Any]:
    return row["steps"].setdefault(step, {"attempts": 0, "outcome": None, "failures": []})


def _usage(row: dict[str, Any], step: str) -> dict[str, int]:
    return row["usage"].setdefault(step, {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                          "cached_prompt_tokens": 0, "cached_completion_tokens": 0, "retries": 0,
                                          "rate_limited": 0, "failed_calls": 0})


def _account(row: dict[str, Any], step: str, result: ChatResult) -> None:
    u = _usage(row, step)
    if result.cached:
        u["cache_hits"] += 1
        u["cached_prompt_tokens"] += result.prompt_tokens
        u["cached_completion_tokens"] += result.completion_tokens
    else:
        u["calls"] += 1
        u["prompt_tokens"] += result.prompt_tokens
        u["completion_tokens"] += result.completion_tokens
        u["retries"] += result.retries
        u["rate_limited"] += result.rate_limited


def _drop(row: dict[str, Any], step: str, reason: str) -> dict[str, Any]:
    _step(row, step)["outcome"] = "dropped"
    row.update(status="dropped", reason=reason, dropped_at=step)
    return row


def _ask(row: dict[str, Any], step: str, client: ChatClient, messages: list[dict[str, Any]], attempt: int,
         template: str) -> str:
    _step(row, step)["attempts"] += 1
    row["prompts"][step] = template
    try:
        result = client.chat(messages, attempt=attempt, template=template)
    except EndpointError as err:  # no answer, but the attempts happened: the cost report shows them
        u = _usage(row, step)
        u["failed_calls"] += 1
        u["retries"] += max(err.attempts - 1, 0)
        u["rate_limited"] += err.rate_limited
        raise
    _account(row, step, result)
    return result.content


# --- prompt pieces --------------------------------------------------------------------------------------------


def options_block(options: list[str]) -> str:
    return "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))


def answer_display(sample: dict[str, Any]) -> str:
    if sample["answer_type"] == "multiple_choice":
        return f"{sample['answer']}. {sample['options'][OPTION_LETTERS.index(sample['answer'])]}"
    return sample["answer"]


def answer_format(sample: dict[str, Any]) -> str:
    return {"multiple_choice": "single option letter", "numeric": "number"}.get(sample["answer_type"], "short answer")


def _strip_fences(text: str) -> str:
    text = text.strip()
    m = re.match(r"^```[\w-]*\n(.*?)\n?```$", text, re.DOTALL)
    return m.group(1).strip() if m else text


# --- completion -----------------------------------------------------------------------------------------------


def parse_question(content: str, n_segments: int, cfg: CurateConfig) -> tuple[dict[str, Any] | None, str]:
    """The question JSON, validated: (fields, "") or (None, reason)."""
    text = _strip_fences(content)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None, "no_json"
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None, "bad_json"
    if not isinstance(data, dict):
        return None, "bad_json"
    question, options, segments = data.get("question"), data.get("options"), data.get("segments")
    if not isinstance(question, str) or not question.strip():
        return None, "no_question"
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        return None, "bad_options"
    options = [o.strip() for o in options]
    if not cfg.min_options <= len(options) <= cfg.max_options or len(set(options)) != len(options):
        return None, "bad_option_count"
    letter = extract_choice(str(data.get("answer", "")), options)
    if letter is None:
        return None, "bad_answer"
    if not isinstance(segments, list) or not all(isinstance(s, int) and 0 <= s < n_segments for s in segments):
        return None, "bad_segments"
    if len(set(segments)) < cfg.min_hops:
        return None, "not_multi_hop"
    return {"question": question.strip(), "options": options, "answer": letter, "segments": sorted(set(segments))}, ""


def synthesise_question(row: dict[str, Any], clients: Clients, cfg: CurateConfig) -> dict[str, Any]:
    rec = row["record"]
    segs = rec["segments"]
    tmpl = load_template("question", cfg.prompt_version)
    lines = "\n".join(f"[{i}] {format_window((s['start'], s['end']))} ({s['start']:.1f}-{s['end']:.1f} s): "
                      f"{s['caption']}" for i, s in enumerate(segs))
    duration = f"{rec['duration']:.1f} s" if rec.get("duration") else "unknown"
    messages = tmpl.messages(duration=duration, segments=lines, min_hops=cfg.min_hops,
                             min_options=cfg.min_options, max_options=cfg.max_options)
    for attempt in range(1 + cfg.max_parse_retries):
        parsed, why = parse_question(_ask(row, "question", clients.question, messages, attempt, tmpl.id),
                                     len(segs), cfg)
        if parsed is not None:
            chosen = [segs[i] for i in parsed["segments"]]
            row["sample"] = {"question": parsed["question"], "options": parsed["options"],
                             "answer": parsed["answer"], "answer_type": "multiple_choice",
                             "windows": [[s["start"], s["end"]] for s in chosen],
                             "captions": [s["caption"] for s in chosen]}
            _step(row, "question")["outcome"] = "ok"
            return row
        _step(row, "question")["failures"].append(why)
    return _drop(row, "question", f"question_unparseable:{why}")


def qa_sample(rec: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The record's own question/answer in the training schema (answer letter for multiple choice)."""
    options = [str(o) for o in rec.get("options") or []]
    answer_type = rec.get("answer_type") or "multiple_choice"
    answer = str(rec.get("answer") or "").strip()
    if answer_type == "multiple_choice":
        answer = extract_choice(answer, options) or ""
        if not options or not answer:
            return None, "bad_answer"
    elif not answer:
        return None, "bad_answer"
    return {"question": rec["question"], "options": options, "answer": answer, "answer_type": answer_type,
            "windows": [], "captions": []}, ""


def caption_windows(row: dict[str, Any], clients: Clients, cfg: CurateConfig) -> dict[str, Any]:
    rec, sample = row["record"], row["sample"]
    windows = [[float(w[0]), float(w[1])] for w in rec.get("windows") or []]
    if not windows and rec.get("duration"):
        windows = [[0.0, float(rec["duration"])]]  # no gold window: the whole video is the evidence
    if not windows:
        return _drop(row, "caption", "no_windows")
    frames: list[list[str]] = [[] for _ in windows]
    if cfg.caption_frames > 0:
        from data_pipeline.frames import window_frames
        from vt_ray.video.errors import VideoError

        try:
            frames = window_frames(row["video"], windows, cfg.caption_frames, cfg.caption_decode_frames,
                                   cfg.jpeg_quality)
        except VideoError as err:
            return _drop(row, "caption", f"video_error:{type(err).__name__}")
    tmpl = load_template("caption", cfg.prompt_version)
    captions = []
    for window, urls in zip(windows, frames, strict=True):
        note = (f"The {len(urls)} attached frames are taken from this window, in order." if urls
                else "No frames are attached; rely on the question and answer.")
        messages = tmpl.messages(question=sample["question"], options=options_block(sample["options"]),
                                 answer=answer_display(sample), window=format_window((window[0], window[1])),
                                 frames_note=note)
        if urls:
            messages[1]["content"] = [{"type": "text", "text": messages[1]["content"]},
                                      *({"type": "image_url", "image_url": {"url": u}} for u in urls)]
        for attempt in range(1 + cfg.max_parse_retries):
            text = _strip_fences(_ask(row, "caption", clients.caption, messages, attempt, tmpl.id))
            if text:
                captions.append(" ".join(text.split()))
                break
            _step(row, "caption")["failures"].append("empty_caption")
        else:
            return _drop(row, "caption", "caption_empty")
    sample.update(windows=windows, captions=captions)
    _step(row, "caption")["outcome"] = "ok"
    return row


def complete(row: dict[str, Any], clients: Clients, cfg: CurateConfig) -> dict[str, Any]:
    """Bidirectional completion: caption-only -> question, QA-only -> captions, both -> as is."""
    rec = row["record"]
    has_captions = bool(rec.get("segments"))
    has_qa = bool(rec.get("question")) and rec.get("answer") not in (None, "")
    try:
        if has_qa:
            sample, why = qa_sample(rec)
            if sample is None:
                return _drop(row, "input", why)
            row["sample"] = sample
            if has_captions:  # both halves present: the segments are the evidence
                row["completion"] = "none"
                sample.update(windows=[[s["start"], s["end"]] for s in rec["segments"]],
                              captions=[s["caption"] for s in rec["segments"]])
                return row
            row["completion"] = "caption"
            return caption_windows(row, clients, cfg)
        if has_captions:
            row["completion"] = "question"
            if len(rec["segments"]) < cfg.min_hops:  # no multi-hop question possible: do not pay for one
                return _drop(row, "question", "too_few_segments")
            return synthesise_question(row, clients, cfg)
        return _drop(row, "input", "no_qa_no_captions")
    except EndpointError as err:
        step = "question" if row["completion"] == "question" else "caption"
        return _drop(row, step, f"endpoint_error:{err}")


# --- trace + hindsight verification ---------------------------------------------------------------------------


def check_trace(trace: str, sample: dict[str, Any]) -> str:
    """"" when the trace is usable as an SFT target, else the reason."""
    parsed = parse_trace(trace)
    if parsed.violations:
        return "trace_format:" + ",".join(sorted(set(parsed.violations)))
    if parsed.complete_triples() < 1:
        return "trace_no_triple"
    if accuracy_reward(parsed, trace, target(sample), _TRACE_REWARD) < 1.0:
        return "trace_wrong_answer"
    return ""


def target(sample: dict[str, Any]) -> RewardTarget:
    return RewardTarget(answer=sample["answer"], answer_type=sample["answer_type"], options=tuple(sample["options"]))


def observations(trace: str) -> str:
    """Only the <time> and <caption> contents of a trace, in order: all the verifier may see."""
    lines: list[str] = []
    for step in parse_trace(trace).steps:
        if step.kind == "time":
            lines.append(f"- [{step.text}]")
        elif step.kind == "caption":
            lines.append(f"{lines.pop()} {step.text}" if lines and lines[-1].endswith("]") else f"- {step.text}")
    return "\n".join(lines)


def verify(row: dict[str, Any], trace: str, clients: Clients, cfg: CurateConfig, attempt: int) -> bool:
    sample = row["sample"]
    tmpl = load_template("verify", cfg.prompt_version)
    messages = tmpl.messages(observations=observations(trace), question=sample["question"],
                             options=options_block(sample["options"]), answer_format=answer_format(sample))
    reply = _ask(row, "verify", clients.verify, messages, attempt, tmpl.id)
    return accuracy_reward(parse_trace(reply), reply, target(sample), _VERIFY_REWARD) >= 1.0


def curate_trace(row: dict[str, Any], clients: Clients, cfg: CurateConfig) -> dict[str, Any]:
    """Reverse curation + hindsight verification, regenerating failed traces; builds the output sample."""
    if row["status"] != "ok":
        return row
    sample = row["sample"]
    tmpl = load_template("trace", cfg.prompt_version)
    evidence = "\n".join(f"- {format_window((w[0], w[1]))} | {c}" for w, c in zip(sample["windows"],
                                                                                   sample["captions"], strict=True))
    messages = tmpl.messages(question=sample["question"], options=options_block(sample["options"]),
                             answer=answer_display(sample), evidence=evidence,
                             answer_format=sample["answer"] if sample["answer_type"] == "multiple_choice"
                             else answer_format(sample))
    reason, current = "", "trace"
    try:
        for attempt in range(1 + cfg.max_regenerations):
            current = "trace"
            trace = _strip_fences(_ask(row, "trace", clients.trace, messages, attempt, tmpl.id))
            reason = check_trace(trace, sample)
            if reason:
                _step(row, "trace")["failures"].append(reason)
                continue
            current = "verify"
            if verify(row, trace, clients, cfg, attempt):
                _step(row, "trace")["outcome"] = _step(row, "verify")["outcome"] = "ok"
                row["trace"] = trace
                return finish(row)
            reason = "verify_failed"
            _step(row, "verify")["failures"].append(reason)
    except EndpointError as err:
        return _drop(row, current, f"endpoint_error:{err}")
    step = "verify" if reason == "verify_failed" else "trace"
    return _drop(row, step, f"{reason}:after_{cfg.max_regenerations}_regenerations")


def finish(row: dict[str, Any]) -> dict[str, Any]:
    """The SFT sample (with trace), validated against the training schema; an invalid one drops the row."""
    rec, s = row["record"], row["sample"]
    try:
        sample = VideoSample(uid=row["uid"], video=row["video"], question=s["question"], answer=s["answer"],
                             options=s["options"], answer_type=s["answer_type"], duration=rec.get("duration"),
                             windows=s["windows"], captions=s["captions"], trace=row["trace"], source=row["source"],
                             category=rec.get("category") or "",
                             extra={**(rec.get("extra") or {}), "completion": row["completion"],
                                    "prompts": dict(row["prompts"]),
                                    "trace_attempts": row["steps"]["trace"]["attempts"]})
    except ValueError as err:
        return _drop(row, "output", f"invalid_sample:{err}")
    row["output"] = sample.to_json()
    return row


__all__ = ["STEPS", "Clients", "complete", "curate_trace", "new_row"]
