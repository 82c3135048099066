"""Issue 18's opt-in improvements: the consecutive static test, static tokens at their span's middle or at
both of its ends, Stage-2 coverage, the ``coverage`` preset, and the accuracy study's statistics. With their
defaults nothing of them runs, so ``paper`` stays the paper's method."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_stage1_merge import _check_result, _grid_positions, _structured_video

import prunevid.models.pruner as pruner_module
import prunevid.stage1_merge as stage1_module
from prunevid.config import PRESETS, PruneVidConfig
from prunevid.stage1_merge import consecutive_similarity, kcentre_padded, merge_video, static_similarity
from prunevid.stage2_select import select_tokens, select_tokens_covering

FAST = settings(max_examples=40, deadline=None)
OPT_IN_DEFAULTS = {
    "static_test": "mean",
    "static_time": "first",
    "stage2_coverage": 0.0,
    "spatial_merge": "dpc",
}


def _positions(t: int, h: int, w: int) -> torch.Tensor:
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt * 2, hh, ww]).reshape(3, -1)


# --------------------------------------------------------------------------------------------------
# Config


def test_defaults_are_the_papers_and_only_the_new_preset_opts_in() -> None:
    for name, config in PRESETS.items():
        opted = {k: getattr(config, k) for k in OPT_IN_DEFAULTS}
        if name == "coverage":
            assert opted != OPT_IN_DEFAULTS
            # Everything else is paper's stages: the improvements are the only difference in kind.
            paper = PruneVidConfig.preset("paper")
            assert (config.enable_stage1, config.enable_stage2, config.enable_cache_compression) == (
                paper.enable_stage1,
                paper.enable_stage2,
                paper.enable_cache_compression,
            )
        else:
            assert opted == OPT_IN_DEFAULTS, name


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("static_test", "min", "one of"),
        ("static_time", "last", "one of"),
        ("spatial_merge", "kmeans", "one of"),
        ("stage2_coverage", 1.5, r"\[0, 1\]"),
        ("stage2_coverage", -0.1, r"\[0, 1\]"),
        ("stage2_coverage", True, r"\[0, 1\]"),
    ],
)
def test_opt_in_fields_are_validated(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}={value!r} is invalid: allowed is .*{allowed}"):
        PruneVidConfig(**{field: value})


# --------------------------------------------------------------------------------------------------
# Stage 1: the consecutive static test


@FAST
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_consecutive_similarity_is_the_least_neighbour_cosine(w: int, n_pos: int, c: int, seed: int) -> None:
    frames = torch.randn(w, n_pos, c, generator=torch.Generator().manual_seed(seed))
    got = consecutive_similarity(frames)
    if w == 1:
        assert bool(torch.isinf(got).all() and (got < 0).all())
        return
    direct = torch.stack(
        [torch.nn.functional.cosine_similarity(frames[t], frames[t + 1], dim=-1) for t in range(w - 1)]
    ).amin(0)
    torch.testing.assert_close(got, direct, atol=1e-6, rtol=0)
    constant = frames[:1].expand(w, n_pos, c)
    torch.testing.assert_close(consecutive_similarity(constant), torch.ones(n_pos), atol=1e-6, rtol=0)


def _one_event_video(width: int = 8) -> torch.Tensor:
    """``[width, 1, 8]``: one position showing the same background in every frame but one, where an
    object (a vector at cosine 0.5 with the background) shows for a single frame."""
    background = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    thing = torch.tensor([0.5, math.sqrt(0.75), 0, 0, 0, 0, 0, 0])
    video = background.repeat(width, 1, 1)
    video[width // 2, 0] = thing
    return video


def test_one_frame_event_is_averaged_away_by_the_mean_but_not_by_the_consecutive_test() -> None:
    video = _one_event_video()
    mean, least = float(static_similarity(video)[0]), float(consecutive_similarity(video)[0])
    assert mean > 0.8 and least == pytest.approx(0.5)
    features, grid = video.reshape(-1, 8), (8, 1, 1)
    paper = PruneVidConfig(tau=0.8, temporal_segment_ratio=0.125, cluster_ratio=1.0)  # one segment
    collapsed = merge_video(features, grid, _positions(*grid), paper)
    assert collapsed.num_tokens == 1 and bool(collapsed.is_static.all())  # the object is gone
    kept = merge_video(features, grid, _positions(*grid), paper.replace(static_test="consecutive"))
    assert kept.num_tokens == 8 and not bool(kept.is_static.any())
    assert torch.equal(kept.features, features)  # every frame, the object's included


def test_paper_never_runs_the_opt_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an opt-in improvement ran under the paper's settings")

    monkeypatch.setattr(stage1_module, "_segment_min_consecutive", refuse)
    monkeypatch.setattr(stage1_module, "_kcentre_padded", refuse)
    monkeypatch.setattr(pruner_module, "select_tokens_covering", refuse)
    features = torch.randn(4 * 16, 8, generator=torch.Generator().manual_seed(0))
    merge_video(features, (4, 4, 4), _positions(4, 4, 4), PruneVidConfig.preset("paper"))
    with pytest.raises(AssertionError, match="opt-in"):
        merge_video(features, (4, 4, 4), _positions(4, 4, 4), PRESETS["coverage"])


# --------------------------------------------------------------------------------------------------
# Stage 1: static tokens at the middle of their span


def _static_but_one(t: int, side: int, seed: int, c: int = 6) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """A ``t x side x side`` video whose positions are static (up to noise) but one: ``(features [N, c], grid,
    positions [3, N])``."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(1, side * side, c, generator=gen).repeat(t, 1, 1)
    video[:, 0] = torch.randn(t, c, generator=gen)  # one position changes every frame
    video += 0.01 * torch.randn(video.shape, generator=gen)
    return video.reshape(-1, c), (t, side, side), _positions(t, side, side)


