"""Lossless batched window attention for a vision tower that attends within contiguous windows.

Qwen2.5-VL's vision tower attends inside windows (4x4 merged tokens, or one frame pair in its
full-attention blocks) given as contiguous runs of tokens by ``cu_seqlens``. With SDPA, stock transformers
calls ``scaled_dot_product_attention`` once per window from a Python loop: hundreds of tiny kernels per
layer on a video. Here windows of equal length are stacked into one batch, so there is one SDPA call per
*distinct* window length. Each window still attends only to itself with the same kernel, the same
sequence length and the same scale, and SDPA computes every batch element independently, so the result
equals the per-window loop bit for bit, provided the kernel does not split its work differently because
the batch is larger: ``max_batched_length`` keeps long windows on one call each (see
:func:`window_attention`; measured on CPU and on an H200 with the cuDNN, flash and memory-efficient
backends).

Pure tensor code: no transformers import. The model adapter decides when to use it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention


@dataclass(frozen=True)
class WindowPlan:
    """How the windows of one ``cu_seqlens`` are batched.

    ``groups``: ``(length, count)`` per distinct non-zero window length, ascending.
    ``order``: ``[N]`` int64, on the device of ``cu_seqlens``: token indices grouped by window length (the
    windows of ``groups[0]`` first, each window's tokens in order); ``None`` when every non-empty window
    has the same length, so the tokens already form ``count`` back-to-back windows and a view suffices.
    ``inverse``: ``[N]`` int64, the inverse permutation of ``order`` (None with it).
    """

    total: int
    groups: tuple[tuple[int, int], ...]
    order: Tensor | None = None
    inverse: Tensor | None = None


def plan_windows(cu_seqlens: Tensor) -> WindowPlan:
    """Group the windows of ``cu_seqlens`` by length.

    ``cu_seqlens``: ``[W + 1]`` integer (int32 in the vision tower), non-decreasing window boundaries; like
    the stock split, windows are taken back to back from token 0, so ``cu_seqlens[0]`` is normally 0 and
    ``N = cu_seqlens[-1] - cu_seqlens[0]``. Empty windows (length 0) are allowed and ignored.

    Cost: one device-to-host copy of the ``W`` lengths (the stock loop does the same ``.tolist()`` in every
    layer; callers reuse a plan for every layer that gets the same ``cu_seqlens``) and a few small kernels
    that build ``order`` on the device; no per-window Python loop and no other host sync.
    """
    cu = cu_seqlens.to(torch.long)
    lengths = cu[1:] - cu[:-1]
    host = lengths.tolist()  # the only host sync
    if host and min(host) < 0:
        raise ValueError("cu_seqlens must be non-decreasing")
    counts = Counter(host)
    counts.pop(0, None)
    groups = tuple(sorted(counts.items()))
    total = sum(length * count for length, count in groups)
    if len(groups) <= 1:
        return WindowPlan(total, groups)
    # Windows sorted by length (stable: time order inside a group); empty windows sort first and are skipped.
    window_order = torch.argsort(lengths, stable=True)
    starts = (cu[:-1] - cu[0]).index_select(0, window_order)
    pieces, offset = [], len(host) - sum(counts.values())
    for length, count in groups:
        first = starts[offset : offset + count, None]
        pieces.append((first + torch.arange(length, device=cu.device)).flatten())
        offset += count
    order = torch.cat(pieces)
    # A sort rather than a scatter, so the inverse is built deterministically on every device.
    return WindowPlan(total, groups, order, torch.argsort(order))


def window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    cu_seqlens: Tensor,
    scale: float | None = None,
    *,
    plan: WindowPlan | None = None,
    dropout_p: float = 0.0,
    max_batched_length: int | None = None,
) -> Tensor:
    """Non-causal attention inside each window of ``cu_seqlens``: one SDPA call per distinct window length
    (and one per window longer than ``max_batched_length``).

    Args:
        query, key, value: ``[1, H, N, d]`` (the vision attention's layout after ``transpose(0, 1)
            .unsqueeze(0)``; any strides), one dtype.
        cu_seqlens: ``[W + 1]`` integer window boundaries (see :func:`plan_windows`).
        scale: softmax scale; ``None`` means SDPA's default ``d ** -0.5``.
        plan: :func:`plan_windows` of ``cu_seqlens``, when the caller already has it (it is the same for
            every layer that gets the same boundaries).
        dropout_p: SDPA dropout (0 in inference).
        max_batched_length: windows longer than this get one SDPA call each, as in the stock loop (None:
            batch every length). A CUDA kernel may pick its work split from the batch size (flash
            attention's split-KV heuristic counts ``batch * heads * query_blocks``), which can change
            the rounding of long windows; windows of at most 64 tokens fit one key block of every flash
            kernel and never split.

    Returns:
        ``[1, N, H, d]``, the layout in which the stock loop concatenates its per-window outputs
        (``torch.cat`` of SDPA outputs transposed to ``[1, n_i, H, d]``), equal to it bit for bit.
    """
    plan = plan_windows(cu_seqlens) if plan is None else plan
    _, heads, total, head_dim = query.shape
    if plan.total != total:
        raise ValueError(f"cu_seqlens covers {plan.total} tokens but the query has {total}")

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``[c, H, L, d]`` windows -> ``[c, L, H, d]`` (token-major, as stock transposes each output)."""
        if max_batched_length is not None and q.shape[2] > max_batched_length:
            return torch.cat([attend_batch(q[i : i + 1], k[i : i + 1], v[i : i + 1]) for i in range(len(q))])
        return attend_batch(q, k, v)

    def attend_batch(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=False, scale=scale)
        return out.transpose(1, 2)

    if not plan.groups:
        return query.new_empty(1, 0, heads, head_dim)
    if plan.order is None:
        # Equal windows laid back to back: [1, H, N, d] -> [c, H, L, d] is a view, no copy.
        length, count = plan.groups[0]

        def windows(x: Tensor) -> Tensor:
            return x[0].unflatten(1, (count, length)).transpose(0, 1)

        return attend(windows(query), windows(key), windows(value)).reshape(1, total, heads, head_dim)

    # Tokens regrouped by window length: [N, H, d], then each group's windows are one batch.
    regrouped = [x[0].transpose(0, 1).index_select(0, plan.order) for x in (query, key, value)]
    outputs, offset = [], 0
    for length, count in plan.groups:
        size = length * count
        q, k, v = (x[offset : offset + size].unflatten(0, (count, length)).transpose(1, 2) for x in regrouped)
        outputs.append(attend(q, k, v).reshape(size, heads, head_dim))
        offset += size
    # Back to the original token order (a gather: deterministic, unlike index_copy on CUDA).
    return torch.cat(outputs).index_select(0, plan.inverse).unsqueeze(0)
