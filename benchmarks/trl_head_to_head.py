"""vt_ray (sync, one_step_off, async) against TRL's ``GRPOTrainer``, same model, prompts, G, lengths and reward.

    .venv/bin/python -m benchmarks.trl_head_to_head --tokens 64 256 --repeats 3

TRL is never a dependency of the project: the first run makes a throwaway virtual environment (``--trl-env``,
default ``OUT/trl_env``) that holds only TRL and accelerate, pinned, and sees this environment's torch,
transformers and vt_ray through a .pth file, so both sides run the very same torch and model code; a
constraints file of this environment's versions keeps pip from replacing any of them.

Settings (issue 24): the tiny random Qwen2.5-VL (``vt_ray make-tiny-model``), about 32 training prompts, G = 4,
4 prompts per step, micro-batch 4, lr 1e-4, KL 0.04, float32, ``--steps`` steps, exactly ``--tokens`` generated
tokens per response on both sides (vt_ray: ``rollout.min_tokens`` = ``max_tokens`` + ``ignore_eos``; TRL:
``min_new_tokens`` = ``max_completion_length``). vt_ray gets 8 video frames, TRL 4 of them as images (its VLM
path takes images): 64 visual tokens per prompt on both. vt_ray runs its vLLM engine and 2 FSDP2 learner ranks
on an embedded Ray cluster; TRL one process (transformers ``generate``, torch's 2 threads).

Runs interleave the systems (rotated per repeat: a shared machine's load drifts). Per run: the median step time
over steps after ``--skip-steps``, responses/s and generated tokens/s, the rollout (generation) seconds and the
rest of the step, the whole command's wall time (start-up and shut-down included) and the peak PSS of its whole
process tree sampled every 0.5 s, plus vt_ray's own per-role peaks (memory.json). Each figure is the median over
repeats. Writes ``OUT/trl_head_to_head.json`` and prints a table with the ratios to TRL. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.async_modes import MODES, ensure_inputs, step_rows, summarize, train_command, write_report
from vt_ray.common.memory import gib, read_tree

ROOT = Path(__file__).resolve().parents[1]
TRL_VERSION = "1.16.0"
ACCELERATE_VERSION = "1.16.0"
SYSTEMS = (*MODES, "trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trl_head_to_head", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="vt_ray recipe overrides for every vt_ray run")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256], help="generated tokens per response")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-steps", type=int, default=2, help="steps left out of the medians (warm-up)")
    p.add_argument("--out", default="outputs/bench/trl_head_to_head")
    p.add_argument("--trl-env", default=None, help="the throwaway TRL environment (default OUT/trl_env)")
    p.add_argument("--trl-version", default=TRL_VERSION)
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the uncounted 2-step run of each system first (the first vLLM start on a machine "
                        "compiles and caches kernels, the first TRL start fills the page cache)")
    return p.parse_args(argv)


def pinned_distributions() -> list[str]:
    """``name==version`` of every distribution this interpreter sees: the throwaway environment's constraints."""
    import importlib.metadata as md

    pins = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def trl_environment(env: Path, version: str) -> Path:
    """The Python of a venv holding TRL ``version`` and accelerate only, seeing this environment through a .pth."""
    python = env / "bin" / "python"
    probe = [str(python), "-c", "import trl, accelerate; print(trl.__version__)"]
    if python.is_file():
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == version:
            return python
    print(f"[trl_head_to_head] making the throwaway TRL {version} environment in {env}", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(env)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # appended after the venv's own site-packages: TRL and accelerate come from the venv, everything else from here
    (Path(site) / "vt_ray_project.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{ROOT}\n")
    constraints = env / "constraints.txt"
    constraints.write_text("\n".join(p for p in pinned_distributions() if not p.lower().startswith("vt-ray")) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(constraints),
                    f"trl=={version}", f"accelerate=={ACCELERATE_VERSION}"], check=True)
    subprocess.run(probe, check=True, capture_output=True)
    return python


class TreePeak:
    """Peak PSS of a process and all its descendants, sampled by a thread (the kernel keeps no PSS peak)."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(m.pss for m in read_tree(self.pid)))
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return gib(self.peak)


def run_sampled(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` from the project root with its output in ``log``; wall seconds and peak tree PSS (GiB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        peak = TreePeak(proc.pid)
        code = proc.wait()
        wall = time.perf_counter() - started
        peak_gib = peak.stop()
    if code != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({code}); its output: {log}\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_pss_gib": peak_gib}


def trl_figures(side: dict[str, Any], skip: int) -> dict[str, float]:
    """Step figures of a TRL side run, in the same names as vt_ray's (``async_modes.summarize``)."""
    keep = [i for i in range(len(side["step_s"])) if i >= skip] or list(range(len(side["step_s"])))

    def med(key: str) -> float:
        return statistics.median(side[key][i] for i in keep)

    step, rollout, length = med("step_s"), med("generate_s"), med("completion_len")
    responses = side["responses_per_step"]
    return {"step_s": step, "responses_per_s": responses / step, "gen_tok_per_s": responses * length / step,
            "rollout_s": rollout, "rest_s": step - rollout, "response_len": length,
            "startup_s": side["startup_s"]}


