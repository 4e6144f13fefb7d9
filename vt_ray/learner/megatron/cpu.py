"""What megatron-core 0.16's local (non transformer-engine) path needs to run on a CPU-only torch build.

Measured on this project's CPUs (../shared/notes/megatron-cpu.md): column/row-parallel linears, vocab-parallel
embedding and cross-entropy and the TP collectives run over gloo unchanged. Two things assume CUDA:

* ``DotProductAttention`` (the local core attention) forks the CUDA RNG tracker and takes its score buffer from
  a CUDA ``GlobalMemoryBuffer``. :class:`SDPACoreAttention` replaces it in the layer spec with
  ``F.scaled_dot_product_attention``, which needs neither (and is faster on CPU).
* ``MultimodalRotaryEmbedding.__init__`` creates ``inv_freq`` on ``torch.cuda.current_device()``.
  :func:`cuda_device_is_cpu` answers ``cpu`` there while the model is built (:func:`building_on_cpu`, which also
  makes ``Tensor.cuda()`` a no-op for megatron's initial sync of a tied embedding's copy across stages).

Pipeline parallelism (megatron's schedules and p2p communication, over gloo) needs three more, all held only
around the schedule (:func:`pipeline_on_cpu`). ``batch_isend_irecv`` itself runs on gloo unchanged.

Sequence parallelism forks megatron's CUDA RNG tracker around the decoder (``TransformerBlock.forward``) and the
embedding's dropout (:func:`use_cpu_rng_tracker`, at setup), and its gathers and reduce-scatters along the
sequence allocate on ``torch.cuda.current_device()`` (:func:`sequence_parallel_on_cpu`, held around forwards and
backwards).

Activation recompute (``tensor_parallel.checkpoint``) saves and restores the CUDA RNG state around the
recomputed forward: :func:`recompute_on_cpu`, held around the training forward and backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F


class SDPACoreAttention(torch.nn.Module):
    """Core attention with ``DotProductAttention``'s constructor and forward signature, computed by SDPA.

    q, k, v arrive as ``[s, b, heads, head_dim]`` (this rank's heads and query groups); returns
    ``[s, b, heads * head_dim]``. Causal masks use SDPA's ``is_causal``; other masks are megatron's boolean
    ``True = masked``. Packed sequences (``packed_seq_params``, the ``thd`` layout: q, k, v ``[tokens, heads,
    head_dim]``) attend each within itself, one SDPA call per sequence: the Megatron vision tower's windows and
    frames. Attention dropout follows the config (0 for RL fine-tuning); a dropout that agrees across TP ranks
    would need megatron's RNG tracker, so a non-zero one is refused.
    """

    def __init__(self, config: Any, layer_number: int, attn_mask_type: Any, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection: Any = None) -> None:
        super().__init__()
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"SDPACoreAttention runs without dropout (got attention_dropout={dropout})")
        self.config = config
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type: Any = None,
                attention_bias: torch.Tensor | None = None, packed_seq_params: Any = None) -> torch.Tensor:
        if attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention: attention bias needs the TE spec")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = getattr(mask_type, "name", "") == "causal"
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params, causal)
        from vt_ray.learner.megatron import context

        if context.size() > 1:
            return self._context_parallel(query, key, value, attention_mask, causal)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        mask = None if causal or attention_mask is None else ~attention_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale,
                                             enable_gqa=q.size(1) != k.size(1))
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)

    def _context_parallel(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Context parallelism (:mod:`vt_ray.learner.megatron.context`): this rank holds its chunks of the
        sequence; its queries attend to every CP rank's keys and values, all-gathered over the CP group (the
        backward sums their gradients back, ``context.gather_kv``), under a mask from global positions: causal
        (a key not after the query), or megatron's full-sequence boolean mask (True = masked) read at this rank's
        query rows and the gathered keys' columns. Memory ``[b, heads, s / CP, s]`` scores per rank, as
        megatron's all-gather CP (``cp_comm_type="all_gather"``), not TE's ring."""
        from vt_ray.learner.megatron import context

        q_pos, k_pos = context.query_and_key_positions(query.shape[0], query.device)
        key, value = context.gather_kv(key), context.gather_kv(value)
        allowed: torch.Tensor | None
        if causal:  # one cached tensor for every layer: the backward keeps one copy
            allowed = context.causal_bias(query.shape[0], context.size(), context.rank(), query.dtype, query.device)
        elif attention_mask is not None:
            allowed = ~attention_mask[..., q_pos[:, None], k_pos[None, :]]
        else:
            allowed = None
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.softmax_scale,
                                             enable_gqa=q.size(1) != k.size(1))
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packed: Any,
                causal: bool) -> torch.Tensor:
        """Packed sequences (``qkv_format="thd"``: q, k, v ``[tokens, heads, head_dim]``, boundaries in
        ``cu_seqlens_q``): each sequence attends only to itself, as flash-attention's varlen kernel does. The
        vision tower's windows and frames (mbridge's Qwen2.5-VL ViT) come this way. One SDPA call per sequence,
        as the HF tower's SDPA path does; returns ``[tokens, heads * head_dim]``."""
        if packed.qkv_format != "thd" or not torch.equal(packed.cu_seqlens_q, packed.cu_seqlens_kv):
            raise NotImplementedError("SDPACoreAttention: packed self-attention in the thd format only")
        bounds = packed.cu_seqlens_q.tolist()
        pieces = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))  # [heads, s, d]
            pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.softmax_scale,
                                                         enable_gqa=q.size(0) != k.size(0)).transpose(0, 1))
        out = torch.cat(pieces)
        return out.reshape(out.size(0), -1)


