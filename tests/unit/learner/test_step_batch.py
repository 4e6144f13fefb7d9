"""A step's batch cached on the ranks (vt_ray.learner.step_batch): how mini-batches cut each rank's shard, and
that a train call assembled from the cache is the shard the per-call path would have sent."""

from __future__ import annotations

import pickle

import pytest
import torch

from vt_ray.learner.batch import PixelRefs, TrainBatch
from vt_ray.learner.step_batch import StepCache, StepCall, StepNotCached, assemble, minibatch_rows, rank_sizes


def make_batch(rows: int, group: int = 2) -> TrainBatch:
    """``rows`` responses of ``rows // group`` prompts, pixels by reference, lengths differing by row (so slices
    trim padding differently), a behaviour log-prob per response token."""
    gen = torch.Generator().manual_seed(rows)
    width = 12
    lengths = [6 + (i * 5) % 7 for i in range(rows)]
    attention = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    response = torch.zeros(rows, width)
    for i, n in enumerate(lengths):
        response[i, 4:n] = 1.0
    return TrainBatch(
        input_ids=torch.randint(3, 100, (rows, width), generator=gen) * attention,
        attention_mask=attention,
        response_mask=response,
        pixel_values_videos=torch.zeros(0, 8),
        video_grid_thw=torch.tensor([[1, 2, 2]] * rows),
        second_per_grid_ts=torch.ones(rows),
        behaviour_logprobs=-torch.rand(rows, width, generator=gen) * response,
        uids=[f"u{i // group}" for i in range(rows)],
        pixel_refs=PixelRefs([f"ref{p}" for p in range(-(-rows // group))], [i // group for i in range(rows)]),
    )


def fields(batch: TrainBatch) -> dict[str, object]:
    return {name: getattr(batch, name) for name in TrainBatch.__slots__}


def assert_same(a: TrainBatch, b: TrainBatch) -> None:
    fa, fb = fields(a), fields(b)
    for name in fa:
        x, y = fa[name], fb[name]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), name
        else:
            assert x == y, name


@pytest.mark.parametrize("rows", [1, 2, 5, 7, 8, 13])
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_minibatches_use_every_row_once_and_differ_in_size_by_at_most_one(rows: int, ranks: int, parts: int) -> None:
    sizes = rank_sizes(rows, ranks)
    assert sizes == [0 if s is None else len(s) for s in make_batch(rows).split(ranks)]  # as split() cuts
    cut = minibatch_rows(sizes, parts)
    assert len(cut) == parts and all(len(k) == ranks for k in cut)
    for rank, size in enumerate(sizes):  # each rank's slices, in mini-batch order, tile its shard
        bounds = [cut[k][rank] for k in range(parts)]
        assert [b[0] for b in bounds] == [0] + [b[1] for b in bounds[:-1]] and bounds[-1][1] == size
    totals = [sum(end - start for start, end in k) for k in cut]
    assert sum(totals) == rows and max(totals) - min(totals) <= 1


def test_remainders_go_round_robin_over_the_minibatches() -> None:
    # 5 rows on 2 ranks (3 + 2) in 3 mini-batches: rank 1's two remainder rows go to mini-batches 0 and 1
    assert minibatch_rows([3, 2], 3) == [[(0, 1), (0, 1)], [(1, 2), (1, 2)], [(2, 3), (2, 2)]]
    # 8 rows on 2 ranks in 3 mini-batches: rank 0's remainder row goes to mini-batch 0, rank 1's to 1: 3, 3, 2
    assert minibatch_rows([4, 4], 3) == [[(0, 2), (0, 1)], [(2, 3), (1, 3)], [(3, 4), (3, 4)]]
    assert minibatch_rows([4, 4], 1) == [[(0, 4), (0, 4)]]


def test_one_minibatch_assembles_the_shards_of_the_per_call_path() -> None:
    """The per-call path: the driver sets old/reference log-probs, advantages and the kept rows' mask on the whole
    batch, then splits it. The step path: each rank caches its shard, keeps its own log-probs (what it returned
    to the driver) and gets its rows' advantages and keep flags. Every field equal."""
    batch = make_batch(7)
    old, ref = -torch.rand(7, 12) * batch.response_mask, -torch.rand(7, 12) * batch.response_mask
    adv, keep = torch.randn(7), torch.tensor([True, True, False, True, True, True, False])
    per_call = make_batch(7)
    per_call.old_logprobs, per_call.ref_logprobs, per_call.advantages = old, ref, adv
    per_call.response_mask = per_call.response_mask * keep.float()[:, None]
    expected = per_call.split(2)

    offset = 0
    for rank, shard in enumerate(batch.split(2)):
        assert shard is not None and expected[rank] is not None
        rows = len(shard)
        cache = StepCache(rank)
        cache.put("s", shard)
        width = shard.input_ids.shape[1]  # a rank returns log-probs as wide as its shard
        cache.keep_logprobs("s", "policy", old[offset : offset + rows, :width])
        cache.keep_logprobs("s", "reference", ref[offset : offset + rows, :width])
        (start, end), = minibatch_rows([rows], 1)[0]
        call = StepCall("s", start, end, adv[offset : offset + rows].clone(), keep[offset : offset + rows].clone())
        assert_same(cache.call(call), expected[rank])
        offset += rows


def test_minibatches_together_count_the_tokens_and_sequences_of_the_step() -> None:
    """The loss normalisation all-reduces each rank's counts of its piece: summed over a mini-batch's pieces and
    over the mini-batches, they are the step's kept tokens and sequences."""
    batch = make_batch(13)
    keep = torch.arange(13) % 4 != 3
    kept_tokens = int((batch.response_mask * keep.float()[:, None]).sum())
    sizes = rank_sizes(13, 3)
    shards = batch.split(3)
    tokens = sequences = 0
    for bounds in minibatch_rows(sizes, 4):
        for rank, (start, end) in enumerate(bounds):
            shard = shards[rank]
            assert shard is not None
            at = sum(sizes[:rank])
            piece = assemble(shard, StepCall("s", start, end, torch.ones(end - start), keep[at + start : at + end]))
            tokens += piece.num_tokens
            sequences += piece.num_sequences
    assert (tokens, sequences) == (kept_tokens, int(keep.sum()))


def test_a_call_without_rows_is_a_zero_loss_filler() -> None:
    shard = make_batch(3)
    filler = assemble(shard, StepCall("s", 2, 2, torch.zeros(0), torch.zeros(0, dtype=torch.bool)))
    assert len(filler) == 1 and filler.num_tokens == 0 and filler.num_sequences == 0
    assert filler.advantages is not None and filler.advantages.tolist() == [0.0]
    assert filler.pixel_refs is not None and len(filler.pixel_refs.refs) == 1  # a real forward, on one prompt


def test_a_step_not_cached_is_an_error_naming_rank_and_step_and_survives_pickling() -> None:
    cache = StepCache(rank=1)
    cache.put("step-3", make_batch(2))
    with pytest.raises(StepNotCached, match=r"learner rank 1: step 'step-2' is not cached \(cached: \['step-3'\]\)"):
        cache.call(StepCall("step-2", 0, 1))
    try:
        cache.get("step-2")
    except StepNotCached as err:
        assert str(pickle.loads(pickle.dumps(err))) == str(err)  # how a Ray actor's error reaches the driver
    with pytest.raises(ValueError, match="policy log-probs"):
        cache.keep_logprobs("step-3", "policy", torch.zeros(2, 5))  # not the shard's shape
    with pytest.raises(ValueError, match="advantages"):
        cache.call(StepCall("step-3", 0, 2, advantages=torch.zeros(3)))
    cache.drop("never-cached")
    assert cache.keys() == ["step-3"]
    cache.drop()
    assert cache.keys() == []
