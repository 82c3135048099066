"""Stage 2 of PruneVid: keep the video tokens the question attends to most (pure tensor functions).

At LLM layer ``M`` the queries of the question rows (every token after the last video token) are
scored against all keys of the prompt, without rotary embedding and without a mask; each video token
gets one importance (max over heads, then max over rows), and each budget group keeps its best
``floor(keep_ratio * n)`` tokens, at least one. The adapter gathers the rows; nothing here knows a model.
The opt-in :func:`select_tokens_covering` (not the paper's) spends part of each budget on covering the
group's distinct tokens first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunevid.stage1_merge import _pairwise_sq_dist, kcentre_padded  # (coverage only)

# Rows x keys of float32 logits held at once per head chunk; bounds memory on long videos.
_MAX_CHUNK_ELEMENTS = 1 << 26


def question_attention_scores(query: Tensor, key: Tensor, aggregation: str = "max") -> Tensor:
    """Importance of every key for the question rows: ``softmax(Q K^T / sqrt(d))`` aggregated.

    Args:
        query: ``[H, R, d]`` queries of the R question rows (before rotary embedding), any float dtype.
        key: ``[H_kv, S, d]`` keys of all S prompt tokens (before rotary embedding); ``H % H_kv == 0``,
            key heads are repeated for grouped-query attention.
        aggregation: ``"max"`` (max over heads, then max over rows: the paper's choice) or ``"mean"``.

    Returns:
        ``[S]`` float32 importance per key. The softmax runs in float32 over all S keys; only a
        ``[heads_chunk, R, S]`` block exists at any time, never an ``[S, S]`` matrix.
    """
    heads, rows, head_dim = query.shape
    kv_heads, length, _ = key.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key heads")
    if rows == 0:
        raise ValueError("question_attention_scores needs at least one query row")
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim)
    chunk = max(1, min(heads, _MAX_CHUNK_ELEMENTS // max(1, rows * length)))
    result = None
    for start in range(0, heads, chunk):
        q = query[start : start + chunk].float()
        # Query head h reads key head h // group (transformers' repeat_kv order).
        k = key.index_select(0, torch.arange(start, start + q.shape[0], device=key.device) // group).float()
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # [h, R, S]
        if aggregation == "max":
            part = probs.amax(dim=0)
            result = part if result is None else torch.maximum(result, part)
        elif aggregation == "mean":
            part = probs.sum(dim=0)
            result = part if result is None else result + part
        else:
            raise ValueError(f"attention_aggregation must be 'max' or 'mean', got {aggregation!r}")
    assert result is not None
    return result.amax(dim=0) if aggregation == "max" else result.sum(dim=0) / (heads * rows)


def budget_groups(
    frame_index: Tensor, segment_id: Tensor | None = None, is_static: Tensor | None = None
) -> Tensor:
    """Budget group of every video token: its Stage-1 segment if static, else its frame.

    Args:
        frame_index: ``[n]`` int64 temporal grid index (frame) of each video token.
        segment_id: ``[n]`` int64 Stage-1 segment of each token, or None when Stage 1 is off.
        is_static: ``[n]`` bool Stage-1 static flag, or None when Stage 1 is off.

    Returns:
        ``[n]`` int64 group ids (dense, 0..G-1): dynamic tokens grouped per frame, static tokens per
        segment; per frame for everything when Stage 1 is off.
    """
    if segment_id is None or is_static is None:
        keys = frame_index
    else:
        # Two disjoint key ranges: frames are even, segments are odd.
        keys = torch.where(is_static, 2 * segment_id + 1, 2 * frame_index)
    return torch.unique(keys, return_inverse=True)[1]


def select_tokens(scores: Tensor, groups: Tensor, keep_ratio: float) -> Tensor:
    """Indices of the tokens kept: the ``max(1, floor(keep_ratio * n_g))`` best of every group ``g``.

    Args:
        scores: ``[n]`` importance per token (higher is kept first).
        groups: ``[n]`` int64 group id per token.
        keep_ratio: fraction kept per group, in (0, 1].

    Returns:
        ``[k]`` int64 indices into ``n``, increasing. Ties go to the earlier token (stable sorts), so the
        result is the same on every run and device.
    """
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    counts = torch.bincount(groups)
    return torch.sort(_best_per_group(scores, groups, counts, _budget(counts, keep_ratio))).values


def _budget(counts: Tensor, share: float) -> Tensor:
    """``[G]`` ``max(1, floor(share * counts))``; the epsilon keeps floor(0.29 * 100) at 29 despite binary
    rounding."""
    return torch.clamp(torch.floor(counts.double() * share + 1e-9).long(), min=1)


def _best_per_group(scores: Tensor, groups: Tensor, counts: Tensor, budget: Tensor) -> Tensor:
    """Indices (unordered) of the ``budget[g]`` best-scored tokens of every group ``g`` (``counts =
    bincount(groups)``); ties go to the earlier token."""
    # Sort by score (descending), then stably by group: each group's tokens end up best first.
    by_score = torch.sort(scores.float(), descending=True, stable=True).indices
    order = by_score[torch.sort(groups[by_score], stable=True).indices]
    sorted_groups = groups[order]
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(scores.shape[0], device=scores.device) - group_start[sorted_groups]
    return order[rank < budget[sorted_groups]]


def select_tokens_covering(
    scores: Tensor, groups: Tensor, keep_ratio: float, features: Tensor, coverage: float
) -> Tensor:
    """:func:`select_tokens` that first covers each group's distinct tokens (opt-in, not the paper's).

    Every group ``g`` keeps as many tokens as :func:`select_tokens`, ``b_g = max(1, floor(keep_ratio *
    n_g))``, chosen in two steps. First ``c_g = max(1, floor(coverage * b_g))`` cover the group: the
    best-scored token and then, one at a time, the token farthest from those picked (in ``features``,
    greedy k-centre) are cluster centres; every token joins its nearest centre, and each cluster keeps
    its best-scored token. A small object far from the background in feature space thus keeps a token
    even when the question's attention prefers the background (DPC-KNN would not do: its density makes a
    cluster of fewer than ``k`` tokens a poor centre). Then the other ``b_g - c_g`` are the best-scored
    of the rest.

    Args:
        scores: ``[n]`` importance per token (higher is kept first).
        groups: ``[n]`` int64 group id per token (dense, ``0..G-1``).
        keep_ratio: fraction kept per group, in (0, 1].
        features: ``[n, C]`` what distinctness is measured on (the adapter passes layer ``M``'s keys).
        coverage: in (0, 1], the share of each group's budget spent on covering.

    Returns:
        ``[k_total]`` int64 indices into ``n``, increasing, ``k_total = sum_g b_g``. Deterministic: ties go
        to the earlier token, as in :func:`select_tokens`.
    """
    n = scores.shape[0]
    if features.dim() != 2 or features.shape[0] != n:
        raise ValueError(f"features must be [{n}, C], got {tuple(features.shape)}")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    device = scores.device
    counts = torch.bincount(groups)
    budget = _budget(counts, keep_ratio)
    cover = _budget(budget, coverage)

    # Pad the groups to one length: slot j of group g is its j-th token in index order.
    by_group = torch.sort(groups, stable=True).indices
    group_start = torch.cumsum(counts, 0) - counts
    member_group = groups[by_group]
    slot = torch.arange(n, device=device) - group_start[member_group]
    n_groups, width = counts.shape[0], int(counts.max())
    padded = features.new_zeros(n_groups, width, features.shape[1], dtype=torch.float32)
    padded[member_group, slot] = features[by_group].float()
    valid = torch.zeros(n_groups, width, dtype=torch.bool, device=device)
    valid[member_group, slot] = True
    padded_scores = torch.full((n_groups, width), -math.inf, device=device)
    padded_scores[member_group, slot] = scores[by_group].float()

    # Greedy k-centre from the best-scored token (argmax: ties to the earlier one).
    cluster_of, _ = kcentre_padded(_pairwise_sq_dist(padded), valid, cover, padded_scores.argmax(1))

    # Each cluster's best-scored member covers it.
    cluster = torch.zeros(n, dtype=torch.long, device=device)
    cluster[by_group] = member_group * width + cluster_of[member_group, slot]
    cluster_counts = torch.bincount(cluster)
    covering = torch.zeros(n, dtype=torch.bool, device=device)
    covering[_best_per_group(scores, cluster, cluster_counts, torch.ones_like(cluster_counts))] = True

    # The rest of each group's budget: the best-scored tokens not yet kept.
    rest = torch.where(covering, -math.inf, scores.float())
    extra = _best_per_group(rest, groups, counts, budget - cover)
    kept = torch.cat([torch.nonzero(covering).flatten(), extra])
    return torch.sort(kept).values
