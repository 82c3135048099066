"""Stages 2 and 3 through stock generate(): removal equals masking, positions stay, caches shrink.

The masked oracle: removing tokens after layer M (and from the caches of layers 0..M with Stage 3) must
equal a stock eager run that removes nothing but hides the pruned tokens with per-layer 4-D attention
masks: from every query after layer M, and from decode queries in layers 0..M when Stage 3 is on.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import transformers
from transformers.cache_utils import DynamicCache

import prunevid.models.pruner as adapter
from prunevid import PruneVidConfig, attach

# Every test here starts and ends with the shared tiny models stock (see conftest.stock_models).
pytestmark = pytest.mark.usefixtures("stock_models")

NEW_TOKENS = 5


def generate(model: Any, inputs: Any, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
            **kwargs,
        )


def capture_llm_inputs(model: Any) -> tuple[list[dict], Any]:
    """Record the kwargs every language-model call receives (after PruneVid's own pre-hook)."""
    calls: list[dict] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        calls.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    return calls, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def stage1_origins(model: Any, inputs: Any, config: PruneVidConfig) -> list[list[int]]:
    """Original prompt index of every token entering the LLM (per sample, before left padding)."""
    input_ids = inputs["input_ids"]
    video = input_ids == model.config.video_token_id
    if not config.enable_stage1:
        return [list(range(input_ids.shape[1])) for _ in range(input_ids.shape[0])]
    with attach(model, config.replace(enable_stage2=False, enable_cache_compression=False)) as pruner:
        with torch.no_grad():
            model(**inputs)
        stats = pruner.last_stats
    origins = []
    for b, sample in enumerate(stats.samples):
        merged = {i for v in sample.videos for i in v.kept_indices}
        origins.append(sorted(set(torch.nonzero(~video[b]).flatten().tolist()) | merged))
    return origins


def mask_pruned_keys(layers: Any, pruning_layer: int, visible: dict) -> list[Any]:
    """Pre-hooks giving every decoder layer a 4-D additive mask built from ``visible`` when it runs:
    keys ``visible["lower"]`` (layers ``0..M``) or ``visible["upper"]`` (layers ``> M``), ``[B, S]`` bool,
    for the last ``visible["queries"]`` rows (causal among them). Returns the hook handles."""

    def mask_hook(index: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            keys = visible["upper"] if index > pruning_layer else visible["lower"]
            queries = visible["queries"]
            total = keys.shape[1]
            rows = torch.arange(total - queries, total)
            allowed = (torch.arange(total)[None, :] <= rows[:, None])[None] & keys[:, None, :]
            allowed |= torch.arange(total)[None, None, :] == rows[None, :, None]  # finite rows for padding
            additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
            return args, {**kwargs, "attention_mask": additive[:, None]}

        return hook

    return [layer.register_forward_pre_hook(mask_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]


def oracle(
    eager: Any,
    llm_inputs: dict,
    origins: list[list[int]],
    kept: list[set[int]],
    pruning_layer: int,
    stage3: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy decoding with the stock eager model on the LLM inputs, pruned tokens hidden by masks.

    Returns the logits ``[B, V]`` of every step and the chosen tokens.
    """
    embeds, positions = llm_inputs["inputs_embeds"], llm_inputs["position_ids"][-3:]
    batch, length = embeds.shape[:2]
    origin = torch.full((batch, length), -1)
    for b, row in enumerate(origins):
        origin[b, length - len(row) :] = torch.tensor(row)
    mask_2d = llm_inputs.get("attention_mask")
    valid = origin >= 0
    if mask_2d is not None:
        valid &= mask_2d.bool()
    keep = torch.tensor([[o in kept[b] for o in origin[b].tolist()] for b in range(batch)]) & valid

    layers = eager.model.language_model.layers
    state = {"lower": valid, "upper": keep, "queries": length}

    handles = mask_pruned_keys(layers, pruning_layer, state)
    cache = DynamicCache()
    step_logits, tokens = [], []
    try:
        with torch.no_grad():
            hidden = eager.model.language_model(
                inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state
            for step in range(NEW_TOKENS):
                logits = eager.lm_head(hidden[:, -1])
                step_logits.append(logits)
                token = logits.argmax(-1)
                tokens.append(token)
                # Decode queries: in layers 0..M they see every cached token unless Stage 3 cut them.
                ones = torch.ones(batch, 1, dtype=torch.bool)
                state["lower"] = torch.cat([keep if stage3 else state["lower"], ones], dim=1)
                state["upper"] = torch.cat([state["upper"], ones], dim=1)
                state["queries"] = 1
                if stage3:
                    keep = state["lower"]
                position = positions[:, :, -1:] + 1 + step
                hidden = eager.model.language_model(
                    inputs_embeds=eager.model.language_model.embed_tokens(token[:, None]),
                    position_ids=position,
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    return step_logits, tokens


CASES = [
    (implementation, prompt, stage1, stage3)
    for implementation in ("sdpa", "eager")
    for prompt in ("single", "padded")
    for stage1 in (True, False)
    for stage3 in (True, False)
]


@pytest.mark.parametrize(("implementation", "prompt", "stage1", "stage3"), CASES)
def test_pruned_generate_equals_masked_stock_oracle(
    models: dict[str, Any],
    prompts: dict[str, Any],
    implementation: str,
    prompt: str,
    stage1: bool,
    stage3: bool,
) -> None:
    model, eager, inputs = models[implementation], models["eager"], prompts[prompt]
    config = PruneVidConfig.preset("paper").replace(enable_stage1=stage1, enable_cache_compression=stage3)
    origins = stage1_origins(eager, inputs, config)

    pruner = attach(model, config)
    calls, handle = capture_llm_inputs(model)
    try:
        out = generate(model, inputs)
    finally:
        handle.remove()
        pruner.detach()
    stats = pruner.last_stats
    assert stats.video_tokens_after_stage2 < stats.video_tokens_in  # something was pruned

    video = inputs["input_ids"] == model.config.video_token_id
    kept = [
        set(torch.nonzero(~video[b]).flatten().tolist()) | {i for v in sample.videos for i in v.kept_indices}
        for b, sample in enumerate(stats.samples)
    ]
    expected_logits, expected_tokens = oracle(eager, calls[0], origins, kept, pruner.pruning_layer, stage3)
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(new_tokens, torch.stack(expected_tokens, dim=1))
    worst = max(
        (ours - theirs).abs().max().item() for ours, theirs in zip(out.logits, expected_logits, strict=True)
    )
    assert worst <= 1e-5, f"max |logit difference| {worst:.2e}"


@pytest.mark.parametrize("stage1", [True, False])
def test_keep_ratio_one_is_bit_identical_to_stock(
    models: dict[str, Any], prompts: dict[str, Any], stage1: bool
) -> None:
    model, inputs = models["sdpa"], prompts["padded"]
    # With Stage 1 "on" but merging nothing (tau above 1, cluster_ratio 1.0), everything is stock.
    config = PruneVidConfig.preset("paper").replace(
        keep_ratio=1.0, tau=1.5, cluster_ratio=1.0, enable_stage1=stage1
    )
    stock = generate(model, inputs)
    with torch.no_grad():
        stock_logits = model(**inputs).logits
    with attach(model, config) as pruner:
        out = generate(model, inputs)
        with torch.no_grad():
            logits = model(**inputs).logits
    assert torch.equal(logits, stock_logits)
    assert torch.equal(out.sequences, stock.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.logits, stock.logits, strict=True))
    assert pruner.last_stats.retention == 1.0


def test_scores_equal_a_direct_reference_on_the_model(
    models: dict[str, Any], prompts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scorer sees exactly the question rows and every key of layer M, before rotary embedding."""
    model, inputs = models["sdpa"], prompts["system"]
    config = PruneVidConfig.preset("stage2_only")
    layer_inputs: list[torch.Tensor] = []
    scored: list[torch.Tensor] = []
    original = adapter.question_attention_scores

    def spy(query: torch.Tensor, key: torch.Tensor, aggregation: str = "max") -> torch.Tensor:
        scores = original(query, key, aggregation)
        scored.append(scores)
        return scores

    monkeypatch.setattr(adapter, "question_attention_scores", spy)
    with attach(model, config) as pruner:
        layer = model.model.language_model.layers[pruner.pruning_layer]
        handle = layer.register_forward_pre_hook(lambda m, a, k: layer_inputs.append(a[0]), with_kwargs=True)
        with torch.no_grad():
            model(**inputs)
        handle.remove()
    assert len(scored) == 1

    # Reference: full attention probabilities of layer M without rotary and without a mask, float64.
    attention = layer.self_attn
    with torch.no_grad():
        normed = layer.input_layernorm(layer_inputs[0][0]).double()
        q = torch.nn.functional.linear(
            normed, attention.q_proj.weight.double(), attention.q_proj.bias.double()
        )
        k = torch.nn.functional.linear(
            normed, attention.k_proj.weight.double(), attention.k_proj.bias.double()
        )
    heads, head_dim = model.config.text_config.num_attention_heads, attention.head_dim
    q = q.view(-1, heads, head_dim).transpose(0, 1)
    k = k.view(-1, heads // attention.num_key_value_groups, head_dim).transpose(0, 1)
    k = k.repeat_interleave(attention.num_key_value_groups, dim=0)
    video = torch.nonzero(inputs["input_ids"][0] == model.config.video_token_id).flatten()
    question_rows = slice(int(video[-1]) + 1, None)  # every token after the last video token
    probs = torch.softmax(q[:, question_rows] @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    reference = probs.amax(dim=0).amax(dim=0)
    torch.testing.assert_close(scored[0].double(), reference, rtol=1e-5, atol=1e-7)
    # The question is short and the system message long: rows after the video only, not the system prompt.
    assert inputs["input_ids"].shape[1] - int(video[-1]) - 1 < 20 < int(video[0])


def test_selection_runs_once_per_generate(
    models: dict[str, Any], prompts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = adapter.select_tokens
    monkeypatch.setattr(adapter, "select_tokens", lambda *a, **k: calls.append(1) or original(*a, **k))
    with attach(models["sdpa"], PruneVidConfig.preset("paper")):
        generate(models["sdpa"], prompts["padded"])
    assert len(calls) == 2  # once per sample, during the prefill only


@pytest.mark.parametrize("prompt", ["single", "padded"])
def test_caches_shrink_and_decode_positions_stay_unpruned(
    models: dict[str, Any], prompts: dict[str, Any], prompt: str
) -> None:
    model, inputs = models["sdpa"], prompts[prompt]
    calls, handle = capture_llm_inputs(model)
    generate(model, inputs)
    stock_calls = list(calls)
    calls.clear()
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        generate(model, inputs)
    handle.remove()
    stats = pruner.last_stats
    # Every layer ends the prefill with the same, shorter cache; bytes shrink in proportion.
    length = inputs["input_ids"].shape[1]
    assert len(set(stats.kv_cache_length)) == 1 and stats.kv_cache_length[0] < length
    assert stats.kv_cache_bytes * length == stats.kv_cache_bytes_unpruned * stats.kv_cache_length[0]
    # All non-video tokens (the last prompt token among them) are kept.
    if prompt == "single":
        video = int((inputs["input_ids"] == model.config.video_token_id).sum())
        assert stats.kv_cache_length[0] == length - video + stats.video_tokens_after_stage2
    # Decode steps run at the positions of the unpruned prompt, on every transformers version.
    assert len(calls) == len(stock_calls) == NEW_TOKENS
    for ours, theirs in zip(calls[1:], stock_calls[1:], strict=True):
        assert torch.equal(ours["position_ids"], theirs["position_ids"])


def test_stage3_off_keeps_full_caches_in_layers_up_to_m(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    config = PruneVidConfig.preset("paper").replace(enable_cache_compression=False)
    with attach(models["sdpa"], config) as pruner:
        generate(models["sdpa"], prompts["single"])
    lengths, layer = pruner.last_stats.kv_cache_length, pruner.pruning_layer
    assert len(set(lengths[: layer + 1])) == 1 and len(set(lengths[layer + 1 :])) == 1
    assert lengths[layer + 1] < lengths[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_generates(tiny_checkpoint: Any, prompts: dict[str, Any], dtype: torch.dtype) -> None:
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_checkpoint, dtype=dtype, attn_implementation="sdpa"
    ).eval()
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        out = generate(model, prompts["padded"])
    assert all(torch.isfinite(step).all() for step in out.logits)
    assert pruner.last_stats.video_tokens_after_stage2 < pruner.last_stats.video_tokens_in


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5, reason="4.57 manual loops pass cache_position"
)
def test_manual_decode_loop_continues_at_unpruned_positions(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    """A hand-written loop (no generate) gets positions from cache length + rope_deltas: still unpruned."""
    model, inputs = models["sdpa"], dict(prompts["single"])
    inputs.pop("attention_mask")  # stock 5.x needs explicit positions for a 2-D mask in a manual loop

    def positions_of_second_step() -> torch.Tensor:
        calls, handle = capture_llm_inputs(model)
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        handle.remove()
        return calls[1]["position_ids"]

    stock = positions_of_second_step()
    with attach(model, PruneVidConfig.preset("paper")):
        assert torch.equal(positions_of_second_step(), stock)
