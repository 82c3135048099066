"""Reference pruning methods (not PruneVid), to compare PruneVid with at a matched retention.

Each is a :class:`ReferenceConfig` that :func:`prunevid.attach` understands:

- ``random``: a seeded random subset of each video's tokens, before the LLM;
- ``uniform_frames``: evenly spaced whole frames (temporal groups), before the LLM;
- ``evs``: EVS-style: the first frame whole, then the tokens that changed most since the same position
  of the previous frame (1 - cosine similarity), before the LLM;
- ``fastv``: FastV-style: at an early LLM layer (default 2), the attention of the LAST prompt token
  (averaged over heads) ranks the video tokens; the best are kept over the whole video (no per-frame
  budget), and the caches of the layers before are cut too.

Every method keeps ``max(1, round(retention * n))`` of a video's ``n`` tokens. The pre-LLM methods are pure
functions returning a :class:`~prunevid.stage1_merge.Stage1Result` whose tokens each have one source,
so the adapter applies them exactly as it applies Stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunevid.config import PruneVidConfig
from prunevid.stage1_merge import Stage1Result

PRE_LLM_METHODS = ("random", "uniform_frames", "evs")
METHODS = (*PRE_LLM_METHODS, "fastv")


@dataclass(frozen=True)
class ReferenceConfig(PruneVidConfig):
    """A reference method at a fixed video-token retention; build it with :func:`reference_config`.

    Attributes:
        method: one of :data:`METHODS`.
        retention: fraction of each video's tokens kept, in (0, 1].
        seed: seed of ``random``'s choice (the same seed and video give the same tokens).
    """

    method: str = "random"
    retention: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is invalid: allowed is one of {METHODS}")
        if not (isinstance(self.retention, (int, float)) and 0.0 < self.retention <= 1.0):
            raise ValueError(f"retention={self.retention!r} is invalid: allowed is a number in (0, 1]")
        pre_llm = self.method in PRE_LLM_METHODS
        if self.enable_stage1 != pre_llm or self.enable_stage2 == pre_llm:
            raise ValueError(
                f"{self.method} is a {'pre-LLM' if pre_llm else 'in-LLM'} method: use reference_config()"
            )


def reference_config(method: str, retention: float, *, seed: int = 0, layer: int = 2) -> ReferenceConfig:
    """The :class:`ReferenceConfig` of ``method`` keeping ``retention`` of the video tokens.

    ``layer`` is FastV's selection layer (its paper uses layer 2); the others run before the LLM.
    """
    if method == "fastv":
        return ReferenceConfig(
            method=method,
            retention=retention,
            seed=seed,
            enable_stage2=True,
            enable_cache_compression=True,
            keep_ratio=retention,
            pruning_layer=layer,
            attention_aggregation="mean",
        )
    return ReferenceConfig(method=method, retention=retention, seed=seed, enable_stage1=True)


def reduce_video(
    features: Tensor, grid: tuple[int, int, int], positions: Tensor, config: ReferenceConfig
) -> Stage1Result:
    """A pre-LLM reference method on one video: keep a subset of its tokens.

    Args:
        features: ``[N, C]`` the video's tokens in raster order (t, row, col), ``N = T' * h' * w'``.
        grid: ``(T', h', w')``.
        positions: ``[3, N]`` M-RoPE positions of the tokens.
        config: ``method`` in :data:`PRE_LLM_METHODS` and ``retention``.

    Returns:
        A :class:`Stage1Result` of the ``max(1, round(retention * N))`` kept tokens (each its own source, in
        raster order; dropped sources have assignment -1).
    """
    frames, height, width = grid
    n = frames * height * width
    per_frame = height * width
    budget = max(1, round(config.retention * n))
    if config.method == "random":
        generator = torch.Generator().manual_seed(config.seed)
        kept = torch.randperm(n, generator=generator)[:budget]
    elif config.method == "uniform_frames":
        count = max(1, round(config.retention * frames))
        chosen = torch.linspace(0, frames - 1, count).round().long().unique()
        kept = (chosen[:, None] * per_frame + torch.arange(per_frame)).flatten()
    elif config.method == "evs":
        tokens = features.float().reshape(frames, per_frame, -1)
        change = torch.full((frames, per_frame), float("inf"))  # the first frame is always kept
        if frames > 1:
            similarity = torch.nn.functional.cosine_similarity(tokens[1:], tokens[:-1], dim=-1)
            change[1:] = (1.0 - similarity).cpu()
        kept = torch.sort(change.flatten(), descending=True, stable=True).indices[:budget]
    else:
        raise ValueError(f"{config.method} is not a pre-LLM method")
    kept = torch.sort(kept).values.to(features.device)
    assignment = torch.full((n,), -1, dtype=torch.long, device=features.device)
    assignment[kept] = torch.arange(len(kept), device=features.device)
    return Stage1Result(
        features=features[kept],
        positions=positions[:, kept.to(positions.device)],
        representative=kept,
        assignment=assignment,
        segment_id=torch.zeros_like(kept),
        is_static=torch.zeros(len(kept), dtype=torch.bool, device=features.device),
        frame_index=kept // per_frame,
        frame_segments=torch.zeros(frames, dtype=torch.long, device=features.device),
    )
