"""One-command check of the Megatron language model (and vision tower) against Hugging Face, on GPU or CPU (issue 20).

    .venv/bin/python tools/megatron_check.py --tp 2                      # tiny random model, built here
    .venv/bin/python tools/megatron_check.py --tp 4 --model DIR --dtype bfloat16 --impl transformer_engine
    .venv/bin/python tools/megatron_check.py --tp 2 --sequence-parallel    # megatron's sequence parallelism
    .venv/bin/python tools/megatron_check.py --tp 1 --cp 2                 # context parallelism
    .venv/bin/python tools/megatron_check.py --tp 2 --megatron-optimizer   # GPU only: megatron's DistributedOptimizer

Spawns ``--tp`` x ``--cp`` ranks (NCCL and one GPU each when CUDA is there, gloo on CPU otherwise), builds the
model with the chosen layer spec (``auto``: transformer-engine on GPU when installed), loads the checkpoint, and checks:
the HF -> Megatron -> HF round trip is exact (in the run's dtype), and per-token log-probs on random text with
text and with multimodal (video-like) positions match ``Qwen2_5_VLForConditionalGeneration``'s within
``--tol``; with ``--vision``, the vision tower in Megatron too (``learner.megatron.vision_impl: megatron``, same
spec and dtype): its ``visual.*`` round trip, and its features on a windowed video grid against the HF tower's
within ``--tol``; with ``--sequence-parallel``, the model built sequence parallel, the sequence split over the TP
ranks (the inputs are 63 tokens long, so the forward pads them); with ``--cp`` > 1, each sequence split over
the context-parallel ranks (megatron's load-balanced chunks; TE's CP attention on GPU, the all-gathered keys and
values of ``SDPACoreAttention`` on CPU), the inputs 63 tokens long too. Prints one line per check; exit status 1 on a
failure. On CPU it runs what tests/integration/learner/test_megatron_lm.py runs; the TE spec, NCCL and bf16 paths
are what it is for, and were not run on this project's CPU machines.

``--megatron-optimizer`` (GPU only: ``2 x --tp`` GPUs) checks ``learner.megatron.optimizer_impl: megatron``
(megatron-core's DDP + DistributedOptimizer, vt_ray/learner/megatron/megatron_optim.py) instead: the Megatron
learner at TP=``--tp`` x DP=2 with the Megatron vision tower takes three steps (GRPO, GRPO, SFT) on the same batch
with ``optimizer_impl: vt_ray`` (our ZeRO-1) and with ``megatron``, and prints each step's loss and gradient norm
side by side and the exported weights' largest difference; it fails when the losses or norms part by more than
``--tol`` relative (default 1e-4 float32, 2e-2 bf16). Written, never run (no GPU here); on CPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: vt_ray of this tree


def _inputs(vocab: int, device: torch.device, length: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from vt_ray.models.mrope import TEXT, VIDEO, sequence_positions

    batch = 2
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    text = torch.arange(length).expand(3, batch, length).clone()
    types = [TEXT] * 8 + [VIDEO] * 32 + [TEXT] * (length - 40)
    video = sequence_positions(types, [], [torch.tensor([2, 8, 8])], [2.0], spatial_merge=2, tokens_per_second=2)
    return ids.to(device), text.to(device), video[:, None].expand(3, batch, length).contiguous().to(device)


def _video(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2 x 8 x 12-patch video: two 112-pixel windows a frame (one padded), and the full-attention blocks."""
    grid = torch.tensor([[2, 8, 12]])
    pixels = torch.randn(int(grid.prod()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    return grid.to(device), pixels.to(device, dtype)


def _rank(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.tp * args.cp)

    from vt_ray.learner.megatron import logprobs, model, parallel, spec, weights

    parallel.init_model_parallel(args.tp, context_parallel=args.cp)
    dtype = getattr(torch, args.dtype)
    config = model.load_hf_config(args.model)
    use_te = spec.use_transformer_engine(args.impl)
    lm = model.build_language_model(model.TextShape.from_hf(config), args.tp, dtype=dtype, use_te=use_te,
                                    sequence_parallel=args.sequence_parallel)
    lm = lm.to(device)
    checkpoint = weights.HfCheckpoint(args.model)
    bridge = weights.make_bridge(config)
    weights.load_hf_weights(lm, bridge, checkpoint)
    exported = dict(weights.export_hf_weights(lm, bridge))
    features = None
    if args.vision:
        from vt_ray.learner.megatron import vision

        # megatron's local RMSNorm keeps float32 weights under a bf16 params_dtype (its output then meets a bf16
        # linear); the whole tower in the run's dtype, as megatron's Float16Module would cast it
        tower = vision.build_vision_model(config, args.tp, dtype=dtype, use_te=use_te).to(device, dtype)
        weights.load_hf_weights(tower, bridge, checkpoint, vision.PREFIX)
        exported.update(weights.export_hf_weights(tower, bridge, vision.PREFIX))
        grid, pixels = _video(device, dtype)
        with torch.no_grad():
            features = tower.eval()(pixels, grid_thw=grid).float().cpu()
    unequal = [k for k, v in exported.items() if not torch.equal(v.cpu(), checkpoint.get(k).to(dtype))]
    # sequence or context parallel: a length no TP or 2 CP size divides, so the forward pads it
    odd = args.sequence_parallel or args.cp > 1
    ids, text_pos, video_pos = _inputs(int(config.text_config.vocab_size), device, 63 if odd else 64)
    lm.eval()
    from vt_ray.learner.megatron.cpu import sequence_parallel_on_cpu

    with torch.no_grad(), sequence_parallel_on_cpu():  # nothing changes with CUDA
        ours = {"text": logprobs.next_token_logprobs(lm, ids, text_pos).cpu(),
                "video": logprobs.next_token_logprobs(lm, ids, video_pos).cpu()}
    if rank == 0:
        from transformers import Qwen2_5_VLForConditionalGeneration

        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(device).eval()
        report = {"impl": "transformer_engine" if use_te else "local", "device": device.type, "tp": args.tp,
                  "cp": args.cp,
                  "dtype": args.dtype, "sequence_parallel": args.sequence_parallel, "tensors": len(exported),
                  "round_trip_unequal": unequal}
        with torch.no_grad():
            for name, pos in (("text", text_pos), ("video", video_pos)):
                logits = hf(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
                ref = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0].cpu()
                report[f"logprobs_{name}_max_diff"] = (ours[name] - ref).abs().max().item()
            if features is not None:
                grid, pixels = _video(device, dtype)
                ref = hf.model.visual(pixels, grid_thw=grid).pooler_output.float().cpu()
                report["vision_features_max_diff"] = (features - ref).abs().max().item()
        Path(out).write_text(json.dumps(report))
    dist.barrier()
    parallel.destroy_model_parallel()
    dist.destroy_process_group()


def _optimizer_rank(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    """One rank of ``--megatron-optimizer``: the Megatron learner with each optimizer in turn, three steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # learner_examples: a test helper
    from transformers import AutoProcessor

    from learner_examples import make_examples
    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.collate import collate
    from vt_ray.learner.megatron.backend import MegatronWorker
    from vt_ray.learner.megatron.parallel import destroy_model_parallel

    world = 2 * args.tp
    torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    processor = AutoProcessor.from_pretrained(args.model)
    batch = collate(processor, make_examples(processor, 4 * world, seed=1))
    batch.advantages = torch.linspace(-1.0, 1.0, len(batch))
    shard = batch.split(world)[rank]
    assert shard is not None
    common = [f"model.path={args.model}", "learner.backend=megatron", f"learner.param_dtype={args.dtype}",
              f"learner.megatron.tensor_parallel_size={args.tp}", f"learner.megatron.transformer_impl={args.impl}",
              "learner.megatron.vision_impl=megatron", "learner.megatron.distributed_optimizer=true",
              "learner.lr=1e-3", "learner.grad_clip=0.5", "learner.reference=none", "learner.micro_batch_size=2",
              f"resources.learner.num_workers={world}", f"resources.gpus_per_node={world}",
              "resources.learner.gpus_per_worker=1",
              f"resources.cpus_per_node={8 * world}"]
    runs = {}
    for impl in ("vt_ray", "megatron"):
        extra = [f"learner.megatron.optimizer_impl={impl}"]
        worker = MegatronWorker(LearnerRoleConfig.of(load_config(None, common + extra)), rank, world)
        worker.setup(total_steps=4)
        shard.old_logprobs = worker.compute_logprobs(shard, 1, "policy")
        shard.ref_logprobs = shard.old_logprobs.clone()
        steps = [worker.train_step(shard, 1, loss) for loss in ("grpo", "grpo", "sft")]
        runs[impl] = {"steps": steps, "export": worker.export_state_dict("float32")}
        destroy_model_parallel()
    if rank == 0:
        torch.save(runs, out)
    dist.barrier()
    dist.destroy_process_group()


def check_megatron_optimizer(args: argparse.Namespace, tol: float) -> int:
    """``--megatron-optimizer``: ours against megatron-core's, three steps each (see the module docstring)."""
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port

    world = 2 * args.tp
    if not torch.cuda.is_available() or torch.cuda.device_count() < world:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        print(f"--megatron-optimizer: megatron-core's DistributedOptimizer needs CUDA: {world} GPUs (TP={args.tp} x "
              f"DP=2), found {found}; not run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "runs.pt")
        mp.spawn(_optimizer_rank, args=(args, free_port(), out), nprocs=world, join=True)
        runs = torch.load(out, weights_only=True)
    ours, theirs = runs["vt_ray"], runs["megatron"]
    ok = True
    for i, (a, b) in enumerate(zip(ours["steps"], theirs["steps"])):
        for key in ("loss", "grad_norm"):
            rel = abs(a[key] - b[key]) / max(abs(a[key]), 1e-12)
            ok &= rel <= tol
            print(f"step {i} {key}: vt_ray {a[key]:.9f}  megatron {b[key]:.9f}  rel diff {rel:.2e}")
    weights = max((ours["export"][k] - theirs["export"][k]).abs().max().item() for k in ours["export"])
    print(f"exported weights after three steps: max |diff| {weights:.3e}")
    print(f"{'OK  ' if ok else 'FAIL'} optimizer_impl megatron against vt_ray, losses and grad norms within {tol:g}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="Qwen2.5-VL HF directory (default: a tiny random one, built here)")
    ap.add_argument("--tp", type=int, default=2, help="tensor-parallel ranks (GPUs on a GPU node)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--impl", default="auto", choices=["auto", "transformer_engine", "local"])
    ap.add_argument("--vision", action="store_true", help="check the vision tower in Megatron too")
    ap.add_argument("--sequence-parallel", action="store_true",
                    help="build the model with megatron's sequence parallelism (needs --tp > 1)")
    ap.add_argument("--cp", type=int, default=1, help="context-parallel ranks (the world is --tp x --cp)")
    ap.add_argument("--megatron-optimizer", action="store_true",
                    help="GPU only (2 x --tp GPUs): learner.megatron.optimizer_impl megatron against vt_ray, three "
                         "steps at TP=--tp x DP=2")
    ap.add_argument("--tol", type=float, default=None, help="log-prob tolerance (default 1e-5 float32, 0.1 bf16); "
                    "with --megatron-optimizer the relative loss / grad-norm tolerance (1e-4 float32, 2e-2 bf16)")
    args = ap.parse_args(argv)
    if args.megatron_optimizer:
        tol = args.tol if args.tol is not None else (1e-4 if args.dtype == "float32" else 2e-2)
        if not torch.cuda.is_available():  # before building a model: nothing of it can run
            return check_megatron_optimizer(args, tol)
        with tempfile.TemporaryDirectory() as tmp:
            if not args.model:
                from vt_ray.models.tiny import make_tiny_model

                args.model = str(make_tiny_model(Path(tmp) / "tiny"))
            return check_megatron_optimizer(args, tol)
    tol = args.tol if args.tol is not None else (1e-5 if args.dtype == "float32" else 0.1)
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port

    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            from vt_ray.models.tiny import make_tiny_model

            args.model = str(make_tiny_model(Path(tmp) / "tiny"))
        world = args.tp * args.cp
        if torch.cuda.is_available() and torch.cuda.device_count() < world:
            print(f"need {world} GPUs, found {torch.cuda.device_count()}", file=sys.stderr)
            return 1
        out = str(Path(tmp) / "report.json")
        mp.spawn(_rank, args=(args, free_port(), out), nprocs=world, join=True)
        report = json.loads(Path(out).read_text())
    checks = {
        "round trip HF -> Megatron -> HF exact": not report["round_trip_unequal"],
        f"log-probs, text positions, within {tol:g}": report["logprobs_text_max_diff"] < tol,
        f"log-probs, multimodal positions, within {tol:g}": report["logprobs_video_max_diff"] < tol,
    }
    if args.vision:
        checks[f"vision tower features, within {tol:g}"] = report["vision_features_max_diff"] < tol
    print(json.dumps(report))
    for name, ok in checks.items():
        print(f"{'OK  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
