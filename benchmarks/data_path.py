"""Pixels through the driver against pixels by reference, and the step's batch put per call against once per
step, on the same Ray roles in one run (issue 17, items 2 and 3).

* ``driver`` (``trainer.pixel_path: driver``): rollout workers return decoded frames, the driver runs the
  processor and puts float32 ``pixel_values_videos``, one copy per response, into the learners' shards.
* ``per_call`` (pixels by reference, the earlier learner calls): every learner call puts each rank's shard
  again (the old and reference log-prob passes share one put, each mini-batch has its own), with the old and
  reference log-probs the driver got back; mini-batches are contiguous slices of the whole batch.
* ``rollout`` (the default): each rollout worker encodes its prompts once (uint8 patches) as returns of its
  own call, which the driver owns and never fetches; learners fetch and normalise them (docs/data-path.md).
  Each rank's shard is put once per step and cached by the rank (``LearnerGroup.open_step``); the calls send rows,
  advantages and kept rows.

One GRPO trainer (tiny model, HF rollout engine: the data path does not depend on the engine; 2 FSDP learner
ranks, a reference model, 1 scorer), real ``train_step``s. Per frame count the roles start once (the rollout
workers' frame sampling is fixed at start); per G and repetition both paths run alternately, each step after
resetting the driver's peak RSS. Printed and written to JSON per step: step time, the driver's peak RSS above
its resting RSS, the object store's peak and what is left in it 1 s after the step (Ray frees asynchronously;
growth over steps would be a leak), and what the driver sent the learners: its ``ray.put``s (count and the
store's size of each object) and the pickled arguments of the learner calls (object references not counted).

Run: ``.venv/bin/python -m benchmarks.data_path`` (defaults: 224 x 224 synthetic videos, frames 8 and 16, G 4
and 8, 4 prompts per step, 2 repetitions: a few minutes on 2 cores). ``--frames 8 --groups 4 --reps 1`` is a
quick check. ``--modes rollout`` measures the new path alone (the driver path's steps leave the driver's
allocator holding freed memory, which raises its resting RSS for the steps after them). ``--modes per_call
rollout --minibatches 1 2`` compares the learner sends (``trainer.mini_batch_size`` = responses / m).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import pickle
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.weight_sync import PlasmaPeak, _plasma_mib, read_peak, reset_peak

ROOT = Path(__file__).resolve().parents[1]
MODES = ("driver", "per_call", "rollout")
LEARNER_CALLS = {"compute_logprobs", "train_step", "cache_step", "step_logprobs", "step_train", "drop_steps"}


class PerCallStep:
    """The learner calls before the step was cached, for comparison (``per_call``): each call puts its shards
    (``LearnerGroup.submit_logprobs_passes``, ``LearnerGroup.train_step``), the driver's batch carries the
    log-probs back to the ranks, mini-batch ``k`` is the ``k``-th contiguous slice of the whole batch."""

    def __init__(self, group: Any, batch: Any) -> None:
        self.group, self.batch = group, batch

    def submit_logprobs(self, whiches: Sequence[str], keep: bool = True) -> Callable[[], dict[str, Any]]:
        pending = self.group.submit_logprobs_passes(self.batch, whiches)  # one put of the shards for all passes

        def wait() -> dict[str, Any]:
            out = pending()
            if keep:
                self.batch.old_logprobs, self.batch.ref_logprobs = out.get("policy"), out.get("reference")
            return out

        return wait

    def logprobs(self, whiches: Sequence[str], keep: bool = True) -> dict[str, Any]:
        return self.submit_logprobs(whiches, keep)()

    def train(self, part: int, parts: int, loss_name: str = "grpo", advantages: Any = None, keep: Any = None
              ) -> dict[str, float]:
        from dataclasses import replace

        batch = replace(self.batch, advantages=advantages,
                        response_mask=self.batch.response_mask * keep.float()[:, None])
        size = math.ceil(len(batch) / parts)
        return self.group.train_step(batch.chunks(size)[part], loss_name)

    def __enter__(self) -> PerCallStep:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class PerCallLearner:
    """The learner group as ``update_policy`` sees it, with :class:`PerCallStep` steps."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def open_step(self, batch: Any) -> PerCallStep:
        return PerCallStep(self.group, batch)