@contextlib.contextmanager
def cuda_device_is_cpu() -> Iterator[None]:
    """Inside, ``torch.cuda.current_device()`` returns the CPU device instead of failing (CPU builds only).

    Held while the model is built (``MultimodalRotaryEmbedding`` places ``inv_freq`` there) and by the contexts
    below. With CUDA present nothing changes.
    """
    if torch.cuda.is_available():
        yield
        return
    with mock.patch.object(torch.cuda, "current_device", lambda: torch.device("cpu")):
        yield


@contextlib.contextmanager
def building_on_cpu() -> Iterator[None]:
    """Inside, a ``GPTModel`` is built on a CPU build: :func:`cuda_device_is_cpu`, and ``Tensor.cuda()`` returns
    the tensor itself. With tied embeddings and pipeline stages, megatron's ``setup_embeddings_and_output_layer``
    moves the last stage's copy of the embedding to the GPU (``weight.data = weight.data.cuda()``) before
    all-reducing it with the first stage's (its initial sync; the checkpoint load overwrites both copies next).
    With CUDA present nothing changes."""
    if torch.cuda.is_available():
        yield
        return
    with cuda_device_is_cpu(), mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
        yield


@contextlib.contextmanager
def checkpointing_on_cpu() -> Iterator[None]:
    """Inside, megatron's distributed checkpointing runs on a CPU build: its ``torch_dist`` writer calls
    ``torch.cuda.synchronize()`` after copying tensors to the host (a no-op here: they are there) and puts its
    failure flag on ``torch.cuda.current_device()`` (the CPU, as :func:`cuda_device_is_cpu`). With CUDA
    present nothing changes."""
    if torch.cuda.is_available():
        yield
        return
    with mock.patch.object(torch.cuda, "synchronize", lambda device=None: None), cuda_device_is_cpu():
        yield


@contextlib.contextmanager
def cuda_factories_on_cpu() -> Iterator[None]:
    """Inside, tensor factories asked for ``device="cuda"`` create CPU tensors (CPU builds only).

    Held only around megatron's pipeline schedule: ``forward_backward_pipelining_without_interleaving`` counts
    tokens in ``torch.zeros([], device="cuda")`` (it is the only CUDA factory on the pipeline path; the p2p
    receive buffers ask :func:`cuda_device_is_cpu`'s ``current_device()``). With CUDA present nothing changes."""
    if torch.cuda.is_available():
        yield
        return
    from torch.overrides import TorchFunctionMode

    class _CudaToCpu(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                               kwargs: dict[str, Any] | None = None) -> Any:
            kwargs = dict(kwargs or {})
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cuda":
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    with _CudaToCpu():
        yield


