"""Stage 1 through the attached model: each video span is replaced by its merged tokens at real positions."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from prunevid import PruneVidConfig, attach
from prunevid.synthetic import make_clip

# Every test here starts and ends with the shared tiny models stock (see conftest.stock_models).
pytestmark = pytest.mark.usefixtures("stock_models")

MERGE_NOTHING = PruneVidConfig.preset("stage1_only").replace(tau=1.5, cluster_ratio=1.0)


def llm_inputs(model: Any, inputs: Any, config: PruneVidConfig | None) -> tuple[dict, Any]:
    """The language model's prefill kwargs (after PruneVid's pre-hook) and the pruner's statistics."""
    seen: list[dict] = []
    pruner = attach(model, config) if config is not None else None
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(dict(k)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
        if pruner is not None:
            pruner.detach()
    return seen[0], None if pruner is None else pruner.last_stats


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("prompt", ["single", "padded"])
def test_merging_nothing_is_bit_identical_to_stock(
    models: dict[str, Any], prompts: dict[str, Any], implementation: str, prompt: str
) -> None:
    model, inputs = models[implementation], prompts[prompt]
    with torch.no_grad():
        stock_logits = model(**inputs).logits
        stock = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        with attach(model, MERGE_NOTHING) as pruner:
            logits = model(**inputs).logits
            ours = model.generate(
                **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    assert torch.equal(logits, stock_logits) and torch.equal(ours.sequences, stock.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ours.logits, stock.logits, strict=True))
    assert pruner.last_stats.video_tokens_after_stage1 == pruner.last_stats.video_tokens_in
    for sample in pruner.last_stats.samples:
        assert sample.videos[0].merged_into == sample.videos[0].kept_indices


@pytest.mark.parametrize("prompt", ["single", "padded"])
def test_merged_tokens_sit_at_their_representatives_positions(
    models: dict[str, Any], prompts: dict[str, Any], prompt: str
) -> None:
    model, inputs = models["sdpa"], prompts[prompt]
    stock, _ = llm_inputs(model, inputs, None)
    merged, stats = llm_inputs(model, inputs, PruneVidConfig.preset("stage1_only"))
    video = inputs["input_ids"] == model.config.video_token_id
    new_length = merged["inputs_embeds"].shape[1]
    assert stats.video_tokens_after_stage1 < stats.video_tokens_in
    for b, sample in enumerate(stats.samples):
        text = torch.nonzero(~video[b]).flatten()
        representatives = torch.tensor(sample.videos[0].kept_indices)
        origins = torch.sort(torch.cat([text, representatives])).values
        slots = torch.arange(new_length - len(origins), new_length)  # left padding for the shorter sample
        # Text (padding included) keeps its embeddings and its positions in the unpruned prompt.
        is_text = ~video[b, origins]
        for rows in (slice(None), slice(-3, None)):
            assert torch.equal(
                merged["position_ids"][rows, b, slots[is_text]][-3:],
                stock["position_ids"][rows, b, text][-3:],
            )
        assert torch.equal(merged["inputs_embeds"][b, slots[is_text]], stock["inputs_embeds"][b, text])
        # Every merged token sits at its representative's stock (t, h, w): a real grid position.
        merged_positions = merged["position_ids"][-3:, b, slots[~is_text]]
        assert torch.equal(merged_positions, stock["position_ids"][-3:, b, representatives])
        # In (t, h, w) raster order, and the mask still marks them as real tokens.
        assert torch.all(torch.diff(representatives) > 0)
        # merged_into names every source token's merged token; that token is the mean of its sources.
        merged_into = torch.tensor(sample.videos[0].merged_into)
        sources = torch.nonzero(video[b]).flatten()
        assert len(merged_into) == len(sources) and set(merged_into.tolist()) == set(representatives.tolist())
        assert torch.equal(merged_into[representatives - sources[0]], representatives)
        members_mean = torch.stack(
            [stock["inputs_embeds"][b, sources[merged_into == r]].float().mean(0) for r in representatives]
        )
        torch.testing.assert_close(merged["inputs_embeds"][b, slots[~is_text]].float(), members_mean)
        if merged.get("attention_mask") is not None:
            assert merged["attention_mask"][b, slots[~is_text]].all()


def test_generated_clip_end_to_end(models: dict[str, Any], tiny_processor: Any, make_video_clip: Any) -> None:
    """Static textured background with a few moving shapes: generate completes and the count drops."""
    from prunevid.prompt import build_inputs

    clip = make_video_clip(16, 168, 168, seed=5, num_objects=2)
    inputs = build_inputs(tiny_processor, clip, "Which shape moves?")
    with attach(models["sdpa"], PruneVidConfig.preset("paper")) as pruner:
        with torch.no_grad():
            out = models["sdpa"].generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6
    stats = pruner.last_stats
    assert stats.video_tokens_in == 8 * 6 * 6
    assert stats.video_tokens_after_stage2 < stats.video_tokens_after_stage1 < stats.video_tokens_in
    video = stats.samples[0].videos[0]
    assert len(video.merged_into) == video.tokens_in
    assert len(set(video.merged_into)) == video.tokens_after_stage1
    assert set(video.kept_indices) < set(video.merged_into)


def test_two_videos_in_one_prompt_are_merged_separately(models: dict[str, Any], tiny_processor: Any) -> None:
    model = models["sdpa"]
    content = [
        {"type": "video"},
        {"type": "text", "text": "and"},
        {"type": "video"},
        {"type": "text", "text": "?"},
    ]
    text = tiny_processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    clips = [make_clip(8, 112, 112, seed=7), make_clip(6, 56, 112, seed=8)]
    kwargs: dict[str, Any] = {"do_sample_frames": False}
    if transformers.__version__ >= "5":
        kwargs["video_metadata"] = [
            {"fps": 4.0, "total_num_frames": len(c), "frames_indices": list(range(len(c)))} for c in clips
        ]
    inputs = tiny_processor(text=[text], videos=clips, return_tensors="pt", **kwargs)
    stock, _ = llm_inputs(model, inputs, None)
    merged, stats = llm_inputs(model, inputs, PruneVidConfig.preset("stage1_only"))
    first, second = stats.samples[0].videos
    assert (first.tokens_in, second.tokens_in) == (4 * 4 * 4, 3 * 2 * 4)
    assert first.tokens_after_stage1 < first.tokens_in  # 16 tokens a frame: clustered
    assert second.tokens_after_stage1 <= second.tokens_in
    video = torch.nonzero(inputs["input_ids"][0] == model.config.video_token_id).flatten()
    assert min(second.kept_indices) > max(first.kept_indices)
    assert set(first.kept_indices + second.kept_indices) <= set(video.tolist())
    assert merged["inputs_embeds"].shape[1] == (
        inputs["input_ids"].shape[1]
        - first.tokens_in
        - second.tokens_in
        + first.tokens_after_stage1
        + second.tokens_after_stage1
    )
    assert stock["inputs_embeds"].shape[1] == inputs["input_ids"].shape[1]
