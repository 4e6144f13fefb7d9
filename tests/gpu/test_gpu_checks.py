"""The GPU-only paths, checked on a GPU node with ``pytest -m gpu`` (skipped here: no CUDA on the CPU machines).

Each test runs one of the one-command GPU check scripts (README, docs/megatron.md, docs/weight-sync.md) and
fails when it does: the Megatron language model under transformer-engine layers and NCCL tensor parallelism
against Hugging Face in bf16, the NCCL weight stream from two learner ranks to a vLLM engine, and the colocated
sync over CUDA IPC (the benchmark's colocated run, and the transport alone between two processes of one GPU); and
the tiny GRPO run through the driver on GPUs, split (FSDP2 over NCCL, the stream to a vLLM engine on its own GPU)
and colocated (an engine on each learner GPU, asleep while the learners train; weights by CUDA IPC).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_runs import logged_steps, run_cli, train_command

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPUs"),
]


def _gpus(n: int) -> None:
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} GPUs, found {torch.cuda.device_count()}")


def test_megatron_tp2_on_nccl_matches_hf_in_bf16() -> None:
    _gpus(2)
    run = subprocess.run([sys.executable, "tools/megatron_check.py", "--tp", "2", "--dtype", "bfloat16"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAIL" not in run.stdout


def test_weight_stream_over_nccl_to_vllm() -> None:
    _gpus(3)
    run = subprocess.run(["bash", "tools/gpu_check_weight_sync.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_weight_sync_over_cuda_ipc_to_colocated_vllm_engines() -> None:
    """The colocated layout's sync (rollout.weight_sync=ipc): the second half of the check script alone."""
    _gpus(2)
    run = subprocess.run([sys.executable, "-m", "benchmarks.weight_sync", "--gpu", "--colocate", "--sizes", "tiny",
                          "--reps", "1", "--out", "outputs/bench/weight_sync_gpu_colocated_test"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " ipc " in run.stdout


def _receive_over_cuda_ipc(session: dict, plan: dict, out: object) -> None:
    """Rank 1 in a process of its own (CUDA IPC handles do not open in the process that made them)."""
    import torch

    from vt_ray.common.weight_share import open_receiver
    from vt_ray.common.weight_stream import StreamGroup, StreamPlan, StreamSession

    receiver = open_receiver(StreamGroup(StreamSession(**session), 1), StreamPlan.from_dict(plan), private=True)
    got = {}
    try:
        for name, tensor in receiver.tensors():
            assert tensor.is_cuda
            got[name] = tensor.cpu()
    except Exception as err:  # noqa: BLE001 - reported to the parent
        receiver.drain()
        got = {"error": repr(err)}
    torch.save(got, str(out))


def test_cuda_ipc_buckets_arrive_bit_for_bit_and_a_corrupted_one_is_refused(tmp_path: Path) -> None:
    """The transport alone on one GPU: a sender here, a receiver in a spawned process mapping the sender's
    CUDA buffers (zero copy); every tensor equal; then a corrupted bucket refused, naming bucket and tensor."""
    import multiprocessing

    from vt_ray.common.weight_share import SharedBucketSender, open_sender
    from vt_ray.common.weight_stream import StreamGroup, StreamSession, plan_buckets
    from vt_ray.learner.rendezvous import free_port

    gen = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(64 + i, 33, generator=gen).cuda() for i in range(12)}
    plan = plan_buckets([(k, tuple(v.shape), "bfloat16") for k, v in tensors.items()], 16 * 1024)
    assert len(plan.buckets) > 3
    ctx = multiprocessing.get_context("spawn")
    for attempt, bad in (("clean", None), ("corrupt", len(plan.buckets) // 2)):
        session = StreamSession("127.0.0.1", free_port(), attempt, 2, timeout_s=120, backend="ipc")
        out = tmp_path / f"{attempt}.pt"
        child = ctx.Process(target=_receive_over_cuda_ipc, args=(vars(session), plan.to_dict(), out))
        child.start()
        sender = open_sender(StreamGroup(session, 0), plan, "cuda")
        assert isinstance(sender, SharedBucketSender)

        def flip(index: int, buf: torch.Tensor, bad: int | None = bad) -> None:
            if index == bad:
                buf[0] ^= 0xFF

        for index, bucket in enumerate(plan.buckets):
            sender.send(index, [tensors[t.name] for t in bucket.tensors], flip)
        sender.finish()
        child.join(timeout=300)
        assert child.exitcode == 0
        got = torch.load(str(out))
        if bad is None:
            assert all(torch.equal(got[k], v.bfloat16().cpu()) for k, v in tensors.items())
        else:
            first = plan.buckets[bad].tensors[0].name
            assert f"bucket {bad} of" in got["error"] and repr(first) in got["error"]

GPU_RUN = ("trainer.total_steps=2", "trainer.save_every=0", "resources.gpus_per_node=3", "model.dtype=bfloat16",
           "learner.param_dtype=bfloat16", "rollout.probe_every=0")


@pytest.mark.parametrize("layout", ["split", "colocated"])
def test_tiny_grpo_run_on_gpus(layout: str, tiny_model_dir: Path, train_data: Path, tmp_path: Path) -> None:
    """Two GRPO steps of the suite's tiny run with the learners on NCCL: every learner call all-reduces small
    CPU tensors (token counts, metric sums) on the default group, which must accept them
    (``cpu:gloo,cuda:nccl``), and the engines must serve the step-1 weights at step 2."""
    if layout == "split":
        _gpus(3)
        extra = ["resources.learner.gpus_per_worker=1", "resources.rollout.gpus_per_worker=1"]
    else:
        _gpus(2)
        extra = ["resources.gpus_per_node=2", "resources.colocate=true", "resources.learner.gpus_per_worker=1",
                 "resources.rollout.gpus_per_worker=1", "resources.rollout.num_workers=2"]
    proc = run_cli(train_command(tiny_model_dir, train_data, tmp_path, *GPU_RUN, *extra), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = logged_steps(tmp_path / "t")
    assert sorted(steps) == [0, 1, 2]
    assert all(steps[s]["actor/grad_norm"] > 0 for s in (1, 2))
