"""Context parallelism's layout and attention mask (vt_ray/learner/megatron/context.py), without processes: the
load-balanced split of megatron's ``get_batch_on_this_cp_rank`` / ``get_pos_emb_on_this_cp_rank``, its inverse,
and ``SDPACoreAttention``'s CP path (local queries against the all-gathered keys, simulated) against full
attention. The collectives run in tests/integration/learner/test_megatron_lm.py (CP=2 against CP=1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vt_ray.learner.megatron import context
from vt_ray.learner.megatron.cpu import SDPACoreAttention


def _megatron_chunks(tensor: torch.Tensor, dim: int, cp: int, rank: int) -> torch.Tensor:
    """megatron-core 0.16.1's ``get_pos_emb_on_this_cp_rank`` without its pinned memory and ``.cuda()``."""
    index = torch.tensor([rank, 2 * cp - rank - 1])
    view = tensor.view(*tensor.shape[:dim], 2 * cp, -1, *tensor.shape[dim + 1:])
    picked = view.index_select(dim, index)
    return picked.view(*picked.shape[:dim], -1, *picked.shape[dim + 2:])


def test_each_rank_keeps_chunk_r_and_its_mirror() -> None:
    assert context.local_positions(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert context.local_positions(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert context.local_positions(6, 1, 0).tolist() == list(range(6))
    with pytest.raises(ValueError, match="4 equal chunks"):
        context.local_positions(10, 2, 0)


@pytest.mark.parametrize("cp", [2, 3, 4])
def test_the_split_is_megatrons_and_the_gather_order_inverts(cp: int) -> None:
    length = 2 * cp * 3
    x = torch.randn(2, length, 5)
    for rank in range(cp):
        ours = x[:, context.local_positions(length, cp, rank)]
        assert torch.equal(ours, _megatron_chunks(x, 1, cp, rank))
        fake_group = SimpleNamespace(size=lambda: cp, rank=lambda r=rank: r)
        assert torch.equal(context.rope_slice_on_cpu(x, 1, fake_group), ours)
    order = context.gathered_order(length, cp)
    assert sorted(order.tolist()) == list(range(length))  # a permutation: every token on exactly one rank
    gathered = torch.cat([x[:, context.local_positions(length, cp, r)] for r in range(cp)], dim=1)
    assert torch.equal(gathered, x[:, order])
    assert torch.equal(gathered[:, context.restore_order(length, cp)], x)


def test_causal_mask_from_global_positions() -> None:
    length, cp = 12, 3
    keys = context.gathered_order(length, cp)
    full = torch.ones(length, length, dtype=torch.bool).tril()  # [query, key] in sequence order
    for rank in range(cp):
        queries = context.local_positions(length, cp, rank)
        assert torch.equal(context.causal_allowed(queries, keys), full[queries][:, keys])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cp_attention_equals_full_attention_at_the_local_queries(monkeypatch: pytest.MonkeyPatch, masked: bool,
                                                                 kv_heads: int) -> None:
    """Each simulated CP rank's output is the full sequence's attention output at its positions: causal, or
    megatron's boolean mask (True = masked) of the whole sequence (here a key-padding mask)."""
    length, cp, batch, heads, dim = 16, 2, 2, 4, 8
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(length, batch, heads, dim, generator=gen)
    k, v = (torch.randn(length, batch, kv_heads, dim, generator=gen) for _ in range(2))
    mask = None
    if masked:
        mask = torch.zeros(batch, 1, length, length, dtype=torch.bool)
        mask[0, ..., 11:] = True  # the first sample's last 5 keys are padding
    bq, bk, bv = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    full = F.scaled_dot_product_attention(bq, bk, bv, attn_mask=None if mask is None else ~mask,
                                          is_causal=not masked, enable_gqa=heads != kv_heads)
    full = full.permute(2, 0, 1, 3).reshape(length, batch, -1)
    attention = SDPACoreAttention(SimpleNamespace(attention_dropout=0.0), 1, None, "self")
    mask_type = SimpleNamespace(name="padding" if masked else "causal")
    order = context.gathered_order(length, cp)
    for rank in range(cp):
        mine = context.local_positions(length, cp, rank)
        monkeypatch.setattr(context, "size", lambda: cp)
        monkeypatch.setattr(context, "rank", lambda r=rank: r)
        local_k, local_v = k[mine], v[mine]
        # the all-gather, simulated: every rank's pieces in rank order
        everyone = {id(local_k): k[order], id(local_v): v[order]}
        monkeypatch.setattr(context, "gather_kv", lambda t, dim=0, everyone=everyone: everyone[id(t)])
        out = attention(q[mine], local_k, local_v, mask, attn_mask_type=mask_type)
        assert out.shape == (length // cp, batch, heads * dim)
        assert (out - full[mine]).abs().max().item() < 1e-6
