"""Stage 1 (token merging) as invariants: DPC-KNN, segmentation, static/dynamic split, merge_video."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunevid.config import PruneVidConfig
from prunevid.stage1_merge import (
    Stage1Result,
    dpc_knn,
    make_contiguous,
    merge_video,
    segment_frames,
    static_similarity,
)

FAST = settings(max_examples=40, deadline=None)


def _blobs(
    sizes: list[int], channels: int, seed: int, spread: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs, shuffled: ``([N, C] float32 points, [N] blob id)``."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), channels, generator=gen) * 10
    blob = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    points = centres[blob] + spread * torch.randn(len(blob), channels, generator=gen)
    perm = torch.randperm(len(blob), generator=gen)
    return points[perm], blob[perm]


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two label vectors define the same partition (equal up to renaming)."""
    return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all())


def _grid_positions(t: int, h: int, w: int, t_scale: int = 2) -> torch.Tensor:
    """``[3, T'*h*w]`` int64 M-RoPE-like positions (t scaled, as the stock model does)."""
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt * t_scale, hh, ww]).reshape(3, -1) + 5


def _check_result(
    result: Stage1Result,
    features: torch.Tensor,
    grid: tuple[int, int, int],
    positions: torch.Tensor,
    static_time: str = "first",
) -> None:
    """Every invariant merge_video promises, whatever merged (static tokens where ``static_time`` says)."""
    n = features.shape[0]
    n_pos = grid[1] * grid[2]
    n_out = result.num_tokens
    assert 1 <= n_out <= n
    assert result.features.dtype == features.dtype and result.features.shape == (n_out, features.shape[1])
    # every source token in exactly one merged token, and every merged token has a source
    assert result.assignment.shape == (n,) and result.assignment.dtype == torch.int64
    assert int(result.assignment.min()) >= 0 and int(result.assignment.max()) < n_out
    counts = torch.bincount(result.assignment, minlength=n_out)
    assert bool((counts > 0).all())
    # merged feature == mean of its sources
    sums = torch.zeros(n_out, features.shape[1], dtype=torch.float64).index_add_(
        0, result.assignment, features.double()
    )
    # float32 to 1e-6; narrower dtypes to the one rounding of the float32 mean
    rtol = 1e-6 if features.dtype == torch.float32 else torch.finfo(features.dtype).eps
    torch.testing.assert_close(result.features.double(), sums / counts[:, None], atol=1e-6, rtol=rtol)
    # a single-source token is bit-identical to its source
    single = counts == 1
    assert torch.equal(result.features[single], features[result.representative[single]])
    # representatives: sorted grid order, own token, positions taken from them
    assert bool((result.representative[1:] > result.representative[:-1]).all())
    assert torch.equal(result.assignment[result.representative], torch.arange(n_out))
    assert torch.equal(result.positions, positions[:, result.representative])
    assert torch.equal(result.frame_index, result.representative // n_pos)
    # segments
    seg = result.frame_segments
    assert seg.shape == (grid[0],) and int(seg[0]) == 0
    assert bool(((seg[1:] - seg[:-1]) >= 0).all() and ((seg[1:] - seg[:-1]) <= 1).all())
    assert torch.equal(result.segment_id, seg[result.frame_index])
    # sources of a token: static ones cover the whole segment at each of their positions (its first or
    # second half with static_time="ends"), dynamic ones lie in the representative's frame
    source_frame = torch.arange(n) // n_pos
    for j in range(n_out):
        frames = source_frame[result.assignment == j]
        if bool(result.is_static[j]):
            seg_frames = (seg == result.segment_id[j]).nonzero().squeeze(1)
            at = int(result.frame_index[j])
            assert len(seg_frames) >= 2
            if static_time == "ends":
                half = len(seg_frames) // 2
                assert at in (int(seg_frames[0]), int(seg_frames[-1]))
                part = seg_frames[:half] if at == int(seg_frames[0]) else seg_frames[half:]
            else:
                part = seg_frames
                middle = static_time == "middle"
                assert at == int(seg_frames[(len(seg_frames) - 1) // 2 if middle else 0])
            assert torch.equal(torch.unique(frames), part)
            assert len(frames) % len(part) == 0
        else:
            assert bool((frames == result.frame_index[j]).all())


# --------------------------------------------------------------------------------------------------
# DPC-KNN


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpc_recovers_separated_blobs(seed: int) -> None:
    points, blob = _blobs([9, 12, 8, 10], channels=16, seed=seed)
    labels, centers = dpc_knn(points, 4, k=7)
    assert labels.dtype == torch.int64 and centers.dtype == torch.int64
    assert _same_partition(labels, blob)
    assert torch.equal(labels[centers], torch.arange(4))
    assert bool((centers[1:] > centers[:-1]).all())


def test_dpc_identity_when_enough_clusters() -> None:
    points = torch.randn(6, 5)
    for n_clusters in (6, 7, 100):
        labels, centers = dpc_knn(points, n_clusters, k=3)
        assert torch.equal(labels, torch.arange(6)) and torch.equal(centers, torch.arange(6))


def test_dpc_deterministic_and_dtype_independent() -> None:
    points = torch.randn(40, 24, generator=torch.Generator().manual_seed(3))
    first, second = dpc_knn(points, 7, k=5), dpc_knn(points, 7, k=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    blobs, _ = _blobs([10, 10, 10], channels=32, seed=4)
    assert torch.equal(dpc_knn(blobs, 3, 7)[0], dpc_knn(blobs.bfloat16(), 3, 7)[0])


def test_dpc_ties_break_by_index() -> None:
    """All points equal: densities and scores all tie, so the lowest indices become the centres and
    every other point joins the lowest centre."""
    labels, centers = dpc_knn(torch.ones(7, 3), 3, k=2)
    assert torch.equal(centers, torch.arange(3))
    assert torch.equal(labels, torch.tensor([0, 1, 2, 0, 0, 0, 0]))


def test_dpc_k_is_clipped() -> None:
    points = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(dpc_knn(points, 2, k=50)[0], dpc_knn(points, 2, k=5)[0])


def test_dpc_batched_equals_per_item() -> None:
    points = torch.randn(3, 30, 12, generator=torch.Generator().manual_seed(6))
    labels, centers = dpc_knn(points, 5, k=4)
    assert labels.shape == (3, 30) and centers.shape == (3, 5)
    for b in range(3):
        one_labels, one_centers = dpc_knn(points[b], 5, k=4)
        assert torch.equal(labels[b], one_labels) and torch.equal(centers[b], one_centers)


@FAST
@given(
    n=st.integers(1, 25),
    c=st.integers(1, 6),
    m=st.integers(1, 30),
    k=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    dup=st.booleans(),
)
def test_dpc_output_contract(n: int, c: int, m: int, k: int, seed: int, dup: bool) -> None:
    points = torch.randn(n, c, generator=torch.Generator().manual_seed(seed))
    if dup:  # duplicates make ties in density, score and distance
        points = points[torch.arange(n) // 2]
    labels, centers = dpc_knn(points, m, k)
    m_eff = min(m, n)
    assert centers.shape == (m_eff,) and labels.shape == (n,)
    assert bool((centers[1:] > centers[:-1]).all())
    assert torch.equal(labels[centers], torch.arange(m_eff))
    assert int(labels.min()) >= 0 and int(labels.max()) < m_eff
    # each point's centre is a nearest centre
    dist = torch.cdist(points.double(), points[centers].double())
    own = dist.gather(1, labels[:, None]).squeeze(1)
    assert bool((own <= dist.min(1).values + 1e-4).all())


def test_dpc_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        dpc_knn(torch.randn(5), 2, 3)
    with pytest.raises(ValueError):
        dpc_knn(torch.randn(5, 2), 0, 3)
    with pytest.raises(ValueError):
        dpc_knn(torch.randn(5, 2), 2, 0)


# --------------------------------------------------------------------------------------------------
# Temporal segmentation


def test_two_scene_cuts_give_three_segments() -> None:
    gen = torch.Generator().manual_seed(7)
    scenes = torch.randn(3, 64, generator=gen) * 0.7  # D^2 / C about 1 between scenes
    frames = scenes[torch.tensor([0] * 5 + [1] * 4 + [2] * 3)] + 0.05 * torch.randn(12, 64, generator=gen)
    segments = segment_frames(frames, 0.25, k=7)
    assert torch.equal(segments, torch.tensor([0] * 5 + [1] * 4 + [2] * 3))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # label 1 has only a singleton run: erased, joins the longer neighbour (left, 3 > 2)
        ([0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 1]),
        # label 1 only has singleton runs: both erased; first between equal 0-runs (tie -> left),
        # second between a 0-run of 2 and a 2-run of 3 (right is longer)
        ([0, 0, 1, 0, 0, 1, 2, 2, 2], [0, 0, 0, 0, 0, 1, 1, 1, 1]),
        # shorter runs erased (0's run of 1, 1's run of 2); the two erased runs form one block between
        # a 0-run of 3 and a 1-run of 3: tie -> left
        ([0, 0, 0, 1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1, 1]),
        # runs tied for a label's longest both stay
        ([0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 2, 2]),
        # tie to the left
        ([3, 3, 1, 2, 2], [0, 0, 0, 1, 1]),
        # an erased run with only a right neighbour
        ([1, 0, 0, 0, 2, 2], [0, 0, 0, 0, 1, 1]),
        # no neighbour at all: everything erased -> label 0, one segment
        ([2, 1, 0], [0, 0, 0]),
        ([5], [0]),
    ],
)
def test_make_contiguous_rules(labels: list[int], expected: list[int]) -> None:
    assert make_contiguous(torch.tensor(labels)).tolist() == expected


def _reference_contiguous(labels: list[int]) -> list[int]:
    """Plain-Python statement of make_contiguous's documented rules, as an independent oracle."""
    runs: list[list[int]] = []  # [label, length]
    for lab in labels:
        if runs and runs[-1][0] == lab:
            runs[-1][1] += 1
        else:
            runs.append([lab, 1])
    longest: dict[int, int] = {}
    for lab, length in runs:
        longest[lab] = max(longest.get(lab, 0), length)
    kept = [length == longest[lab] and longest[lab] > 1 for lab, length in runs]
    out: list[int] = []
    for i, (lab, length) in enumerate(runs):
        if not kept[i]:
            left = next((j for j in range(i - 1, -1, -1) if kept[j]), None)
            right = next((j for j in range(i + 1, len(runs)) if kept[j]), None)
            if left is not None and (right is None or runs[left][1] >= runs[right][1]):
                lab = runs[left][0]
            elif right is not None:
                lab = runs[right][0]
            else:
                lab = 0
        out += [lab] * length
    segments = [0]
    for a, b in zip(out, out[1:], strict=False):
        segments.append(segments[-1] + (a != b))
    return segments


@FAST
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40))
def test_make_contiguous_property(labels: list[int]) -> None:
    segments = make_contiguous(torch.tensor(labels))
    assert segments.dtype == torch.int64 and int(segments[0]) == 0
    steps = segments[1:] - segments[:-1]
    assert bool(((steps == 0) | (steps == 1)).all())
    assert segments.tolist() == _reference_contiguous(labels)


# --------------------------------------------------------------------------------------------------
# Static / dynamic


def test_static_similarity_values() -> None:
    base = torch.randn(1, 3, 8)
    assert torch.allclose(static_similarity(base.expand(4, 3, 8) * 2.0), torch.ones(3))
    eye = torch.eye(4)[:, None, :]  # four mutually orthogonal frames at one position
    assert torch.allclose(static_similarity(eye), torch.zeros(1), atol=1e-7)
    single = static_similarity(torch.randn(1, 5, 8))
    assert single.dtype == torch.float32 and bool(torch.isinf(single).all() and (single < 0).all())


def _cos_half_video(tau: float) -> Stage1Result:
    """Two frames, one position, whose cosine is exactly 0.5 in float32: (1,1,1,1)/2 vs (1,1,1,-1)/2."""
    features = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, -1.0]])
    assert float(static_similarity(features[:, None, :])[0]) == 0.5
    config = PruneVidConfig(tau=tau, temporal_segment_ratio=0.5, cluster_ratio=1.0)
    return merge_video(features, (2, 1, 1), _grid_positions(2, 1, 1), config)


