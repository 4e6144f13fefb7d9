"""``SDPACoreAttention`` (vt_ray/learner/megatron/cpu.py) on packed sequences (the ``thd`` layout the Megatron
vision tower sends its windows and frames in): each sequence attends only within itself, as a block-diagonal
mask over the concatenation does. The unpacked path is covered against HF through the language model
(tests/integration/learner/test_megatron_lm.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vt_ray.learner.megatron.cpu import SDPACoreAttention

LENGTHS = [5, 3, 8]


def _packed(lengths: list[int]) -> SimpleNamespace:
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return SimpleNamespace(qkv_format="thd", cu_seqlens_q=bounds, cu_seqlens_kv=bounds)


def _block_mask(lengths: list[int], causal: bool) -> torch.Tensor:
    """True = attend: within a sequence (and, causal, not ahead)."""
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = ids[:, None] == ids[None, :]
    return mask & torch.ones_like(mask).tril() if causal else mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_sequences_attend_within_themselves(causal: bool, kv_heads: int) -> None:
    tokens, heads, dim = sum(LENGTHS), 4, 8
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(tokens, heads, dim, generator=gen)
    k, v = (torch.randn(tokens, kv_heads, dim, generator=gen) for _ in range(2))
    attention = SDPACoreAttention(SimpleNamespace(attention_dropout=0.0), 1, None, "self")
    mask_type = SimpleNamespace(name="causal" if causal else "no_mask")
    out = attention(q, k, v, None, attn_mask_type=mask_type, packed_seq_params=_packed(LENGTHS))
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(heads // kv_heads, 0),
        v.transpose(0, 1).repeat_interleave(heads // kv_heads, 0), attn_mask=_block_mask(LENGTHS, causal))
    assert out.shape == (tokens, heads * dim)
    torch.testing.assert_close(out, expected.transpose(0, 1).reshape(tokens, -1), atol=1e-6, rtol=1e-5)
    # packing is not a no-op: one long sequence gives other numbers
    whole = attention(q, k, v, None, attn_mask_type=mask_type, packed_seq_params=_packed([tokens]))
    assert (whole - out).abs().max().item() > 1e-3


def test_other_packed_layouts_are_refused() -> None:
    attention = SDPACoreAttention(SimpleNamespace(attention_dropout=0.0), 1, None, "self")
    q = torch.randn(4, 2, 8)
    packed = SimpleNamespace(qkv_format="sbhd", cu_seqlens_q=torch.tensor([0, 4]), cu_seqlens_kv=torch.tensor([0, 4]))
    with pytest.raises(NotImplementedError, match="thd"):
        attention(q, q, q, None, packed_seq_params=packed)
