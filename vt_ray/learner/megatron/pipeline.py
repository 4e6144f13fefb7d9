"""Forward (and backward) of one model's micro-batches through megatron's pipeline schedule.

With ``learner.megatron.pipeline_parallel_size`` > 1 each rank holds one stage of the language model (the
embedding and the vision tower on the first, the output layer on the last). megatron-core's
``get_forward_backward_func()`` (1F1B, ``forward_backward_pipelining_without_interleaving``) runs the
micro-batches: activations go to the next stage and their gradients come back over megatron's p2p
communication (gloo on CPU, with :func:`vt_ray.learner.megatron.cpu.pipeline_on_cpu`). The loss and whatever
the caller wants from the output (log-probs, metrics) exist on the last stage only; :func:`run` broadcasts them
to every stage, so every rank of the learner group answers the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from vt_ray.learner.megatron.cpu import pipeline_on_cpu
from vt_ray.learner.megatron.logprobs import StageInputs, causal_mask

# (micro-batch index, the last stage's output) -> (the loss to back-propagate, data to return)
LastStage = Callable[[int, torch.Tensor], tuple[torch.Tensor, Any]]


def run(lm: Any, micro_batches: list[StageInputs], last_stage: LastStage, forward_only: bool) -> list[Any]:
    """Run ``micro_batches`` through the pipeline (forward only, or forward and backward, gradients accumulated
    into the stage's parameters). ``last_stage`` turns each output into a loss (already the micro-batch's share
    of the whole mini-batch: nothing is divided) and data. Returns the data of every micro-batch, in order, on
    every stage. Collective over the pipeline group."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batches: Iterator[tuple[int, StageInputs]] = iter(enumerate(micro_batches))

    def forward_step(_data: Any, model: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
        index, inputs = next(batches)
        first = parallel_state.is_pipeline_first_stage()
        output = model(inputs.ids, inputs.positions, causal_mask(inputs.ids.shape[1]).to(inputs.ids.device),
                       labels=inputs.labels, decoder_input=inputs.embeddings() if first else None)

        def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
            loss, data = last_stage(index, out)
            return loss, torch.ones((), dtype=torch.int), data  # a token count of 1: see model.transformer_config

        return output, loss_func

    with pipeline_on_cpu():
        store = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=None, model=[lm], num_microbatches=len(micro_batches),
            seq_length=max(int(b.ids.shape[1]) for b in micro_batches), micro_batch_size=1,
            forward_only=forward_only)
    return from_last_stage(store)


def from_last_stage(data: Any) -> Any:
    """The last pipeline stage's ``data`` on every stage (one pickled broadcast over the pipeline group)."""
    from megatron.core import parallel_state

    box = [data]
    dist.broadcast_object_list(box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                               group=parallel_state.get_pipeline_model_parallel_group())
    return box[0]
