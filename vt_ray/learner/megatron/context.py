"""Context parallelism (``learner.megatron.context_parallel_size``, CP): each sequence split over the CP ranks.

The layout is megatron's load-balanced one (``get_batch_on_this_cp_rank`` in megatron's training code, and
``get_pos_emb_on_this_cp_rank`` for the rotary embeddings): the sequence, padded to a multiple of 2 CP, in 2 CP
equal chunks; CP rank r keeps chunks r and 2 CP - 1 - r, so with causal attention every rank has the same work
(an early chunk with few keys and a late one with many). What is split here, each exactly once:

* the decoder input, after the vision features are merged (:func:`vt_ray.learner.megatron.multimodal.decoder_input`:
  every CP rank runs the vision tower on all its pixels, then keeps its own tokens);
* the labels (:func:`split`);
* the rotary embeddings: the model gets the *full* ``[3, B, L]`` mRoPE positions and megatron's
  ``MultimodalRotaryEmbedding`` slices its output by CP rank itself (:func:`rope_slice_on_cpu` is the CPU stand-in
  for its slicing function, which pins memory and moves an index to CUDA).

Attention on CPU (:class:`vt_ray.learner.megatron.cpu.SDPACoreAttention`): the local queries attend to every
rank's keys and values, all-gathered over the CP group (:func:`gather_kv`), with a causal mask built from the
queries' and keys' global positions (:func:`causal_allowed`, cached as :func:`causal_bias`). With
transformer-engine on GPU, TE's attention does its own ring exchange (``TransformerConfig.context_parallel_size``):
there the split and the per-token gather below run, the K/V gather and the mask do not.

Per-token results (log-probs, entropy) come back to sequence order by :func:`gather_sequence`, so the loss
functions see the whole ``[B, L]`` batch on every CP rank, as without CP.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist


# ---- the layout: pure functions ---------------------------------------------------------------------------------
def local_positions(length: int, cp: int, rank: int) -> torch.Tensor:
    """The global positions (in order) CP rank ``rank`` of ``cp`` keeps of a ``length``-token sequence: chunks
    ``rank`` and ``2 cp - 1 - rank`` of ``2 cp`` equal chunks. ``length`` must be a multiple of ``2 cp``."""
    if length % (2 * cp):
        raise ValueError(f"a sequence of {length} tokens does not split into {2 * cp} equal chunks (pad it first)")
    chunk = length // (2 * cp)
    return torch.cat([torch.arange(rank * chunk, (rank + 1) * chunk),
                      torch.arange((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk)])


def gathered_order(length: int, cp: int) -> torch.Tensor:
    """The global position of each entry of the CP ranks' local pieces concatenated in rank order (what an
    all-gather along the sequence gives): a permutation of ``range(length)``."""
    return torch.cat([local_positions(length, cp, r) for r in range(cp)])


def restore_order(length: int, cp: int) -> torch.Tensor:
    """The inverse permutation of :func:`gathered_order`: ``gathered[..., restore_order]`` is in sequence order."""
    return torch.argsort(gathered_order(length, cp))


def causal_allowed(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """[q, k] boolean, True where a query may attend to a key (SDPA's convention): the key is not after it."""
    return key_positions[None, :] <= query_positions[:, None]


@functools.lru_cache(maxsize=2)  # [L / CP, L] each: a few at most (micro-batches differ in length)
def causal_bias(local_length: int, cp: int, rank: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`causal_allowed` for CP rank ``rank``'s queries against the gathered keys, as SDPA's additive float
    mask (0 or -inf) in the attention's dtype. Cached: every layer (and step) passes the same tensor, so autograd
    keeps one copy for the backward, not one per layer (SDPA saves the float form of a boolean mask per call)."""
    length = local_length * cp
    allowed = causal_allowed(local_positions(length, cp, rank), gathered_order(length, cp))
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf")).to(device)


# ---- this process's CP group -----------------------------------------------------------------------------------
def group() -> Any:
    """megatron's context-parallel group, or None before megatron's groups exist."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    from megatron.core import parallel_state

    return parallel_state.get_context_parallel_group(check_initialized=False)


def size() -> int:
    """The CP group's size (1 without megatron's groups or without CP)."""
    cp_group = group()
    return 1 if cp_group is None else dist.get_world_size(cp_group)


def rank() -> int:
    cp_group = group()
    return 0 if cp_group is None else dist.get_rank(cp_group)


def split(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """This CP rank's tokens of ``tensor`` along ``dim`` (the full, padded sequence). The identity without CP.
    Differentiable: the gradient of the other tokens is zero here (each CP rank back-propagates its own)."""
    cp = size()
    if cp == 1:
        return tensor
    index = local_positions(tensor.shape[dim], cp, rank()).to(tensor.device)
    return tensor.index_select(dim, index)


# ---- the collectives ---------------------------------------------------------------------------------------------
def _all_gather(tensor: torch.Tensor, dim: int, cp_group: Any) -> torch.Tensor:
    pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size(cp_group))]
    dist.all_gather(pieces, tensor.contiguous(), group=cp_group)
    return torch.cat(pieces, dim=dim)


class _GatherKV(torch.autograd.Function):
    """All-gather along ``dim`` over the CP group, in rank order (:func:`gathered_order`).

    Backward: this rank's queries produced a gradient for *every* rank's keys and values; rank s's own K/V
    need the sum of those over all CP ranks: a reduce-scatter along the sequence (gloo has one since torch 2.13;
    along another ``dim`` than 0, an all-reduce and this rank's slice)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, dim: int, cp_group: Any) -> torch.Tensor:
        ctx.dim, ctx.cp_group, ctx.local = dim, cp_group, tensor.shape[dim]
        return _all_gather(tensor, dim, cp_group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.dim == 0:
            from vt_ray.learner.megatron.collectives import reduce_scatter_into

            out = grad.new_empty((ctx.local, *grad.shape[1:]))
            reduce_scatter_into(out, grad.contiguous(), ctx.cp_group)
            return out, None, None
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: never autograd's own buffer
        dist.all_reduce(grad, group=ctx.cp_group)
        me = dist.get_rank(ctx.cp_group)
        return grad.narrow(ctx.dim, me * ctx.local, ctx.local).contiguous(), None, None


def gather_kv(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every CP rank's keys (or values) along the sequence ``dim``, in :func:`gathered_order` (their global
    positions are that order's entries). The identity without CP."""
    cp_group = group()
    if cp_group is None or dist.get_world_size(cp_group) == 1:
        return tensor
    return _GatherKV.apply(tensor, dim, cp_group)


class _GatherSequence(torch.autograd.Function):
    """All-gather per-token values ``[B, L / CP]`` over the CP group and put them in sequence order ``[B, L]``.

    Backward: the gradient's entries at this rank's positions. That is the whole gradient of this rank's
    values *because every CP rank computes the same loss from the same gathered tensor*: the loss's gradient
    with respect to rank r's values exists (identically) on every rank, and rank r alone back-propagates it
    through its own forward; summing the parameters' gradients over the CP group (the data-parallel sum runs
    over data x context parallel ranks) then gives the gradient of that one loss. Were the ranks to compute
    different losses from the gathered tensor, the gradient would have to be summed over CP here instead."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, cp_group: Any) -> torch.Tensor:
        cp = dist.get_world_size(cp_group)
        length = tensor.shape[1] * cp
        ctx.positions = local_positions(length, cp, dist.get_rank(cp_group)).to(tensor.device)
        return _all_gather(tensor, 1, cp_group)[:, restore_order(length, cp).to(tensor.device)]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad[:, ctx.positions], None


def gather_sequence(tensor: torch.Tensor) -> torch.Tensor:
    """[B, L / CP] values of this rank's tokens -> [B, L] in sequence order, on every CP rank
    (:class:`_GatherSequence` says why its backward keeps this rank's slice). The identity without CP."""
    cp_group = group()
    if cp_group is None or dist.get_world_size(cp_group) == 1:
        return tensor
    return _GatherSequence.apply(tensor, cp_group)


def query_and_key_positions(local_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The global positions of this rank's ``local_length`` queries and of the gathered keys
    (:func:`gather_kv`)."""
    cp = size()
    length = local_length * cp
    return local_positions(length, cp, rank()).to(device), gathered_order(length, cp).to(device)


def rope_slice_on_cpu(pos_emb: torch.Tensor, seq_dim: int, cp_group: Any) -> torch.Tensor:
    """megatron's ``get_pos_emb_on_this_cp_rank`` (the same chunks, :func:`local_positions`) without its pinned
    memory and ``.cuda()`` (a CPU build has neither)."""
    cp = cp_group.size()
    index = local_positions(pos_emb.shape[seq_dim], cp, cp_group.rank()).to(pos_emb.device)
    return pos_emb.index_select(seq_dim, index)