class _RefsOut(pickle.Pickler):
    """Pickles a call's arguments with object references as a token: their objects are counted as puts."""

    def persistent_id(self, obj: Any) -> str | None:
        import ray

        return "ref" if isinstance(obj, ray.ObjectRef) else None


def _pickled_bytes(value: Any) -> int:
    buf = io.BytesIO()
    _RefsOut(buf, protocol=5).dump(value)
    return buf.getbuffer().nbytes


@contextlib.contextmanager
def learner_sends() -> Iterator[dict[str, float]]:
    """Count, while the block runs, the driver's ``ray.put``s (number and the object store's size of each object)
    and the pickled arguments of the learner calls (``LEARNER_CALLS``)."""
    import ray
    from ray.actor import ActorMethod

    sent = {"puts": 0.0, "put_bytes": 0.0, "calls": 0.0, "call_arg_bytes": 0.0}
    put, remote = ray.put, ActorMethod.remote

    def counting_put(value: Any, *args: Any, **kwargs: Any) -> Any:
        ref = put(value, *args, **kwargs)
        sent["puts"] += 1
        sent["put_bytes"] += ray.experimental.get_object_locations([ref])[ref]["object_size"]
        return ref

    def counting_remote(method: Any, *args: Any, **kwargs: Any) -> Any:
        if method._method_name in LEARNER_CALLS:
            sent["calls"] += 1
            sent["call_arg_bytes"] += _pickled_bytes((args, kwargs))
        return remote(method, *args, **kwargs)

    ray.put, ActorMethod.remote = counting_put, counting_remote  # type: ignore[method-assign,assignment]
    try:
        yield sent
    finally:
        ray.put, ActorMethod.remote = put, remote  # type: ignore[method-assign]


def _set(trainer: Any, mode: str, group: int, minibatches: int) -> None:
    """The path, G and mini-batches of the next steps: the trainer's recipe (frozen) replaced; the roles keep
    theirs (no actor reads these settings)."""
    from dataclasses import replace

    from vt_ray.trainer import driver, update

    cfg = trainer.cfg
    size = cfg.trainer.prompts_per_step * group // minibatches if minibatches > 1 else 0
    tc = replace(cfg.trainer, pixel_path="driver" if mode == "driver" else "rollout", mini_batch_size=size)
    trainer.cfg = replace(cfg, trainer=tc, rollout=replace(cfg.rollout, n=group))
    trainer.tc = trainer.cfg.trainer
    def per_call_update(cfg: Any, processor: Any, learner: Any, data: Any) -> Any:
        return update.update_policy(cfg, processor, PerCallLearner(learner), data)

    driver.update_policy = per_call_update if mode == "per_call" else update.update_policy


def measure_frames(frames: int, args: argparse.Namespace, work: Path, model_dir: Path, data_dir: Path
                   ) -> list[dict[str, Any]]:
    """Every (G, mode, repetition) step on one set of roles started for ``frames`` frames per video."""
    from vt_ray.cluster.session import init_ray
    from vt_ray.config.loader import load_config
    from vt_ray.trainer.driver import GRPOTrainer

    pixels = args.size * args.size
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [
        f"model.path={model_dir}", f"data.train_file={data_dir / 'train.jsonl'}",
        f"data.val_file={data_dir / 'none.jsonl'}", f"run.output_dir={work / 'runs'}", f"run.name=f{frames}",
        "rollout.backend=hf", "rollout.max_tokens=16", "rollout.probe_every=0", "trainer.wandb_mode=disabled",
        f"trainer.prompts_per_step={args.prompts}", f"video.num_frames={frames}", f"video.max_frames={frames}",
        f"video.max_pixels={pixels}", "data.max_prompt_tokens=4096", "rollout.max_model_len=8192",
        "trainer.save_rollouts_every=0",
    ])
    cluster = init_ray(cfg)
    trainer = GRPOTrainer(cfg)
    rows: list[dict[str, Any]] = []
    try:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        trainer._load_data()
        trainer._start_roles()
        _set(trainer, "rollout", min(args.groups), 1)
        trainer.train_step()  # warm-up, untimed: first-call costs of every role
        for rep in range(args.reps):
            for g in args.groups:
                for minibatches in args.minibatches:
                    for mode in args.modes:
                        _set(trainer, mode, g, minibatches)
                        rows.append(_step(trainer, frames, g, minibatches, mode, rep))
    finally:
        trainer.shutdown()
        if cluster is not None:
            cluster.stop()
    return rows


