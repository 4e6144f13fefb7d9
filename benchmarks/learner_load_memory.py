"""Learner load memory: peak host RSS of each rank during ``LearnerWorker.setup`` with ``learner.load_on_rank0``
on (meta-device build, rank 0 reads and broadcasts) and off (every rank loads the full checkpoint, then shards).

Each mode runs in fresh processes (one per rank, gloo, torch.multiprocessing), so the figures are that setup's
alone. Peak RSS is the kernel's high-water mark (VmHWM) reset just before setup via /proc/self/clear_refs; where
that is not possible, ``resource.getrusage`` ru_maxrss (the peak since process start) is used instead. Prints
figures, asserts nothing.

Run: ``.venv/bin/python -m benchmarks.learner_load_memory [--size tiny|small|medium] [--world 2]
[--param-dtype bfloat16]``. The tiny model (3 MB) is too small to show anything next to the ~0.5 GB of
imported libraries; ``medium`` (~140M parameters, 0.56 GB in float32) is built here through the
make-tiny-model code path.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

MODES = {"load_on_rank0": True, "every_rank": False}


def _medium_size():
    from vt_ray.models.tiny import TinySize

    # head_dim 64, mrope section sums to 32; vision head_dim 64.
    return TinySize(hidden=1024, intermediate=2816, layers=12, heads=16, kv_heads=4, mrope_section=(8, 12, 12),
                    vision_depth=4, vision_hidden=512, vision_heads=8)


def make_model(out: Path, size: str, checkpoint_dtype: str = "float32") -> Path:
    """A random Qwen2.5-VL of ``size`` (make-tiny-model's code path), its weights saved in ``checkpoint_dtype``."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vt_ray.models import tiny

    if size == "medium" and "medium" not in tiny.SIZES:
        tiny.SIZES["medium"] = _medium_size()
    out = tiny.make_tiny_model(out, seed=0, size=size)
    if checkpoint_dtype != "float32":
        dtype = getattr(torch, checkpoint_dtype)
        model = AutoModelForImageTextToText.from_pretrained(out, dtype=dtype)
        for f in out.glob("*.safetensors"):
            f.unlink()
        model.save_pretrained(out)
    return out


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


class _AnonPeak:
    """Peak RssAnon (private memory: tensors, not the checkpoint's page cache) sampled every ``period`` s."""

    def __init__(self, period: float = 0.002) -> None:
        import threading

        self.peak_kb, self.period = _status_kb("RssAnon") or 0, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon") or 0)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak_kb, _status_kb("RssAnon") or 0)


def _rank_main(rank: int, world: int, port: int, model_dir: str, overrides: list[str], out: str) -> None:
    import torch

    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.worker import LearnerWorker

    torch.set_num_threads(1)
    # What setup would import lazily, imported first so that "RSS before" holds the libraries.
    import torch.distributed.checkpoint.state_dict
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl  # noqa: F401
    from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401

    cfg = load_config(None, [f"model.path={model_dir}", "learner.reference=sharded", *overrides])
    worker = LearnerWorker(LearnerRoleConfig.of(cfg), rank, world)
    before_kb, anon_before_kb = _status_kb("VmRSS") or 0, _status_kb("RssAnon") or 0
    hwm = _reset_peak()
    anon = _AnonPeak()
    start = time.perf_counter()
    params = worker.setup("127.0.0.1", port, total_steps=1)
    seconds = time.perf_counter() - start
    anon_peak_kb = anon.stop()
    peak_kb = _status_kb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    after_kb = _status_kb("VmRSS") or 0
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "before_mb": before_kb / 1024, "peak_mb": peak_kb / 1024, "after_mb": after_kb / 1024,
        "anon_before_mb": anon_before_kb / 1024, "anon_peak_mb": anon_peak_kb / 1024,
        "seconds": seconds, "params": params, "peak_source": "VmHWM" if hwm else "ru_maxrss",
    }))
    worker.shutdown()


def run_mode(model_dir: Path, world: int, overrides: list[str]) -> list[dict]:
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, free_port(), str(model_dir), overrides, tmp), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=("tiny", "small", "medium"))
    parser.add_argument("--world", type=int, default=2, help="learner ranks (processes)")
    parser.add_argument("--param-dtype", default="bfloat16", choices=("float32", "bfloat16"),
                        help="learner.param_dtype, the reference's dtype (the policy is always float32)")
    parser.add_argument("--checkpoint-dtype", default="bfloat16", choices=("float32", "bfloat16"),
                        help="dtype of the saved weights (released Qwen2.5-VL: bfloat16); float32 weights load "
                             "as float32 without a copy (mmap), which hides the policy's cost")
    parser.add_argument("--model-dir", default="", help="use this model instead of building one")
    args, _ = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (Path(args.model_dir) if args.model_dir
                     else make_model(Path(tmp) / args.size, args.size, args.checkpoint_dtype))
        weights_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20
        print(f"model: {args.size} ({weights_mb:.0f} MB of weights on disk), {args.world} gloo ranks, "
              f"policy float32 + reference {args.param_dtype}", flush=True)
        print("peak RSS includes the checkpoint's page cache mapped by the process (shared between ranks); "
              "anon = private memory (sampled every 2 ms). MB above the value before setup.", flush=True)
        print(f"{'mode':<14} {'rank':>4} {'RSS before':>11} {'peak RSS':>9} {'peak anon':>10} "
              f"{'RSS after':>10} {'setup s':>8}", flush=True)
        for mode, on_rank0 in MODES.items():
            overrides = [f"learner.load_on_rank0={on_rank0}", f"learner.param_dtype={args.param_dtype}"]
            for rank, r in enumerate(run_mode(model_dir, args.world, overrides)):
                print(f"{mode:<14} {rank:>4} {r['before_mb']:>8.0f} MB {r['peak_mb'] - r['before_mb']:>+6.0f} MB "
                      f"{r['anon_peak_mb'] - r['anon_before_mb']:>+7.0f} MB {r['after_mb'] - r['before_mb']:>+7.0f} MB "
                      f"{r['seconds']:>8.1f}"
                      + ("" if r["peak_source"] == "VmHWM" else "  (peak RSS: ru_maxrss since start)"), flush=True)


if __name__ == "__main__":
    main()
