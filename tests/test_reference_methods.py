"""Reference methods (random, uniform frames, EVS-style, FastV-style) at a fixed retention."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prunevid.models.pruner as adapter
from prunevid import attach
from prunevid.reference_methods import PRE_LLM_METHODS, ReferenceConfig, reduce_video, reference_config

# Every test here starts and ends with the shared tiny models stock (see conftest.stock_models).
pytestmark = pytest.mark.usefixtures("stock_models")

GRID = (4, 3, 5)  # T', h', w': 60 tokens, 15 a frame


def video(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(60, 8, generator=generator)
    positions = torch.stack(
        torch.meshgrid(torch.arange(4) * 7, torch.arange(3), torch.arange(5), indexing="ij")
    )
    return features, positions.reshape(3, -1)


@pytest.mark.parametrize("method", PRE_LLM_METHODS)
@pytest.mark.parametrize("retention", [0.05, 0.25, 0.5, 1.0])
def test_pre_llm_methods_keep_the_budget(method: str, retention: float) -> None:
    features, positions = video()
    result = reduce_video(features, GRID, positions, reference_config(method, retention))
    kept = result.representative
    expected = (
        max(1, round(retention * 4)) * 15 if method == "uniform_frames" else max(1, round(retention * 60))
    )
    assert len(kept) == expected
    assert torch.all(torch.diff(kept) > 0)
    assert torch.equal(result.features, features[kept])  # tokens are kept as they are, not merged
    assert torch.equal(result.positions, positions[:, kept])
    assert torch.equal(result.assignment[kept], torch.arange(len(kept)))
    assert int((result.assignment == -1).sum()) == 60 - len(kept)


def test_uniform_frames_keeps_whole_evenly_spaced_frames() -> None:
    features, positions = video()
    kept = reduce_video(features, GRID, positions, reference_config("uniform_frames", 0.5)).representative
    assert sorted(set((kept // 15).tolist())) == [0, 3]
    assert len(kept) == 30


def test_evs_keeps_the_first_frame_then_what_changed() -> None:
    features, positions = video()
    frames = features.reshape(4, 15, 8)
    frames[1:] = frames[0]  # nothing changes after the first frame ...
    frames[2, 7] = -frames[0, 7]  # ... except one position in frame 2
    result = reduce_video(frames.reshape(60, 8), GRID, positions, reference_config("evs", 16 / 60))
    assert result.representative.tolist() == [*range(15), 2 * 15 + 7]


def test_random_is_seeded() -> None:
    features, positions = video()
    first = reduce_video(features, GRID, positions, reference_config("random", 0.3, seed=1)).representative
    again = reduce_video(features, GRID, positions, reference_config("random", 0.3, seed=1)).representative
    other = reduce_video(features, GRID, positions, reference_config("random", 0.3, seed=2)).representative
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_reference_config_is_validated() -> None:
    with pytest.raises(ValueError, match="method='magic'"):
        reference_config("magic", 0.3)
    with pytest.raises(ValueError, match="retention=0"):
        reference_config("random", 0)
    with pytest.raises(ValueError, match="use reference_config"):
        ReferenceConfig(method="fastv", enable_stage1=True)
    fastv = reference_config("fastv", 0.3)
    assert (fastv.pruning_layer, fastv.keep_ratio, fastv.attention_aggregation) == (2, 0.3, "mean")


@pytest.mark.parametrize("method", [*PRE_LLM_METHODS, "fastv"])
def test_every_method_generates_at_its_retention(
    models: dict[str, Any], prompts: dict[str, Any], method: str
) -> None:
    model, inputs = models["sdpa"], prompts["padded"]
    with attach(model, reference_config(method, 0.25)) as pruner:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    grids = inputs["video_grid_thw"].tolist()  # one video a sample: (T', 2h', 2w')
    for sample, (frames, height, width) in zip(pruner.last_stats.samples, grids, strict=True):
        (stats,) = sample.videos
        if method == "uniform_frames":
            expected = max(1, round(0.25 * frames)) * (height // 2) * (width // 2)
        else:
            expected = max(1, round(0.25 * stats.tokens_in))
        assert stats.tokens_after_stage2 == expected
        # Dropping methods keep each token whole (it is its own representative) or drop it (-1).
        kept_before_llm = [i for i in stats.merged_into if i >= 0]
        assert len(stats.merged_into) == stats.tokens_in
        assert len(kept_before_llm) == len(set(kept_before_llm)) == stats.tokens_after_stage1


def test_fastv_ranks_by_the_last_prompt_token(
    models: dict[str, Any], prompts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = []
    original = adapter.question_attention_scores

    def spy(query: torch.Tensor, key: torch.Tensor, aggregation: str = "max") -> torch.Tensor:
        rows.append((query.shape[1], aggregation))
        return original(query, key, aggregation)

    monkeypatch.setattr(adapter, "question_attention_scores", spy)
    with attach(models["sdpa"], reference_config("fastv", 0.25)) as pruner:
        with torch.no_grad():
            models["sdpa"].generate(**prompts["single"], max_new_tokens=2, do_sample=False)
    assert rows == [(1, "mean")] and pruner.pruning_layer == 2
    assert len(set(pruner.last_stats.kv_cache_length)) == 1  # the early layers' caches were cut too
