"""Spike (issue 20): megatron-core's pipeline schedule, PP=2 over gloo on CPU, tiny Qwen2.5-VL language model.

Two spawned ranks; each builds its stage of a GPTModel (pre_process/post_process), loads the tiny model's
weights, runs ``get_forward_backward_func()`` forward+backward on a few micro-batches, and compares log-probs,
loss and every gradient with the HF model on the same weights (rank 1 = last stage has the loss).

    PYTHONPATH=$PWD .venv/bin/python tools/megatron_pp_spike.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

MICRO, MB, LENGTH = 3, 2, 16


def _rank(rank: int, port: int, model_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from vt_ray.learner.megatron import cpu, logprobs, model, parallel, weights

    parallel.init_model_parallel(tensor_parallel=1, pipeline_parallel=2)
    config = model.load_hf_config(model_dir)
    shape = model.TextShape.from_hf(config)
    lm = model.build_language_model(shape, pipeline_parallel=2)
    bridge = weights.make_bridge(config)
    weights.load_hf_weights(lm, bridge, weights.HfCheckpoint(model_dir))
    print(rank, "stage params", [n for n, _ in lm.named_parameters()][:3], "...", flush=True)
    ids = torch.randint(0, shape.vocab, (MICRO * MB, LENGTH), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(LENGTH).expand(3, MICRO * MB, LENGTH).clone()
    mcfg = lm.config
    mcfg.pipeline_dtype = torch.float32
    mcfg.variable_seq_lengths = True
    mcfg.batch_p2p_comm = os.environ.get("BATCH_P2P", "0") == "1"
    mcfg.calculate_per_token_loss = True

    chunks = iter(range(MICRO))

    def step(_it, m):
        i = next(chunks)
        x = ids[i * MB:(i + 1) * MB]
        p = pos[:, i * MB:(i + 1) * MB]
        labels = torch.roll(x, -1, dims=1)
        out = m(x, p, logprobs.causal_mask(LENGTH), labels=labels)

        def loss_func(nll):
            lp = -nll[:, :-1].float()
            loss = -lp.sum() / (MICRO * MB * (LENGTH - 1))
            return loss, torch.tensor(1), {"lp": lp.detach()}
        return out, loss_func

    fb = get_forward_backward_func()
    print(rank, fb.__name__, flush=True)
    with cpu.pipeline_on_cpu():
        store = fb(forward_step_func=step, data_iterator=None, model=[lm], num_microbatches=MICRO,
                   seq_length=LENGTH, micro_batch_size=MB, forward_only=False)
    grads = {}
    offset = weights.layer_offset(lm)
    for name, param in lm.named_parameters():
        hf, ts = bridge._weight_to_hf_format(weights.bridge_name(name, offset), param.grad)
        grads.update({h: t.clone() for h, t in zip(hf, ts)})
    torch.save({"store": store, "grads": grads}, Path(model_dir) / f"pp{rank}.pt")
    parallel.destroy_model_parallel()
    dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vt_ray.learner.rendezvous import free_port
    from vt_ray.models.tiny import make_tiny_model

    d = Path(tempfile.mkdtemp()) / "tiny"
    make_tiny_model(d)
    mp.start_processes(_rank, args=(free_port(), str(d)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(d / f"pp{r}.pt") for r in (0, 1))
    assert not r0["store"] and len(r1["store"]) == MICRO
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
    ids = torch.randint(0, hf.config.text_config.vocab_size, (MICRO * MB, LENGTH),
                        generator=torch.Generator().manual_seed(3))
    logits = hf(input_ids=ids).logits.float()
    lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    (-lp.sum() / lp.numel()).backward()
    mine = torch.cat([s["lp"] for s in r1["store"]])
    print("logprobs max|diff| vs HF:", (mine - lp.detach()).abs().max().item())
    from safetensors.torch import load_file
    ck = load_file(str(d / "model.safetensors"))
    hf_grads = {}
    from transformers.core_model_loading import revert_weight_conversion
    for n, p in hf.named_parameters():
        if p.grad is not None:
            hf_grads[next(iter(revert_weight_conversion(hf, {n: p})))] = p.grad
    ours = {**r0["grads"], **r1["grads"]}
    assert set(ours) <= set(ck), set(ours) - set(ck)
    missing = [k for k in ck if not k.startswith("visual.") and k not in ours]
    worst = max((ours[k] - hf_grads[k]).abs().max().item() for k in ours)
    print(f"stage 0 holds {len(r0['grads'])}, stage 1 {len(r1['grads'])} HF tensors; missing {missing}")
    print("grads max|diff| vs HF:", worst)


if __name__ == "__main__":
    sys.exit(main())