@FAST
@given(st.integers(2, 8), st.integers(1, 3), st.integers(0, 2**31 - 1), st.floats(0.1, 1.0))
def test_middle_time_moves_static_tokens_only(t: int, side: int, seed: int, cluster_ratio: float) -> None:
    features, grid, positions = _static_but_one(t, side, seed)
    config = PruneVidConfig(cluster_ratio=cluster_ratio, min_tokens_to_cluster=0, temporal_segment_ratio=0.5)
    first = merge_video(features, grid, positions, config)
    middle = merge_video(features, grid, positions, config.replace(static_time="middle"))
    # The same tokens, each static one moved to its segment's middle frame; the order stays (t, h, w).
    n_pos = side * side
    assert middle.num_tokens == first.num_tokens
    assert bool((middle.representative[1:] > middle.representative[:-1]).all())
    segment_len = torch.bincount(first.frame_segments)
    start = torch.cumsum(segment_len, 0) - segment_len

    def tokens(result: stage1_module.Stage1Result) -> dict[tuple, int]:
        """Token index by what it is: static (segment, slot) or dynamic (frame, slot)."""
        return {
            (bool(s), int(seg) if s else int(f), int(r) % n_pos): i
            for i, (s, seg, f, r) in enumerate(
                zip(
                    result.is_static,
                    result.segment_id,
                    result.frame_index,
                    result.representative,
                    strict=True,
                )
            )
        }

    before, after = tokens(first), tokens(middle)
    assert before.keys() == after.keys()
    for key, i in before.items():
        j = after[key]
        torch.testing.assert_close(middle.features[j], first.features[i])
        if key[0]:
            segment = int(first.segment_id[i])
            assert int(first.frame_index[i]) == int(start[segment])
            assert int(middle.frame_index[j]) == int(start[segment] + (segment_len[segment] - 1) // 2)
        else:
            assert int(middle.frame_index[j]) == int(first.frame_index[i])
        assert torch.equal(middle.positions[:, j], positions[:, middle.representative[j]])


@FAST
@given(st.integers(2, 8), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_ends_time_keeps_each_static_run_as_its_two_halves(t: int, side: int, seed: int) -> None:
    features, grid, positions = _static_but_one(t, side, seed)
    config = PruneVidConfig(cluster_ratio=1.0, temporal_segment_ratio=0.5)  # no spatial merge: exact halves
    first = merge_video(features, grid, positions, config)
    ends = merge_video(features, grid, positions, config.replace(static_time="ends"))
    _check_result(ends, features, grid, positions, "ends")
    assert torch.equal(ends.frame_segments, first.frame_segments)
    n_pos = side * side
    segment_len = torch.bincount(first.frame_segments)
    start = torch.cumsum(segment_len, 0) - segment_len
    frames = features.reshape(t, n_pos, -1)
    # The dynamic tokens are unchanged; each static token of the paper's collapse becomes two: the mean of its
    # segment's first half at the segment's first frame, that of its second half at the last frame.
    dynamic = (~first.is_static).nonzero().squeeze(1).tolist()
    expected = {int(first.representative[i]): first.features[i] for i in dynamic}
    for i in first.is_static.nonzero().squeeze(1).tolist():
        segment, slot = int(first.segment_id[i]), int(first.representative[i]) % n_pos
        begin, length = int(start[segment]), int(segment_len[segment])
        half = length // 2
        expected[begin * n_pos + slot] = frames[begin : begin + half, slot].mean(0)
        expected[(begin + length - 1) * n_pos + slot] = frames[begin + half : begin + length, slot].mean(0)
    assert sorted(expected) == ends.representative.tolist()
    assert int(ends.is_static.sum()) == 2 * int(first.is_static.sum())
    for j, r in enumerate(ends.representative.tolist()):
        torch.testing.assert_close(ends.features[j], expected[r])


# --------------------------------------------------------------------------------------------------
# Stage 1: k-centre spatial merge


def test_kcentre_merge_keeps_a_small_object_apart_where_dpc_averages_it_away() -> None:
    gen = torch.Generator().manual_seed(0)
    frame = 0.1 * torch.randn(1, 32, generator=gen) + 0.05 * torch.randn(64, 32, generator=gen)
    thing = torch.tensor([10, 11])  # a two-token object on an 8x8 background: fewer tokens than k = 7
    frame[thing] += 3.0
    features, grid = frame.repeat(4, 1), (4, 8, 8)  # four equal frames: every position is static
    paper = PruneVidConfig.preset("paper")
    dpc = merge_video(features, grid, _positions(*grid), paper)
    kcentre = merge_video(features, grid, _positions(*grid), paper.replace(spatial_merge="kcentre"))
    assert dpc.num_tokens == kcentre.num_tokens == 32
    # DPC-KNN: the object's tokens are no density peak; they join a background centre (more than the
    # object's 2 positions x 4 frames of sources in their merged token).
    assert int(torch.bincount(dpc.assignment)[dpc.assignment[thing]].min()) > 4 * len(thing)
    # k-centre: the object's tokens are far from the background, so they become centres of their own.
    assert bool((torch.bincount(kcentre.assignment)[kcentre.assignment[thing]] == 4).all())


@FAST
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=4),
    st.floats(0.05, 1.0),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
)
def test_kcentre_padded_contract(sizes: list[int], share: float, c: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    width = max(sizes)
    points = torch.randn(len(sizes), width, c, generator=gen)
    valid = torch.arange(width)[None, :] < torch.tensor(sizes)[:, None]
    wanted = torch.tensor([max(1, int(share * n)) for n in sizes])
    first = torch.tensor([int(torch.randint(n, (1,), generator=gen)) for n in sizes])
    d2 = torch.cdist(points, points).square()
    centre_of, is_centre = kcentre_padded(d2, valid, wanted, first)
    for g, n in enumerate(sizes):
        centres = torch.nonzero(is_centre[g]).flatten()
        assert len(centres) == int(wanted[g]) and bool(valid[g, centres].all())
        assert bool(is_centre[g, first[g]])
        members = torch.arange(n)
        assert bool(is_centre[g, centre_of[g, members]].all())
        nearest = d2[g][members][:, centres].min(1).values
        torch.testing.assert_close(d2[g, members, centre_of[g, members]], nearest)


@FAST
@given(
    t=st.integers(1, 6),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    noise=st.sampled_from([0.0, 0.1, 0.5]),
    tau=st.sampled_from([-1.0, 0.5, 0.8]),
    beta=st.sampled_from([0.05, 0.3, 0.5, 1.0]),
    static_test=st.sampled_from(["mean", "consecutive"]),
    static_time=st.sampled_from(["first", "middle", "ends"]),
    spatial_merge=st.sampled_from(["dpc", "kcentre"]),
)
def test_merge_video_invariants_hold_with_the_opt_ins(
    t: int,
    h: int,
    w: int,
    seed: int,
    noise: float,
    tau: float,
    beta: float,
    static_test: str,
    static_time: str,
    spatial_merge: str,
) -> None:
    features, positions = _structured_video(t, h, w, 4, seed, noise), _grid_positions(t, h, w)
    config = PruneVidConfig(
        tau=tau,
        temporal_segment_ratio=0.5,
        cluster_ratio=beta,
        min_tokens_to_cluster=0,
        static_test=static_test,
        static_time=static_time,
        spatial_merge=spatial_merge,
    )
    result = merge_video(features, (t, h, w), positions, config)
    _check_result(result, features, (t, h, w), positions, static_time)


# --------------------------------------------------------------------------------------------------
# Stage 2: coverage


def _dense(groups: list[int]) -> torch.Tensor:
    return torch.unique(torch.tensor(groups), return_inverse=True)[1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=50),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_coverage_keeps_the_papers_budget(
    group_list: list[int], keep: float, coverage: float, seed: int
) -> None:
    groups = _dense(group_list)
    gen = torch.Generator().manual_seed(seed)
    scores, features = torch.rand(len(groups), generator=gen), torch.randn(len(groups), 5, generator=gen)
    kept = select_tokens_covering(scores, groups, keep, features, coverage)
    paper = select_tokens(scores, groups, keep)
    assert torch.equal(kept, torch.sort(kept).values) and len(torch.unique(kept)) == len(kept)
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        assert int(torch.isin(kept, members).sum()) == int(torch.isin(paper, members).sum())
    # The best-scored token of every group is kept either way (it covers its own cluster or is the best).
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        assert int(members[scores[members].argmax()]) in kept.tolist()


def test_coverage_keeps_a_token_of_every_distinct_thing() -> None:
    # One group: 12 background tokens the question attends to most, and two small "objects" of 2 tokens.
    features = torch.cat([torch.zeros(12, 4), torch.full((2, 4), 10.0), torch.full((2, 4), -10.0)])
    features += 0.01 * torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    scores = torch.cat([torch.linspace(1.0, 0.5, 12), torch.full((4,), 0.1)])
    groups = torch.zeros(16, dtype=torch.long)
    paper = select_tokens(scores, groups, 0.25)  # 4 tokens, all background
    assert bool((paper < 12).all())
    covered = select_tokens_covering(scores, groups, 0.25, features, coverage=0.75)  # 3 clusters first
    assert len(covered) == 4
    assert bool(((covered >= 12) & (covered < 14)).any()) and bool((covered >= 14).any())
    assert 0 in covered.tolist()  # the best background token still leads


def test_coverage_rejects_bad_arguments() -> None:
    scores, groups = torch.rand(4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="features must be"):
        select_tokens_covering(scores, groups, 0.5, torch.randn(3, 2), 0.5)
    with pytest.raises(ValueError, match="coverage must be"):
        select_tokens_covering(scores, groups, 0.5, torch.randn(4, 2), 0.0)


def test_coverage_runs_in_the_model(tiny_model, tiny_processor) -> None:  # noqa: ANN001
    from prunevid.evaluation import ask_batch
    from prunevid.qwen2_5_vl import attach
    from prunevid.synthetic_qa import make_sample

    clip = make_sample(1, 3, size=112, num_frames=8).clip
    config = PRESETS["coverage"]
    with attach(tiny_model, config):
        (answer,) = ask_batch(tiny_model, tiny_processor, [clip], ["How many shapes?"], max_new_tokens=2)
    stats = answer.stats.samples[0].videos[0]
    assert stats.tokens_after_stage2 < stats.tokens_after_stage1 <= stats.tokens_in
    assert dataclasses.asdict(config)["stage2_coverage"] > 0