def _step(trainer: Any, frames: int, g: int, minibatches: int, mode: str, rep: int) -> dict[str, Any]:
    """One measured training step."""
    rest = reset_peak()
    start = time.perf_counter()
    with PlasmaPeak() as plasma, learner_sends() as sent:
        metrics = trainer.train_step()
    step_s = time.perf_counter() - start
    time.sleep(1.0)  # Ray frees released objects asynchronously (borrowers report back)
    row = {
        "frames": frames, "group": g, "minibatches": minibatches, "mode": mode, "rep": rep,
        "step_s": step_s,
        "driver_peak_gib": (read_peak() - rest) / 2**30,
        "driver_rest_gib": rest / 2**30,
        "object_store_peak_mib": plasma.peak_mib,
        "object_store_added_mib": plasma.peak_mib - plasma.start_mib,
        "object_store_after_mib": _plasma_mib(),
        "logprobs_s": metrics.get("time/logprobs_s", 0.0),
        "update_s": metrics.get("time/update_s", 0.0),
        "responses": metrics["data/responses"],
        **sent,
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (frames, G, mini-batches, mode)."""
    out = []
    keys = ("step_s", "driver_peak_gib", "object_store_added_mib", "object_store_after_mib", "logprobs_s",
            "puts", "put_bytes", "calls", "call_arg_bytes")
    for frames, g, m in sorted({(r["frames"], r["group"], r["minibatches"]) for r in rows}):
        for mode in MODES:
            got = [r for r in rows if (r["frames"], r["group"], r["minibatches"], r["mode"]) == (frames, g, m, mode)]
            if got:
                out.append({"frames": frames, "group": g, "minibatches": m, "mode": mode,
                            **{k: statistics.median(r[k] for r in got) for k in keys}})
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| frames | G | mini-batches | path | step s | driver peak MiB | object store added MiB | "
             "left after step MiB | puts | put KiB | learner calls | call args KiB |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['frames']} | {s['group']} | {s['minibatches']} | {s['mode']} | {s['step_s']:.2f} | "
                     f"{s['driver_peak_gib'] * 1024:.0f} | {s['object_store_added_mib']:.0f} | "
                     f"{s['object_store_after_mib']:.0f} | {s['puts']:.0f} | {s['put_bytes'] / 1024:.0f} | "
                     f"{s['calls']:.0f} | {s['call_arg_bytes'] / 1024:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="synthetic video side (pixels) = video.max_pixels")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["driver", "rollout"],
                        help="one mode alone: the driver's resting RSS is not inflated by the other's steps")
    parser.add_argument("--minibatches", type=int, nargs="+", default=[1],
                        help="mini-batches per step (trainer.mini_batch_size = prompts x G / m)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs/bench/data_path")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/data-path/data_path.json")
    args = parser.parse_args(argv)

    from vt_ray.data.synthetic import VideoSpec, make_synthetic_dataset
    from vt_ray.models.tiny import make_tiny_model

    model_dir, data_dir = args.work / "model", args.work / f"data_{args.size}"
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, seed=0)
    if not (data_dir / "train.jsonl").exists():
        make_synthetic_dataset(data_dir, 12, seed=0, val_fraction=0.1, spec=VideoSpec(args.size, args.size))
    rows = [row for frames in args.frames for row in measure_frames(frames, args, args.work, model_dir, data_dir)]
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "summary": summary, "runs": rows}, indent=1) + "\n")
    print(table(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