@contextlib.contextmanager
def pipeline_on_cpu() -> Iterator[None]:
    """Inside, megatron's pipeline schedule and its p2p communication run on a CPU build: the p2p code puts
    its receive buffers and shape tensors on ``torch.cuda.current_device()`` and calls ``torch.cuda.synchronize()``
    after every ``batch_isend_irecv`` (both as in :func:`checkpointing_on_cpu`), and the schedule counts tokens
    in a ``device="cuda"`` tensor (:func:`cuda_factories_on_cpu`). With CUDA present nothing changes."""
    with checkpointing_on_cpu(), cuda_factories_on_cpu():
        yield


@contextlib.contextmanager
def recompute_on_cpu() -> Iterator[None]:
    """Inside, megatron's activation recompute (``tensor_parallel.random.CheckpointFunction``, used by
    ``recompute_granularity`` full and selective) runs on a CPU build. It snapshots the CPU RNG, the CUDA RNG and
    its CUDA RNG tracker's states before the forward and restores them for the recomputation in the backward (so
    dropout draws the same masks); the CUDA part fails without CUDA. Here there is no CUDA generator to keep:
    its get answers None and its set does nothing (the CPU state and the tracker's, empty on CPU, are still
    saved and restored). Held around the training forward and backward (the recomputation runs in the backward).
    With CUDA present nothing changes."""
    if torch.cuda.is_available():
        yield
        return
    from megatron.core.tensor_parallel import random as megatron_random

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    with mock.patch.multiple(megatron_random, _get_cuda_rng_state=nothing, _set_cuda_rng_state=nothing):
        yield


def use_cpu_rng_tracker() -> None:
    """On a CPU build, install megatron's RNG tracker whose ``fork()`` does nothing (its inference tracker).

    megatron forks a "model-parallel" CUDA RNG state around the decoder when sequence parallelism is on (so that
    dropout inside differs across TP ranks' sequence slices) and in its local core attention; the state is added
    by ``model_parallel_cuda_manual_seed``, which needs CUDA, so the fork fails with "cuda rng state
    model-parallel-rng is not added". Every dropout here is 0 (``model.transformer_config``; :class:`SDPACore
    Attention` refuses another), so there is nothing to fork. With CUDA nothing changes (the real tracker is
    seeded instead, :func:`vt_ray.learner.megatron.parallel.init_model_parallel`)."""
    if torch.cuda.is_available():
        return
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


@contextlib.contextmanager
def sequence_parallel_on_cpu() -> Iterator[None]:
    """Inside, megatron's sequence-parallel communication runs on a CPU build: the all-gathers and
    reduce-scatters along the sequence (``tensor_parallel.mappings``, the column-parallel linears' gathered input,
    forward and backward) allocate their outputs, and megatron's global scratch buffer its storage, on
    ``torch.cuda.current_device()`` (answered ``cpu``, as :func:`cuda_device_is_cpu`). Held around forwards and
    backwards (the backward gathers too). Also context parallelism's one CUDA assumption: megatron's rotary
    embedding slices its output by CP rank with ``get_pos_emb_on_this_cp_rank``, which pins memory and moves its
    index to CUDA (:func:`vt_ray.learner.megatron.context.rope_slice_on_cpu`, the same slice, stands in). With
    CUDA present nothing changes."""
    if torch.cuda.is_available():
        yield
        return
    from megatron.core.models.common.embeddings import rotary_pos_embedding

    from vt_ray.learner.megatron.context import rope_slice_on_cpu

    with cuda_device_is_cpu(), mock.patch.object(rotary_pos_embedding, "get_pos_emb_on_this_cp_rank",
                                                 rope_slice_on_cpu):
        yield
