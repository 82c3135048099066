"""One pruner for every Qwen VL family: off is stock, pruning equals the masked oracle, positions and
DeepStack inputs of merged tokens are their sources', and the hardening cases hold, for Qwen2-VL,
Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (tiny random models of each, see conftest)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from test_pruning import mask_pruned_keys
from transformers.cache_utils import DynamicCache

from prunevid import PruneVidConfig, attach
from prunevid.models import cache_layout, family_of, pruner_of

NEW_TOKENS = 4
GREEDY = dict(max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True)


@pytest.fixture
def family_models(tiny_family_models: dict[str, Any]) -> Any:
    """The family's shared tiny models, checked stock before the test and made stock again after it."""
    for model in tiny_family_models.values():
        assert pruner_of(model) is None, "a previous test left a pruner attached"
    yield tiny_family_models
    for model in tiny_family_models.values():
        pruner = pruner_of(model)
        if pruner is not None:
            pruner.detach()


def generate(model: Any, inputs: Any, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model.generate(**inputs, **GREEDY, **kwargs)


def capture_llm_calls(model: Any) -> tuple[list[dict], Any]:
    """Every language-model call's kwargs, as the language model receives them (after PruneVid's hook)."""
    calls: list[dict] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True
    )
    return calls, hook


def test_family_is_found_by_model_type(family: str, family_models: dict[str, Any]) -> None:
    assert family in family_of(family_models["sdpa"]).model_types


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("prompt", ["single", "padded", "two_videos", "image_video"])
def test_every_stage_off_and_detach_are_stock(
    family_models: dict[str, Any], family_prompts: dict[str, Any], implementation: str, prompt: str
) -> None:
    model, inputs = family_models[implementation], family_prompts[prompt]
    with torch.no_grad():
        stock_logits = model(**inputs).logits
    stock = generate(model, inputs)

    def same() -> None:
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, stock_logits)
        ours = generate(model, inputs)
        assert torch.equal(ours.sequences, stock.sequences)
        assert all(torch.equal(a, b) for a, b in zip(ours.logits, stock.logits, strict=True))

    for preset in ("baseline", "fast"):
        with attach(model, PruneVidConfig.preset(preset)):
            same()
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        with torch.no_grad():
            model(**inputs)
        assert pruner.last_stats.retention < 1.0
    same()  # detached