def test_static_threshold_is_strict() -> None:
    at_tau = _cos_half_video(0.5)
    assert at_tau.num_tokens == 2 and not bool(at_tau.is_static.any())
    below = _cos_half_video(0.4999)
    assert below.num_tokens == 1 and bool(below.is_static.all())
    torch.testing.assert_close(below.features[0], torch.tensor([0.75, 0.75, 0.75, -0.25]))


def test_constant_region_collapses_per_position() -> None:
    t, h, w, c = 4, 3, 4, 8
    gen = torch.Generator().manual_seed(8)
    video = torch.randn(1, h * w, c, generator=gen).repeat(t, 1, 1)
    moving = torch.tensor([0, 5, 6])  # these positions change every frame
    video[:, moving] = torch.randn(t, len(moving), c, generator=gen)
    features, positions = video.reshape(-1, c), _grid_positions(t, h, w)
    result = merge_video(features, (t, h, w), positions, PruneVidConfig(cluster_ratio=1.0))
    assert result.frame_segments.tolist() == [0, 0, 0, 0]
    n_static = h * w - len(moving)
    assert int(result.is_static.sum()) == n_static and result.num_tokens == n_static + t * len(moving)
    static_rep = result.representative[result.is_static]
    assert bool((static_rep < h * w).all())  # first frame
    torch.testing.assert_close(result.features[result.is_static], video[0, static_rep])
    _check_result(result, features, (t, h, w), positions)