def vt_ray_figures(rows: list[dict[str, Any]], run_dir: Path, skip: int) -> dict[str, Any]:
    figures = summarize(rows, skip)
    memory = json.loads((run_dir / "memory.json").read_text())
    phases = json.loads((run_dir / "phases.json").read_text())
    return {**figures, "rest_s": figures["step_s"] - figures["rollout_s"],
            "role_peak_pss_gib": {role: r["peak_pss_gib"] for role, r in memory["roles"].items()},
            "phases": phases}


def run_system(system: str, tokens: int, repeat: int, args: argparse.Namespace, inputs: tuple[Path, Path],
               trl_python: Path | None, out: Path) -> dict[str, Any]:
    model, data = inputs
    name = f"{system}_{tokens}_r{repeat}"
    if system == "trl":
        assert trl_python is not None
        result = out / "trl" / f"{name}.json"
        cmd = [str(trl_python), "-W", "ignore", str(ROOT / "benchmarks" / "trl_grpo_side.py"),
               "--recipe", str(ROOT / "recipes" / "tiny_cpu.yaml"), "--model", str(model),
               "--train-file", str(data / "train.jsonl"), "--tokens", str(tokens), "--steps", str(args.steps),
               "--out", str(result), "--workdir", str(out / "trl" / "work")]
        measured = run_sampled(cmd, out / "logs" / f"{name}.log")
        side = json.loads(result.read_text())
        return {**measured, **trl_figures(side, args.skip_steps), "steps": side}
    fixed_length = [f"rollout.min_tokens={tokens}", "rollout.ignore_eos=true"]
    cmd = train_command(model, data, out, name, system, tokens, args.steps, [*fixed_length, *args.overrides])
    measured = run_sampled(cmd, out / "logs" / f"{name}.log")
    rows = step_rows(out, name)
    return {**measured, **vt_ray_figures(rows, out / "runs" / name, args.skip_steps), "steps": rows}


def table(results: dict[str, dict[str, Any]]) -> str:
    header = ("| tokens | system | s/step | responses/s | gen tok/s | vs TRL | rollout s | rest of step s | "
              "whole run s | run vs TRL | peak PSS GiB (tree) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results.values():
        trl = results.get(f"trl_{r['tokens']}")
        speed = r["responses_per_s"] / trl["responses_per_s"] if trl else float("nan")
        run = r["wall_s"] / trl["wall_s"] if trl else float("nan")
        lines.append(f"| {r['tokens']} | {r['system']} | {r['step_s']:.2f} | {r['responses_per_s']:.2f} | "
                     f"{r['gen_tok_per_s']:.0f} | {speed:.2f}x | {r['rollout_s']:.2f} | {r['rest_s']:.2f} | "
                     f"{r['wall_s']:.0f} | {run:.2f}x | {r['peak_pss_gib']:.2f} |")
    return "\n".join(lines)


def medians(name: str, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    system, tokens = name.rsplit("_", 1)
    numeric = [k for k, v in repeats[0].items() if isinstance(v, (int, float))]
    figures: dict[str, Any] = {k: statistics.median(r[k] for r in repeats) for k in numeric}
    if "role_peak_pss_gib" in repeats[0]:
        roles = repeats[0]["role_peak_pss_gib"]
        figures["role_peak_pss_gib"] = {role: statistics.median(r["role_peak_pss_gib"].get(role, 0.0) for r in repeats)
                                        for role in roles}
    return {"system": system, "tokens": int(tokens), **figures, "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    inputs = ensure_inputs(out)
    trl_python = (trl_environment(Path(args.trl_env or out / "trl_env").resolve(), args.trl_version)
                  if "trl" in args.systems else None)
    runs: dict[str, list[dict[str, Any]]] = {}
    if args.warmup:
        warm = argparse.Namespace(**{**vars(args), "steps": 2})
        for system in args.systems:
            print(f"[trl_head_to_head] warm-up run of {system} (not counted)", flush=True)
            run_system(system, min(args.tokens), -1, warm, inputs, trl_python, out)
    for tokens in args.tokens:
        for repeat in range(args.repeats):
            shift = repeat % len(args.systems)
            for system in args.systems[shift:] + args.systems[:shift]:
                print(f"[trl_head_to_head] {system} at {tokens} tokens, run {repeat + 1}/{args.repeats}", flush=True)
                run = run_system(system, tokens, repeat, args, inputs, trl_python, out)
                print(f"[trl_head_to_head]   {run['step_s']:.2f} s/step, {run['wall_s']:.0f} s whole run, "
                      f"peak {run['peak_pss_gib']:.2f} GiB", flush=True)
                runs.setdefault(f"{system}_{tokens}", []).append(run)
    results = {name: medians(name, repeats) for name, repeats in runs.items()}
    text = table(results)
    for name, r in results.items():
        if "role_peak_pss_gib" in r:
            roles = ", ".join(f"{role} {v:.2f}" for role, v in r["role_peak_pss_gib"].items())
            text += f"\n{name} peak PSS by role (GiB): {roles}"
    print(text, flush=True)
    settings = {"steps": args.steps, "skip_steps": args.skip_steps, "repeats": args.repeats,
                "overrides": args.overrides, "trl": args.trl_version, "accelerate": ACCELERATE_VERSION}
    write_report(out / "trl_head_to_head.json", settings, text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