def _oracle(
    eager: Any, llm_call: dict, kept: torch.Tensor, layer: int, stage3: bool, steps: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy decoding of the stock eager language model on the LLM inputs PruneVid gave layer 0 (after
    Stage 1), the rows Stage 2 removed hidden by per-layer 4-D masks (``kept [B, S]`` bool)."""
    embeds = llm_call["inputs_embeds"]
    positions = llm_call["position_ids"][-3:]
    batch, length = embeds.shape[:2]
    mask_2d = llm_call.get("attention_mask")
    valid = torch.ones(batch, length, dtype=torch.bool) if mask_2d is None else mask_2d.bool()
    keep = kept & valid
    visible = {"lower": valid, "upper": keep, "queries": length}

    language_model = eager.model.language_model
    handles = mask_pruned_keys(language_model.layers, layer, visible)
    deepstack = ("visual_pos_masks", "deepstack_visual_embeds")
    extra = {k: llm_call[k] for k in deepstack if llm_call.get(k) is not None}
    cache, step_logits, tokens = DynamicCache(), [], []
    try:
        with torch.no_grad():
            hidden = language_model(
                inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True, **extra
            ).last_hidden_state
            for step in range(steps):
                logits = eager.lm_head(hidden[:, -1])
                step_logits.append(logits)
                token = logits.argmax(-1)
                tokens.append(token)
                ones = torch.ones(batch, 1, dtype=torch.bool)
                visible["lower"] = torch.cat([keep if stage3 else visible["lower"], ones], dim=1)
                visible["upper"] = torch.cat([visible["upper"], ones], dim=1)
                visible["queries"] = 1
                if stage3:
                    keep = visible["lower"]
                hidden = language_model(
                    inputs_embeds=language_model.embed_tokens(token[:, None]),
                    position_ids=llm_call["next_position"][:, :, None] + step,
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    return step_logits, tokens


@pytest.mark.parametrize(
    ("implementation", "prompt", "stage1", "stage3", "static_time"),
    [
        ("sdpa", "padded", True, True, "first"),
        ("sdpa", "padded", False, True, "first"),
        ("sdpa", "padded", True, False, "first"),
        ("eager", "padded", True, True, "first"),
        ("sdpa", "two_videos", True, True, "first"),
        ("sdpa", "image_video", True, True, "first"),
        ("sdpa", "padded", True, True, "ends"),  # the opt-in: two tokens per static run
    ],
)
def test_pruned_generate_equals_masked_stock_oracle(
    family_models: dict[str, Any],
    family_prompts: dict[str, Any],
    implementation: str,
    prompt: str,
    stage1: bool,
    stage3: bool,
    static_time: str,
) -> None:
    model, eager, inputs = family_models[implementation], family_models["eager"], family_prompts[prompt]
    config = PruneVidConfig.preset("paper").replace(
        enable_stage1=stage1, enable_cache_compression=stage3, static_time=static_time
    )
    with attach(model, config) as pruner:
        calls, handle = capture_llm_calls(model)  # after PruneVid's hook: the sequence layers 0..M see
        out = generate(model, inputs)
        handle.remove()
        layout = cache_layout(out.past_key_values)
    stats = pruner.last_stats
    assert stats.video_tokens_after_stage2 < stats.video_tokens_after_stage1
    llm_call = calls[0]
    kept = torch.tensor([[p in set(s.output_positions) for p in s.stage1_positions] for s in stats.samples])
    llm_call["next_position"] = layout.next_position - NEW_TOKENS + 1  # where the first decode step went
    expected_logits, expected_tokens = _oracle(
        eager, llm_call, kept, pruner.pruning_layer, stage3, NEW_TOKENS
    )
    prompt_length = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, prompt_length:], torch.stack(expected_tokens, dim=1))
    worst = max((a - b).abs().max().item() for a, b in zip(out.logits, expected_logits, strict=True))
    assert worst <= 1e-5, f"max |logit difference| {worst:.2e}"


def test_decode_positions_equal_stock(family_models: dict[str, Any], family_prompts: dict[str, Any]) -> None:
    model, inputs = family_models["sdpa"], family_prompts["padded"]
    calls, handle = capture_llm_calls(model)
    generate(model, inputs)
    handle.remove()
    stock = [call["position_ids"] for call in calls[1:]]
    with attach(model, PruneVidConfig.preset("paper")):
        calls, handle = capture_llm_calls(model)
        generate(model, inputs)
        handle.remove()
    ours = [call["position_ids"] for call in calls[1:]]
    assert len(ours) == len(stock) == NEW_TOKENS - 1
    for a, b in zip(ours, stock, strict=True):
        if b is None:  # 4.57 Qwen3-VL: the model computes them (cache_position + rope_deltas)
            continue
        assert torch.equal(a[-3:], b[-3:])


def test_merged_tokens_sit_at_their_representatives_positions_with_their_sources_deepstack(
    family: str, family_models: dict[str, Any], family_prompts: dict[str, Any]
) -> None:
    model, inputs = family_models["sdpa"], family_prompts["padded"]
    calls, handle = capture_llm_calls(model)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    stock = calls[0]
    with attach(model, PruneVidConfig.preset("stage1_only")) as pruner, torch.no_grad():
        calls, handle = capture_llm_calls(model)  # registered after PruneVid's hook: sees its output
        model(**inputs)
        handle.remove()
    ours, stats = calls[0], pruner.last_stats
    assert stats.video_tokens_after_stage1 < stats.video_tokens_in
    video = model.config.video_token_id
    for b, sample in enumerate(stats.samples):
        rows = torch.tensor(sample.stage1_positions)
        real = rows >= 0
        # Text (timestamps included) keeps its position; a merged token takes its representative's.
        assert torch.equal(ours["position_ids"][-3:, b, real], stock["position_ids"][-3:, b, rows[real]])
        ids = inputs["input_ids"][b, rows[real]]
        assert int((ids == video).sum()) == sum(v.tokens_after_stage1 for v in sample.videos)
    if stock.get("deepstack_visual_embeds") is None:
        assert family in ("qwen2_vl", "qwen2_5_vl")
        return

    # DeepStack: every level of a merged token is the mean of its sources' rows at that level.
    def row_of(mask: torch.Tensor) -> torch.Tensor:
        return (mask.flatten().long().cumsum(0) - 1).view(mask.shape)

    stock_row, ours_row = row_of(stock["visual_pos_masks"]), row_of(ours["visual_pos_masks"])
    for b, sample in enumerate(stats.samples):
        assert len(sample.videos) == 1
        slot_of = {p: s for s, p in enumerate(sample.stage1_positions) if p >= 0}
        tokens = torch.nonzero(inputs["input_ids"][b] == video).flatten()
        sources: dict[int, list[int]] = {}
        for source, representative in enumerate(sample.videos[0].merged_into):
            sources.setdefault(representative, []).append(int(tokens[source]))
        for representative, members in sources.items():
            ours_levels = [
                level[ours_row[b, slot_of[representative]]] for level in ours["deepstack_visual_embeds"]
            ]
            for level, merged in zip(stock["deepstack_visual_embeds"], ours_levels, strict=True):
                torch.testing.assert_close(merged, level[stock_row[b, members]].mean(0), atol=1e-6, rtol=1e-5)


def test_follow_up_turn_continues_a_copied_pruned_cache(
    family_models: dict[str, Any], family_prompts: dict[str, Any], tiny_family_processor: Any
) -> None:
    model, inputs = family_models["sdpa"], family_prompts["single"]
    with attach(model, PruneVidConfig.preset("paper")):
        first = generate(model, inputs)
        turn = "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"
        ids = torch.cat(
            [first.sequences, tiny_family_processor.tokenizer(turn, return_tensors="pt").input_ids], 1
        )
        copied = copy.deepcopy(first.past_key_values)
        second = generate(
            model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, past_key_values=copied
        )
        again = generate(
            model,
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            past_key_values=first.past_key_values,
        )
    assert torch.equal(second.sequences, again.sequences)  # the copy and the original continue alike
    assert cache_layout(copied).logical_length == second.sequences.shape[1] - 1


def test_inputs_without_video_data_are_stock(
    family_models: dict[str, Any], family_prompts: dict[str, Any]
) -> None:
    model = family_models["sdpa"]
    inputs = {k: family_prompts["padded"][k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        stock = model(**inputs).logits
    with attach(model, PruneVidConfig.preset("paper")) as pruner, torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)
    assert "without video data" in pruner.last_stats.not_pruned


def test_autograd_and_refusals(family_models: dict[str, Any], family_prompts: dict[str, Any]) -> None:
    model, inputs = family_models["sdpa"], family_prompts["single"]
    with attach(model, PruneVidConfig.preset("paper")):
        with torch.no_grad():
            expected = model(**inputs).logits
        try:
            logits = model(**inputs).logits
            assert torch.equal(logits.detach(), expected)
            logits.float().square().mean().backward()
            assert any(
                p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.model.visual.parameters()
            )
        finally:
            model.zero_grad(set_to_none=True)
        with pytest.raises(ValueError, match="needs the KV cache"):
            generate(model, inputs, use_cache=False)
        with pytest.raises(ValueError, match="labels"), torch.no_grad():
            model(**inputs, labels=inputs["input_ids"])


@pytest.mark.parametrize("family", ["qwen3_vl"], indirect=True)
def test_a_pruning_layer_inside_deepstack_is_refused(family_models: dict[str, Any]) -> None:
    model = family_models["sdpa"]
    levels = len(model.config.vision_config.deepstack_visual_indexes)
    with pytest.raises(ValueError, match="DeepStack"):
        attach(model, PruneVidConfig.preset("paper").replace(pruning_layer=levels - 1))


def test_question_rows_skip_the_videos_timestamps(
    family: str, family_models: dict[str, Any], family_prompts: dict[str, Any]
) -> None:
    model, inputs = family_models["sdpa"], family_prompts["single"]
    with attach(model, PruneVidConfig.preset("stage2_only")) as pruner, torch.no_grad():
        model(**inputs)
    sample = pruner.last_stats.samples[0]
    video = torch.nonzero(inputs["input_ids"][0] == model.config.video_token_id).flatten()
    first, last = int(video[0]), int(video[-1]) + 1
    rows = set(sample.question_rows)
    assert sample.question_source == "user turn"
    assert not rows & set(range(first, last))  # nothing inside the video: no timestamp between frame groups
    assert set(range(last, inputs["input_ids"].shape[1])) <= rows
