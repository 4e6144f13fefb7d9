"""The pure parts of the Megatron learner's distributed optimizer (vt_ray/learner/megatron/dist_optim.py): the flat
layout of the parameters cut into data-parallel slices, how each slice segment enters the gradient norm, and the
claim that makes one AdamW over the flat slice right (it is the same update as over the separate tensors). The
collectives run in tests/integration/learner/test_megatron_lm.py."""

from __future__ import annotations

import pytest
import torch

from vt_ray.learner.megatron.dist_optim import FlatLayout, norm_class


@pytest.mark.parametrize("dp", [1, 2, 3, 4, 7])
def test_slices_are_equal_contiguous_and_cover_every_element_once(dp: int) -> None:
    sizes = (5, 1, 12, 3, 8, 2)  # 31 elements
    layout = FlatLayout(sizes, dp)
    assert layout.padded % dp == 0 and layout.total <= layout.padded < layout.total + dp
    assert layout.slice_size * dp == layout.padded
    seen = [[0] * n for n in sizes]
    for rank in range(dp):
        at = 0
        for piece in layout.pieces_in(rank):
            assert piece.rank == rank and piece.slice_start >= at  # in order inside the slice
            at = piece.slice_start + piece.stop - piece.start
            assert at <= layout.slice_size
            for element in range(piece.start, piece.stop):
                seen[piece.index][element] += 1
    assert all(count == 1 for counts in seen for count in counts)


def test_pieces_of_a_parameter_are_the_pieces_of_the_slices_it_crosses() -> None:
    layout = FlatLayout((5, 1, 12, 3, 8, 2), 4)  # 31 -> 32, slices of 8
    assert layout.slice_size == 8 and layout.offsets == [0, 5, 6, 18, 21, 29]
    by_rank = [p for rank in range(4) for p in layout.pieces_in(rank)]
    for index in range(6):
        assert layout.pieces_of(index) == [p for p in by_rank if p.index == index]
    # the 12-element parameter at [6, 18) crosses slices 0, 1 and 2
    assert [(p.rank, p.start, p.stop, p.slice_start) for p in layout.pieces_of(2)] == [
        (0, 0, 2, 6), (1, 2, 10, 0), (2, 10, 12, 0)]
    # the last slice holds the end of the last parameter and one padding element, which no piece covers
    assert [(p.index, p.start, p.stop) for p in layout.pieces_in(3)] == [(4, 3, 8), (5, 0, 2)]
    # the writer of a parameter's checkpoint state owns its first element
    assert [layout.writer(i) for i in range(6)] == [0, 0, 0, 2, 2, 3]
    assert layout.touches(2, 1) and not layout.touches(0, 1)


def test_a_bucket_of_a_slice_holds_the_pieces_inside_it() -> None:
    layout = FlatLayout((5, 1, 12, 3, 8, 2), 2)  # slices of 16
    whole = layout.pieces_in(1)
    cut = layout.pieces_in(1, 0, 7) + layout.pieces_in(1, 7, 16)
    # the same elements, one piece split at the bucket edge
    assert sum(p.stop - p.start for p in cut) == sum(p.stop - p.start for p in whole) == 15
    assert [(p.index, p.start, p.stop, p.slice_start) for p in cut] == [
        (2, 10, 12, 0), (3, 0, 3, 2), (4, 0, 2, 5), (4, 2, 8, 7), (5, 0, 2, 13)]


def test_norm_classes_follow_the_plain_gradient_norm() -> None:
    """optim.grad_norm: a TP-partitioned parameter's squares are summed over TP, a replicated one counts once, a
    tied embedding's last-stage copy (``shared``) not at all (even when it is TP-partitioned)."""
    assert norm_class(tensor_model_parallel=True, shared=False) == "tensor_parallel"
    assert norm_class(tensor_model_parallel=False, shared=False) == "replicated"
    assert norm_class(tensor_model_parallel=True, shared=True) == "shared"
    assert norm_class(tensor_model_parallel=False, shared=True) == "shared"


def test_adamw_over_one_flat_slice_is_adamw_over_the_separate_tensors() -> None:
    """The learner's AdamW has one param group (one lr, betas, eps, weight decay) and AdamW is elementwise: over
    the concatenation of the tensors it makes the same update, bit for bit here, over three steps."""
    torch.manual_seed(0)
    tensors = [torch.randn(4, 3), torch.randn(7), torch.randn(2, 2, 2)]
    separate = [torch.nn.Parameter(t.clone()) for t in tensors]
    flat = torch.nn.Parameter(torch.cat([t.reshape(-1) for t in tensors]))
    settings = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    one, many = torch.optim.AdamW([flat], **settings), torch.optim.AdamW(separate, **settings)
    for _ in range(3):
        grads = [torch.randn_like(t) for t in tensors]
        for param, grad in zip(separate, grads):
            param.grad = grad
        flat.grad = torch.cat([g.reshape(-1) for g in grads])
        one.step()
        many.step()
    assert torch.equal(flat.detach(), torch.cat([p.detach().reshape(-1) for p in separate]))
    moments = torch.cat([many.state[p]["exp_avg_sq"].reshape(-1) for p in separate])
    assert torch.equal(one.state[flat]["exp_avg_sq"], moments)