def test_one_frame_video_is_all_dynamic() -> None:
    features = torch.randn(9, 4)
    config = PruneVidConfig(tau=-1.0, cluster_ratio=1.0)  # s = -inf is not > -1
    result = merge_video(features, (1, 3, 3), _grid_positions(1, 3, 3), config)
    assert not bool(result.is_static.any()) and torch.equal(result.features, features)


@pytest.mark.parametrize(("n_pos", "expected"), [(14, 28), (15, 14), (20, 20)])
def test_min_tokens_to_cluster_is_strict(n_pos: int, expected: int) -> None:
    """Two dynamic frames of n_pos tokens each: clustered into int(n * 0.5) only when n > 14."""
    features = torch.randn(2 * n_pos, 6, generator=torch.Generator().manual_seed(n_pos))
    config = PruneVidConfig(tau=1.0, temporal_segment_ratio=0.5, cluster_ratio=0.5)
    result = merge_video(features, (2, 1, n_pos), _grid_positions(2, 1, n_pos), config)
    assert result.num_tokens == expected
    _check_result(result, features, (2, 1, n_pos), _grid_positions(2, 1, n_pos))


# --------------------------------------------------------------------------------------------------
# merge_video invariants


def _structured_video(t: int, h: int, w: int, c: int, seed: int, noise: float) -> torch.Tensor:
    """``[T'*h*w, C]`` tokens: a background per scene (one cut halfway), noise, and changing positions."""
    gen = torch.Generator().manual_seed(seed)
    scene = (torch.arange(t) >= (t + 1) // 2).long()
    backgrounds = torch.randn(2, h * w, c, generator=gen)
    video = backgrounds[scene] + noise * torch.randn(t, h * w, c, generator=gen)
    moving = torch.rand(t, h * w, generator=gen) < 0.2
    video[moving] = torch.randn(int(moving.sum()), c, generator=gen)
    return video.reshape(-1, c)


@FAST
@given(
    t=st.integers(1, 6),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    c=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    noise=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    tau=st.sampled_from([-1.0, 0.0, 0.5, 0.8, 0.95, 1.0]),
    gamma=st.sampled_from([0.25, 0.5, 1.0]),
    beta=st.sampled_from([0.05, 0.3, 0.5, 1.0]),
    min_tokens=st.integers(0, 6),
    k=st.integers(1, 8),
)
def test_merge_video_invariants(
    t: int,
    h: int,
    w: int,
    c: int,
    seed: int,
    noise: float,
    tau: float,
    gamma: float,
    beta: float,
    min_tokens: int,
    k: int,
) -> None:
    features = _structured_video(t, h, w, c, seed, noise)
    positions = _grid_positions(t, h, w)
    config = PruneVidConfig(
        tau=tau,
        temporal_segment_ratio=gamma,
        cluster_ratio=beta,
        min_tokens_to_cluster=min_tokens,
        dpc_knn_k=k,
    )
    result = merge_video(features, (t, h, w), positions, config)
    _check_result(result, features, (t, h, w), positions)
    again = merge_video(features, (t, h, w), positions, config)
    assert torch.equal(again.features, result.features) and torch.equal(again.assignment, result.assignment)


@FAST
@given(
    t=st.integers(1, 6),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    c=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    tau=st.sampled_from([1.0, 1.5]),
)
def test_merging_nothing_is_identity(
    t: int, h: int, w: int, c: int, seed: int, dtype: torch.dtype, tau: float
) -> None:
    features = _structured_video(t, h, w, c, seed, 0.0).to(dtype)
    features[::3, 0] = -0.0  # bit-identical means -0.0 stays -0.0
    positions = _grid_positions(t, h, w)
    result = merge_video(features, (t, h, w), positions, PruneVidConfig(tau=tau, cluster_ratio=1.0))
    n = t * h * w
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(result.features.view(bits), features.view(bits))
    assert torch.equal(result.representative, torch.arange(n))
    assert torch.equal(result.assignment, torch.arange(n))
    assert torch.equal(result.positions, positions) and not bool(result.is_static.any())


@pytest.mark.parametrize("seed", [10, 13, 14])
def test_spatial_groups_cluster_as_alone(seed: int) -> None:
    """The padded all-groups DPC-KNN of merge_video gives, for each segment's static tokens and each
    frame's dynamic tokens, the clusters and centres that dpc_knn gives on that group alone."""
    t, h, w, c, k, min_tokens = 6, 5, 6, 12, 4, 3
    features = _structured_video(t, h, w, c, seed=seed, noise=0.3)
    config = PruneVidConfig(
        tau=0.8, temporal_segment_ratio=0.34, cluster_ratio=0.4, min_tokens_to_cluster=min_tokens, dpc_knn_k=k
    )
    result = merge_video(features, (t, h, w), _grid_positions(t, h, w), config)
    video = features.view(t, h * w, c)
    source_static = result.is_static[result.assignment].view(t, h * w)
    groups = []  # (grid indices of the group's representative slots, points)
    for s in range(int(result.frame_segments[-1]) + 1):
        frames = (result.frame_segments == s).nonzero().squeeze(1)
        where = source_static[frames[0]].nonzero().squeeze(1)
        groups.append((frames[0] * h * w + where, video[frames][:, where].mean(0)))
    for f in range(t):
        where = (~source_static[f]).nonzero().squeeze(1)
        groups.append((f * h * w + where, video[f, where]))
    clustered = []
    for grid_index, points in groups:
        n = len(grid_index)
        m = max(1, int(n * 0.4)) if n > min_tokens else n
        clustered.append(m < n)
        if n == 0:
            continue
        labels, centers = dpc_knn(points, m, k)
        merged = result.assignment[grid_index]
        assert _same_partition(labels, merged)
        assert torch.equal(result.representative[merged[centers]], grid_index[centers])
    n_segments = len(groups) - t
    assert any(clustered[:n_segments]) and sum(clustered) >= 3  # static and dynamic groups were clustered


def test_merge_video_paper_defaults_reduce() -> None:
    t, h, w, c = 8, 6, 6, 16
    features = _structured_video(t, h, w, c, seed=9, noise=0.1).bfloat16()
    positions = _grid_positions(t, h, w)
    result = merge_video(features, (t, h, w), positions, PruneVidConfig.preset("paper"))
    assert result.frame_segments.tolist() == [0] * 4 + [1] * 4
    assert bool(result.is_static.any()) and bool((~result.is_static).any())
    # token count: per segment int(0.5 * n_static), per frame int(0.5 * n_dynamic) (groups > 14 tokens)
    static_sources = result.is_static[result.assignment].view(t, h * w)
    n_static = [int(static_sources[4 * s].sum()) for s in (0, 1)]
    assert all(int(static_sources[f].sum()) == n_static[f // 4] for f in range(t))

    def kept(n: int) -> int:
        return max(1, int(n * 0.5)) if n > 14 else n

    expected = sum(kept(n) for n in n_static) + sum(kept(h * w - n_static[f // 4]) for f in range(t))
    assert result.num_tokens == expected < t * h * w // 2
    _check_result(result, features, (t, h, w), positions)


def test_merge_video_rejects_bad_inputs() -> None:
    config = PruneVidConfig()
    features, positions = torch.randn(8, 4), _grid_positions(2, 2, 2)
    with pytest.raises(ValueError, match="grid"):
        merge_video(features, (2, 2, 3), _grid_positions(2, 2, 3), config)
    with pytest.raises(ValueError, match="positions"):
        merge_video(features, (2, 2, 2), positions[:2], config)
    with pytest.raises(ValueError, match="positions"):
        merge_video(features, (2, 2, 2), positions.float(), config)
    with pytest.raises(ValueError, match="empty"):
        merge_video(torch.randn(0, 4), (0, 2, 2), torch.zeros(3, 0, dtype=torch.int64), config)
    with pytest.raises(ValueError, match="features"):
        merge_video(features[:, 0], (2, 2, 2), positions, config)
