"""Stage 2 pure functions: the question scorer and the per-group budgets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunevid.stage2_select import budget_groups, question_attention_scores, select_tokens


def reference_scores(query: torch.Tensor, key: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Full attention probabilities in float64, key heads repeated, then max-max (or mean-mean)."""
    group = query.shape[0] // key.shape[0]
    key = key.double().repeat_interleave(group, dim=0)
    probs = torch.softmax(query.double() @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1)
    if aggregation == "max":
        return probs.amax(dim=0).amax(dim=0)
    return probs.mean(dim=0).mean(dim=0)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (8, 1)])
def test_scores_equal_direct_reference(aggregation: str, heads: int, kv_heads: int) -> None:
    generator = torch.Generator().manual_seed(heads * 10 + kv_heads)
    query = torch.randn(heads, 5, 16, generator=generator)
    key = torch.randn(kv_heads, 37, 16, generator=generator)
    scores = question_attention_scores(query, key, aggregation)
    assert scores.dtype == torch.float32 and scores.shape == (37,)
    torch.testing.assert_close(
        scores.double(), reference_scores(query, key, aggregation), rtol=1e-5, atol=1e-7
    )


def test_scores_in_bf16_are_computed_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(4, 3, 16, generator=generator), torch.randn(2, 50, 16, generator=generator)
    from_bf16 = question_attention_scores(query.bfloat16(), key.bfloat16())
    reference = reference_scores(query.bfloat16().float(), key.bfloat16().float(), "max")
    torch.testing.assert_close(from_bf16.double(), reference, rtol=1e-5, atol=1e-7)


def test_head_chunking_does_not_change_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    query, key = torch.randn(8, 4, 16, generator=generator), torch.randn(2, 30, 16, generator=generator)
    whole = question_attention_scores(query, key, "mean")
    monkeypatch.setattr("prunevid.stage2_select._MAX_CHUNK_ELEMENTS", 4 * 30 * 3)  # 3 heads a chunk
    torch.testing.assert_close(question_attention_scores(query, key, "mean"), whole)
    assert torch.equal(
        question_attention_scores(query, key, "max"), question_attention_scores(query, key, "max")
    )


def test_scores_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        question_attention_scores(torch.randn(3, 2, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="at least one query row"):
        question_attention_scores(torch.randn(2, 0, 8), torch.randn(2, 5, 8))


def test_select_keeps_the_best_of_each_group() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # floor(0.5 * 4) = 2 per group: indices 1, 2 in group 0 and 4, 6 in group 1.
    assert select_tokens(scores, groups, 0.5).tolist() == [1, 2, 4, 6]


def test_select_keeps_at_least_one_per_group() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5])
    groups = torch.tensor([0, 1, 1])
    assert select_tokens(scores, groups, 0.1).tolist() == [0, 1]


def test_select_floor_is_exact_for_decimal_ratios() -> None:
    # 0.29 * 100 is 28.999999999999996 in binary floating point; the budget is still 29.
    assert len(select_tokens(torch.rand(100), torch.zeros(100, dtype=torch.long), 0.29)) == 29


def test_select_ties_go_to_the_earlier_token() -> None:
    scores = torch.ones(6)
    assert select_tokens(scores, torch.zeros(6, dtype=torch.long), 0.5).tolist() == [0, 1, 2]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=60),
    st.floats(0.01, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_select_budget_property(group_list: list[int], keep_ratio: float, seed: int) -> None:
    groups = torch.tensor(group_list)
    scores = torch.rand(len(group_list), generator=torch.Generator().manual_seed(seed))
    kept = select_tokens(scores, groups, keep_ratio)
    assert torch.equal(kept, torch.sort(kept).values) and len(torch.unique(kept)) == len(kept)
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        mine = kept[torch.isin(kept, members)]
        assert len(mine) == max(1, math.floor(keep_ratio * len(members) + 1e-9))
        # Every kept member scores at least as high as every dropped one.
        dropped = members[~torch.isin(members, mine)]
        if len(dropped):
            assert scores[mine].min() >= scores[dropped].max()


def test_keep_ratio_one_keeps_everything() -> None:
    groups = torch.tensor([0, 0, 1, 2, 2, 2])
    assert select_tokens(torch.rand(6), groups, 1.0).tolist() == list(range(6))


def test_budget_groups_without_stage1_are_frames() -> None:
    frames = torch.tensor([0, 0, 1, 1, 3])
    assert budget_groups(frames).tolist() == [0, 0, 1, 1, 2]


def test_budget_groups_split_static_segments_from_dynamic_frames() -> None:
    frame = torch.tensor([0, 0, 1, 0, 2, 2])
    segment = torch.tensor([0, 0, 0, 0, 1, 1])
    static = torch.tensor([True, False, False, True, True, False])
    groups = budget_groups(frame, segment, static)
    # static of segment 0: tokens 0 and 3; dynamic frame 0: token 1; frame 1: token 2;
    # static of segment 1: token 4; dynamic frame 2: token 5.
    assert groups[0] == groups[3]
    assert len({groups[i].item() for i in (0, 1, 2, 4, 5)}) == 5
