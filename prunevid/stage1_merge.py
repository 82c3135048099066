"""PruneVid Stage 1: spatio-temporal token merging of one video, before the LLM.

Pure tensor functions (torch only, no model): temporal segmentation by DPC-KNN over frame means,
static/dynamic split by mean cosine similarity (opt-in: the least consecutive one), temporal collapse of
static positions, spatial DPC-KNN per segment (static tokens) and per frame (dynamic tokens). See
``spec/prunevid-algorithm.md``, Stage 1.

Determinism: there is no randomness anywhere. Every tie is broken by index (density ties, score ties,
nearest-centre ties), sorts are stable, and reductions avoid atomics, so a run repeats bit for bit on
the same device.

Precision: distances, similarities and means are computed in float32 whatever the input dtype. They
use matrix products, so ``torch.backends.cuda.matmul.allow_tf32`` matters for float32 inputs and for
segment means; bf16/fp16 tokens are exact in TF32, so for them the token-level products do not change.

GPU cost: :func:`merge_video` waits for the device twice (for the segment ids, then for the static
counts that decide the output shape; its small uploads are issued right after, while the queue is
empty); everything else is a fixed number of batched kernels, with one batched distance matrix for all
segments and frames together. Non-finite features are not supported.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # the config is only read, so importing this module needs nothing but torch
    from prunevid.config import PruneVidConfig

__all__ = [
    "Stage1Result",
    "consecutive_similarity",
    "dpc_knn",
    "kcentre_padded",
    "make_contiguous",
    "merge_video",
    "segment_frames",
    "static_similarity",
]


@dataclass(frozen=True, eq=False)
class Stage1Result:
    """The merged tokens of one video (``N`` source tokens in, ``N'`` merged tokens out).

    Attributes:
        features: ``[N', C]`` input dtype. Each row is the plain mean of all its source tokens
            (accumulated in float32); a token with a single source is bit-identical to it.
        positions: ``[3, N']`` integer, the M-RoPE (t, h, w) position of the representative,
            ``positions_in[:, representative]``.
        representative: ``[N']`` int64, grid index ``t * h' * w' + row * w' + col`` of the token's
            representative source (its DPC centre; for a static token, the centre's position in the
            first frame of its segment, or its middle frame with ``static_time="middle"``; with
            ``static_time="ends"`` the first frame for the segment's first half, the last for its second).
            Strictly increasing: the output is in grid (t, h, w) order.
        assignment: ``[N]`` int64, for each source token the index in ``[0, N')`` of the merged token that
            contains it. Every source token is in exactly one merged token, and
            ``assignment[representative] == arange(N')``.
        segment_id: ``[N']`` int64, the temporal segment of each merged token.
        is_static: ``[N']`` bool, whether the token merges a static position over its whole segment (over
            one half of it with ``static_time="ends"``).
        frame_index: ``[N']`` int64, the grid frame (t index) of the representative.
        frame_segments: ``[T']`` int64, the segment id of each frame: 0, non-decreasing, steps of 1.

    Invariant: when nothing merges (no static position, e.g. ``tau >= 1``, and no spatial clustering,
    e.g. ``cluster_ratio = 1``) the output is the input: features bit-identical,
    ``representative == assignment == arange(N)``, positions unchanged.
    """

    features: Tensor
    positions: Tensor
    representative: Tensor
    assignment: Tensor
    segment_id: Tensor
    is_static: Tensor
    frame_index: Tensor
    frame_segments: Tensor

    @property
    def num_tokens(self) -> int:
        """``N'``, the number of merged tokens."""
        return int(self.features.shape[0])


# --------------------------------------------------------------------------------------------------
# DPC-KNN


def dpc_knn(x: Tensor, n_clusters: int, k: int) -> tuple[Tensor, Tensor]:
    """Density-peaks clustering with k nearest neighbours (deterministic).

    Args:
        x: ``[N, C]`` or batched ``[B, N, C]`` points, any real dtype (computed in float32).
        n_clusters: wanted clusters, ``>= 1``; ``m = min(n_clusters, N)`` clusters are made.
        k: neighbours for the density, ``>= 1``, clipped to ``N`` (the point itself counts).

    Returns:
        ``(labels, centers)``: ``labels [.., N]`` int64 in ``[0, m)``; ``centers [.., m]`` int64 indices
        into ``N``, strictly increasing, with ``labels[centers[j]] == j``. ``m == N`` gives
        ``labels == centers == arange(N)``.

    ``D = cdist(x, x) / sqrt(C)``; ``rho_i = exp(-mean of D_ij^2 over the k nearest j)`` (compared in
    the log domain, which orders exactly as rho does); density ties are broken by index (the lower
    index counts as denser); ``delta_i`` is the distance to the nearest
    denser point (the densest point: its largest distance); the ``m`` largest ``rho * delta`` are the
    centres (ties: lower index first); every other point joins its nearest centre (ties: lower index).
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"dpc_knn expects x of shape [N, C] or [B, N, C], got {tuple(x.shape)}")
    if n_clusters < 1 or k < 1:
        raise ValueError(f"dpc_knn needs n_clusters >= 1 and k >= 1, got n_clusters={n_clusters}, k={k}")
    points = x if x.dim() == 3 else x.unsqueeze(0)
    batch, n_points, channels = points.shape
    m = min(n_clusters, n_points)
    index = torch.arange(n_points, device=x.device)
    if m == n_points:
        labels = index.expand(batch, n_points).clone()
        centers = labels.clone()
    else:
        if channels == 0:
            raise ValueError("dpc_knn needs at least one channel to cluster")
        valid = torch.ones(batch, n_points, dtype=torch.bool, device=x.device)
        wanted = torch.full((batch,), m, dtype=torch.int64, device=x.device)
        centre_of, is_centre = _dpc_padded(points.float(), valid, wanted, k)
        # Canonical numbering: cluster j is the one whose centre has the j-th smallest index.
        rank = is_centre.long().cumsum(1) - 1
        labels = rank.gather(1, centre_of)
        centers = torch.where(is_centre, index, n_points).sort(dim=1).values[:, :m]
    if x.dim() == 2:
        return labels[0], centers[0]
    return labels, centers


def _pairwise_sq_dist(points: Tensor) -> Tensor:
    """Squared distances divided by ``C``: ``[B, N, C]`` float32 -> ``[B, N, N]`` float32.

    Exactly symmetric with an exact zero diagonal. Points are centred first because the Gram-matrix
    formula loses precision when all points share a large common component, which vision features
    often do; distances do not change under translation. Squared norms are taken from the Gram
    diagonal (same kernel, same rounding), so identical points come out at distance 0.
    """
    channels = points.shape[-1]
    centred = points - points.mean(dim=1, keepdim=True)
    gram = torch.bmm(centred, centred.transpose(1, 2))
    sq_norm = gram.diagonal(dim1=1, dim2=2)
    d2 = sq_norm[:, :, None] + sq_norm[:, None, :] - 2.0 * gram
    d2 = (0.5 * (d2 + d2.transpose(1, 2))).clamp_(min=0.0)
    d2.diagonal(dim1=1, dim2=2).zero_()
    return d2 / channels


def _dpc_padded(points: Tensor, valid: Tensor, n_centres: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """DPC-KNN on a batch of groups of different sizes, padded to one length ``N``.

    Args:
        points: ``[G, N, C]`` float32; rows where ``valid`` is False are ignored (any finite values).
        valid: ``[G, N]`` bool, the members of each group.
        n_centres: ``[G]`` int64, centres wanted per group, ``<=`` its number of valid points.
        k: neighbours for the density, clipped per group to its number of valid points.

    Returns:
        ``(centre_of [G, N] int64, is_centre [G, N] bool)``: for each valid point the index (in ``N``) of
        its centre (itself for a centre); ``is_centre`` has exactly ``n_centres[g]`` True per group.
        Values at invalid points are meaningless.

    Ties are broken by slot index everywhere, which orders a group's members as compacting them would,
    so each group clusters as it would alone (up to float rounding of the distances).
    """
    n_groups, n_slots, _ = points.shape
    index = torch.arange(n_slots, device=points.device)
    d2 = _pairwise_sq_dist(points)
    other_valid = valid[:, None, :]
    n_valid = valid.sum(1)

    # log rho = -mean squared distance to the k nearest (self included). Comparing log rho is comparing
    # rho (exp is monotone), and it cannot underflow to 0 the way exp does for features of large scale,
    # which would turn every density comparison into a tie.
    k_eff = n_valid.clamp(min=1, max=k)
    nearest = d2.masked_fill(~other_valid, math.inf).topk(min(k, n_slots), dim=-1, largest=False).values
    in_knn = index[: nearest.shape[-1]] < k_eff[:, None, None]
    log_rho = -nearest.masked_fill(~in_knn, 0.0).sum(-1) / k_eff[:, None]

    # "j is denser than i": a strict total order, the lower index winning equal densities. This is the
    # deterministic tie-break: exact (no epsilon added to rho), so it changes nothing without ties.
    denser = (log_rho[:, None, :] > log_rho[:, :, None]) | (
        (log_rho[:, None, :] == log_rho[:, :, None]) & (index[None, :] < index[:, None])
    )
    denser &= other_valid
    dist = d2.sqrt()
    delta = dist.masked_fill(~denser, math.inf).amin(-1)
    farthest = dist.masked_fill(~other_valid, 0.0).amax(-1)
    delta = torch.where(denser.any(-1), delta, farthest)

    # Centres: the largest rho * delta, compared as log rho + log delta (delta = 0 -> -inf, a tie with
    # every other duplicate, resolved by the stable sort). Invalid slots are skipped by counting only
    # valid ones in score order, since they cannot be given a score below -inf.
    score = log_rho + delta.log()
    order = score.argsort(dim=-1, descending=True, stable=True)
    valid_sorted = valid.gather(1, order)
    take = valid_sorted & (valid_sorted.long().cumsum(1) <= n_centres[:, None])
    is_centre = torch.zeros_like(valid).scatter_(1, order, take)

    # argmin returns the first minimum, i.e. the lower centre index on ties.
    centre_of = dist.masked_fill(~is_centre[:, None, :], math.inf).argmin(-1)
    centre_of = torch.where(is_centre, index, centre_of)
    return centre_of, is_centre


def kcentre_padded(d2: Tensor, valid: Tensor, n_centres: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy k-centre (farthest-point) clustering of a batch of padded groups.

    The opt-in alternative to DPC-KNN (not the paper's): centre 1 is ``first``; each next centre is the
    member farthest from every centre so far (ties: the lower index); every member joins its nearest centre
    (ties: the lower index). A group of tokens that differ from the rest, however few (a small object on
    a background), gets a centre of its own as soon as it is the farthest, which DPC-KNN's density
    (the mean distance to ``k`` neighbours) denies a cluster smaller than ``k``.

    Args:
        d2: ``[G, N, N]`` float32 distances (or squared distances: the order is the same) between slots.
        valid: ``[G, N]`` bool, the members of each group.
        n_centres: ``[G]`` int64, centres wanted per group, at most its number of members (0 for a group
            without members).
        first: ``[G]`` int64, the slot of each group's first centre (a member, if it has any).

    Returns:
        ``(centre_of [G, N] int64, is_centre [G, N] bool)`` as :func:`_dpc_padded`: for each member the slot
        of its centre (itself for a centre); values at invalid slots are meaningless.
    """
    n_groups, n_slots = valid.shape
    rows = torch.arange(n_groups, device=valid.device)
    wanted = n_centres.to(valid.device)
    is_centre = torch.zeros_like(valid)
    is_centre[rows, first] = wanted > 0  # a group that wants no centre (no members) gets none
    nearest = d2[rows, first]  # [G, N] distance to the nearest centre so far
    for step in range(1, int(n_centres.max()) if n_slots else 0):
        farthest = nearest.masked_fill(~valid | is_centre, -1.0).argmax(1)
        grow = step < wanted
        is_centre[rows[grow], farthest[grow]] = True
        nearest = torch.where(grow[:, None], torch.minimum(nearest, d2[rows, farthest]), nearest)
    centre_of = d2.masked_fill(~is_centre[:, None, :], math.inf).argmin(-1)
    centre_of = torch.where(is_centre, torch.arange(n_slots, device=valid.device), centre_of)
    return centre_of, is_centre


def _kcentre_padded(points: Tensor, valid: Tensor, n_centres: Tensor) -> tuple[Tensor, Tensor]:
    """Stage 1's opt-in spatial merge: :func:`kcentre_padded` on ``[G, N, C]`` float32 ``points``, the
    first centre of each group being its member nearest to the group's mean (its typical token)."""
    d2 = _pairwise_sq_dist(points)
    weight = valid.float()
    mean = (points * weight[..., None]).sum(1) / weight.sum(1).clamp(min=1)[:, None]
    to_mean = (points - mean[:, None, :]).square().sum(-1).masked_fill(~valid, math.inf)
    return kcentre_padded(d2, valid, n_centres, to_mean.argmin(1))


# --------------------------------------------------------------------------------------------------
# 1a. Temporal segmentation


def make_contiguous(labels: Tensor) -> Tensor:
    """Turn per-frame cluster labels into contiguous segments in time order.

    Args:
        labels: ``[T']`` integer cluster label per frame.

    Returns:
        ``[T']`` int64 segment id per frame: starts at 0, non-decreasing, steps of 0 or +1.

    Rules (spec 1a.3), with "neighbouring run" made precise:

    1. Split the labels into runs of consecutive equal labels.
    2. A label all of whose runs have length 1 is erased. Otherwise every run of that label shorter
       than its longest run is erased; runs tied for the longest stay.
    3. Consecutive erased runs form one erased block. Its neighbours are the kept runs immediately left
       and right of the block; the block takes the label of the longer of the two (original run
       lengths; tie: the left one); with one neighbour, that one's label; with none (everything was
       erased), label 0.
    4. Segments = maximal runs of equal labels after filling, numbered 0, 1, ... in time order.

    Treating an erased block as a whole makes the result independent of processing order.
    """
    if labels.dim() != 1:
        raise ValueError(f"make_contiguous expects labels of shape [T'], got {tuple(labels.shape)}")
    n_frames = labels.numel()
    if n_frames == 0:
        return torch.zeros(0, dtype=torch.int64, device=labels.device)
    labels = labels.long()
    device = labels.device
    is_start = torch.ones(n_frames, dtype=torch.bool, device=device)
    is_start[1:] = labels[1:] != labels[:-1]
    run_of_frame = is_start.long().cumsum(0) - 1
    starts = is_start.nonzero().squeeze(1)
    n_runs = starts.numel()
    run_len = torch.diff(starts, append=starts.new_tensor([n_frames]))
    run_label = labels[starts]

    _, label_id = torch.unique(run_label, return_inverse=True)
    longest = torch.zeros(int(label_id.max()) + 1, dtype=torch.int64, device=device)
    longest = longest.scatter_reduce(0, label_id, run_len, reduce="amax", include_self=False)[label_id]
    kept = (run_len == longest) & (longest > 1)

    # Nearest kept run at or before / at or after each run; for an erased run these are its block's
    # neighbours. -1 / n_runs mean "none".
    run_index = torch.arange(n_runs, device=device)
    left = torch.where(kept, run_index, -1).cummax(0).values
    right = torch.where(kept, run_index, n_runs).flip(0).cummin(0).values.flip(0)
    has_left, has_right = left >= 0, right < n_runs
    left_c, right_c = left.clamp(min=0), right.clamp(max=n_runs - 1)
    use_left = has_left & (~has_right | (run_len[left_c] >= run_len[right_c]))
    fill = torch.where(use_left, run_label[left_c], torch.where(has_right, run_label[right_c], 0))
    frame_label = torch.where(kept, run_label, fill)[run_of_frame]

    segment = torch.zeros(n_frames, dtype=torch.int64, device=device)
    segment[1:] = (frame_label[1:] != frame_label[:-1]).long().cumsum(0)
    return segment


def segment_frames(frame_features: Tensor, temporal_segment_ratio: float, k: int) -> Tensor:
    """Temporal segments of a video from its frame descriptors.

    Args:
        frame_features: ``[T', C]`` any real dtype, the mean of each frame's tokens.
        temporal_segment_ratio: gamma in ``(0, 1]``; DPC-KNN makes ``max(1, int(T' * gamma))`` clusters.
        k: DPC-KNN neighbours.

    Returns:
        ``[T']`` int64 segment id per frame (see :func:`make_contiguous`), on the input's device.
    """
    return _segment_frames_cpu(frame_features, temporal_segment_ratio, k).to(frame_features.device)


def _segment_frames_cpu(frame_features: Tensor, temporal_segment_ratio: float, k: int) -> Tensor:
    """:func:`segment_frames` returning a CPU tensor: the clustering runs on the input's device, the
    contiguity refinement (a few dozen ops on ``T'`` integers) on the host, which needs the segment
    layout anyway."""
    if frame_features.dim() != 2 or frame_features.shape[0] == 0:
        raise ValueError(f"frame_features must be [T', C] with T' >= 1, got {tuple(frame_features.shape)}")
    if not 0.0 < temporal_segment_ratio <= 1.0:
        raise ValueError(f"temporal_segment_ratio must be in (0, 1], got {temporal_segment_ratio}")
    n_segments = max(1, int(frame_features.shape[0] * temporal_segment_ratio))
    labels, _ = dpc_knn(frame_features, n_segments, k)
    return make_contiguous(labels.cpu())


# --------------------------------------------------------------------------------------------------
# 1b. Static / dynamic split


def static_similarity(segment_tokens: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of each spatial position across the frames of one segment.

    Args:
        segment_tokens: ``[W, L, C]`` any real dtype, the ``W >= 1`` frames of a segment.

    Returns:
        ``[L]`` float32, ``s_l = sum over ordered pairs t != t' of cos(x_tl, x_t'l) / (W (W - 1))``,
        clamped to ``[-1, 1]``. A one-frame segment has no pairs: every ``s_l`` is ``-inf``, so no
        threshold makes it static. A zero vector has cosine 0 with everything.
    """
    if segment_tokens.dim() != 3 or segment_tokens.shape[0] == 0:
        raise ValueError(f"segment_tokens must be [W, L, C] with W >= 1, got {tuple(segment_tokens.shape)}")
    frames = segment_tokens.float()
    membership = torch.ones(1, frames.shape[0], device=frames.device)
    return _segment_similarity(frames, membership)[0]


def _segment_similarity(frames: Tensor, membership: Tensor) -> Tensor:
    """:func:`static_similarity` for all segments at once.

    Args:
        frames: ``[T', L, C]`` float32.
        membership: ``[S, T']`` float32, 1 where frame t is in segment s, else 0.

    Returns:
        ``[S, L]`` float32 (``-inf`` for one-frame segments).

    Uses ``sum_{t != t'} u_t . u_t' = |sum_t u_t|^2 - sum_t |u_t|^2`` for unit vectors ``u``: linear in
    ``W`` instead of quadratic, and one matrix product for every segment.
    """
    n_frames, n_pos, channels = frames.shape
    norm = torch.linalg.vector_norm(frames, dim=-1)
    scale = norm.clamp(min=1e-12)  # as F.normalize: a zero vector stays zero
    unit = frames / scale[..., None]
    unit_sum = (membership @ unit.reshape(n_frames, n_pos * channels)).view(-1, n_pos, channels)
    # |u_t|^2 from the norms (1, or 0 for a zero vector) instead of another pass over [T', L, C].
    self_dot = membership @ (norm / scale).square()
    width = membership.sum(1)
    pairs = (width * (width - 1)).clamp(min=1)[:, None]
    similarity = (((unit_sum * unit_sum).sum(-1) - self_dot) / pairs).clamp(-1.0, 1.0)
    return similarity.masked_fill(width[:, None] < 2, -math.inf)


def consecutive_similarity(segment_tokens: Tensor) -> Tensor:
    """Least cosine similarity of each spatial position between consecutive frames of one segment.

    The opt-in static test ``static_test="consecutive"`` (not the paper's): a position is static only if
    every consecutive frame pair is more similar than ``tau``, so one frame pair that differs (an object
    appearing for a moment) keeps it dynamic however long the segment is.

    Args:
        segment_tokens: ``[W, L, C]`` any real dtype, the ``W >= 1`` frames of a segment.

    Returns:
        ``[L]`` float32, ``min over t of cos(x_tl, x_(t+1)l)``, clamped to ``[-1, 1]``; ``-inf`` for a
        one-frame segment (never static). A zero vector has cosine 0 with everything.
    """
    if segment_tokens.dim() != 3 or segment_tokens.shape[0] == 0:
        raise ValueError(f"segment_tokens must be [W, L, C] with W >= 1, got {tuple(segment_tokens.shape)}")
    frames = segment_tokens.float()
    frame_segments = torch.zeros(frames.shape[0], dtype=torch.int64, device=frames.device)
    return _segment_min_consecutive(frames, frame_segments, 1)[0]


def _segment_min_consecutive(frames: Tensor, frame_segments: Tensor, n_segments: int) -> Tensor:
    """:func:`consecutive_similarity` for all segments at once.

    Args:
        frames: ``[T', L, C]`` float32.
        frame_segments: ``[T']`` int64 segment id per frame (contiguous, 0..S-1).
        n_segments: ``S``.

    Returns:
        ``[S, L]`` float32 (``-inf`` for one-frame segments).
    """
    n_frames, n_pos, _ = frames.shape
    result = torch.full((n_segments, n_pos), -math.inf, device=frames.device)
    if n_frames < 2:
        return result
    unit = torch.nn.functional.normalize(frames, dim=-1)
    pair_cos = (unit[1:] * unit[:-1]).sum(-1).clamp(-1.0, 1.0)  # [T'-1, L]
    same = frame_segments[1:] == frame_segments[:-1]  # the pair (t, t+1) lies inside one segment
    pair_segment = frame_segments[1:]
    inside = (pair_segment[None, :] == torch.arange(n_segments, device=frames.device)[:, None]) & same
    least = torch.where(inside[:, :, None], pair_cos[None], math.inf).amin(1)  # [S, L]
    return torch.where(inside.any(1)[:, None], least, result)


# --------------------------------------------------------------------------------------------------
# Whole video


def merge_video(
    features: Tensor, grid: tuple[int, int, int], positions: Tensor, config: PruneVidConfig
) -> Stage1Result:
    """Stage 1 on one video: temporal segments, static collapse, spatial DPC-KNN merging.

    Args:
        features: ``[N, C]`` any float dtype, the vision tower output of one video in raster order
            (t, row, col), ``N = T' * h' * w'``.
        grid: ``(T', h', w')``, the LLM token grid of the video.
        positions: ``[3, N]`` integer (int64 from the stock model), the M-RoPE (t, h, w) position of each
            token; may live on another device than ``features``.
        config: reads ``tau``, ``temporal_segment_ratio``, ``cluster_ratio``, ``dpc_knn_k``,
            ``min_tokens_to_cluster`` and the opt-in ``static_test`` / ``static_time`` / ``spatial_merge``
            (``enable_stage1`` is the caller's business).

    Returns:
        A :class:`Stage1Result` (tensors on ``features.device``, ``positions`` on its own device).

    Groups: each segment's static tokens, each frame's dynamic tokens. A group of ``n`` tokens with
    ``n > min_tokens_to_cluster`` becomes ``max(1, int(n * cluster_ratio))`` tokens (at least one, so a
    tiny ``cluster_ratio`` cannot delete a group), otherwise it is kept whole.
    """
    n_frames, height, width = _check_inputs(features, grid, positions)
    n_pos = height * width
    n_tokens, channels = features.shape
    device = features.device

    # Decisions (segments, static test, clusters) are discrete: they read a detached copy, so autograd
    # records only the means that build the merged tokens.
    frames = features.reshape(n_frames, n_pos, channels).float()
    decide = frames.detach()

    # 1a. Segments (host sync 1: the segment layout sets the shapes below).
    frame_segments_cpu = _segment_frames_cpu(decide.mean(1), config.temporal_segment_ratio, config.dpc_knn_k)
    n_segments = int(frame_segments_cpu[-1]) + 1
    segment_len = torch.bincount(frame_segments_cpu, minlength=n_segments)
    first_frame = segment_len.cumsum(0) - segment_len
    frame_segments = frame_segments_cpu.to(device)
    membership = (frame_segments[None, :] == torch.arange(n_segments, device=device)[:, None]).float()

    # 1b. Static positions (host sync 2: their counts set the number of output tokens).
    if config.static_test == "consecutive":  # opt-in: every consecutive frame pair must be similar
        static = _segment_min_consecutive(decide, frame_segments, n_segments) > config.tau
    else:  # the paper: the mean over all frame pairs
        static = _segment_similarity(decide, membership) > config.tau
    n_static = static.sum(1).cpu()

    # Static positions collapse over "parts" of their segment: the whole segment (the paper), or its two
    # halves (the opt-in static_time="ends"). Representatives' frames: the segment's first frame (the paper;
    # static_time="middle" takes its middle frame; "ends" the first frame for the first half, the last
    # frame for the second), the frame itself for dynamic groups.
    if config.static_time == "ends":
        n_parts = 2 * n_segments
        offset = torch.arange(n_frames) - first_frame[frame_segments_cpu]
        second_half = offset >= (segment_len // 2)[frame_segments_cpu]
        part_of_frame_cpu = 2 * frame_segments_cpu + second_half
        part_segment_cpu = torch.arange(n_segments).repeat_interleave(2)
        static_frame = torch.stack([first_frame, first_frame + segment_len - 1], 1).flatten()
    else:
        n_parts = n_segments
        part_of_frame_cpu, part_segment_cpu = frame_segments_cpu, torch.arange(n_segments)
        static_frame = first_frame + (segment_len - 1) // 2 if config.static_time == "middle" else first_frame

    # Groups g < P: static tokens of part g; g = P + t: dynamic tokens of frame t. Each group is a
    # length-L row of slots (one per spatial position), `valid` marking its members.
    n_groups = n_parts + n_frames
    group_size = torch.cat([n_static[part_segment_cpu], n_pos - n_static[frame_segments_cpu]])
    keep = _cluster_sizes(group_size, config.cluster_ratio, config.min_tokens_to_cluster)
    n_out = int(keep.sum())
    clusters = bool((keep < group_size).any())
    base_frame = torch.cat([static_frame, torch.arange(n_frames)])
    # One upload, issued while the device queue is empty: a blocking copy waits for queued kernels.
    uploads = torch.cat([keep, base_frame, part_of_frame_cpu, part_segment_cpu]).to(device)
    keep_dev, base_frame, part_of_frame, part_segment = uploads.split([n_groups, n_groups, n_frames, n_parts])
    if n_parts == n_segments:  # the parts are the segments
        part_membership = membership
    else:
        part_membership = (part_of_frame[None, :] == torch.arange(n_parts, device=device)[:, None]).float()

    # 0/1 weights, then divide: exact sums of bf16 tokens even under TF32. Out of place, so gradients flow.
    # An empty part (the first half of a one-frame segment, which is never static) divides by 1, not 0.
    part_sums = (part_membership @ frames.reshape(n_frames, -1)).view(n_parts, n_pos, channels)
    part_means = part_sums / part_membership.sum(1).clamp(min=1)[:, None, None]
    groups = torch.cat([part_means, frames])  # "part means then frames": [P + T', L, C]
    valid = torch.cat([static[part_segment], ~static[frame_segments]])
    slot = torch.arange(n_pos, device=device)

    # 1c. Spatial merge, all groups in one padded batch; skipped outright when no group shrinks.
    if clusters:
        if config.spatial_merge == "kcentre":  # opt-in: centres spread over the group's content
            centre_of, is_centre = _kcentre_padded(groups.detach(), valid, keep_dev)
        else:  # the paper: DPC-KNN
            centre_of, is_centre = _dpc_padded(groups.detach(), valid, keep_dev, config.dpc_knn_k)
        members = ((centre_of[:, None, :] == slot[None, :, None]) & valid[:, None, :]).float()
        cluster_size = members.sum(-1)
        # Sum of each cluster's members as a batched 0/1 matrix product: deterministic, unlike a
        # scatter-add with atomics. Static members are segment means of equal weight, so the mean of
        # means is the plain mean of all sources.
        cluster_sum = torch.bmm(members, groups)
    else:
        centre_of = slot.expand(n_groups, n_pos)
        is_centre = valid
        cluster_size = valid.float()
        cluster_sum = groups

    # Output order: grid index of each centre's representative (static: at its part's static_frame).
    rep_grid = (base_frame[:, None] * n_pos + slot).flatten()
    chosen = torch.sort(torch.where(is_centre.flatten(), rep_grid, n_tokens), stable=True).indices[:n_out]
    representative = rep_grid[chosen]
    group_of = chosen // n_pos
    is_static = group_of < n_parts
    size = cluster_size.flatten()[chosen]
    merged = (cluster_sum.reshape(-1, channels)[chosen] / size[:, None]).to(features.dtype)
    # A single-source token is copied, not recomputed, so it is bit-identical to its source (a product
    # with 1.0 would still turn -0.0 into +0.0, and TF32 would round float32 inputs).
    single = ~is_static & (size == 1)
    merged = torch.where(single[:, None], features[representative], merged)

    # assignment: source (t, l) -> its group slot -> its centre's slot -> that slot's output index.
    out_of_slot = torch.full((n_groups * n_pos,), -1, dtype=torch.int64, device=device)
    out_of_slot[chosen] = torch.arange(n_out, device=device)
    group_ids = torch.arange(n_groups, device=device)[:, None]
    out_of_member = out_of_slot[(group_ids * n_pos + centre_of).flatten()]
    frame_ids = torch.arange(n_frames, device=device)[:, None]
    source_group = torch.where(static[frame_segments], part_of_frame[:, None], n_parts + frame_ids)
    assignment = out_of_member[(source_group * n_pos + slot).flatten()]

    segment_of_group = torch.cat([part_segment, frame_segments])
    return Stage1Result(
        features=merged,
        positions=positions[:, representative.to(positions.device)],
        representative=representative,
        assignment=assignment,
        segment_id=segment_of_group[group_of],
        is_static=is_static,
        frame_index=representative // n_pos,
        frame_segments=frame_segments,
    )


def _cluster_sizes(group_size: Tensor, cluster_ratio: float, min_tokens: int) -> Tensor:
    """Tokens kept per group: ``[G]`` int64 sizes (CPU) -> ``[G]`` int64.

    ``max(1, int(n * cluster_ratio))`` when ``n > min_tokens``, else ``n``. The product is in float64,
    the same IEEE multiply as Python's ``int(n * ratio)``.
    """
    reduced = torch.floor(group_size.double() * cluster_ratio).long().clamp(min=1)
    return torch.where(group_size > min_tokens, torch.minimum(reduced, group_size), group_size)


def _check_inputs(features: Tensor, grid: tuple[int, int, int], positions: Tensor) -> tuple[int, int, int]:
    """Validate :func:`merge_video`'s inputs; returns ``(T', h', w')`` as ints."""
    try:
        n_frames, height, width = (operator.index(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be three ints (T', h', w'), got {grid!r}") from None
    if min(n_frames, height, width) < 0:
        raise ValueError(f"grid must be non-negative, got {grid!r}")
    if n_frames * height * width == 0:
        raise ValueError(f"empty video: grid {tuple(grid)} has no tokens")
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(
            f"features must be a floating [N, C] tensor, got {features.dtype} "
            f"of shape {tuple(features.shape)}"
        )
    n_tokens = n_frames * height * width
    if features.shape[0] != n_tokens:
        raise ValueError(f"features has {features.shape[0]} tokens but grid {tuple(grid)} holds {n_tokens}")
    if features.shape[1] == 0:
        raise ValueError("features has no channels")
    if positions.shape != (3, n_tokens):
        raise ValueError(f"positions must be [3, {n_tokens}], got {tuple(positions.shape)}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    return n_frames, height, width
